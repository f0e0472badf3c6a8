"""``kill -USR1 <pid>``: where each thread is, for a consumer that seems stuck, without stopping it
or putting it at risk (consumer.signals); ``kill -USR2`` when a call holds the GIL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_check import RUN_ENV

_ROOT = Path(__file__).resolve().parents[2]

#: A process with the stack request answered and a thread waiting, as a thread waits on S3; the
#: ``churn`` threads start and end without pause, as the consumer's short-lived threads do.
_WAITING = """
import sys, threading, time
from consumer import log
from consumer.signals import dump_stacks_on_request
log.configure("{fmt}")
dump_stacks_on_request()
threading.Thread(target=time.sleep, args=(60,), name='waiting-on-s3', daemon=True).start()
def churn():
    while True:
        t = threading.Thread(target=len, args=((),)); t.start(); t.join()
for _ in range({churn}):
    threading.Thread(target=churn, daemon=True).start()
{main}
"""


def _start(tmp_path: Path, churn: int = 0, main: str = "print('ready', flush=True); time.sleep(60)",
           fmt: str = "json") -> tuple[subprocess.Popen[bytes], Path]:
    err = tmp_path / "stderr"
    script = _WAITING.format(churn=churn, main=main, fmt=fmt)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=_ROOT,
                            stdout=subprocess.PIPE, stderr=err.open("wb"))
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n", err.read_text()
    return proc, err


def _stacks_events(err: Path) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in err.read_text().splitlines() if line.startswith("{")]
    return [e for e in lines if e.get("event") == "stacks of every thread"]


def _until(what: str, done: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_sigusr1_logs_every_thread_s_stack_and_the_process_goes_on(tmp_path: Path) -> None:
    """One warning with each thread's name and stack (outermost call first), and no payloads: files,
    lines and functions only. Its default action ended the process."""
    proc, err = _start(tmp_path)
    try:
        proc.send_signal(signal.SIGUSR1)
        _until("the stacks", lambda: _stacks_events(err))
        assert proc.poll() is None  # it goes on
    finally:
        proc.kill()
        proc.wait(timeout=10)
    (event,) = _stacks_events(err)
    assert event["level"] == "warning" and event["signal"] == "SIGUSR1" and event["pid"] == proc.pid
    threads = {t["thread"]: t["stack"] for t in event["threads"]}  # type: ignore[attr-defined]
    assert {"MainThread", "waiting-on-s3", "signal-arrivals"} <= threads.keys(), threads.keys()
    assert any(line.startswith("<string>:") for line in threads["MainThread"]), threads["MainThread"]
    assert all(" in " in line for stack in threads.values() for line in stack)


def test_in_a_terminal_each_thread_s_stack_is_on_lines_of_its_own(tmp_path: Path) -> None:
    """The console renderer would write the threads' data on one line, thousands of characters
    long; a person reading a terminal gets one line per call, below the warning's line."""
    proc, err = _start(tmp_path, fmt="console")
    try:
        proc.send_signal(signal.SIGUSR1)
        _until("the stacks", lambda: "stacks of every thread" in err.read_text())
        _until("the last thread", lambda: err.read_text().count("thread ") >= 3)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    lines = err.read_text().splitlines()
    (head,) = [line for line in lines if "stacks of every thread" in line]
    assert "SIGUSR1" in head and "threads=" not in head, head
    assert any(line.startswith("thread MainThread (0x") for line in lines), lines
    assert any(line.startswith("thread waiting-on-s3 (0x") for line in lines), lines
    assert any(line.startswith("  <string>:") for line in lines), lines


def test_many_sigusr1_while_threads_start_and_end_never_crash_the_process(tmp_path: Path) -> None:
    """The dump :mod:`faulthandler` makes in the signal handler read the threads' states without
    the GIL while they went on; a thread ending meanwhile freed what it read, and the process died
    of SIGSEGV (once in CI, after one signal; here within 3 to 14 signals of 5 ms apart). Read under
    the GIL, hundreds of requests leave it running."""
    proc, err = _start(tmp_path, churn=2)
    try:
        for _ in range(300):
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.005)
            assert proc.poll() is None, err.read_text()[-3000:]
        _until("the stacks", lambda: _stacks_events(err))
        time.sleep(0.5)
        assert proc.poll() is None, err.read_text()[-3000:]
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert "Fatal Python error" not in err.read_text()


#: A thread that holds the GIL for 3 s in C (ctypes.PyDLL keeps it during the call), with the signals
#: blocked there, so that they land on other threads and leave its sleep alone.
_HOLDS_THE_GIL = """
import ctypes, signal
def hold():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})
    print('ready', flush=True)
    ctypes.PyDLL(None).sleep(3)
threading.Thread(target=hold, name='holds-the-gil').start()
time.sleep(60)
"""


def test_a_call_holding_the_gil_leaves_sigusr1_unanswered_and_sigusr2_writes_the_stacks(
    tmp_path: Path,
) -> None:
    """Where librdkafka's close blocks holding the GIL (consumer.exit_timer), no Python thread can
    read the stacks: SIGUSR2 writes them without the GIL, as ``jstack -F`` does for a JVM."""
    proc, err = _start(tmp_path, main=_HOLDS_THE_GIL)
    try:
        time.sleep(0.3)
        proc.send_signal(signal.SIGUSR1)
        proc.send_signal(signal.SIGUSR2)
        _until("the stacks without the GIL", lambda: b"hread 0x" in err.read_bytes())
        assert not _stacks_events(err), "nothing answers SIGUSR1 while the GIL is held"
        assert proc.poll() is None
        text = err.read_text()
        assert 'File "<string>", line ' in text and "Fatal Python error" not in text, text
        _until("SIGUSR1's answer once the call returned", lambda: _stacks_events(err))
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (the SigCgt mask of /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (signum - 1) & 1)


def test_every_command_answers_sigusr1_from_its_start(tmp_path: Path) -> None:
    """``python -m consumer check`` (not a run: no runner installs anything) asked where it is while
    it waits for dependencies that do not answer: it logs the stacks and ends as it would have."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CONSUMER_", "KAFKA_", "S3_", "SCHEMA_REGISTRY", "AWS_"))}
    env.update(RUN_ENV)
    proc = subprocess.Popen([sys.executable, "-m", "consumer", "check", "--timeout", "2"], cwd=_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _until("the handler", lambda: _catches(proc.pid, signal.SIGUSR1) or proc.poll() is not None)
        proc.send_signal(signal.SIGUSR1)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, err.decode()[-3000:]  # unreachable dependencies, as without it
    said = (out + err).decode()
    assert "stacks of every thread" in said and "MainThread" in said, said[-3000:]
    assert "FAIL kafka: " in said
