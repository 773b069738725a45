"""`sam2videox score --videos DIR`: videos made elsewhere get the evaluation's metrics, intervals and report;
the sample corpus's twins lose to their intact clips on the headline structure score; bad input is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from stages.evaluate.metrics.registry import HEADLINE

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def twins_folder(sample_generator, tmp_path_factory) -> Path:
    """intact/, detach/, jump/, stretch/, vanish/ (3 clips each, true masks beside them) and real/."""
    out = tmp_path_factory.mktemp("score") / "twins"
    sample_generator.generate_score_folder(out, clips=3, frames=17, height=72, width=108)
    return out


def _score(*args: str):
    return CliRunner().invoke(app, ["score", *args])


def _line(result) -> str:
    return (result.stderr or result.output).strip()


def test_twins_lose_on_the_headline_structure_score_with_intervals(twins_folder, tmp_path):
    r = _score("--videos", str(twins_folder), "--reference", "intact", "--out", str(tmp_path), "--no-vbench")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["reference"] == "intact" and sorted(report["paired"]) == ["detach", "jump", "stretch", "vanish"]
    for broken, verdicts in report["verdicts"].items():
        assert verdicts[HEADLINE] == "worse", (broken, report["paired"][broken][HEADLINE])
    iv = report["intervals"]["intact"][HEADLINE]
    assert iv["low"] <= iv["mean"] <= iv["high"] and iv["n"] == 3
    assert "ground-truth <name>.npz masks for 15 of 15 videos" in report["protocol"]["structure_masks"]
    assert report["protocol"]["judge"] == {"skipped": "every video has ground-truth masks"}
    md = (tmp_path / "report.md").read_text()
    assert "## Paired differences to `intact`" in md and "**worse**" in md and "## What each column means" in md


def test_bad_folders_are_one_line_and_exit_2(twins_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _score("--videos", str(empty), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and len(_line(r).splitlines()) == 1 and "no method sub-folders with videos" in _line(r)

    uneven = tmp_path / "uneven"
    for method in ("intact", "jump"):
        shutil.copytree(twins_folder / method, uneven / method)
    (uneven / "jump" / "clip_000_stick.mp4").rename(uneven / "jump" / "renamed.mp4")
    r = _score("--videos", str(uneven), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and len(_line(r).splitlines()) == 1
    assert "hold different file names" in _line(r) and "renamed" in _line(r) and "clip_000_stick" in _line(r)

    bad_judge = tmp_path / "judge.pt"
    bad_judge.write_bytes(b"not a checkpoint")
    r = _score("--videos", str(twins_folder), "--out", str(tmp_path / "o"), "--no-masks", "--no-vbench",
               "--judge-model", "tiny", "--judge-checkpoint", str(bad_judge))
    assert r.exit_code == 2 and len(_line(r).splitlines()) == 1 and str(bad_judge) in _line(r)

    r = _score("--videos", str(twins_folder), "--out", str(tmp_path / "o"), "--no-masks", "--no-vbench")
    assert r.exit_code == 2 and "need a judge" in _line(r)


def test_an_unreadable_video_is_ledgered_its_name_left_out_and_exit_2(twins_folder, tmp_path):
    folder = tmp_path / "two"
    for method in ("intact", "stretch"):
        shutil.copytree(twins_folder / method, folder / method)
    broken = folder / "stretch" / "clip_001_quadruped.mp4"
    broken.write_bytes(b"\x00" * 100)
    out = tmp_path / "o"
    r = _score("--videos", str(folder), "--reference", "intact", "--out", str(out), "--no-vbench")
    assert r.exit_code == 2 and len(_line(r).splitlines()) == 1 and str(broken) in _line(r), r.output
    report = json.loads((out / "report.json").read_text())  # the report was still written
    assert report["protocol"]["names"] == ["clip_000_stick", "clip_002_blob"]
    assert [e["file"] for e in json.loads((out / "ledger.json").read_text())] == [str(broken)]
    r = _score("--videos", str(folder), "--out", str(out), "--no-vbench", "--skip-unreadable")
    assert r.exit_code == 0, r.output
