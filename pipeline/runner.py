"""The extraction run: list the corpus, freeze it, and farm out pending shards to Ray actors.

Each actor wraps a `ShardWorker` (models loaded once) and takes whole shards. Ray has no
job-level resume, so the store's commit records are the record of finished work: a rerun skips
committed shards, and a shard whose actor died is handed to a fresh actor (its half-written
attempt stays invisible and is garbage-collected at the end). Workers claim shards (leases,
stages/store/lease.py), so several runs on one store share the work; a shard another live run holds
is looked at again every lease.poll_s until it is committed or its owner is gone.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from stages.config.loader import to_dict, from_dict
from stages.media.corpus import list_corpus
from stages.media.buckets import NO_BUCKET
from stages.media.decode import min_duration
from stages.config.extract import ExtractConfig
from stages.extract.growth import Growth, bucket_listing, grow, known_keys
from stages.store.integrity import readable_commit_records, verify_store
from stages.extract.producer import load_registry
from stages.core.fs import credentials_hint, filesystem, is_local, join, missing_bucket, missing_credentials
from stages.store import Column, FeatureStore, Snapshot, StoreError
from stages.store.lease import clear_torn_claims
from stages.extract.shard_worker import ShardReport, ShardWorker

log = logging.getLogger(__name__)


class ExtractFailed(RuntimeError):
    """Shards could not be completed (workers kept dying)."""


class RayUnreachable(ExtractFailed):
    """ray.address names a cluster that does not answer within ray.connect_timeout_s."""


@dataclass
class ExtractSummary:
    store: str
    clips: int
    shards: int
    shards_run: list[int] = field(default_factory=list)
    shards_skipped: int = 0
    shards_elsewhere: int = 0  # shards another run on the same store committed while this one ran
    failed: dict[str, list[dict]] = field(default_factory=dict)  # column -> ledger rows (whole store)
    worker_restarts: int = 0
    seconds: float = 0.0
    clips_processed: int = 0
    # summed over the shards run (workers in parallel each add theirs): see ShardReport
    worker_s: float = 0.0  # the workers' run_shard wall time
    model_s: dict[str, float] = field(default_factory=dict)  # column -> producer seconds
    decode_s: float = 0.0
    wait_s: float = 0.0
    write_s: float = 0.0
    flush_s: float = 0.0
    load_s: float = 0.0
    growth: Growth = field(default_factory=Growth)  # clips of the bucket beyond the snapshot (found / appended)
    damaged: list = field(default_factory=list)  # ClipDamage of committed shards left as they are (no --repair)
    repaired: dict[str, list[int]] = field(default_factory=dict)  # column dirname -> shards redone by --repair
    retried: dict[str, list[int]] = field(default_factory=dict)  # column name -> shards redone by --retry-failed
    cropped: list[list] = field(default_factory=list)  # [key, share lost] of clips cropped beyond video.max_crop
    buckets: dict[str, int] = field(default_factory=dict)  # video.buckets: "FxHxW" -> clips decoded into it

    @property
    def failed_keys(self) -> set[str]:
        return {row["key"] for rows in self.failed.values() for row in rows}

    def add(self, report: ShardReport) -> None:
        """Count one finished shard and its time figures."""
        if report.skipped:  # another run committed it while this one waited
            self.shards_elsewhere += 1
            return
        self.shards_run.append(report.shard)
        self.clips_processed += report.clips
        self.cropped += report.cropped
        for name, n in report.buckets.items():
            self.buckets[name] = self.buckets.get(name, 0) + n
        self.worker_s += report.seconds
        for name, seconds in report.model_s.items():
            self.model_s[name] = self.model_s.get(name, 0.0) + seconds
        for key in ("decode_s", "wait_s", "write_s", "flush_s", "load_s"):
            setattr(self, key, getattr(self, key) + getattr(report, key))

    @property
    def model_total_s(self) -> float:
        return sum(self.model_s.values())

    def timing(self) -> dict:
        """The time figures as JSON; wall_over_model = workers' shard time / model time (1.0 = no overhead)."""
        model = self.model_total_s
        return {
            "clips": self.clips_processed,
            "seconds": round(self.seconds, 3),
            "worker_s": round(self.worker_s, 3),
            "model_s": round(model, 3),
            **{f"{k}_s": round(v, 3) for k, v in self.model_s.items()},
            **{k: round(getattr(self, k), 3) for k in ("decode_s", "wait_s", "write_s", "flush_s", "load_s")},
            "wall_over_model": round(self.worker_s / model, 3) if model else None,
        }

    def timing_line(self) -> str:
        """Where the workers' time went; decode and write run in background threads, so they overlap the model."""
        t = self.timing()
        per_column = ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.model_s.items())
        ratio = f"{t['wall_over_model']:.2f}" if t["wall_over_model"] else "-"
        return (
            f"extract: {t['clips']} clips in {t['seconds']:.1f} s (workers {t['worker_s']:.1f} s); model {t['model_s']:.1f} s ({per_column}), "
            f"decode {t['decode_s']:.1f} (overlapped), write {t['write_s']:.1f} (not overlapped {t['flush_s']:.1f}), wait {t['wait_s']:.1f}, "
            f"load {t['load_s']:.1f}; wall/model {ratio}"
        )

    def lines(self, cfg: ExtractConfig, store: str, append: bool, allow_failures: bool) -> tuple[list[tuple[str, str]], int]:
        """What `sam2videox extract` says about this run, as (level, text) lines -- level "info", "warn"
        (worth a look) or "error" (the run is not good) -- and its exit status: 1 when committed shards
        are damaged, or clips failed and failures are not allowed; else 0. `store` is the store as the
        user named it (the commands to rerun quote it)."""
        out: list[tuple[str, str]] = []
        if self.shards_skipped == self.shards and not self.growth.appended:
            again = (f"; {len(self.failed_keys)} clips failed in an earlier run: `sam2videox extract --retry-failed` extracts "
                     f"their shards again" if self.failed_keys else "")
            out.append(("info", f"nothing to do: all {self.shards} shards already committed in {self.store} ({', '.join(cfg.columns)}){again}"))
        else:
            elsewhere = f", {self.shards_elsewhere} committed meanwhile by another run" if self.shards_elsewhere else ""
            out.append(("info",
                f"store {self.store}: {self.clips} clips in {self.shards} shards; "
                f"ran {len(self.shards_run)} shards ({self.clips_processed} clips), skipped {self.shards_skipped} already committed{elsewhere}, "
                f"{self.worker_restarts} worker restarts, {self.seconds:.1f} s"))
        growth = self.growth
        if growth.appended:
            out.append(("info", f"appended {growth.appended} new clips from {cfg.corpus.url} as shards {growth.first_new_shard}..{self.shards - 1}"))
        if growth.unlisted and not append:
            out.append(("warn", f"{growth.unlisted} new clips in {cfg.corpus.url} are not in this store's snapshot; "
                                f"to add them, rerun this command with --append"))
        if self.shards_run:
            out.append(("info", self.timing_line()))
        if self.cropped:
            key, loss = max(self.cropped, key=lambda c: c[1])
            out.append(("warn", f"{len(self.cropped)} clips cropped beyond video.max_crop={cfg.video.max_crop:g} (the most: {key}, "
                                f"{loss:.0%} of its frame lost); video.fit=pad letterboxes them, video.fit=skip leaves them out"))
        if cfg.video.buckets is not None and self.shards_run:
            counts = ", ".join(f"{'x'.join(map(str, b))} {self.buckets.get('x'.join(map(str, b)), 0)}" for b in cfg.video.bucket_shapes())
            unfit = {row["key"] for rows in self.failed.values() for row in rows if row["reason"].startswith(NO_BUCKET)}
            out.append(("warn" if unfit else "info", f"video.buckets (frames x height x width: clips): {counts}"
                        + (f"; {len(unfit)} clips fit no bucket (too short), in the ledger" if unfit else "")))
        out += [("warn", f"repaired {dirname}: shard(s) {', '.join(map(str, shards))} extracted again") for dirname, shards in self.repaired.items()]
        out += [("info", f"retried {name}: shard(s) {', '.join(map(str, shards))} with failed clips extracted again")
                for name, shards in self.retried.items()]
        if self.damaged:
            out += [("error", f"  damaged: {damage.line()}") for damage in self.damaged[:10]]
            shards = {(d.column, d.shard) for d in self.damaged}
            out.append(("error",
                f"{len(shards)} committed shard(s) of {store} are damaged ({len(self.damaged)} problems); "
                f"`sam2videox extract --repair` extracts them again, `sam2videox inspect {store} --verify` checks every clip"))
            return out, 1
        for name, rows in self.failed.items():
            if rows:
                out.append(("warn", f"{name}: {len(rows)} clips failed"))
                out += [("info", f"  {row['key']}: {row['reason']}") for row in rows[:10]]
        if self.failed_keys and not (allow_failures or cfg.allow_failures):
            out.append(("error", f"{len(self.failed_keys)} clips failed (see `sam2videox inspect {store}`); pass --allow-failures to accept"))
            return out, 1
        return out, 0


