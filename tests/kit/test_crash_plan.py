"""``CrashPlan`` on its own: arranging crashes, counting step bodies, reproducible random
crashes."""

from __future__ import annotations

import pytest
from stent.faults import WorkerCrash
from stent_testing import CrashPlan

from .workflows import charge, reserve


def _pass(plan: CrashPlan, point: str, step: str | None = None, task_id: str = "t1") -> bool:
    """Pass ``point``; True if the plan crashed there."""
    try:
        plan.hit_sync(point, step=step, task_id=task_id)
    except WorkerCrash:
        return True
    return False


def test_unknown_point_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="before_step"):
        CrashPlan().at("after_lunch")


def test_step_filter_on_a_point_without_steps_is_refused() -> None:
    with pytest.raises(ValueError, match="after="):
        CrashPlan().at("during_heartbeat", step=charge)


@pytest.mark.parametrize("times", [0, -1, True, 1.5])
def test_invalid_times_is_refused(times: object) -> None:
    with pytest.raises(ValueError, match="times"):
        CrashPlan().at("before_step", times=times)  # type: ignore[arg-type]


def test_crashes_only_for_the_named_step() -> None:
    plan = CrashPlan().at("before_step", step=charge)
    assert not _pass(plan, "before_step", reserve.name)
    assert _pass(plan, "before_step", charge.name)


def test_crashes_as_many_times_as_asked() -> None:
    plan = CrashPlan().at("after_step_result", step="kit.charge", times=2)
    assert [_pass(plan, "after_step_result", "kit.charge") for _ in range(3)] == [
        True, True, False]
    assert [p for p, _ in plan.crashes] == ["after_step_result"] * 2


def test_after_arms_the_rule_once_that_step_is_recorded() -> None:
    plan = CrashPlan().at("before_claim", after=reserve)
    assert not _pass(plan, "before_claim")
    _pass(plan, "after_step_recorded", reserve.name)
    assert _pass(plan, "before_claim")


def test_body_runs_counts_bodies_that_started() -> None:
    plan = CrashPlan().at("before_step", step=charge)
    _pass(plan, "before_step", charge.name, "t1")  # crashed: the body never started
    _pass(plan, "before_step", charge.name, "t1")
    _pass(plan, "before_step", reserve.name, "t2")
    assert plan.body_runs == {charge.name: 1, reserve.name: 1}


def test_a_body_started_after_its_outcome_was_recorded_is_reported() -> None:
    plan = CrashPlan()
    _pass(plan, "before_step", charge.name, "t1")
    _pass(plan, "after_step_recorded", charge.name, "t1")
    _pass(plan, "before_step", charge.name, "t1")
    assert plan.reruns_after_record == [(charge.name, "t1")]


def _random_pattern(seed: int) -> list[bool]:
    plan = CrashPlan().random(seed, 0.3)
    return [_pass(plan, "before_step", f"s{i % 4}") for i in range(40)]


def test_random_crashes_are_reproducible_for_a_seed() -> None:
    assert _random_pattern(7) == _random_pattern(7)


def test_random_crashes_differ_between_seeds() -> None:
    assert _random_pattern(7) != _random_pattern(8)


def test_random_decisions_do_not_depend_on_other_points_passed_between() -> None:
    quiet = CrashPlan().random(3, 0.5)
    noisy = CrashPlan().random(3, 0.5)
    alone = [_pass(quiet, "before_step", "x") for _ in range(20)]
    interleaved = []
    for i in range(20):
        for _ in range(i % 3):  # claims happen a timing-dependent number of times
            _pass(noisy, "before_claim")
        interleaved.append(_pass(noisy, "before_step", "x"))
    assert alone == interleaved


def test_random_rate_one_always_crashes_and_zero_never() -> None:
    always = CrashPlan().random(1, 1.0)
    never = CrashPlan().random(1, 0.0)
    assert all(_pass(always, "after_step_result", "x") for _ in range(10))
    assert not any(_pass(never, "after_step_result", "x") for _ in range(10))


def test_random_limit_caps_the_crashes() -> None:
    plan = CrashPlan().random(1, 1.0, limit=2)
    assert sum(_pass(plan, "before_step", "x") for _ in range(10)) == 2


def test_random_refuses_a_rate_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match="rate"):
        CrashPlan().random(1, 1.5)


async def test_restart_without_a_supervised_worker_says_what_to_use() -> None:
    with pytest.raises(RuntimeError, match="stent_worker"):
        await CrashPlan().restart()
