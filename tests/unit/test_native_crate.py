"""The Rust crate's own checks, run wherever the suite runs so CI holds them too: ``cargo test``
for its pure parts (gather's joining, the structural walk, union spreading, schema parsing) and
``cargo clippy`` with warnings as errors.

Both reuse the release build ``dev/bootstrap`` (maturin) left in ``native/target``: only the crate
and the PyO3 glue compile again, not Arrow. The Python side of the crate is tested against fastavro
and the Python maps in ``test_native_decoder.py`` and ``test_gather.py``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CRATE = Path(__file__).resolve().parents[2] / "native"


def cargo(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("cargo")
    assert exe, "cargo not found: building and checking the native extension needs a Rust toolchain"
    return subprocess.run([exe, *args], cwd=CRATE, capture_output=True, text=True, timeout=1200)


def test_cargo_test_passes() -> None:
    res = cargo("test", "--release", "--quiet")
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-6000:]
    assert " 0 failed" in res.stdout


def test_cargo_clippy_is_clean() -> None:
    res = cargo("clippy", "--release", "--all-targets", "--quiet", "--", "-D", "warnings")
    assert res.returncode == 0, res.stderr[-6000:]
