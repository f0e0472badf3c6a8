"""Replay progress: the pure computation and the JSON-event reporter (the bar is tested on a pty in
tests/integration/test_replay_progress.py)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from consumer.progress import Progress, ProgressReporter, compute, format_eta, postfix

A, B = ("t", 0), ("t", 1)


def test_compute_sums_offsets_done_of_total_with_rate_and_eta() -> None:
    p = compute({A: 100, B: 0}, {A: 300, B: 200}, {A: 200, B: 50}, elapsed_s=10.0, partitions_done=0)
    assert (p.done, p.total) == (150, 400)
    assert p.offsets_per_s == 15.0
    assert p.eta_s == pytest.approx(250 / 15)
    assert p.fraction == pytest.approx(0.375)
    assert (p.partitions_done, p.partitions) == (0, 2)


def test_compute_clamps_positions_and_handles_nothing_read_yet() -> None:
    # A: read past its stop (the poll returned more) → counted up to the stop; B: nothing read yet.
    p = compute({A: 0, B: 10}, {A: 50, B: 20}, {A: 70, B: None}, elapsed_s=5.0)
    assert (p.done, p.total) == (50, 60)
    # a resumed position below the start (cannot happen, but must not count negatively)
    assert compute({A: 10}, {A: 20}, {A: 3}, elapsed_s=1.0).done == 0


def test_compute_without_a_rate_has_no_eta_and_an_empty_replay_is_complete() -> None:
    assert compute({A: 0}, {A: 10}, {A: None}, elapsed_s=0.0).eta_s is None
    assert compute({A: 0}, {A: 10}, {A: 0}, elapsed_s=3.0).eta_s is None
    empty = compute({A: 5}, {A: 5}, {A: 5}, elapsed_s=0.0, partitions_done=1)
    assert (empty.done, empty.total, empty.fraction, empty.eta_s) == (0, 0, 1.0, 0.0)


def test_event_and_bar_text() -> None:
    p = Progress(done=1500, total=6000, offsets_per_s=1234.4, eta_s=3.6, partitions_done=1, partitions=4)
    assert p.as_event() == {
        "offsets_done": 1500,
        "offsets_todo": 6000,
        "percent": 25.0,
        "offsets_per_s": 1234,
        "eta_s": 4,
        "partitions_done": 1,
        "partitions": 4,
    }
    assert postfix(p) == "1.2k offsets/s, ETA 0:04, 1/4 partitions"
    assert [format_eta(s) for s in (None, 59.4, 61, 3725)] == ["?", "0:59", "1:01", "1:02:05"]


class RecordingLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))


def test_reporter_logs_json_events_at_start_every_interval_and_at_the_end() -> None:
    log = RecordingLog()
    r = ProgressReporter(log, bar=False, every=5.0)
    starts, stops = {A: 0}, {A: 100}
    r.start(compute(starts, stops, {A: None}, 0.0), now=0.0)
    r.update(compute(starts, stops, {A: 10}, 1.0), now=1.0)  # within the interval: no event
    r.update(compute(starts, stops, {A: 60}, 6.0), now=6.0)
    r.finish(compute(starts, stops, {A: 100}, 8.0, partitions_done=1))
    assert [e for e, _ in log.events] == ["replay progress"] * 3
    assert [kw["offsets_done"] for _, kw in log.events] == [0, 60, 100]
    assert log.events[-1][1]["percent"] == 100.0 and log.events[-1][1]["eta_s"] == 0


def test_reporter_bar_draws_offsets_and_routes_log_lines_above_it(monkeypatch: Any) -> None:
    from consumer import log as logmod

    term = io.StringIO()
    monkeypatch.setattr("sys.stderr", term)
    logmod.configure("console", "info")
    r = ProgressReporter(logmod.get("test"), bar=True, bar_every=0.0)
    starts, stops = {A: 0}, {A: 2000}
    r.start(compute(starts, stops, {A: None}, 0.0), now=0.0)
    logmod.get("test").info("row group durable", rows=10)
    r.update(compute(starts, stops, {A: 1000}, 2.0), now=2.0)
    r.finish(compute(starts, stops, {A: 2000}, 4.0, partitions_done=1))
    out = term.getvalue()
    assert "row group durable" in out
    assert "50%" in out and "100%" in out
    assert "1.00k/2.00k offsets" in out and "500 offsets/s" in out and "1/1 partitions" in out
    assert "replay progress" not in out  # on a terminal the bar replaces the events
