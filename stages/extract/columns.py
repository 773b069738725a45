"""The column registry of stage one (see pipeline/producer.py): name -> spec and producer."""

from __future__ import annotations

from pipeline.extract_config import ExtractConfig
from pipeline.producer import ColumnProducer, ColumnSpec

COLUMNS = ("teacher", "encodings")


def column_spec(name: str, cfg: ExtractConfig) -> ColumnSpec:
    if name == "teacher":
        from stages.extract.teacher_column import teacher_spec

        return teacher_spec(cfg)
    if name == "encodings":
        from stages.extract.encodings_column import encodings_spec

        return encodings_spec(cfg)
    raise ValueError(f"unknown column '{name}'; valid: {', '.join(COLUMNS)}")


def make_producer(name: str, cfg: ExtractConfig, device: str) -> ColumnProducer:
    if name == "teacher":
        from stages.extract.teacher_column import TeacherProducer

        return TeacherProducer(cfg, device)
    if name == "encodings":
        from stages.extract.encodings_column import EncodingsProducer

        return EncodingsProducer(cfg, device)
    raise ValueError(f"unknown column '{name}'; valid: {', '.join(COLUMNS)}")
