"""Output kept N days by a lifecycle rule on the final files and dead letters (README, "Keeping N
days of output"): a quiet partition's every file expires. What the rule leaves, one small object
per partition, still says where that output ended: ``_newest_final/`` in the plain layout,
``_rolled/`` under ``--partition-by``. So when the group's offsets expire too, recovery adopts that
end instead of exporting what Kafka still holds of the expired files once more, and a reset
backwards into expired output is refused as one into output that is still there. On the memory
broker and store; tests/integration/test_operator_actions.py does it on the stack, and
tests/unit/test_group_history.py draws the rule at any point of a group's bad day."""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow.parquet as pq
import pytest
from structlog.testing import capture_logs

from consumer.errors import EXIT_FATAL
from consumer.samples import encode_raw, make_record, parsed_schema
from consumer.testing import MemoryBroker, MemoryStore, memory_runner
from consumer.worker import NamedFinal

LAYOUTS = {"plain": {}, "bucketed": {"partition_by": "dt={ts:%Y-%m-%d}/hr={ts:%H}"}}


def _produce(broker: MemoryBroker, first: int, n: int, bad: int = 0) -> None:
    schema = parsed_schema("page_view")
    for i in range(first, first + n):
        value = encode_raw(schema, make_record("page_view", i))
        broker.produce("t", value + b"\x00\x01" if i < first + bad else value, key=b"k")


def _run(broker: MemoryBroker, store: MemoryStore, **cfg: Any) -> tuple[int, list[dict[str, Any]]]:
    runner = memory_runner(broker, store, **{"row_group_rows": 10, "file_rows": 20,
                                             "until_caught_up": True, **cfg})
    with capture_logs() as logs:
        code = runner.run()
    return code, logs


def _offsets(store: MemoryStore) -> list[int]:
    tables = [pq.read_table(io.BytesIO(v)) for k, v in store.objects.items()
              if k.endswith(".parquet") and "/_" not in k]
    return sorted(o for t in tables for o in t.column("kafka_offset").to_pylist())


def _expire_output(store: MemoryStore) -> None:
    """The README's rule: the final files (``<prefix>/topic=``) and ``_dead_letters/`` expire."""
    for key in [k for k in store.objects if k.startswith(("out/topic=", "out/_dead_letters/"))]:
        del store.objects[key]


def _expired(layout: str) -> tuple[MemoryBroker, MemoryStore]:
    """A partition that rolled [0, 40) (3 bad records among them) and whose every file and dead
    letter expired since; its group's offsets are still 40."""
    broker, store = MemoryBroker(), MemoryStore()
    broker.create_topic("t", 1)
    _produce(broker, 0, 40, bad=3)
    assert _run(broker, store, **LAYOUTS[layout])[0] == 0
    assert broker.committed_offset("g", "t", 0) == 40
    _expire_output(store)
    assert _offsets(store) == [] and not any("/_staging/" in k for k in store.objects)
    return broker, store


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_partition_whose_every_file_expired_adopts_where_it_ended_when_its_offsets_expire_too(
    layout: str,
) -> None:
    """Before, the plain layout found no final file and started again from the log's start: what
    Kafka still held of the expired files was exported once more."""
    broker, store = _expired(layout)
    broker.reset_offsets("g", "t", 0, None)  # offsets.retention.minutes passed
    code, logs = _run(broker, store, **LAYOUTS[layout])
    assert code == 0
    assert any(e["event"].startswith("no committed position in the group (offsets expired or deleted): "
                                     "adopting 40 from what S3 holds") for e in logs), logs
    assert _offsets(store) == [] and broker.committed_offset("g", "t", 0) == 40
    _produce(broker, 40, 20)
    assert _run(broker, store, **LAYOUTS[layout])[0] == 0
    assert _offsets(store) == list(range(40, 60))


def test_the_name_of_the_newest_final_file_says_its_range_topic_and_writer() -> None:
    _broker, store = _expired("plain")
    [key] = [k for k in store.objects if k.startswith("out/_newest_final/")]
    assert key.endswith(f"/{23:020d}")  # files of 20 rows: [0, 23) (3 bad records) and [23, 40)
    assert json.loads(store.objects[key]) == {"end": 40, "topic_id": "t-id1", "writer": "g"}
    assert NamedFinal.parse(23, store.objects[key]) == NamedFinal(23, 40, "t-id1", "g")
    for junk in (b"", b"{}", b"[]", b"null", b'{"end": 23}', b'{"end": "40"}', b"\xff"):
        assert NamedFinal.parse(23, junk) is None, junk


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_reset_backwards_into_expired_output_is_refused_with_nothing_changed(layout: str) -> None:
    """The rule's output is gone, but reading it again would still export it once more: refused
    as a reset into output that is still there (the bucketed layout did so already). Deleting the
    name first is the way to export it again on purpose."""
    broker, store = _expired(layout)
    before = dict(store.objects)
    broker.reset_offsets("g", "t", 0, 5)
    code, logs = _run(broker, store, **LAYOUTS[layout])
    assert code == EXIT_FATAL
    said = str(next(e for e in logs if e["event"] == "stopped: IntegrityError")["error"])
    assert "the committed position 5 is below the end 40" in said
    assert "--to-offset 40" in said
    assert store.objects == before
    if layout == "plain":
        assert ("the final file that started at 23, which is gone (a lifecycle rule expired it, or it "
                "was deleted; _newest_final/ still names it)") in said
        for key in [k for k in store.objects if k.startswith("out/_newest_final/")]:
            del store.objects[key]
        assert _run(broker, store, **LAYOUTS[layout])[0] == 0
        assert _offsets(store) == [o for o in range(5, 40) if o >= 3]


def test_a_name_written_by_an_earlier_version_says_no_end_and_the_partition_starts_again() -> None:
    """Names written before they held the file's range are empty: the partition starts again from
    the log's start, as it did (README)."""
    broker, store = _expired("plain")
    [key] = [k for k in store.objects if k.startswith("out/_newest_final/")]
    store.objects[key] = b""
    broker.reset_offsets("g", "t", 0, None)
    assert _run(broker, store)[0] == 0
    assert _offsets(store) == list(range(3, 40))


def test_a_topic_recreated_after_its_output_expired_is_refused_by_the_id_the_name_holds() -> None:
    """The topic was deleted and created again (its offsets with it) after the partition's every
    file expired: adopting the old output's end would skip the new topic's records below it."""
    broker, store = _expired("plain")
    broker.recreate_topic("t", offsets_kept=False)
    _produce(broker, 1000, 50)
    code, logs = _run(broker, store)
    assert code == EXIT_FATAL
    said = str(next(e for e in logs if e["event"] == "stopped: IntegrityError")["error"])
    assert "the output here was read from an earlier topic 't' (topic id t-id1)" in said
    assert _offsets(store) == []
