"""`sam2videox`: the command line. Each command parses, calls one stage function, and prints what it
returns; progress bars and printing live here (pipeline/progress.py), the work in the stages."""

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


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print one red line on stderr; the caller raises the returned Exit (`raise _fail(...) from exc`)."""
    typer.secho(message, fg="red", err=True)
    return typer.Exit(code)


def _say(lines: list[tuple[str, str]]) -> None:
    """(level, text) lines from a stage: info on stdout, warn in yellow on stdout, error in red on stderr."""
    for level, text in lines:
        if level == "error":
            typer.secho(text, fg="red", err=True)
        elif level == "warn":
            typer.secho(text, fg="yellow")
        else:
            typer.echo(text)


@app.command(context_settings={"allow_extra_args": False})
def extract(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="extract config YAML (configs/extract/*.yaml)"),
    store: str = typer.Option(..., "--store", "-s", help="feature store: a folder or fsspec URL (s3://...)"),
    overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. teacher.feature=backbone ray.num_workers=4"),
    allow_failures: bool = typer.Option(False, "--allow-failures", help="exit 0 even if clips failed (they stay in the ledger)"),
    append: bool = typer.Option(False, "--append", help="add clips new in the bucket to the store, as new shards after the existing ones"),
    repair: bool = typer.Option(False, "--repair", help="verify every committed clip's checksum first and extract damaged shards again"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="extract again the committed shards whose clips failed (a file fixed since, a flaky read)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Stage one: track every clip forward and backward with SAM2 and write the store's columns."""
    from stages.config.extract import ExtractConfig
    from pipeline.progress import Progress
    from pipeline.runner import ExtractFailed, run_extract
    from stages.store import StoreError

    _setup_logging(verbose)
    cfg = _load(ExtractConfig, config, overrides or [])
    bar = Progress("extract", "clip")

    def on_shard(report) -> None:
        model = sum(report.model_s.values())
        failed = len({row["key"] for rows in report.failed.values() for row in rows})
        bar.update(report.clips, failed=failed, shard=report.shard, wall_model=f"{report.seconds / model:.2f}" if model else "-")

    try:
        summary = run_extract(cfg, store, on_shard=on_shard, on_plan=bar.set_total, append=append, repair=repair,
                              retry_failed=retry_failed)
    except (ExtractFailed, StoreError, ValueError) as exc:
        bar.close()
        raise _fail(f"extract failed: {exc}") from exc
    bar.close()
    if summary.shards_run:
        logging.getLogger("pipeline.cli").info("extract timing %s", json.dumps(summary.timing()))
    lines, code = summary.lines(cfg, store, append, allow_failures)
    _say(lines)
    if code:
        raise typer.Exit(code)


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
    from stages.store import FeatureStore, StoreError

    try:
        fstore = FeatureStore(store, json.loads(storage_options) if storage_options else None)
        if verify:
            _verify(fstore, as_json)
        elif teacher_stats:
            from pipeline.teacher_stats import format_stats
            from pipeline.teacher_stats import teacher_stats as compute_stats

            stats = compute_stats(fstore, column, threshold)
            typer.echo(json.dumps(stats, indent=1) if as_json else "\n".join(format_stats(stats)))
        elif pca is not None:
            from pipeline.inspect import render_pca

            if out is None:
                raise typer.BadParameter("--pca needs --out FILE (.mp4 or .png)")
            typer.echo(f"wrote {render_pca(fstore, pca, out, column or 'teacher')}")
        else:
            from pipeline.inspect import report_lines, store_report

            summary = store_report(fstore)
            typer.echo(json.dumps(summary, indent=1) if as_json else "\n".join(report_lines(summary, store, failures)))
    except (StoreError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    except Exception as exc:
        from stages.core.fs import credentials_hint, missing_credentials

        if not missing_credentials(exc):
            raise
        raise _fail(credentials_hint(f"{store} (--storage-options)")) from exc


def _verify(fstore, as_json: bool) -> None:
    """inspect --verify: one line per damaged clip/array (or shard), exit 1 when there is any."""
    from pipeline.inspect import verify_lines
    from stages.store.integrity import verify_store

    fstore.require_snapshot()
    report = verify_store(fstore, full=True)
    typer.echo(json.dumps(report.to_json(), indent=1) if as_json else "\n".join(verify_lines(report, fstore.url)))
    if report.damaged:
        raise typer.Exit(1)


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
    import io
    import os

    from pipeline.progress import Progress
    from stages.config.distill import DistillConfig
    from stages.distill.checkpoint.resume import ResumeMismatch
    from stages.distill.memory_plan import MemoryPlanError
    from stages.distill.run import run_distill
    from stages.store import StoreError

    _setup_logging(verbose)
    extra = ([f"data.store={store}"] if store else []) + ([f"out={out}"] if out else [])
    cfg = _load(DistillConfig, config, [*(overrides or []), *extra])
    if plan:
        _print_plan(cfg, int(os.environ.get("WORLD_SIZE", "1")), None, as_json=False)
        return
    bars: list[Progress] = []

    def on_start(rank: int, step: int) -> None:  # one bar on rank 0; the other ranks' go nowhere
        bars.append(Progress(Path(cfg.out).name, "step", total=cfg.train.steps, initial=step,
                             stream=io.StringIO() if rank != 0 else None, failures=False))

    def on_step(m, times) -> None:
        bars[0].update(1, loss=f"{m.loss:.4f}", data_wait=f"{times.data_wait_share or 0:.0%}")

    kind = {StoreError: "store error", MemoryPlanError: "memory plan", ResumeMismatch: "resume", ConfigError: "config",
            OSError: "I/O error"}
    try:
        try:
            summary = run_distill(cfg, resume, on_start, on_step)
        finally:  # the bar's last line before any error line
            for bar in bars:
                bar.close()
    except tuple(kind) as exc:  # one line, exit 2: the message names the fix
        raise _fail(f"{next(v for k, v in kind.items() if isinstance(exc, k))}: {exc}") from exc
    if summary.rank == 0:
        typer.echo(summary.line(cfg.train.steps))


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

    gib = gpu_memory if gpu_memory is not None else cfg.parallel.gpu_memory_gb
    try:  # student.checkpointing=auto: the fastest choice that fits the GPU memory given
        memory = plan_memory(cfg, world, capacity=int(gib * 2**30) if gib else None)
    except MemoryPlanError as exc:
        raise _fail(f"memory plan: {exc}") from exc
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
    from stages.distill.ablations import AblationError, run_ablations, select_ablations

    _setup_logging(verbose)

    def on_row(name: str, row: dict) -> None:
        typer.echo(f"{name:16s} loss {row['loss']:.4f}  {row['terms']}")

    try:
        files = select_ablations(ablations, only)
        run_ablations(config, files, store, out, None if full_schedule else steps,
                      on_warning=lambda name, line: typer.secho(f"{name}: {line}", fg="yellow", err=True), on_row=on_row)
    except ConfigError as exc:
        raise _fail(f"config error: {exc}") from exc
    except AblationError as exc:
        raise _fail(str(exc)) from exc


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
    """Sample a video with the stock diffusers pipeline of the run's student and task + its LoRA."""
    from stages.media.video import write_mp4
    from stages.evaluate.generate import generate_from_run
    from stages.families.sampling import resolve_sampling
    from stages.store import StoreError

    _setup_logging(False)
    try:
        sampling = resolve_sampling(device, dtype, steps)
        made = generate_from_run(run, store, key, sampling, guidance, seed, dynamic_cfg, lora=not no_lora)
    except (StoreError, ValueError) as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(out, made.frames, made.fps)
    f, h, w = made.frames.shape[:3]
    typer.echo(
        f"wrote {out} ({f} frames {h}x{w}) from '{made.key}': {made.caption!r}; {made.pipeline} ({made.task}), "
        f"{made.steps} steps on {sampling.device} in {str(sampling.dtype).removeprefix('torch.')}, guidance {guidance}"
        f"{' (dynamic)' if dynamic_cfg else ''}"
    )


@app.command()
def evaluate(
    store: str = typer.Option(..., "--store", "-s", help="the store the runs trained on (held-out clips, encoders, teacher)"),
    runs: list[Path] = typer.Option([], "--runs", "-r", help="run folders, or a folder of run folders (e.g. .../ablations); repeat or list after --runs"),
    out: Path = typer.Option(..., "--out", "-o", help="evaluation folder: report.md/.json/.png, samples/, grids/"),
    base: bool = typer.Option(False, "--base", help="also evaluate the base model (no LoRA) as a row"),
    clips: Optional[int] = typer.Option(None, "--clips", help="only the first N held-out clips (sorted by key)"),
    seed: int = typer.Option(0, "--seed", help="first sampling seed"),
    seeds: int = typer.Option(1, "--seeds", help="samples per clip and model (seeds seed .. seed+N-1, the same for every model)"),
    reference: Optional[str] = typer.Option(None, "--reference", help="the row the others are compared to (default: base with --base)"),
    judge_model: str = typer.Option("auto", "--judge-model", help="SAM2 config that tracks the samples (auto: the teacher's other size)"),
    judge_checkpoint: Optional[str] = typer.Option("auto", "--judge-checkpoint", help="its official checkpoint (auto: beside the teacher's)"),
    judge_prompt: str = typer.Option("auto", "--judge-prompt", help="auto | grounded | center: the subject on a sample's own frame 0"),
    steps: Optional[int] = typer.Option(None, "--steps", help="denoising steps (default: 50 on cuda, 8 on cpu)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | cuda:N (default: cuda where a GPU exists)"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bfloat16 | float16 | float32"),
    guidance: float = typer.Option(6.0, "--guidance", help="classifier-free guidance scale"),
    fvd_backbone: str = typer.Option("tiny", "--fvd-backbone", help="FVD detector: tiny | videomae:PATH | i3d:PATH | stylegan-v:PATH | PATH"),
    fvd_min_videos: int = typer.Option(32, "--fvd-min-videos", help="below this many videos a side FVD is n/a"),
    no_vbench: bool = typer.Option(False, "--no-vbench", help="skip VBench even where its env exists"),
    holdout: Optional[float] = typer.Option(None, "--holdout", help="held-out clips by the split rule at this fraction (instead of the runs' holdout.json); every run must have held each out"),
    holdout_key: list[str] = typer.Option([], "--holdout-key", help="a held-out clip key (repeat); with or instead of --holdout; every run must have held it out"),
    student: Optional[str] = typer.Option(None, "--student", help="the base model's student when there are no runs"),
    ema: bool = typer.Option(False, "--ema", help="also each run's EMA weights (lora_ema/, trained with train.ema.decay) as a row RUN-ema"),
    extra_runs: list[Path] = typer.Argument(None, help="more run folders (so --runs A B C works)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Compare runs (and the base model) on the held-out clips: samples, video/structure metrics, FVD, VBench, one report."""
    from stages.evaluate.evaluate import EvaluateOptions, evaluate as run_evaluate
    from stages.evaluate.runs import EvaluateError

    _setup_logging(verbose)
    opts = EvaluateOptions(store=store, out=out, runs=[*runs, *(extra_runs or [])], base=base, clips=clips, seed=seed, seeds=seeds,
                           reference=reference, steps=steps, device=device, dtype=dtype, guidance=guidance, fvd_backbone=fvd_backbone,
                           fvd_min_videos=fvd_min_videos,
                           vbench=not no_vbench, holdout=holdout, holdout_keys=list(holdout_key), student=student, ema=ema,
                           judge=_judge(judge_model, judge_checkpoint, judge_prompt))
    try:
        result = run_evaluate(opts)
    except EvaluateError as exc:
        raise _fail(f"evaluate: {exc}") from exc
    p = result.protocol
    typer.echo(f"evaluated {', '.join(result.rows)} on {p['clips_per_model']} held-out clip(s) x {len(p['seeds'])} seed(s) ({p['frames']} frames "
               f"{p['resolution'][0]}x{p['resolution'][1]}, {p['sampling_steps']} steps, seeds {p['seeds']}) in {result.seconds['total']:.1f} s")
    typer.echo(f"report: {out / 'report.md'}")


def _judge(model: str, checkpoint: Optional[str], prompt: str):
    from stages.evaluate.judge import JudgeConfig

    if prompt not in ("auto", "grounded", "center"):
        raise _fail(f"--judge-prompt must be auto, grounded or center, got {prompt!r}")
    return JudgeConfig(model=model, checkpoint=None if checkpoint in (None, "none") else checkpoint, prompt=prompt)


@app.command()
def score(
    videos: Path = typer.Option(..., "--videos", help="one sub-folder per method, the same file names in each (+ optional real/)"),
    out: Path = typer.Option(..., "--out", "-o", help="report.md/.json/.png and ledger.json"),
    reference: Optional[str] = typer.Option(None, "--reference", help="the method the others are compared to (default: first by name)"),
    judge_model: str = typer.Option("auto", "--judge-model", help="SAM2 config that tracks videos without <name>.npz masks"),
    judge_checkpoint: Optional[str] = typer.Option(None, "--judge-checkpoint", help="its official checkpoint (none: random weights)"),
    judge_prompt: str = typer.Option("auto", "--judge-prompt", help="auto | grounded | center: the subject on each video's frame 0"),
    no_masks: bool = typer.Option(False, "--no-masks", help="ignore <name>.npz ground-truth masks: always ask the judge"),
    fvd_backbone: str = typer.Option("tiny", "--fvd-backbone", help="FVD detector against real/ when it exists (as evaluate's)"),
    fvd_min_videos: int = typer.Option(32, "--fvd-min-videos", help="below this many videos a side FVD is n/a"),
    no_vbench: bool = typer.Option(False, "--no-vbench", help="skip VBench even where its env exists"),
    skip_unreadable: bool = typer.Option(False, "--skip-unreadable", help="exit 0 when some videos could not be read (they are ledgered)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Score videos made elsewhere (published samples, another trainer's outputs): the same metrics, judge and report."""
    from stages.evaluate.runs import EvaluateError
    from stages.evaluate.score_videos import ScoreOptions, score as run_score

    _setup_logging(verbose)
    judge = _judge(judge_model, judge_checkpoint, judge_prompt)
    opts = ScoreOptions(videos=videos, out=out, reference=reference, judge=judge, use_masks=not no_masks,
                        fvd_backbone=fvd_backbone, fvd_min_videos=fvd_min_videos, vbench=not no_vbench)
    try:
        result = run_score(opts)
    except EvaluateError as exc:
        raise _fail(f"score: {exc}") from exc
    typer.echo(f"scored {', '.join(result.methods)} on {len(result.names)} paired video(s); report: {out / 'report.md'}")
    if result.ledger and not skip_unreadable:
        first = result.ledger[0]
        raise _fail(f"score: {first['reason']} ({len(result.ledger)} unreadable video(s) ledgered in {out / 'ledger.json'}; "
                    f"their names were left out of every method)")


@app.command()
def report(
    store: str = typer.Option(..., "--store", "-s"),
    run: Path = typer.Option(..., "--run"),
    out: Path = typer.Option(..., "--out", "-o", help="summary .md (a .json twin is written beside it)"),
    evaluation: Optional[Path] = typer.Option(None, "--evaluation", help="an `evaluate` folder: its report.md is linked"),
    files: list[str] = typer.Argument(None, help="extra produced files to list (videos, pictures)"),
) -> None:
    """Write a run's summary: store figures, training figures, and where everything is."""
    from pipeline.run_report import ReportError, write_run_report
    from stages.store import StoreError

    try:
        path = write_run_report(store, run, out, evaluation, files or [])
    except (StoreError, ReportError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(path.read_text())


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
