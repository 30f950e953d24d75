"""The training envelope of the encoders: what input each encoder saw in training.

:class:`TrainingEnvelope`: per local latent, the range of each encoder input column seen in
training (on the standardised scale the encoder reads), a Mahalanobis distance for several
columns, and the range of rows per unit of an indexed plate. New units outside it are named in an
:class:`~pymc_amortize.OutOfTrainingRangeWarning`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pymc_amortize.model.types import DataInput

__all__ = ["InputEnvelope", "TrainingEnvelope", "column_labels"]

#: Relative slack of the envelope checks, so that a fitted unit given again as a new unit (the
#: same numbers through a different summation order) is never reported.
_SLACK = 1e-9


def column_labels(inputs: Sequence[DataInput]) -> tuple[str, ...]:
    """One label per encoder input column: ``key`` for a column, ``key[i]`` for a wider input."""
    labels = []
    for item in inputs:
        width = int(np.prod(np.shape(item.value)[1:], dtype=int))
        labels += [item.key] if width == 1 else [f"{item.key}[{i}]" for i in range(width)]
    return tuple(labels)


@dataclass(frozen=True)
class InputEnvelope:
    """Range of one encoder input matrix seen in training, on the standardised scale.

    Attributes
    ----------
    labels : tuple of str
        One per column.
    low, high : ndarray
        (k,) column minima and maxima.
    center : ndarray
        (k,) column means.
    precision : ndarray or None
        (k, k) pseudo-inverse of the columns' covariance, for k >= 2 (else None).
    max_distance : float or None
        Largest Mahalanobis distance of a training row from ``center`` (k >= 2).
    """

    labels: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray
    center: np.ndarray
    precision: np.ndarray | None
    max_distance: float | None

    @classmethod
    def fit(cls, labels: Sequence[str], matrix: np.ndarray) -> InputEnvelope | None:
        if matrix is None or matrix.shape[0] == 0:
            return None
        matrix = np.asarray(matrix, dtype=float)
        labels = tuple(labels) if len(labels) == matrix.shape[1] else _positional(matrix.shape[1])
        center = matrix.mean(axis=0)
        precision = max_distance = None
        if matrix.shape[1] >= 2:
            precision = np.linalg.pinv(np.atleast_2d(np.cov(matrix, rowvar=False)))
            max_distance = float(_mahalanobis(matrix, center, precision).max())
        return cls(labels, matrix.min(axis=0), matrix.max(axis=0), center, precision, max_distance)

    def outside(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: the largest distance outside [low, high] (in training sds, 0 inside), its
        column, and the Mahalanobis distance (NaN for one column)."""
        width = np.maximum(self.high - self.low, 1.0)
        below = (self.low - _SLACK * width) - matrix
        above = matrix - (self.high + _SLACK * width)
        excess = np.maximum(np.maximum(below, above), 0.0)
        column = excess.argmax(axis=1)
        worst = excess[np.arange(matrix.shape[0]), column]
        distance = (
            _mahalanobis(matrix, self.center, self.precision)
            if self.precision is not None
            else np.full(matrix.shape[0], np.nan)
        )
        return worst, column, distance

    def to_json(self) -> dict:
        return {
            "labels": list(self.labels),
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "center": self.center.tolist(),
            "precision": None if self.precision is None else self.precision.tolist(),
            "max_distance": self.max_distance,
        }

    @classmethod
    def from_json(cls, saved: dict | None) -> InputEnvelope | None:
        if saved is None:
            return None
        return cls(
            tuple(saved["labels"]),
            np.asarray(saved["low"], dtype=float),
            np.asarray(saved["high"], dtype=float),
            np.asarray(saved["center"], dtype=float),
            None if saved["precision"] is None else np.asarray(saved["precision"], dtype=float),
            saved["max_distance"],
        )


def _positional(k: int) -> tuple[str, ...]:
    return tuple(f"input[{i}]" for i in range(k))


