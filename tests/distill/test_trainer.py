"""Stage two end to end on a store extracted by stage one (tiny SAM2, VAE, T5 and CogVideoX)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import ROOT
from pipeline.cli import app
from stages.config.loader import load_config
from stages.config.distill import DistillConfig
from stages.store import ArraySpec, FeatureStore, Snapshot, StoreError
from stages.distill.trainer import Trainer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
SAMPLE = ROOT / "configs/distill/sample.yaml"


def distill_config(store: str, out: Path, *extra: str) -> DistillConfig:
    base = [f"data.store={store}", f"out={out}", "data.num_workers=0", "train.batch_size=1", "train.checkpoint_every=100"]
    return load_config(DistillConfig, SAMPLE, [*base, *extra])


def tree_bytes(root: str) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_resume_continues_the_exact_trajectory(student_store, tmp_path):
    extra = ("train.steps=6", "optim.accumulation=2")
    straight = Trainer(distill_config(student_store, tmp_path / "a", *extra)).run()
    first = Trainer(distill_config(student_store, tmp_path / "b", *extra)).run(stop_at=3)
    rest = Trainer(distill_config(student_store, tmp_path / "b", *extra), resume=True).run()
    assert [m.step for m in rest] == [4, 5, 6]
    assert [m.loss for m in straight] == [m.loss for m in first + rest]
    assert [m.clips for m in straight] == [m.clips for m in first + rest]
    assert set(straight[0].terms) == {"diff", "lgf"}
    logged = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]


def test_run_exports_a_lora_the_stock_pipeline_loads(student_store, tmp_path):
    from stages.families.registry import get_student

    cogvideox = get_student("cogvideox")

    out = tmp_path / "run"
    trainer = Trainer(distill_config(student_store, out, "train.steps=2", "optim.lr=0.05"))
    trainer.run()
    exported = trainer.finish()
    assert (exported / "pytorch_lora_weights.safetensors").exists() and (exported / "projector" / "projector.json").exists()
    assert (out / "loss_curve.png").stat().st_size > 0 and any((out / "tensorboard").iterdir())
    image = np.full((128, 192, 3), 90, np.uint8)
    base, tuned = (cogvideox.sample(cogvideox.build_pipeline("tiny", "tiny", lora, "i2v"), "i2v", image, "a red stick figure", 9,
                                    128, 192, steps=2, guidance=1.0, seed=0, max_text_len=16) for lora in (None, exported))
    assert base.shape == tuned.shape == (9, 128, 192, 3)
    assert np.abs(base.astype(int) - tuned.astype(int)).max() > 0
    gen = ["generate", "--run", str(out), "--store", student_store, "--out", str(tmp_path / "x.mp4")]
    bad_key = CliRunner().invoke(app, [*gen, "--key", "nope"])
    assert bad_key.exit_code == 2 and "no clip 'nope'" in bad_key.output
    bad_dtype = CliRunner().invoke(app, [*gen, "--dtype", "float8"])
    assert bad_dtype.exit_code == 2 and "--dtype 'float8' is not one of" in bad_dtype.output and "Traceback" not in bad_dtype.output
    sampled = CliRunner().invoke(app, [*gen, "--device", "cpu", "--dtype", "float32", "--steps", "3", "--guidance", "2.5", "--dynamic-cfg"])
    assert sampled.exit_code == 0, sampled.output
    assert "3 steps on cpu in float32, guidance 2.5 (dynamic)" in sampled.output and (tmp_path / "x.mp4").stat().st_size > 0


def test_two_rank_ddp_on_cpu(student_store, tmp_path):
    """torchrun, 2 processes, gloo: disjoint clips per rank, the same number of steps on both."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pipeline.cli",
        "distill", "--config", str(SAMPLE), "--store", student_store, "--out", str(out),
        "train.steps=2", "train.batch_size=1", "data.num_workers=0", "train.checkpoint_every=100",
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [[json.loads(line) for line in (out / "ranks" / f"rank-{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [len(r) for r in ranks] == [2, 2]
    seen = [{k for row in r for k in row["clips"]} for r in ranks]
    assert seen[0] and seen[1] and not (seen[0] & seen[1])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    report = CliRunner().invoke(app, ["report", "--store", student_store, "--run", str(out), "--out", str(tmp_path / "summary.md")])
    assert report.exit_code == 0, report.output
    text = (tmp_path / "summary.md").read_text()
    assert "6 clips in 3 shards" in text and "training: 2 steps on 2 rank(s)" in text and "mean of the first 1 steps" in text
    assert json.loads((tmp_path / "summary.json").read_text())["training"]["world_size"] == 2
    assert "teacher bytes per clip at the real size (49x480x720, SAM 2.1 Hiera-L, default feature; from the schema): 10.75 MB" in text


def test_ablate_reuses_the_store_byte_for_byte(student_store, tmp_path):
    before = tree_bytes(student_store)
    result = CliRunner().invoke(
        app,
        ["ablate", "--config", str(SAMPLE), "--store", student_store, "--out", str(tmp_path / "abl"), "--steps", "1",
         "--ablations", str(ROOT / "configs/ablations")],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "abl" / "ablations.json").read_text())
    names = {p.stem for p in (ROOT / "configs/ablations").glob("*.yaml")}
    assert set(rows) == names
    assert set(rows["lora-only"]["terms"]) == {"diff"}
    assert set(rows["repa"]["terms"]) == {"diff", "repa"} and set(rows["mask"]["terms"]) == {"diff", "mask"}
    assert rows["feature-fusion"]["terms"]["lgf"] != rows["forward-only"]["terms"]["lgf"]
    assert tree_bytes(student_store) == before


def test_store_with_another_grid_is_refused_before_training(tmp_path):
    store = FeatureStore(str(tmp_path / "store"))
    store.freeze_snapshot(Snapshot("/x", 2, [{"key": "a", "url": "/x/a.mp4", "caption": "", "prompt": None}]))
    enc = {"latents": ArraySpec((32, 5, 16, 24), "float16"), "image_latents": ArraySpec((16, 1, 16, 24), "float16"),
           "prompt_embeds": ArraySpec((16, 32), "float16"), "prompt_mask": ArraySpec((16,), "uint8")}
    store.create_column("encodings", {}, enc, {"scaling_factor": 0.7})
    teacher = {"fwd": ArraySpec((5, 4, 6, 16), "float16"), "bwd": ArraySpec((5, 4, 6, 16), "float16"),
               "lgf": ArraySpec((4, 4, 6, 49), "float16"), "mask": ArraySpec((5, 4, 6), "uint8")}
    store.create_column("teacher", {}, teacher, {"grid": [5, 4, 6], "channels": 16, "lgf": {"kernel": 7, "tau": 0.1, "offsets": [1], "fusion": "gram"}})
    with pytest.raises(StoreError, match=r"teacher grid \(T, h, w\) = \(5, 4, 6\), but the student config gives \(5, 8, 12\)") as info:
        Trainer(distill_config(str(tmp_path / "store"), tmp_path / "out"))
    message = str(info.value)  # in pixels, with both ways out
    assert "extracted from 17 frames of 64x96 pixels" in message and "trains on 17 frames of 128x192 pixels" in message
    assert "video.height=128 video.width=192" in message and "data.encodings_column" in message


@pytest.mark.parametrize("variant", ["t2v", "full_finetune"])
def test_text_to_video_and_full_finetune_train_on_the_same_store(student_store, tmp_path, variant):
    extra = ["student.task=t2v"] if variant == "t2v" else ["student.full_finetune=true"]
    trainer = Trainer(distill_config(student_store, tmp_path / variant, "train.steps=2", *extra))
    if variant == "t2v":
        assert "image_latents" not in trainer.data.arrays["encodings"] and trainer.tconfig.in_channels == 16
    history = trainer.run()
    exported = trainer.finish()
    assert len(history) == 2 and all(np.isfinite(m.loss) for m in history)
    if variant == "full_finetune":
        n_trainable = sum(p.numel() for p in trainer.model.transformer.parameters() if p.requires_grad)
        assert n_trainable == sum(p.numel() for p in trainer.model.transformer.parameters())
        assert (exported / "config.json").exists()  # a whole diffusers transformer folder
    else:
        assert (exported / "pytorch_lora_weights.safetensors").exists()


def test_distill_streams_from_s3_with_workers_and_resumes(student_store, moto_s3, tmp_path):
    """configs/distill/default.yaml's setting: an s3:// store read by 2 DataLoader workers, then --resume."""
    options, fs = moto_s3
    fs.put(student_store, "bucket/store", recursive=True)
    common = ["--config", str(SAMPLE), "--store", "s3://bucket/store", "--out", str(tmp_path / "s3"),
              f"data.storage_options={json.dumps(options)}", "data.num_workers=2", "train.batch_size=1", "train.checkpoint_every=100"]
    runner = CliRunner()
    first = runner.invoke(app, ["distill", *common, "train.steps=2"])
    assert first.exit_code == 0, first.output
    more = runner.invoke(app, ["distill", *common, "train.steps=4", "--resume"])
    assert more.exit_code == 0, more.output
    rows = [json.loads(line) for line in (tmp_path / "s3" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # the same trajectory as one uninterrupted run over the local copy (warmup covers steps 1-2, so
    # the first run's shorter schedule changes nothing)
    straight = Trainer(distill_config(student_store, tmp_path / "local", "train.steps=4", "data.num_workers=2")).run()
    assert [r["loss"] for r in rows] == pytest.approx([m.loss for m in straight], rel=1e-6)
    ranks = [json.loads(line) for line in (tmp_path / "s3" / "ranks" / "rank-0.jsonl").read_text().splitlines()]
    assert [r["clips"] for r in ranks] == [m.clips for m in straight]


def test_each_parameter_group_is_clipped_on_its_own_and_both_norms_are_logged(student_store, tmp_path):
    trainer = Trainer(distill_config(student_store, tmp_path, "train.steps=1", "optim.grad_clip=1e-4"))
    original = torch.nn.utils.clip_grads_with_norm_
    clipped = {}

    def spy(params, max_norm, total_norm, foreach=None):
        original(params, max_norm, total_norm, foreach)
        grads = [p.grad for p in params if p.grad is not None]
        clipped[len(clipped)] = float(torch.nn.utils.get_total_norm(grads))

    torch.nn.utils.clip_grads_with_norm_ = spy
    try:
        (m,) = trainer.run()
    finally:
        torch.nn.utils.clip_grads_with_norm_ = original
        trainer.close()
    assert set(m.grad_norms) == {"student", "projector"} and m.grad_norm == m.grad_norms["student"]
    assert min(m.grad_norms.values()) > 1e-4  # both groups needed clipping
    assert all(v == pytest.approx(1e-4, rel=1e-3) for v in clipped.values()) and len(clipped) == 2  # each to the limit
    logged = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert logged["grad_norms"] == pytest.approx(m.grad_norms)
