"""Caption-grounded prompts (`teacher.prompt: grounded`): the tiny Grounding DINO offline, batched
boxes equal single ones, threshold hits and misses, the from_pretrained path, and extractions on the
sample corpus and on a manifest-free corpus whose misses land in the ledger with their reasons.

The tiny detector's weights are seeded, so its scores are fixed: the thresholds below sit between
them, and `_assert_clear_of` checks that no score is within a hair of its threshold (a numerics
change shows up as that assertion, not as a flaky hit/miss)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import ROOT, small_overrides
from pipeline.cli import app
from stages.config.loader import load_config
from stages.media.corpus import list_corpus
from stages.media.decode import decode_clip
from stages.config.extract import CorpusConfig, ExtractConfig, GroundingConfig, VideoConfig
from pipeline.runner import run_extract
from stages.store import FeatureStore
from stages.teacher.grounding import GroundingDetector, NoSubjectFound, save_tiny, subject_phrase, tiny_vocab
from stages.extract.columns.teacher import teacher_spec

SAMPLE = ROOT / "configs/extract/sample.yaml"
CPU = torch.device("cpu")
# caption queries on the small corpus at 64x96 score 0.72-0.83: 0.8 splits them 3 hits / 3 misses
CAPTION_THRESHOLD = 0.8
NOUNS = ["figure", "animal", "blob"]
NOUNS_THRESHOLD = 0.75  # noun queries score 0.67-0.79: 2 hits / 4 misses


def _assert_clear_of(scores, threshold, margin=0.005):
    assert all(abs(s - threshold) > margin for s in scores), (scores, threshold)


@pytest.fixture(scope="module")
def frames0(small_corpus):
    """(entries, frame 0 of each clip at the test student size 64x96)."""
    entries = list_corpus(CorpusConfig(url=str(small_corpus)))
    video = VideoConfig(num_frames=17, fps=8, height=64, width=96)
    return entries, [decode_clip(e.url, video).frames[0] for e in entries]


@pytest.fixture(scope="module")
def detector():
    return GroundingDetector(GroundingConfig(model="tiny", box_threshold=CAPTION_THRESHOLD), CPU)


def test_subject_phrase_is_lower_case_period_terminated_and_picks_the_first_listed_noun():
    caption = "A Red  stick figure walking next to a dog."
    assert subject_phrase(caption) == "a red stick figure walking next to a dog."
    # list order is priority, whole words only ("do" is not "dog"), multi-word nouns allowed
    assert subject_phrase(caption, "nouns", ["do", "dog", "figure"]) == "dog."
    assert subject_phrase(caption, "nouns", ["Stick Figure", "dog"]) == "stick figure."
    assert subject_phrase(caption, "nouns", ["cat"]) == "a red stick figure walking next to a dog."  # no noun: the caption
    with pytest.raises(NoSubjectFound, match="no caption"):
        subject_phrase("  ")


def test_config_validates_grounding_settings():
    with pytest.raises(ValueError, match="phrase=nouns needs a non-empty teacher.grounding.nouns"):
        load_config(ExtractConfig, SAMPLE, ["teacher.grounding.phrase=nouns"])
    with pytest.raises(ValueError, match="box_threshold must be in"):
        load_config(ExtractConfig, SAMPLE, ["teacher.grounding.box_threshold=1.5"])
    cfg = load_config(ExtractConfig, SAMPLE, ["teacher.prompt=grounded", "teacher.grounding.nouns=[dog, cat]", "teacher.grounding.phrase=nouns"])
    assert cfg.teacher.grounding.nouns == ["dog", "cat"]


def test_tiny_tokenizer_is_offline_bert_like(detector):
    vocab = tiny_vocab()
    # Grounding DINO splits phrases at BERT's hard-coded ids: the tiny vocabulary keeps them
    assert (vocab["[CLS]"], vocab["[SEP]"], vocab["."], vocab["?"]) == (101, 102, 1012, 1029)
    assert sorted(vocab.values()) == list(range(len(vocab)))
    # the backbone is transformers' own Swin (AutoBackbone from the config): no timm, no pretrained download
    assert type(detector.model.model.backbone.conv_encoder.model).__name__ == "SwinBackbone"
    assert not getattr(detector.model.config, "use_timm_backbone", False) and not getattr(detector.model.config, "use_pretrained_backbone", False)
    ids = detector.processor.tokenizer("a zebra-like thing.").input_ids
    assert ids[0] == 101 and ids[-2:] == [1012, 102] and vocab["[UNK]"] not in ids  # unknown words fall back to pieces


def test_batch_gives_the_same_boxes_as_one_at_a_time(detector, frames0):
    entries, frames = frames0
    phrases = [subject_phrase(e.caption) for e in entries]
    batched = detector.detect(frames, phrases)
    single = [detector.detect([f], [p])[0] for f, p in zip(frames, phrases)]
    assert len(batched) == len(entries) == 6
    for b, s in zip(batched, single):
        assert b.phrase == s.phrase and b.label == s.label
        assert b.score == pytest.approx(s.score, abs=1e-5)
        np.testing.assert_allclose(b.box, s.box, atol=1e-3)
        x0, y0, x1, y1 = b.box
        assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 64  # frame pixels, inside the frame
    # the boxes depend on the image and the query: not one box for all
    assert len({tuple(np.round(b.box, 1)) for b in batched}) > 1
    # a chunked run (batch=4 of 6) is the same as one forward
    chunked = GroundingDetector(GroundingConfig(model="tiny", batch=4), CPU).detect(frames, phrases)
    np.testing.assert_allclose([d.box for d in chunked], [d.box for d in batched], atol=1e-3)


def test_threshold_hits_become_box_prompts_and_misses_name_score_threshold_and_query(detector, frames0):
    entries, frames = frames0
    found = detector.prompts(frames, [e.caption for e in entries])
    dets = detector.detect(frames, [subject_phrase(e.caption) for e in entries])
    _assert_clear_of([d.score for d in dets], CAPTION_THRESHOLD)
    hits = [p for p in found if not isinstance(p, Exception)]
    misses = [p for p in found if isinstance(p, Exception)]
    assert len(hits) == 3 and len(misses) == 3
    for prompt, det in zip(found, dets):
        if isinstance(prompt, Exception):
            assert isinstance(prompt, NoSubjectFound) and det.score < CAPTION_THRESHOLD
            msg = str(prompt)
            assert msg.startswith(f"no subject found: best box score {det.score:.3f} < box_threshold 0.8 for '{det.phrase}'")
            assert "\n" not in msg
        else:
            assert det.score > CAPTION_THRESHOLD
            assert prompt.source == "grounded" and prompt.kind == "box" and prompt.box == det.box
            assert prompt.to_record()["phrase"] == det.phrase and prompt.score == det.score
            assert prompt.to_record()["label"] == det.label and det.label  # the matched query tokens
    # a clip without a caption fails alone, with its own reason; the others are unaffected
    again = detector.prompts(frames[:2], ["", entries[1].caption])
    assert isinstance(again[0], NoSubjectFound) and "no caption" in str(again[0])
    assert type(again[1]) is type(found[1])


def test_from_pretrained_folder_loads_the_same_detector(tmp_path, detector, frames0):
    entries, frames = frames0
    folder = save_tiny(tmp_path / "gdino", seed=0)
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= files
    # the image processor's settings: processor_config.json (transformers 5) or preprocessor_config.json (hub checkpoints)
    assert files & {"processor_config.json", "preprocessor_config.json"}
    cfg = load_config(ExtractConfig, SAMPLE, [f"teacher.grounding.model={folder}"]).teacher.grounding
    loaded = GroundingDetector(cfg, CPU)
    phrases = [subject_phrase(e.caption) for e in entries]
    assert loaded.processor.image_processor.size == detector.processor.image_processor.size
    for a, b in zip(loaded.detect(frames, phrases), detector.detect(frames, phrases)):
        assert a.score == pytest.approx(b.score, abs=1e-6) and a.label == b.label
        np.testing.assert_allclose(a.box, b.box, atol=1e-4)
    # the hub checkpoints' layout: a flat preprocessor_config.json, no processor_config.json
    hub = tmp_path / "hub"
    shutil.copytree(folder, hub)
    if (hub / "processor_config.json").exists():
        (hub / "preprocessor_config.json").write_text(json.dumps(json.loads((hub / "processor_config.json").read_text())["image_processor"]))
        (hub / "processor_config.json").unlink()
    from_hub = GroundingDetector(GroundingConfig(model=str(hub)), CPU)
    assert from_hub.processor.image_processor.size == detector.processor.image_processor.size
    assert from_hub.detect(frames[:1], phrases[:1])[0].box == pytest.approx(detector.detect(frames[:1], phrases[:1])[0].box, abs=1e-4)
    with pytest.raises(ValueError, match=r"teacher.grounding.model '.*nowhere' could not be loaded"):
        GroundingDetector(GroundingConfig(model=str(tmp_path / "nowhere")), CPU)


def test_grounding_settings_key_the_teacher_column_only_when_grounded():
    base = load_config(ExtractConfig, SAMPLE, [])
    moved = load_config(ExtractConfig, SAMPLE, ["teacher.grounding.box_threshold=0.5"])
    assert "grounding" not in teacher_spec(base).config["teacher"] and teacher_spec(base).config == teacher_spec(moved).config
    g = load_config(ExtractConfig, SAMPLE, ["teacher.prompt=grounded"])
    g2 = load_config(ExtractConfig, SAMPLE, ["teacher.prompt=grounded", "teacher.grounding.box_threshold=0.5"])
    speed = load_config(ExtractConfig, SAMPLE, ["teacher.prompt=grounded", "teacher.grounding.batch=2", "teacher.grounding.device=cpu"])
    assert teacher_spec(g).config["teacher"]["grounding"]["box_threshold"] == 0.35
    assert teacher_spec(g).config != teacher_spec(g2).config  # content
    assert teacher_spec(g).config == teacher_spec(speed).config  # speed only


def _ledger(url: str) -> dict[str, str]:
    return {row["key"]: row["reason"] for row in FeatureStore(url).column("teacher").ledger()}


def _records(url: str) -> dict[str, dict]:
    """The stored per-clip records of the teacher column, by clip key."""
    column = FeatureStore(url).column("teacher")
    return {rec["key"]: rec for shard in sorted(column.committed_shards()) for rec in column.read_shard(shard).records}


def test_grounded_extraction_on_the_sample_corpus(tmp_path, small_corpus, frames0, detector, caplog):
    """The sample corpus (manifest with boxes, ignored by prompt=grounded): hits are tracked from the
    detector's box, misses are in the ledger with the reason, and `inspect --failures` lists them."""
    entries, frames = frames0
    dets = {e.key: d for e, d in zip(entries, detector.detect(frames, [subject_phrase(e.caption) for e in entries]))}
    url = str(tmp_path / "store")
    overrides = small_overrides(small_corpus, **{
        "ray.num_workers": 0, "columns": "[teacher]", "allow_failures": "true", "teacher.prompt": "grounded",
        "teacher.grounding.model": "tiny", "teacher.grounding.box_threshold": CAPTION_THRESHOLD,
    })
    with caplog.at_level(logging.WARNING, logger="stages.extract.shard_worker"):
        summary = run_extract(load_config(ExtractConfig, SAMPLE, overrides), url)
    misses = {k for k, d in dets.items() if d.score < CAPTION_THRESHOLD}
    # a miss is a finding, not a bug: one warning line per clip, no traceback in the log either
    skipped = [r.getMessage() for r in caplog.records if "skipped in column teacher" in r.getMessage()]
    assert len(skipped) == 3 and all("no subject found" in m and "\n" not in m for m in skipped)
    assert not any("Traceback" in r.getMessage() for r in caplog.records)
    assert summary.failed_keys == misses and len(misses) == 3
    ledger = _ledger(url)
    assert set(ledger) == misses
    for key in misses:
        assert ledger[key] == f"NoSubjectFound: no subject found: best box score {dets[key].score:.3f} < box_threshold 0.8 for '{dets[key].phrase}'"
    _check_hits(url, dets, misses)
    runner = CliRunner()
    listed = runner.invoke(app, ["inspect", url, "--failures"])
    assert listed.exit_code == 0, listed.output
    lines = [line for line in listed.output.splitlines() if "FAILED" in line]
    assert len(lines) == 3 and all("[teacher]: NoSubjectFound: no subject found: best box score" in line for line in lines)
    info = json.loads(runner.invoke(app, ["inspect", url, "--json"]).output)
    assert {f["key"] for f in info["failures"]} == misses


