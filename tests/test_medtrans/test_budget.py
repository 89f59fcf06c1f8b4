"""The learning-rate schedule and the time budget (medtrans.training.budget)."""

from __future__ import annotations

from medtrans.training.budget import Schedule, lr_factor


def test_the_rate_is_constant_then_decays_linearly_to_zero_at_the_horizon():
    assert [lr_factor(s, 100, 0.5) for s in (0, 49, 50, 60, 100, 120)] == [1.0, 1.0, 1.0, 0.8, 0.0, 0.0]


def test_a_resumed_budgeted_schedule_ends_at_its_horizon_with_or_without_a_budget():
    saved = {"lr_horizon": 40, "lr_horizon_fixed": True, "lr_budgeted": True}
    assert Schedule(max_steps=400, decay_from=0.5, max_minutes=None, state=saved).stop_at(400) == 40
    assert Schedule(max_steps=400, decay_from=0.5, max_minutes=3.0, state=saved).stop_at(400) == 40
    # checkpoints from before the flag: a horizon short of max_steps came from a budget
    old = {"lr_horizon": 40, "lr_horizon_fixed": True}
    assert Schedule(max_steps=400, decay_from=0.5, max_minutes=None, state=old).stop_at(400) == 40
    plain = Schedule(max_steps=400, decay_from=0.5, max_minutes=None)
    assert plain.stop_at(300) == 300 and plain.state() == {"lr_horizon": 400, "lr_horizon_fixed": True,
                                                           "lr_budgeted": False}
