"""The column registry of stage one (see stages/extract/producer.py): name -> spec and producer."""

from __future__ import annotations

from stages.config.extract import ExtractConfig
from stages.extract.producer import ColumnProducer, ColumnSpec

COLUMNS = ("teacher", "encodings", "image_teacher")


def column_spec(name: str, cfg: ExtractConfig) -> ColumnSpec:
    if name == "teacher":
        from stages.extract.columns.teacher import teacher_spec

        return teacher_spec(cfg)
    if name == "encodings":
        from stages.extract.columns.encodings import encodings_spec  # its content follows the encoders' family

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
        from stages.extract.columns.encodings import EncodingsProducer

        return EncodingsProducer(cfg, device)
    if name == "image_teacher":
        from stages.extract.columns.image_teacher import ImageTeacherProducer

        return ImageTeacherProducer(cfg, device)
    raise ValueError(f"unknown column '{name}'; valid: {', '.join(COLUMNS)}")
