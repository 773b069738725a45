"""Leases on shard attempts, concurrent runs on one store, clean exits, and one-line refusals of bad inputs."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import ROOT, small_overrides
from pipeline.cli import app
from stages.config.loader import load_config
from stages.config.extract import ExtractConfig
from stages.store.lease import LeaseOwner
from stages.store import ArraySpec, FeatureStore, ShardBusy, Snapshot, StoreError

SAMPLE = ROOT / "configs/extract/sample.yaml"
SCHEMA = {"fwd": ArraySpec((3, 4, 4, 8), "float16"), "mask": ArraySpec((3, 4, 4), "uint8")}


def make_store(tmp_path, clips=40, per_shard=20) -> FeatureStore:
    store = FeatureStore(str(tmp_path / "store"))
    rows = [{"key": f"c{i}", "url": f"/x/c{i}.mp4", "caption": "", "prompt": None} for i in range(clips)]
    store.freeze_snapshot(Snapshot("/x", per_shard, rows))
    return store


def rows(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"fwd": rng.standard_normal((n, 3, 4, 4, 8)).astype("float16"), "mask": rng.integers(0, 255, (n, 3, 4, 4)).astype("uint8")}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


GC_LOOP = """
import sys, time, os
from stages.store import FeatureStore
col = FeatureStore(sys.argv[1]).column("teacher")
stop, n, removed = sys.argv[2], 0, 0
while not os.path.exists(stop):
    removed += col.collect_garbage()
    n += 1
print(n, removed)
"""


def test_cleanup_from_another_process_never_removes_a_live_attempt(tmp_path):
    """The race of issue 8: a second process collects garbage in a loop while shards are written
    row by row. Every shard commits whole (all rows readable, equal to what was written)."""
    store = make_store(tmp_path)
    col = store.create_column("teacher", {"k": 1}, SCHEMA)
    stop = tmp_path / "stop"
    gc = subprocess.Popen([sys.executable, "-c", GC_LOOP, store.url, str(stop)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # the collector is looping before the first attempt appears
        for shard in (0, 1):
            data = rows(20, seed=shard)
            writer = col.open_shard(shard, 20)
            for i in range(20):
                writer.append({k: v[i : i + 1] for k, v in data.items()})
                time.sleep(0.02)
            writer.commit([{"key": f"c{shard * 20 + i}", "index": shard * 20 + i} for i in range(20)], [])
            got = col.read_shard(shard)
            for key in SCHEMA:
                np.testing.assert_array_equal(np.asarray(got.arrays[key][...]), data[key])
    finally:
        stop.touch()
        out, _ = gc.communicate(timeout=60)
    loops, removed = map(int, out.split())
    assert loops > 5 and removed == 0  # it really ran during the writes, and removed nothing live
    assert col.claims() == {}  # commits released their claims


def test_a_dead_owners_attempt_is_collected_and_its_commit_refused(tmp_path):
    store = make_store(tmp_path)
    col = store.create_column("teacher", {"k": 1}, SCHEMA)
    ghost = LeaseOwner(socket.gethostname(), dead_pid(), "ghost-run")
    lease = col.claim(0, ghost)
    writer = col.open_shard(0, 2, lease)
    writer.append(rows(2, 0))
    assert col.collect_garbage() == 1  # its owner is gone: the attempt is garbage
    with pytest.raises(StoreError, match=r"not committed: .*missing"):
        writer.commit([{"key": "c0", "index": 0}, {"key": "c1", "index": 1}], [])
    assert col.commit_record(0) is None  # never a commit without its data


def test_claims_of_live_owners_are_respected_and_dead_ones_taken_over(tmp_path):
    store = make_store(tmp_path)
    col = store.create_column("teacher", {"k": 1}, SCHEMA)
    other = col.claim(0, LeaseOwner.current("other-run"))  # this process is alive: a live owner
    assert other is not None and col.claim(0, LeaseOwner.current("my-run")) is None
    with pytest.raises(ShardBusy, match="another run"):
        col.open_shard(0, 2)
    assert col.claim(0, LeaseOwner.current("other-run")) is not None  # the same run's driver re-handing the shard
    stale = col.claim(1, LeaseOwner("some-other-host", 1, "old-run"), lease_s=0.2)
    time.sleep(0.3)  # heartbeat expired, owner on another host
    mine = col.claim(1, LeaseOwner.current("my-run"))
    assert mine is not None and mine.attempt != stale.attempt
    assert stale.check() is not None  # the old holder's commit would be refused


def config(corpus: Path, **extra) -> ExtractConfig:
    return load_config(ExtractConfig, SAMPLE, small_overrides(corpus, **extra))


RUN = """
import json, os, sys, time
from stages.config.loader import load_config
from stages.config.extract import ExtractConfig
from pipeline.runner import run_extract
cfg = load_config(ExtractConfig, sys.argv[1], json.loads(sys.argv[3]))
open(f"{sys.argv[4]}.{os.getpid()}.ready", "w").close()
while not os.path.exists(sys.argv[4]):  # start together: both list, claim and write at the same time
    time.sleep(0.05)
