"""The exported LoRA is what the stock diffusers CogVideoX pipelines load, at the trained scale.

A tiny student gets a non-zero LoRA (alpha != rank, so a lost scale would show), is exported, and
the stock CogVideoXImageToVideoPipeline loads it with load_lora_weights: its 2-step output must
differ from the base model's and equal the output of the training model with the LoRA merged in.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from PIL import Image
from tiny_components import tiny_pipeline

from stages.distill.export import PROJECTOR_DIR, export_lora, load_lora_for_training
from stages.distill.projector import Projector, ProjectorSpec, load_projector
from stages.families.cogvideox.transformer import apply_lora, load_student, rotary_embedding

RANK, ALPHA = 4, 8.0
FRAMES = 49  # 13 latent frames: the tiny model's sample_frames, so its learned positional embeddings are used


@pytest.fixture(scope="module")
def trained():
    """A tiny I2V student whose LoRA is non-zero, as after training."""
    transformer, _ = load_student("tiny", "i2v")
    apply_lora(transformer, RANK, ALPHA)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return transformer


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    projector = Projector(ProjectorSpec(32, 8, hidden=16, layers=2, mask_head=True))
    out = export_lora(trained, tmp_path_factory.mktemp("export") / "lora", projector=projector, info={"step": 7})
    return out, projector


def _generate(pipe) -> torch.Tensor:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 192, 3), dtype=np.uint8))
    return pipe(
        image=image, prompt="a dog runs on the grass", height=128, width=192, num_frames=FRAMES,
        num_inference_steps=2, guidance_scale=2.0, max_sequence_length=16,
        generator=torch.Generator().manual_seed(0), output_type="latent",
    ).frames


def test_stock_i2v_pipeline_loads_the_lora_at_its_trained_scale(trained, exported):
    out_dir, _ = exported
    assert (out_dir / "pytorch_lora_weights.safetensors").is_file()
    base, _ = load_student("tiny", "i2v")
    pipe = tiny_pipeline(base, "i2v")
    base_out = _generate(pipe)
    pipe.load_lora_weights(str(out_dir))  # the user's path: stock pipeline, stock loader
    lora_out = _generate(pipe)

    for module in trained.modules():  # the training model with W + (alpha / r) B A merged in
        if isinstance(module, BaseTunerLayer):
            module.merge()
    try:
        merged_out = _generate(tiny_pipeline(trained, "i2v"))
    finally:
        for module in trained.modules():
            if isinstance(module, BaseTunerLayer):
                module.unmerge()
    assert lora_out.shape == (1, 13, 16, 16, 24)
    assert (lora_out - base_out).abs().max() > 1e-2
    torch.testing.assert_close(lora_out, merged_out, rtol=1e-4, atol=1e-4)


def test_t2v_pipeline_loads_the_same_file(trained, exported):
    out_dir, _ = exported
    t2v, _ = load_student("tiny", "t2v")
    pipe = tiny_pipeline(t2v, "t2v")
    pipe.load_lora_weights(str(out_dir), adapter_name="sam2videox")
    assert t2v.transformer_blocks[0].attn1.to_q.scaling["sam2videox"] == ALPHA / RANK
    loaded = get_peft_model_state_dict(t2v, adapter_name="sam2videox")
    original = get_peft_model_state_dict(trained)
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[k], original[k]) for k in original)


def test_training_resume_and_projector_round_trip(trained, exported):
    out_dir, projector = exported
    fresh, _ = load_student("tiny", "i2v")
    apply_lora(fresh, RANK, ALPHA)
    load_lora_for_training(fresh, out_dir)
    original = get_peft_model_state_dict(trained)
    assert all(torch.equal(get_peft_model_state_dict(fresh)[k], v) for k, v in original.items())

    loaded = load_projector(out_dir / PROJECTOR_DIR)
    assert loaded.spec == projector.spec
    x = torch.randn(1, 2, 3, 4, 32)
    torch.testing.assert_close(loaded(x), projector(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded.mask_logits(loaded(x)), projector.mask_logits(projector(x)), rtol=0, atol=0)
    assert '"step": 7' in (out_dir / "sam2videox.json").read_text()


def test_training_rope_equals_the_pipelines(trained):
    """The RoPE used in training is the one the I2V pipeline computes at inference, also off the sample size."""
    pipe = tiny_pipeline(trained, "i2v")
    for height, width, frames in ((128, 192, 13), (96, 192, 3)):
        expected = pipe._prepare_rotary_positional_embeddings(height, width, frames, torch.device("cpu"))
        got = rotary_embedding(trained.config, frames, height // 8, width // 8)
        for a, b in zip(got, expected):
            assert torch.equal(a, b)


def test_export_refuses_a_model_without_adapter(tmp_path):
    plain, _ = load_student("tiny", "i2v")
    with pytest.raises(ValueError, match="no LoRA adapter"):
        export_lora(plain, tmp_path)


def test_sampling_defaults_and_refusals():
    from stages.families.sampling import CPU_STEPS, GPU_STEPS, resolve_sampling

    default = resolve_sampling()
    if torch.cuda.is_available():
        assert (default.device.type, default.dtype, default.steps) == ("cuda", torch.bfloat16, GPU_STEPS)
    else:
        assert (default.device.type, default.dtype, default.steps) == ("cpu", torch.float32, CPU_STEPS)
    assert resolve_sampling("cpu", "bfloat16", 4) == resolve_sampling("cpu", "float32", 4)  # CPU runs fp32
    for args, message in [((None, "half"), "--dtype 'half'"), (("tpu",), "--device 'tpu'"), ((None, None, 0), "--steps must be >= 1")]:
        with pytest.raises(ValueError, match=message):
            resolve_sampling(*args)
