"""Stage two across ranks: DDP and FSDP2 under torchrun (gloo on CPU) against one rank, resume, export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from stages.config.loader import load_config
from stages.config.distill import DistillConfig
from stages.distill.trainer import Trainer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
SAMPLE = ROOT / "configs/distill/sample.yaml"
sys.path.insert(0, str(ROOT / "tests"))


def overrides(store: str, out: Path, *extra: str) -> list[str]:
    base = [f"data.store={store}", f"out={out}", "data.num_workers=0", "train.batch_size=1", "train.checkpoint_every=100",
            "optim.warmup_steps=0", "optim.schedule=constant"]
    return [*base, *extra]


def torchrun(tmp_path: Path, name: str, spec: dict, nproc: int = 2) -> list[dict]:
    """Run tests/distributed_run.py on `nproc` gloo ranks; returns each rank's result."""
    spec = {**spec, "out_json": str(tmp_path / f"{name}.json")}
    spec_file = tmp_path / f"{name}-spec.json"
    spec_file.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(ROOT / "tests/distributed_run.py"), str(spec_file)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, "\n".join(l for l in proc.stderr.splitlines() if "Error" in l or "error" in l or "File" in l)[-6000:]
    return [
        {**json.loads((tmp_path / f"{name}-rank{r}.json").read_text()),
         "weights": load_file(str(tmp_path / f"{name}-weights-rank{r}.safetensors"))}
        for r in range(nproc)
    ]


def one_rank_fixed(store: str, out: Path, steps: int, *extra: str) -> tuple[list, dict]:
    """The same global batches on one rank, accumulating what two ranks split."""
    from distributed_run import fixed_source, full_weights

    trainer = Trainer(load_config(DistillConfig, SAMPLE, overrides(store, out, *extra)))
    source = fixed_source(trainer, steps)
    history = [trainer.train_step(source) for _ in range(steps)]
    weights = full_weights(trainer)
    trainer.close()
    return history, weights


def assert_weights_close(a: dict, b: dict, atol: float) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "hsdp"])
def test_two_ranks_match_one_rank_with_the_same_global_batch(student_store, tmp_path, strategy):
    steps = 3
    extra = [f"parallel.strategy={strategy}"] + (["parallel.shard_size=1"] if strategy == "hsdp" else [])  # 2 replicas x 1
    ranks = torchrun(tmp_path, strategy, {"mode": "fixed", "steps": steps, "export": True,
                                          "overrides": overrides(student_store, tmp_path / "run", *extra)})
    ref, ref_weights = one_rank_fixed(student_store, tmp_path / "one", steps, "optim.accumulation=2")
    # every rank logs the global batch's loss, equal to one rank accumulating the same two micro-batches
    for r in ranks:
        assert [round(m["loss"], 5) for m in r["history"]] == pytest.approx([m.loss for m in ref], abs=2e-5)
    assert_weights_close(ranks[0]["weights"], ranks[1]["weights"], atol=0)  # ranks agree exactly
    assert_weights_close(ranks[0]["weights"], ref_weights, atol=2e-5)
    moved = sum((ranks[0]["weights"][k] != 0).any().item() for k in ref_weights if "lora_B" in k)
    assert moved > 0  # LoRA B starts at zero: training changed it
    # the export (gathered on rank 0 under FSDP) is the trained LoRA, as the stock loader reads it
    from diffusers import CogVideoXImageToVideoPipeline

    exported = CogVideoXImageToVideoPipeline.lora_state_dict(ranks[0]["exported"])
    lora = {k.replace(".default.", "."): v for k, v in ranks[0]["weights"].items() if "lora_" in k}
    assert sorted(exported) == sorted(lora)
    for k, v in exported.items():
        torch.testing.assert_close(v.float(), lora[k], atol=0, rtol=0, msg=k)