s = run_extract(cfg, sys.argv[2])
print(json.dumps({"run": s.shards_run, "elsewhere": s.shards_elsewhere, "skipped": s.shards_skipped}))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_concurrent_runs_share_the_work(tmp_path, small_corpus):
    """Two extract processes on one store (in-process workers): each shard is computed once, both exit 0."""
    url = str(tmp_path / "store")
    overrides = small_overrides(small_corpus, **{"ray.num_workers": 0, "lease.poll_s": 0.2})
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", RUN, str(SAMPLE), url, json.dumps(overrides), str(go)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
        for _ in range(2)
    ]  # fmt: skip
    deadline = time.time() + 120
    while len(list(tmp_path.glob("go.*.ready"))) < 2:  # both imported and configured
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.1)
    go.touch()
    outs = [p.communicate(timeout=500) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    a, b = (json.loads(o[0].strip().splitlines()[-1]) for o in outs)
    assert sorted(a["run"] + b["run"]) == [0, 1, 2], (a, b)  # each shard computed once, by one of them
    print("shards run:", a, b)
    store = FeatureStore(url)
    for col in store.columns():
        assert col.committed_shards() == {0, 1, 2}
        assert len(list((Path(url) / "columns" / col.dirname / "shards").iterdir())) == 3  # no second attempt anywhere
    again = CliRunner().invoke(app, ["extract", "--config", str(SAMPLE), "--store", url, *small_overrides(small_corpus, **{"ray.num_workers": 0})])
    assert again.exit_code == 0 and "nothing to do: all 3 shards already committed" in again.output


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watchdog reads /proc")
def test_sigkilled_driver_leaves_no_ray_process(tmp_path, small_corpus):
    from pipeline.ray_watchdog import _alive, descendants

    url = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    cmd = [sys.executable, "-m", "pipeline.cli", "extract", "--config", str(SAMPLE), "--store", str(url),
           *small_overrides(small_corpus, **{"ray.num_workers": 1})]  # fmt: skip
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not list(url.glob("columns/*/shards/*")):  # a worker is writing: Ray and its agents are up
            assert driver.poll() is None and time.time() < deadline, "extract ended or stalled before its first shard"
            time.sleep(0.2)
        procs = descendants(driver.pid)
        names = " ".join(_cmdline(p) for p in procs)
        assert "raylet" in names and "gcs_server" in names, names  # the run's own Ray, started under the driver
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(p, s) for p, s in procs.items()):
            time.sleep(0.5)
        left = {p: _cmdline(p) for p, s in procs.items() if _alive(p, s)}
        assert not left, f"survived the driver: {left}"
    finally:
        if driver.poll() is None:
            driver.kill()


