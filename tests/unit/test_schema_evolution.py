"""Schema evolution with Confluent framing: one reader schema per file (consumer.evolution).

Interleaved writer schema ids share a file; a newer schema that the file's cannot read rolls it
once; an older one that cannot be read goes to dead letters with the reason; a registry outage
holds records back (paused, retried, never dead-lettered). All on the in-memory doubles
(consumer.testing: MemoryRegistry, MemoryStore, MemoryPositions, MemoryBroker).
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import Any

import fastavro
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from consumer import log as logmod
from consumer.config import Config
from consumer.decoding import Decoder, WriterSchema
from consumer.errors import RegistryStop
from consumer.evolution import VersionedSchema, choose_reader
from consumer.layout import Layout
from consumer.metrics import Observer
from consumer.resolution import resolution_problem, subject_for
from consumer.testing import (
    MemoryBroker,
    MemoryPositions,
    MemoryRegistry,
    MemoryStore,
    Message,
    memory_runner,
)
from consumer.worker import AVRO_SCHEMA_KEY, PartitionWorker, SharedState

LAYOUT = Layout("out")
SUBJECT = "t-value"

V1: dict[str, Any] = {
    "type": "record",
    "name": "Evt",
    "namespace": "ex",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "n", "type": "int"},
        {"name": "old", "type": "string"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
    ],
}
V2: dict[str, Any] = {  # removes `old`, promotes n int→long, adds country with a default
    "type": "record",
    "name": "Evt",
    "namespace": "ex",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "n", "type": "long"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "country", "type": "string", "default": "zz"},
    ],
}
V3: dict[str, Any] = {  # n long→double, a nested record with a default, an alias for country
    "type": "record",
    "name": "Evt",
    "namespace": "ex",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "n", "type": "double"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "land", "type": "string", "default": "zz", "aliases": ["country"]},
        {
            "name": "geo",
            "type": ["null", {"type": "record", "name": "Geo", "fields": [{"name": "lat", "type": "float"}]}],
            "default": None,
        },
    ],
}
STRICT: dict[str, Any] = {  # a newer version that no older writer can be read as: `must` has no default
    "type": "record",
    "name": "Evt",
    "namespace": "ex",
    "fields": [{"name": "id", "type": "long"}, {"name": "must", "type": "string"}],
}

BASE = Config(
    bootstrap_servers="unused",
    group_id="g",
    topics=("t",),
    output="s3://bucket/out",
    framing="confluent",
    schema_registry_url="http://unused",
    row_group_rows=50,
    file_rows=None,
    decoder="python",
)


def value(registry: MemoryRegistry, schema: dict[str, Any], i: int) -> bytes:
    sid = next(k for k, v in registry.schemas.items() if v == schema)
    names = {f["name"] for f in schema["fields"]}
    rec: dict[str, Any] = {"id": i, "n": i * 3, "old": f"o{i}", "tags": [f"t{i}"], "country": f"c{i}",
                           "land": f"c{i}", "geo": {"lat": 1.5}, "must": "m"}
    rec = {k: v for k, v in rec.items() if k in names}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), rec)
    return b"\x00" + sid.to_bytes(4, "big") + buf.getvalue()


def make_worker(store: MemoryStore, positions: MemoryPositions, registry: MemoryRegistry,
                config: Config = BASE, clock: Any = None) -> PartitionWorker:
    kw: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return PartitionWorker(
        "t", 0, config=config, store=store, positions=positions, layout=LAYOUT,
        decoder=Decoder("confluent", registry=registry), shared=SharedState(), log=logmod.get("test"), **kw,
    )


def finals(store: MemoryStore) -> list[tuple[str, Any]]:
    return [
        (k, pq.read_table(io.BytesIO(store.objects[k])))
        for k in sorted(store.objects)
        if k.endswith(".parquet") and "/_" not in k
    ]


def dead(store: MemoryStore) -> list[dict[str, Any]]:
    out = []
    for k, data in store.objects.items():
        if "_dead_letters/" in k:
            out += [json.loads(line) for line in data.decode().splitlines()]
    return sorted(out, key=lambda d: d["offset"])


def rows(store: MemoryStore) -> list[dict[str, Any]]:
    return sorted((r for _, t in finals(store) for r in t.to_pylist()), key=lambda r: r["kafka_offset"])


def feed(w: PartitionWorker, values: list[bytes], start: int = 0) -> None:
    for i, v in enumerate(values, start):
        w.append(Message(i, v, key=b"k", timestamp=1_700_000_000_000 + i))


# -- the case: v1/v2 interleaving --------------------------------------------------------
@pytest.mark.parametrize("decoder", ["python", "native"])
def test_interleaved_v1_v2_is_one_file_change_per_upgrade_with_every_value_right(decoder: str) -> None:
    """10 v1 records, then v2 is registered and 200 records alternate v1/v2: exactly one file
    change (at the first v2 record), every v1 record read as v2 (default filled, int promoted,
    removed field gone)."""
    reg = MemoryRegistry()
    reg.register(SUBJECT, V1)
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, reg, replace(BASE, decoder=decoder))
    w.recover()
    feed(w, [value(reg, V1, i) for i in range(10)])
    reg.register(SUBJECT, V2)
    feed(w, [value(reg, V2 if i % 2 else V1, i) for i in range(10, 210)], start=10)
    w.finish()
    files = finals(store)
    assert [t.num_rows for _, t in files] == [11, 199]  # one change: at offset 11, the first v2
    first, second = files[0][1], files[1][1]
    assert "old" in first.column_names and "country" not in first.column_names
    assert "country" in second.column_names and "old" not in second.column_names
    by_offset = {r["kafka_offset"]: r for r in rows(store)}
    assert sorted(by_offset) == list(range(210))
    for i in range(11, 210):
        r = by_offset[i]
        assert (r["id"], r["n"], r["tags"]) == (i, i * 3, [f"t{i}"])
        assert r["country"] == (f"c{i}" if i % 2 else "zz")  # default for v1 writers
    assert second.schema.field("n").type == "int64"
    meta = pq.ParquetFile(io.BytesIO(store.objects[files[1][0]])).metadata.metadata
    assert json.loads(meta[AVRO_SCHEMA_KEY.encode()]) == V2  # the footer carries the reader schema
    assert dead(store) == []


def test_registry_already_holding_v2_gives_one_file_and_roll_mode_keeps_a_file_per_flip() -> None:
    reg = MemoryRegistry()
    reg.register(SUBJECT, V1)
    reg.register(SUBJECT, V2)
    values = [value(reg, V2 if i % 2 else V1, i) for i in range(200)]
    for mode, expected in (("resolve", 1), ("roll", 200)):
        store, positions = MemoryStore(), MemoryPositions()
        w = make_worker(store, positions, reg, replace(BASE, schema_evolution=mode))
        w.recover()
        feed(w, values)
        w.finish()
        assert len(finals(store)) == expected, mode
        assert [r["kafka_offset"] for r in rows(store)] == list(range(200))


@pytest.mark.parametrize("decoder", ["python", "native"])
def test_several_versions_promotions_aliases_and_nested_defaults(decoder: str) -> None:
    """v1, v2, v3 interleaved after v3 is registered: one file of v3; int→long→double, the alias
    `land` reads v2's `country`, the nested union defaults to null."""
    reg = MemoryRegistry()
    for s in (V1, V2, V3):
        reg.register(SUBJECT, s)
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, reg, replace(BASE, decoder=decoder))
    w.recover()
    feed(w, [value(reg, (V1, V2, V3)[i % 3], i) for i in range(60)])
    w.finish()
    assert len(finals(store)) == 1
    for r in rows(store):
        i = r["kafka_offset"]
        assert r["n"] == float(i * 3)
        assert r["land"] == ("zz" if i % 3 == 0 else f"c{i}")
        assert r["geo"] == ({"lat": 1.5} if i % 3 == 2 else None)


