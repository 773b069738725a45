"""A watchdog that takes the local Ray we started down with the driver, even when the driver is SIGKILLed.

Ray ties its head processes to the driver with PR_SET_PDEATHSIG, but the raylet's own children
(DashboardAgent, RuntimeEnvAgent, idle workers) outlive a SIGKILLed driver. So the driver starts
this small process first (in its own session, so a signal to the driver's group does not take it
out before it has done its job): it records the driver's descendants every `interval` seconds from
/proc and, once the driver is gone, SIGKILLs every recorded process still running (matched by pid
and start time, so a reused pid is never hit), then their descendants. A normal exit stops it.

Linux only (/proc); elsewhere `start_watchdog` returns None and Ray's own teardown is all there is.

    python -m pipeline.ray_watchdog DRIVER_PID [INTERVAL_S]
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

log = logging.getLogger(__name__)


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time in clock ticks, state) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19]), fields[0]
    except (OSError, IndexError, ValueError):
        return None


def _table() -> dict[int, tuple[int, int, str]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                out[int(name)] = st
    return out


def descendants(root: int, table: dict[int, tuple[int, int, str]] | None = None) -> dict[int, int]:
    """{pid: start time} of every live descendant of `root`."""
    table = _table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = {}, [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in out and table[child][2] != "Z":
                out[child] = table[child][1]
                stack.append(child)
    return out


def _alive(pid: int, start: int | None = None) -> bool:
    st = _stat(pid)
    return st is not None and st[2] != "Z" and (start is None or st[1] == start)


def watch(driver: int, interval: float = 0.5) -> int:
    """Record the driver's descendants until it dies, then kill them. Returns how many were killed."""
    me = os.getpid()
    seen: dict[int, int] = {}
    driver_start = (_stat(driver) or (0, None, ""))[1]
    while _alive(driver, driver_start):
        seen.update({p: s for p, s in descendants(driver).items() if p != me})
        time.sleep(interval)
    killed = 0
    for _ in range(3):  # recorded processes, then whatever they started meanwhile
        table = _table()
        targets = {p: s for p, s in seen.items() if p in table and table[p][1] == s and table[p][2] != "Z"}
        for pid in list(targets):
            targets.update({c: s for c, s in descendants(pid, table).items() if c != me})
        if not targets:
            break
        for pid, start in targets.items():
            if _alive(pid, start):
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except (ProcessLookupError, PermissionError):
                    pass
        seen = targets
        time.sleep(0.2)
    return killed


def start_watchdog(interval: float = 0.5) -> subprocess.Popen | None:
    """Start a watchdog over this process (Linux; None elsewhere). Stop it with `stop_watchdog` on a normal exit."""
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc/self"):
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.ray_watchdog", str(os.getpid()), str(interval)],
        start_new_session=True, stdin=subprocess.DEVNULL, close_fds=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )


def stop_watchdog(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":  # pragma: no cover - run by start_watchdog
    watch(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.5)
