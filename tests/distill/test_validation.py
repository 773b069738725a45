"""Held-out clips in training and validation during training (tiny student on a synthetic store, no extraction)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import ROOT
from pipeline.cli import app
from stages.config.loader import ConfigError, load_config
from stages.config.distill import DistillConfig
from stages.core.fs import write_json_atomic
from stages.store import FeatureStore, Snapshot
from stages.store.holdout import Holdout, holdout_keys, key_position, read_holdout, write_holdout
from stages.distill.curves import read_metrics
from stages.distill.trainer import Trainer
from test_golden_curve import synthetic_columns, synthetic_store, write_synthetic_shard

SAMPLE = ROOT / "configs/distill/sample.yaml"
CLIPS = [f"c{i}" for i in range(8)]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("val") / "store")
    synthetic_store(url, clips=len(CLIPS))  # 4 shards of 2 clips
    return url


def config(store: str, out: Path, *extra: str) -> DistillConfig:
    base = [f"data.store={store}", f"out={out}", "data.num_workers=0", "train.batch_size=1", "train.checkpoint_every=100",
            "train.caption_dropout=0.0"]
    return load_config(DistillConfig, SAMPLE, [*base, *extra])


def test_held_out_clips_never_appear_in_the_training_clip_logs(store, tmp_path):
    """Over several epochs every other clip trains, a held-out one never does; holdout.json is the split."""
    out = tmp_path / "run"
    # 0.2 of 8 keys by hash, plus c1 named explicitly
    trainer = Trainer(config(store, out, "data.holdout=0.2", "data.holdout_keys=[c1]", "train.steps=14"))
    history = trainer.run()
    held = set(read_holdout(out).keys)
    assert held == holdout_keys(CLIPS, 0.2, ["c1"]) and "c1" in held and 0 < len(held) < len(CLIPS)
    logged = [json.loads(line) for line in (out / "ranks" / "rank-0.jsonl").read_text().splitlines()]
    trained = {k for row in logged for k in row["clips"]}
    assert max(row["epoch"] for row in logged) >= 2, "the run must cover several epochs"
    assert not trained & held, f"held-out clips were trained on: {sorted(trained & held)}"
    assert trained == set(CLIPS) - held  # exactly the rest: nothing else was left out
    assert [k for m in history for k in m.clips] == [k for row in logged for k in row["clips"]]
    assert trainer.stream.batches_per_epoch() == len(CLIPS) - len(held)  # held-out clips are not counted either


def test_explicit_keys_not_in_the_store_are_refused_in_one_line(store, tmp_path):
    result = CliRunner().invoke(app, ["distill", "-c", str(SAMPLE), "-s", store, "-o", str(tmp_path / "r"),
                                      "data.num_workers=0", "data.holdout_keys=[c3,nope]"])
    assert result.exit_code == 2
    assert "held-out keys not in the store: nope" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("override, message", [("data.holdout=1.0", "data.holdout"), ("eval.every=-1", "eval.every"),
                                               ("eval.timesteps=[]", "eval.timesteps"),
                                               ("diffusion.timesteps=500", r"eval.timesteps \[500, 900\] must be < diffusion")])
def test_config_is_validated(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DistillConfig, SAMPLE, [override])


def test_validation_uses_fixed_noise_and_leaves_training_unchanged(store, tmp_path):
    common = ("data.holdout=0.3", "train.steps=4")
    plain = Trainer(config(store, tmp_path / "plain", *common)).run()
    trainer = Trainer(config(store, tmp_path / "val", *common, "eval.every=2"))
    validated = trainer.run()
    # validation draws from its own generators and restores train mode: the trajectory is the same
    assert [m.loss for m in validated] == [m.loss for m in plain] and trainer.model.training
    rows = read_metrics(tmp_path / "val" / "metrics.jsonl", "val")
    assert [r["step"] for r in rows] == [2, 4] and all(r["split"] == "val" and r["clips"] >= 1 for r in rows)
    terms = rows[-1]["terms"]
    assert set(terms) == {"diff", "diff@100", "diff@500", "diff@900", "lgf", "lgf_projected", "repa_cos"}
    assert rows[-1]["n/a"] == ["mask_iou"]  # no mask head in this run: said, not made up
    assert terms["diff"] == pytest.approx((terms["diff@100"] + terms["diff@500"] + terms["diff@900"]) / 3)
    # train rows stay what the loss-curve and summary readers expect
    assert [r["step"] for r in read_metrics(tmp_path / "val" / "metrics.jsonl")] == [1, 2, 3, 4]
    # same weights -> same numbers (fixed noise per clip and t); another training seed sees the same
    # inputs: at step 0 the LoRA is a no-op (B = 0), so the student and its L_diff are the base model's
    assert trainer.validator.evaluate(4)["terms"] == terms
    fresh = [Trainer(config(store, tmp_path / f"s{seed}", *common, "eval.every=2", f"train.seed={seed}")) for seed in (0, 1)]
    at_zero = [t.validator.evaluate(0)["terms"] for t in fresh]
    assert at_zero[0]["diff"] == at_zero[1]["diff"] and at_zero[0]["lgf"] == at_zero[1]["lgf"]
    assert at_zero[0]["diff"] != terms["diff"]  # and training moved it
    trainer.finish()
    assert (tmp_path / "val" / "loss_curve.png").stat().st_size > 0
    tb = list((tmp_path / "val" / "tensorboard").iterdir())
    assert tb


def test_runs_without_projector_or_with_a_mask_head(store, tmp_path):
    """A LoRA-only run still gets the tap's LGF KL (no projector needed); REPA and the probe are n/a.
    A mask run's probe IoU is measured."""
    lora_only = Trainer(config(store, tmp_path / "lora", "data.holdout=0.3", "losses.lgf.weight=0", "eval.every=1"))
    assert lora_only.model.projector is None
    row = lora_only.validator.evaluate(0)
    assert "lgf" in row["terms"] and row["n/a"] == ["lgf_projected", "repa_cos", "mask_iou"]
    assert lora_only.model.tap is None and not lora_only.model.transformer.transformer_blocks[1]._forward_hooks  # temporary tap removed
    mask = Trainer(config(store, tmp_path / "mask", "data.holdout=0.3", "losses.mask.weight=1.0", "eval.every=1"))
    iou = mask.validator.evaluate(0)["terms"]["mask_iou"]
    assert 0.0 <= iou <= 1.0