def test_newer_unreadable_schema_rolls_once_and_older_unreadable_goes_to_dead_letters() -> None:
    reg = MemoryRegistry()
    reg.register(SUBJECT, V1)
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, reg)
    w.recover()
    feed(w, [value(reg, V1, i) for i in range(5)])
    reg.register(SUBJECT, STRICT)
    feed(w, [value(reg, STRICT if i % 2 else V1, i) for i in range(5, 15)], start=5)
    w.finish()
    assert [t.num_rows for _, t in finals(store)] == [5, 5]
    letters = dead(store)
    assert [d["offset"] for d in letters] == [6, 8, 10, 12, 14]
    assert "schema id 1 (version 1) cannot be read as schema id 2 (version 2)" in letters[0]["reason"]
    assert "field 'must' is not in the writer schema and has no default" in letters[0]["reason"]
    assert positions.committed("t", 0) == 15


def test_restart_keeps_the_resumed_files_reader_schema() -> None:
    """A restart in the middle of a v2 file: v1 and v2 records after it join the same file."""
    reg = MemoryRegistry()
    reg.register(SUBJECT, V1)
    reg.register(SUBJECT, V2)
    store, positions = MemoryStore(), MemoryPositions()
    values = [value(reg, V2 if i % 2 else V1, i) for i in range(120)]
    w = make_worker(store, positions, reg)
    w.recover()
    feed(w, values[:70])
    w.close()  # flushed, file left open (as on revoke or SIGTERM)
    w2 = make_worker(store, positions, reg)
    assert w2.recover() == 70
    feed(w2, values[70:], start=70)
    w2.finish()
    assert len(finals(store)) == 1
    assert [r["kafka_offset"] for r in rows(store)] == list(range(120))


