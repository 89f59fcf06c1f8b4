"""The learning-rate schedule and the time budget: constant, then linear decay to zero at the schedule's horizon.

``train.max_steps`` is the horizon; with ``--max-minutes`` the horizon follows the budget instead: from
:data:`BUDGET_WARMUP_STEPS` steps on, the measured mean time per step estimates the step at which the budget ends
(never beyond ``train.max_steps``), re-estimated every :data:`BUDGET_WARMUP_STEPS` steps while the rate is constant
and fixed when the decay begins. The checkpoint records it, so a resume continues the same schedule, and a run whose
budgeted schedule has ended stops there (the rate is zero beyond it), with or without ``--max-minutes``.

Example:
    >>> s = Schedule(max_steps=100, decay_from=0.5, max_minutes=None)
    >>> [round(s.factor(step), 2) for step in (0, 49, 50, 75, 100)]
    [1.0, 1.0, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

#: A time budget fixes the learning-rate schedule's horizon after this many steps, timing those after the first
#: BUDGET_SKIP_STEPS (which carry one-time costs: allocation, first-touch of the data, thread pools).
BUDGET_WARMUP_STEPS = 25
BUDGET_SKIP_STEPS = 5


def lr_factor(step: int, horizon: int, decay_from: float) -> float:
    """The learning-rate multiplier at ``step``: 1, then linear to 0 from ``decay_from * horizon`` to ``horizon``."""
    start = int(horizon * decay_from)
    if step < start:
        return 1.0
    return max(0.0, (horizon - step) / max(1, horizon - start))


class Schedule:
    """The horizon of the learning-rate schedule, fixed or still following a time budget."""

    def __init__(self, *, max_steps: int, decay_from: float, max_minutes: float | None,
                 state: dict[str, Any] | None = None) -> None:
        self.max_steps, self.decay_from, self.max_minutes = max_steps, decay_from, max_minutes
        self.horizon, self.fixed, self.budgeted = max_steps, max_minutes is None, max_minutes is not None
        if state is not None and "lr_horizon" in state:
            self.horizon = int(state["lr_horizon"])
            self.fixed = bool(state["lr_horizon_fixed"]) or max_minutes is None
            # checkpoints before this field: a horizon short of max_steps can only have come from a budget
            self.budgeted = bool(state.get("lr_budgeted", self.horizon < max_steps))
        self._t_start = self._t_timed = time.perf_counter()
        self._start = 0

    def factor(self, step: int) -> float:
        return lr_factor(step, self.horizon, self.decay_from)

    def state(self) -> dict[str, Any]:
        """What the checkpoint keeps of the schedule."""
        return {"lr_horizon": self.horizon, "lr_horizon_fixed": self.fixed, "lr_budgeted": self.budgeted}

    def stop_at(self, stop: int) -> int:
        """Where a run asked to stop at ``stop`` stops: a budgeted schedule that is fixed ends at its horizon."""
        return min(stop, self.horizon) if self.budgeted and self.fixed else stop

    def begin(self, start: int) -> None:
        """Start the clock (the budget counts from here) at global step ``start``."""
        self._start = start
        self._t_start = self._t_timed = time.perf_counter()

    def observe(self, done: int, *, world: int, device: torch.device) -> bool:
        """Update the horizon after step ``done`` (every rank alike); True when the decay has just begun."""
        if self.fixed:
            return False
        ran = done - self._start
        if ran == BUDGET_SKIP_STEPS:  # the first steps carry one-time costs: time the ones after
            self._t_timed = time.perf_counter()
        elif ran >= BUDGET_WARMUP_STEPS and ran % BUDGET_WARMUP_STEPS == 0:
            # re-estimated while the rate is still constant (a new horizon changes no rate used so far); fixed once
            # the decay begins, so that the decay runs to zero within the budget
            now = time.perf_counter()
            per_step = (now - self._t_timed) / (ran - BUDGET_SKIP_STEPS)
            remaining = max(0.0, 60 * self.max_minutes - (now - self._t_start))
            horizon = min(self.max_steps, done + int(remaining / max(per_step, 1e-9)))
            if world > 1:  # rank 0's estimate on every rank
                value = torch.tensor([horizon], device=device)
                dist.broadcast(value, src=0)
                horizon = int(value.item())
            self.horizon = max(horizon, done + 1)
            self.fixed = done >= int(self.horizon * self.decay_from)
            return self.fixed
        return False

    def timed_out(self, done: int, *, world: int, device: torch.device) -> bool:
        """A budgeted run ends at its horizon (the rate is zero there); the clock stays a backstop."""
        if self.max_minutes is None:
            return False
        out = (time.perf_counter() - self._t_start) > 60 * self.max_minutes or (self.fixed and done >= self.horizon)
        if world > 1:
            flag = torch.tensor([int(out)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out = bool(flag.item())
        return out
