"""The divergence guard: the compiled step, stopped and restored on a non-finite loss.

A fit that meets a NaN or infinite loss stops with the best parameters seen instead of raising
from deep inside PyMC's loop, so the approximation it returns is usable and ``refine`` resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pytensor.compile.sharedvalue import SharedVariable

__all__ = ["DivergenceInfo", "GuardedStep"]


@dataclass(frozen=True)
class DivergenceInfo:
    """Where a fit met a non-finite loss or parameter, and what was restored.

    Attributes
    ----------
    step : int
        The step (counted over the guard's runs) whose loss or update was not finite.
    nonfinite_params : tuple of str
        The model parameters (and encoder weights) that were not finite there.
    restored_step : int
        The step whose snapshot of the parameters and optimizer state was restored.
    """

    step: int
    nonfinite_params: tuple[str, ...]
    restored_step: int

    def message(self) -> str:
        """The :class:`~pymc_amortize.DivergenceWarning`'s text: what happened, how to resume."""
        params = ", ".join(self.nonfinite_params) or "none (the loss alone)"
        return (
            f"Amortized VI diverged at step {self.step}: the loss or the parameters became NaN or "
            f"infinite (non-finite parameters: {params}). Stopped and restored the best "
            f"parameters, from step {self.restored_step}. To resume from them, call fit again on "
            "the same AmortizedVI with a smaller learning rate, e.g. "
            "inference.fit(n, obj_optimizer=pm.adam(learning_rate=1e-3)), or pass "
            "total_grad_norm_constraint=10."
        )


class GuardedStep:
    """Calls the compiled step; on a non-finite loss restores the best snapshot and stops.

    The state (parameters and optimizer moments) is snapshotted every ``checkpoint_every`` steps
    when the mean loss over that window is the best so far and the state is finite, which costs
    one copy per window. A non-finite loss raises ``StopIteration``, which PyMC's loop takes as
    the end of the run.

    Parameters
    ----------
    fn : callable
        The compiled step: no arguments, returns the loss and updates ``state`` in place.
    state : sequence of SharedVariable
        Everything the step updates except the random generators (parameters, optimizer moments).
    describe_nonfinite : callable
        Names the model parameters that are not finite (for :class:`DivergenceInfo`).
    checkpoint_every : int
        Steps per window of the best-snapshot check.
    feed : callable, optional
        Called before each step to put its batch in the step's buffers (a fit on ``unit_data``).

    Attributes
    ----------
    step : int
        Steps run so far, over every run of this guard.
    seconds : list of float
        Wall-clock seconds of each finished step.
    diverged : DivergenceInfo or None
        Set when a step diverged, until the adapter reports it.
    """

    def __init__(
        self,
        fn: Callable,
        state: Sequence[SharedVariable],
        describe_nonfinite: Callable[[], tuple[str, ...]],
        checkpoint_every: int = 100,
        feed: Callable[[], None] | None = None,
    ):
        self.fn = fn
        self.feed = feed
        self.state = list(state)
        self.describe_nonfinite = describe_nonfinite
        self.checkpoint_every = checkpoint_every
        self.step = 0
        self.best_loss = np.inf
        self.best_step = 0
        self.best_values = self._snapshot()
        self.window = 0.0
        self.diverged: DivergenceInfo | None = None
        # Wall-clock seconds of each finished step. Timed here rather than in a PyMC callback:
        # callbacks run after a step, so they cannot see when a run's first step starts.
        self.seconds: list[float] = []

    def _snapshot(self) -> list[np.ndarray]:
        return [v.get_value(borrow=False) for v in self.state]

    def _state_is_finite(self) -> bool:
        return all(np.isfinite(v.get_value(borrow=True)).all() for v in self.state)

    def _restore(self) -> None:
        self.diverged = DivergenceInfo(self.step, self.describe_nonfinite(), self.best_step)
        for var, value in zip(self.state, self.best_values, strict=True):
            var.set_value(value.copy())

    def __call__(self) -> np.ndarray:
        """Run one step and return its loss; restore and raise ``StopIteration`` if not finite."""
        started = time.perf_counter()
        if self.feed is not None:
            self.feed()
        loss = self.fn()
        elapsed = time.perf_counter() - started
        self.step += 1
        if not np.isfinite(loss):
            self._restore()
            raise StopIteration(self.diverged.message())
        self.seconds.append(elapsed)
        self.window += float(loss)
        if self.step % self.checkpoint_every == 0:
            mean = self.window / self.checkpoint_every
            self.window = 0.0
            # The loss is computed before the update, so the state itself must be checked too.
            if mean < self.best_loss and self._state_is_finite():
                self.best_loss, self.best_step = mean, self.step
                self.best_values = self._snapshot()
        return loss

    def check_final_state(self) -> None:
        """Restore the best snapshot when the last update left a non-finite parameter.

        The last step's loss is that of the parameters before its update, so a blow-up in the
        very last update is only seen here.
        """
        if self.diverged is None and not self._state_is_finite():
            self._restore()

    @property
    def profile(self):
        """The compiled step's PyTensor profile (read by PyMC's ``run_profiling``)."""
        return self.fn.profile