def test_fsdp_full_finetune_resumes_loss_for_loss_and_exports_a_diffusers_folder(student_store, tmp_path):
    from diffusers import CogVideoXTransformer3DModel

    extra = ("parallel.strategy=fsdp", "student.full_finetune=true", "train.steps=4", "train.checkpoint_every=2",
             "optim.lr=1e-4")
    base = {"mode": "run", "overrides": overrides(student_store, tmp_path / "a", *extra), "export": True}
    straight = torchrun(tmp_path, "straight", base)
    split = overrides(student_store, tmp_path / "b", *extra)
    torchrun(tmp_path, "first", {"mode": "run", "overrides": split, "stop_at": 2})
    assert (tmp_path / "b/checkpoints/step-000002/.metadata").exists()  # a DCP checkpoint
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    rest = torchrun(tmp_path, "rest", {"mode": "run", "overrides": split, "resume": True})
    assert [m["step"] for m in rest[0]["history"]] == [3, 4]
    assert [m["loss"] for m in rest[0]["history"]] == [m["loss"] for m in straight[0]["history"][2:]]
    assert_weights_close(rest[0]["weights"], straight[0]["weights"], atol=0)

    # DCP reshards: the 2-rank checkpoint resumes on one rank (same weights, another data split from here)
    one = torchrun(tmp_path, "one", {"mode": "run", "overrides": overrides(student_store, tmp_path / "c", *extra), "resume": True}, nproc=1)
    assert [m["step"] for m in one[0]["history"]] == [3, 4]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in one[0]["history"])

    folder = Path(straight[0]["exported"])
    loaded = CogVideoXTransformer3DModel.from_pretrained(folder)
    trained = straight[0]["weights"]
    for name, p in loaded.named_parameters():
        torch.testing.assert_close(p.float(), trained[f"transformer.{name}"], atol=0, rtol=0, msg=name)


def steps_per_epoch(out: Path, rank: int) -> dict[int, int]:
    """{epoch: steps} of one rank, from its ranks/rank-<r>.jsonl."""
    counts: dict[int, int] = {}
    for line in (out / "ranks" / f"rank-{rank}.jsonl").read_text().splitlines():
        epoch = json.loads(line)["epoch"]
        counts[epoch] = counts.get(epoch, 0) + 1
    return counts


def test_on_corrupt_skip_keeps_ranks_in_step_and_resumes_loss_for_loss(student_store, tmp_path):
    """One damaged clip, data.on_corrupt=skip, two DDP ranks. The store's 4 trainable clips (2 are held
    out) lie in shards of 2 + 1 + 1; in epoch 0 rank 1 holds shard 0 alone, whose first clip is damaged.
    It used to yield one batch where rank 0 yielded two, start epoch 1 a step early and stay a step
    ahead, while only rank 0's position was checkpointed: a resume fed rank 1 other clips. Now both
    ranks take the same steps per epoch (rank 1 tops epoch 0 up) and each resumes from its own position."""
    from stages.store import FeatureStore
    from test_store_integrity import attempt_dir

    url = str(tmp_path / "store")
    shutil.copytree(student_store, url)
    store = FeatureStore(url)
    chunk = next(p for p in sorted((attempt_dir(store, "teacher", 0) / "lgf").rglob("*")) if p.is_file() and p.name != "zarr.json")
    data = bytearray(chunk.read_bytes())
    data[-3] ^= 0xFF  # shard 0, row 0: its lgf fails the commit checksum when read
    chunk.write_bytes(bytes(data))
    damaged = store.column("teacher").read_shard(0).records[0]["key"]
    extra = ("data.on_corrupt=skip", "train.steps=6", "train.checkpoint_every=2", "train.keep_last=3")
    straight = torchrun(tmp_path, "straight", {"mode": "run", "overrides": overrides(url, tmp_path / "a", *extra)})

    per_rank = [steps_per_epoch(tmp_path / "a", r) for r in range(2)]
    assert per_rank[0] == per_rank[1] == {0: 2, 1: 1, 2: 1, 3: 1, 4: 1}, per_rank
    rows = [[json.loads(line) for line in (tmp_path / "a/ranks" / f"rank-{r}.jsonl").read_text().splitlines()] for r in range(2)]
    assert all(damaged not in row["clips"] for r in rows for row in r)
    assert rows[1][0]["clips"] == rows[1][1]["clips"]  # rank 1's epoch 0: its shard's readable clip, topped up
    state = json.loads((tmp_path / "a/checkpoints/step-000002/state.json").read_text())
    assert state["positions"] == [state["position"]] * 2 == [{"epoch": 0, "batch": 2}] * 2

    # resume from the step-2 checkpoint (what a run stopped there left) on both ranks
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for later in ("step-000004", "step-000006"):
        shutil.rmtree(tmp_path / "b/checkpoints" / later)
    rest = torchrun(tmp_path, "rest", {"mode": "run", "overrides": overrides(url, tmp_path / "b", *extra), "resume": True})
    assert [m["step"] for m in rest[0]["history"]] == [3, 4, 5, 6]
    for r in range(2):
        assert [m["loss"] for m in rest[r]["history"]] == [m["loss"] for m in straight[r]["history"][2:]]
        assert (tmp_path / "b/ranks" / f"rank-{r}.jsonl").read_text() == (tmp_path / "a/ranks" / f"rank-{r}.jsonl").read_text()
    assert_weights_close(rest[0]["weights"], straight[0]["weights"], atol=0)
