"""The held-out split: fixed by the clip keys alone, small-store guards, explicit keys, holdout.json."""

from __future__ import annotations

import hashlib
import random

import pytest

from stages.store.holdout import (HoldoutError, clip_groups, holdout_keys, key_position, make_holdout, read_holdout, resume_split,
                                  write_holdout)

KEYS = [f"clip-{i:05d}" for i in range(2000)]


def test_split_is_a_function_of_the_keys_alone():
    held = holdout_keys(KEYS, 0.05)
    shuffled = KEYS[:]
    random.Random(1).shuffle(shuffled)
    assert holdout_keys(shuffled, 0.05) == held  # order does not matter
    # the fraction is a hash threshold: about 5% of 2000 (binomial sd ~ 10)
    assert 60 <= len(held) <= 140, len(held)
    # sha256, not Python's salted hash(): the position is reproducible here from its definition
    k = KEYS[7]
    assert key_position(k) == int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "little") / 2**64
    assert held == {k for k in KEYS if key_position(k) < 0.05}


def test_split_is_stable_when_the_store_grows():
    """A clip held out of a store stays held out after clips are appended (a run never trains on it later)."""
    small = holdout_keys(KEYS[:1000], 0.1)
    grown = holdout_keys(KEYS, 0.1)
    assert small <= grown
    assert grown - small == {k for k in KEYS[1000:] if key_position(k) < 0.1}


def test_zero_fraction_holds_out_nothing_but_explicit_keys():
    assert holdout_keys(KEYS, 0.0) == set()
    assert holdout_keys(KEYS, 0.0, ["clip-00003"]) == {"clip-00003"}
    assert "clip-00004" in holdout_keys(KEYS, 0.05, ["clip-00004"])


def test_small_store_holds_out_one_clip_and_never_all():
    keys = ["a", "b", "c"]
    held = holdout_keys(keys, 0.01)  # 0.01 * 3 < 1, yet the demo needs a validation clip
    assert len(held) == 1
    assert held == {min(keys, key=key_position)}
    with pytest.raises(HoldoutError, match="takes all 3 clips"):
        holdout_keys(keys, 0.5, ["a", "b", "c"])
    with pytest.raises(HoldoutError, match="takes all 1 clips"):
        holdout_keys(["only"], 0.05)


def test_unknown_explicit_keys_are_refused_by_name():
    with pytest.raises(HoldoutError, match="not in the store: nope, zzz"):
        holdout_keys(KEYS, 0.05, ["zzz", "clip-00001", "nope"])


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_fraction_out_of_range(fraction):
    with pytest.raises(HoldoutError, match=r"\[0, 1\)"):
        holdout_keys(KEYS, fraction)


def test_holdout_json_round_trip(tmp_path):
    split = make_holdout(KEYS[:100], 0.1, ["clip-00002"])
    path = write_holdout(tmp_path / "run", split)
    assert path.name == "holdout.json"
    back = read_holdout(tmp_path / "run")
    assert back == split and back.keys == sorted(back.keys) and "clip-00002" in back.keys and back.total == 100
    with pytest.raises(HoldoutError, match="no held-out split"):
        read_holdout(tmp_path / "elsewhere")
    path.write_text("{not json")
    with pytest.raises(HoldoutError, match="not a held-out split"):
        read_holdout(tmp_path / "run")


# -- groups: copies and windows of one source video are held out together ------------------------

def _pair(fraction: float) -> tuple[str, str]:
    """A key held out by its own hash and one that is not: a copy pair the per-key rule would split."""
    held = next(k for k in KEYS if key_position(k) < fraction)
    trained = next(k for k in KEYS if key_position(k) >= fraction)
    return held, trained


def _rows(keys, **fields_of) -> list[dict]:
    return [{"key": k, "url": f"/videos/{k}.mp4", "caption": "", "prompt": None, **fields_of.get(k, {})} for k in keys]


@pytest.mark.parametrize("link", ["content_hash", "url", "source_id", "duplicate_of"])
def test_copies_of_one_video_are_held_out_as_one_group(link):
    """Identical files under two keys (same content hash, or flagged duplicate_of), two keys of one url, or two
    windows of one source video (manifest source_id) are held out together: the per-key rule held out one
    and trained on the other."""
    held, copy = _pair(0.05)
    value = {"duplicate_of": held} if link == "duplicate_of" else {link: "sha256-ends:ab12" if link == "content_hash" else "shared"}
    fields = {copy: value} if link == "duplicate_of" else {held: value, copy: value}
    rows = _rows(KEYS, **fields)
    split = holdout_keys(rows, 0.05)
    assert held in split and copy in split
    assert split - {copy} == holdout_keys(KEYS, 0.05)  # everything else is split as before groups existed
    assert clip_groups(rows)[copy] == clip_groups(rows)[held] == held  # the group's id: its lowest-hash key


def test_explicit_key_holds_out_its_group_and_a_store_without_copies_splits_as_before():
    _, trained = _pair(0.05)
    other = next(k for k in reversed(KEYS) if key_position(k) >= 0.05)
    rows = _rows(KEYS, **{trained: {"content_hash": "h"}, other: {"content_hash": "h"}})
    assert {trained, other} <= holdout_keys(rows, 0.05, [trained])
    plain = _rows(KEYS, **{k: {"content_hash": f"h{i}"} for i, k in enumerate(KEYS)})  # hashed, all distinct
    assert holdout_keys(plain, 0.05) == holdout_keys(KEYS, 0.05)
    with pytest.raises(HoldoutError, match="takes all 2 clips"):
        holdout_keys(_rows(["a", "b"], a={"content_hash": "h"}, b={"content_hash": "h"}), 0.05)  # one video: nothing to train on


