"""consumer.budget: how --memory-bytes is shared out so the whole process stays within it + 100 MB."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consumer.budget import ALLOWANCE, MemoryPlan, batch_messages, fetch_bytes, fetch_response_bytes

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


def test_below_the_soft_limit_the_arenas_get_the_plan_and_above_it_give_up_the_excess() -> None:
    """The soft limit leaves one flush's room under the bound; what RSS is over it comes off what
    the arenas hold now."""
    plan = MemoryPlan.of(128 * MiB, 8 * MiB, process_rss=ALLOWANCE + 10_000_000)
    assert plan.bound == 128 * MiB + ALLOWANCE
    assert plan.soft_limit == plan.bound - 3 * 8 * MiB - 2 * fetch_response_bytes(128 * MiB)
    assert plan.over(0) == 0 and plan.over(plan.soft_limit) == 0  # not measured / at the limit
    assert plan.buffers_at(plan.soft_limit, 70_000_000) == plan.buffers
    assert plan.over(plan.soft_limit + 5_000_000) == 5_000_000
    assert plan.buffers_at(plan.soft_limit + 5_000_000, 60_000_000) == 55_000_000
    # never more than the plan gives, never less than a quarter of it
    assert plan.buffers_at(plan.soft_limit + 1, plan.buffers * 2) == plan.buffers
    assert plan.buffers_at(plan.bound * 2, 60_000_000) == plan.buffers // 4


@given(st.integers(MiB, 1 << 40), st.integers(1, 1 << 30), st.integers(0, 1 << 41), st.integers(0, 1 << 41),
       st.integers(0, 1 << 41))
def test_the_squeezed_share_stays_within_a_quarter_and_the_plan_and_falls_as_rss_rises(
    memory: int, row_group: int, rss: int, more: int, buffered: int
) -> None:
    plan = MemoryPlan.of(memory, row_group)
    share = plan.buffers_at(rss, buffered)
    assert plan.buffers // 4 <= share <= plan.buffers
    assert plan.buffers_at(rss + more, buffered) <= share
    assert (share == plan.buffers) or plan.over(rss) > 0


@given(st.integers(1, 1 << 40))
def test_a_fetch_response_is_a_quarter_of_the_queue_and_1_to_4_mib(memory: int) -> None:
    """Messages keep their whole fetch response alive; with many partitions several responses
    stay alive at once, so each is small beside the queue (consumer.budget)."""
    response = fetch_response_bytes(memory)
    assert MiB <= response <= 4 * MiB
    assert response <= fetch_bytes(memory)
    assert response == max(MiB, min(4 * MiB, fetch_bytes(memory) // 4))
    assert fetch_response_bytes(128 * MiB) == 2 * MiB and fetch_response_bytes(512 * MiB) == 4 * MiB


def test_a_batch_of_large_records_asks_for_fewer_so_it_holds_about_one_fetch_response() -> None:
    """The soft limit's room counts a consumed batch as one fetch response; ``--batch-size`` alone
    would let 5,000 records of 1 KB hold 5 MB."""
    cap = MemoryPlan.of(128 * MiB, 8 * MiB).batch
    assert cap == fetch_response_bytes(128 * MiB) == 2 * MiB
    assert batch_messages(5000, 5000, 5000, 5000 * 1000, cap) == cap // 1000  # `metrics`: 2,097
    assert batch_messages(5000, 5000, 5000, 5000 * 117, cap) == 5000  # `page_view`: unchanged
    assert batch_messages(5000, 2097, 2097, 2097 * 117, cap) == 5000  # smaller records again: back
    assert batch_messages(5000, 2097, 0, 0, cap) == 2097  # an empty batch says nothing
    assert batch_messages(5000, 5000, 3, 3 * 50 * MiB, cap) == 1  # records over the cap: one at a time


@given(st.integers(1, 100_000), st.integers(1, 100_000), st.integers(0, 100_000), st.integers(0, 1 << 40),
       st.integers(MiB, 4 * MiB))
def test_the_next_batch_stays_within_batch_size_and_about_the_cap(
    batch_size: int, current: int, consumed: int, consumed_bytes: int, cap: int
) -> None:
    n = batch_messages(batch_size, current, consumed, consumed_bytes, cap)
    if consumed == 0 or consumed_bytes == 0:
        assert n == current
        return
    assert 1 <= n <= batch_size
    # n records of the last batch's mean size fit the cap, and one more would not
    assert n == 1 or n * consumed_bytes <= cap * consumed
    assert n == batch_size or (n + 1) * consumed_bytes > cap * consumed
