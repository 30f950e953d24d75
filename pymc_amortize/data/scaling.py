"""How an encoder input column is standardised: shared by in-memory inputs and streamed units."""

from __future__ import annotations

import numpy as np

__all__ = ["CONSTANT_RELATIVE_SD", "standardization_scale"]

#: A column whose sd is at most this fraction of its mean's magnitude is constant up to rounding:
#: the sd of n equal float64 values comes out near 1e-16 of them, not 0, and a one-pass
#: sqrt(E[x²] - mean²) (a fit on unit_data) near 1e-8 of them.
CONSTANT_RELATIVE_SD = 1e-6


def standardization_scale(sd, center) -> np.ndarray:
    """The scale that standardises a column of sd ``sd`` and mean ``center``: its sd, or 1 for a
    column constant over the fitted units (sd 0, within rounding of 0, or not finite).

    Dividing by a constant column's rounding-level sd (4e-16 for the log row count of a balanced
    design) turned a new unit's slightly different value into an input of 1e15 and the encoder's
    output into -2e14; with scale 1 the column is only centred.
    """
    sd, center = np.asarray(sd, dtype=np.float64), np.asarray(center, dtype=np.float64)
    ok = np.isfinite(sd) & (sd > 0) & (sd > CONSTANT_RELATIVE_SD * np.abs(center))
    return np.where(ok, sd, 1.0)
