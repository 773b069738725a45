"""Schema of an extraction run (`sam2videox extract`): corpus, decoding, teacher, encoders, Ray.

Every [chosen] default of docs/method.md is a field here, so an ablation is a config change.
Each sub-config is also the producer config of the column it feeds: its hash is the cache key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal


MANIFEST_COLUMNS = ("key", "path", "caption", "prompt", "source_id", "start", "end")


@dataclass
class WindowsConfig:
    """Many clips per long video (stages/media/windows.py): windows cut from a source without a time range.

    Off unless `every` or `count` is set. Each window becomes a clip keyed `<source key>@<start>` (seconds,
    zero-padded so keys sort in time order) whose snapshot row keeps its source (`source_id`) and range.
    """

    every: float | None = None  # a window every N seconds (from each shot's start with `shots`)
    count: int | None = None  # or K windows per video, spread evenly over the non-overlapping windows that fit
    length: float | None = None  # seconds per window; None: the span a clip samples (video.start_sec + num_frames / fps)
    # PySceneDetect (scenedetect, ContentDetector; weight-free) finds shot cuts at listing time so a window
    # never straddles one. It decodes each source once, at low cost (downscaled), in the listing process
    shots: bool = False
    shot_threshold: float = 27.0  # ContentDetector's threshold (its default): lower finds more cuts

    def __post_init__(self) -> None:
        if self.every is not None and self.count is not None:
            raise ValueError("corpus.windows: set one of every (seconds) or count (windows per video), not both")
        if self.every is not None and self.every <= 0:
            raise ValueError(f"corpus.windows.every must be > 0 seconds, got {self.every}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"corpus.windows.count must be >= 1, got {self.count}")
        if self.length is not None and self.length <= 0:
            raise ValueError(f"corpus.windows.length must be > 0 seconds, got {self.length}")
        if self.shots and not self.enabled:
            raise ValueError("corpus.windows.shots needs corpus.windows.every or corpus.windows.count")

    @property
    def enabled(self) -> bool:
        return self.every is not None or self.count is not None


@dataclass
class CorpusConfig:
    url: str = "datasets/sample/clips"  # local folder or fsspec URL (file://, s3://) of video files, or of tar shards (format)
    # a manifest: .jsonl (one JSON object a line), .csv / .tsv (a header row) or .parquet, with columns
    # key (optional: derived from path), path (or url: a path relative to the manifest, or a URL), caption,
    # prompt, source_id, start / end (seconds or H:MM:SS.mmm: a time range of a long source, one clip each);
    # Default: <url>/manifest.jsonl if present
    manifest: str | None = None
    # how `url` is read without a manifest. files: video files (+ <stem>.txt captions) under the folder;
    # webdataset: tar shards as video2dataset writes them (<key>.mp4 + <key>.txt and/or <key>.json with
    # "caption"; stages/media/tar_corpus.py): `url` is one .tar, a brace pattern (shards-{00000..00009}.tar)
    # or a folder of .tar files. auto: webdataset when `url` ends in .tar, or is a folder that holds .tar
    # files and no videos; files otherwise
    format: Literal["auto", "files", "webdataset"] = "auto"
    # the manifest's column names where they differ from the ones above, e.g. {path: video, caption: text}
    columns: dict[str, str] = field(default_factory=dict)
    windows: WindowsConfig = field(default_factory=WindowsConfig)
    clips_per_shard: int = 8  # fixed clips per shard: the unit of work, commit and streaming
    extensions: list[str] = field(default_factory=lambda: ["mp4", "webm", "mov", "mkv", "avi", "m4v"])
    limit: int | None = None  # take only the first N clips of the listing (smoke runs)
    storage_options: dict = field(default_factory=dict)  # passed to fsspec (e.g. endpoint_url for s3)
    content_hash: bool = True  # hash each file (size + sha256 of its first and last MiB) to flag duplicate files
    dedupe: bool = False  # keep only the first key (in sorted order) of each set of identical files

    def __post_init__(self) -> None:
        if self.clips_per_shard < 1:
            raise ValueError("clips_per_shard must be >= 1")
        if self.dedupe and not self.content_hash:
            raise ValueError("dedupe needs content_hash=true (duplicates are found by content hash)")
        unknown = sorted(set(self.columns) - set(MANIFEST_COLUMNS))
        if unknown:
            raise ValueError(f"corpus.columns: unknown field(s) {unknown}; expected some of {list(MANIFEST_COLUMNS)}")


@dataclass
class VideoConfig:
    num_frames: int = 49  # pixel frames per clip; CogVideoX wants 4k+1
    fps: float = 8.0  # sampling rate; source frames are picked by timestamp
    start_sec: float = 0.0  # offset of the first sampled frame
    height: int = 480  # student resolution: resize (short side) then centre-crop
    width: int = 720
    # a clip whose centre crop would lose more than max_crop of its (upright) frame, e.g. a portrait
    # clip for a landscape student (9:16 -> 3:2 loses 62%), is handled by `fit`: crop it anyway,
    # pad it (letterbox: resize to fit inside, black borders), or skip it into the ledger
    fit: Literal["crop", "pad", "skip"] = "crop"
    max_crop: float = 0.25  # share of the frame a crop may lose before `fit` applies (16:9 -> 3:2 loses 16%)
    # mixed sizes: [[frames, height, width], ...]. Each clip goes to the bucket of nearest aspect (log-ratio) among
    # those whose frame count its duration allows at `fps` (ties: the larger bucket); a clip no bucket fits is
    # skipped into the ledger. num_frames / height / width are then unused. Arrays are stored padded to the
    # largest bucket in each dimension, each clip's record saying its bucket and real shapes; training batches
    # never mix buckets. None: one size (num_frames x height x width), stores as before
    buckets: list[list[int]] | None = None

    def __post_init__(self) -> None:
        if self.num_frames < 2:
            raise ValueError("num_frames must be >= 2")
        if self.fps <= 0:
            raise ValueError("fps must be > 0")
        if not 0 <= self.max_crop < 1:
            raise ValueError(f"max_crop must be in [0, 1), got {self.max_crop}")
        if self.buckets is not None:
            if not self.buckets:
                raise ValueError("video.buckets must list at least one [frames, height, width] (or be null)")
            seen = set()
            for i, b in enumerate(self.buckets):
                if len(b) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in b):
                    raise ValueError(f"video.buckets[{i}]={list(b)} must be [frames, height, width] of positive integers")
                if b[0] < 2:
                    raise ValueError(f"video.buckets[{i}]={list(b)}: frames must be >= 2")
                if tuple(b) in seen:
                    raise ValueError(f"video.buckets[{i}]={list(b)} is listed twice")
                seen.add(tuple(b))

    def bucket_shapes(self) -> list[tuple[int, int, int]]:
        """(frames, height, width) of every bucket; the one size when buckets are unset."""
        if self.buckets is None:
            return [(self.num_frames, self.height, self.width)]
        return [tuple(int(v) for v in b) for b in self.buckets]  # type: ignore[misc]

    def at(self, bucket: tuple[int, int, int] | list[int]) -> "VideoConfig":
        """This config for one bucket: its frames and size, no buckets (what decoding and the producers see)."""
        f, h, w = (int(v) for v in bucket)
        return replace(self, num_frames=f, height=h, width=w, buckets=None)

    def envelope(self) -> "VideoConfig":
        """The largest bucket in each dimension (frames, height, width): the shape stored arrays are padded to.
        Token and latent grids grow with each dimension, so the envelope's grid bounds every bucket's."""
        if self.buckets is None:
            return self
        shapes = self.bucket_shapes()
        return self.at(tuple(max(s[d] for s in shapes) for d in range(3)))

    def key(self) -> dict:
        """The part of a column's producer config (its cache key) that video settings give: unset buckets
        are left out, so a store written before buckets existed keeps its column keys."""
        out = asdict(self)
        if out["buckets"] is None:
            out.pop("buckets")
        return out


@dataclass
class StudentGridConfig:
    """Geometry of the student, from which the token grid is derived (never hard-coded)."""

    vae_spatial: int = 8  # VAE spatial compression
    vae_temporal: int = 4  # VAE temporal compression (latent frames = 1 + (F - 1) / 4)
    patch_size: int = 2  # transformer spatial patch size
    patch_size_t: int | None = None  # temporal patch size (CogVideoX 1.5); None = 1
    # The student model (diffusers folder / hub id with transformer/ and vae/, or "tiny" / "tiny-wan"): when set,
    # the four fields above are derived from its configs (stages/extract/student_geometry.py) and a value set
    # here that disagrees is refused. None: the fields as written.
    model: str | None = None


@dataclass
class LGFConfig:
    kernel: int = 7  # k: the k x k spatial window of neighbours in the next frame
    tau: float = 0.1  # softmax temperature
    offsets: list[int] = field(default_factory=lambda: [1])  # frame offsets: [1] = (t, t+1); [1, 2] adds (t, t+2)
    fusion: Literal["gram", "probs", "feature", "forward", "backward"] = "gram"

    def __post_init__(self) -> None:
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError("kernel must be a positive odd number")
        if self.tau <= 0:
            raise ValueError("tau must be > 0")
        if not self.offsets or any(o < 1 for o in self.offsets):
            raise ValueError("offsets must be positive frame offsets")


@dataclass
class GroundingConfig:
    """The zero-shot detector of `teacher.prompt: grounded` (stages/teacher/grounding.py): Grounding DINO
    finds the caption's subject on frame 0 and its best box prompts SAM2. Keyed only when prompt=grounded."""

    model: str = "IDEA-Research/grounding-dino-base"  # folder or hub id (from_pretrained), or "tiny" (random, offline)
    box_threshold: float = 0.35  # the best box must score above this, else the clip fails ("no subject found")
    text_threshold: float = 0.25  # query tokens scoring above this for the box are its label (recorded as prompt.label, not a filter)
    # the text query: "caption" = the whole caption; "nouns" = the first of `nouns` (in list order) that the
    # caption contains as a word, else the caption. Lower-cased and period-terminated either way
    phrase: Literal["caption", "nouns"] = "caption"
    nouns: list[str] = field(default_factory=list)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # on GPU; CPU runs fp32
    device: str = "auto"  # auto = the teacher's device (not keyed)
    batch: int = 8  # frames per detector forward (frame 0 of that many clips; not keyed)
    seed: int = 0  # random weights of the "tiny" preset

    def __post_init__(self) -> None:
        for name in ("box_threshold", "text_threshold"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"teacher.grounding.{name} must be in [0, 1) (a sigmoid score), got {getattr(self, name)}")
        if self.phrase == "nouns" and not [n for n in self.nouns if n.strip()]:
            raise ValueError("teacher.grounding.phrase=nouns needs a non-empty teacher.grounding.nouns list")
        if self.batch < 1:
            raise ValueError(f"teacher.grounding.batch must be >= 1, got {self.batch}")


