"""consumer.budget: how --memory-bytes is shared out so the whole process stays within it + 100 MB."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consumer.budget import ALLOWANCE, MemoryPlan, fetch_bytes

MiB = 1 << 20


def test_the_default_budget_sets_aside_prefetch_flush_and_the_process_beyond_its_allowance() -> None:
    plan = MemoryPlan.of(512 * MiB, 8 * MiB, process_rss=ALLOWANCE + 20_000_000)
    assert plan.fetch == 2 * 32 * MiB  # librdkafka's queue and one response in flight
    assert plan.flush == 3 * 8 * MiB
    assert plan.process == 20_000_000
    assert plan.buffers == 512 * MiB - 64 * MiB - 24 * MiB - 20_000_000
    assert not plan.too_small


def test_a_process_within_its_allowance_costs_the_budget_nothing() -> None:
    assert MemoryPlan.of(512 * MiB, 8 * MiB, process_rss=ALLOWANCE - 1).process == 0
    assert MemoryPlan.of(512 * MiB, 8 * MiB).process == 0  # not measured (in-memory doubles)


def test_a_budget_too_small_for_the_process_still_leaves_the_buffers_a_quarter_and_says_so() -> None:
    plan = MemoryPlan.of(32 * MiB, 8 * MiB, process_rss=ALLOWANCE + 20_000_000)
    assert plan.too_small
    assert plan.buffers == 8 * MiB
    enough = MemoryPlan.of(plan.smallest_sufficient, 8 * MiB, process_rss=ALLOWANCE + 20_000_000)
    assert not enough.too_small


@given(st.integers(1, 1 << 40), st.integers(1, 1 << 30), st.integers(0, 1 << 32))
def test_the_buffers_never_get_more_than_the_budget_or_less_than_a_quarter(
    memory: int, row_group: int, rss: int
) -> None:
    plan = MemoryPlan.of(memory, row_group, rss)
    assert memory // 4 <= plan.buffers <= memory
    assert plan.too_small == (plan.buffers == memory // 4 and memory - plan.reserved < memory // 4)
    assert MiB <= fetch_bytes(memory) <= 32 * MiB
