"""The family registry: name -> Student class, one line per family (a dict, as litdata's `_SERIALIZERS`).

Every question "which family is this?" is answered here, by asking each registered family about what it
knows (its tiny presets, its known hub configs, its diffusers class names); nothing outside
stages/families/ names a family. Adding a family is one folder and one line in `FAMILIES`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from stages.families.base import Geometry, Student
from stages.families.cogvideox.family import CogVideoXStudent
from stages.families.ltx.family import LtxStudent
from stages.families.wan.family import WanStudent

FAMILIES: dict[str, type[Student]] = {
    "cogvideox": CogVideoXStudent,
    "wan": WanStudent,
    "ltx": LtxStudent,
}
# The family of stores written before the encodings column recorded `vae_family`: the first one the project had
LEGACY_ENCODINGS_FAMILY = "cogvideox"


def family_names() -> tuple[str, ...]:
    return tuple(FAMILIES)


def get_student(family: str) -> Student:
    """The Student of a registered family name; one line listing the registered names otherwise."""
    try:
        return FAMILIES[family]()
    except KeyError:
        raise ValueError(f"student.family={family!r} is not a registered family; registered: {', '.join(FAMILIES)}") from None


def students() -> list[Student]:
    return [cls() for cls in FAMILIES.values()]


def family_of_class(class_name: str) -> str:
    """The family of a diffusers transformer class name (transformer/config.json's _class_name)."""
    for name, cls in FAMILIES.items():
        if cls.transformer_class == class_name:
            return name
    supported = ", ".join(cls.transformer_class for cls in FAMILIES.values())
    raise ValueError(f"transformer class {class_name!r} is no supported student; supported: {supported}")


def student_of(transformer_or_config: Any) -> Student:
    """The Student of a transformer module or its config (by the diffusers class name)."""
    config = getattr(transformer_or_config, "config", transformer_or_config)
    name = config.get("_class_name") if isinstance(config, Mapping) else None
    if not name and not isinstance(transformer_or_config, Mapping) and hasattr(transformer_or_config, "config"):
        name = type(transformer_or_config).__name__
    return get_student(family_of_class(name or ""))


def _hub_config(model: str, subfolder: str) -> dict[str, Any]:
    """A hub id's (or folder's) config.json through diffusers' config loader: config only, no weights."""
    from diffusers import ConfigMixin

    class _Any(ConfigMixin):
        config_name = "config.json"

    return dict(_Any.load_config(model, subfolder=subfolder))


def _claimed(model: str) -> str | None:
    """The family whose tiny presets or known hub configs name `model` (no file read)."""
    for name, cls in FAMILIES.items():
        if model in cls.tiny_presets or cls().known_configs(model) is not None:
            return name
    return None


def infer_family(model: str, family: str | None = None) -> str:
    """`family` when given (validated), else from the model: a family's tiny preset or known hub id, or the
    folder's transformer/config.json class name (hub ids through diffusers' config loader, no weights)."""
    if family:
        get_student(family)
        return family
    claimed = _claimed(model)
    if claimed:
        return claimed
    path = Path(model) / "transformer" / "config.json"
    if path.is_file():
        return family_of_class(json.loads(path.read_text()).get("_class_name", ""))
    return family_of_class(_hub_config(model, "transformer").get("_class_name", ""))


def student_for(model: str, family: str | None = None) -> Student:
    return get_student(infer_family(model, family))


def transformer_config(model: str, family: str | None = None) -> dict[str, Any]:
    """The transformer config of a student model, without weights: a family's tiny preset or known hub id,
    a folder's transformer/config.json, or a hub id's (through diffusers' config loader)."""
    student = student_for(model, family)
    known = student.known_configs(model)
    if known is not None:
        return dict(known[0])
    path = Path(model) / "transformer" / "config.json"
    if path.is_file():
        return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    return _hub_config(model, "transformer")


def model_configs(model: str, family: str | None = None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(family, transformer config, VAE config) of a student model: config files only, no weights.

    A family's tiny preset or known hub id answers from its class; a folder or hub id gives its transformer/
    and vae/ config.json (a student folder without vae/ cannot say its compression: pass a full model folder).
    """
    family = infer_family(model, family)
    known = get_student(family).known_configs(model)
    if known is not None:
        return family, dict(known[0]), dict(known[1])
    try:
        return family, _hub_config(model, "transformer"), _hub_config(model, "vae")
    except (OSError, EnvironmentError) as exc:
        raise ValueError(f"student.model={model!r}: cannot read transformer/config.json and vae/config.json ({exc})") from None


def geometry_of(model: str, family: str | None = None) -> Geometry:
    """The token-grid geometry of a student model, from its configs (see model_configs)."""
    family, transformer, vae = model_configs(model, family)
    return get_student(family).geometry(transformer, vae)


def encoders_family(model: str) -> str:
    """The family whose VAE and text encoder `encoders.model` is: a family's tiny encoder preset, the folder's
    vae/config.json class, a published hub id's name, or (another hub id) its vae/config.json class."""
    for name, cls in FAMILIES.items():
        if model in cls.encoder_presets:
            return name
    path = Path(model) / "vae" / "config.json"
    if path.is_file():
        return _family_of_vae(json.loads(path.read_text()).get("_class_name", ""), model)
    hub_name = model.split("/")[-1].lower()
    for name, cls in FAMILIES.items():
        if hub_name.startswith(cls.hub_name_prefixes):
            return name
    try:
        return _family_of_vae(_hub_config(model, "vae").get("_class_name", ""), model)
    except (OSError, ValueError) as exc:
        raise ValueError(f"encoders.model={model!r}: cannot read its vae/config.json ({exc})") from None


def _family_of_vae(class_name: str, model: str) -> str:
    for name, cls in FAMILIES.items():
        if class_name in cls.vae_classes:
            return name
    known = ", ".join(c for cls in FAMILIES.values() for c in cls.vae_classes)
    raise ValueError(f"encoders.model={model!r}: VAE class {class_name!r} belongs to no registered family; known: {known}")


def encoders_for(model: str) -> Student:
    return get_student(encoders_family(model))


def encodings_family(attrs: Mapping[str, Any]) -> str:
    """The family an encodings column was made for (its `vae_family` attr; stores from before it: CogVideoX)."""
    return attrs.get("vae_family", LEGACY_ENCODINGS_FAMILY)
