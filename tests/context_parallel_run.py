"""Run under torchrun by tests/distill/test_context_parallel.py (and tests/benchmarks/gpu_suite.sh): the tiny Wan
transformer's forward + backward with diffusers' context parallelism over every rank, against the same weights
on the whole sequence in this process. Rank 0 writes the differences as JSON.

    python -m torch.distributed.run --nproc_per_node 2 tests/context_parallel_run.py OUT.json [cpu|cuda] [t2v|ti2v]

t2v: the tiny Wan 2.1 T2V, one timestep per sample; ti2v: the tiny Wan 2.2 TI2V with per-token timesteps
[B, T*h*w] (0 on latent frame 0), which diffusers' plan splits with the tokens.

The loss reads both the output and the tapped block-1 tokens (as LGF does), so the tap's gather is checked
with the model's own. A context rank's weight gradient is its tokens' share; their sum over the group is
the one-rank gradient (stages/distill/parallel.py reduces it so): "grad_sum" measures that sum, "grad_local"
how far one rank's share alone is from it (it must be far: the split happened).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.distill import parallel  # noqa: E402
from stages.distill.tap import FeatureTap  # noqa: E402
from stages.families.registry import student_of  # noqa: E402
from stages.families.wan.family import build_tiny_transformer  # noqa: E402


def loss_of(model: torch.nn.Module, tap: FeatureTap, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out = model(**kwargs, return_dict=False)[0]  # [B, C, T, H8, W8], whole on every rank
    feats = tap.pop()  # [B, T, h, w, D]
    return out.square().mean() + 0.5 * feats.tanh().square().mean(), out, feats


def main() -> None:
    out_json = Path(sys.argv[1])
    kind = sys.argv[2] if len(sys.argv) > 2 else "cpu"
    task = sys.argv[3] if len(sys.argv) > 3 else "t2v"
    dist.init_process_group("nccl" if kind == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # the same weights and inputs on every rank
    ref = build_tiny_transformer(task).float().to(device)
    model = copy.deepcopy(ref)
    student = student_of(ref)
    g = torch.Generator().manual_seed(1)
    tokens = 3 * 4 * 6  # latent 3 x 8 x 12, patch (1, 2, 2)
    channels = int(ref.config.in_channels)
    timestep = torch.tensor([500.0]) if task == "t2v" else torch.cat([torch.zeros(1, 4 * 6), torch.full((1, 2 * 4 * 6), 500.0)], 1)
    kwargs = {"hidden_states": torch.randn(1, channels, 3, 8, 12, generator=g).to(device), "timestep": timestep.to(device),
              "encoder_hidden_states": torch.randn(1, 16, 32, generator=g).to(device)}

    ref_tap = FeatureTap(ref, 1, student)
    ref_loss, ref_out, ref_feats = loss_of(ref, ref_tap, kwargs)
    ref_loss.backward()

    mesh = parallel.context_mesh(world, world, device)
    student.enable_context_parallel(model, mesh, tokens)
    seen: list[int] = []
    student.blocks(model)[1].register_forward_hook(lambda m, a, o: seen.append(o.shape[1]))
    tap = FeatureTap(model, 1, student)
    loss, out, feats = loss_of(model, tap, kwargs)
    loss.backward()

    def worst(pairs) -> float:
        return max(float((a - b).abs().max()) for a, b in pairs)

    names = [n for n, p in ref.named_parameters() if p.grad is not None]
    local = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    summed = {n: g.clone() for n, g in local.items()}
    for g_ in summed.values():
        dist.all_reduce(g_, group=mesh["ulysses"].get_group())  # the group's gradient: the sum of its shares
    ref_grads = dict((n, p.grad) for n, p in ref.named_parameters() if p.grad is not None)
    scale = max(float(g_.abs().max()) for g_ in ref_grads.values())
    result = {
        "world": world, "device": str(device), "task": task, "block_tokens": seen[0], "tokens": tokens,
        "loss": [float(ref_loss), float(loss)],
        "out": worst([(out, ref_out)]), "feats": worst([(feats, ref_feats)]),
        "grad_names": sorted(local) == sorted(names),
        "grad_sum": worst((summed[n], ref_grads[n]) for n in names) / scale,
        "grad_local": worst((local[n], ref_grads[n]) for n in names) / scale,
        "mesh": {k: mesh[k].size() for k in ("dp", "ring", "ulysses")},
    }
    if rank == 0:
        out_json.write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
