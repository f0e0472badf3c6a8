"""``consumer verify --since``: an output kept N days by a lifecycle rule is checked for loss only
from there on, while duplicates and files are still checked everywhere (the stack test of the
rule runs the command: tests/integration/test_operator_actions.py)."""

from __future__ import annotations

import re

import pytest

from consumer.samples import encode_raw, make_record, parsed_schema
from consumer.testing import MemoryBroker, MemoryStore, memory_runner
from consumer.verify import Since, VerifyError, parse_since, verify

NOW = 1_764_547_200.0  # 2025-12-01T00:00:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", Since("7d", timestamp_ms=int((NOW - 7 * 86400) * 1000))),
        ("36h", Since("36h", timestamp_ms=int((NOW - 36 * 3600) * 1000))),
        ("1.5h", Since("1.5h", timestamp_ms=int((NOW - 5400) * 1000))),
        ("90m", Since("90m", timestamp_ms=int((NOW - 5400) * 1000))),
        ("2025-11-30T00:00:00Z", Since("2025-11-30T00:00:00Z", timestamp_ms=int((NOW - 86400) * 1000))),
        ("2025-11-30", Since("2025-11-30", timestamp_ms=int((NOW - 86400) * 1000))),  # UTC when unsaid
        ("2025-11-30T01:00:00+01:00", Since("2025-11-30T01:00:00+01:00",
                                            timestamp_ms=int((NOW - 86400) * 1000))),
        ("ts:1700000000000", Since("ts:1700000000000", timestamp_ms=1_700_000_000_000)),
        ("0=100,2=7", Since("0=100,2=7", offsets={0: 100, 2: 7})),
    ],
)
def test_since_reads_durations_times_and_offsets(text: str, expected: Since) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "7 days", "d", "0=", "ts:abc", "0=-1"])
def test_a_since_not_understood_says_what_is_accepted(text: str) -> None:
    with pytest.raises(VerifyError, match=re.escape("--since")):
        parse_since(text, NOW)


def _expired_output() -> tuple[MemoryStore, list[str]]:
    """30 records rolled into three final files of 10; a rule then expired the oldest file."""
    broker, store = MemoryBroker(), MemoryStore()
    broker.create_topic("t", 1)
    schema = parsed_schema("page_view")
    for i in range(30):
        broker.produce("t", encode_raw(schema, make_record("page_view", i)), partition=0, key=b"k")
    assert memory_runner(broker, store, until_caught_up=True, row_group_rows=5, file_rows=10).run() == 0
    finals = sorted(k for k in store.objects if k.endswith(".parquet"))
    assert [k[-28:-8] for k in finals] == [f"{s:020d}" for s in (0, 10, 20)]
    del store.objects[finals[0]]
    return store, finals


def test_an_expired_file_is_loss_unless_the_check_starts_after_it() -> None:
    store, _ = _expired_output()
    report = verify(store, "out", "t", committed={0: 30})
    assert not report.ok and report.partitions[0].missing == [(0, 10)], report.to_text()
    report = verify(store, "out", "t", committed={0: 30}, since=parse_since("0=10", NOW))
    assert report.ok, report.to_text()
    assert report.partitions[0].checked_from == 10 and report.partitions[0].expected == 20
    assert "from=10" in report.to_text() and report.to_json()["partitions"][0]["checked_from"] == 10
    # Starting the check inside what expired still finds the rest of it missing.
    report = verify(store, "out", "t", committed={0: 30}, since=parse_since("0=5", NOW))
    assert not report.ok and report.partitions[0].missing == [(5, 10)]


def test_duplicates_below_the_check_s_start_still_fail() -> None:
    store, finals = _expired_output()
    # A copy of the file [10, 20) under another name: its rows twice, all below the start.
    store.objects[finals[1].replace(f"{10:020d}", f"{11:020d}")] = store.objects[finals[1]]
    report = verify(store, "out", "t", committed={0: 30}, since=parse_since("0=25", NOW))
    assert not report.ok and report.partitions[0].duplicate_count == 10, report.to_text()


def test_a_since_time_needs_kafka_to_say_which_offset_it_is() -> None:
    store, _ = _expired_output()
    with pytest.raises(VerifyError, match="needs --bootstrap-servers"):
        verify(store, "out", "t", committed={0: 30}, since=parse_since("7d", NOW))


def test_missing_offsets_under_a_lifecycle_rule_point_to_since() -> None:
    """The bucket has a rule expiring the final files: a report with missing offsets says that they
    may have expired, and how to check from where the rule keeps. Without missing offsets, or with
    --since given, nothing is said (and the bucket is not asked)."""
    store, _ = _expired_output()
    store.current_expiry = "rule 'keep-30d' after 30 days"
    report = verify(store, "out", "t", committed={0: 30})
    said = [n for n in report.notes if "lifecycle rule 'keep-30d' after 30 days" in n]
    assert not report.ok and len(said) == 1 and "--since 29d" in said[0]
    assert "note: a lifecycle rule" in report.to_text()
    report = verify(store, "out", "t", committed={0: 30}, since=parse_since("0=10", NOW))
    assert report.ok and not [n for n in report.notes if "lifecycle" in n]
    store.current_expiry = None
    assert not [n for n in verify(store, "out", "t", committed={0: 30}).notes if "lifecycle" in n]