def test_no_held_out_clip_means_no_validation(store, tmp_path):
    trainer = Trainer(config(store, tmp_path / "none", "data.holdout=0", "eval.every=1", "train.steps=1"))
    trainer.run()
    assert read_holdout(tmp_path / "none").keys == []
    assert read_metrics(tmp_path / "none" / "metrics.jsonl", "val") == []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_rank_fsdp_validates_without_hanging(store, tmp_path):
    """FSDP2 on 2 gloo ranks: validation inside the run (every step) and after it; both ranks agree."""
    from test_parallel import overrides, torchrun

    extra = ["parallel.strategy=fsdp", "data.holdout=0.3", "eval.every=1", "train.steps=2", "train.caption_dropout=0.0"]
    ranks = torchrun(tmp_path, "fsdp-val", {"mode": "run", "validate": True, "overrides": overrides(store, tmp_path / "run", *extra)})
    assert ranks[0]["val"] == ranks[1]["val"] and {"diff", "lgf", "lgf_projected", "repa_cos"} <= set(ranks[0]["val"])
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl", "val")
    assert [r["step"] for r in rows] == [1, 2]  # rank 0 alone writes them
    assert rows[-1]["terms"] == pytest.approx(ranks[0]["val"], rel=1e-6)


def test_cli_run_reports_its_split_and_validation(store, tmp_path):
    run = tmp_path / "cli"
    args = ["-c", str(SAMPLE), "-s", store, "-o", str(run), "data.num_workers=0", "train.batch_size=1", "train.steps=4",
            "train.checkpoint_every=100", "eval.every=2", "data.holdout=0.2"]
    result = CliRunner().invoke(app, ["distill", *args])
    assert result.exit_code == 0, result.output
    report = CliRunner().invoke(app, ["report", "--store", store, "--run", str(run), "--out", str(tmp_path / "summary.md")])
    assert report.exit_code == 0, report.output
    text = (tmp_path / "summary.md").read_text()
    held = len(read_holdout(run).keys)
    assert f"held out: {held} of 8 clips" in text and "validation on" in text and "step 2:" in text and "step 4:" in text
    assert "n/a: mask_iou" in text


