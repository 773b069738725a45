"""Run under torchrun by tests/distill/test_parallel.py: one stage-two run per rank, results written as JSON.

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_run.py SPEC.json

SPEC: {"overrides": [...], "mode": "fixed" | "run", "steps": n, "stop_at": n|null, "resume": bool, "out_json": path,
       "validate": bool (each rank's held-out validation terms after training, under "val")}
Each rank's JSON also holds the stream's batches_per_epoch(0) and the final stream position.
"fixed" feeds every rank the same global sequence of micro-batches (rank r takes micro-batch
step * world * accum + r * accum + m), so any world size sees the same global batches.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.config.loader import load_config  # noqa: E402
from stages.config.distill import DistillConfig  # noqa: E402
from stages.distill.trainer import Trainer  # noqa: E402


def all_samples(trainer: Trainer) -> list[dict]:
    """Every joined clip of the store in shard order, through the stream's own reader."""
    shards = sorted(trainer.stream.clip_counts)
    return list(trainer.stream._read_shards(iter({"url": str(s)} for s in shards)))


def fixed_source(trainer: Trainer, steps: int):
    from stages.distill.stream import collate

    samples, accum, bs = all_samples(trainer), trainer.cfg.optim.accumulation, trainer.cfg.train.batch_size
    for step in range(steps):
        for m in range(accum):
            g = (step * trainer.dp_world + trainer.dp_rank) * accum + m  # the ranks of a context group: one batch
            picked = [samples[(g * bs + i) % len(samples)] for i in range(bs)]
            yield collate(picked), 0.0


def full_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Trainable weights, unsharded, on every rank."""
    if trainer.sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=False, ignore_frozen_params=True)
        state = get_model_state_dict(trainer.ddp, options=opts)
        trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
        return {k: v.detach().float().cpu().contiguous() for k, v in state.items() if k in trained}
    return {n: p.detach().float().cpu().contiguous() for n, p in trainer.model.named_parameters() if p.requires_grad}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    cfg = load_config(DistillConfig, ROOT / "configs/distill/sample.yaml", spec["overrides"])
    trainer = Trainer(cfg, resume=spec.get("resume", False))
    if spec["mode"] == "fixed":
        source = fixed_source(trainer, spec["steps"])
        history = [trainer.train_step(source) for _ in range(spec["steps"])]
    else:
        history = trainer.run(stop_at=spec.get("stop_at"))
    # every rank validates the same held-out clips (a sharded model needs all ranks in each forward)
    val = trainer.validator.evaluate(trainer.step)["terms"] if spec.get("validate") else None
    exported = trainer.finish() if spec.get("export") else None
    out = Path(spec["out_json"])
    rank = trainer.rank
    save_file(full_weights(trainer), str(out.with_name(f"{out.stem}-weights-rank{rank}.safetensors")))
    rows = [{"step": m.step, "loss": m.loss, "terms": m.terms, "grad_norms": m.grad_norms, "clips": m.clips, "epoch": m.epoch} for m in history]
    out.with_name(f"{out.stem}-rank{rank}.json").write_text(json.dumps({
        "history": rows, "exported": str(exported) if exported else None, "val": val,
        "batches_per_epoch": trainer.stream.batches_per_epoch(0), "position": trainer.position.to_json()}))
    trainer.close()


if __name__ == "__main__":
    main()
