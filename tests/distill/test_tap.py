"""FeatureTap: block-L video tokens, once per forward, on the graph, also under gradient checkpointing."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import set_checkpoint_early_stop

from stages.families.cogvideox.transformer import apply_lora, load_student, rotary_embedding
from stages.distill.tap import FeatureTap

FRAMES = 3


@pytest.fixture()
def student():
    transformer, _ = load_student("tiny", "i2v")
    apply_lora(transformer, rank=4, alpha=8.0)
    with torch.no_grad():  # non-zero B so LoRA A also gets gradients
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    transformer.train()
    return transformer


def _inputs(config):
    g = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(2, FRAMES, config.in_channels, config.sample_height, config.sample_width, generator=g),
        "encoder_hidden_states": torch.randn(2, config.max_text_seq_length, config.text_embed_dim, generator=g),
        "timestep": torch.tensor([10, 900]),
        "image_rotary_emb": rotary_embedding(config, FRAMES, config.sample_height, config.sample_width),
        "return_dict": False,
    }


def _manual_block_output(transformer, kwargs, block: int) -> torch.Tensor:
    """Blocks 0..block run by hand, as CogVideoXTransformer3DModel.forward runs them -> [B, T, h, w, D]."""
    hidden, text = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
    emb = transformer.time_embedding(transformer.time_proj(kwargs["timestep"]).to(hidden.dtype))
    tokens = transformer.patch_embed(text, hidden)
    text_tokens, video = tokens[:, : text.shape[1]], tokens[:, text.shape[1] :]
    for b in transformer.transformer_blocks[: block + 1]:
        video, text_tokens = b(video, text_tokens, emb, kwargs["image_rotary_emb"])
    cfg = transformer.config
    return video.reshape(video.shape[0], FRAMES, cfg.sample_height // 2, cfg.sample_width // 2, -1)


def test_tap_equals_a_manual_run(student):
    kwargs = _inputs(student.config)
    student.eval()
    with torch.no_grad(), FeatureTap(student, 1) as tap:
        student(**kwargs)
        torch.testing.assert_close(tap.features, _manual_block_output(student, kwargs, 1), rtol=0, atol=1e-6)
        assert tap.features.shape == (2, FRAMES, 8, 12, 32)


@pytest.mark.parametrize("early_stop", [True, False])
def test_once_per_forward_under_checkpointing_and_grads_reach_block_0(student, early_stop):
    student.enable_gradient_checkpointing()
    naive = []  # what a bare forward hook sees: it fires again in the recompute
    student.transformer_blocks[1].register_forward_hook(lambda m, a, o: naive.append(o[0]))
    kwargs = _inputs(student.config)
    with set_checkpoint_early_stop(early_stop), FeatureTap(student, 1) as tap:
        student(**kwargs)
        features = tap.features
        assert tap.captures == 1 and features.grad_fn is not None
        features.float().square().mean().backward()  # the feature loss alone
        if not early_stop:
            assert len(naive) == 2  # the recompute fired the block's hooks again...
            assert tap.ignored == 1  # ...and the tap ignored it
        assert tap.features is features and tap.captures == 1
    lora_b = lambda i: student.transformer_blocks[i].attn1.to_q.lora_B.default.weight.grad  # noqa: E731
    assert lora_b(0) is not None and lora_b(0).abs().sum() > 0
    assert lora_b(1).abs().sum() > 0
    assert lora_b(2) is None  # blocks after L get nothing from a feature loss


def test_each_forward_resets_and_pop_releases(student):
    kwargs = _inputs(student.config)
    tap = FeatureTap(student, 2)
    with torch.no_grad():
        student(**kwargs)
        first = tap.pop()
        with pytest.raises(RuntimeError, match="no features captured"):
            tap.features
        kwargs["timestep"] = torch.tensor([500, 500])
        student(**kwargs)
    assert tap.captures == 1 and not torch.equal(tap.features, first)
    tap.remove()
    with torch.no_grad():
        student(**kwargs)
    with pytest.raises(RuntimeError):
        tap.features  # removed: nothing captured any more


def test_block_out_of_range(student):
    with pytest.raises(ValueError, match="out of range: the transformer has 3 blocks"):
        FeatureTap(student, 3)