def test_resume_refuses_another_split_but_applies_eval_changes():
    from stages.config.loader import to_dict
    from stages.distill.checkpoint.resume import ResumeMismatch, compare

    saved = to_dict(load_config(DistillConfig, SAMPLE))
    assert compare(saved, to_dict(load_config(DistillConfig, SAMPLE, ["eval.every=3", "eval.max_clips=1"])), "ckpt")
    with pytest.raises(ResumeMismatch, match=r"data\.holdout: 0\.05 -> 0\.2"):
        compare(saved, to_dict(load_config(DistillConfig, SAMPLE, ["data.holdout=0.2"])), "ckpt")
    # a checkpoint from before the split trained on every clip: it resumes with data.holdout=0 only
    old = {k: v for k, v in saved.items() if k != "eval"}
    old["data"] = {k: v for k, v in saved["data"].items() if k not in ("holdout", "holdout_keys")}
    applied = compare(old, to_dict(load_config(DistillConfig, SAMPLE, ["data.holdout=0"])), "ckpt")
    assert applied["eval.every"] == (None, 10) and all(k.startswith("eval.") for k in applied)
    with pytest.raises(ResumeMismatch, match=r"data\.holdout: 0\.0 -> 0\.05"):
        compare(old, saved, "ckpt")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sample_videos_from_held_out_first_frames_leave_training_unchanged(student_store, tmp_path):
    """eval.sample_every: the stock I2V pipeline around the trained transformer writes an mp4 per
    held-out clip; the VAE/T5 come and go, and the training trajectory is the one without samples."""
    import av

    common = ("train.steps=2", "eval.every=0", "data.holdout=0.3")
    plain = Trainer(config(student_store, tmp_path / "plain", *common)).run()
    trainer = Trainer(config(student_store, tmp_path / "s", *common, "eval.sample_every=1", "eval.sample_steps=2", "eval.sample_guidance=1.0"))
    encoders_before = live_encoders()
    sampled = trainer.run()
    assert [m.loss for m in sampled] == [m.loss for m in plain] and trainer.model.training
    assert live_encoders() <= encoders_before  # the VAE and T5 were released after each sampling
    key = sorted(read_holdout(tmp_path / "s").keys)[0]
    for step in (1, 2):
        with av.open(str(tmp_path / "s" / "samples" / f"step-{step:06d}" / f"{key}.mp4")) as container:
            assert len([f for f in container.decode(video=0)]) > 1


def live_encoders() -> int:
    """VAEs and T5 encoders alive in this process."""
    import gc

    from diffusers import AutoencoderKLCogVideoX
    from transformers import T5EncoderModel

    gc.collect()
    return sum(isinstance(o, (AutoencoderKLCogVideoX, T5EncoderModel)) for o in gc.get_objects())


# -- the split of a resumed run, and copies of one video ------------------------------------------

