"""Stage profile: run the consumer under cProfile and split its time into pipeline stages.

``python -m bench.profile_stages OUT.prof -- run --group-id … (consumer CLI arguments)`` runs
``consumer.cli.main`` under cProfile and dumps the stats (exit code preserved).

:func:`stage_split` reads such a dump. Every function's *own* time (tottime) is charged to a
``consumer.*`` module: a function inside the package is charged to its own module; time spent in
a library (confluent-kafka's C consume, fastavro, pyarrow, botocore, …) is charged to the
``consumer`` modules that called it, in proportion to the time each caller spent calling it, by
walking up the call graph. Modules are then grouped into stages.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
from collections import defaultdict
from typing import Any

#: consumer module → stage. Modules not listed go to "other".
STAGES: dict[str, str] = {
    "consumer.runner": "consume (poll/dispatch)",
    "consumer.decoding": "decode (Avro)",
    "consumer.native": "decode (Avro)",  # the Rust chunk decoder, called through consumer.native
    "consumer.arena": "arena append + Arrow build",
    "consumer.typemap": "arena append + Arrow build",
    "consumer.rowgroup": "row-group encode (Parquet)",
    "consumer.storage": "S3 upload / roll",
    "consumer.parquet_merge": "S3 upload / roll",
    "consumer.thrift_compact": "S3 upload / roll",
    "consumer.positions": "offset commit",
    "consumer.worker": "worker bookkeeping",
    "consumer.layout": "worker bookkeeping",
}

Func = tuple[str, int, str]

#: Built-ins whose own time is a thread waiting, not the CPU working: cProfile counts wall time,
#: so the runner's wait for the flushes of a run's end (the position calls it serves) would
#: otherwise be charged to "offset commit" as if it were work. Shown as a stage of their own.
WAITING = "waiting (locks, queues, sleep: not CPU)"
_WAITS = (
    "<method 'get' of '_queue.SimpleQueue' objects>",
    "<method 'acquire' of '_thread.lock' objects>",
    "<method 'acquire' of '_thread.RLock' objects>",
    "<built-in method time.sleep>",
)


def _is_wait(func: Func) -> bool:
    return func[0] == "~" and func[2] in _WAITS


def _module_of(func: Func) -> str | None:
    filename = func[0].replace("\\", "/")
    marker = "/consumer/"
    if marker in filename and filename.endswith(".py") and "/site-packages/" not in filename:
        rest = filename.rsplit(marker, 1)[1][:-3].replace("/", ".")
        return f"consumer.{rest}"
    return None


def stage_split(prof_path: str) -> dict[str, Any]:
    st: Any = pstats.Stats(prof_path)
    stats: dict[Func, Any] = st.stats  # func -> (cc, nc, tt, ct, callers{func: (cc, nc, tt, ct)})
    memo: dict[Func, dict[str, float]] = {}

    def owners(func: Func, depth: int = 0) -> dict[str, float]:
        """Fractions of ``func``'s time to charge to each consumer module."""
        mod = _module_of(func)
        if mod is not None:
            return {mod: 1.0}
        if func in memo:
            return memo[func]
        memo[func] = {"(outside consumer)": 1.0}  # cycle guard
        callers = stats.get(func, (0, 0, 0, 0, {}))[4]
        total = sum(v[3] for v in callers.values()) or sum(v[2] for v in callers.values())
        if depth > 40 or not callers or total <= 0:
            return memo[func]
        out: dict[str, float] = defaultdict(float)
        for caller, v in callers.items():
            w = (v[3] or v[2]) / total
            for m, f in owners(caller, depth + 1).items():
                out[m] += w * f
        memo[func] = dict(out)
        return memo[func]

    by_module: dict[str, float] = defaultdict(float)
    waiting = 0.0
    for func, (_cc, _nc, tt, _ct, _callers) in stats.items():
        if _is_wait(func):
            waiting += tt
            continue
        for m, f in owners(func).items():
            by_module[m] += tt * f
    by_stage: dict[str, float] = defaultdict(float)
    for m, t in by_module.items():
        by_stage[STAGES.get(m, "other (startup, CLI, outside the pipeline)")] += t
    total = sum(by_stage.values()) or 1.0  # shares are of the work, the waiting left out
    stages: list[dict[str, Any]] = sorted(
        ({"stage": s, "seconds": round(t, 3), "share": round(t / total, 4)} for s, t in by_stage.items()),
        key=lambda d: -d["seconds"],
    )
    pipeline = [s for s in stages if not s["stage"].startswith("other")]
    if waiting:
        stages.append({"stage": WAITING, "seconds": round(waiting, 3), "share": None})
    # The heaviest library functions, for naming what the top stage spends its time in.
    working = {f: v for f, v in stats.items() if not _is_wait(f)}
    top_funcs = sorted(working.items(), key=lambda kv: -kv[1][2])[:12]
    return {
        "total_s": round(total, 3),
        "stages": stages,
        "modules": {m: round(t, 3) for m, t in sorted(by_module.items(), key=lambda kv: -kv[1])},
        "top_stage": pipeline[0]["stage"] if pipeline else None,
        "top_functions": [
            {"function": f"{f[0].rsplit('/', 1)[-1]}:{f[1]}({f[2]})", "own_s": round(v[2], 3)}
            for f, v in top_funcs
        ],
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[1] != "--":
        print("usage: python -m bench.profile_stages OUT.prof -- <consumer arguments>", file=sys.stderr)
        return 2
    out, args = argv[0], argv[2:]
    from consumer.cli import main as consumer_main

    prof = cProfile.Profile()
    try:
        code = int(prof.runcall(consumer_main, args) or 0)
    finally:
        prof.dump_stats(out)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