# -- bad inputs: one line naming the key, path or address, exit code 2 ----------------------


def extract(store: str, corpus: Path, **extra):
    return CliRunner().invoke(app, ["extract", "--config", str(SAMPLE), "--store", store, *small_overrides(corpus, **extra)])


def one_line(result) -> str:
    """The error line of a refused run (the progress fallback's closing line aside), exit code 2."""
    lines = [line for line in result.output.splitlines() if line.strip() and not re.fullmatch(r"extract: \d+ clips, .* elapsed", line)]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


def test_negative_num_workers(tmp_path, small_corpus):
    assert "ray.num_workers" in one_line(extract(str(tmp_path / "s"), small_corpus, **{"ray.num_workers": -1}))
    assert not (tmp_path / "s").exists()


def test_store_path_that_is_a_file(tmp_path, small_corpus):
    path = tmp_path / "store.txt"
    path.write_text("not a store")
    assert f"store path {path} is a file" in one_line(extract(str(path), small_corpus))


def test_unreachable_ray_address_fails_fast_before_the_store(tmp_path, small_corpus):
    with socket.socket() as s:  # a local port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.time()
    line = one_line(extract(str(tmp_path / "s"), small_corpus, **{"ray.address": f"127.0.0.1:{port}", "ray.connect_timeout_s": 1}))
    assert f"ray.address=127.0.0.1:{port}" in line and "ray.connect_timeout_s=1" in line
    assert time.time() - started < 30 and not (tmp_path / "s").exists()  # nothing written


def test_config_refused_by_a_column_does_not_bind_the_store(tmp_path, small_corpus):
    """The snapshot is written only after the columns accept the config; a changed corpus.limit is said, not ignored."""
    from pipeline.runner import prepare_store

    url = str(tmp_path / "s")
    result = extract(url, small_corpus, **{"corpus.limit": 2, "video.num_frames": 16})
    assert result.exit_code == 2 and FeatureStore(url).snapshot() is None
    prepare_store(config(small_corpus, **{"corpus.limit": 4}), url, "stages.extract.columns.registry")
    line = one_line(extract(url, small_corpus, **{"corpus.limit": 2}))
    assert "corpus.limit=2 lists 2 clips" in line and "snapshot of 4" in line and "new store" in line


def test_released_sam2_config_without_weights_is_refused(tmp_path, small_corpus):
    from stages.extract.columns.teacher import teacher_spec

    url = str(tmp_path / "s")
    line = one_line(extract(url, small_corpus, **{"teacher.model": "sam2.1_hiera_t", "teacher.image_size": 64}))
    assert "teacher.checkpoint" in line and "teacher.allow_random_weights=true" in line and not Path(url).exists()
    ok = config(small_corpus, **{"teacher.model": "sam2.1_hiera_t", "teacher.allow_random_weights": "true"})
    spec = teacher_spec(ok)
    assert "allow_random_weights" not in spec.config["teacher"]  # a permission, not part of the column key
    assert teacher_spec(config(small_corpus)).config == teacher_spec(config(small_corpus, **{"teacher.allow_random_weights": "true"})).config


def test_s3_without_credentials(tmp_path, small_corpus, moto_s3, monkeypatch):
    options, _ = moto_s3
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    anonymous = {k: v for k, v in options.items() if k not in ("key", "secret")}
    result = extract("s3://bucket/store", small_corpus, **{"corpus.url": "s3://bucket/clips", "corpus.storage_options": json.dumps(anonymous)})
    assert "no credentials for s3://bucket/clips / s3://bucket/store" in one_line(result)
    inspect = CliRunner().invoke(app, ["inspect", "s3://bucket/store", "--storage-options", json.dumps(anonymous)])
    assert "no credentials for s3://bucket/store" in one_line(inspect)


def test_unknown_ablation_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["ablate", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "no_such_ablation"])
    line = one_line(result)
    assert "unknown ablation(s) no_such_ablation" in line and "valid:" in line
