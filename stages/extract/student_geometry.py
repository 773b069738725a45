"""The student geometry stage one extracts for: from the student model's configs when `student.model` is set.

VAE compression and patch sizes come from the model's transformer/ and vae/ config.json (or a tiny
preset) through the student family's `geometry` (stages/families/registry.py), so the teacher's token grid
is the one the student will compute; the `student.*` numbers in the extract config are then only a
cross-check. Reads config files only, no weights.
"""

from __future__ import annotations

import dataclasses

from stages.config.extract import ExtractConfig, StudentGridConfig

_FIELDS = ("vae_spatial", "vae_temporal", "patch_size", "patch_size_t")


def resolve_student_geometry(cfg: ExtractConfig) -> StudentGridConfig:
    """cfg.student with the four geometry fields derived from student.model (unchanged when it is None).

    Raises ValueError (one line) when a field was set to a value other than its default and the model
    disagrees: the config would otherwise extract a grid the student does not have.
    """
    s = cfg.student
    if not s.model:
        return s
    from stages.families.registry import geometry_of

    geo = geometry_of(s.model)
    derived = {"vae_spatial": geo.vae_spatial, "vae_temporal": geo.vae_temporal, "patch_size": geo.patch_size,
               "patch_size_t": geo.patch_size_t if geo.patch_size_t and geo.patch_size_t > 1 else None}
    defaults = StudentGridConfig()
    for name in _FIELDS:
        given = getattr(s, name)
        if given != getattr(defaults, name) and given != derived[name]:
            raise ValueError(f"student.{name}={given} but the configs of student.model={s.model} give {derived[name]}: "
                             f"drop student.{name} (it is derived from the model)")
    return dataclasses.replace(s, **derived)