# -- registry outage -------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_registry_outage_holds_records_back_and_retries_without_dead_letters() -> None:
    reg = MemoryRegistry()
    reg.register(SUBJECT, V1)
    clock = Clock()
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, reg, replace(BASE, registry_timeout=60.0), clock=clock)
    w.recover()
    feed(w, [value(reg, V1, i) for i in range(5)])
    reg.register(SUBJECT, V2)
    reg.down = True
    feed(w, [value(reg, V2 if i % 2 else V1, i) for i in range(5, 20)], start=5)
    assert [m.offset() for m in w.waiting] == list(range(5, 20))  # from the unseen id on, in order
    w.flush()
    assert positions.committed("t", 0) == 5  # what waits is not committed
    clock.t += 0.5
    assert not w.retry_due(clock())
    clock.t += 1.0
    assert w.retry_due(clock())
    w.retry_waiting()  # still down: held again, longer backoff
    assert len(w.waiting) == 15 and w.retry_at == clock.t + 2.0
    reg.down = False
    clock.t += 2.0
    w.retry_waiting()
    assert w.waiting == [] and w.registry_down_since is None
    w.finish()
    assert dead(store) == []
    assert [r["kafka_offset"] for r in rows(store)] == list(range(20))


def test_registry_outage_past_the_timeout_stops_with_nothing_dead_lettered() -> None:
    reg = MemoryRegistry()
    reg.register(SUBJECT, V1)
    clock = Clock()
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, reg, replace(BASE, registry_timeout=10.0), clock=clock)
    w.recover()
    reg.down = True
    feed(w, [value(reg, V1, i) for i in range(3)])
    clock.t += 11
    with pytest.raises(RegistryStop, match="unreachable for 11s"):
        w.retry_waiting()
    w.close()
    assert dead(store) == [] and positions.committed("t", 0) is None


def test_runner_pauses_the_partition_during_an_outage_and_exports_everything_after() -> None:
    reg = MemoryRegistry()
    reg.register(SUBJECT, V1)
    reg.register(SUBJECT, V2)
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    for i in range(300):
        broker.produce("t", value(reg, V2 if i % 2 else V1, i), key=b"k")
    reg.down = True
    ticks = [0.0]

    def clock() -> float:  # every call moves time on; the registry comes back after a while
        ticks[0] += 0.05
        if ticks[0] > 8.0:
            reg.down = False
        return ticks[0]

    store = MemoryStore()
    runner = memory_runner(
        broker, store, clock=clock, value_decoder=Decoder("confluent", registry=reg), framing="confluent",
        schema=None, schema_registry_url="http://unused", until_caught_up=True, decoder="python",
    )
    observer = Observer(runner, registry=CollectorRegistry(auto_describe=True), exit=lambda code: None)
    held: list[float] = []

    def scrape(_c: Any) -> None:  # the held-back gauge, as Prometheus would see it during the outage
        for line in observer.scrape().decode().splitlines():
            if line.startswith('kafka_parquet_registry_held_records{partition="0",topic="t"}'):
                held.append(float(line.rsplit(" ", 1)[1]))

    runner.consumer.on_consume = scrape
    assert runner.run() == 0
    assert dead(store) == []
    assert [r["kafka_offset"] for r in rows(store)] == list(range(300))
    assert len(finals(store)) == 1
    assert held and max(held) > 0  # the gauge showed the records held back during the outage


