"""Caption-grounded subject prompts: Grounding DINO's best box on frame 0 for the caption's subject.

`teacher.prompt: grounded` replaces "SAM2's best mask" (often background or a part on real clips)
with the usual practice of grounded tracking: a zero-shot detector (transformers'
`GroundingDinoForObjectDetection`) reads frame 0 and a text query, and its best box above
`box_threshold` becomes SAM2's box prompt. The query is the caption's subject phrase: with
`phrase: nouns`, the first of the configured nouns the caption contains as a word, else the whole
caption; lower-cased and period-terminated as Grounding DINO expects ("a dog.").

A clip whose best box scores below the threshold fails with `NoSubjectFound`, whose one-line message
(the ledger's reason) names the score, the threshold and the query; so does a clip without a caption.

No torchvision (it cannot be installed next to the CPU torch): images go through transformers'
PIL-backed `GroundingDinoImageProcessorPil`, which reads the same preprocessor_config.json as the
default torchvision-backed processor. The "tiny" preset is the real architecture with random, seeded
weights, a tiny Swin backbone built through transformers' own AutoBackbone (transformers 5 has no
timm or pretrained-backbone switch: `load_backbone` builds the backbone from its config, nothing is
downloaded) and an offline WordPiece tokenizer whose vocabulary is written here.
"""

from __future__ import annotations

import logging
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.config.extract import GroundingConfig
from stages.core.devices import resolve_dtype
from stages.teacher.prompts import Prompt

log = logging.getLogger(__name__)

TINY = "tiny"


class NoSubjectFound(ValueError):
    """The detector found no box for the clip's subject (or the clip has no caption to ask with)."""

    verdict = True  # a finding about the clip, not a bug: the worker logs one line, no traceback


@dataclass(frozen=True)
class Detection:
    """The best box of one frame: box [x0, y0, x1, y1] in frame pixels, its score (max over the
    query's tokens of sigmoid(logit), as transformers' post-processing scores a box), the query, and
    the label (the query tokens scoring above text_threshold for that box)."""

    box: list[float]
    score: float
    phrase: str
    label: str


def subject_phrase(caption: str, phrase: str = "caption", nouns: list[str] | tuple[str, ...] = ()) -> str:
    """The text query for a caption: lower-case, whitespace-normalised, ending in one period.

    phrase="nouns": the first of `nouns` (list order = priority) that occurs in the caption as a
    whole word or words, else the caption itself. An empty caption raises NoSubjectFound.
    """
    text = " ".join(caption.lower().split())
    if not text:
        raise NoSubjectFound("no caption: teacher.prompt=grounded needs the clip's caption to find its subject")
    if phrase == "nouns":
        for noun in nouns:
            n = " ".join(noun.lower().split())
            if n and re.search(rf"(?<!\w){re.escape(n)}(?!\w)", text):
                text = n
                break
    return text.rstrip(" .") + "."


class GroundingDetector:
    """Grounding DINO loaded once (per worker); `detect` runs it batched on frames with one query each."""

    def __init__(self, cfg: GroundingConfig, device: torch.device):
        from transformers import AutoTokenizer, GroundingDinoForObjectDetection
        from transformers.models.grounding_dino import GroundingDinoImageProcessorPil, GroundingDinoProcessor

        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        if cfg.model == TINY:
            model, tokenizer, image_processor = build_tiny(cfg.seed)
        else:
            try:
                model = GroundingDinoForObjectDetection.from_pretrained(cfg.model)
                tokenizer = AutoTokenizer.from_pretrained(cfg.model)
                image_processor = GroundingDinoImageProcessorPil.from_pretrained(cfg.model)
            except OSError as e:  # missing folder / unreachable hub id: one line naming the key
                raise ValueError(f"teacher.grounding.model {cfg.model!r} could not be loaded: {str(e).splitlines()[0]}") from e
        self.processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
        self.model = model.to(self.device, self.dtype).eval()
        log.info("grounding detector %s on %s (%s)", cfg.model, self.device, self.dtype)

    @torch.inference_mode()
    def detect(self, frames: list[np.ndarray], phrases: list[str]) -> list[Detection]:
        """The best box of each uint8 [H, W, 3] frame for its query, `cfg.batch` frames per forward.

        Frames of one batch must share a size (one extraction decodes every clip to video.height x
        video.width), so the image processor pads nothing and batched boxes equal single ones.
        """
        if len(frames) != len(phrases):
            raise ValueError(f"detect needs one phrase per frame: {len(frames)} frames, {len(phrases)} phrases")
        out: list[Detection] = []
        for start in range(0, len(frames), self.cfg.batch):
            out += self._detect(frames[start : start + self.cfg.batch], phrases[start : start + self.cfg.batch])
        return out

    def _detect(self, frames: list[np.ndarray], phrases: list[str]) -> list[Detection]:
        from transformers.image_transforms import center_to_corners_format

        inputs = self.processor(
            images=list(frames), text=list(phrases), padding="longest", truncation=True,
            max_length=self.model.config.max_text_len, return_tensors="pt",
        ).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        outputs = self.model(**inputs)
        probs = torch.sigmoid(outputs.logits.float())  # [B, queries, max_text_len]; padded text positions are -inf -> 0
        scores, _ = probs.max(-1)  # [B, queries]
        best = scores.argmax(-1)  # [B]
        rows = torch.arange(len(frames), device=best.device)
        boxes = center_to_corners_format(outputs.pred_boxes.float()[rows, best])  # [B, 4], relative (x0, y0, x1, y1)
        result = []
        for b, frame in enumerate(frames):
            h, w = frame.shape[:2]
            box = (boxes[b].cpu() * torch.tensor([w, h, w, h])).tolist()
            box = [min(max(box[0], 0.0), w), min(max(box[1], 0.0), h), min(max(box[2], 0.0), w), min(max(box[3], 0.0), h)]
            label = self._label(probs[b, best[b]], inputs["input_ids"][b], inputs["attention_mask"][b])
            result.append(Detection(box=box, score=float(scores[b, best[b]]), phrase=phrases[b], label=label))
        return result

    def _label(self, token_probs: torch.Tensor, input_ids: torch.Tensor, attention: torch.Tensor) -> str:
        """The box's query tokens above text_threshold ([CLS]/[SEP]/padding excluded), decoded."""
        n = int(attention.sum())
        keep = (token_probs[1 : n - 1] > self.cfg.text_threshold).nonzero().flatten() + 1
        return self.processor.tokenizer.decode(input_ids[keep].tolist()).strip().rstrip(" .")

    def prompt(self, detection: Detection) -> Prompt:
        """The detection as SAM2's box prompt, or NoSubjectFound when it is not good enough."""
        t = self.cfg.box_threshold
        if detection.score < t:
            raise NoSubjectFound(f"no subject found: best box score {detection.score:.3f} < box_threshold {t:g} for {detection.phrase!r}")
        x0, y0, x1, y1 = detection.box
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise NoSubjectFound(f"no subject found: best box {[round(v, 1) for v in detection.box]} for {detection.phrase!r} is under a pixel wide or high inside the frame")
        return Prompt(source="grounded", box=detection.box, score=detection.score, phrase=detection.phrase, label=detection.label)

    def prompts(self, frames: list[np.ndarray], captions: list[str]) -> list[Prompt | Exception]:
        """One box Prompt per (frame 0, caption), or the NoSubjectFound that clip fails with."""
        out: list[Prompt | Exception | None] = [None] * len(frames)
        asked: list[tuple[int, str]] = []
        for i, caption in enumerate(captions):
            try:
                asked.append((i, subject_phrase(caption, self.cfg.phrase, self.cfg.nouns)))
            except NoSubjectFound as exc:
                out[i] = exc
        found = self.detect([frames[i] for i, _ in asked], [p for _, p in asked]) if asked else []
        for (i, _), det in zip(asked, found, strict=True):
            try:
                out[i] = self.prompt(det)
            except NoSubjectFound as exc:
                out[i] = exc
        return out  # type: ignore[return-value]


