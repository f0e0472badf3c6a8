"""Where ours spends beyond the consume floor: both under ``perf record``, sample counts side by side.

``python -m bench.perf_diff --topic bench-small-n3000000-p4-s0 --schema page_view --records 3000000``
runs ours (``consumer run --until-caught-up``, the bench venv, as ``bench.run`` does) and the
floor (``bench/floor_peer.py``) on the same topic, one after the other, each under ``perf record``
at the same frequency, and prints the samples of every library (perf's "dso") for both and what
ours has beyond the floor, then ours' top symbols. A sample is the same CPU time in both, so the
column "ours − floor" is where the ratio of the issue's goal is lost, library by library. Needs
``perf`` (Debian's ``linux-perf``) and the local stack with the topic produced (``bench.run``
produces it). Not a timing: run it twice and compare the shape, not the last sample.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from bench.adapters import ensure_ours_venv
from bench.common import OURS_VENV, REPO, Stack, child_env, stack_settings

_ROW = re.compile(r"^\s*[\d.]+%\s+(\d+)\s+(.+?)\s*$")


def ours_argv(stack: Stack, topic: str, schema: str, tag: str) -> list[str]:
    return [
        str(OURS_VENV / "bin" / "python"), "-m", "consumer", "run", "--group-id", f"perf-diff-{tag}",
        "--topic", topic, "--schema", schema, "--output", f"s3://{stack.bucket}/bench/perf-diff/{tag}",
        "--s3-endpoint-url", stack.s3_endpoint, "--log-format", "json", "--until-caught-up",
    ]


def floor_argv(stack: Stack, topic: str, records: int, tag: str) -> list[str]:
    return [
        sys.executable, str(REPO / "bench" / "floor_peer.py"), "--bootstrap", stack.bootstrap,
        "--topic", topic, "--group-id", f"perf-diff-floor-{tag}", "--count", str(records),
    ]


def record(argv: Sequence[str], env: dict[str, str], data: Path, frequency: int) -> None:
    """``argv`` under ``perf record`` into ``data``; raises with its stderr if it failed."""
    ran = subprocess.run(
        ["perf", "record", "-q", "-F", str(frequency), "-o", str(data), "--", *argv],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=1800,
    )
    if ran.returncode != 0:
        raise RuntimeError(f"{argv[1:4]} failed under perf (rc={ran.returncode}): {ran.stderr[-1500:]}")


def samples_by(data: Path, sort: str) -> dict[str, int]:
    """Samples per ``sort`` key (``dso`` or ``dso,sym``) of a ``perf record`` file."""
    return parse_report(subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio", "-n", "-g", "none"],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout)


def parse_report(text: str) -> dict[str, int]:
    """Samples per key of ``perf report --stdio -n`` text (rows ``12.34%  567  key``)."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("#") and (m := _ROW.match(line)):
            key = re.sub(r"\s+", " ", m.group(2))
            found[key] = found.get(key, 0) + int(m.group(1))
    return found


def side_by_side(ours: dict[str, int], floor: dict[str, int], top: int | None = None) -> list[str]:
    """One line per key: ours, the floor, ours − floor; by ours − floor, largest first."""
    keys = sorted(set(ours) | set(floor), key=lambda k: -(ours.get(k, 0) - floor.get(k, 0)))
    total_o, total_f = sum(ours.values()), sum(floor.values())
    lines = [f"{'ours':>8} {'floor':>8} {'ours−floor':>11}  (of {total_o} and {total_f} samples)"]
    for k in keys[:top]:
        o, f = ours.get(k, 0), floor.get(k, 0)
        lines.append(f"{o:8d} {f:8d} {o - f:11d}  {k[:110]}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--schema", required=True)
    ap.add_argument("--records", type=int, required=True, help="the topic's records (the floor stops there)")
    ap.add_argument("--frequency", type=int, default=999, help="samples per second of CPU")
    ap.add_argument("--symbols", type=int, default=30, help="how many of ours' symbols to print")
    args = ap.parse_args(argv)
    if shutil.which("perf") is None:
        print("perf is not installed (Debian: apt-get install linux-perf)", file=sys.stderr)
        return 2
    stack = stack_settings()
    ensure_ours_venv()
    tag = uuid.uuid4().hex[:8]
    env = child_env(stack)
    with tempfile.TemporaryDirectory(prefix="perf-diff-") as tmp:
        ours_data, floor_data = Path(tmp) / "ours.data", Path(tmp) / "floor.data"
        record(ours_argv(stack, args.topic, args.schema, tag), {**env, "PYTHONPATH": str(REPO)}, ours_data,
               args.frequency)
        record(floor_argv(stack, args.topic, args.records, tag), env, floor_data, args.frequency)
        print("by library:")
        print("\n".join(side_by_side(samples_by(ours_data, "dso"), samples_by(floor_data, "dso"))))
        print(f"\nby symbol, the {args.symbols} where ours spends most beyond the floor:")
        print("\n".join(side_by_side(samples_by(ours_data, "dso,sym"), samples_by(floor_data, "dso,sym"),
                                     args.symbols)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
