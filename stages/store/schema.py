"""Named array and record schemas of the store's columns: the names producers write and readers ask for.

A column's arrays are per clip (the leading clip axis implied, shapes on the student's token grid
[T, h, w] unless said); its per-clip records are the JSON rows in each shard group's attrs
"records"; its failures are the rows of the commit record's "failed" list. The strings are part of
the on-disk format: renaming one makes every store written before unreadable, so they live here
once and every producer and reader names them through these constants.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

# -- column names ----------------------------------------------------------------------------
TEACHER_COLUMN = "teacher"  # SAM2 teacher: forward and backward tracking features, masks, LGF targets
ENCODINGS_COLUMN = "encodings"  # the student family's VAE latents and text (and image) embeddings
IMAGE_TEACHER_COLUMN = "image_teacher"  # the image-only baseline (DINOv2): one feature stack, no mask


@dataclass(frozen=True)
class TeacherArrays:
    """Arrays of the SAM2 `teacher` column (stages/extract/columns/teacher.py)."""

    fwd: str = "fwd"  # int8 [T, h, w, C]: forward-pass features, quantised per token
    fwd_scale: str = "fwd_scale"  # float32 [T, h, w, 1]: fwd's per-token scale (stages/core/quantize.py scale_name)
    bwd: str = "bwd"  # int8 [T, h, w, C]: backward-pass features
    bwd_scale: str = "bwd_scale"  # float32 [T, h, w, 1]
    lgf: str = "lgf"  # float16 [pairs, h, w, k^2]: the fused local Gram-flow target
    mask: str = "mask"  # uint8 [T, h, w]: forward mask coverage per token, 0..255
    mask_bwd: str = "mask_bwd"  # uint8 [T, h, w]: backward mask coverage

    @property
    def stacks(self) -> tuple[str, str]:
        """The two feature stacks (forward, backward)."""
        return (self.fwd, self.bwd)


@dataclass(frozen=True)
class ImageTeacherArrays:
    """Arrays of the `image_teacher` column (stages/extract/columns/image_teacher.py): one stack, no mask."""

    fwd: str = "fwd"  # int8 [T, h, w, C]: per-frame image features
    fwd_scale: str = "fwd_scale"  # float32 [T, h, w, 1]
    lgf: str = "lgf"  # float16 [pairs, h, w, k^2]


@dataclass(frozen=True)
class EncodingsArrays:
    """Arrays of the `encodings` column (any family's encodings producer), and its column-level arrays."""

    latents: str = "latents"  # float16 [2C, T', H', W']: VAE posterior parameters [mean | logvar], unscaled
    image_latents: str = "image_latents"  # float16 [C, 1 or T', H', W']: the first-frame condition (image-to-video)
    image_embeds: str = "image_embeds"  # float16 [N, D_img]: CLIP image embeddings (Wan 2.1 I2V)
    prompt_embeds: str = "prompt_embeds"  # float16 [L, D_text]: text-encoder hidden states of the caption
    prompt_mask: str = "prompt_mask"  # uint8 [L]: 1 on the caption's tokens
    # column-level (Column.column_arrays): the empty prompt, for caption dropout
    empty_prompt_embeds: str = "empty_prompt_embeds"  # [L, D_text]
    empty_prompt_mask: str = "empty_prompt_mask"  # [L]


@dataclass(frozen=True)
class ClipRecordFields:
    """Fields every column's per-clip record has (the join and the stream key on them)."""

    key: str = "key"  # the clip's key in the snapshot
    index: str = "index"  # its position in the snapshot


@dataclass(frozen=True)
class BucketRecordFields:
    """Per-clip record fields of every column of a mixed-size store (`video.buckets`); absent otherwise.

    Arrays are then stored padded (zeros at the end of each axis) to the schema's shape, the largest bucket's
    grid; `shapes` says each array's real shape for this clip, and Column.read_row crops to it."""

    bucket: str = "bucket"  # [frames, height, width] of the clip's bucket (pixels)
    shapes: str = "shapes"  # {array: [its shape for this clip]}


@dataclass(frozen=True)
class FailureFields:
    """Fields of a failed clip's row in a commit record's "failed" list (the error ledger)."""

    key: str = "key"
    index: str = "index"
    source: str = "source"  # the clip's video URL
    stage: str = "stage"  # "decode" or the column whose producer failed
    reason: str = "reason"  # one line


@dataclass(frozen=True)
class TeacherRecordFields:
    """Per-clip record fields of the `teacher` column beside key and index."""

    prompt: str = "prompt"  # the SAM2 prompt used (Prompt.to_record())
    prompt_source: str = "prompt_source"  # manifest | auto | ...
    object_score: str = "object_score"  # SAM2's object score of the prompted frame
    quality: str = "quality"  # the QualityFields dict (stores written before it have none)


@dataclass(frozen=True)
class QualityFields:
    """The teacher-quality summary in each teacher record's "quality" (scalars; what data.filter and
    `inspect --teacher-stats` read without opening an array)."""

    object_score_fwd: str = "object_score_fwd"  # mean presence of the forward pass
    object_score_bwd: str = "object_score_bwd"
    presence_min: str = "presence_min"  # lowest presence over frames and both passes
    area_fwd_min: str = "area_fwd_min"  # mask area as a fraction of the frame: min and mean over frames
    area_bwd_min: str = "area_bwd_min"
    area_fwd_mean: str = "area_fwd_mean"
    area_bwd_mean: str = "area_bwd_mean"
    iou_fwd_bwd: str = "iou_fwd_bwd"  # mean over frames of IoU(mask_fwd, mask_bwd)

    @property
    def all(self) -> tuple[str, ...]:
        return astuple(self)


@dataclass(frozen=True)
class EncodingsRecordFields:
    """Per-clip record fields of the `encodings` column beside key and index."""

    image_noise_sigma: str = "image_noise_sigma"  # the first frame's noise level (image-to-video)
    image_seed: str = "image_seed"
    caption_truncated: str = "caption_truncated"  # token count of a caption longer than max_text_len


TEACHER = TeacherArrays()
IMAGE_TEACHER = ImageTeacherArrays()
ENCODINGS = EncodingsArrays()
CLIP = ClipRecordFields()
BUCKET = BucketRecordFields()
FAILURE = FailureFields()
TEACHER_RECORD = TeacherRecordFields()
QUALITY = QualityFields()
ENCODINGS_RECORD = EncodingsRecordFields()


@dataclass(frozen=True)
class CommitFields:
    """Fields of a shard's commit record (columns/<name>-<hash>/commits/<shard>.json) that readers use."""

    attempt: str = "attempt"  # the attempt folder the commit names
    clips: str = "clips"  # keys of the stored clips, in row order
    indices: str = "indices"  # their snapshot indices
    failed: str = "failed"  # FailureFields rows
    checksums: str = "checksums"  # {array: [CRC-32 per row]}; absent in stores written before checksums
    chunks: str = "chunks"  # {array: [chunk key per row]}; absent likewise


COMMIT = CommitFields()