def prepare_store(
    cfg: ExtractConfig, store_url: str, registry: str, append: bool = False, growth: Growth | None = None
) -> tuple[FeatureStore, Snapshot, dict[str, Column]]:
    """Validate the columns' configs, then freeze the corpus snapshot (first run only) and create the columns.

    Nothing is written before every column spec is computed: a config the columns refuse (a bad
    num_frames, a released SAM2 config without weights) must not bind a new store to its listing.
    On a rerun the bucket is listed again: a changed corpus.limit is refused (unless `append`);
    clips the snapshot lacks are counted into `growth`, and with `append` added to the snapshot
    as new shards (stages/extract/growth.py).
    """
    reg = load_registry(registry)
    specs = {name: reg.column_spec(name, cfg) for name in cfg.columns}
    try:
        store = FeatureStore(store_url, cfg.corpus.storage_options)
        _check_store_path(store)
        _check_buckets(store, cfg)
        snapshot = store.snapshot()
        if snapshot is None:
            entries = list_corpus(cfg.corpus, span=min_duration(cfg.video.envelope()))  # buckets: the longest one's span
            snapshot = store.freeze_snapshot(Snapshot(cfg.corpus.url, cfg.corpus.clips_per_shard, [e.to_json() for e in entries]))
        else:
            _check_same_corpus(store, snapshot, cfg)
            listing = bucket_listing(cfg)  # one listing serves the limit check and the growth count
            if not append:
                _check_limit(store, snapshot, cfg, listing)
            snapshot = grow(store, snapshot, cfg, append, growth if growth is not None else Growth(), listing)
        columns = {name: store.create_column(name, s.config, s.schema, s.attrs) for name, s in specs.items()}
    except Exception as exc:
        _raise_if_credentials(exc, store_url, cfg)
        raise
    return store, snapshot, columns


