"""A convergence stop for ``pm.fit``: A-VI, ADVI and every other PyMC ``Inference`` alike.

``pm.fit(method="amortized")`` uses :class:`ELBOConvergence` by default, with a learning rate it
decays on each plateau before it stops (see :meth:`pymc_amortize.AmortizedVI.fit`).
"""

from __future__ import annotations

import numpy as np

from pymc_amortize.errors import AmortizationError

__all__ = ["ELBOConvergence"]


class ELBOConvergence:
    """Stop a fit when its loss (−ELBO) has stopped improving, window by window.

    Every ``window`` steps, the mean loss of the last ``window`` steps is compared with the mean of
    the window before. A window is *flat* when its improvement is below ``tolerance`` times the
    loss's magnitude, or below one standard error of the difference of the two means (from the
    steps' own spread: the Monte Carlo and minibatch noise, which grows with the model). After
    ``patience`` flat windows in a row the loss has reached a plateau: with a ``learning_rate``
    attached (a shared variable the optimizer reads) and decays left, the rate is multiplied by
    ``decay`` and the fit goes on; otherwise the fit stops (PyMC's loop ends cleanly on
    ``StopIteration`` and keeps the parameters). Means over whole windows average out the noise of
    single steps, which a step-to-step test would mistake for a lack of progress; decaying the rate
    at the end takes the last iterate from Adam's jitter around the optimum to the optimum. PyMC's
    own ``CheckParametersConvergence`` watches the parameters instead, which for an encoder keep
    moving along directions that do not change the ELBO.

    Parameters
    ----------
    window : int
        Steps per window (500 by default).
    tolerance : float
        Relative improvement of the windowed mean loss under which a window counts as flat
        (1e-4: on a loss of 10,000 nats, less than 1 nat per window).
    patience : int
        Flat windows in a row that make a plateau (2).
    learning_rate : shared variable, optional
        The optimizer's learning rate, decayed on each plateau before the last. ``pm.fit(method=
        "amortized")`` attaches its default Adam's rate when no ``obj_optimizer`` is given.
    decay : float
        Factor applied to ``learning_rate`` on a plateau (0.1).
    decays : int
        Plateaus met by decaying the rate before one stops the fit (2: the default Adam goes
        1e-2 → 1e-3 → 1e-4 and stops on the plateau at 1e-4).
    stop : bool
        Stop on the last plateau (True); False only decays the rate, so a fit runs all its steps.

    Attributes
    ----------
    stopped_at : int or None
        The step at which the fit was stopped, or None.
    converged : bool
        Whether the last plateau was reached (the fit stopped, or would have with ``stop=False``).
    decayed_at : list of int
        The steps at which the learning rate was decayed.
    last_change : float or None
        The relative improvement of the last window's mean loss on the window before (positive:
        the loss fell), or None before two windows.

    Examples
    --------
    .. code-block:: python

        from pymc_amortize import ELBOConvergence

        approx = pm.fit(50_000, method="amortized", convergence=ELBOConvergence(window=1_000))
        advi = pm.fit(50_000, method="advi", callbacks=[ELBOConvergence()])
    """

    def __init__(
        self,
        *,
        window: int = 500,
        tolerance: float = 1e-4,
        patience: int = 2,
        learning_rate=None,
        decay: float = 0.1,
        decays: int = 2,
        stop: bool = True,
    ):
        if not isinstance(window, int | np.integer) or window < 2:
            raise AmortizationError(f"window must be an integer >= 2; got {window!r}.")
        if not tolerance >= 0:
            raise AmortizationError(f"tolerance must be >= 0; got {tolerance!r}.")
        if not isinstance(patience, int | np.integer) or patience < 1:
            raise AmortizationError(f"patience must be a positive integer; got {patience!r}.")
        if not 0 < decay < 1:
            raise AmortizationError(f"decay must be in (0, 1); got {decay!r}.")
        if not isinstance(decays, int | np.integer) or decays < 0:
            raise AmortizationError(f"decays must be an integer >= 0; got {decays!r}.")
        self.window = int(window)
        self.tolerance = float(tolerance)
        self.patience = int(patience)
        self.learning_rate = learning_rate
        self.decay = float(decay)
        self.decays = int(decays)
        self.stop = bool(stop)
        self.stopped_at: int | None = None
        self.converged = False
        self.decayed_at: list[int] = []
        self.last_change: float | None = None
        self.changes: list[float] = []
        self._flat = 0
        self._since = 0  # losses of this run before the current phase (a decay starts one)

    def reset(self) -> None:
        """Forget the windows seen (for a new run of steps, e.g. ``refine``); keep the rate."""
        self.stopped_at, self.converged, self._flat, self._since = None, False, 0, 0
        self.last_change, self.changes = None, []

    @property
    def decays_left(self) -> int:
        return self.decays - len(self.decayed_at) if self.learning_rate is not None else 0

    def current_learning_rate(self) -> float | None:
        if self.learning_rate is None:
            return None
        return float(self.learning_rate.get_value())

    def __call__(self, approx, losses: np.ndarray, i: int) -> None:
        losses = np.asarray(losses)
        if losses.size - self._since < 2 * self.window or (losses.size - self._since) % self.window:
            return
        last = losses[-self.window :]
        before = losses[-2 * self.window : -self.window]
        scale = max(abs(last.mean()), 1e-12)
        improvement = (before.mean() - last.mean()) / scale
        noise = np.sqrt((last.var() + before.var()) / self.window) / scale
        self.last_change = float(improvement)
        self.changes.append(self.last_change)
        flat = improvement < max(self.tolerance, noise)
        self._flat = self._flat + 1 if flat else 0
        if self._flat < self.patience:
            return
        self._flat = 0
        if self.decays_left > 0:
            self.learning_rate.set_value(
                np.asarray(
                    self.learning_rate.get_value() * self.decay, dtype=self.learning_rate.dtype
                )
            )
            self.decayed_at.append(int(i))
            self._since = losses.size  # windows of the new rate only
            return
        self.converged = True
        if not self.stop:
            return
        self.stopped_at = int(i)
        raise StopIteration(
            f"Converged at step {i}: the mean loss over the last {self.window} steps improved "
            f"by {improvement:.2e} (relative) on the window before, under the tolerance "
            f"{max(self.tolerance, noise):.2e} (the larger of {self.tolerance:g} and the windows' "
            f"noise), {self.patience} time(s) in a row."
        )

    def describe(self) -> str:
        """Settings in one line, for the results' attributes."""
        text = f"ELBOConvergence(window={self.window}, tolerance={self.tolerance:g}, "
        text += f"patience={self.patience}"
        if self.learning_rate is not None:
            text += f", decay={self.decay:g}, decays={self.decays}"
        return text + ")"
