"""The column registry of stage one (see stages/extract/producer.py): name -> spec and producer."""

from __future__ import annotations

from stages.config.extract import ExtractConfig
from stages.extract.producer import ColumnProducer, ColumnSpec

COLUMNS = ("teacher", "encodings", "image_teacher")


def compute_dtype(dtype: str, device: str, gpus_per_worker: float) -> str:
    """The dtype a worker will really compute in, decided from the config alone so the driver can key
    the column by it: the configured one on a GPU, float32 on CPU (where half precision is slow).

    Keying by the configured name alone would let CPU-filled and GPU-filled shards share one column.
    Producers check their actual dtype against this (`check_compute_dtype`).
    """
    on_gpu = device.startswith("cuda") or (device == "auto" and gpus_per_worker > 0)
    return dtype if on_gpu else "float32"


def check_compute_dtype(column: str, declared: str, actual: object, device: object) -> None:
    actual = str(actual).removeprefix("torch.")
    if actual != declared:
        raise ValueError(
            f"the {column} column is keyed for {declared} compute but this worker runs {actual} on {device}: "
            f"set {column}'s device and ray.gpus_per_worker consistently (a GPU worker needs ray.gpus_per_worker > 0)"
        )


def column_spec(name: str, cfg: ExtractConfig) -> ColumnSpec:
    if name == "teacher":
        from stages.extract.columns.teacher import teacher_spec

        return teacher_spec(cfg)
    if name == "encodings":
        from stages.families.ltx.encodings_column import is_ltx_encoders, ltx_encodings_spec
        from stages.families.wan.encodings_column import is_wan_encoders, wan_encodings_spec

        if is_ltx_encoders(cfg.encoders.model):
            return ltx_encodings_spec(cfg)
        if is_wan_encoders(cfg.encoders.model):  # one column name per store; its content follows the student family
            return wan_encodings_spec(cfg)
        from stages.extract.columns.encodings import encodings_spec

        return encodings_spec(cfg)
    if name == "image_teacher":
        from stages.extract.columns.image_teacher import image_teacher_spec

        return image_teacher_spec(cfg)
    raise ValueError(f"unknown column '{name}'; valid: {', '.join(COLUMNS)}")


def make_producer(name: str, cfg: ExtractConfig, device: str) -> ColumnProducer:
    if name == "teacher":
        from stages.extract.columns.teacher import TeacherProducer

        return TeacherProducer(cfg, device)
    if name == "encodings":
        from stages.families.ltx.encodings_column import LtxEncodingsProducer, is_ltx_encoders
        from stages.families.wan.encodings_column import WanEncodingsProducer, is_wan_encoders

        if is_ltx_encoders(cfg.encoders.model):
            return LtxEncodingsProducer(cfg, device)
        if is_wan_encoders(cfg.encoders.model):
            return WanEncodingsProducer(cfg, device)
        from stages.extract.columns.encodings import EncodingsProducer

        return EncodingsProducer(cfg, device)
    if name == "image_teacher":
        from stages.extract.columns.image_teacher import ImageTeacherProducer

        return ImageTeacherProducer(cfg, device)
    raise ValueError(f"unknown column '{name}'; valid: {', '.join(COLUMNS)}")
