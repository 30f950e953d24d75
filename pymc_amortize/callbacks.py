"""A convergence stop for ``pm.fit``: A-VI, ADVI and every other PyMC ``Inference`` alike."""

from __future__ import annotations

import numpy as np

from pymc_amortize.errors import AmortizationError

__all__ = ["ELBOConvergence"]


class ELBOConvergence:
    """Stop a fit when its loss (−ELBO) has stopped improving, window by window.

    Every ``window`` steps, the mean loss of the last ``window`` steps is compared with the mean of
    the window before; when the improvement is below ``tolerance`` times the loss's magnitude
    ``patience`` times in a row, the fit stops (PyMC's loop ends cleanly on ``StopIteration`` and
    keeps the parameters). Means over whole windows average out the Monte Carlo and minibatch noise
    of single steps, which a step-to-step test would mistake for a lack of progress. PyMC's own
    ``CheckParametersConvergence`` watches the parameters instead, which for an encoder keep moving
    along directions that do not change the ELBO.

    Parameters
    ----------
    window : int
        Steps per window (500 by default).
    tolerance : float
        Relative improvement of the windowed mean loss under which a window counts as converged
        (1e-4: on a loss of 10,000 nats, less than 1 nat per window).
    patience : int
        Converged windows in a row needed to stop.

    Attributes
    ----------
    stopped_at : int or None
        The step at which the fit was stopped, or None.

    Examples
    --------
    .. code-block:: python

        from pymc_amortize import ELBOConvergence

        approx = pm.fit(50_000, method="amortized", callbacks=[ELBOConvergence()])
        advi = pm.fit(50_000, method="advi", callbacks=[ELBOConvergence()])
    """

    def __init__(self, *, window: int = 500, tolerance: float = 1e-4, patience: int = 2):
        if not isinstance(window, int | np.integer) or window < 2:
            raise AmortizationError(f"window must be an integer >= 2; got {window!r}.")
        if not tolerance >= 0:
            raise AmortizationError(f"tolerance must be >= 0; got {tolerance!r}.")
        if not isinstance(patience, int | np.integer) or patience < 1:
            raise AmortizationError(f"patience must be a positive integer; got {patience!r}.")
        self.window = int(window)
        self.tolerance = float(tolerance)
        self.patience = int(patience)
        self.stopped_at: int | None = None
        self._converged = 0

    def __call__(self, approx, losses: np.ndarray, i: int) -> None:
        losses = np.asarray(losses)
        if losses.size < 2 * self.window or losses.size % self.window:
            return
        last = losses[-self.window :].mean()
        before = losses[-2 * self.window : -self.window].mean()
        improvement = (before - last) / max(abs(last), 1e-12)
        self._converged = self._converged + 1 if improvement < self.tolerance else 0
        if self._converged >= self.patience:
            self.stopped_at = int(i)
            raise StopIteration(
                f"Converged at step {i}: the mean loss over the last {self.window} steps improved "
                f"by {improvement:.2e} (relative) on the window before, under the tolerance "
                f"{self.tolerance:g}, {self.patience} time(s) in a row."
            )
