"""`sam2videox`: the command line. Progress bars and printing live here, nowhere else."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from stages.config.loader import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="SAM2VideoX: SAM2 teacher extraction and CogVideoX distillation.")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _load(schema, config: Optional[Path], overrides: list[str]):
    try:
        return load_config(schema, config, overrides)
    except ConfigError as exc:
        typer.secho(f"config error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


@app.command(context_settings={"allow_extra_args": False})
def extract(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="extract config YAML (configs/extract/*.yaml)"),
    store: str = typer.Option(..., "--store", "-s", help="feature store: a folder or fsspec URL (s3://...)"),
    overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. teacher.feature=backbone ray.num_workers=4"),
    allow_failures: bool = typer.Option(False, "--allow-failures", help="exit 0 even if clips failed (they stay in the ledger)"),
    append: bool = typer.Option(False, "--append", help="add clips new in the bucket to the store, as new shards after the existing ones"),
    repair: bool = typer.Option(False, "--repair", help="verify every committed clip's checksum first and extract damaged shards again"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Stage one: track every clip forward and backward with SAM2 and write the store's columns."""
    from stages.config.extract import ExtractConfig
    from pipeline.progress import Progress
    from pipeline.runner import ExtractFailed, run_extract
    from stages.store.store import StoreError

    _setup_logging(verbose)
    cfg = _load(ExtractConfig, config, overrides or [])
    bar = Progress("extract", "clip")

    def on_shard(report) -> None:
        model = sum(report.model_s.values())
        failed = len({row["key"] for rows in report.failed.values() for row in rows})
        bar.update(report.clips, failed=failed, shard=report.shard, wall_model=f"{report.seconds / model:.2f}" if model else "-")

    def on_plan(clips: int) -> None:
        bar.set_total(clips)

    try:
        summary = run_extract(cfg, store, on_shard=on_shard, on_plan=on_plan, append=append, repair=repair)
    except (ExtractFailed, StoreError, ValueError) as exc:
        bar.close()
        typer.secho(f"extract failed: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    bar.close()
    if summary.shards_skipped == summary.shards and not summary.growth.appended:
        typer.echo(f"nothing to do: all {summary.shards} shards already committed in {summary.store} ({', '.join(cfg.columns)})")
    else:
        elsewhere = f", {summary.shards_elsewhere} committed meanwhile by another run" if summary.shards_elsewhere else ""
        typer.echo(
            f"store {summary.store}: {summary.clips} clips in {summary.shards} shards; "
            f"ran {len(summary.shards_run)} shards ({summary.clips_processed} clips), skipped {summary.shards_skipped} already committed{elsewhere}, "
            f"{summary.worker_restarts} worker restarts, {summary.seconds:.1f} s"
        )
    growth = summary.growth
    if growth.appended:
        typer.echo(f"appended {growth.appended} new clips from {cfg.corpus.url} as shards {growth.first_new_shard}..{summary.shards - 1}")
    if growth.unlisted and not append:
        typer.secho(
            f"{growth.unlisted} new clips in {cfg.corpus.url} are not in this store's snapshot; "
            f"to add them, rerun this command with --append", fg="yellow",
        )
    if summary.shards_run:
        typer.echo(_timing_line(summary))
        logging.getLogger("pipeline.cli").info("extract timing %s", json.dumps(summary.timing()))
    for dirname, shards in summary.repaired.items():
        typer.secho(f"repaired {dirname}: shard(s) {', '.join(map(str, shards))} extracted again", fg="yellow")
    if summary.damaged:
        for damage in summary.damaged[:10]:
            typer.secho(f"  damaged: {damage.line()}", fg="red", err=True)
        shards = {(d.column, d.shard) for d in summary.damaged}
        typer.secho(
            f"{len(shards)} committed shard(s) of {store} are damaged ({len(summary.damaged)} problems); "
            f"`sam2videox extract --repair` extracts them again, `sam2videox inspect {store} --verify` checks every clip",
            fg="red", err=True,
        )
        raise typer.Exit(1)
    for name, rows in summary.failed.items():
        if rows:
            typer.secho(f"{name}: {len(rows)} clips failed", fg="yellow")
            for row in rows[:10]:
                typer.echo(f"  {row['key']}: {row['reason']}")
    if summary.failed_keys and not (allow_failures or cfg.allow_failures):
        typer.secho(f"{len(summary.failed_keys)} clips failed (see `sam2videox inspect {store}`); pass --allow-failures to accept", fg="red", err=True)
        raise typer.Exit(1)


def _timing_line(summary) -> str:
    """Where the workers' time went; decode and write run in background threads, so they overlap the model."""
    t = summary.timing()
    per_column = ", ".join(f"{name} {seconds:.1f}" for name, seconds in summary.model_s.items())
    ratio = f"{t['wall_over_model']:.2f}" if t["wall_over_model"] else "-"
    return (
        f"extract: {t['clips']} clips in {t['seconds']:.1f} s (workers {t['worker_s']:.1f} s); model {t['model_s']:.1f} s ({per_column}), "
        f"decode {t['decode_s']:.1f} (overlapped), write {t['write_s']:.1f} (not overlapped {t['flush_s']:.1f}), wait {t['wait_s']:.1f}, "
        f"load {t['load_s']:.1f}; wall/model {ratio}"
    )


@app.command()
def inspect(
    store: str = typer.Argument(..., help="feature store folder or URL"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON (failed clips and duplicates included)"),
    failures: bool = typer.Option(False, "--failures", help="list every failed clip: column, key, stage and reason"),
    pca: Optional[str] = typer.Option(None, "--pca", help="clip key (or @N, the Nth clip) to render as PCA colours"),
    out: Optional[Path] = typer.Option(None, "--out", help="output .mp4 or .png for --pca"),
    column: Optional[str] = typer.Option(None, "--column", help="teacher column name or name-hash (default: the only one)"),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help='fsspec options as JSON, e.g. \'{"endpoint_url": "http://..."}\''),
    verify: bool = typer.Option(False, "--verify", help="read every committed clip and check it against its commit; exit 1 if damaged"),
    teacher_stats: bool = typer.Option(False, "--teacher-stats", help="what the teacher column fuses: KL(P_fwd||P_bwd), KL(P_fused||P_fwd), mask IoU, scores, areas, KL to other teacher columns"),
    threshold: float = typer.Option(0.01, "--threshold", help="--teacher-stats: per-token KL(P_fused||P_fwd) above which a fused relation counts as differing"),
) -> None:
    """Summarise a store, check it (--verify), report what its teacher fuses (--teacher-stats), or render one clip's teacher features (--pca KEY --out FILE)."""
    from stages.store.store import FeatureStore, StoreError

    try:
        fstore = FeatureStore(store, json.loads(storage_options) if storage_options else None)
        if verify:
            _verify(fstore, as_json)
            return
        if teacher_stats:
            from pipeline.teacher_stats import format_stats
            from pipeline.teacher_stats import teacher_stats as compute_stats

            stats = compute_stats(fstore, column, threshold)
            typer.echo(json.dumps(stats, indent=1) if as_json else "\n".join(format_stats(stats)))
            return
        if pca is not None:
            from pipeline.inspect import render_pca

            if out is None:
                raise typer.BadParameter("--pca needs --out FILE (.mp4 or .png)")
            path = render_pca(fstore, pca, out, column or "teacher")
            typer.echo(f"wrote {path}")
            return
        from pipeline.inspect import store_report

        summary = store_report(fstore)
    except (StoreError, ValueError) as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from exc
    except Exception as exc:
        from stages.core.fs import credentials_hint, missing_credentials

        if not missing_credentials(exc):
            raise
        typer.secho(credentials_hint(f"{store} (--storage-options)"), fg="red", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    typer.echo(f"store {summary['store']}: {summary['clips']} clips, {summary['shards']} shards, {summary['failed']} failed")
    for col in summary["columns"]:
        described = " ".join(f"{k.split('.', 1)[-1] if k.count('.') == 1 else k}={v}" for k, v in col["describe"].items())
        typer.echo(
            f"  {col['dir']}: {col['committed_shards']}/{summary['shards']} shards, {col['clips']} clips, "
            f"{col['failed']} failed, {col['bytes_per_clip'] / 1e6:.2f} MB/clip stored ({col['schema_bytes_per_clip'] / 1e6:.2f} uncompressed)"
            + (f"  [{described}]" if described else "")
        )
        for name, spec in col["arrays"].items():
            typer.echo(f"      {name:16s} {spec['dtype']:8s} {tuple(spec['shape'])}")
    dupes = summary["duplicates"]
    if dupes:
        typer.echo(f"  duplicate files: {sum(len(v) for v in dupes.values())} clips are copies of others (corpus.dedupe=true keeps one)")
        for first, copies in list(dupes.items())[:10]:
            typer.echo(f"      {first} = {', '.join(copies)}")
    rows = summary["failures"]
    if failures:
        for row in rows:
            typer.echo(f"  FAILED {row['column']} {row['key']} [{row['stage']}]: {row['reason']}")
    elif rows:
        typer.echo(f"  {len(rows)} failures: list them with `sam2videox inspect {store} --failures`")


def _verify(fstore, as_json: bool) -> None:
    """inspect --verify: one line per damaged clip/array (or shard), exit 1 when there is any."""
    from stages.store.integrity import verify_store

    fstore.require_snapshot()
    report = verify_store(fstore, full=True)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=1))
    else:
        for damage in report.damaged:
            typer.echo(f"damaged: {damage.line()}")
        columns = {c for c, _ in report.unverified}
        unverified = f"; {len(report.unverified)} shard(s) unverified (no checksums: written before them) in {', '.join(sorted(columns))}" if columns else ""
        state = f"{len(report.damaged)} damaged" if report.damaged else "clean"
        typer.echo(f"verified {report.shards} committed shards ({report.clips} clips) of {fstore.url}: {state}{unverified}")
    if report.damaged:
        raise typer.Exit(1)


def _run_distill(cfg, resume: bool, show_progress: bool) -> dict:
    """Train, export, and return the run summary (also written to <out>/summary.json on rank 0)."""
    import io

    from pipeline.progress import Progress
    from stages.distill.trainer import Trainer

    trainer = Trainer(cfg, resume=resume)
    quiet = not show_progress or trainer.rank != 0
    bar = Progress(Path(cfg.out).name, "step", total=cfg.train.steps, initial=trainer.step,
                   stream=io.StringIO() if quiet else None, failures=False)
    waits, times = [], []

    def on_step(m) -> None:
        waits.append(m.data_seconds)
        times.append(m.seconds)
        bar.update(1, loss=f"{m.loss:.4f}", data_wait=f"{sum(waits) / max(sum(times), 1e-9):.0%}")

    trainer.on_step = on_step
    try:
        history = trainer.run()
        exported = trainer.finish()
    finally:
        bar.close()
        trainer.close()
    summary = {
        "out": str(cfg.out),
        "steps": trainer.step,
        "rank": trainer.rank,
        "world_size": trainer.world,
        "final": history[-1].to_json() if history else None,
        "first": history[0].to_json() if history else None,
        "mean_step_seconds": sum(times) / len(times) if times else None,
        "data_wait_share": sum(waits) / sum(times) if times else None,
        "exported": str(exported) if exported else None,
        "teacher_column": trainer.data.teacher.dirname if trainer.data.teacher else None,
        "filter": trainer.filter.to_json(),  # data.filter: clips dropped per rule, and which
    }
    if trainer.rank == 0:
        (Path(cfg.out) / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


@app.command()
def distill(
    config: list[Path] = typer.Option(..., "--config", "-c", help="distill config YAML; repeat to layer an ablation on a base"),
    store: Optional[str] = typer.Option(None, "--store", "-s", help="feature store (sets data.store)"),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="run folder (sets out)"),
    overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. losses.lgf.weight=1.0 train.steps=100"),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint in the run folder"),
    plan: bool = typer.Option(False, "--plan", help="print the memory plan for this world size and exit"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Stage two: distil the store's teacher into CogVideoX (torchrun for several GPUs: DDP or FSDP2)."""
    import os

    from stages.config.distill import DistillConfig
    from stages.store.store import StoreError
    from stages.distill.memory_plan import MemoryPlanError
    from stages.distill.checkpoint.resume import ResumeMismatch

    _setup_logging(verbose)
    extra = ([f"data.store={store}"] if store else []) + ([f"out={out}"] if out else [])
    cfg = _load(DistillConfig, config, [*(overrides or []), *extra])
    if plan:
        _print_plan(cfg, int(os.environ.get("WORLD_SIZE", "1")), None, as_json=False)
        return
    try:
        summary = _run_distill(cfg, resume, show_progress=True)
    except (StoreError, MemoryPlanError, ResumeMismatch) as exc:  # one line, exit 2: the message names the fix
        kind = {StoreError: "store error", MemoryPlanError: "memory plan", ResumeMismatch: "resume"}
        typer.secho(f"{next(v for k, v in kind.items() if isinstance(exc, k))}: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    if summary["rank"] == 0:
        final = summary["final"]
        if final is None:  # a resume of a finished run
            typer.echo(f"nothing to train: the run is already at step {summary['steps']} of {cfg.train.steps} "
                       f"(raise train.steps to continue); exported: {summary['exported']}")
            return
        typer.echo(
            f"{summary['steps']} steps, loss {final['loss']:.4f} {final['terms']}, "
            f"{summary['mean_step_seconds'] or 0:.3f} s/step, data wait {summary['data_wait_share'] or 0:.1%}; exported: {summary['exported']}"
        )


@app.command()
def plan(
    config: list[Path] = typer.Option(..., "--config", "-c", help="distill config YAML (repeat to layer files)"),
    gpus: int = typer.Option(8, "--gpus", help="world size: GPUs in the run (all nodes)"),
    gpu_memory: Optional[float] = typer.Option(None, "--gpu-memory", help="GiB per GPU: say whether the run fits"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
    overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. parallel.strategy=fsdp student.full_finetune=true"),
) -> None:
    """Memory plan of a distill config: the student built on the meta device, bytes per GPU by kind."""
    from stages.config.distill import DistillConfig

    cfg = _load(DistillConfig, config, list(overrides or []))
    if not _print_plan(cfg, gpus, gpu_memory, as_json):
        raise typer.Exit(1)


def _print_plan(cfg, world: int, gpu_memory: Optional[float], as_json: bool) -> bool:
    """Print the plan; False when it does not fit `gpu_memory` GiB."""
    from stages.distill.memory_plan import MemoryPlanError, plan_memory

    try:
        memory = plan_memory(cfg, world)
    except MemoryPlanError as exc:
        typer.secho(f"memory plan: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    fits = gpu_memory is None or memory.total <= gpu_memory * 2**30
    if as_json:
        typer.echo(json.dumps({**memory.to_json(), "gpu_memory_gib": gpu_memory, "fits": fits}, indent=1))
    else:
        typer.echo(memory.table())
        if gpu_memory is not None:
            typer.echo(f"fits in {gpu_memory:g} GiB" if fits else f"does not fit: {memory.refusal(int(gpu_memory * 2**30))}")
    return fits


@app.command()
def ablate(
    config: Path = typer.Option(Path("configs/distill/sample.yaml"), "--config", "-c", help="base distill config"),
    store: str = typer.Option(..., "--store", "-s"),
    out: str = typer.Option("out/ablations", "--out", "-o"),
    ablations: Path = typer.Option(
        Path("configs/ablations"), "--ablations",
        help="folder of ablation YAMLs (diffs on the base): configs/ablations (demo) or configs/ablations/real (5B student)",
    ),
    steps: int = typer.Option(3, "--steps", help="training steps per ablation (a quick comparison)"),
    full_schedule: bool = typer.Option(False, "--full-schedule", help="train each for the config's train.steps instead of --steps"),
    only: list[str] = typer.Argument(None, help="ablation names to run (default: all)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train every ablation on the same store: cached features reused, nothing re-extracted."""
    from stages.config.distill import DistillConfig
    from stages.store.store import StoreError

    _setup_logging(verbose)
    files = sorted(ablations.glob("*.yaml"))
    if not files:
        typer.secho(f"no ablation YAMLs in {ablations}", fg="red", err=True)
        raise typer.Exit(2)
    if only:
        unknown = set(only) - {f.stem for f in files}
        if unknown:
            typer.secho(f"unknown ablation(s) {', '.join(sorted(unknown))} in {ablations}; valid: {', '.join(f.stem for f in files)}", fg="red", err=True)
            raise typer.Exit(2)
        files = [f for f in files if f.stem in only]
    rows = {}
    for f in files:
        overrides = [f"data.store={store}", f"out={out}/{f.stem}"]
        if not full_schedule:
            overrides += [f"train.steps={steps}", f"train.checkpoint_every={steps}"]
        cfg = _load(DistillConfig, [config, f], overrides)
        for line in _schedule_warnings(cfg):
            typer.secho(f"{f.stem}: {line}", fg="yellow", err=True)
        try:
            summary = _run_distill(cfg, resume=False, show_progress=False)
        except StoreError as exc:
            typer.secho(f"{f.stem} ({f}): {exc}", fg="red", err=True)
            raise typer.Exit(2) from exc
        rows[f.stem] = {"loss": summary["final"]["loss"], "terms": summary["final"]["terms"], "s_per_step": summary["mean_step_seconds"]}
        typer.echo(f"{f.stem:16s} loss {rows[f.stem]['loss']:.4f}  {rows[f.stem]['terms']}")
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "ablations.json").write_text(json.dumps(rows, indent=1))


def _schedule_warnings(cfg) -> list[str]:
    """Loss schedules that reach past the run's train.steps (e.g. a real-size ablation run for a few steps)."""
    out = []
    for name in ("lgf", "repa", "mask"):
        term = getattr(cfg.losses, name)
        for key in ("warmup_steps", "cutoff_step"):
            value = getattr(term, key)
            if value and value > cfg.train.steps:
                out.append(f"losses.{name}.{key}={value} is beyond the run's {cfg.train.steps} steps")
    return out


@app.command()
def generate(
    run: Path = typer.Option(..., "--run", help="a distill run folder (holds lora/ and summary.json)"),
    store: str = typer.Option(..., "--store", "-s", help="the store it trained on (first frame, caption, encoders)"),
    out: Path = typer.Option(..., "--out", "-o", help="output .mp4"),
    key: str = typer.Option("@0", "--key", help="clip (key, or @N for the Nth) whose first frame and caption condition the sample"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | cuda:N (default: cuda where a GPU exists, else cpu)"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bfloat16 | float16 | float32 (default: bfloat16 on cuda, float32 on cpu)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="denoising steps (default: 50 on cuda, 8 on cpu)"),
    guidance: float = typer.Option(6.0, "--guidance", help="classifier-free guidance scale (1 = off)"),
    dynamic_cfg: bool = typer.Option(False, "--dynamic-cfg/--no-dynamic-cfg", help="the stock pipeline's use_dynamic_cfg (guidance ramped over the steps)"),
    seed: int = typer.Option(0, "--seed"),
    no_lora: bool = typer.Option(False, "--no-lora", help="sample the base model (for comparison)"),
) -> None:
    """Sample a video with the stock diffusers pipeline of the run's student (CogVideoX I2V, Wan T2V) + its LoRA."""
    from stages.config.loader import from_dict
    from stages.media.corpus import ClipEntry
    from stages.media.decode import decode_clip
    from stages.config.extract import VideoConfig
    from pipeline.inspect import write_mp4
    from stages.store.store import FeatureStore, StoreError
    from stages.families.sampling import build_pipeline, resolve_sampling, sample_video

    _setup_logging(False)
    try:
        sampling = resolve_sampling(device, dtype, steps)
    except ValueError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from exc
    info = json.loads((run / "lora" / "sam2videox.json").read_text())
    fstore = FeatureStore(store)
    try:
        enc_col = fstore.column(info["encodings_column"])
        video = from_dict(VideoConfig, enc_col.producer_config["video"], source=f"{enc_col.dirname}/column.json")
        snapshot = fstore.require_snapshot()
        entry = ClipEntry.from_json(snapshot.clips[snapshot.find(key)])
    except StoreError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from exc
    enc_cfg = enc_col.producer_config["encoders"]
    student_cfg = info["config"]["student"]
    lora = None if no_lora else run / "lora"
    from stages.families.base import infer_family, student_for

    is_wan = infer_family(student_cfg["model"], student_cfg.get("family")) == "wan"
    student = student_for(student_cfg["model"], student_cfg.get("family"))
    if hasattr(student, "sample"):  # a family that samples through its own stock pipelines (LTX-Video)
        task = student_cfg.get("task") or "t2v"
        first = decode_clip(entry.url, video, fstore.storage_options).frames[0]
        pipe = student.build_pipeline(student_cfg["model"], enc_cfg["model"], lora, sampling.device, sampling.dtype, task)
        frames = student.sample(pipe, task, first, entry.caption or "", video.num_frames, sampling.steps, guidance, seed,
                                enc_cfg["max_text_len"])
    elif is_wan and student_cfg.get("task") == "i2v":  # Wan 2.1 I2V: the clip's first frame and caption
        from stages.families.wan.family import build_wan_pipeline
        from stages.families.sampling import sample_image_video_wan

        first = decode_clip(entry.url, video, fstore.storage_options).frames[0]
        pipe = build_wan_pipeline(student_cfg["model"], enc_cfg["model"], lora, sampling.device, sampling.dtype, task="i2v")
        frames = sample_image_video_wan(pipe, first, entry.caption or "", video.num_frames, sampling.steps, guidance, seed,
                                        enc_cfg["max_text_len"])
    elif is_wan:  # text-to-video (Wan 2.1 T2V; Wan 2.2 TI2V through its WanPipeline with expand_timesteps): the caption alone
        from stages.families.wan.family import build_wan_pipeline
        from stages.families.sampling import sample_text_video

        pipe = build_wan_pipeline(student_cfg["model"], enc_cfg["model"], lora, sampling.device, sampling.dtype,
                                  task=student_cfg.get("task") or "t2v")
        frames = sample_text_video(pipe, entry.caption or "", video.num_frames, video.height, video.width, sampling.steps,
                                   guidance, seed, enc_cfg["max_text_len"])
    else:
        first = decode_clip(entry.url, video, fstore.storage_options).frames[0]
        pipe = build_pipeline(student_cfg["model"], enc_cfg["model"], lora, sampling.device, sampling.dtype)
        frames = sample_video(
            pipe, first, entry.caption, video.num_frames, sampling.steps, guidance, seed, enc_cfg["max_text_len"], dynamic_cfg
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(out, frames, video.fps)
    ran = len(pipe.scheduler.timesteps)  # what the scheduler really stepped through
    typer.echo(
        f"wrote {out} ({frames.shape[0]} frames {frames.shape[1]}x{frames.shape[2]}) from '{entry.key}': {entry.caption!r}; "
        f"{ran} steps on {sampling.device} in {str(sampling.dtype).removeprefix('torch.')}, guidance {guidance}"
        f"{' (dynamic)' if dynamic_cfg else ''}"
    )


@app.command()
def evaluate(
    store: str = typer.Option(..., "--store", "-s", help="the store the runs trained on (held-out clips, encoders, teacher)"),
    runs: list[Path] = typer.Option([], "--runs", "-r", help="run folders, or a folder of run folders (e.g. .../ablations); repeat or list after --runs"),
    out: Path = typer.Option(..., "--out", "-o", help="evaluation folder: report.md/.json/.png, samples/, grids/"),
    base: bool = typer.Option(False, "--base", help="also evaluate the base model (no LoRA) as a row"),
    clips: Optional[int] = typer.Option(None, "--clips", help="only the first N held-out clips (sorted by key)"),
    seed: int = typer.Option(0, "--seed", help="held-out clip i is sampled with seed + i by every model"),
    steps: Optional[int] = typer.Option(None, "--steps", help="denoising steps (default: 50 on cuda, 8 on cpu)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | cuda:N (default: cuda where a GPU exists)"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bfloat16 | float16 | float32"),
    guidance: float = typer.Option(6.0, "--guidance", help="classifier-free guidance scale"),
    fvd_backbone: str = typer.Option("tiny", "--fvd-backbone", help="FVD features: tiny | a VideoMAE folder or hub id | an I3D TorchScript file"),
    no_vbench: bool = typer.Option(False, "--no-vbench", help="skip VBench even where its env exists"),
    holdout: Optional[float] = typer.Option(None, "--holdout", help="held-out clips by the split rule at this fraction (instead of the runs' holdout.json)"),
    holdout_key: list[str] = typer.Option([], "--holdout-key", help="a held-out clip key (repeat); with or instead of --holdout"),
    student: Optional[str] = typer.Option(None, "--student", help="the base model's student when there are no runs"),
    extra_runs: list[Path] = typer.Argument(None, help="more run folders (so --runs A B C works)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Compare runs (and the base model) on the held-out clips: samples, video/structure metrics, FVD, VBench, one report."""
    from stages.evaluate.evaluate import EvaluateOptions, evaluate as run_evaluate
    from stages.evaluate.runs import EvaluateError

    _setup_logging(verbose)
    opts = EvaluateOptions(store=store, out=out, runs=[*runs, *(extra_runs or [])], base=base, clips=clips, seed=seed, steps=steps,
                           device=device, dtype=dtype, guidance=guidance, fvd_backbone=fvd_backbone, vbench=not no_vbench,
                           holdout=holdout, holdout_keys=list(holdout_key), student=student)
    try:
        result = run_evaluate(opts)
    except EvaluateError as exc:
        typer.secho(f"evaluate: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    p = result.protocol
    typer.echo(f"evaluated {', '.join(result.rows)} on {p['videos_per_model']} held-out clip(s) ({p['frames']} frames "
               f"{p['resolution'][0]}x{p['resolution'][1]}, {p['sampling_steps']} steps, seeds {p['seeds']}) in {result.seconds['total']:.1f} s")
    typer.echo(f"report: {out / 'report.md'}")


@app.command()
def report(
    store: str = typer.Option(..., "--store", "-s"),
    run: Path = typer.Option(..., "--run"),
    out: Path = typer.Option(..., "--out", "-o", help="summary .md (a .json twin is written beside it)"),
    evaluation: Optional[Path] = typer.Option(None, "--evaluation", help="an `evaluate` folder: its report.md is linked"),
    files: list[str] = typer.Argument(None, help="extra produced files to list (videos, pictures)"),
) -> None:
    """Write a run's summary: store figures, training figures, and where everything is."""
    from stages.store.store import FeatureStore, StoreError

    try:
        store_info = FeatureStore(store).summary()
    except StoreError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from exc
    train = json.loads((run / "summary.json").read_text())
    lines = [
        "# SAM2VideoX run summary",
        "",
        f"- store: `{store_info['store']}`: {store_info['clips']} clips in {store_info['shards']} shards, {store_info['failed']} failed",
    ]
    for col in store_info["columns"]:
        lines.append(f"  - column `{col['dir']}`: {col['clips']} clips, {col['bytes_per_clip'] / 1e3:.1f} kB/clip, arrays "
                     + ", ".join(f"{k} {tuple(v['shape'])} {v['dtype']}" for k, v in col["arrays"].items()))
    from stages.extract.columns.teacher import real_size_bytes_per_clip

    real = real_size_bytes_per_clip()
    store_info["teacher_bytes_per_clip_real_size"] = sum(real.values())
    lines.append(f"- teacher bytes per clip at the real size (49x480x720, SAM 2.1 Hiera-L, default feature; from the schema): "
                 f"{sum(real.values()) / 1e6:.2f} MB (" + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in real.items()) + ")")
    lines += [
        f"- training: {train['steps']} steps on {train['world_size']} rank(s), {train['mean_step_seconds']:.3f} s/step, "
        f"data wait {train['data_wait_share']:.1%} of step time",
        _loss_line(run / "metrics.jsonl"),
        *_val_lines(run),
        f"- LoRA for the stock diffusers pipelines: `{train['exported']}`",
        f"- loss curve: `{run / 'loss_curve.png'}`; metrics: `{run / 'metrics.jsonl'}`; TensorBoard: `{run / 'tensorboard'}`",
    ]
    lines += [f"- `{f}`" for f in files or []]
    evaluated = _evaluation_lines(evaluation, out.parent) if evaluation is not None else []
    lines += evaluated
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"store": store_info, "training": train, "files": files or [],
                                                    "evaluation": str(evaluation / "report.md") if evaluated else None}, indent=1, default=str))
    typer.echo(out.read_text())


def _evaluation_lines(folder: Path, relative_to: Path) -> list[str]:
    """The evaluation's report linked (relative to the summary) with its rows and headline columns."""
    import os

    report_md, report_json = folder / "report.md", folder / "report.json"
    if not report_md.is_file():
        typer.secho(f"--evaluation {folder}: no report.md there (run `sam2videox evaluate --out {folder}` first)", fg="red", err=True)
        raise typer.Exit(2)
    link = os.path.relpath(report_md, relative_to)
    lines = [f"- evaluation on held-out clips: [{link}]({link})"]
    try:
        data = json.loads(report_json.read_text())
        rows = data["rows"]
        protocol = data["protocol"]
        headline = ("fvd", "mask_consistency", "fragmentation", "warping_error", "val/diff")

        def cells(row: dict) -> str:
            return ", ".join(f"{k} {row[k]:.4g}" if isinstance(row.get(k), (int, float)) else f"{k} -" for k in headline if k in row)

        lines.append(f"  - {protocol['videos_per_model']} clip(s), {protocol['frames']} frames, {protocol['sampling_steps']} sampling steps; "
                     + "; ".join(f"{name}: {cells(row)}" for name, row in rows.items()))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # the link is the point; the figures are a convenience
    return lines


def _loss_line(metrics: Path) -> str:
    """Mean losses over the first and the last few steps (single steps are dominated by the random timestep)."""
    from stages.distill.curves import read_metrics

    rows = read_metrics(metrics)
    n = max(1, min(5, len(rows) // 2))

    def mean(part: list[dict]) -> str:
        terms = {k: sum(r["terms"][k] for r in part) / len(part) for k in part[0]["terms"]}
        return f"{sum(r['loss'] for r in part) / len(part):.4f} (" + ", ".join(f"{k} {v:.4f}" for k, v in terms.items()) + ")"

    return f"- loss, mean of the first {n} steps: {mean(rows[:n])}; of the last {n}: {mean(rows[-n:])}"


def _val_lines(run: Path) -> list[str]:
    """The held-out split and the first and last validation (fixed t and noise) of a run, if it has them."""
    from stages.store.holdout import HoldoutError, read_holdout
    from stages.distill.curves import read_metrics

    try:
        split = read_holdout(run)
    except HoldoutError:
        return []
    lines = [f"- held out: {len(split.keys)} of {split.total} clips (`{run / 'holdout.json'}`), never trained on"]
    rows = read_metrics(run / "metrics.jsonl", "val") if (run / "metrics.jsonl").exists() else []
    if rows:
        def terms(r: dict) -> str:
            return ", ".join(f"{k} {v:.4f}" for k, v in r["terms"].items() if "@" not in k) + (f"; n/a: {', '.join(r['n/a'])}" if r["n/a"] else "")

        lines.append(f"- validation on {rows[-1]['clips']} held-out clip(s), step {rows[0]['step']}: {terms(rows[0])}; "
                     f"step {rows[-1]['step']}: {terms(rows[-1])}")
    return lines


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