def test_a_held_out_group_stays_held_out_when_a_copy_is_appended():
    held, copy = _pair(0.1)
    small = _rows(KEYS[:1000])
    if copy in KEYS[:1000]:  # keep the copy among the appended keys
        copy = next(k for k in KEYS[1000:] if key_position(k) >= 0.1)
    grown = [*small, *_rows(KEYS[1000:])]
    grown = [dict(r, content_hash="same") if r["key"] in (held, copy) else r for r in grown]
    assert holdout_keys(small, 0.1) <= holdout_keys(grown, 0.1) and copy in holdout_keys(grown, 0.1)


# -- a resumed run keeps its split ----------------------------------------------------------------

def test_a_resume_keeps_the_saved_split_when_the_store_grows(tmp_path):
    """Appended clips join training even when their hash falls in the split; a held-out clip never moves."""
    first = KEYS[:100]
    write_holdout(tmp_path, make_holdout(first, 0.05))
    saved = read_holdout(tmp_path)
    grown = _rows(KEYS[:300])
    new_low = [k for k in KEYS[100:300] if key_position(k) < 0.05]
    assert new_low  # the recomputed split would hold these out (and so differ)
    kept = resume_split(tmp_path, grown, 0.05)
    assert kept.keys == saved.keys and kept.total == 300 and not set(new_low) & set(kept.keys)
    assert resume_split(tmp_path / "never-written", grown, 0.05) == make_holdout(grown, 0.05)  # a run from before holdout.json


def test_a_resume_holds_out_appended_copies_of_held_out_clips(tmp_path, caplog):
    held = next(k for k in KEYS[:100] if key_position(k) < 0.05)
    write_holdout(tmp_path, make_holdout(_rows(KEYS[:100]), 0.05))
    grown = [*_rows(KEYS[:100], **{held: {"content_hash": "h"}}), *_rows(["copy_of_it"], copy_of_it={"content_hash": "h"})]
    with caplog.at_level("WARNING", logger="stages.store.holdout"):
        kept = resume_split(tmp_path, grown, 0.05)
    assert "copy_of_it" in kept.keys and held in kept.keys and "copies of held-out clips" in caplog.text


def test_a_resume_that_cannot_keep_its_split_is_refused_in_one_line(tmp_path):
    rows = _rows(KEYS[:100])
    write_holdout(tmp_path, make_holdout(rows, 0.05, ["clip-00002"]))
    saved = read_holdout(tmp_path)
    with pytest.raises(HoldoutError, match=r"holdout\.json: the run's split was made with other settings \(data\.holdout: 0\.05 -> 0\.2\)"):
        resume_split(tmp_path, rows, 0.2, ["clip-00002"])
    with pytest.raises(HoldoutError, match=r"data\.holdout_keys: \['clip-00002'\] -> \[\]"):
        resume_split(tmp_path, rows, 0.05)
    gone = [r for r in rows if r["key"] != saved.keys[0]]
    with pytest.raises(HoldoutError, match=rf"held-out clip\(s\) {saved.keys[0]} are no longer in the store"):
        resume_split(tmp_path, gone, 0.05, ["clip-00002"])
    # a split made before copies were grouped: a held-out clip's copy was among the clips the run trained on
    trained = next(k for k in KEYS[:100] if k not in saved.keys)
    linked = _rows(KEYS[:100], **{saved.keys[0]: {"content_hash": "h"}, trained: {"content_hash": "h"}})
    with pytest.raises(HoldoutError, match=rf"held-out clip {saved.keys[0]} is the same video as {trained}, which the run may have trained on") as err:
        resume_split(tmp_path, linked, 0.05, ["clip-00002"])
    assert "\n" not in str(err.value)


def test_every_window_of_a_source_lands_on_one_side_of_the_split(tmp_path):
    """corpus.windows cuts 4 sources into ~10 windows each; at every fraction, a source's windows are all held out or
    all trained on (they share the source's url, content hash and source_id), and some fraction splits the sources."""
    from test_windows import long_video

    from stages.config.extract import CorpusConfig, WindowsConfig
    from stages.media.corpus import list_corpus

    for i in range(4):  # different content (cut times), so no two sources are copies of each other
        long_video(tmp_path / f"src{i}.mp4", 12, cuts=(1.0 + i,))
    entries = list_corpus(CorpusConfig(url=str(tmp_path), windows=WindowsConfig(every=1.0)), span=1.125)
    rows = [e.to_json() for e in entries]
    by_source: dict[str, set[str]] = {}
    for r in rows:
        by_source.setdefault(r["source_id"], set()).add(r["key"])
    assert len(by_source) == 4 and all(len(keys) >= 10 for keys in by_source.values())
    groups = clip_groups(rows)
    assert len(set(groups.values())) == 4
    # a window is placed by its source, not its own key: the split takes sources at the fraction (with ~11 windows a
    # source, the any-key rule would hold one out at a 5% split more than 40% of the time)
    position = {src: key_position("source:" + src) for src in by_source}
    cuts = sorted(position.values())
    for lo, hi in zip(cuts, cuts[1:]):  # a fraction between two sources' positions: exactly the sources below it
        held = holdout_keys(rows, (lo + hi) / 2)
        assert held == {k for src, keys in by_source.items() if position[src] <= lo for k in keys}
    for fraction in (0.01, 0.05, 0.1, 0.2):
        held = holdout_keys(rows, fraction)
        assert all(keys <= held or not (keys & held) for keys in by_source.values()), fraction
