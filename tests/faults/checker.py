"""The proof every fault scenario ends with, the input it is proven against, and the results file
the fault table in docs/guarantees.md is generated from.

**Input.** :class:`Expected` knows what every (partition, offset) of a topic holds: the index of
the sample record (``consumer.samples`` is seeded, so record ``i`` can be regenerated) or a bad
record (:class:`BadRec`: its key, value, timestamp and the exact reason the consumer gives).
:func:`produce_with_bad` writes good records *and* bad ones (tombstones, truncated bodies, bodies
with trailing bytes, empty bodies) at chosen positions and checks every delivery report's offset
against the plan; :meth:`Expected.plain` describes a topic filled by ``consumer.producer.produce``
alone.

**Proof** (:func:`prove`), after the last consumer run:

* nothing in flight: no object under ``_staging/``, no unfinished multipart upload;
* the topic holds what we think (high watermarks = planned ends) and the group's committed position
  of every partition is its end;
* dead letters: every bad record is in exactly one object under ``_dead_letters/``, with its
  offset, reason, key, value, timestamp and group, inside the object's range; no good record is there;
* every final file parses; its footer says ``kafka.topic``, ``kafka.partition`` (= its folder),
  ``kafka.from_position`` (= the first position in its name), ``kafka.to_position``,
  ``kafka.row_groups`` (= its row groups), ``kafka.group_id`` (= the group) and ``avro.schema``
  (= the writer schema; a missing one is reported last, as :class:`MissingWriterSchema`); its
  rows lie in [from, to); files of a partition do not overlap, and what lies between two files'
  ranges, before the first or after the last, is dead letters only (so ``to_position`` is the
  next file's ``from_position`` unless a whole range in between is dead letters);
* offsets: rows ∪ dead letters = 0..end-1 of every partition, disjoint, each row exactly once;
* values: every row (all columns of the writer schema, maps key by key, logical types exactly,
  plus ``kafka_key`` and ``kafka_timestamp``) equals the record produced at its position.

**Results.** :func:`record` appends a scenario row to ``$FAULT_TABLE`` (default
``.cache/fault-table.jsonl``) tagged with the current run's id; the session fixture in conftest.py
creates the file afresh at the start of each run (:func:`start_run`) and writes every fault test's
outcome (:func:`record_outcome`), so ``dev/fault-report`` builds the table from one run only.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fault_table
import pyarrow as pa
import pyarrow.parquet as pq
from support import (
    assert_values_as_produced,
    download_finals,
    kafka_conf,
    list_keys,
    log_events,
    run_consumer,
    staging_keys,
)

from consumer import samples
from consumer.bucketing import assign, parse_template, time_column, to_millis
from consumer.decoding import BadRecord, Decoder, WriterSchema, decode_bodies
from consumer.layout import Layout

# -- input --------------------------------------------------------------------------------------

#: Kinds of bad record :func:`bad_value` can make.
BAD_KINDS = ("tombstone", "truncated", "trailing", "empty")
#: Bad bodies are built from records far beyond any good record's index.
_BAD_BASE = 10_000_000


@dataclass(frozen=True)
class BadRec:
    """A record the consumer must dead-letter: what was produced and the reason it must give."""

    kind: str
    key: bytes | None
    value: bytes | None
    timestamp: int
    reason: str


def bad_value(schema: str, kind: str, n: int) -> bytes | None:
    """The value of bad record ``n`` of ``kind``, built from a real record of ``schema``."""
    body = samples.encode_raw(samples.parsed_schema(schema), samples.make_record(schema, _BAD_BASE + n))
    if kind == "tombstone":
        return None
    if kind == "truncated":
        return body[: len(body) // 2]
    if kind == "trailing":
        return body + b"\x02\x04"
    if kind == "empty":
        return b""
    raise ValueError(f"unknown bad record kind {kind!r}; known: {BAD_KINDS}")


def reason_for(schema: str, value: bytes | None) -> str:
    """The reason the consumer (raw framing, ``schema``) gives for ``value``, computed with the
    consumer's own decoding functions; fails if the value is not bad at all."""
    writer = WriterSchema.of(samples.load_schema(schema))
    try:
        _, body = Decoder("raw", schema=writer.avro).split(value)
    except BadRecord as exc:
        return exc.reason
    good, bad = decode_bodies(writer, [body])
    assert not good and len(bad) == 1, f"{value!r} decodes as a {schema} record: not a bad record"
    return bad[0][1]


