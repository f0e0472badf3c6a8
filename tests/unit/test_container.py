"""consumer.container and budget.fit_to_limit: --memory-bytes under a container's memory limit.

A Kubernetes pod with ``limits.memory: 512Mi`` and the default budget (512 MiB, aiming at a peak
of it + 100 MB) is killed by the kernel once the consumer lags enough to fill its buffers, and
again after every restart. The default is fitted under the limit; a budget set by hand that the
container cannot hold stops the start with exit status 2.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer import cli, container
from consumer.budget import ALLOWANCE, SUPERVISOR_ALLOWANCE, fit_to_limit
from consumer.config import Config, ConfigError

MiB = 1 << 20
UNLIMITED_V1 = "9223372036854771712"


def _tree(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text + "\n")
    (tmp_path / "proc").write_text(proc)
    return tmp_path / "proc", root


@pytest.mark.parametrize(
    ("proc", "files", "limit"),
    [
        # cgroup v2 in a container with its own namespace (Docker, Kubernetes): "/" is the pod's
        ("0::/\n", {"memory.max": str(512 * MiB)}, 512 * MiB),
        ("0::/\n", {"memory.max": "max"}, None),
        # v2 seen with the host's path: the nearest limit of the cgroup and its ancestors
        ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/memory.max": str(768 * MiB),
                                    "kubepods/pod1/c1/memory.max": "max", "memory.max": "max"}, 768 * MiB),
        # ... and a container that sees the host's path but its own cgroup at the mount
        ("0::/docker/abc\n", {"memory.max": str(300 * MiB)}, 300 * MiB),
        # cgroup v1 (this CI machine's kind): the memory controller's tree
        ("4:memory:/process_api/x\n0::/\n", {"memory/process_api/x/memory.limit_in_bytes": UNLIMITED_V1,
                                             "memory/process_api/memory.limit_in_bytes": str(2 << 30),
                                             "memory/memory.limit_in_bytes": UNLIMITED_V1}, 2 << 30),
        ("4:cpuacct,memory:/\n", {"memory/memory.limit_in_bytes": UNLIMITED_V1}, None),
        ("9:name=systemd:/\n", {}, None),  # no memory controller here at all
    ],
    ids=["v2", "v2-max", "v2-host-path", "v2-own-mount", "v1-parent", "v1-unlimited", "none"],
)
def test_the_memory_limit_is_the_least_of_the_cgroup_and_its_ancestors(
    tmp_path: Path, proc: str, files: dict[str, str], limit: int | None
) -> None:
    proc_path, root = _tree(tmp_path, proc, files)
    assert container.memory_limit(proc_path, root) == limit


def test_no_cgroup_file_to_read_is_no_limit(tmp_path: Path) -> None:
    assert container.memory_limit(tmp_path / "absent", tmp_path) is None


def test_a_default_budget_over_a_512_mib_pod_is_lowered_to_what_fits() -> None:
    budget, problem = fit_to_limit(512 * MiB, 512 * MiB, 1, given=False)
    assert problem is None
    assert budget == 512 * MiB - 512 * MiB // 10 - ALLOWANCE  # 383 MB: a peak of 483 MB at most
    assert fit_to_limit(512 * MiB, 2 << 30, 1, given=False) == (512 * MiB, None)  # fits: kept
    assert fit_to_limit(512 * MiB, None, 1, given=True) == (512 * MiB, None)  # no limit: kept


def test_members_share_the_limit_beside_their_supervisor() -> None:
    """The supervisor of several members holds 75 MB itself: in a 512 MiB pod the tenth kept
    free (54 MB) did not cover it."""
    budget, problem = fit_to_limit(512 * MiB, 2 << 30, 4, given=False)
    assert problem is None
    assert 4 * (budget + ALLOWANCE) + SUPERVISOR_ALLOWANCE <= (2 << 30) * 9 // 10 + 4
    assert 4 * (budget + 1 + ALLOWANCE) + SUPERVISOR_ALLOWANCE > (2 << 30) * 9 // 10  # all of it


def test_a_budget_given_by_hand_that_cannot_fit_is_refused_with_what_would() -> None:
    budget, problem = fit_to_limit(1 << 30, 512 * MiB, 1, given=True)
    assert budget == 1 << 30
    assert problem == (
        "memory-bytes 1073 MB: the process aims at a peak of it + 100 MB, over the container's memory "
        "limit of 536 MB (cgroup), less a tenth kept free; the kernel would kill it under load. Set "
        "--memory-bytes to at most 383MB, or raise the container's limit"
    )


def test_a_limit_too_small_for_any_budget_is_refused() -> None:
    _budget, problem = fit_to_limit(512 * MiB, 128 * MiB, 1, given=False)
    assert problem is not None and "too small" in problem and "Raise the container's limit" in problem


@given(
    memory=st.integers(32 * MiB, 64 << 30),
    limit=st.none() | st.integers(1 * MiB, 256 << 30),
    processes=st.integers(1, 16),
    by_hand=st.booleans(),
)
def test_a_fitted_budget_never_aims_past_the_limit_and_never_grows(
    memory: int, limit: int | None, processes: int, by_hand: bool
) -> None:
    budget, problem = fit_to_limit(memory, limit, processes, given=by_hand)
    if problem is None:
        assert budget <= memory
        if limit is not None:
            supervisor = SUPERVISOR_ALLOWANCE if processes > 1 else 0
            assert processes * (budget + ALLOWANCE) + supervisor <= limit
        assert budget == memory or not by_hand  # a budget given is never changed, only refused


def test_the_entry_point_fits_the_default_and_refuses_a_given_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container, "memory_limit", lambda: 512 * MiB)
    fitted = cli.fit_to_container(Config(), frozenset())
    assert fitted.memory_bytes == 512 * MiB - 512 * MiB // 10 - ALLOWANCE
    with pytest.raises(ConfigError, match="Set --memory-bytes to at most 383MB"):
        cli.fit_to_container(Config(), frozenset({"memory_bytes"}))
    small = replace(Config(), memory_bytes=256 * MiB)
    assert cli.fit_to_container(small, frozenset({"memory_bytes"})) == small
