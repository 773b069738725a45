"""Validation during training: the student on the held-out clips, at fixed timesteps and fixed noise.

Every `eval.every` steps the trainer calls `Validator.run(step)`. For each of a
fixed list of held-out clips (the first `eval.max_clips` keys of <run>/holdout.json, sorted) and each
t in `eval.timesteps`, one forward of the student in eval mode without grad, with every random draw
(posterior sample, noise) from a generator seeded by (eval.seed, clip key, t): two runs, or two
ablations, see exactly the same inputs, so their validation numbers compare. It reports

  diff@t, diff      L_diff per timestep (mean over clips), and their mean
  lgf               KL(teacher LGF target || LGF of the raw block-L tap tokens): relations need no
                    projector (local_gram normalises), so every run has it, a LoRA-only baseline too
  lgf_projected     the same KL on the projector's output (the trained L_feat; projector runs only)
  repa_cos          cosine between projected tokens and teacher fwd features (projector runs only)
  mask_iou          IoU of the mask head's probe (logit > 0) with the teacher mask (coverage >= 50%)
                    (mask-head runs only)

Terms a run cannot measure are listed under "n/a", never filled in. Feature terms are means over
clips and timesteps. Under DDP/FSDP every rank runs the same clips (a sharded model needs every rank
in each forward); the results are the same on every rank and rank 0 writes them, as rows with
"split": "val" in metrics.jsonl and as val/* scalars in TensorBoard.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from stages.store import StoreError, join_shard_data
from stages.distill.stream import _read, collate
from stages.distill.data import TrainingData
from stages.distill.losses import lgf_loss, repa_teacher, teacher_target
from stages.distill.tap import FeatureTap

log = logging.getLogger(__name__)

TEACHER_ARRAYS = ("lgf", "fwd", "bwd", "mask")  # whichever of these the teacher column holds


def read_clips(data: TrainingData, keys: list[str], on_corrupt: str = "fail") -> list[dict]:
    """The held-out clips as batches of one ({"keys": [key], array: [1, ...] tensor}), dequantised.

    Read with the stream's joined read_row path (checksums checked), shard by shard, in `keys` order.
    A damaged clip or shard raises (on_corrupt="fail") or is logged and left out (on_corrupt="skip"),
    as the training stream does with data.on_corrupt.
    """
    snapshot = data.store.require_snapshot()
    arrays = {"encodings": data.arrays["encodings"]}
    if data.teacher is not None:
        arrays["teacher"] = [a for a in TEACHER_ARRAYS if a in data.teacher.schema]
    by_shard: dict[int, list[str]] = {}
    for key in keys:
        by_shard.setdefault(snapshot.shard_of(snapshot.find(key)), []).append(key)
    found: dict[str, dict] = {}
    damaged: list[str] = []

    def left_out(which: list[str], exc: StoreError) -> None:
        if on_corrupt == "fail":
            raise exc
        damaged.extend(which)
        log.warning("validation leaves out damaged held-out clip(s) %s (data.on_corrupt=skip): %s", ", ".join(which), exc)

    for shard, wanted in sorted(by_shard.items()):
        try:
            records, shards, rows = join_shard_data(data.columns, [c.read_shard(shard) for c in data.columns])
        except StoreError as exc:
            left_out(wanted, exc)
            continue
        for i, record in enumerate(records):
            if record["key"] not in wanted:
                continue
            sample = {"__key__": record["key"], "index": record["index"]}
            try:
                for j, col in enumerate(data.columns):
                    for name in arrays.get(col.name, []):
                        sample[name] = _read(col, shards[j], name, rows[j][i])
            except StoreError as exc:
                left_out([record["key"]], exc)
                continue
            found[record["key"]] = collate([sample])
    missing = [k for k in keys if k not in found and k not in damaged]
    if missing:
        raise StoreError(f"{data.store.url}: held-out clip(s) {', '.join(missing)} are not committed in every column "
                         f"({', '.join(c.dirname for c in data.columns)}): validation cannot read them")
    return [found[k] for k in keys if k in found]


class Validator:
    """Held-out validation of one run (see the module docstring). Built once; `run` at each validation step."""

    def __init__(self, cfg: Any, data: TrainingData, held_out: list[str], ctx: Any, forward: Callable[[dict], tuple],
                 model: torch.nn.Module, rank: int, out: Path):
        """cfg: DistillConfig. held_out: the run's held-out keys. ctx: the trainer's LossContext.
        forward: the (wrapped) DistillModel to call; model: the DistillModel itself (eval/train, tap)."""
        e = cfg.eval
        num_train = int(ctx.scheduler.config.num_train_timesteps)
        late = [t for t in e.timesteps if t >= num_train]
        if late:
            raise ValueError(f"eval.timesteps {late} are past the scheduler's {num_train} training timesteps (0..{num_train - 1})")
        self.cfg, self.ctx, self.forward, self.model, self.rank, self.out = cfg, ctx, forward, model, rank, Path(out)
        self.keys = sorted(held_out)[: e.max_clips]
        self.clips = read_clips(data, self.keys, cfg.data.on_corrupt) if self.keys and e.every > 0 else []
        self.data = data
        self.column_lgf = data.column_lgf
        self.has_teacher = data.teacher is not None
        if not self.keys:
            log.warning("eval.every=%d / sample_every=%d but the run holds out no clip (data.holdout=0, no data.holdout_keys): "
                        "validation and samples are off", e.every, e.sample_every)

    def after_step(self, step: int, writer: Any = None, annotate: Callable[[dict], dict] | None = None) -> dict | None:
        """The trainer's one call: validate when due, sample videos when due (every rank calls it).
        Returns the validation row, None when none was due. annotate: see `run`."""
        row = self.run(step, writer, annotate) if self.due(step) else None
        every = self.cfg.eval.sample_every
        if self.keys and every > 0 and step % every == 0:
            from stages.distill.parallel import is_sharded
            from stages.distill.samples import sample_held_out

            world = dist.get_world_size() if dist.is_initialized() else 1
            sample_held_out(self.cfg, self.data, self.keys, self.model, self.ctx, is_sharded(self.forward), self.rank, world, self.out, step)
        return row

    def due(self, step: int) -> bool:
        """Every eval.every optimiser steps (a multiple of it; so a resumed run validates where a straight one does)."""
        every = self.cfg.eval.every
        return bool(self.clips) and every > 0 and step % every == 0

    @torch.no_grad()
    def evaluate(self, step: int) -> dict:
        """{"step", "split": "val", "clips", "terms": {...}, "n/a": [...], "seconds"}: terms the same on every rank."""
        e, ctx = self.cfg.eval, self.ctx
        student = ctx.student  # the run's family: its own objective, as the trainer's loss
        projector = ctx.projector
        started = time.perf_counter()
        was_training = self.model.training
        self.model.eval()  # LoRA dropout off
        # runs without a projector have no tap of their own: attach one for the validation forwards
        tap = FeatureTap(self.model.transformer, self.cfg.tap.block) if self.model.tap is None and self.has_teacher else None
        sums: dict[str, list[float]] = {}
        try:
            for batch in self.clips:
                key = batch["keys"][0]
                batch = {k: (v.to(ctx.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
                ctx = self.ctx.for_batch(batch)  # a mixed-size store: this clip's grid
                for t in e.timesteps:
                    gen = torch.Generator(device="cpu").manual_seed(_seed(e.seed, key, t))
                    inputs = student.validation_inputs(ctx, batch, t, gen)  # the family's objective at fixed t and noise
                    autocast = torch.autocast("cuda", dtype=ctx.autocast_dtype) if ctx.autocast_dtype else contextlib.nullcontext()
                    with autocast:
                        output, features = self.forward(inputs.model_kwargs)
                    if tap is not None:
                        features = tap.pop()
                    l_diff, _ = student.loss_from_output(ctx, output, inputs)
                    _add(sums, f"diff@{t}", l_diff.item())
                    if self.has_teacher and features is not None:
                        self._teacher_terms(sums, features, batch, projector)
        finally:
            if tap is not None:
                tap.remove()
            self.model.train(was_training)
        terms = {k: sum(v) / len(v) for k, v in sums.items()}
        terms["diff"] = sum(terms[f"diff@{t}"] for t in e.timesteps) / len(e.timesteps)
        possible = ["lgf", "lgf_projected", "repa_cos", "mask_iou"]
        return {"step": step, "split": "val", "clips": len(self.clips), "terms": terms, "n/a": [k for k in possible if k not in terms],
                "seconds": time.perf_counter() - started}  # wall time of this validation (its cost beside the steps')

    def _teacher_terms(self, sums: dict, features: torch.Tensor, batch: dict, projector: Any) -> None:
        """Teacher agreement of one forward: tapped tokens [1, T, h, w, D], batch holds the teacher arrays."""
        lgf = self.cfg.losses.lgf
        try:
            target = teacher_target(batch, lgf, self.column_lgf)  # [1, T', h, w, k*k]
        except KeyError:  # neither a stored target for these settings nor fwd/bwd to fuse one
            target = None
        if target is not None:
            _add(sums, "lgf", lgf_loss(features.float(), target, lgf.kernel, lgf.tau, lgf.offsets).item())
        if projector is None:
            return
        projected = projector(features)  # [1, T, h, w, C]
        if target is not None:
            _add(sums, "lgf_projected", lgf_loss(projected, target, lgf.kernel, lgf.tau, lgf.offsets).item())
        if "fwd" in batch and batch["fwd"].shape[-1] == projected.shape[-1]:
            _add(sums, "repa_cos", torch.nn.functional.cosine_similarity(
                projected.float(), repa_teacher(batch, self.cfg.losses.repa.teacher).float(), dim=-1, eps=1e-6).mean().item())
        if getattr(projector, "mask_head", None) is not None and "mask" in batch:
            pred = projector.mask_logits(projected) > 0  # [1, T, h, w]
            truth = batch["mask"] >= 128  # uint8 coverage 0..255
            union = (pred | truth).sum().item()
            _add(sums, "mask_iou", (pred & truth).sum().item() / union if union else 1.0)

    def run(self, step: int, writer: Any = None, annotate: Callable[[dict], dict] | None = None) -> dict:
        """Validate (every rank), then rank 0 appends the row to metrics.jsonl and to TensorBoard.
        annotate(row) -> entries added to the row before it is written (the trainer's LGF cutoff state)."""
        row = self.evaluate(step)
        if annotate is not None:
            row.update(annotate(row))
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            if writer is not None:
                for k, v in row["terms"].items():
                    writer.add_scalar(f"val/{k}", v, step)
                writer.flush()
            log.info("step %d validation on %d held-out clip(s): %s", step, row["clips"],
                     ", ".join(f"{k} {v:.4f}" for k, v in row["terms"].items()))
        return row


def _add(sums: dict[str, list[float]], name: str, value: float) -> None:
    sums.setdefault(name, []).append(value)


def _seed(*parts) -> int:
    """A 63-bit seed from (eval seed, clip key, t), sha256-based: the same in every process and run."""
    return int.from_bytes(hashlib.sha256(repr(("val", *parts)).encode()).digest()[:8], "little") & ((1 << 63) - 1)