@dataclass
class Expected:
    """What a topic holds: per partition, offset → record index (``good``) or a bad record."""

    topic: str
    schema: str
    partitions: int
    seed: int = 0
    good: dict[int, dict[int, int]] = field(default_factory=dict)
    bad: dict[int, dict[int, BadRec]] = field(default_factory=dict)
    spread_hours: int = 0  # Kafka timestamps shifted by the producer (samples.spread_timestamp_ms)

    @classmethod
    def plain(cls, topic: str, schema: str, counts: Mapping[int, int], seed: int = 0) -> Expected:
        """A topic filled from empty by ``consumer.producer.produce`` (one or more calls with
        consecutive ``start``): record ``i`` → partition ``i % P``, offset ``i // P``."""
        parts = len(counts)
        return cls(
            topic,
            schema,
            parts,
            seed,
            good={p: {o: o * parts + p for o in range(n)} for p, n in counts.items()},
            bad={p: {} for p in counts},
        )

    @classmethod
    def from_topic(
        cls, bootstrap: str, topic: str, schema: str, partitions: int, candidates: range, seed: int = 0
    ) -> Expected:
        """What the topic holds, read back from Kafka, for topics whose producer may have failed
        part-way (and retried): every value must be byte for byte the encoding of one of the
        ``candidates`` records (with that record's key), which then becomes that position's
        expected row."""
        from confluent_kafka import Consumer, TopicPartition

        parsed = samples.parsed_schema(schema)
        by_value = {samples.encode_raw(parsed, samples.make_record(schema, i, seed)): i for i in candidates}
        ends = high_watermarks(bootstrap, topic, partitions)
        good: dict[int, dict[int, int]] = {p: {} for p in range(partitions)}
        c = Consumer(
            kafka_conf({
                "bootstrap.servers": bootstrap,
                "group.id": f"readback-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            })
        )
        try:
            c.assign([TopicPartition(topic, p, 0) for p in range(partitions) if ends[p] > 0])
            todo = {p for p in range(partitions) if ends[p] > 0}
            while todo:
                msg = c.poll(10)
                assert msg is not None, f"reading {topic} back timed out with {todo} unfinished"
                if msg.error():
                    continue  # partition EOF
                p, o, value = msg.partition(), msg.offset(), msg.value()
                assert p is not None and o is not None
                i = by_value.get(value) if value is not None else None
                assert i is not None, f"{topic}[{p}] offset {o} holds no record of {candidates}"
                assert msg.key() == samples.key_for(schema, samples.make_record(schema, i, seed))
                good[p][o] = i
                if o + 1 >= ends[p]:
                    todo.discard(p)
        finally:
            c.close()
        return cls(topic, schema, partitions, seed, good, {p: {} for p in range(partitions)})

    @property
    def ends(self) -> dict[int, int]:
        return {p: len(self.good.get(p, {})) + len(self.bad.get(p, {})) for p in range(self.partitions)}

    @property
    def records(self) -> int:
        return sum(self.ends.values())

    @property
    def bad_count(self) -> int:
        return sum(len(b) for b in self.bad.values())

    def index(self, partition: int, offset: int) -> int:
        try:
            return self.good[partition][offset]
        except KeyError:
            raise AssertionError(
                f"a row for {partition}:{offset}, which holds "
                + (
                    f"a bad record ({self.bad[partition][offset].kind})"
                    if offset in self.bad.get(partition, {})
                    else "nothing"
                )
            ) from None


@dataclass(frozen=True)
class Send:
    """One record to produce, at a planned position."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


def plan_with_bad(
    topic: str, schema: str, n: int, partitions: int, bad: Mapping[tuple[int, int], str], seed: int = 0,
    spread_hours: int = 0,
) -> tuple[Expected, list[Send]]:
    """Good records ``0..n-1`` (record ``i`` to partition ``i % partitions``) with the bad records
    ``bad[(partition, offset)] = kind`` at exactly those positions: what the topic will hold, and
    the records to produce, in order."""
    parsed = samples.parsed_schema(schema)
    exp = Expected(
        topic,
        schema,
        partitions,
        seed,
        {p: {} for p in range(partitions)},
        {p: {} for p in range(partitions)},
        spread_hours,
    )
    sends: list[Send] = []
    nxt = [0] * partitions

    def bad_here(p: int) -> None:
        while (p, nxt[p]) in bad:
            kind = bad[(p, nxt[p])]
            k = exp.bad_count
            value = bad_value(schema, kind, k)
            rec = samples.make_record(schema, _BAD_BASE + k, seed)
            key, ts = samples.key_for(schema, rec), samples.timestamp_ms_for(schema, rec)
            exp.bad[p][nxt[p]] = BadRec(kind, key, value, ts, reason_for(schema, value))
            sends.append(Send(p, nxt[p], key, value, ts))
            nxt[p] += 1

    for i, record in enumerate(samples.generate(schema, n, seed=seed)):
        p = i % partitions
        bad_here(p)
        exp.good[p][nxt[p]] = i
        sends.append(
            Send(
                p,
                nxt[p],
                samples.key_for(schema, record),
                samples.encode_raw(parsed, record),
                samples.spread_timestamp_ms(samples.timestamp_ms_for(schema, record), i, spread_hours),
            )
        )
        nxt[p] += 1
    for p in range(partitions):
        bad_here(p)  # bad records at the very end of a partition
    left = {pos for pos in bad if pos[1] not in exp.bad.get(pos[0], {})}
    assert not left, f"bad positions beyond the partitions' ends: {sorted(left)}"
    return exp, sends


def produce_with_bad(
    bootstrap: str,
    topic: str,
    schema: str,
    n: int,
    partitions: int,
    bad: Mapping[tuple[int, int], str],
    seed: int = 0,
    spread_hours: int = 0,
) -> Expected:
    """Create ``topic`` and produce :func:`plan_with_bad`'s records with one idempotent producer
    (per-partition order = production order); every delivery report's (partition, offset) is
    checked against the plan."""
    from confluent_kafka import Producer

    from consumer.producer import ensure_topic

    exp, sends = plan_with_bad(topic, schema, n, partitions, bad, seed, spread_hours)
    ensure_topic(bootstrap, topic, partitions)
    wrong: list[str] = []

    def delivered(planned: tuple[int, int]) -> Callable[[Any, Any], None]:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                wrong.append(f"{planned}: {err}")
            elif (msg.partition(), msg.offset()) != planned:
                wrong.append(f"planned {planned}, landed at {(msg.partition(), msg.offset())}")

        return cb

    producer = Producer(
        kafka_conf(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 20}
        )
    )
    for r in sends:
        while True:
            try:
                producer.produce(
                    topic,
                    value=r.value,
                    key=r.key,
                    partition=r.partition,
                    timestamp=r.timestamp,
                    on_delivery=delivered((r.partition, r.offset)),
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0 and not wrong, (remaining, wrong[:5])
    return exp


# -- reading the topic and the group ------------------------------------------------------------


def high_watermarks(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        kafka_conf({
            "bootstrap.servers": bootstrap,
            "group.id": f"wm-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        })
    )
    try:
        out = {}
        for p in range(partitions):
            low, high = _watermarks(c, TopicPartition(topic, p))
            assert low == 0, f"partition {p} starts at {low}, expected 0"
            out[p] = high
        return out
    finally:
        c.close()


def _watermarks(c: Any, tp: Any, within: float = 90.0) -> tuple[int, int]:
    """A partition's watermarks, asked again while a broker just thawed or restarted does not know
    the partition yet (a new client's first answer may be UNKNOWN_PARTITION). Each ask waits at
    most 10 s: one ask that waited the whole bound left no time to ask again, and a broker frozen
    for 13 s (its KRaft lease gone) took longer than that to know the partition again in CI."""
    from confluent_kafka import KafkaError, KafkaException

    deadline = time.monotonic() + within
    while True:
        try:
            ask = max(1.0, min(10.0, deadline - time.monotonic()))
            low, high = c.get_watermark_offsets(tp, timeout=ask, cached=False)
            return int(low), int(high)
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code != KafkaError._UNKNOWN_PARTITION or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def committed_positions(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed position per partition (negative: nothing committed)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(kafka_conf({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}))
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        for tp in tps:
            assert tp.error is None, f"committed({topic}[{tp.partition}]): {tp.error}"
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def summary(text: str) -> dict[str, Any]:
    """The run summary (the ``stopped`` event); fails when the run logged none."""
    stops = [e for e in log_events(text) if e.get("event") == "stopped" and "s3_bytes_copied" in e]
    assert len(stops) == 1, f"expected one 'stopped' summary line, found {len(stops)}:\n{text[-3000:]}"
    return stops[0]


# -- the proof ----------------------------------------------------------------------------------


@dataclass
class Proof:
    """What :func:`prove` established (all of it asserted)."""

    records: int
    rows: int
    dead_letters: int
    final_files: int
    values_compared: int
    committed: dict[int, int]

    def row(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "rows": self.rows,
            "dead_letters": self.dead_letters,
            "final_files": self.final_files,
            "values_compared": self.values_compared,
            "committed_at_end": True,
            "missing": 0,
            "duplicated": 0,
            "stray_staging": 0,
        }


class MissingWriterSchema(AssertionError):
    """Final files without ``avro.schema`` in their footer, found after every other check passed
    (``proof``): issue 8 item 15 (a roll finished after a restart wrote none), kept apart so a
    scenario that fails only on it still records what it proved."""

    def __init__(self, message: str, proof: Proof) -> None:
        super().__init__(message)
        self.proof = proof


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def read_dead_letters(s3: Any, bucket: str, prefix: str, topic: str) -> dict[int, dict[int, dict[str, Any]]]:
    """partition → offset → dead-letter line; fails on a line outside its object's range, a line
    of another topic/partition, or an offset in two places."""
    root = f"{prefix}_dead_letters/topic={topic}/"
    out: dict[int, dict[int, dict[str, Any]]] = {}
    where: dict[tuple[int, int], str] = {}
    for key, _ in list_keys(s3, bucket, root):
        part_dir = key[len(root) :].split("/", 1)[0]
        assert part_dir.startswith("partition="), f"unexpected dead-letter object {key}"
        p = int(part_dir.removeprefix("partition="))
        rng = Layout.parse_dead_letter_range(key)
        assert rng is not None, f"dead-letter object with no range in its name: {key}"
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        assert lines, f"empty dead-letter object {key}"
        for d in lines:
            o = d["offset"]
            assert d["topic"] == topic and d["partition"] == p, (
                f"{key}: line for {d['topic']}[{d['partition']}]"
            )
            assert rng[0] <= o < rng[1], f"{key}: offset {o} outside the object's range {rng}"
            assert (p, o) not in where, f"dead letter {p}:{o} in {where[(p, o)]} and {key}"
            where[(p, o)] = key
            out.setdefault(p, {})[o] = d
    return out


def prove(
    *,
    s3: Any,
    bucket: str,
    prefix: str,
    bootstrap: str,
    group: str,
    expected: Expected,
    tmp: Path,
    every: int = 1,
    partition_by: str | None = None,
    timezone: str = "UTC",
) -> Proof:
    """Every check in this module's docstring, on the output under ``prefix`` (no trailing slash
    needed). ``every`` > 1 compares the values of a deterministic subset of rows (offsets, footers
    and dead letters are always checked in full). With ``partition_by`` (the run's template) the
    files sit in bucket folders: every row must be in the bucket its time says, file ranges must
    be disjoint per bucket, and rows ∪ dead letters still cover every offset exactly once."""
    template = parse_template(partition_by, timezone) if partition_by else None
    prefix = prefix.rstrip("/") + "/"
    topic, parts = expected.topic, expected.partitions
    ends = expected.ends

    # Nothing in flight.
    stray = staging_keys(s3, bucket, prefix)
    assert stray == [], f"{len(stray)} stray staging objects, e.g. {stray[:5]}"
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    assert uploads == [], f"unfinished multipart uploads: {[u['Key'] for u in uploads][:5]}"

    # The topic holds what was planned; the group committed all of it.
    assert high_watermarks(bootstrap, topic, parts) == ends, "the topic does not hold what was produced"
    committed = committed_positions(bootstrap, group, topic, parts)
    assert committed == ends, f"committed positions {committed}, expected the ends {ends}"

    # Dead letters: exactly the bad records, once each, as produced.
    dead = read_dead_letters(s3, bucket, prefix, topic)
    for p in range(parts):
        got, want = dead.get(p, {}), expected.bad.get(p, {})
        good_there = sorted(set(got) - set(want))
        assert not good_there, f"partition {p}: good records dead-lettered at offsets {good_there[:10]}"
        missing = sorted(set(want) - set(got))
        assert not missing, f"partition {p}: bad records with no dead letter at offsets {missing[:10]}"
        for o, br in want.items():
            d = got[o]
            assert d["reason"] == br.reason, (
                f"dead letter {p}:{o}: reason {d['reason']!r}, expected {br.reason!r}"
            )
            assert d["value_b64"] == _b64(br.value), f"dead letter {p}:{o}: value differs ({br.kind})"
            assert d["key_b64"] == _b64(br.key), f"dead letter {p}:{o}: key differs"
            assert d.get("group_id") == group, f"dead letter {p}:{o}: group_id {d.get('group_id')!r}"
            assert d["timestamp"] == br.timestamp, (
                f"dead letter {p}:{o}: timestamp {d['timestamp']} != {br.timestamp}"
            )

    # Final files: footers, ranges, rows.
    writer_schema = samples.load_schema(expected.schema)
    paths = download_finals(s3, bucket, prefix, tmp)
    tables: list[pa.Table] = []
    no_schema: list[str] = []
    ranges: dict[tuple[int, str], list[tuple[int, int, Path]]] = {}
    rows_at: dict[int, list[int]] = {}
    for path in paths:
        p = int(path.parent.name.removeprefix("partition="))
        rel = path.relative_to(tmp).parts
        assert path.parent.name == f"partition={p}" and rel[0] == f"topic={topic}", path
        bucket = "/".join(rel[1:-2])
        assert bool(bucket) == (template is not None), f"{path}: bucket folder {bucket!r} vs {partition_by!r}"
        first = int(path.stem.rsplit("+", 1)[1])
        pf = pq.ParquetFile(path)
        kv = {
            k.decode(): v.decode()
            for k, v in (pf.metadata.metadata or {}).items()
            if not k.startswith(b"ARROW:")
        }
        where = f"{path.parent.name}/{path.name}"
        assert kv.get("kafka.topic") == topic, f"{where}: kafka.topic {kv.get('kafka.topic')!r}"
        assert kv.get("kafka.partition") == str(p), f"{where}: kafka.partition {kv.get('kafka.partition')!r}"
        assert kv.get("kafka.from_position") == str(first), (
            f"{where}: kafka.from_position {kv.get('kafka.from_position')!r}, its name says {first}"
        )
        assert kv.get("kafka.group_id") == group, f"{where}: kafka.group_id {kv.get('kafka.group_id')!r}"
        groups = pf.metadata.num_row_groups
        assert kv.get("kafka.row_groups") == str(groups), (
            f"{where}: kafka.row_groups {kv.get('kafka.row_groups')!r}, the file has {groups}"
        )
        if "avro.schema" not in kv:
            no_schema.append(where)  # raised last, after every other check (a known bug)
        else:
            assert json.loads(kv["avro.schema"]) == writer_schema, (
                f"{where}: avro.schema is not the writer schema"
            )
        lo, hi = int(kv["kafka.from_position"]), int(kv["kafka.to_position"])
        table = pf.read()
        assert table.num_rows > 0, f"{where}: a final file with no rows"
        offs = table.column("kafka_offset").to_pylist()
        assert set(table.column("kafka_partition").to_pylist()) == {p}, f"{where}: rows of other partitions"
        outside = [o for o in offs if not lo <= o < hi]
        assert not outside, f"{where}: rows outside [{lo}, {hi}): {outside[:10]}"
        ranges.setdefault((p, bucket), []).append((lo, hi, path))
        rows_at.setdefault(p, []).extend(offs)
        tables.append(table)
        if template is not None:
            if template.field_path is None:
                millis = to_millis(table.column("kafka_timestamp"))
            else:
                millis = time_column(template, table.combine_chunks().to_batches()[0])
            got = assign(template, millis).buckets.to_pylist()
            wrong = [o for o, b in zip(offs, got, strict=True) if b != bucket]
            assert not wrong, f"{where}: rows {wrong[:10]} are not in bucket {bucket} by their time"

    rows = 0
    for p in range(parts):
        bad_offsets = set(expected.bad.get(p, {}))
        # Ranges: disjoint, and whatever no file covers is dead letters only. In the bucketed
        # layout files of different buckets interleave: disjoint per bucket, and coverage is the
        # offsets check below.
        for (rp, _bucket), in_bucket in sorted(ranges.items()):
            if rp != p:
                continue
            covered = 0
            for lo, hi, path in sorted(in_bucket):
                assert lo >= covered, (
                    f"partition {p}: {path.name} starts at {lo}, inside an earlier file (to {covered})"
                )
                gap = set(range(covered, lo)) - bad_offsets
                assert template is not None or not gap, (
                    f"partition {p}: positions {sorted(gap)[:10]} before {path.name} are in no file")
                covered = hi
            assert covered <= ends[p], f"partition {p}: a file reaches {covered}, beyond the end {ends[p]}"
            tail = set(range(covered, ends[p])) - bad_offsets
            assert template is not None or not tail, (
                f"partition {p}: positions {sorted(tail)[:10]} after the last file are in no file")
        # Offsets: rows ∪ dead letters = 0..end-1, disjoint, each row once.
        offs = rows_at.get(p, [])
        dup = len(offs) - len(set(offs))
        assert not dup, f"partition {p}: {dup} duplicated rows"
        both = sorted(set(offs) & set(dead.get(p, {})))
        assert not both, f"partition {p}: offsets both a row and a dead letter: {both[:10]}"
        union = set(offs) | set(dead.get(p, {}))
        assert union == set(range(ends[p])), (
            f"partition {p}: missing {sorted(set(range(ends[p])) - union)[:10]}, "
            f"unexpected {sorted(union - set(range(ends[p])))[:10]}"
        )
        rows += len(offs)
    extra = {rp for rp, _ in ranges} - set(range(parts))
    assert not extra, f"files for partitions {extra} of a {parts}-partition topic"

    values = 0
    if tables:
        values = assert_values_as_produced(
            pa.concat_tables(tables),
            expected.schema,
            parts,
            seed=expected.seed,
            every=every,
            index=expected.index,
            spread_hours=expected.spread_hours,
        )
    proof = Proof(expected.records, rows, sum(len(d) for d in dead.values()), len(paths), values, committed)
    if no_schema:
        raise MissingWriterSchema(
            f"{len(no_schema)} of {len(paths)} final files lack avro.schema: {no_schema[:4]}",
            proof,
        )
    return proof


def finish_and_prove(
    *,
    s3: Any,
    bucket: str,
    prefix: str,
    bootstrap: str,
    group: str,
    expected: Expected,
    tmp: Path,
    args: tuple[str, ...],
    env: dict[str, str] | None = None,
    every: int = 1,
    timeout: float = 300,
) -> Proof:
    """One last ``consumer run --until-caught-up`` (exit 0 required), then :func:`prove`."""
    out = f"s3://{bucket}/{prefix.strip('/')}"
    done = run_consumer(expected.topic, group, out, *args, schema=expected.schema, env=env, timeout=timeout)
    assert done.returncode == 0, f"final run exited {done.returncode}:\n{done.stderr[-4000:]}"
    summary(done.stderr)  # the run ended with its summary line
    template = args[args.index("--partition-by") + 1] if "--partition-by" in args else None
    return prove(
        partition_by=template,
        s3=s3,
        bucket=bucket,
        prefix=prefix,
        bootstrap=bootstrap,
        group=group,
        expected=expected,
        tmp=tmp,
        every=every,
    )


def record_pass(fault: str, kind: str, proof: Proof, **extra: Any) -> None:
    """A scenario proven by :func:`prove` (call it after every assertion of the test)."""
    fault_table.record({"fault": fault, "kind": kind, **proof.row(), **extra})


def proven(prove_it: Callable[[], Proof], fault: str, kind: str, **extra: Any) -> Proof:
    """Run a proof and record the scenario's row; a proof that failed only on a missing
    ``avro.schema`` (:class:`MissingWriterSchema`) is recorded with what it established, then
    re-raised (the row's result comes from the test's outcome)."""
    try:
        proof = prove_it()
    except MissingWriterSchema as exc:
        record_pass(fault, kind, exc.proof, **extra)
        raise
    record_pass(fault, kind, proof, **extra)
    return proof