@dataclass
class TeacherConfig:
    model: str = "sam2.1_hiera_l"  # SAM2 config name (sam2.1_hiera_{t,s,b+,l}, sam2_hiera_*) or "tiny"
    checkpoint: str | None = None  # path/URL of a SAM2 checkpoint ({"model": state_dict}); None = random weights
    image_size: int | None = None  # override the model's input size (1024 for released configs)
    # memory_attention (the memory-conditioned feature): the only one that carries each pass's past, so the
    # only one whose forward and backward differ beyond where their masks differ (README "Teacher feature")
    feature: Literal["maskmem", "memory_attention", "backbone"] = "memory_attention"
    # manifest falls back to auto when a clip has none; grounded: Grounding DINO's box for the caption (teacher.grounding)
    prompt: Literal["manifest", "auto", "center", "grounded"] = "auto"
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    temporal: Literal["stride", "mean"] = "stride"  # latent frame i <- pixel frame 4i, or mean of its group
    resample: Literal["antialias", "bilinear"] = "antialias"  # teacher maps -> token grid (stages/core/grid.py); keyed
    image_batch: int = 8  # frames per image-encoder batch (taken across the clips of a clip batch)
    clip_batch: int = 1  # clips tracked in lockstep (BidirectionalTracker.track_batch); same features, not hashed
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"  # autocast dtype on GPU (CPU runs fp32)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    mask_threshold: float = 0.0  # logit threshold of the predicted subject mask
    seed: int = 0  # random-weight init (no checkpoint): every worker must build the same teacher
    compile: bool = False  # torch.compile the image encoder and memory attention (CUDA only; ignored on CPU, not keyed)
    # with compile: also the rest of the per-frame loop (memory encoder, prompt encoder, mask decoder), the modules
    # SAM2's own VOS predictor compiles; speed only, not keyed
    compile_loop: bool = False
    # keep SAM2's weights in `dtype` instead of float32 cast again by autocast at every matmul (autocast stays
    # on for the tensors SAM2 makes in float32). GPU only: CPU computes in float32 whatever this says. Keyed
    # when it takes effect: weights rounded to bf16 move the features by bf16 noise
    cast_weights: bool = False
    # a released SAM2 config (sam2.1_hiera_*, sam2_hiera_*) without a checkpoint is refused unless this is
    # set: random weights give meaningless targets. A permission, not content: not keyed (model, checkpoint
    # and seed already key the weights)
    allow_random_weights: bool = False

    def __post_init__(self) -> None:
        if self.image_batch < 1:
            raise ValueError("image_batch must be >= 1")
        if self.clip_batch < 1:
            raise ValueError("clip_batch must be >= 1")
        if self.compile_loop and not self.compile:
            raise ValueError("teacher.compile_loop=true needs teacher.compile=true (the loop's modules compile with the rest)")


