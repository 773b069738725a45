"""Stage one end to end through Ray, Zarr and the CLI, on the tiny real models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import ROOT, small_overrides
from pipeline.cli import app
from stages.config.loader import load_config
from stages.config.extract import ExtractConfig
from pipeline.runner import run_extract
from stages.store import FeatureStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SAMPLE = ROOT / "configs/extract/sample.yaml"


def config(corpus: Path, **extra) -> ExtractConfig:
    return load_config(ExtractConfig, SAMPLE, small_overrides(corpus, **extra))


def store_arrays(url: str) -> dict:
    """{column name: {shard: {array: ndarray}}} of every committed shard."""
    store = FeatureStore(url)
    out = {}
    for col in store.columns():
        out[col.name] = {s: {k: np.asarray(v[...]) for k, v in col.read_shard(s).arrays.items()} for s in col.committed_shards()}
    return out


def assert_same_arrays(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for col in a:
        assert a[col].keys() == b[col].keys(), col
        for shard in a[col]:
            for key in a[col][shard]:
                np.testing.assert_array_equal(a[col][shard][key], b[col][shard][key], err_msg=f"{col}/{shard}/{key}")


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory, small_corpus, ray_session) -> str:
    url = str(tmp_path_factory.mktemp("clean") / "store")
    summary = run_extract(config(small_corpus), url)
    assert summary.failed_keys == set() and len(summary.shards_run) == 3
    return url


def test_cli_extract_and_inspect_json(tmp_path, small_corpus, ray_session):
    store = str(tmp_path / "store")
    runner = CliRunner()
    result = runner.invoke(app, ["extract", "--config", str(SAMPLE), "--store", store, *small_overrides(small_corpus)])
    assert result.exit_code == 0, result.output
    assert "extract: 6 clips in" in result.output and "wall/model" in result.output  # where the workers' time went
    # no terminal here: progress comes as plain lines (done/total, rate, ETA, the run's failures)
    assert "extract: 6/6 clips (100%), ETA 0s" in result.output and "clips/s, 0 failed" in result.output
    info = json.loads(runner.invoke(app, ["inspect", store, "--json"]).output)
    assert info["clips"] == 6 and info["shards"] == 3 and info["failed"] == 0
    cols = {c["name"]: c for c in info["columns"]}
    assert set(cols) == {"teacher", "encodings", "image_teacher"}  # the demo config lists the DINOv2 baseline too
    teacher = cols["teacher"]
    assert teacher["clips"] == 6 and teacher["arrays"]["fwd"]["shape"][:3] == [5, 4, 6]  # 17 frames, 64x96 -> 5x4x6
    assert teacher["arrays"]["lgf"]["shape"] == [4, 4, 6, 49]
    assert info["bytes_per_clip"] > 0 and len(teacher["hash"]) == 16
    text = runner.invoke(app, ["inspect", store]).output
    assert "teacher-" in text and "encodings-" in text
    for out in (tmp_path / "pca.png", tmp_path / "pca.mp4"):
        result = runner.invoke(app, ["inspect", store, "--pca", "@1", "--out", str(out)])
        assert result.exit_code == 0, result.output
    from PIL import Image

    strip = Image.open(tmp_path / "pca.png")
    assert strip.size == (5 * 96, 5 * (64 + 12))  # 5 panels wide, one row per latent frame under a 12-px label bar
    assert (tmp_path / "pca.mp4").stat().st_size > 0
    missing = runner.invoke(app, ["inspect", store, "--pca", "nope", "--out", str(out)])
    assert missing.exit_code == 2 and "no clip 'nope'" in missing.output


def test_rerun_skips_committed_and_is_identical(clean_store, small_corpus, ray_session):
    before = store_arrays(clean_store)
    summary = run_extract(config(small_corpus), clean_store)
    assert summary.shards_run == [] and summary.shards_skipped == 3
    assert_same_arrays(before, store_arrays(clean_store))


def test_resume_after_stop_computes_only_the_rest(tmp_path, clean_store, small_corpus, ray_session):
    url = str(tmp_path / "store")
    cfg = config(small_corpus, **{"ray.num_workers": 1})

    class Stop(Exception):
        pass

    def stop_after_first(report):
        raise Stop

    with pytest.raises(Stop):
        run_extract(cfg, url, on_shard=stop_after_first)
    done = {c.name: c.committed_shards() for c in FeatureStore(url).columns()}
    assert all(len(s) == 1 for s in done.values())
    summary = run_extract(cfg, url)
    assert sorted(summary.shards_run) == sorted({0, 1, 2} - done["teacher"])
    assert_same_arrays(store_arrays(clean_store), store_arrays(url))


def test_worker_killed_mid_shard_is_redone(tmp_path, clean_store, small_corpus, ray_session):
    url = str(tmp_path / "store")
    summary = run_extract(config(small_corpus, **{"debug.crash_after_clips": 1}), url)
    assert summary.worker_restarts == 1
    assert (Path(url) / "_debug" / "crashed").exists()
    assert summary.failed_keys == set()
    assert_same_arrays(store_arrays(clean_store), store_arrays(url))
    for col in FeatureStore(url).columns():  # the dead worker's attempt was collected
        assert len(list((Path(url) / "columns" / col.dirname / "shards").iterdir())) == 3


def test_bad_inputs_go_to_the_ledger(copy_corpus, tmp_path, sample_generator, ray_session):
    corpus = copy_corpus()
    good = sorted(corpus.glob("*.mp4"))
    (corpus / "manifest.jsonl").unlink()  # list files; captions from sidecars
    data = good[0].read_bytes()
    (corpus / "z_truncated.mp4").write_bytes(data[: len(data) // 2])
    (corpus / "z_empty.mp4").write_bytes(b"")
    (corpus / "z_text.mp4").write_text("this is not a video\n")
    short_dir = tmp_path / "short"
    sample_generator.generate(short_dir, clips=1, frames=5, fps=8)
    next(short_dir.glob("*.mp4")).rename(corpus / "z_short.mp4")
    store = str(tmp_path / "store")
    runner = CliRunner()
    args = ["extract", "--config", str(SAMPLE), "--store", store, *small_overrides(corpus)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    ledger = {row["key"]: row["reason"] for row in FeatureStore(store).column("teacher").ledger()}
    assert set(ledger) == {"z_truncated", "z_empty", "z_text", "z_short"}
    assert len(set(ledger.values())) == 4  # each says what is wrong with it
    assert "short" in ledger["z_short"] and ("empty" in ledger["z_empty"] or "zero" in ledger["z_empty"])
    info = json.loads(runner.invoke(app, ["inspect", store, "--json"]).output)
    assert info["failed"] == 4 and {c["name"]: c["clips"] for c in info["columns"]} == {"teacher": 6, "encodings": 6, "image_teacher": 6}
    assert runner.invoke(app, [*args, "--allow-failures"]).exit_code == 0


def test_config_typo_is_rejected_by_the_cli(tmp_path):
    result = CliRunner().invoke(app, ["extract", "--config", str(SAMPLE), "--store", str(tmp_path / "s"), "teacher.fetaure=maskmem"])
    assert result.exit_code == 2
    assert "unknown key 'teacher.fetaure'" in result.output and "feature" in result.output


def test_columns_are_independent(tmp_path, clean_store, small_corpus, ray_session):
    """A new teacher column (another feature kind) leaves the encodings column's files untouched."""
    url = str(tmp_path / "store")
    import shutil

    shutil.copytree(clean_store, url)
    enc_dir = Path(url) / "columns" / FeatureStore(url).column("encodings").dirname
    before = {p: p.read_bytes() for p in sorted(enc_dir.rglob("*")) if p.is_file()}
    summary = run_extract(config(small_corpus, **{"teacher.feature": "backbone", "columns": "[teacher]"}), url)
    assert len(summary.shards_run) == 3
    after = {p: p.read_bytes() for p in sorted(enc_dir.rglob("*")) if p.is_file()}
    assert before == after
    teachers = [c for c in FeatureStore(url).columns() if c.name == "teacher"]
    assert len(teachers) == 2 and teachers[0].hash != teachers[1].hash
    # and vice versa: a new encodings column (another noise seed) leaves every teacher file untouched
    teacher_files = {p: p.read_bytes() for c in teachers for p in sorted((Path(url) / "columns" / c.dirname).rglob("*")) if p.is_file()}
    run_extract(config(small_corpus, **{"encoders.seed": 7, "columns": "[encodings]"}), url)
    assert teacher_files == {p: p.read_bytes() for c in teachers for p in sorted((Path(url) / "columns" / c.dirname).rglob("*")) if p.is_file()}
    assert len([c for c in FeatureStore(url).columns() if c.name == "encodings"]) == 2