def _check_hits(url: str, dets: dict, failed: set[str]) -> None:
    """Every clip that did not fail was tracked from the detector's box for its query."""
    records = _records(url)
    assert set(records) == set(dets) - failed
    for key, rec in records.items():
        assert rec["prompt_source"] == "grounded"
        assert rec["prompt"]["kind"] == "box" and rec["prompt"]["phrase"] == dets[key].phrase and rec["prompt"]["label"] == dets[key].label
        np.testing.assert_allclose(rec["prompt"]["box"], dets[key].box, atol=1e-3)
        assert rec["prompt"]["score"] == pytest.approx(dets[key].score, abs=1e-5)


def test_grounded_extraction_on_a_manifest_free_corpus_with_captions_only(tmp_path, small_corpus, frames0, detector):
    """mp4 files with sidecar captions and no manifest (no prompts anywhere), noun queries; one clip
    has no caption file: it fails with its own reason, the misses with theirs."""
    entries, frames = frames0
    corpus = tmp_path / "bucket"
    corpus.mkdir()
    for e in entries:
        shutil.copy(e.url, corpus / Path(e.url).name)
        if e.key != entries[-1].key:
            (corpus / f"{e.key}.txt").write_text(e.caption + "\n")
    uncaptioned = entries[-1].key
    listed = list_corpus(CorpusConfig(url=str(corpus)))
    assert all(e.prompt is None for e in listed) and [e.caption == "" for e in listed].count(True) == 1
    g = GroundingConfig(model="tiny", phrase="nouns", nouns=NOUNS, box_threshold=NOUNS_THRESHOLD)
    nouns = GroundingDetector(g, CPU)
    dets = {e.key: d for e, d in zip(entries, nouns.detect(frames, [subject_phrase(e.caption, "nouns", NOUNS) for e in entries]))}
    _assert_clear_of([d.score for d in dets.values()], NOUNS_THRESHOLD)
    url = str(tmp_path / "store")
    overrides = small_overrides(corpus, **{
        "ray.num_workers": 0, "columns": "[teacher]", "allow_failures": "true", "teacher.prompt": "grounded",
        "teacher.grounding.model": "tiny", "teacher.grounding.phrase": "nouns", "teacher.grounding.nouns": "[figure, animal, blob]",
        "teacher.grounding.box_threshold": NOUNS_THRESHOLD,
    })
    summary = run_extract(load_config(ExtractConfig, SAMPLE, overrides), url)
    misses = {k for k, d in dets.items() if d.score < NOUNS_THRESHOLD and k != uncaptioned}
    hits = set(dets) - misses - {uncaptioned}
    assert hits and misses
    assert summary.failed_keys == misses | {uncaptioned}
    ledger = _ledger(url)
    assert ledger[uncaptioned] == "NoSubjectFound: no caption: teacher.prompt=grounded needs the clip's caption to find its subject"
    for key in misses:
        assert f"< box_threshold 0.75 for '{dets[key].phrase}'" in ledger[key]
        assert dets[key].phrase in {"figure.", "animal.", "blob."}
    _check_hits(url, dets, misses | {uncaptioned})


