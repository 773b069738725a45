"""The `image_teacher` column (DINOv2 image-only baseline) and stage two training against it.

Tiny random DINOv2 (2 layers, 32 channels, seeded) through transformers' real Dinov2Model; the
from_pretrained path reads a folder written by save_pretrained. No download anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from conftest import ROOT, small_overrides
from pipeline.cli import app
from stages.config.loader import ConfigError, load_config
from stages.media.corpus import list_corpus
from stages.media.decode import decode_clip
from stages.config.distill import DistillConfig
from stages.config.extract import ExtractConfig
from stages.core.quantize import dequantize
from pipeline.runner import run_extract
from stages.store import FeatureStore, StoreError
from stages.extract.columns.image_teacher import ImageTeacherProducer, dinov2_config, image_teacher_spec
from stages.core.grid import to_token_grid
from stages.core.lgf import fuse, lgf_probs

SAMPLE = ROOT / "configs/extract/sample.yaml"
DISTILL = ROOT / "configs/distill/sample.yaml"


def config(corpus, **extra) -> ExtractConfig:
    items = {"ray.num_workers": 0, "teacher.device": "cpu", "image_teacher.device": "cpu", **extra}
    return load_config(ExtractConfig, SAMPLE, small_overrides(corpus, **items))


def direct_features(net, frames: np.ndarray, cfg: ExtractConfig, grid) -> torch.Tensor:
    """A plain Dinov2Model run on every frame, written out independently of the producer: bicubic resize
    of the whole frame, ImageNet normalisation, patch tokens, then the SAM2 teacher's grid mapping."""
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    height, width = image_teacher_spec(cfg).attrs["frame_size"]
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    x = (x - torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = net(pixel_values=x).last_hidden_state[:, 1:]  # [F, rows*cols, C]
    p = net.config.patch_size
    maps = tokens.reshape(len(frames), height // p, width // p, -1).permute(0, 3, 1, 2)
    return to_token_grid(maps, grid, cfg.student.vae_temporal, cfg.teacher.temporal, cfg.teacher.resample)


def tiny_net(seed: int = 0):
    from transformers import Dinov2Model

    torch.manual_seed(seed)
    return Dinov2Model(dinov2_config("tiny")).eval()


# ------------------------------------------------------------------------------------------- spec, no weights


def test_spec_schema_and_key_without_loading(small_corpus):
    cfg = config(small_corpus)
    spec = image_teacher_spec(cfg)
    # 17 frames of 64x96, student 8x spatial / patch 2 / 4x temporal: 5 latent frames of 4x6 tokens; tiny DINO: 32 channels
    assert spec.name == "image_teacher"
    assert {k: (v.shape, v.dtype) for k, v in spec.schema.items()} == {
        "fwd": ((5, 4, 6, 32), "int8"), "fwd_scale": ((5, 4, 6, 1), "float32"), "lgf": ((4, 4, 6, 49), "float16")}
    assert spec.attrs["directions"] == 1 and spec.attrs["channels"] == 32 and spec.attrs["grid"] == [5, 4, 6]
    assert spec.attrs["quantized"] == {"fwd": "int8-per-token"} and spec.attrs["lgf"]["fusion"] == "single"
    assert spec.attrs["frame_size"] == [112, 168] and spec.attrs["patch_grid"] == [8, 12]  # aspect kept, whole frame

    def key(**extra):
        return image_teacher_spec(config(small_corpus, **extra)).config

    base = spec.config
    for change in ({"image_teacher.image_size": 84}, {"image_teacher.layer": 1}, {"image_teacher.seed": 1},
                   {"lgf.kernel": 5}, {"lgf.tau": 0.05}, {"teacher.temporal": "mean"}, {"teacher.resample": "bilinear"},
                   {"video.height": 80}, {"student.patch_size": 1},
                   {"image_teacher.dtype": "bfloat16", "image_teacher.device": "cuda"}):
        assert key(**change) != base, change
    # speed-only settings, a permission, and the fusion (moot on one stack) never split the column
    for same in ({"image_teacher.image_batch": 3}, {"image_teacher.allow_random_weights": True}, {"lgf.fusion": "probs"}):
        assert key(**same) == base, same


def test_released_ids_need_no_download_and_bad_settings_are_refused(small_corpus):
    real = config(small_corpus, **{"image_teacher.model": "facebook/dinov2-base", "image_teacher.image_size": 448})
    spec = image_teacher_spec(real)  # the built-in table: no hub access
    assert spec.attrs["channels"] == 768 and spec.schema["fwd"].shape == (5, 4, 6, 768)
    assert "seed" not in spec.config["image_teacher"] and spec.config["image_teacher"]["random_weights"] is False
    with pytest.raises(ValueError, match="multiple of the DINOv2 patch size 14"):
        image_teacher_spec(config(small_corpus, **{"image_teacher.image_size": 100}))
    with pytest.raises(ValueError, match="layer=3 but tiny has 2 blocks"):
        image_teacher_spec(config(small_corpus, **{"image_teacher.layer": 3}))
    with pytest.raises(ValueError, match=r"2x3 patch grid, coarser than the student's 4x6 tokens: raise it to at least 56"):
        image_teacher_spec(config(small_corpus, **{"image_teacher.image_size": 28}))
    with pytest.raises(ConfigError, match="allow_random_weights"):
        config(small_corpus, **{"image_teacher.model": "facebook/dinov2-base", "image_teacher.random_weights": True})
    with pytest.raises(ConfigError, match="image_teacher.image_batch must be >= 1"):
        config(small_corpus, **{"image_teacher.image_batch": 0})
    with pytest.raises(ConfigError):
        config(small_corpus, columns="[teacher, dino]")


def test_one_stack_fuses_to_its_own_relations():
    """Why the column records fusion "single": fuse(x, x, mode) is lgf_probs(x) for every mode."""
    x = torch.randn(1, 4, 5, 6, 8, generator=torch.Generator().manual_seed(0))
    ref = lgf_probs(x, 3, 0.1, [1, 2])
    for mode in ("gram", "probs", "feature", "forward", "backward"):
        torch.testing.assert_close(fuse(x, x, 3, 0.1, [1, 2], mode), ref, rtol=1e-6, atol=1e-7, msg=mode)


# ------------------------------------------------------------------------------------------- extraction


@pytest.fixture(scope="module")
def two_stage_store(tmp_path_factory, small_corpus) -> tuple[str, dict, dict]:
    """A store extracted with SAM2 + encodings, then given the image_teacher column in a second run:
    (url, tree bytes of the first two columns before, after)."""
    url = str(tmp_path_factory.mktemp("imgteacher") / "store")
    first = run_extract(config(small_corpus, columns="[teacher, encodings]"), url)
    assert first.failed_keys == set()
    before = _tree(url, ("teacher", "encodings"))
    second = run_extract(config(small_corpus, columns="[image_teacher]"), url)
    assert second.failed_keys == set() and len(second.shards_run) == 3
    return url, before, _tree(url, ("teacher", "encodings"))


def _tree(url: str, names: tuple[str, ...]) -> dict[str, bytes]:
    roots = [Path(url) / "columns" / c.dirname for c in FeatureStore(url).columns() if c.name in names]
    return {str(p): p.read_bytes() for r in roots for p in sorted(r.rglob("*")) if p.is_file()}


def test_added_later_without_touching_the_other_columns(two_stage_store):
    url, before, after = two_stage_store
    assert before and after == before  # SAM2 and encodings columns byte for byte
    store = FeatureStore(url)
    column = store.column("image_teacher")
    assert column.committed_shards() == store.column("teacher").committed_shards() == {0, 1, 2}
    assert column.attrs["directions"] == 1 and "bwd" not in column.schema and "mask" not in column.schema


def test_stored_features_are_a_direct_dinov2_run_on_the_grid(two_stage_store, small_corpus):
    url, _, _ = two_stage_store
    cfg = config(small_corpus)
    store = FeatureStore(url)
    column = store.column("image_teacher")
    data = column.read_shard(0)
    entries = {e.key: e for e in list_corpus(cfg.corpus)}
    net = tiny_net(cfg.image_teacher.seed)
    from stages.extract.columns.image_teacher import student_grid

    for row, record in enumerate(data.records):
        frames = decode_clip(entries[record["key"]].url, cfg.video).frames
        ref = direct_features(net, frames, cfg, student_grid(cfg))  # [T, h, w, C] fp32
        stored = dequantize(column.read_row(data, "fwd", row), column.read_row(data, "fwd_scale", row))
        # int8 per token: each value within half a step (max |x| / 254) of the fp32 feature
        step = np.abs(ref.numpy()).max(-1, keepdims=True) / 127
        assert np.all(np.abs(stored - ref.numpy()) <= 0.5 * step + 1e-5), record["key"]
        lgf = column.read_row(data, "lgf", row).astype(np.float32)
        np.testing.assert_allclose(lgf, lgf_probs(ref[None], 7, 0.1, [1])[0].numpy(), atol=2e-3)
        assert abs(lgf.sum(-1) - 1).max() < 5e-3  # probabilities over each token's window


def test_from_pretrained_folder(tmp_path, small_corpus):
    """The user path: image_teacher.model=<folder> loads through Dinov2Model.from_pretrained."""
    net = tiny_net(seed=7)
    folder = tmp_path / "dinov2"
    net.save_pretrained(folder)
    cfg = config(small_corpus, **{"image_teacher.model": str(folder)})
    spec = image_teacher_spec(cfg)
    assert spec.attrs["channels"] == 32 and spec.config["image_teacher"]["model"] == str(folder)
    assert spec.config != image_teacher_spec(config(small_corpus)).config  # a folder is not the tiny preset
    producer = ImageTeacherProducer(cfg, "cpu")
    loaded = producer.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())  # the saved weights, not a fresh init
    entry = list_corpus(cfg.corpus)[0]
    clip = decode_clip(entry.url, cfg.video)
    arrays, _ = producer.produce(clip, entry)
    from stages.extract.columns.image_teacher import student_grid

    ref = direct_features(net, clip.frames, cfg, student_grid(cfg)).numpy()
    stored = dequantize(arrays["fwd"], arrays["fwd_scale"])
    assert np.all(np.abs(stored - ref) <= 0.5 * np.abs(ref).max(-1, keepdims=True) / 127 + 1e-5)
    with pytest.raises(ValueError, match="no DINOv2 config.json"):
        image_teacher_spec(config(small_corpus, **{"image_teacher.model": str(tmp_path / "nowhere")}))


# ------------------------------------------------------------------------------------------- stage two


def distill_config(store: str, out: Path, *extra: str) -> DistillConfig:
    base = [f"data.store={store}", f"out={out}", "data.num_workers=0", "train.batch_size=1", "train.checkpoint_every=100", "train.steps=2"]
    return load_config(DistillConfig, DISTILL, [*base, *extra])


def test_distill_against_the_image_teacher(student_store, tmp_path):
    from stages.distill.data import open_training_data
    from stages.distill.trainer import Trainer

    cfg = distill_config(student_store, tmp_path / "run", "data.teacher_column=image_teacher")
    data = open_training_data(cfg)
    assert data.teacher.name == "image_teacher" and data.teacher_channels == 32
    assert data.arrays["image_teacher"] == ["lgf"]  # the run's kernel/tau/offsets are the column's: stored target
    # another kernel recomputes from the one stack; REPA reads it (mean = the stack itself), never a bwd
    other = open_training_data(distill_config(student_store, tmp_path / "x", "data.teacher_column=image_teacher",
                                              "losses.lgf.kernel=3", "losses.repa.weight=0.5", "losses.repa.teacher=mean"))
    assert other.arrays["image_teacher"] == ["fwd"]
    by_hash = open_training_data(distill_config(student_store, tmp_path / "y", f"data.teacher_column={data.teacher.hash[:8]}"))
    assert by_hash.teacher.dirname == data.teacher.dirname
    assert open_training_data(distill_config(student_store, tmp_path / "z")).teacher.name == "teacher"  # the default
    with pytest.raises(StoreError, match="losses.mask needs SAM2's subject mask, which the image_teacher column does not hold"):
        open_training_data(distill_config(student_store, tmp_path / "m", "data.teacher_column=image_teacher", "losses.mask.weight=0.5"))
    with pytest.raises(StoreError, match="matches no teacher column"):
        open_training_data(distill_config(student_store, tmp_path / "n", "data.teacher_column=fffffff"))

    trainer = Trainer(cfg)
    assert trainer.model.projector.spec.out_dim == 32  # follows the column, not SAM2's width
    # data.filter reads the SAM2 column's quality records: every ablation on the store trains on the same clips
    assert trainer.filter.column == data.store.column("teacher").dirname
    metrics = trainer.run()
    assert [m.step for m in metrics] == [1, 2] and set(metrics[0].terms) == {"diff", "lgf"}
    assert all(np.isfinite(m.terms["lgf"]) and m.terms["lgf"] > 0 for m in metrics)
    recomputed = Trainer(distill_config(student_store, tmp_path / "r", "data.teacher_column=image_teacher", "losses.lgf.fusion=forward")).run()
    assert [m.terms["lgf"] for m in recomputed] == pytest.approx([m.terms["lgf"] for m in metrics], rel=1e-5)  # fusion moot


def test_ablate_dino_on_the_demo_store(student_store, tmp_path):
    result = CliRunner().invoke(
        app, ["ablate", "--config", str(DISTILL), "--store", student_store, "--out", str(tmp_path / "abl"), "--steps", "1", "dino", "repa"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "abl" / "ablations.json").read_text())
    assert set(rows) == {"dino", "repa"} and set(rows["dino"]["terms"]) == {"diff", "lgf"}
    run = json.loads((tmp_path / "abl" / "dino" / "summary.json").read_text())
    assert run["teacher_column"].startswith("image_teacher-")


def test_inspect_lists_the_column_and_refuses_its_pca_in_one_line(two_stage_store, tmp_path):
    url, _, _ = two_stage_store
    runner = CliRunner()
    info = json.loads(runner.invoke(app, ["inspect", url, "--json"]).output)
    col = next(c for c in info["columns"] if c["name"] == "image_teacher")
    assert col["describe"] == {"image_teacher.model": "tiny", "image_teacher.layer": None, "image_teacher.image_size": 112}
    result = runner.invoke(app, ["inspect", url, "--pca", "@0", "--column", "image_teacher", "--out", str(tmp_path / "p.png")])
    assert result.exit_code == 2 and "--pca renders a SAM2 teacher column" in result.output and "Traceback" not in result.output


def test_layer_picks_a_block_output():
    """layer N: block N's output (hidden_states[N], before the final LayerNorm); null: last_hidden_state."""
    from stages.extract.columns.image_teacher import patch_features

    net = tiny_net()
    x = torch.randn(2, 3, 56, 84, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net(pixel_values=x, output_hidden_states=True)
        first, last = patch_features(net, x, 1, (4, 6)), patch_features(net, x, None, (4, 6))
    torch.testing.assert_close(first, out.hidden_states[1][:, 1:].reshape(2, 4, 6, 32).permute(0, 3, 1, 2))
    torch.testing.assert_close(last, out.last_hidden_state[:, 1:].reshape(2, 4, 6, 32).permute(0, 3, 1, 2))
    assert not torch.allclose(first, last)
