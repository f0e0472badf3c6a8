"""How ``--memory-bytes`` is shared out, aiming at a whole process within it plus 100 MB.

The bound operators size containers by is the process's peak RSS: ``--memory-bytes`` + 100 MB
(README, ``--memory-bytes``; docs/guarantees.md, "Bounded memory"). The arenas' buffered rows
are only part of what the process holds, so they get what is left after the parts they do not
see:

- **fetch**: librdkafka's prefetch queue, plus the fetch responses its messages keep alive (twice
  the queue limit the runner gives librdkafka: 1/16 of the budget, 1–32 MiB);
- **flush**: encoding a row group holds the Parquet pages being written, the finished piece and
  its upload (about three row groups' worth of encoded bytes, the byte target);
- **process**: what the process itself holds once started (interpreter, pyarrow, the S3 and Kafka
  clients) beyond the 100 MB allowance; measured by the entry point (``cli``) when the run starts.

A budget too small for all that still leaves the arenas a quarter of it, and
:attr:`MemoryPlan.too_small` says so, for the runner to warn at start.

The plan is an estimate made once: librdkafka's threads, the S3 client and the allocators' free
lists grow after it (glibc keeps memory freed in the middle of its heap). So the runner also reads
the process's RSS as it runs. Above :attr:`MemoryPlan.soft_limit` (the bound less room for one
flush) it first hands freed memory back (``malloc_trim`` through pyarrow's system pool), and what
is still over comes off the arenas' share (:meth:`MemoryPlan.buffers_at`): the largest arenas
flush early, and their freed memory is reused instead of new memory being taken. This is the
soft limit of OpenTelemetry's ``memory_limiter`` applied to the one part a consumer can give
back, its buffered rows.

Pure: the runner applies the plan (``Runner._enforce_memory_budget``).
"""

from __future__ import annotations

from dataclasses import dataclass

#: What the bound allows the process beyond ``--memory-bytes``.
ALLOWANCE = 100 * 1000 * 1000