def grouped_store(url: str, links: dict[str, str] | None = None) -> FeatureStore:
    """4 synthetic clips c0..c3 (2 shards); links: {key: key whose video (url) it shares}."""
    links = links or {}
    store = FeatureStore(url)
    rows = [{"key": f"c{i}", "url": f"/synthetic/{links.get(f'c{i}', f'c{i}')}.mp4", "caption": "", "prompt": None} for i in range(4)]
    store.freeze_snapshot(Snapshot("/synthetic", 2, rows))
    enc, teacher = synthetic_columns(store)
    enc.write_column_arrays({"empty_prompt_embeds": np.zeros((16, 32), "float16")})
    rng = np.random.default_rng(0)
    for shard in range(2):
        write_synthetic_shard(enc, teacher, shard, [f"c{2 * shard}", f"c{2 * shard + 1}"], rng)
    return store


def append_clips(store: FeatureStore, rows: list[dict]) -> None:
    """`extract --append` of 2 clips: one new shard in the snapshot and in every column."""
    snapshot = store.require_snapshot()
    grown = snapshot.append([{"caption": "", "prompt": None, **r} for r in rows])
    write_json_atomic(store.fs, f"{store.path}/corpus/snapshot.json", grown.to_json())
    enc, teacher = synthetic_columns(store)
    write_synthetic_shard(enc, teacher, snapshot.num_shards, [r["key"] for r in rows], np.random.default_rng(1))


def trained_clips(run: Path) -> set[str]:
    return {k for line in (run / "ranks" / "rank-0.jsonl").read_text().splitlines() for k in json.loads(line)["clips"]}


def test_a_resume_on_a_grown_store_keeps_its_split(tmp_path):
    """data.holdout=0.01 of c0..c3 holds out the lowest-hash clip (c2). The store then grows by n342, whose hash
    is below 0.01 (recomputed, the split would be {n342} and c2 would go back to training), and by a copy of c2's
    video. The resume keeps {c2}, holds the copy out with it, and trains on n342."""
    assert key_position("n342") < 0.01 and holdout_keys(CLIPS[:4], 0.01) == {"c2"}
    store = grouped_store(str(tmp_path / "store"))
    run = tmp_path / "run"
    common = ("data.holdout=0.01", "train.checkpoint_every=2")
    Trainer(config(str(tmp_path / "store"), run, *common, "train.steps=2")).run()
    assert read_holdout(run).keys == ["c2"]
    append_clips(store, [{"key": "n342", "url": "/synthetic/n342.mp4"}, {"key": "copy_of_c2", "url": "/synthetic/c2.mp4"}])
    Trainer(config(str(tmp_path / "store"), run, *common, "train.steps=10"), resume=True).run()
    split = read_holdout(run)
    assert split.keys == ["c2", "copy_of_c2"] and split.total == 6
    trained = trained_clips(run)
    assert "n342" in trained and not trained & {"c2", "copy_of_c2"}


def test_a_resume_whose_held_out_clip_was_trained_as_a_copy_is_refused_in_one_line(tmp_path):
    """A split made before copies were grouped (holdout.json holds out c2, not c0, the same video): the run
    trained on the held-out clip's copy, and its resume says so (exit 2, one line) instead of carrying on."""
    store = str(tmp_path / "store")
    grouped_store(store, {"c0": "c2"})
    run = tmp_path / "run"
    args = ["distill", "-c", str(SAMPLE), "-s", store, "-o", str(run), "data.num_workers=0", "train.batch_size=1",
            "train.caption_dropout=0.0", "data.holdout=0.01", "train.checkpoint_every=2"]
    assert CliRunner().invoke(app, [*args, "train.steps=2"]).exit_code == 0
    assert read_holdout(run).keys == ["c0", "c2"]  # grouped now: the copy is held out too
    write_holdout(run, Holdout(0.01, [], ["c2"], 4))  # what the per-key rule wrote
    before = (run / "holdout.json").read_bytes()
    result = CliRunner().invoke(app, [*args, "train.steps=4", "--resume"])
    assert result.exit_code == 2, result.output
    line = (result.stderr or result.output).strip()
    assert len(line.splitlines()) == 1 and "held-out clip c2 is the same video as c0, which the run may have trained on" in line
    assert (run / "holdout.json").read_bytes() == before and "Traceback" not in result.output