@dataclass
class ImageTeacherConfig:
    """The image-only baseline teacher (`image_teacher` column): DINOv2 patch features per frame.

    Frames are resized whole (no crop) so the short side is `image_size` and the long side keeps the
    aspect ratio, both rounded to the patch size; the patch grid then covers the frame. The features
    go onto the student's token grid with the SAM2 teacher's mapping (teacher.temporal, teacher.resample).
    """

    # a folder or hub id loaded with transformers' Dinov2Model.from_pretrained, or "tiny" (a 2-layer,
    # 32-channel random Dinov2Config built in code, seeded: tests and the demo)
    model: str = "facebook/dinov2-base"
    revision: str | None = None  # hub revision (branch, tag or commit) of a hub id
    image_size: int = 448  # short side in pixels fed to DINOv2, a multiple of its patch size (14)
    layer: int | None = None  # None: last_hidden_state (after the final LayerNorm); N: the output of block N (1-based)
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"  # autocast dtype on GPU (CPU runs fp32)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    image_batch: int = 16  # frames per forward (speed only, not keyed)
    seed: int = 0  # random-weight init (tiny, or random_weights): every worker must build the same model
    # build the model's architecture with seeded random weights instead of loading them (benchmarks and
    # dry runs at the real size); refused for anything but "tiny" unless allow_random_weights is set
    random_weights: bool = False
    allow_random_weights: bool = False  # a permission, not content: not keyed

    def __post_init__(self) -> None:
        if self.image_batch < 1:
            raise ValueError(f"image_teacher.image_batch must be >= 1, got {self.image_batch}")
        if self.image_size < 1:
            raise ValueError(f"image_teacher.image_size must be >= 1, got {self.image_size}")
        if self.layer is not None and self.layer < 1:
            raise ValueError(f"image_teacher.layer must be >= 1 (a block, 1-based) or null (last hidden state), got {self.layer}")
        if self.random_weights and self.model != "tiny" and not self.allow_random_weights:
            raise ValueError(
                f"image_teacher.random_weights=true for '{self.model}' gives meaningless targets: set "
                f"image_teacher.allow_random_weights=true for a random-weight test run"
            )


