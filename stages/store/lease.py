"""Leases on shard attempts: who is writing a shard, and whether they are still alive.

A worker claims a shard of a column before it writes: an exclusive create of
`columns/<col>/claims/<sid>.json`, naming the owner (host, pid, run id), the attempt folder it
will write and a heartbeat time it renews while it works. The claim is the attempt's lease:

- another run finds the shard claimed by a live owner and leaves it alone (concurrent runs share
  the work instead of doing it twice); a dead owner's claim is taken over;
- garbage collection removes an attempt folder only when no live lease names it, so a cleanup
  never deletes what a live writer is still writing;
- a commit checks that its lease is still its own before the commit record lands.

An owner is dead when its heartbeat is older than its lease (`lease_s`, recorded in the claim so
runs with different settings agree), or at once when it ran on this host and its pid is gone.
Heartbeats compare wall clocks, so hosts sharing a store need clocks within a fraction of the lease.

Exclusive create is exact on a local/POSIX filesystem (a hard link fails if the name exists). On
object stores it is best effort (check, single PUT, read back): two runs racing within one round
trip may both write; the commit check then fails the loser loudly instead of committing twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable

import fsspec

from stages.core.fs import is_local, json_blob, make_parent, read_json, write_json_atomic, write_temp_beside

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseOwner:
    """Who holds a lease: a process (host, pid) of one extraction run."""

    host: str
    pid: int
    run: str

    @staticmethod
    def current(run: str) -> "LeaseOwner":
        """This process, as a worker of run `run` (the pid is read now: a Ray actor has its own)."""
        return LeaseOwner(socket.gethostname(), os.getpid(), run)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host} (run {self.run})"


def pid_running(pid: int) -> bool:
    """Whether a process of this host has this pid (zombies count as dead: they hold nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) said it exists


def lease_alive(claim: dict, now: float | None = None) -> bool:
    """A claim's owner is alive: heartbeat within its lease and, on this host, its pid running."""
    now = time.time() if now is None else now
    if now - float(claim.get("heartbeat", 0.0)) > float(claim.get("lease_s", 0.0)):
        return False
    owner = claim.get("owner", {})
    if owner.get("host") == socket.gethostname():
        return pid_running(int(owner.get("pid", -1)))
    return True


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> bool:
    """Write JSON at `path` only if nothing is there; True when this call created it."""
    blob = json_blob(obj)
    make_parent(fs, path)  # local only: never a bucket
    if is_local(fs):
        tmp = write_temp_beside(path, blob)
        try:
            os.link(tmp, path)  # atomic, fails if the name exists; the file is complete when it appears
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    if fs.exists(path):
        return False
    fs.pipe_file(path, blob.encode())
    try:
        return read_json(fs, path) == json.loads(blob)  # the last of racing writers wins: read back who
    except FileNotFoundError:
        return False