def _check_store_path(store: FeatureStore) -> None:
    if is_local(store.fs) and os.path.exists(store.path) and not os.path.isdir(store.path):
        raise StoreError(f"store path {store.url} is a file, not a folder: name a new folder (or an existing store)")


def _clear_torn_claims(columns) -> None:
    """extract --repair: claim files a torn write left unreadable would block their shards for good."""
    for column in columns:
        for path in clear_torn_claims(column.store.fs, join(column.store.path, "columns", column.dirname, "claims")):
            log.warning("repair: removed the torn claim file %s (column %s)", path, column.dirname)


def _check_buckets(store: FeatureStore, cfg: ExtractConfig) -> None:
    """The store's and the corpus's buckets must exist: nothing here ever creates one (a typo would make a new bucket)."""
    for url, what in ((store.url, "store"), (cfg.corpus.url, "corpus")):
        fs, path = (store.fs, store.path) if what == "store" else filesystem(url, cfg.corpus.storage_options)
        bucket = missing_bucket(fs, path)
        if bucket is not None:
            raise StoreError(f"{what} {url}: bucket '{bucket}' does not exist (or these credentials cannot see it); "
                             f"check the URL, or create the bucket first: nothing here creates one")


def _raise_if_credentials(exc: BaseException, store_url: str, cfg: ExtractConfig) -> None:
    """botocore's NoCredentialsError (a traceback from deep in s3fs) -> StoreError, one line naming the URLs."""
    if missing_credentials(exc):
        raise StoreError(credentials_hint(f"{cfg.corpus.url} / {store_url} (corpus.storage_options)")) from exc