def test_clip_failing_in_one_column_is_excluded_from_joined_reads(copy_corpus, tmp_path, ray_session):
    """A manifest mask prompt that cannot be read fails the teacher only; joins drop that clip."""
    from stages.distill.stream import ClipStream, StreamPosition

    corpus = copy_corpus()
    manifest = corpus / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[1]["prompt"] = {"mask": "masks/missing.png"}
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    url = str(tmp_path / "store")
    summary = run_extract(config(corpus, allow_failures="true"), url)
    assert [r["key"] for r in summary.failed["teacher"]] == [rows[1]["key"]] and summary.failed["encodings"] == []
    assert "missing.png" in summary.failed["teacher"][0]["reason"]
    info = json.loads(CliRunner().invoke(app, ["inspect", url, "--json"]).output)
    assert {c["name"]: (c["clips"], c["failed"]) for c in info["columns"]} == {"teacher": (5, 1), "encodings": (6, 0), "image_teacher": (6, 0)}
    store = FeatureStore(url)
    stream = ClipStream(store, [store.column("teacher"), store.column("encodings")], {"encodings": ["prompt_mask"]}, batch_size=1)
    keys = [k for b in stream.epoch(StreamPosition()) for k in b["keys"]]
    assert sorted(keys) == sorted(r["key"] for r in rows if r["key"] != rows[1]["key"])


