"""What the process's container lets it hold: the memory limit of its cgroups (v2 ``memory.max``,
v1 ``memory.limit_in_bytes``), which the kernel enforces by killing the process (OOMKilled).

``--memory-bytes`` aims at a peak RSS within it + 100 MB. A budget the container cannot hold is
killed once the consumer lags enough to fill its buffers, and again after every restart, since
the lag is still there (docs of the peers' users: "after an OOM, if we restart… the same
situation will happen again"). So the entry point reads the limit once at start and fits the
default budget under it, or refuses a budget set by hand that cannot fit
(:func:`consumer.budget.fit_to_limit`). Reads two small files; nothing else here.
"""

from __future__ import annotations

from pathlib import Path

#: A limit this large is the kernel's way of saying "none" (v1 prints 2^63 less a page).
UNLIMITED = 1 << 62


def memory_limit(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """The least memory limit, in bytes, of the cgroups this process is in and of their
    ancestors (each one applies); None when none sets one or they cannot be read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    found: list[int] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:  # cgroup v2: one tree, mounted at the root
            found += _limits(root, path, "memory.max")
        elif "memory" in controllers.split(","):  # cgroup v1: the memory controller's own tree
            found += _limits(root / "memory", path, "memory.limit_in_bytes")
    return min((n for n in found if n < UNLIMITED), default=None)


def _limits(mount: Path, path: str, name: str) -> list[int]:
    """The limits ``name`` holds in the cgroup at ``path`` of the tree mounted at ``mount`` and in
    every ancestor up to the mount. A container without its own cgroup namespace sees the host's
    path in /proc/self/cgroup but its own cgroup at the mount: the mount's top is read too."""
    out: list[int] = []
    here = mount / path.strip("/")
    for folder in (here, *here.parents):
        if not folder.is_relative_to(mount):
            break
        try:
            said = (folder / name).read_text().strip()
        except OSError:
            continue
        if said.isdigit():
            out.append(int(said))
    return out