def _check_same_corpus(store: FeatureStore, snapshot: Snapshot, cfg: ExtractConfig) -> None:
    # A store is bound to the corpus frozen in it. Re-listing on every run would let a changed bucket
    # reshuffle shards under existing columns, so a rerun reads the snapshot and checks it is the same bucket.
    if snapshot.source.rstrip("/") != cfg.corpus.url.rstrip("/") or snapshot.clips_per_shard != cfg.corpus.clips_per_shard:
        raise StoreError(
            f"{store.url} holds a snapshot of {snapshot.source} with {snapshot.clips_per_shard} clips per shard; "
            f"this run asks for {cfg.corpus.url} with {cfg.corpus.clips_per_shard} clips per shard: use a new store"
        )


def _check_limit(store: FeatureStore, snapshot: Snapshot, cfg: ExtractConfig, listing: list) -> None:
    """A rerun whose corpus.limit lists other clips than the frozen snapshot is refused, never silently ignored.

    (Clips added to the bucket without a limit are growth: counted and appended by stages/extract/growth.py.)
    """
    if cfg.corpus.limit is None:
        return
    listed = {e.key for e in listing}
    frozen = {c["key"] for c in snapshot.clips}
    new, gone = len(listed - known_keys(snapshot)), len(frozen - listed)
    if new or gone:
        raise StoreError(
            f"corpus.limit={cfg.corpus.limit} lists {len(listed)} clips but {store.url} holds a snapshot of {len(frozen)} "
            f"({new} listed clips not in it, {gone} of its clips not listed): a store keeps the listing of its first run; "
            f"drop corpus.limit to extract the store's own clips, add --append to extend it, or use a new store"
        )


def run_extract(
    cfg: ExtractConfig,
    store_url: str,
    on_shard: Callable[[ShardReport], None] | None = None,
    registry: str = "stages.extract.columns.registry",
    on_plan: Callable[[int], None] | None = None,
    append: bool = False,
    repair: bool = False,
    retry_failed: bool = False,
) -> ExtractSummary:
    """Extract every pending shard of the configured columns into the store at `store_url`.

    on_plan(clips) is called once with the number of clips about to be processed; on_shard after each shard.
    append: add the bucket's clips that the store's snapshot lacks, as new shards (`extract --append`).
    Committed shards are verified before they are skipped: cheaply (commit records parse, arrays and
    chunks present; damage goes to summary.damaged), or with `repair` fully (every clip's checksum),
    the damaged shards then uncommitted and extracted again as new attempts. retry_failed
    (`extract --retry-failed`): each column's committed shards whose ledger has failed clips are
    uncommitted and extracted again, whole (a clip whose file was missing or unreadable then gets its
    second chance; the shard's other clips are recomputed, deterministically the same).
    """
    started = time.perf_counter()
    if cfg.ray.num_workers > 0 and cfg.ray.address:
        check_ray_address(cfg.ray.address, cfg.ray.connect_timeout_s)  # before anything is written to the store
    growth = Growth()
    store, snapshot, columns = prepare_store(cfg, store_url, registry, append, growth)
    if repair:
        _clear_torn_claims(columns.values())
    check = verify_store(store, full=repair, columns=columns.values())
    damaged, repaired = [], {}
    for dirname, shards in check.damaged_shards().items():
        column = next(c for c in columns.values() if c.dirname == dirname)
        if not repair:
            damaged += [d for d in check.damaged if d.column == dirname]
            continue
        for shard in sorted(shards, key=lambda s: -1 if s is None else s):
            log.warning("repair: %s shard %s is damaged, extracting it again", dirname, "column arrays" if shard is None else shard)
            column.uncommit(shard)
            if shard is None:  # column arrays are written by the worker of a pending shard: make one pending
                column.uncommit(0)
        repaired[dirname] = sorted({0 if s is None else s for s in shards})
    retried = _uncommit_failed(columns) if retry_failed else {}
    every = set(range(snapshot.num_shards))
    todo = sorted(set().union(*(every - c.committed_shards() for c in columns.values())))
    summary = ExtractSummary(store.url, len(snapshot.clips), snapshot.num_shards, growth=growth)
    summary.shards_skipped = snapshot.num_shards - len(todo)
    summary.damaged, summary.repaired, summary.retried = damaged, repaired, retried
    if on_plan is not None:
        on_plan(sum(len(snapshot.shard_range(s)) for s in todo))
    run_id = uuid.uuid4().hex[:12]  # this run's lease owner id: its workers' claims say which run they belong to
    if todo:
        log.info("%d of %d shards to extract (%s), run %s", len(todo), snapshot.num_shards, ", ".join(cfg.columns), run_id)
        if cfg.ray.num_workers == 0:
            _run_in_process(cfg, store_url, todo, summary, on_shard, registry, run_id)
        else:
            _run_on_ray(cfg, store_url, todo, summary, on_shard, registry, run_id)
    else:
        log.info("nothing to do: all %d shards already committed (%s)", snapshot.num_shards, ", ".join(cfg.columns))
    for name, column in columns.items():
        summary.failed[name] = column.ledger(readable_commit_records(column))
        if not damaged:  # a damaged commit's attempt is evidence: kept until --repair
            column.collect_garbage()  # attempts left by dead workers (a live run's leased attempts stay)
    summary.seconds = time.perf_counter() - started
    return summary