# -- the pure parts ----------------------------------------------------------------------------------
def test_resolution_problem_follows_the_avro_rules() -> None:
    assert resolution_problem(V1, V2) is None
    assert resolution_problem(V2, V3) is None
    assert resolution_problem(V1, V3) is None
    assert resolution_problem(V3, V1) == "field 'n': writer type double cannot be read as int"
    assert "field 'must'" in (resolution_problem(V1, STRICT) or "")
    s = {"type": "record", "name": "R", "fields": [{"name": "b", "type": "bytes"}]}
    t = {"type": "record", "name": "R", "fields": [{"name": "b", "type": "string"}]}
    assert resolution_problem(s, t) is None and resolution_problem(t, s) is None
    e1 = {"type": "record", "name": "R", "fields": [
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}}]}
    e2 = {"type": "record", "name": "R", "fields": [
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A"]}}]}
    e3 = {"type": "record", "name": "R", "fields": [
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A"], "default": "A"}}]}
    assert resolution_problem(e2, e1) is None
    assert "enum symbols ['B']" in (resolution_problem(e1, e2) or "")
    assert resolution_problem(e1, e3) is None
    other = {"type": "record", "name": "Other", "fields": [{"name": "id", "type": "long"}]}
    assert "cannot be read as record" in (resolution_problem(other, V1) or "")
    u1 = {"type": "record", "name": "R", "fields": [{"name": "x", "type": ["null", "int"]}]}
    u2 = {"type": "record", "name": "R", "fields": [{"name": "x", "type": ["null", "double"]}]}
    u3 = {"type": "record", "name": "R", "fields": [{"name": "x", "type": "int"}]}
    assert resolution_problem(u1, u2) is None and resolution_problem(u3, u1) is None
    assert "null" in (resolution_problem(u1, u3) or "")


def test_subject_strategies() -> None:
    assert subject_for("topic", "t", V1) == "t-value"
    assert subject_for("record", "t", V1) == "ex.Evt"
    assert subject_for("topic-record", "t", V1) == "t-ex.Evt"


def test_choose_reader_policy_table() -> None:
    def vs(avro: dict[str, Any], sid: int, version: int | None) -> VersionedSchema:
        return VersionedSchema(WriterSchema.of(avro, sid), version)

    def problem(w: WriterSchema, r: WriterSchema) -> str | None:
        return resolution_problem(w.avro, r.avro)

    v1, v2, strict = vs(V1, 1, 1), vs(V2, 2, 2), vs(STRICT, 3, 3)
    assert choose_reader(v1, None, v2, problem).reader == v2  # first file: the latest
    assert choose_reader(v1, v2, v2, problem).reader == v2  # older into the newer file
    assert choose_reader(v2, v1, v2, problem).reader == v2  # upgrade: roll to the latest
    assert choose_reader(v1, v1, v2, problem).reader == v1  # no reason to change yet
    assert choose_reader(strict, v2, strict, problem).reader == strict  # newer, unreadable: roll
    d = choose_reader(v1, strict, strict, problem)
    assert d.reader is None and "has no default" in d.reason  # older, unreadable: dead letter
    assert choose_reader(v1, None, None, problem).reader == v1  # no subject: its own schema


def test_flags_parse_and_bad_values_say_what_to_use() -> None:
    from consumer.config import load

    cfg = load({"schema_evolution": "roll", "subject_strategy": "record", "registry_timeout": "90s"}, env={})
    assert (cfg.schema_evolution, cfg.subject_strategy, cfg.registry_timeout) == ("roll", "record", 90.0)
    env = {"CONSUMER_SCHEMA_EVOLUTION": "merge", "CONSUMER_SUBJECT_STRATEGY": "nope"}
    problems = replace(BASE, schema_evolution="merge", subject_strategy="nope").problems()
    assert any("schema-evolution 'merge' unknown: use one of resolve, roll" in p for p in problems)
    assert any("subject-strategy 'nope' unknown: use one of topic, record, topic-record" in p
               for p in problems)
    assert load({}, env=env).schema_evolution == "merge"  # parsed as given; problems() rejects it


def test_record_name_strategy_reads_the_reader_from_the_record_subject() -> None:
    reg = MemoryRegistry()
    reg.register("ex.Evt", V1)
    reg.register("ex.Evt", V2)
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, reg, replace(BASE, subject_strategy="record"))
    w.recover()
    feed(w, [value(reg, V2 if i % 2 else V1, i) for i in range(40)])
    w.finish()
    assert len(finals(store)) == 1
    assert ("latest_version", "ex.Evt") in reg.calls
    assert {r["country"] for r in rows(store) if r["kafka_offset"] % 2 == 0} == {"zz"}


def test_older_unreadable_record_under_on_error_fail_stops_with_everything_before_it_committed() -> None:
    from consumer.errors import BadRecordStop

    reg = MemoryRegistry()
    reg.register(SUBJECT, V1)
    reg.register(SUBJECT, STRICT)
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, reg, replace(BASE, on_error="fail"))
    w.recover()
    feed(w, [value(reg, STRICT, i) for i in range(4)])
    with pytest.raises(BadRecordStop, match=r"offset 4: writer schema id 1 .* has no default"):
        feed(w, [value(reg, V1, 4)], start=4)
    assert positions.committed("t", 0) == 4 and dead(store) == []
