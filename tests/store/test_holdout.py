"""The held-out split: fixed by the clip keys alone, small-store guards, explicit keys, holdout.json."""

from __future__ import annotations

import hashlib
import random

import pytest

from stages.store.holdout import HoldoutError, holdout_keys, key_position, make_holdout, read_holdout, write_holdout

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