class Lease:
    """This process's claim on one shard of one column; `attempt` is the folder it may write."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, record: dict):
        self.fs, self.path, self.record = fs, path, record
        self.shard: int = record["shard"]
        self.attempt: str = record["attempt"]
        self.lease_s: float = float(record["lease_s"])
        self.renewed = float(record["heartbeat"])
        self.lost = False
        self._lock = threading.Lock()

    def _ours(self, claim: dict | None) -> bool:
        return claim is not None and claim.get("owner") == self.record["owner"] and claim.get("attempt") == self.attempt

    def read(self) -> dict | None:
        try:
            return read_json(self.fs, self.path)
        except FileNotFoundError:
            return None

    def renew(self) -> bool:
        """Push the heartbeat; False (and `lost`) when the claim is no longer ours."""
        with self._lock:
            if self.lost or not self._ours(self.read()):
                self.lost = True
                return False
            now = time.time()
            self.record = {**self.record, "heartbeat": now}
            write_json_atomic(self.fs, self.path, self.record)
            self.renewed = now
            return True

    def check(self) -> str | None:
        """None while the lease is ours and fresh; else why not (a commit must not land then)."""
        with self._lock:
            if self.lost or not self._ours(self.read()):
                self.lost = True
                claim = self.read()
                holder = f"now held by {_owner_text(claim)}" if claim else "the claim is gone"
                return f"its lease was lost ({holder})"
            age = time.time() - self.renewed
            if age > self.lease_s:
                return f"its lease expired ({age:.0f} s since the last heartbeat, lease {self.lease_s:.0f} s)"
            return None

    def release(self) -> None:
        with self._lock:
            if not self.lost and self._ours(self.read()):
                self.fs.rm(self.path)
            self.lost = True


def claim(fs: fsspec.AbstractFileSystem, path: str, shard: int, attempt: str, owner: LeaseOwner, lease_s: float) -> Lease | None:
    """Claim `shard` (claim file `path`) for `attempt`: the Lease, or None while a live owner of another run holds it.

    A claim of the same run is taken over even if its owner looks alive: the driver hands a shard
    to one worker at a time, so the previous one is dead (or cut off; its commit check fails).
    """
    now = time.time()
    record = {"shard": shard, "attempt": attempt, "owner": owner.to_json(), "heartbeat": now, "claimed": now, "lease_s": float(lease_s)}
    for _ in range(3):  # the existing claim may be released between our create and our read
        if create_exclusive(fs, path, record):
            return Lease(fs, path, record)
        try:
            existing = read_claim(fs, path)
        except FileNotFoundError:
            continue
        if lease_alive(existing) and existing.get("owner", {}).get("run") != owner.run:
            return None
        # take over a dead (or our own run's) claim: one taker wins the marker named after the old claim
        digest = hashlib.sha256(json.dumps(existing, sort_keys=True).encode()).hexdigest()[:16]
        if not create_exclusive(fs, f"{path[:-5]}.{digest}.takeover", {"by": owner.to_json(), "at": now}):
            return None
        log.info("shard %d: taking over the claim of %s (%s)", shard, _owner_text(existing), "same run" if lease_alive(existing) else "dead")
        write_json_atomic(fs, path, record)
        return Lease(fs, path, record)
    return None


class TornClaim(ValueError):
    """A claim file that is not a claim (cut short or garbled): no run can tell whether its owner lives."""


def read_claim(fs: fsspec.AbstractFileSystem, path: str) -> dict:
    """A claim file's record; TornClaim naming the file and its column when it does not parse."""
    try:
        record = read_json(fs, path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TornClaim(_torn_text(path, f"not valid JSON ({exc})")) from None
    if not isinstance(record, dict) or not isinstance(record.get("owner"), dict):
        raise TornClaim(_torn_text(path, "not a claim record (no owner)"))
    return record


def _torn_text(path: str, why: str) -> str:
    parts = path.rstrip("/").split("/")
    column = parts[-3] if len(parts) >= 3 else "?"
    return f"column {column}: claim file {path} is {why}; `sam2videox extract --repair` clears it (the shard is then extracted again)"


def clear_torn_claims(fs: fsspec.AbstractFileSystem, claims_dir: str) -> list[str]:
    """Delete the claim files under `claims_dir` that do not parse (extract --repair); returns their paths.

    A torn claim has no readable owner, so it cannot be a live run's lease worth keeping."""
    torn = []
    for path in sorted(fs.ls(claims_dir, detail=False)) if fs.exists(claims_dir) else []:
        name = path.rsplit("/", 1)[-1]
        if not (name.endswith(".json") and name[:-5].isdigit()):
            continue
        try:
            read_claim(fs, path)
        except TornClaim:
            fs.rm(path)
            torn.append(path)
        except FileNotFoundError:  # released this instant
            continue
    return torn


def sweep_temp_files(fs: fsspec.AbstractFileSystem, claims_dir: str, grace_s: float) -> list[str]:
    """Delete the `<claim>.json.<uuid>.tmp` files (write_temp_beside) older than `grace_s` under `claims_dir`:
    a live writer links or renames its temp file within milliseconds; one a kill left behind is never
    renamed. Local disks only (object stores write claims in one PUT, no temp file). Returns their paths."""
    if not is_local(fs) or not fs.exists(claims_dir):
        return []
    now, swept = time.time(), []
    for path in fs.ls(claims_dir, detail=False):
        if path.endswith(".tmp"):
            try:
                if now - os.path.getmtime(path) > grace_s:
                    os.unlink(path)
                    swept.append(path)
            except FileNotFoundError:  # renamed or removed by its writer meanwhile
                continue
    return swept


def _owner_text(claim: dict | None) -> str:
    owner = (claim or {}).get("owner", {})
    return f"pid {owner.get('pid')} on {owner.get('host')} (run {owner.get('run')})"


class LeaseKeeper:
    """A thread renewing leases every `every` seconds while a worker holds them (model loading included)."""

    def __init__(self, leases: Iterable[Lease], every: float):
        self.leases = list(leases)
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        if self.leases:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            for lease in self.leases:
                try:
                    if not lease.lost and not lease.renew():
                        log.error("shard %d: lease on attempt %s lost to another owner; its commit will be refused", lease.shard, lease.attempt)
                except Exception as exc:  # a flaky store: try again next beat; the commit check has the last word
                    log.warning("shard %d: heartbeat failed: %s", lease.shard, exc)