def test_real_checkpoint_loads_through_the_config_path(tmp_path, small_corpus):
    """A SAM2 checkpoint in the official format, named by teacher.checkpoint, drives extraction
    (in-process: the worker path a GPU box runs without Ray)."""
    from pipeline.runner import prepare_store
    from stages.extract.shard_worker import ShardWorker
    from stages.teacher.sam2_model import build_sam2, save_checkpoint

    ckpt = tmp_path / "sam2_tiny.pt"
    save_checkpoint(build_sam2("tiny", image_size=64, seed=123), str(ckpt))
    arrays = {}
    for name, extra in {"ckpt": {"teacher.checkpoint": str(ckpt)}, "seed": {"teacher.seed": 123}, "default": {}}.items():
        cfg = config(small_corpus, columns="[teacher]", **extra)
        url = str(tmp_path / name)
        prepare_store(cfg, url, "stages.extract.columns.registry")
        ShardWorker(cfg, url).run_shard(0)
        arrays[name] = np.asarray(FeatureStore(url).column("teacher").read_shard(0).arrays["fwd"][...])
    np.testing.assert_array_equal(arrays["ckpt"], arrays["seed"])  # the checkpoint's weights, not the seed-0 init
    assert not np.array_equal(arrays["ckpt"], arrays["default"])
    bad = tmp_path / "bad.pt"
    import torch

    torch.save({"model": {"not_a_sam2_key": torch.zeros(1)}}, bad)
    cfg = config(small_corpus, columns="[teacher]", **{"teacher.checkpoint": str(bad)})
    prepare_store(cfg, str(tmp_path / "bad"), "stages.extract.columns.registry")
    with pytest.raises(ValueError, match="bad.pt"):
        ShardWorker(cfg, str(tmp_path / "bad")).producer("teacher")


def test_a_store_is_bound_to_its_corpus(tmp_path, small_corpus, copy_corpus):
    from pipeline.runner import prepare_store
    from stages.store import StoreError

    url = str(tmp_path / "store")
    prepare_store(config(small_corpus), url, "stages.extract.columns.registry")
    with pytest.raises(StoreError, match="use a new store"):
        prepare_store(config(copy_corpus()), url, "stages.extract.columns.registry")
    with pytest.raises(StoreError, match="3 clips per shard"):
        prepare_store(config(small_corpus, **{"corpus.clips_per_shard": 3}), url, "stages.extract.columns.registry")


def test_columns_are_keyed_by_the_dtype_workers_really_compute_in(tmp_path, small_corpus):
    """CPU workers compute in fp32 whatever teacher.dtype says: the key says so, and a worker that
    would compute otherwise than its column declares refuses to start instead of mixing precisions."""
    from pipeline.runner import prepare_store
    from stages.extract.shard_worker import ShardWorker
    from stages.core.devices import compute_dtype
    from stages.extract.columns.teacher import teacher_spec

    assert compute_dtype("bfloat16", "auto", 0) == "float32" and compute_dtype("bfloat16", "auto", 1) == "bfloat16"
    assert compute_dtype("bfloat16", "cuda:1", 0) == "bfloat16"
    cpu, gpu = config(small_corpus, **{"teacher.dtype": "bfloat16"}), config(small_corpus, **{"teacher.dtype": "bfloat16", "ray.gpus_per_worker": 1})
    assert teacher_spec(cpu).config["teacher"]["compute_dtype"] == "float32"
    assert teacher_spec(gpu).config["teacher"]["compute_dtype"] == "bfloat16"  # another column, never a shared hash
    url = str(tmp_path / "store")
    prepare_store(gpu, url, "stages.extract.columns.registry")
    with pytest.raises(ValueError, match="keyed for bfloat16 compute but this worker runs float32 on cpu"):
        ShardWorker(gpu, url).run_shard(0)  # auto resolves to the CPU here
    assert FeatureStore(url).column("teacher").committed_shards() == set()


def test_a_broken_model_stops_the_run_with_the_cause(tmp_path, small_corpus, ray_session):
    store = str(tmp_path / "store")
    result = CliRunner().invoke(app, ["extract", "--config", str(SAMPLE), "--store", store,
                                      *small_overrides(small_corpus, **{"teacher.checkpoint": str(tmp_path / "missing.pt")})])
    assert result.exit_code == 2, result.output
    assert "extract failed: shard" in result.output and "missing.pt" in result.output
