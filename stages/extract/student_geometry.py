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


def check_buckets(cfg: ExtractConfig) -> None:
    """Refuse (ValueError, one line naming video.buckets[i]) buckets the student cannot train: a size its token
    grid does not divide (frames 4k+1, height and width multiples of VAE x patch), or any buckets at all for
    a model that trains at one size only (the family's `single_size`; known only when student.model is set)."""
    buckets = cfg.video.buckets
    if buckets is None:
        return
    geo = resolve_student_geometry(cfg)
    step = geo.vae_spatial * geo.patch_size
    for i, (f, h, w) in enumerate(cfg.video.bucket_shapes()):
        if (f - 1) % geo.vae_temporal:
            raise ValueError(f"video.buckets[{i}]=[{f}, {h}, {w}]: frames must be {geo.vae_temporal}k+1 for the student's VAE")
        if h % step or w % step:
            raise ValueError(f"video.buckets[{i}]=[{f}, {h}, {w}]: height and width must be multiples of {step} "
                             f"(VAE {geo.vae_spatial}x times patch {geo.patch_size})")
    if cfg.student.model:
        from stages.families.registry import get_student, model_configs

        family, transformer, _ = model_configs(cfg.student.model)
        why = get_student(family).single_size(transformer)
        if why:
            raise ValueError(f"video.buckets: student.model={cfg.student.model} trains at one size only ({why}): drop video.buckets")
