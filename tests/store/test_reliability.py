"""Issue 18: no secrets in artefacts, no silent subsets, no rewritten splits, no bucket from a typo,
and every failure one line. One test (or two) per case of the issue, each failing before its fix."""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ROOT, small_overrides
from pipeline.cli import app
from stages.config.distill import DistillConfig
from stages.config.extract import ExtractConfig
from stages.config.loader import load_config, to_dict
from stages.config.secrets import REDACTED, redact
from stages.distill.stream import ClipStream
from stages.store.holdout import HoldoutError, make_holdout, resume_split, write_holdout
from stages.store.lease import LeaseOwner, TornClaim, claim, clear_torn_claims
from stages.store import FeatureStore, StoreError
from test_store_integrity import build

SAMPLE = ROOT / "configs/distill/sample.yaml"
EXTRACT = ROOT / "configs/extract/sample.yaml"
FAKE_KEY, FAKE_SECRET, FAKE_TOKEN = "AKIAFAKEKEY0000042", "fakeSecretValue/DoNotLeak+42", "FakeSessionToken0042"


def distill_args(store: str, out: Path, *extra: str) -> list[str]:
    return ["distill", "-c", str(SAMPLE), "--store", store, "--out", str(out), "data.num_workers=0", "eval.every=0", *extra]


