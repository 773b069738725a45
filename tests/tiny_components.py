"""Tiny, offline, random-weight stock components to assemble real diffusers CogVideoX pipelines in tests.

Self-contained on purpose (the canonical tiny encoder presets of stage one live in
stages/families/cogvideox/encoders.py): these exist only so the export tests can run the *stock*
CogVideoXImageToVideoPipeline / CogVideoXPipeline around the tiny student.
"""

from __future__ import annotations

import string

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline, CogVideoXPipeline
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from stages.families.cogvideox.transformer import COGVIDEOX_5B_SCHEDULER

WORDS = ("a", "dog", "cat", "horse", "runs", "walks", "jumps", "on", "the", "grass", "beach")


def tiny_tokenizer() -> T5Tokenizer:
    """T5's own tokenizer class over a Unigram vocabulary given in code (whole words, else letters)."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -5.0)]
    vocab += [("▁" + c, -8.0) for c in string.ascii_lowercase] + [(c, -7.0) for c in string.ascii_lowercase]
    vocab += [("▁" + w, -2.0) for w in WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_text_encoder(vocab_size: int, d_model: int = 32) -> T5EncoderModel:
    """One-layer T5 encoder; d_model must equal the transformer's text_embed_dim."""
    config = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return T5EncoderModel(config).eval()


def tiny_vae() -> AutoencoderKLCogVideoX:
    """4 down blocks (8x spatial, 4x temporal compression as the real VAE), channels 8-16."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        return AutoencoderKLCogVideoX(
            block_out_channels=(8, 8, 16, 16),
            latent_channels=16,
            layers_per_block=1,
            norm_num_groups=4,
            temporal_compression_ratio=4,
            sample_height=128,
            sample_width=192,
            scaling_factor=0.7,
        ).eval()


def tiny_pipeline(transformer: torch.nn.Module, task: str = "i2v") -> CogVideoXImageToVideoPipeline | CogVideoXPipeline:
    """A stock pipeline around `transformer` with the tiny VAE/T5/tokenizer and the 5B DDIM scheduler."""
    tokenizer = tiny_tokenizer()
    components = {
        "tokenizer": tokenizer,
        "text_encoder": tiny_text_encoder(len(tokenizer), transformer.config.text_embed_dim),
        "vae": tiny_vae(),
        "transformer": transformer,
        "scheduler": CogVideoXDDIMScheduler(**COGVIDEOX_5B_SCHEDULER),
    }
    cls = CogVideoXImageToVideoPipeline if task == "i2v" else CogVideoXPipeline
    pipe = cls(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe
