"""Listing and planning a corpus at the scale of a real bucket: no decode, wall time and peak memory.

    python tests/benchmarks/bench_corpus_scale.py                          # 100k manifest rows, 100k S3 keys
    python tests/benchmarks/bench_corpus_scale.py --rows 20000 --s3-keys 20000 --hash-keys 2000

Phases, each in a fresh process (so its peak RSS is its own; `rss` = peak minus the RSS right after
imports, i.e. what the phase itself held):
  csv names      `list_corpus` of a CSV manifest of --rows rows (path, caption), content_hash=false:
                 what every rerun lists (stages/extract/growth.py) and what `corpus.content_hash=false` runs
  csv + hash     the same with the default content hash: every row's file (a 1 KiB file here) is read
  plan           `Snapshot` of those rows: its id (hash of every row), the shard plan (every shard's
                 range) and the snapshot JSON the store writes
  s3 names       `list_corpus` of an s3:// folder of --s3-keys objects on moto's real S3 server
                 (localhost), content_hash=false
  s3 + hash xT   the default content hash alone (`mark_duplicates`) over --hash-keys of those objects
                 (corpus.limit), with T threads (1: as before its reads overlapped; 16: the default)
Keys are written to moto with 16 threads; creating them is timed too, but is not a figure.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script from anywhere


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _phase(name: str, kwargs: dict, out) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    from stages.config.extract import CorpusConfig
    from stages.media.corpus import list_corpus
    from stages.store.snapshot import Snapshot

    base = _rss_mb()
    t = time.perf_counter()
    if name == "plan":
        entries = list_corpus(CorpusConfig(url=kwargs["url"], manifest=kwargs["manifest"], content_hash=False, clips_per_shard=64))
        t = time.perf_counter()  # the plan alone: the listing is the phase above
        snap = Snapshot(kwargs["url"], 64, [e.to_json() for e in entries])
        ranges = [snap.shard_range(s) for s in range(snap.num_shards)]
        blob = __import__("json").dumps(snap.to_json())
        n, extra = len(snap.clips), f"{len(ranges)} shards, snapshot.json {len(blob) / 2**20:.1f} MiB"
    elif name.startswith("s3 + hash"):
        import stages.media.corpus as corpus

        corpus.HASH_THREADS = kwargs.pop("threads")
        cfg = CorpusConfig(**kwargs)
        entries = list_corpus(CorpusConfig(**{**kwargs, "content_hash": False}))
        t = time.perf_counter()  # the hashing alone
        hashed = corpus.mark_duplicates(entries, cfg)
        n, extra = len(hashed), f"{corpus.HASH_THREADS} thread(s); {sum(e.content_hash is None for e in hashed)} unreadable"
    else:
        entries = list_corpus(CorpusConfig(**kwargs))
        n, extra = len(entries), ""
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.send({"phase": name, "n": n, "wall_s": wall, "rss_mb": peak - base, "extra": extra})


def run_phase(name: str, **kwargs) -> dict:
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    p = ctx.Process(target=_phase, args=(name, kwargs, b))
    p.start()
    res = a.recv()
    p.join()
    print(res, flush=True)
    return res


def make_manifest(root: Path, rows: int, with_files: bool) -> Path:
    clips = root / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    path = root / "clips.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "caption"])
        for i in range(rows):
            name = f"clips/{i // 1000:03d}/{i:07d}.mp4"
            if with_files:
                (root / name).parent.mkdir(exist_ok=True)
                (root / name).write_bytes(os.urandom(1024))
            w.writerow([name, f"caption of clip {i}: a person walks a dog along a beach at sunset"])
    return path


def s3_server(keys: int):
    import logging

    import boto3
    from concurrent.futures import ThreadPoolExecutor
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"key": "testing", "secret": "testing", "endpoint_url": f"http://{host}:{port}", "client_kwargs": {"region_name": "us-east-1"}}
    client = boto3.client("s3", endpoint_url=options["endpoint_url"], aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    client.create_bucket(Bucket="bucket")
    t = time.perf_counter()
    body = os.urandom(1024)
    with ThreadPoolExecutor(16) as pool:  # distinct bodies: no key is a copy of another
        list(pool.map(lambda i: client.put_object(Bucket="bucket", Key=f"clips/{i // 1000:03d}/{i:07d}.mp4", Body=b"%d:" % i + body),
                      range(keys)))
    print(f"created {keys} S3 keys in {time.perf_counter() - t:.1f} s", flush=True)
    return server, options


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--s3-keys", type=int, default=100_000)
    ap.add_argument("--hash-keys", type=int, default=2_000, help="S3 keys hashed in the `s3 + hash` phase (corpus.limit)")
    ap.add_argument("--no-s3", action="store_true")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        manifest = make_manifest(root, args.rows, with_files=True)
        print(f"wrote {args.rows} rows and files in {time.perf_counter() - t:.1f} s", flush=True)
        results.append(run_phase("csv names", url=str(root), manifest=str(manifest), content_hash=False))
        results.append(run_phase("csv + hash", url=str(root), manifest=str(manifest)))
        results.append(run_phase("plan", url=str(root), manifest=str(manifest)))
    if not args.no_s3:
        server, options = s3_server(args.s3_keys)
        try:
            results.append(run_phase("s3 names", url="s3://bucket/clips", storage_options=options, content_hash=False))
            for threads in (1, 16):  # 1: as before the content hash's reads overlapped
                results.append(run_phase(f"s3 + hash x{threads}", url="s3://bucket/clips", storage_options=options, limit=args.hash_keys,
                                         threads=threads))
        finally:
            server.stop()
    print(f"\n| phase | clips | wall s | per clip | peak RSS over imports MiB | |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['phase']} | {r['n']} | {r['wall_s']:.2f} | {1e6 * r['wall_s'] / max(r['n'], 1):.0f} us | {r['rss_mb']:.0f} | {r['extra']} |")


if __name__ == "__main__":
    main()
