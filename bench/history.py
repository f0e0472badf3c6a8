"""A long history: what a recovery and a roll cost when the partition already has many final files.

    python -m bench.history                  # 3,000 final files, 5 rolls (about a minute)
    python -m bench.history --files 300      # what CI runs (tests/bench/test_bench_smoke.py)

A partition's final folder only grows, one file per roll, for as long as the group runs. Measured
in one process against the local stack's S3 (real requests; positions in memory, since Kafka is not
what is measured): the client CPU and LIST requests of

- listing the whole final folder: what every recovery and every roll did before both listed from
  the newest final file (docs/design.md, "Final files are listed from the newest one");
- one recovery of the partition;
- each roll (append, flush and roll of ``--file-rows`` records: the LIST is part of it).

The history is one real final file copied under ``--files`` starts (only the newest file below a
roll is ever read), named the newest as a roll of ours would. Prints one JSON document and writes
it to bench/results/.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, machine_info, stack_settings, write_json
from consumer import log as logmod
from consumer.config import Config
from consumer.decoding import Decoder
from consumer.layout import Layout
from consumer.samples import encode_raw, load_schema, make_record, parsed_schema
from consumer.storage import S3Store
from consumer.testing import MemoryPositions, Message
from consumer.worker import PartitionWorker, SharedState

TOPIC = "history"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _lists(store: S3Store) -> int:
    return store.stats.requests.get("list_objects_v2", 0)


class _Measured:
    """CPU seconds and LIST requests of a block."""

    def __init__(self, store: S3Store) -> None:
        self.store = store
        self.cpu_s = 0.0
        self.lists = 0

    def __enter__(self) -> _Measured:
        self._cpu, self._lists = _cpu(), _lists(self.store)
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_s = _cpu() - self._cpu
        self.lists = _lists(self.store) - self._lists


def run_history(files: int, rolls: int, file_rows: int = 200) -> dict[str, Any]:
    stack = stack_settings()
    os.environ.update({k: v for k, v in stack.env.items() if k.startswith("AWS_")})
    prefix = f"bench/history-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    layout = Layout(prefix)
    store = S3Store(stack.bucket, endpoint_url=stack.s3_endpoint)
    store.connect()
    schema = parsed_schema("page_view")
    config = Config(
        bootstrap_servers="unused", group_id="bench-history", topics=(TOPIC,),
        output=f"s3://{stack.bucket}/{prefix}", schema="page_view",
        row_group_rows=file_rows, file_rows=file_rows,
    )
    positions = MemoryPositions()

    def worker() -> PartitionWorker:
        return PartitionWorker(
            TOPIC, 0, config=config, store=store, positions=positions, layout=layout,
            decoder=Decoder("raw", schema=load_schema("page_view")), shared=SharedState(),
            log=logmod.get("bench.history"),
        )

    def append(w: PartitionWorker, offsets: range) -> None:
        w.append_batch([Message(i, encode_raw(schema, make_record("page_view", i)), key=b"k",
                                timestamp=1_700_000_000_000 + i, topic=TOPIC) for i in offsets])

    first = worker()
    first.recover()
    append(first, range(file_rows))  # one real final file [0, file_rows)
    real = store.get(layout.final_key(TOPIC, 0, 0))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.put_if_absent(layout.final_key(TOPIC, 0, i), real), range(1, files)))
    store.delete([layout.newest_final_key(TOPIC, 0, 0)])
    store.put_if_absent(layout.newest_final_key(TOPIC, 0, files - 1), b"")
    start = 10 * files  # past every planted start: the committed position of the run
    positions.reset(TOPIC, 0, start)

    listings = []
    for _ in range(3):  # the least of three: the first may pay for a new connection
        with _Measured(store) as measured:
            listed = len(store.list(layout.partition_dir(TOPIC, 0)))
        listings.append(measured)
    whole = min(listings, key=lambda m: m.cpu_s)
    w = worker()
    with _Measured(store) as recovery:
        w.recover()
    per_roll = []
    for n in range(rolls):
        with _Measured(store) as roll:
            append(w, range(start + n * file_rows, start + (n + 1) * file_rows))
        per_roll.append({"cpu_s": round(roll.cpu_s, 4), "lists": roll.lists})
    rolled = w.files_rolled
    keys = [o.key for o in store.list(prefix + "/")]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(store.delete, [keys[i:i + 1000] for i in range(0, len(keys), 1000)]))

    roll_lists = sorted(r["lists"] for r in per_roll)
    return {
        "machine": machine_info(),
        "settings": {"final_files": files, "rolls": rolls, "file_rows": file_rows, "schema": "page_view"},
        "whole_folder_listing": {"keys": listed, "lists": whole.lists, "cpu_s": round(whole.cpu_s, 4)},
        "recovery": {"lists": recovery.lists, "cpu_s": round(recovery.cpu_s, 4)},
        "rolls": per_roll,
        "files_rolled": rolled,
        "summary": {
            "lists_per_roll_median": roll_lists[len(roll_lists) // 2],
            "roll_cpu_s_median": sorted(r["cpu_s"] for r in per_roll)[len(per_roll) // 2],
            "whole_listing_cpu_s": round(whole.cpu_s, 4),
            "recovery_cpu_s": round(recovery.cpu_s, 4),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=3000, help="final files already in the partition")
    ap.add_argument("--rolls", type=int, default=5)
    args = ap.parse_args(argv)
    result = run_history(args.files, args.rolls)
    path = write_json(RESULTS / f"history-{time.strftime('%Y%m%d-%H%M%S')}.json", result)
    s, whole = result["summary"], result["whole_folder_listing"]
    print(
        f"{args.files} final files: listing the whole folder {whole['lists']} LISTs, "
        f"{whole['cpu_s'] * 1000:.0f} ms CPU; a recovery {result['recovery']['lists']} LISTs, "
        f"{s['recovery_cpu_s'] * 1000:.0f} ms; a roll (append, flush, roll of "
        f"{result['settings']['file_rows']} records) {s['lists_per_roll_median']} LISTs of which one "
        f"of the final folder, {s['roll_cpu_s_median'] * 1000:.0f} ms (medians of {args.rolls}). {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
