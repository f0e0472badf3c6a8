"""Replay progress: one pure computation, shown as a progress bar on a terminal or as JSON events.

:func:`compute` turns the replay's start, stop and current positions plus the elapsed time into a
:class:`Progress` (offsets done of total, rate, ETA). It is pure so it is unit-tested without
Kafka. :class:`ProgressReporter` shows it: a `tqdm <https://tqdm.github.io>`_ bar when stderr is a
terminal (log lines are written above the bar, see :func:`consumer.log.set_writer`), otherwise a
structlog ``replay progress`` event every ``every`` seconds, plus one at the start and one at the
end, so a log reader always sees the first and the last state.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from consumer import log as logmod
from consumer.kafka_names import TP


@dataclass(frozen=True)
class Progress:
    done: int  # offsets consumed since the start positions (bounded by the stop positions)
    total: int  # offsets from the start to the stop positions, over every partition
    offsets_per_s: float  # done / elapsed
    eta_s: float | None  # (total - done) / rate; None while the rate is still 0
    partitions_done: int
    partitions: int

    @property
    def fraction(self) -> float:
        return 1.0 if self.total <= 0 else min(1.0, self.done / self.total)

    def as_event(self) -> dict[str, Any]:
        return {
            "offsets_done": self.done,
            "offsets_todo": self.total,
            "percent": round(100 * self.fraction, 1),
            "offsets_per_s": round(self.offsets_per_s),
            "eta_s": None if self.eta_s is None else round(self.eta_s),
            "partitions_done": self.partitions_done,
            "partitions": self.partitions,
        }


def compute(
    starts: Mapping[TP, int],
    stops: Mapping[TP, int],
    positions: Mapping[TP, int | None],
    elapsed_s: float,
    partitions_done: int = 0,
) -> Progress:
    """Progress of a replay over ``starts`` → ``stops``; ``positions`` holds each partition's next
    position (None: nothing read yet). Positions outside [start, stop] are clamped, so a partition
    that starts past its stop counts as 0 of 0."""
    total = done = 0
    for tp, start in starts.items():
        stop = stops[tp]
        span = max(0, stop - start)
        pos = positions.get(tp)
        total += span
        if pos is not None:
            done += min(max(pos, start), stop) - start if span else 0
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else (0.0 if done >= total else None)
    return Progress(done, total, rate, eta, partitions_done, len(starts))


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:d}:{sec:02d}"


def postfix(p: Progress) -> str:
    """The bar's right-hand text: rate, ETA and partitions."""
    rate = p.offsets_per_s
    shown = f"{rate / 1000:.1f}k" if rate >= 1000 else f"{rate:.0f}"
    return f"{shown} offsets/s, ETA {format_eta(p.eta_s)}, {p.partitions_done}/{p.partitions} partitions"


class ProgressReporter:
    """Shows :class:`Progress`: a bar on a terminal (``bar=True``), JSON events otherwise."""

    def __init__(self, log: Any, *, bar: bool, every: float = 5.0, bar_every: float = 0.5) -> None:
        self.log = log
        self.every = bar_every if bar else every
        self._bar: Any = None
        self._use_bar = bar
        self._last: float | None = None

    @staticmethod
    def want_bar(log_format: str) -> bool:
        """A bar when stderr is a terminal and JSON logs were not asked for."""
        return log_format != "json" and sys.stderr.isatty()

    def start(self, p: Progress, now: float) -> None:
        self._last = now
        if self._use_bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=p.total,
                desc="replay",
                unit="offset",
                unit_scale=True,
                dynamic_ncols=True,
                file=sys.stderr,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} offsets, {postfix}",
            )
            logmod.set_writer(self._write_above_bar)
            self._draw(p)
        else:
            self.log.info("replay progress", **p.as_event())

    def update(self, p: Progress, now: float) -> None:
        if self._last is not None and now - self._last < self.every:
            return
        self._last = now
        if self._bar is not None:
            self._draw(p)
        else:
            self.log.info("replay progress", **p.as_event())

    def finish(self, p: Progress) -> None:
        if self._bar is not None:
            self._draw(p)
            self._bar.close()
            self._bar = None
            logmod.set_writer(None)
        elif not self._use_bar:
            self.log.info("replay progress", **p.as_event())

    def close(self) -> None:
        """Leave the terminal usable when the run ends early (error, SIGTERM)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            logmod.set_writer(None)

    def _draw(self, p: Progress) -> None:
        self._bar.total = p.total
        self._bar.n = p.done
        self._bar.set_postfix_str(postfix(p), refresh=False)
        self._bar.refresh()

    @staticmethod
    def _write_above_bar(text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text.rstrip("\n"), file=sys.stderr)
