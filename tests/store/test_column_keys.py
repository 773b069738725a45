"""The column keys of the shipped sample configs are pinned: a refactor of the producers (the encodings column
over the family's encoders, module moves) must not re-key a store written before it.

Each case pins the column's dirname (name-hash of its producer config, what a store holds on disk) and a digest of
its content contract (config without the encoders' model path, schema, attrs). Recorded on main before the
encodings producer went through `family.encoders`; change them only with a format change you mean to make.
"""

from __future__ import annotations

import pytest

from conftest import ROOT
from stages.config.extract import ExtractConfig
from stages.config.loader import config_hash, load_config
from stages.extract.columns.registry import column_spec
from stages.store.format import FORMAT_VERSION

WAN22 = ["video.num_frames=9", "teacher.image_size=64", "encoders.model=tiny-wan22", "student.vae_spatial=16"]
CASES = {  # name: (config, overrides, {column: (dirname, content digest)})
    "sample": ("sample.yaml", [], {"teacher": ("teacher-df125c487243acc7", "0a7cb2d76ef9f078"),
                                   "encodings": ("encodings-8b32fbfd2b654566", "cc467b0e112ec173")}),
    "sample_wan": ("sample_wan.yaml", [], {"teacher": ("teacher-df125c487243acc7", "0a7cb2d76ef9f078"),
                                           "encodings": ("encodings-6b9cebe8921e0930", "077e0257ecbc210b")}),
    "sample_wan_i2v": ("sample_wan.yaml", ["encoders.model=tiny-wan-i2v"],
                       {"encodings": ("encodings-1d572ce7bd5aa2bf", "d905089cb2a2140a")}),
    "sample_wan22": ("sample.yaml", WAN22, {"teacher": ("teacher-1e02e0279d0f590d", "e413ed53c4be4c7a"),
                                            "encodings": ("encodings-71db8d6471fc55fd", "f08f38a68188ef71")}),
}


def _keys(cfg: ExtractConfig, column: str) -> tuple[str, str]:
    spec = column_spec(column, cfg)
    dirname = f"{spec.name}-{config_hash({'name': spec.name, 'config': spec.config, 'format_version': FORMAT_VERSION})}"
    config = {k: ({kk: vv for kk, vv in v.items() if kk != "model"} if k == "encoders" else v) for k, v in spec.config.items()}
    content = {"config": config, "schema": {k: v.to_json() for k, v in spec.schema.items()}, "attrs": spec.attrs}
    return dirname, config_hash(content)


@pytest.mark.parametrize("case", sorted(CASES))
def test_sample_config_column_keys_are_unchanged(case):
    path, overrides, expected = CASES[case]
    cfg = load_config(ExtractConfig, ROOT / "configs/extract" / path, overrides)
    assert {column: _keys(cfg, column) for column in expected} == expected


def test_tiny_cogvideox15_encodings_content_is_unchanged(tmp_path):
    """A tiny CogVideoX 1.5 folder (its path is in the key, so the content digest alone is pinned)."""
    from stages.families.cogvideox.family import save_tiny_cogvideox15

    model = str(save_tiny_cogvideox15(tmp_path / "c15"))
    cfg = load_config(ExtractConfig, ROOT / "configs/extract/sample.yaml",
                      [f"encoders.model={model}", f"student.model={model}", "video.num_frames=9", "teacher.image_size=64"])
    assert _keys(cfg, "encodings")[1] == "addb49a23ad9a835"
