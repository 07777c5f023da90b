"""loadtest/capacity.py: the queueing arithmetic against known values, and answers that move the
right way when the inputs do."""

from __future__ import annotations

import dataclasses

import pytest

from loadtest.capacity import Scenario, erlang_c, replicas_needed


def scenario(**changes: object) -> Scenario:
    base = Scenario(
        seconds_per_cover=0.9, articles_per_day=30_000, regions=34, looks_per_article=8, variants=2,
        reads_per_day=6_000_000, hit_ratio=0.98, prepare="all", publish_hours=16.0, peak_factor=2.5,
        latency_target_s=5.0, percentile=0.95, stacks_per_replica=10, distinct_looks=32,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(("servers", "offered", "want"), [(1, 0.5, 0.5), (2, 1.0, 1 / 3), (3, 2.0, 4 / 9)])
def test_erlang_c_known_values(servers: int, offered: float, want: float) -> None:
    # M/M/1: P(wait) = rho; M/M/2 at a = 1: 1/3; M/M/3 at a = 2: 4/9 (textbook closed forms)
    assert erlang_c(servers, offered) == pytest.approx(want)


def test_answers_move_with_the_inputs() -> None:
    base = replicas_needed(scenario())
    assert base * scenario().max_utilisation >= scenario().peak_rate() * 0.9  # the throughput floor
    assert replicas_needed(scenario(prepare="none")) < base
    assert replicas_needed(scenario(seconds_per_cover=1.8)) > base
    assert replicas_needed(scenario(hit_ratio=0.9)) > base
    assert replicas_needed(scenario(latency_target_s=1.0)) >= base


def test_a_target_below_one_painting_is_refused() -> None:
    with pytest.raises(SystemExit, match="below one cover's painting time"):
        replicas_needed(scenario(latency_target_s=0.5))
