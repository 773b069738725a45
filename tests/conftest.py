"""Session-wide fixtures: one local Ray, sample corpora generated once, the extract config for them."""

from __future__ import annotations

import os
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
# tests/ mirrors the source tree (tests/<floor>/test_<module>.py) without packages; a few tests reuse another's
# builders by module name (test_golden_curve's synthetic store, test_store_integrity's build), so every folder
# of tests is importable from any other, as when they sat in one folder
for _folder in sorted(p for p in Path(__file__).parent.iterdir() if p.is_dir() and p.name not in ("benchmarks", "fixtures", "golden") and not p.name.startswith((".", "_"))):
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))
os.environ.setdefault("TQDM_DISABLE", "1")
# Tiny models on 2 shared cores: one intra-op thread each is ~100x faster than two contending ones.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("SAM2VIDEOX_CACHE", str(ROOT / ".cache" / "models"))


def load_sample_generator():
    """datasets/sample/generate.py, loaded by path (miniature.world.sample_generator: the one loader)."""
    from miniature.world import sample_generator

    return sample_generator()


@pytest.fixture(scope="module")
def net():
    """A tiny random-weight SAM2 (seeded), one per test module."""
    from stages.teacher.sam2_model import build_sam2

    return build_sam2("tiny", seed=5)


@pytest.fixture(scope="session")
def sample_generator():
    return load_sample_generator()


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory, sample_generator) -> Path:
    """6 clips of 17 frames: enough for 3 shards of 2, fast enough for many end-to-end runs."""
    out = tmp_path_factory.mktemp("corpus") / "clips"
    sample_generator.generate(out, clips=6, frames=17, fps=8)
    return out


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole suite (ray.init costs ~3 s and ~700 MB); extraction reuses it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100_000_000, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def student_store(tmp_path_factory, sample_generator, ray_session) -> str:
    """6 clips of 17 frames at the tiny student's 128x192, both columns, 3 shards of 2 (stage-two tests)."""
    from stages.config.loader import load_config
    from stages.config.extract import ExtractConfig
    from pipeline.runner import run_extract

    corpus = tmp_path_factory.mktemp("corpus128") / "clips"
    sample_generator.generate(corpus, clips=6, frames=17, fps=8)
    url = str(tmp_path_factory.mktemp("store128") / "store")
    cfg = load_config(
        ExtractConfig,
        ROOT / "configs/extract/sample.yaml",
        [f"corpus.url={corpus}", "corpus.clips_per_shard=2", "video.num_frames=17", "teacher.image_size=64"],
    )
    summary = run_extract(cfg, url)
    assert summary.failed_keys == set()
    return url


def small_overrides(corpus: Path, **extra) -> list[str]:
    """Overrides that fit configs/extract/sample.yaml to the 17-frame test corpus."""
    items = {
        "corpus.url": str(corpus),
        "corpus.clips_per_shard": 2,
        "video.num_frames": 17,
        "video.height": 64,
        "video.width": 96,
        "teacher.image_size": 64,
        "ray.num_workers": 2,
        **extra,
    }
    return [f"{k}={v}" for k, v in items.items()]


@pytest.fixture
def moto_s3():
    """(storage options, s3fs filesystem) of a bucket `bucket` on moto's real S3 server on localhost."""
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"key": "testing", "secret": "testing", "endpoint_url": f"http://{host}:{port}", "client_kwargs": {"region_name": "us-east-1"}}
    # moto's backends are process-global: buckets outlive a server, so each test starts from empty
    reset = urllib.request.Request(f"{options['endpoint_url']}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset).close()
    boto3.client(
        "s3", endpoint_url=options["endpoint_url"], aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).create_bucket(Bucket="bucket")
    # skip_instance_cache: this test's own client, never shared with the code under test
    yield options, s3fs.S3FileSystem(skip_instance_cache=True, **options)
    urllib.request.urlopen(reset).close()
    server.stop()


@pytest.fixture
def copy_corpus(tmp_path, small_corpus):
    """A private, writable copy of the small corpus (tests that add broken files to it)."""

    def make() -> Path:
        dst = tmp_path / "clips"
        shutil.copytree(small_corpus, dst)
        return dst

    return make


# -- a mixed-size corpus (video.buckets): landscape, portrait and square clips at two lengths, one too short --
BUCKETS = [[9, 64, 96], [9, 96, 64], [9, 80, 80], [17, 64, 96]]  # [frames, height, width] for the tiny Wan grid (16 px a token)
# key -> (height, width, frames at 8 fps) of its source, and the bucket it must land in (None: too short for all)
MIXED_CLIPS = {
    "land_long": (72, 112, 20, (17, 64, 96)), "land_short": (72, 112, 11, (9, 64, 96)),
    "port_a": (112, 72, 11, (9, 96, 64)), "port_b": (120, 80, 12, (9, 96, 64)),
    "square_a": (88, 88, 11, (9, 80, 80)), "square_b": (96, 96, 12, (9, 80, 80)),
    "land_b": (80, 128, 11, (9, 64, 96)), "land_long_b": (64, 104, 20, (17, 64, 96)),
    "tiny_short": (72, 112, 4, None),
}
MIXED_CLIPS |= {f"{k}_2": v for k, v in MIXED_CLIPS.items()}  # two of each: enough for batches of 2 per bucket on 2 ranks


def write_mixed_corpus(out: Path) -> Path:
    """Small mp4s of a moving bright square (so SAM2's auto prompt has a subject), one per MIXED_CLIPS entry."""
    import numpy as np

    from stages.media.video import write_mp4

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for key, (h, w, n, _) in MIXED_CLIPS.items():
        frames = (rng.integers(0, 40, (n, h, w, 3))).astype(np.uint8)
        shift = len(key) % 5  # the copies move a little differently
        for i in range(n):
            y, x = (h // 4 + i + shift) % (h - h // 3), (w // 4 + 2 * i) % (w - w // 3)
            frames[i, y : y + h // 3, x : x + w // 3] = (230, 200, 60)
        write_mp4(out / f"{key}.mp4", frames, 8)
        (out / f"{key}.txt").write_text(f"a yellow square, {key}")
    return out


@pytest.fixture(scope="session")
def bucket_extract(tmp_path_factory):
    """(store URL, ExtractSummary, ExtractConfig): the mixed corpus extracted with buckets for the tiny Wan student
    (teacher + encodings, 3 clips a shard), in-process (ray.num_workers=0)."""
    from stages.config.loader import load_config
    from stages.config.extract import ExtractConfig
    from pipeline.runner import run_extract

    corpus = write_mixed_corpus(tmp_path_factory.mktemp("mixed") / "clips")
    url = str(tmp_path_factory.mktemp("bucketstore") / "store")
    cfg = load_config(ExtractConfig, ROOT / "configs/extract/sample_wan.yaml", [
        f"corpus.url={corpus}", "corpus.clips_per_shard=3", f"video.buckets={BUCKETS}", "teacher.image_size=64",
        "teacher.prompt=auto", "ray.num_workers=0", "allow_failures=true"])
    summary = run_extract(cfg, url)
    assert summary.failed_keys == {"tiny_short", "tiny_short_2"}, summary.failed
    return url, summary, cfg


@pytest.fixture(scope="session")
def bucket_store(bucket_extract) -> str:
    """The URL of bucket_extract's store."""
    return bucket_extract[0]