@dataclass
class EncodersConfig:
    model: str = "THUDM/CogVideoX-5b-I2V"  # diffusers-format folder or hub id (vae/, text_encoder/, tokenizer/), or "tiny"
    max_text_len: int = 226  # T5 tokens
    image_noise_sigma_mean: float = -3.0  # log-normal sigma of the noise on the conditioning image (CogVideoX I2V)
    image_noise_sigma_std: float = 0.5
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"  # on GPU; CPU runs fp32
    device: str = "auto"
    vae_slicing: bool = True
    vae_tiling: bool = True
    seed: int = 0  # per-clip noise seeds derive from this and the clip key
    compile: bool = False  # torch.compile the VAE encoder (CUDA only; ignored on CPU, not keyed)


@dataclass
class RayConfig:
    address: str | None = None  # None: start a local Ray in-process; "auto" or ray://host:port joins a cluster
    num_workers: int = 1  # extract actors (each loads the models once and takes whole shards); 0 = in-process, no Ray
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 0.5  # fractional on small CPU nodes: whole CPUs starve Ray's own work
    max_shard_attempts: int = 3  # a shard whose worker died is redone elsewhere up to this many times
    object_store_memory: int | None = 200_000_000  # bytes, local Ray only
    connect_timeout_s: float = 10.0  # ray.address: give up (one-line error, nothing written) when it does not answer in time

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError(f"ray.num_workers must be >= 0 (0 = no Ray: one worker in this process), got {self.num_workers}")
        if self.connect_timeout_s <= 0:
            raise ValueError(f"ray.connect_timeout_s must be > 0, got {self.connect_timeout_s}")


@dataclass
class LeaseConfig:
    """Claims on shards (stages/store/lease.py): how concurrent runs on one store share the work."""

    seconds: float = 120.0  # an owner whose heartbeat is older than this is dead (its shard is taken over)
    heartbeat_s: float = 15.0  # how often a worker renews its claims
    poll_s: float = 2.0  # how often a run rechecks shards that another live run is writing

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_s < self.seconds:
            raise ValueError(f"lease.heartbeat_s must be > 0 and below lease.seconds ({self.seconds}), got {self.heartbeat_s}")
        if self.poll_s <= 0:
            raise ValueError(f"lease.poll_s must be > 0, got {self.poll_s}")


@dataclass
class DebugConfig:
    """Test-only switches. Never set these in a real run."""

    crash_after_clips: int | None = None  # the first worker to reach N clips in a shard exits hard (once per store)


@dataclass
class ExtractConfig:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    student: StudentGridConfig = field(default_factory=StudentGridConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    lgf: LGFConfig = field(default_factory=LGFConfig)
    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    image_teacher: ImageTeacherConfig = field(default_factory=ImageTeacherConfig)
    # image_teacher (the DINOv2 baseline) is opt-in: add it to a store's columns later without re-extracting the others
    columns: list[Literal["teacher", "encodings", "image_teacher"]] = field(default_factory=lambda: ["teacher", "encodings"])
    ray: RayConfig = field(default_factory=RayConfig)
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    allow_failures: bool = False  # exit 0 even when clips failed (they are in the ledger either way)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def __post_init__(self) -> None:
        if not self.columns:
            raise ValueError("columns must name at least one of: teacher, encodings, image_teacher")