def _mahalanobis(matrix: np.ndarray, center: np.ndarray, precision: np.ndarray) -> np.ndarray:
    diff = matrix - center
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", diff, precision, diff), 0.0))


@dataclass(frozen=True)
class TrainingEnvelope:
    """What one local latent's encoder saw in training.

    Attributes
    ----------
    units, rows : InputEnvelope or None
        Of the unit inputs and (indexed plates) of the row inputs, standardised.
    row_counts : tuple of int or None
        Fewest and most rows of a fitted unit with rows (indexed plates).
    """

    units: InputEnvelope | None
    rows: InputEnvelope | None
    row_counts: tuple[int, int] | None

    def findings(
        self,
        *,
        units: np.ndarray | None,
        rows: np.ndarray | None,
        unit_of_row: np.ndarray | None,
        counts: np.ndarray | None,
        n_units: int,
        skip: np.ndarray,
        unit_scaling,
        row_scaling,
    ) -> dict[int, str]:
        """``{unit position: what lies outside}`` for the new units not in ``skip`` (bool (M,))."""
        found: dict[int, list[tuple[int, float, str]]] = {}

        def report(envelope, matrix, scaling, owner, what):
            worst, column, distance = envelope.outside(matrix)
            for r in range(matrix.shape[0]):
                j = int(owner[r])
                if skip[j]:
                    continue
                c = int(column[r])
                if worst[r] > 0:
                    # Back on the data's scale, rounded off the standardisation's last bits.
                    raw, lo, hi = (
                        float(np.round(v * scaling.scale[c] + scaling.center[c], 9)) + 0.0
                        for v in (matrix[r, c], envelope.low[c], envelope.high[c])
                    )
                    found.setdefault(j, []).append(
                        (
                            0,
                            float(worst[r]),
                            f"{what}{envelope.labels[c]} = {raw:.4g} outside the training range "
                            f"[{lo:.4g}, {hi:.4g}] by {worst[r]:.3g} training sd",
                        )
                    )
                limit = envelope.max_distance
                if limit is not None and distance[r] > limit * (1 + _SLACK) + _SLACK:
                    found.setdefault(j, []).append(
                        (
                            2,
                            float(distance[r] - limit),
                            f"{what}Mahalanobis distance {distance[r]:.3g} from the training "
                            f"inputs' centre, beyond the training maximum {limit:.3g}",
                        )
                    )

        if self.units is not None and units is not None:
            report(self.units, units, unit_scaling, np.arange(n_units), "")
        if self.rows is not None and rows is not None and rows.shape[0]:
            report(self.rows, rows, row_scaling, unit_of_row, "a row's ")
        if self.row_counts is not None and counts is not None:
            lo, hi = self.row_counts
            for j in np.flatnonzero(~skip & ((counts < lo) | (counts > hi))):
                found.setdefault(int(j), []).append(
                    (1, np.inf, f"{int(counts[j])} rows, outside the training range [{lo}, {hi}]")
                )
        out = {}
        for j, items in sorted(found.items()):
            # Per kind (a column's range, the row count, the joint distance), the worst finding.
            parts = []
            for kind in (0, 1, 2):
                mine = sorted((item for item in items if item[0] == kind), key=lambda i: -i[1])
                if mine:
                    more = f" (and {len(mine) - 1} more)" if len(mine) > 1 else ""
                    parts.append(mine[0][2] + more)
            out[j] = ", ".join(parts)
        return out

    def to_json(self) -> dict:
        return {
            "units": None if self.units is None else self.units.to_json(),
            "rows": None if self.rows is None else self.rows.to_json(),
            "row_counts": None if self.row_counts is None else list(self.row_counts),
        }

    @classmethod
    def from_json(cls, saved: dict | None) -> TrainingEnvelope | None:
        if saved is None:
            return None
        counts = saved.get("row_counts")
        return cls(
            InputEnvelope.from_json(saved.get("units")),
            InputEnvelope.from_json(saved.get("rows")),
            None if counts is None else (int(counts[0]), int(counts[1])),
        )