def files_containing(root: Path, needles: tuple[str, ...]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            hits += [f"{path}: {n}" for n in needles if n.encode() in blob]
    return hits


# -- 0: credentials ------------------------------------------------------------------------------

def test_redact_masks_credentials_and_keeps_the_rest():
    tree = {
        "data": {"store": "s3://b/store", "holdout_keys": ["clip_1"], "teacher_column": "teacher",
                 "storage_options": {"key": FAKE_KEY, "secret": FAKE_SECRET, "token": FAKE_TOKEN, "endpoint_url": "http://h:9000",
                                     "anon": False, "client_kwargs": {"aws_secret_access_key": "x", "aws_session_token": "y", "region_name": "eu"}}},
        "corpus": {"url": "https://user:pa55word@host/clips", "storage_options": {"password": "p", "key": ""}},
    }
    out = redact(tree)
    so = out["data"]["storage_options"]
    assert so == {"key": REDACTED, "secret": REDACTED, "token": REDACTED, "endpoint_url": "http://h:9000", "anon": False,
                  "client_kwargs": {"aws_secret_access_key": REDACTED, "aws_session_token": REDACTED, "region_name": "eu"}}
    assert out["data"]["holdout_keys"] == ["clip_1"] and out["data"]["store"] == "s3://b/store"
    assert out["corpus"] == {"url": f"https://user:{REDACTED}@host/clips", "storage_options": {"password": REDACTED, "key": ""}}
    assert tree["data"]["storage_options"]["key"] == FAKE_KEY  # a copy: the run keeps its credentials


@pytest.mark.parametrize("schema,folder", [(DistillConfig, "distill"), (ExtractConfig, "extract")])
def test_no_shipped_config_loses_a_key_to_redaction(schema, folder):
    configs = sorted((ROOT / "configs" / folder).glob("*.yaml"))
    assert configs
    for path in configs:
        tree = to_dict(load_config(schema, path))
        assert redact(tree) == tree, path


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fake_credentials_reach_no_file_nor_log_and_resume_takes_them_from_the_command_line(student_store, tmp_path, caplog):
    store = tmp_path / "store"
    shutil.copytree(student_store, store)
    out = tmp_path / "run"
    creds = lambda secret: f"data.storage_options={json.dumps({'key': FAKE_KEY, 'secret': secret, 'token': FAKE_TOKEN})}"  # noqa: E731
    with caplog.at_level(logging.DEBUG):
        first = CliRunner().invoke(app, distill_args(str(store), out, "train.steps=2", "train.checkpoint_every=1", creds(FAKE_SECRET)))
        assert first.exit_code == 0, first.output
        # a rotated secret is no config change: the resume runs on, with the credentials it was given
        again = CliRunner().invoke(app, distill_args(str(store), out, "train.steps=3", "train.checkpoint_every=1", creds(FAKE_SECRET + "-rotated"), "--resume"))
        assert again.exit_code == 0, again.output
    assert "3 steps" in again.output
    state = json.loads((out / "checkpoints/step-000003/state.json").read_text())
    assert state["config"]["data"]["storage_options"] == {"key": REDACTED, "secret": REDACTED, "token": REDACTED}
    info = json.loads((out / "lora/sam2videox.json").read_text())
    assert info["config"]["data"]["storage_options"]["secret"] == REDACTED
    needles = (FAKE_KEY, FAKE_SECRET, FAKE_TOKEN)
    assert files_containing(out, needles) == [] and files_containing(store, needles) == []
    assert not any(n in caplog.text or n in first.output or n in again.output for n in needles)


# -- 1: the held-out split ---------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(900)
def test_refused_runs_leave_holdout_json_alone(student_store, tmp_path):
    out = tmp_path / "run"
    assert CliRunner().invoke(app, distill_args(student_store, out, "train.steps=2")).exit_code == 0
    before = (out / "holdout.json").read_bytes()
    refused = CliRunner().invoke(app, distill_args(student_store, out, "train.steps=2", "data.holdout=0.2", "--resume"))
    assert refused.exit_code == 2 and "data.holdout: 0.05 -> 0.2" in refused.output
    assert (out / "holdout.json").read_bytes() == before
    for extra in (["--resume"], ["train.batch_size=100"]):  # no checkpoint; no full batch for any rank
        fresh = tmp_path / f"fresh{len(extra[0])}"
        result = CliRunner().invoke(app, distill_args(student_store, fresh, "train.steps=2", *extra))
        assert result.exit_code == 2, result.output
        assert not (fresh / "holdout.json").exists(), extra


def test_a_resumed_split_must_name_the_same_keys(tmp_path):
    keys = [f"clip_{i:03d}" for i in range(40)]
    write_holdout(tmp_path, make_holdout(keys, 0.1))
    assert resume_split(tmp_path, keys, 0.1) == make_holdout(keys, 0.1)  # the same split: fine
    assert resume_split(tmp_path / "never-written", keys, 0.3) == make_holdout(keys, 0.3)  # a run from before holdout.json
    extra = next(k for k in keys if k not in make_holdout(keys, 0.1).keys)  # another explicit key: another split
    with pytest.raises(HoldoutError, match=rf"holdout\.json: the run's split was made with other settings \(data\.holdout_keys: \[\] -> \['{extra}'\]\)"):
        resume_split(tmp_path, keys, 0.1, [extra])


# -- 2 and 3: columns that disagree, a column without column.json --------------------------------

def _uncommit(store: FeatureStore, column: str, shard: int) -> None:
    (Path(store.path) / "columns" / store.column(column).dirname / "commits" / f"{shard:05d}.json").unlink()


def test_stream_refuses_columns_that_committed_different_shards(tmp_path, caplog):
    store = build(tmp_path)
    _uncommit(store, "teacher", 1)
    cols = [store.column("teacher"), store.column("encodings")]
    arrays = {"teacher": ["lgf"], "encodings": ["latents"]}
    with pytest.raises(StoreError, match=rf"column {cols[0].dirname} lacks 1 of 3 shards \[1\].*data\.allow_partial_columns=true"):
        ClipStream(store, cols, arrays, batch_size=1)
    with caplog.at_level(logging.WARNING, logger="stages.distill.stream"):
        stream = ClipStream(store, cols, arrays, batch_size=1, allow_partial_columns=True)
    assert sorted(stream.clip_counts) == [0, 2]
    assert f"column {cols[0].dirname} lacks 1 of 3 shards [1]" in caplog.text


def test_verify_flags_columns_that_disagree_on_committed_shards(tmp_path):
    store = build(tmp_path)
    _uncommit(store, "teacher", 1)
    result = CliRunner().invoke(app, ["inspect", store.url, "--verify"])
    assert result.exit_code == 1, result.output
    teacher, enc = store.column("teacher").dirname, store.column("encodings").dirname
    assert f"damaged: {teacher} shard 1: not committed, while {enc} committed it" in result.output


def test_verify_flags_a_column_folder_without_column_json(tmp_path):
    store = build(tmp_path)
    teacher = store.column("teacher").dirname
    (Path(store.path) / "columns" / teacher / "column.json").unlink()
    result = CliRunner().invoke(app, ["inspect", store.url, "--verify"])
    assert result.exit_code == 1, result.output
    assert f"damaged: {teacher}: " in result.output and "column.json: missing: the column's 3 committed shard(s) are invisible" in result.output
    (Path(store.path) / "columns" / teacher / "column.json").write_text("{\"name\": \"teacher\", ")  # torn
    torn = CliRunner().invoke(app, ["inspect", store.url, "--verify"])
    assert torn.exit_code == 1 and "not valid JSON" in torn.output and "Traceback" not in torn.output


# -- 4: a bucket that does not exist -----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(600)
def test_store_or_corpus_in_a_missing_bucket_is_one_line_and_no_bucket_is_made(small_corpus, moto_s3):
    options, fs = moto_s3
    fs.put(str(small_corpus), "bucket/clips", recursive=True)
    opts = f"corpus.storage_options={json.dumps(options)}"
    for corpus, store, bucket in (("s3://bucket/clips", "s3://bukcet/store", "bukcet"), ("s3://no-such-corpus/clips", "s3://bucket/store", "no-such-corpus")):
        result = CliRunner().invoke(app, ["extract", "--config", str(EXTRACT), "--store", store, *small_overrides(corpus), opts])
        assert result.exit_code == 2, result.output
        assert f"bucket '{bucket}' does not exist" in result.output and isinstance(result.exception, SystemExit)
        fs.invalidate_cache()
        assert fs.ls("") == ["bucket"] and not fs.exists("bucket/store")


# -- 5: disk full during a checkpoint ----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(900)
def test_disk_full_at_a_checkpoint_is_one_line_and_the_resume_is_bit_equal(student_store, tmp_path, monkeypatch):
    steps = ["train.steps=4", "train.checkpoint_every=2"]
    straight = CliRunner().invoke(app, distill_args(student_store, tmp_path / "a", *steps))
    assert straight.exit_code == 0, straight.output
    out = tmp_path / "b"
    write_text = pathlib.Path.write_text

    def disk_full_at_step_4(self, *args, **kwargs):
        if self.name == "state.json" and "step-000004" in str(self.parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", disk_full_at_step_4)
    full = CliRunner().invoke(app, distill_args(student_store, out, *steps))
    assert full.exit_code == 2 and isinstance(full.exception, SystemExit), full.output
    assert "I/O error: could not write checkpoint" in full.output and "No space left on device" in full.output
    assert "step-000002" in full.output  # the committed checkpoint it names as intact
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]  # the half write is gone
    monkeypatch.setattr(pathlib.Path, "write_text", write_text)  # space freed
    resumed = CliRunner().invoke(app, distill_args(student_store, out, *steps, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    losses = lambda run: [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses(out) == losses(tmp_path / "a") and len(losses(out)) == 4
    lora = "lora/pytorch_lora_weights.safetensors"
    assert (out / lora).read_bytes() == (tmp_path / "a" / lora).read_bytes()


# -- 6: torn claim files -----------------------------------------------------------------------

def test_a_torn_claim_names_its_file_and_column_and_is_cleared(tmp_path):
    store = build(tmp_path)
    column = store.column("teacher")
    claims = Path(store.path) / "columns" / column.dirname / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    (claims / "00001.json").write_text('{"shard": 1, "attempt": "00001.ab')  # a write cut short
    with pytest.raises(TornClaim, match=rf"column {column.dirname}: claim file .*claims/00001\.json is not valid JSON.*--repair"):
        column.claim(1, LeaseOwner.current("run-b"))
    assert clear_torn_claims(store.fs, str(claims)) == [str(claims / "00001.json")]
    assert column.claim(1, LeaseOwner.current("run-b")) is not None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_extract_names_a_torn_claim_and_repair_clears_it(student_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(student_store, root)
    store = FeatureStore(str(root))
    corpus = store.require_snapshot().source
    teacher = store.column("teacher").dirname
    _uncommit(store, "teacher", 2)
    claim_file = root / "columns" / teacher / "claims" / "00002.json"
    claim_file.parent.mkdir(parents=True, exist_ok=True)
    claim_file.write_text('{"shard": 2, "att')
    args = ["extract", "--config", str(EXTRACT), "--store", str(root), f"corpus.url={corpus}", "corpus.clips_per_shard=2",
            "video.num_frames=17", "teacher.image_size=64", "ray.num_workers=0"]
    blocked = CliRunner().invoke(app, args)
    assert blocked.exit_code == 2 and isinstance(blocked.exception, SystemExit), blocked.output
    assert f"column {teacher}: claim file {claim_file} is not valid JSON" in blocked.output
    repaired = CliRunner().invoke(app, [*args, "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert 2 in store.column("teacher").committed_shards() and not claim_file.exists()


# -- 7: byte-reproducible exports --------------------------------------------------------------

EXPORT_SCRIPT = """
import sys, torch
from peft import LoraConfig
from diffusers import CogVideoXImageToVideoPipeline
from stages.distill.export import write_lora
cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj", "ff.net.0.proj", "ff.net.2"])
g = torch.Generator().manual_seed(0)
state = {f"blocks.0.attn1.{m}.lora_{ab}.weight": torch.randn(4, 4, generator=g) for m in ("to_q", "to_k") for ab in "AB"}
write_lora(state, cfg.to_dict(), sys.argv[1], pipeline_class=CogVideoXImageToVideoPipeline)
"""


@pytest.mark.timeout(600)
def test_exported_lora_bytes_do_not_depend_on_the_process(tmp_path):
    blobs = set()
    for seed in ("0", "1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-c", EXPORT_SCRIPT, str(tmp_path / seed)], check=True, env=env, capture_output=True)
        blobs.add((tmp_path / seed / "pytorch_lora_weights.safetensors").read_bytes())
    assert len(blobs) == 1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "0" / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    targets = meta["transformer.target_modules"]
    assert targets == sorted(targets) and len(targets) == 7


# -- 8: temp claim files a kill left ----------------------------------------------------------

def test_garbage_collection_sweeps_old_temp_claim_files(tmp_path):
    store = build(tmp_path)
    column = store.column("teacher")
    claims = Path(store.path) / "columns" / column.dirname / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    old, fresh = claims / "00001.json.0123abcd.tmp", claims / "00002.json.4567ef01.tmp"
    for path in (old, fresh):
        path.write_text('{"shard": 1')
    os.utime(old, (0, 0))  # left by a run killed long ago
    column.collect_garbage(column_grace_s=600)
    assert not old.exists() and fresh.exists()  # a fresh one may be a live writer's, a moment before its link