def test_producer_grounds_the_same_through_produce_and_produce_batch(small_corpus, frames0):
    """TeacherProducer with prompt=grounded: the detector is built once with the producer; a batch
    of clips is grounded in one pass and gives produce()'s records; a miss fails only its clip."""
    from stages.extract.columns.teacher import TeacherProducer

    overrides = small_overrides(small_corpus, **{
        "teacher.device": "cpu", "teacher.prompt": "grounded", "teacher.grounding.model": "tiny",
        "teacher.grounding.box_threshold": CAPTION_THRESHOLD, "teacher.clip_batch": 2,
    })
    cfg = load_config(ExtractConfig, SAMPLE, overrides)
    entries = list_corpus(cfg.corpus)[:4]
    clips = [decode_clip(e.url, cfg.video) for e in entries]
    producer = TeacherProducer(cfg, "cpu")
    assert isinstance(producer.detector, GroundingDetector)
    batched = producer.produce_batch(clips, entries)
    assert {type(r) for r in batched} == {tuple, NoSubjectFound}  # hits and misses in one batch
    for clip, entry, got in zip(clips, entries, batched):
        if isinstance(got, Exception):
            with pytest.raises(NoSubjectFound, match=f"< box_threshold 0.8 for '{subject_phrase(entry.caption)}'"):
                producer.produce(clip, entry)
            continue
        arrays, record = producer.produce(clip, entry)
        ours, ref = record["prompt"], got[1]["prompt"]
        assert record["prompt_source"] == "grounded" and ours["phrase"] == ref["phrase"] and ours["kind"] == "box"
        assert ours["score"] == pytest.approx(ref["score"], abs=1e-5)  # a batch of 4 vs 1: float reassociation only
        np.testing.assert_allclose(ours["box"], ref["box"], atol=1e-3)
        np.testing.assert_allclose(arrays["lgf"].astype(np.float32), got[0]["lgf"].astype(np.float32), atol=2e-3)
