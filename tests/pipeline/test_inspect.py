"""`sam2videox inspect` through typer's CliRunner: failed clips and why, duplicate files, what tells
two teacher columns apart, and the PCA render (labels, capped PNG, bad output type, moved source)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import ROOT, small_overrides
from pipeline.cli import app
from stages.config.loader import load_config
from stages.config.extract import ExtractConfig
from pipeline.inspect import PANEL_LABELS, render_pca
from pipeline.runner import run_extract
from stages.store import FeatureStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SAMPLE = ROOT / "configs/extract/sample.yaml"


@pytest.fixture(scope="module")
def store(tmp_path_factory, small_corpus) -> tuple[str, Path]:
    """Two teacher columns (maskmem, backbone) over the small corpus plus a text file, a PNG named
    .mp4 and a copy of a clip; extracted in-process (no Ray)."""
    root = tmp_path_factory.mktemp("inspect")
    corpus = root / "clips"
    shutil.copytree(small_corpus, corpus)
    (corpus / "manifest.jsonl").unlink()
    (corpus / "z_text.mp4").write_text("this is not a video\n")
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(corpus / "z_still.mp4", format="PNG")
    shutil.copy(sorted(corpus.glob("*.mp4"))[0], corpus / "z_copy.mp4")
    url = str(root / "store")
    for feature in ("maskmem", "backbone"):
        overrides = small_overrides(corpus, **{"ray.num_workers": 0, "columns": "[teacher]", "teacher.feature": feature, "allow_failures": "true"})
        run_extract(load_config(ExtractConfig, SAMPLE, overrides), url)
    return url, corpus


def test_failures_are_listed_with_column_and_reason(store):
    url, _ = store
    runner = CliRunner()
    plain = runner.invoke(app, ["inspect", url])
    assert plain.exit_code == 0, plain.output
    assert "4 failures: list them with" in plain.output  # 2 bad files x 2 columns
    listed = runner.invoke(app, ["inspect", url, "--failures"])
    lines = [line for line in listed.output.splitlines() if "FAILED" in line]
    assert len(lines) == 4
    assert any("z_still [decode]: not a video file: a still image (png)" in line for line in lines)
    assert any("z_text [decode]: not a video file: FFmpeg cannot read it" in line for line in lines)
    info = json.loads(runner.invoke(app, ["inspect", url, "--json"]).output)
    assert {(f["key"], f["stage"]) for f in info["failures"]} == {("z_still", "decode"), ("z_text", "decode")}
    assert {f["column"] for f in info["failures"]} == {c["dir"] for c in info["columns"]}
    assert all(f["reason"].startswith("not a video file") for f in info["failures"])


def test_plain_summary_names_what_tells_columns_apart_and_the_duplicates(store):
    url, _ = store
    out = CliRunner().invoke(app, ["inspect", url]).output
    columns = [line for line in out.splitlines() if line.startswith("  teacher-")]
    assert len(columns) == 2
    assert sorted("feature=maskmem" in c or "feature=backbone" in c for c in columns) == [True, True]
    assert all("prompt=manifest" in c and "fusion=gram" in c for c in columns)  # configs/extract/sample.yaml
    assert "duplicate files: 1 clips are copies" in out and "= z_copy" in out
    info = json.loads(CliRunner().invoke(app, ["inspect", url, "--json"]).output)
    first = FeatureStore(url).require_snapshot().clips[0]["key"]
    assert info["duplicates"] == {first: ["z_copy"]}
    assert {c["describe"]["teacher.feature"] for c in info["columns"]} == {"maskmem", "backbone"}


def test_pca_png_is_labelled_and_capped(store, tmp_path):
    url, _ = store
    fstore = FeatureStore(url)
    column = next(c.dirname for c in fstore.columns() if c.producer_config["teacher"]["feature"] == "maskmem")
    result = CliRunner().invoke(app, ["inspect", url, "--pca", "@0", "--out", str(tmp_path / "a.png"), "--column", column])
    assert result.exit_code == 0, result.output
    full = np.asarray(Image.open(tmp_path / "a.png"))
    T = 5  # 17 frames -> 5 latent frames
    bar = full.shape[0] // T - 64
    assert full.shape == (T * (64 + bar), 5 * 96, 3) and bar >= 12
    header = full[:bar]
    for i, _name in enumerate(PANEL_LABELS):  # white text drawn in each panel's bar
        assert (header[:, i * 96 : (i + 1) * 96] > 200).any()
    small = render_pca(fstore, "@0", tmp_path / "b.png", column, max_png_side=200)
    assert max(Image.open(small).size) == 200


def test_pca_bad_output_type_and_moved_source_are_one_line_errors(store, tmp_path):
    url, corpus = store
    runner = CliRunner()
    gif = runner.invoke(app, ["inspect", url, "--pca", "@0", "--out", str(tmp_path / "a.gif"), "--column", "teacher-"])
    assert gif.exit_code == 2 and "unsupported output type '.gif'" in gif.output
    assert len(gif.output.strip().splitlines()) == 1 and "Traceback" not in gif.output and not (tmp_path / "a.gif").exists()
    fstore = FeatureStore(url)
    column = fstore.columns()[0].dirname
    key = fstore.require_snapshot().clips[1]["key"]
    moved = corpus / f"{key}.mp4"
    moved.rename(corpus / "moved.bin")
    try:
        result = runner.invoke(app, ["inspect", url, "--pca", key, "--out", str(tmp_path / "m.png"), "--column", column])
    finally:
        (corpus / "moved.bin").rename(moved)
    assert result.exit_code == 2, result.output
    assert f"cannot render clip '{key}'" in result.output and "file not found" in result.output
    assert len(result.output.strip().splitlines()) == 1
