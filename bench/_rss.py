"""Peak resident memory of a loader and the worker processes it starts, read from
``/proc/<pid>/status`` (VmHWM) so that the bench needs no psutil; None where there is no
``/proc``."""
from __future__ import annotations

import os


def _status_kb(pid: int | str, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ``clear_refs`` 5); False if refused.

    Lets one process measure the peak of each loader in turn instead of its lifetime peak.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_pids(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (DataLoader workers and their children)."""
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(name))
    out, pending = [], [pid]
    while pending:
        for c in parents.get(pending.pop(), []):
            out.append(c)
            pending.append(c)
    return out


def loader_rss(reset_ok: bool, before: set[int]) -> dict | None:
    """Peak RSS in MB of this process (since the last reset) and of the worker processes the
    loader started (descendants not in ``before``, e.g. DataLoader workers).

    Worker peaks count pages shared with the parent after fork in each process, so the
    total is an upper bound of the physical memory, the way ``top`` would add them up.
    None where /proc is not available.
    """
    me = _status_kb("self", "VmHWM")
    if me is None:
        return None
    kids = [(p, _status_kb(p, "VmHWM")) for p in child_pids(os.getpid()) if p not in before]
    kids = [(p, kb) for p, kb in kids if kb is not None]
    workers = sum(kb for _, kb in kids) / 1024.0
    return {"total_mb": me / 1024.0 + workers, "main_mb": me / 1024.0, "workers_mb": workers,
            "worker_processes": len(kids), "main_is_lifetime_peak": not reset_ok}