# -- tiny preset ----------------------------------------------------------------------------

# BERT's special-token ids, at the positions Grounding DINO hard-codes them: its text self-attention
# masks split the query into phrases at ids 101 [CLS], 102 [SEP], 1012 "." and 1029 "?"
# (modeling_grounding_dino.SPECIAL_TOKENS), so the tiny vocabulary puts them exactly there.
_BERT_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}
_TINY_WORDS = (
    "a an the of and in on at with to from over under is its "
    "person man woman child dog cat horse bird car ball animal subject figure stick blob quadruped "
    "walking running jumping trotting wobbling drifts drifting moving left right "
    "red blue green black white yellow water sandy sand grass texture four legged"
).split()


def tiny_vocab() -> dict[str, int]:
    """A BERT-like WordPiece vocabulary: specials at BERT's ids, whole words, then single characters
    and ## continuations (so any lower-case ASCII text tokenizes without [UNK])."""
    vocab = dict(_BERT_IDS)
    filler = iter(i for i in range(2000) if i not in vocab.values())
    pieces = [*(c for c in string.punctuation if c not in vocab), *string.ascii_lowercase, *string.digits]
    pieces += [f"##{c}" for c in string.ascii_lowercase + string.digits] + _TINY_WORDS
    for piece in pieces:
        if piece not in vocab:
            vocab[piece] = next(filler)
    while len(vocab) <= max(vocab.values()):  # fill the gaps below the highest id, as BERT's [unused*] do
        vocab[f"[unused{len(vocab)}]"] = next(filler)
    return vocab


def tiny_tokenizer():
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab=tiny_vocab(), do_lower_case=True)


def tiny_config():
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, out_indices=[2, 3, 4])
    bert = BertConfig(vocab_size=len(tiny_vocab()), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    return GroundingDinoConfig(
        backbone_config=swin, text_config=bert, d_model=32, encoder_layers=1, decoder_layers=2,  # 2: the box head ties layers 1.. to 0
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
        num_queries=8, max_text_len=32, encoder_n_points=1, decoder_n_points=1,
    )


def build_tiny(seed: int = 0):
    """(model, tokenizer, image processor) of the tiny preset: seeded random weights, global RNG untouched;
    the image processor resizes to a 64-pixel short side (the real one: 800)."""
    from transformers import GroundingDinoForObjectDetection
    from transformers.models.grounding_dino import GroundingDinoImageProcessorPil

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(tiny_config())
    # A random model's box logits (dot products of layer-normed query and text features, std ~ sqrt(d_model))
    # saturate the sigmoid, so every box scores ~1.0 and no threshold separates anything. A trained model's
    # are O(1): scale the text side's last LayerNorm by 0.1 so the tiny preset's scores spread (~0.6-0.9).
    text_norm = model.model.encoder.layers[-1].text_enhancer_layer.layer_norm_after
    with torch.no_grad():
        text_norm.weight.mul_(0.1)
        text_norm.bias.mul_(0.1)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 128})
    return model.eval(), tiny_tokenizer(), image_processor


def save_tiny(directory: str | Path, seed: int = 0) -> Path:
    """Write the tiny preset in from_pretrained format (model, tokenizer, processor config)."""
    from transformers.models.grounding_dino import GroundingDinoProcessor

    directory = Path(directory)
    model, tokenizer, image_processor = build_tiny(seed)
    model.save_pretrained(directory)
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory
