"""The benchmark harness cannot rot: run it once on tiny data, and the short memory soak.

No timing assertions: only that the harness produces its figures and that RSS does not keep
rising across 20+ rolls per partition (median of the second half of the post-warm-up samples vs
the first half, tolerance max(30 %, 20 MB)).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import run as bench_run
from bench.history import run_history
from bench.run import median_run, steady_state
from bench.soak import flatness, run_soak

# Only its own topics, groups and prefixes, and waits for outcomes: see tests/conftest.py. One worker runs
# every bench test: the harness creates its venvs in .cache on first use.
pytestmark = [pytest.mark.stack, pytest.mark.shares_stack, pytest.mark.xdist_group("bench")]


def test_flatness_verdict() -> None:
    flat = [(t / 10, 100_000_000 + (t % 3) * 1_000_000) for t in range(100)]
    rising = [(t / 10, 100_000_000 + t * 2_000_000) for t in range(100)]
    assert flatness(flat)["ok"]
    assert not flatness(rising)["ok"]


def test_harness_tiny_run(stack: Any, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    code = bench_run.main(
        ["--workload", "small", "--records", "2000", "--partitions", "2", "--peer", "none", "--repeat", "2",
         "--out", str(out)]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["machine"]["nproc"]
    ours = result["workloads"]["small"]["systems"]["ours"]
    assert ours["records"] == 2000
    # --repeat 2: each repetition in a group of its own read every record; the median is reported
    assert len(ours["repeats_cpu_s_per_m_records"]) == 2
    assert ours["output"]["rows"] == 2000
    assert ours["output"]["files"] >= 2
    assert ours["peak_rss_mb"] > 0 and ours["cpu_s"] > 0
    assert ours["s3_write_per_input_byte"] > 0
    assert ours["series"]["rss"]
    assert ours["startup_cpu_s"] > 0  # the 1,000-record run beside it (steady-state figures)
    steady = steady_state(2000, 3.0, 1000, 2.0)
    assert steady == {"steady_records_per_cpu_s": 1000, "steady_cpu_us_per_record": 1000.0}
    assert steady_state(2000, 2.0, 1000, 2.5)["steady_records_per_cpu_s"] is None
    assert result["workloads"]["small"]["profile"]["top_stage"]


def test_median_run_reports_one_whole_run() -> None:
    runs = [{"cpu_s": c, "cpu_s_per_m_records": c * 10, "peak_rss_mb": c + 100} for c in (3.0, 1.0, 2.0)]
    chosen = median_run(runs)
    assert (chosen["cpu_s"], chosen["peak_rss_mb"]) == (2.0, 102.0)  # the figures of one run
    assert chosen["repeats_cpu_s_per_m_records"] == [30.0, 10.0, 20.0]  # in the order they ran
    assert median_run(runs[:2])["cpu_s"] == 1.0  # even count: the lower middle
    assert "repeats_cpu_s_per_m_records" not in median_run(runs[:1])


def test_short_soak_memory_is_flat(stack: Any) -> None:
    result = run_soak("short")
    assert result["rolls_per_partition"] >= 20
    assert result["figures"]["output"]["rows"] == result["settings"]["records"]
    verdict = result["verdict"]
    assert verdict["ok"], f"RSS keeps rising across rolls: {verdict}"


def test_history_bench_lists_one_page_per_roll_and_recovery(stack: Any) -> None:
    """1,100 final files are two pages; a recovery and a roll each list the final folder once
    (request counts, not timings)."""
    result = run_history(1_100, rolls=2)
    assert result["whole_folder_listing"] == {**result["whole_folder_listing"], "keys": 1_100, "lists": 2}
    assert result["recovery"]["lists"] == 4  # staging, dead letters, the newest name, one page of finals
    assert [r["lists"] for r in result["rolls"]] == [2, 2]  # the file's staging folder, one page of finals
    assert result["files_rolled"] == 2


def test_many_partition_benches_run_on_tiny_data(stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """bench.recovery and bench.drain (S3 behind the delaying proxy) produce their tables; every
    partition is recovered, flushed on SIGTERM and rolled at the end of a caught-up run."""
    from bench import drain, recovery

    tiny = ["--partitions", "4", "--records-per-partition", "5", "--rtt-ms", "0,20", "--threads", "1,4"]
    assert recovery.main(tiny) == 0
    assert drain.main(tiny) == 0
    tables = capsys.readouterr().out
    assert tables.count("| 20 ms |") == 2 + 4  # recovery: 2 rows; drain: 2 SIGTERM and 2 caught-up rows
    assert "| 4 | 0 |" in tables  # drain: 4 row groups made durable, none left


def test_perf_diff_reads_perf_s_report_and_puts_ours_beside_the_floor() -> None:
    from bench.perf_diff import parse_report, side_by_side

    report = (
        "# Samples: 5K of event 'cpu-clock:ppp'\n#\n"
        "    17.43%          1921  libc.so.6                                   \n"
        "    15.18%          1673  _native.cpython-311-x86_64-linux-gnu.so     \n"
        "     2.25%            30  libarrow.so.2600   [.] ZSTD_compressBlock_fast\n"
    )
    ours = parse_report(report)
    assert ours == {"libc.so.6": 1921, "_native.cpython-311-x86_64-linux-gnu.so": 1673,
                    "libarrow.so.2600 [.] ZSTD_compressBlock_fast": 30}
    lines = side_by_side(ours, {"libc.so.6": 985, "librdkafka.so": 10})
    assert lines[1].split() == ["1673", "0", "1673", "_native.cpython-311-x86_64-linux-gnu.so"]
    assert lines[2].split() == ["1921", "985", "936", "libc.so.6"]
    assert lines[-1].split() == ["0", "10", "-10", "librdkafka.so"]


def test_a_regenerated_report_keeps_the_hand_written_passes_where_they_were() -> None:
    from bench.report import with_hand_written

    doc = (
        "# Benchmarks\n\nold intro\n\n## Second pass (hand-written, 2026-12-06): b\n\ntext b\n\n"
        "### detail\n\nmore b\n\n## First pass (hand-written, 2026-12-05): a\n\ntext a\n\n"
        "## Machine, versions, settings\n\nold figures\n"
    )
    generated = "# Benchmarks\n\nnew intro\n\n## Machine, versions, settings\n\nnew figures\n"
    out = with_hand_written(generated, doc)
    assert out == (
        "# Benchmarks\n\nnew intro\n\n## Second pass (hand-written, 2026-12-06): b\n\ntext b\n\n"
        "### detail\n\nmore b\n\n## First pass (hand-written, 2026-12-05): a\n\ntext a\n\n"
        "## Machine, versions, settings\n\nnew figures\n"
    )
    assert with_hand_written(generated, "") == generated
    assert with_hand_written(generated, out) == out  # regenerating again changes nothing
