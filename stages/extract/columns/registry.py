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
        from stages.families.wan.encodings_column import is_wan_encoders, wan_encodings_spec

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
        from stages.families.wan.encodings_column import WanEncodingsProducer, is_wan_encoders

        if is_wan_encoders(cfg.encoders.model):
            return WanEncodingsProducer(cfg, device)
        from stages.extract.columns.encodings import EncodingsProducer

        return EncodingsProducer(cfg, device)
    if name == "image_teacher":
        from stages.extract.columns.image_teacher import ImageTeacherProducer

        return ImageTeacherProducer(cfg, device)
    raise ValueError(f"unknown column '{name}'; valid: {', '.join(COLUMNS)}")