def _uncommit_failed(columns: dict) -> dict[str, list[int]]:
    """`--retry-failed`: make pending every committed shard whose commit record lists failed clips, per column
    (a clip that failed in one column only is redone in that column). Returns {column name: shards}."""
    retried = {}
    for name, column in columns.items():
        failed = {shard: record["failed"] for shard, record in readable_commit_records(column).items() if record["failed"]}
        for shard, rows in failed.items():
            log.info("retry: %s shard %d has %d failed clips, extracting it again", name, shard, len(rows))
            column.uncommit(shard)
        shards = list(failed)
        if shards:
            retried[name] = shards
    return retried


def check_ray_address(address: str, timeout_s: float) -> None:
    """Fail fast (RayUnreachable, one line) unless ray.address answers a TCP connect within timeout_s.

    ray.init on an address nobody serves retries for minutes and prints its own log lines; this
    probe runs before the store is touched. "auto" resolves to the cluster started on this node.
    """
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS") or _current_cluster()
        if not target:
            raise RayUnreachable("ray.address=auto: no Ray cluster runs on this node (start one with `ray start --head`, or set ray.address=null for a local Ray)")
    hostport = target.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnreachable(f"ray.address={address}: expected host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or type(exc).__name__)
        raise RayUnreachable(
            f"ray.address={address}: no Ray cluster answers at {host}:{port} within ray.connect_timeout_s={timeout_s:g} ({reason}); "
            f"start it, fix ray.address, or set ray.address=null for a local Ray"
        ) from None


def _current_cluster() -> str | None:
    """The address `ray start --head` on this node recorded (Ray's own bookkeeping file)."""
    import tempfile

    path = os.path.join(os.environ.get("RAY_TMPDIR", os.path.join(tempfile.gettempdir(), "ray")), "ray_current_cluster")
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _run_in_process(
    cfg: ExtractConfig, store_url: str, todo: list[int], summary: ExtractSummary, on_shard, registry: str, run_id: str
) -> None:
    """ray.num_workers=0: one ShardWorker in this process takes every shard (a GPU box without Ray).

    A worker error stops the run (ExtractFailed); there is no worker to restart (a rerun resumes from the commits).
    Shards another live run holds are checked again every lease.poll_s until committed (or taken over).
    """
    worker = ShardWorker(cfg, store_url, cfg.corpus.storage_options, registry, run_id=run_id)
    queue, waiting = deque(todo), deque()
    while queue or waiting:
        if not queue:
            time.sleep(cfg.lease.poll_s)
            queue, waiting = waiting, deque()
        shard = queue.popleft()
        try:
            report = worker.run_shard(shard)
        except Exception as exc:  # as a Ray worker's error: the run stops with its cause
            raise ExtractFailed(f"shard {shard}: {type(exc).__name__}: {exc}") from exc
        _finish(report, summary, on_shard, waiting)


def _finish(report: ShardReport, summary: ExtractSummary, on_shard, waiting: deque) -> None:
    """Count a worker's report; a shard with columns another run holds waits for another look."""
    if report.busy:
        waiting.append(report.shard)
        if not report.ok:  # nothing done here this time
            return
    summary.add(report)
    if on_shard is not None and not report.skipped:
        on_shard(report)


def _run_on_ray(
    cfg: ExtractConfig, store_url: str, todo: list[int], summary: ExtractSummary, on_shard, registry: str, run_id: str
) -> None:
    import ray  # imported here: the worker path must stay importable where Ray is not installed
    from ray.exceptions import RayActorError, RayTaskError

    from pipeline.ray_watchdog import stop_watchdog

    owns_ray, watchdog = _init_ray(ray, cfg)
    try:
        actor_cls = ray.remote(max_restarts=0, max_task_retries=0)(_RayShardWorker).options(
            num_cpus=cfg.ray.cpus_per_worker, num_gpus=cfg.ray.gpus_per_worker
        )
        cfg_json = to_dict(cfg)
        args = (cfg_json, store_url, cfg.corpus.storage_options, registry, run_id)
        queue, waiting, attempts, running = deque(todo), deque(), {s: 0 for s in todo}, {}
        idle = [actor_cls.remote(*args) for _ in range(min(cfg.ray.num_workers, len(todo)))]
        while queue or running or waiting:
            if not queue and not running:  # only shards another run holds are left: look again shortly
                time.sleep(cfg.lease.poll_s)
                queue, waiting = waiting, deque()
            while queue and idle:
                actor, shard = idle.pop(), queue.popleft()
                attempts[shard] += 1
                running[actor.run_shard.remote(shard)] = (actor, shard)
            ready, _ = ray.wait(list(running), num_returns=1)
            actor, shard = running.pop(ready[0])
            try:
                report = ShardReport(**ray.get(ready[0]))
            except RayTaskError as exc:  # the worker raised (bad model, bad device, bad store): retrying cannot help
                raise ExtractFailed(f"shard {shard}: {type(exc.cause).__name__}: {exc.cause}") from exc
            except RayActorError as exc:
                summary.worker_restarts += 1
                log.warning("worker died on shard %d (attempt %d): %s", shard, attempts[shard], exc)
                if attempts[shard] >= cfg.ray.max_shard_attempts:
                    raise ExtractFailed(f"shard {shard} failed {attempts[shard]} times: its worker died each time") from exc
                queue.appendleft(shard)
                idle.append(actor_cls.remote(*args))
                continue
            idle.append(actor)
            if report.busy:
                attempts[shard] -= 1  # waiting for another run is not a failed attempt
            _finish(report, summary, on_shard, waiting)
    finally:
        if owns_ray:
            ray.shutdown()
        stop_watchdog(watchdog)


def _init_ray(ray, cfg: ExtractConfig):
    """Join the configured cluster, or start a local Ray in-process.

    Returns (True when this call started or joined Ray, the watchdog that takes a local Ray down with
    this process even if it is SIGKILLed, or None).
    """
    if ray.is_initialized():
        return False, None
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if cfg.ray.address:
        try:
            ray.init(address=cfg.ray.address, log_to_driver=True)
        except ConnectionError as exc:
            raise RayUnreachable(f"ray.address={cfg.ray.address}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        return True, None
    from pipeline.ray_watchdog import start_watchdog, stop_watchdog

    watchdog = start_watchdog()  # first: a driver killed during ray.init leaves nothing behind either
    try:
        ray.init(include_dashboard=False, object_store_memory=cfg.ray.object_store_memory, log_to_driver=True)
    except BaseException:
        stop_watchdog(watchdog)
        raise
    return True, watchdog


class _RayShardWorker:
    """Actor body: rebuilds the typed config (only JSON crosses the process boundary)."""

    def __init__(self, cfg_json: dict, store_url: str, storage_options: dict, registry: str, run_id: str):
        logging.basicConfig(level=logging.INFO)
        cfg = from_dict(ExtractConfig, cfg_json, source="<extract config from driver>")
        self.worker = ShardWorker(cfg, store_url, storage_options, registry, run_id=run_id)

    def run_shard(self, shard: int) -> dict:
        return self.worker.run_shard(shard).to_json()