def fetch_bytes(memory_bytes: int) -> int:
    """librdkafka's queue and its largest fetch response: 1/16 of the budget, 1–32 MiB."""
    return max(1 << 20, min(32 << 20, memory_bytes // 16))


def fetch_response_bytes(memory_bytes: int) -> int:
    """librdkafka's ``fetch.max.bytes``: a quarter of :func:`fetch_bytes`, 1–4 MiB.

    A fetch response is one buffer, and the messages librdkafka queues from it point into it: the
    buffer lives until the last of them is consumed. With many partitions one response holds
    records of dozens of them, which the loop reaches at different times, so several whole
    responses stay alive while the queue limit counts only what is left of them. Measured with a
    bare confluent-kafka loop over 200 partitions: 8 MiB responses held 52 MB, 1 MiB 19 MB; in the
    consumer at 128MiB the peak fell from 252 to 184 MB with 2 MiB, and at 512MiB from 317 to
    221 MB with 4 MiB, with the same CPU. 4 MiB per request still carries 200 MB/s per broker at
    a 20 ms round trip."""
    return max(1 << 20, min(4 << 20, fetch_bytes(memory_bytes) // 4))


def batch_messages(batch_size: int, current: int, consumed: int, consumed_bytes: int, cap: int) -> int:
    """How many messages the next ``consume()`` asks for: ``--batch-size``, or fewer, so that a batch
    of records the size of the last batch's (``consumed`` of them, ``consumed_bytes`` together)
    holds about ``cap`` bytes (:attr:`MemoryPlan.batch`); ``current`` when the last batch was
    empty, at least 1.

    The soft limit leaves room for one consumed batch as large as a fetch response, and a count
    alone does not keep that promise: 5,000 ``metrics`` records of 1 KB are 5 MB, held twice while
    they are dispatched (the messages, then each partition's gathered copy). Records under
    ``cap / --batch-size`` (800 bytes with the defaults) are not affected."""
    if consumed <= 0 or consumed_bytes <= 0:
        return current
    return max(1, min(batch_size, cap * consumed // consumed_bytes))


@dataclass(frozen=True)
class MemoryPlan:
    """The budget's parts, in bytes; :attr:`buffers` is what the arenas may hold together."""

    memory_bytes: int
    fetch: int
    flush: int
    process: int

    @classmethod
    def of(cls, memory_bytes: int, row_group_bytes: int, process_rss: int = 0) -> MemoryPlan:
        """The plan for a budget, a row-group byte target and the process's RSS at start (0: not
        known, as in tests on the in-memory doubles)."""
        return cls(
            memory_bytes=memory_bytes,
            fetch=2 * fetch_bytes(memory_bytes),
            flush=3 * row_group_bytes,
            process=max(0, process_rss - ALLOWANCE),
        )

    @property
    def reserved(self) -> int:
        return self.fetch + self.flush + self.process

    @property
    def buffers(self) -> int:
        return max(self.memory_bytes - self.reserved, self.memory_bytes // 4)

    @property
    def batch(self) -> int:
        """About what one consumed batch may hold: one fetch response (:func:`batch_messages`)."""
        return fetch_response_bytes(self.memory_bytes)

    @property
    def bound(self) -> int:
        """The process's peak RSS this plan is for: ``--memory-bytes`` + 100 MB."""
        return self.memory_bytes + ALLOWANCE

    @property
    def soft_limit(self) -> int:
        """RSS above which one more flush (its pages, the piece and its upload) may pass
        :attr:`bound`, with room for what arrives before the next reading (a fetch response, a
        consumed batch of at most :attr:`batch` bytes: two fetch responses' worth). Without that
        room 1M ``page_view`` records at 128MiB peaked 0-1 MB over the bound in some runs."""
        return self.bound - self.flush - 2 * self.batch

    def over(self, rss: int) -> int:
        """How far ``rss`` is above :attr:`soft_limit` (0 below it, or when not measured: 0)."""
        return max(0, rss - self.soft_limit)

    def buffers_at(self, rss: int, buffered: int) -> int:
        """The arenas' share while the process is at ``rss`` and they hold ``buffered`` bytes:
        :attr:`buffers`, less what ``rss`` is over the soft limit, taken from what they hold now;
        never under a quarter of :attr:`buffers`, so that row groups stay useful under pressure
        that is not theirs (librdkafka, a leak), which flushing cannot relieve."""
        excess = self.over(rss)
        if not excess:
            return self.buffers
        return max(self.buffers // 4, min(self.buffers, buffered - excess))

    @property
    def too_small(self) -> bool:
        """True when the arenas get less than the budget minus what the rest needs: peak RSS may
        then pass ``--memory-bytes`` + 100 MB."""
        return self.memory_bytes - self.reserved < self.memory_bytes // 4

    @property
    def smallest_sufficient(self) -> int:
        """About the least ``--memory-bytes`` that is not :attr:`too_small` (to suggest): the
        prefetch reserve grows with the budget, so a few steps find it."""
        m = self.memory_bytes
        while MemoryPlan(m, 2 * fetch_bytes(m), self.flush, self.process).too_small:
            m = max(m + m // 100, (4 * (2 * fetch_bytes(m) + self.flush + self.process) + 2) // 3)
        return m


#: The share of a container's memory limit kept free of the budget's aim: the kernel counts page
#: cache and its own buffers against the limit too, and RSS is read once per batch.
LIMIT_MARGIN = 10

#: What the supervisor of ``--processes N`` (N > 1) holds itself, set aside before the members
#: share the limit: it imports the CLI and waits on its members (75 MB of RSS measured).
SUPERVISOR_ALLOWANCE = 80 * 1000 * 1000


def fit_to_limit(memory_bytes: int, limit: int | None, processes: int, given: bool) -> tuple[int, str | None]:
    """``--memory-bytes`` for ``processes`` members under a container memory ``limit``: (the
    budget, a problem to stop on or None).

    Each member aims at ``memory_bytes`` + :data:`ALLOWANCE`; all of them together, and the
    supervisor of several (:data:`SUPERVISOR_ALLOWANCE`), must stay under the limit less a tenth.
    A budget that fits is kept. The default that does not is lowered to what fits; a budget given
    by hand that does not is a problem (the kernel would kill the process under load, and again
    after every restart), and so is a limit too small for any."""
    if limit is None:
        return memory_bytes, None
    room = limit - limit // LIMIT_MARGIN - (SUPERVISOR_ALLOWANCE if processes > 1 else 0)
    most = room // processes - ALLOWANCE
    if memory_bytes <= most:
        return memory_bytes, None
    mb = 1000 * 1000
    supervisor = f", their supervisor {SUPERVISOR_ALLOWANCE // mb} MB" if processes > 1 else ""
    members = f"{processes} members each aim" if processes > 1 else "the process aims"
    if given:
        return memory_bytes, (
            f"memory-bytes {memory_bytes // mb} MB: {members} at a peak of it + {ALLOWANCE // mb} MB"
            f"{supervisor}, over the container's memory limit of {limit // mb} MB (cgroup), less a tenth "
            f"kept free; the kernel would kill it under load. Set --memory-bytes to at most "
            f"{max(most, 0) // mb}MB, or raise the container's limit"
        )
    if most < 32 * 1024 * 1024:
        return memory_bytes, (
            f"the container's memory limit of {limit // mb} MB (cgroup) is too small for "
            f"{processes} member(s): each needs about {ALLOWANCE // mb} MB plus a --memory-bytes of "
            f"at least 32 MiB{supervisor}, and a tenth of the limit is kept free. Raise the container's "
            "limit"
        )
    return most, None
