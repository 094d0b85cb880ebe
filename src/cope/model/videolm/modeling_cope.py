"""``CopeVideoLM``: a LLaVA-OneVision VideoLM that reads I-frame tokens interleaved with Δ-tokens.

Parts (paper §3.2, Fig. 1):
* the base model, a transformers ``LlavaOnevisionForConditionalGeneration``: frozen SigLIP vision
  tower, 2-layer GELU projector, learned ``image_newline``, and the LLM;
* the Δ-encoder (``cope.model.delta.DeltaEncoder``): a P-frame's motion vectors + residual → 8
  tokens at the vision tower's width, projected by the *same* projector as image tokens.

Layout of the visual sequence (LLaVA-Video's "grid" layout, built here rather than by the HF video
path, which emits a single newline per video):
* RGB frame: tower → projector → 2×2 bilinear pool to S×S → a newline after each row: S·(S+1);
* P-frame: Δ-encoder → projector → R rows of C tokens, a newline after each row: R·(C+1);
* all blocks in the plan's temporal order, spliced into the prompt at the video placeholder.

Shapes: N frames, T visual positions, L text tokens, d = vision width, D = LLM width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cope.errors import CopeInputError
from cope.hub import load_safetensors, save_safetensors
from cope.model.delta import DeltaEncoder
from cope.model.inputs import VisualInput, interleave
from cope.model.videolm.configuration_cope import CopeConfig, base_only_config, read_config
from cope.model.videolm.encoding import encode_video
from cope.model.videolm.generation import ChatSession, stream
from cope.model.videolm.loading import BASE_SUBFOLDER, DELTA_WEIGHTS_NAME, load_base, resolve_checkpoint
from cope.model.videolm.prompting import build_prompt
from cope.model.videolm.tower_memo import TowerFeatureMemo
from cope.model.vision import bilinear_pool, frames_to_pixels, vision_features, with_row_newlines

IGNORE_INDEX = -100


@dataclass
class TrainingBatch:
    inputs_embeds: torch.Tensor  # (B, Lmax, D), right-padded with zeros
    attention_mask: torch.Tensor  # (B, Lmax) long, 1 = real position
    labels: torch.Tensor  # (B, Lmax) long, −100 on visual positions, padding and masked text


@dataclass
class CopeLMOutput:
    loss: torch.Tensor  # scalar: mean cross-entropy over the batch's supervised tokens
    num_tokens: int  # supervised (label ≠ −100 after the shift) tokens in the batch


class CopeVideoLM(nn.Module):
    """Vision tower + projector + Δ-encoder + LLM, with video encoding, generation and chat.

    Build one with ``from_pretrained`` (a CoPE checkpoint, or a bare LLaVA-OneVision model for the
    modes that need no Δ-encoder) or with the builders (``paper_7b``, ``tiny_random``).
    """

    def __init__(
        self,
        config: CopeConfig,
        base: nn.Module,
        tokenizer,
        delta_encoder: DeltaEncoder | None = None,
        name: str | None = None,
        base_source: str | None = None,
    ):
        super().__init__()
        # The config describes the parts actually given (a Δ-encoder or none).
        self.config = replace(
            config, delta_encoder=None if delta_encoder is None else delta_encoder.config.to_dict()
        )
        # LlavaOnevisionForConditionalGeneration; Any: its sub-modules are attributes type checkers cannot see.
        self.base: Any = base
        self.delta_encoder = delta_encoder
        self.tokenizer = tokenizer
        self.name = name or config.base_model  # what it was loaded from (reported by `cope ask`)
        self.base_source = base_source or config.base_model  # where the base weights came from
        self._check_compatible()
        self.placeholder_id = self._placeholder_id()
        self.stop_token_ids = self._stop_token_ids()
        self.vision_tower.requires_grad_(config.train_vision_tower)  # LLaVA-Video: frozen
        # Set by training when the tower is frozen (``TowerFeatureMemo``); None: no memo.
        self.tower_memo: TowerFeatureMemo | None = None

    # ------------------------------------------------------------------ parts and checks

    @property
    def vision_tower(self) -> nn.Module:
        return self.base.model.vision_tower

    @property
    def projector(self) -> nn.Module:
        return self.base.model.multi_modal_projector

    @property
    def image_newline(self) -> torch.Tensor:
        return self.base.model.image_newline

    @property
    def language_model(self) -> nn.Module:
        return self.base.model.language_model

    @property
    def lm_head(self) -> nn.Module:
        return self.base.lm_head

    @property
    def device(self) -> torch.device:
        return self.image_newline.device

    @property
    def dtype(self) -> torch.dtype:
        return self.image_newline.dtype

    @property
    def hidden_size(self) -> int:
        return self.image_newline.shape[0]

    @property
    def image_size(self) -> int:
        return self.base.config.vision_config.image_size

    @property
    def vision_grid(self) -> int:
        """G: patches per side of the vision tower's grid (27 for SigLIP-so400m-patch14-384)."""
        vision = self.base.config.vision_config
        return vision.image_size // vision.patch_size

    def _check_compatible(self) -> None:
        layout, base_config = self.config.layout, self.base.config
        pooled = math.ceil(self.vision_grid / 2)
        if layout.image_side != pooled:
            raise CopeInputError(
                f"{self.name}: layout image_side {layout.image_side} does not match the vision tower "
                f"({self.vision_grid}×{self.vision_grid} patches pool to {pooled}×{pooled})"
            )
        if not isinstance(base_config.vision_feature_layer, int):
            raise CopeInputError(f"{self.name}: multi-layer vision features are not supported")
        if self.delta_encoder is not None:
            encoder_config = self.delta_encoder.config
            if encoder_config.num_delta_tokens != layout.delta_tokens:
                raise CopeInputError(
                    f"{self.name}: the Δ-encoder emits {encoder_config.num_delta_tokens} tokens per P-frame, "
                    f"the layout expects {layout.delta_rows}×{layout.delta_cols}"
                )
            if encoder_config.output_dim != base_config.vision_config.hidden_size:
                raise CopeInputError(
                    f"{self.name}: Δ-encoder output width {encoder_config.output_dim} ≠ vision width "
                    f"{base_config.vision_config.hidden_size} (the projector takes both)"
                )

    def _placeholder_id(self) -> int:
        token = self.config.video_placeholder
        ids = self.tokenizer(token, add_special_tokens=False).input_ids
        if len(ids) != 1 or ids[0] == self.tokenizer.unk_token_id:
            raise CopeInputError(
                f"{self.name}: the video placeholder {token!r} is not one token of the tokenizer"
            )
        return ids[0]

    def _stop_token_ids(self) -> frozenset[int]:
        """EOS and the chat template's end-of-turn tokens: generation stops at any of them."""
        eos = getattr(self.base.generation_config, "eos_token_id", None)
        ids: set[int | None] = set(eos if isinstance(eos, list) else [eos])
        ids.add(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[t] for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>") if t in vocab)
        return frozenset(i for i in ids if i is not None)

    # ------------------------------------------------------------------ visual tokens

    def image_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (N, H, W, 3) → (N, S·(S+1), D), in chunks of ``vision_batch_size`` frames."""
        frames = torch.as_tensor(frames)
        if frames.shape[0] == 0:
            return self._empty(self.config.layout.iframe_tokens)
        chunks = frames.split(self.config.vision_batch_size)
        return torch.cat([self.tokens_from_features(self.tower_features(chunk)) for chunk in chunks])

    def tower_features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (n, H, W, 3) → the vision tower's (n, G², C) at ``vision_feature_layer``."""
        pixels = frames_to_pixels(frames, self.image_size).to(self.device, self.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.train_vision_tower):
            return vision_features(self.vision_tower, pixels, self.base.config.vision_feature_layer)

    def tokens_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Tower features (n, G², C) → image-token blocks (n, S·(S+1), D)."""
        projected = self.projector(features)  # (n, G², D): LLaVA-Video projects, then pools
        pooled = bilinear_pool(projected)  # (n, S², D)
        return with_row_newlines(pooled, self.config.layout.image_side, self.image_newline)

    def delta_tokens(self, mv: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """MVs (N, H, W, 2) px + residuals (N, H, W, 3) → (N, R·(C+1), D) via the shared projector."""
        if self.delta_encoder is None:
            raise CopeInputError(
                f"{self.name}: this model has no Δ-encoder; read the video in mode dense, iframes-only or delta-zero"
            )
        layout = self.config.layout
        if mv.shape[0] == 0:
            return self._empty(layout.pframe_tokens)
        encoder_dtype = next(self.delta_encoder.parameters()).dtype
        blocks = []
        for mv_chunk, res_chunk in zip(
            torch.as_tensor(mv).split(self.config.delta_batch_size),
            torch.as_tensor(residual).split(self.config.delta_batch_size),
            strict=True,
        ):
            tokens = self.delta_encoder(
                mv_chunk.to(self.device, encoder_dtype), res_chunk.to(self.device, encoder_dtype)
            )  # (n, R·C, d): motion tokens, then residual tokens
            projected = self.projector(tokens.to(self.dtype))  # (n, R·C, D)
            blocks.append(with_row_newlines(projected, layout.delta_rows, self.image_newline))
        return torch.cat(blocks)

    def zero_delta_tokens(self, count: int) -> torch.Tensor:
        """The ``delta-zero`` ablation (paper H.3): each P-frame's projected Δ-tokens are 0, the
        row newlines stay, so the sequence keeps its length and temporal structure."""
        layout = self.config.layout
        zeros = torch.zeros(
            count, layout.delta_tokens, self.hidden_size, device=self.device, dtype=self.dtype
        )
        return with_row_newlines(zeros, layout.delta_rows, self.image_newline)

    def embed_visual(self, visual: VisualInput, zero_deltas: bool = False) -> torch.Tensor:
        """One video's entries → (T, D), image and Δ blocks interleaved in ``visual.kinds`` order."""
        return self.embed_visuals([visual], zero_deltas)[0]

    def embed_visuals(self, visuals: Sequence[VisualInput], zero_deltas: bool = False) -> list[torch.Tensor]:
        """Several videos' entries → one (T_i, D) each, with one vision-tower pass over all their RGB
        frames and one Δ-encoder pass over all their P-frames (a training batch: per batch, not per
        sample). Videos of different frame sizes cannot share a pass and are embedded one by one."""
        sizes = {tuple(v.frames.shape[1:3]) for v in visuals if v.num_rgb}
        sizes |= {tuple(v.mv.shape[1:3]) for v in visuals if v.num_delta}
        if len(sizes) > 1:
            return [self.embed_visuals([v], zero_deltas)[0] for v in visuals]
        if self.tower_memo is not None:  # training with a frozen tower: each frame's features once
            image_blocks = self.tower_memo.image_tokens(self, visuals)  # (ΣnI, Ti, D)
        else:
            image_blocks = self.image_tokens(torch.cat([v.frames for v in visuals]))
        num_delta = sum(v.num_delta for v in visuals)
        delta_blocks: torch.Tensor | None = None
        if zero_deltas:
            delta_blocks = self.zero_delta_tokens(num_delta)
        elif num_delta:
            mv = torch.cat([v.mv for v in visuals if v.num_delta])
            residual = torch.cat([v.residual for v in visuals if v.num_delta])
            delta_blocks = self.delta_tokens(mv, residual)  # (ΣnP, Tp, D)
        images = image_blocks.split([v.num_rgb for v in visuals])
        deltas = delta_blocks.split([v.num_delta for v in visuals]) if delta_blocks is not None else None
        embeds = [
            interleave(v.kinds, images[i], deltas[i] if deltas is not None and v.num_delta else None)
            for i, v in enumerate(visuals)
        ]
        if self.config.time_words:
            embeds = [e + self.time_stamps(v.kinds, v.times) for e, v in zip(embeds, visuals, strict=True)]
        return embeds

    def time_stamps(
        self, kinds: Sequence[str], times: Sequence[float], before: float | None = None
    ) -> torch.Tensor:
        """(T, D): each visual entry's ``time_words`` stamp, repeated over the entry's positions.

        An RGB frame at t s is stamped with the input embedding of the digits of ⌊t⌋; a Δ-frame with
        the mean of its start's and its end's: its start is the previous entry's time (``before``
        for the first entry, when the entries continue a longer sequence).
        """
        if len(times) != len(kinds):
            raise ValueError(f"{self.name}: time_words needs the time of every visual entry")
        layout = self.config.layout
        spans = []  # the whole seconds each entry is stamped with
        for kind, t in zip(kinds, times, strict=True):
            spans.append([int(t)] if kind == "I" or before is None else [int(before), int(t)])
            before = t
        # Each second is embedded once: a Δ-frame's end second is the next one's start.
        seconds = {second for span in spans for second in span}
        words = {second: self._second_embedding(second) for second in seconds}
        stamps = [torch.stack([words[second] for second in span]).mean(0) for span in spans]
        lengths = [layout.iframe_tokens if kind == "I" else layout.pframe_tokens for kind in kinds]
        repeats = torch.tensor(lengths, device=self.device)
        return torch.stack(stamps).to(self.dtype).repeat_interleave(repeats, dim=0)

    def _second_embedding(self, second: int) -> torch.Tensor:
        """(D,): the mean input embedding of the digits of ``second`` (12 → "1 2")."""
        ids = self.tokenizer(" ".join(str(second)), add_special_tokens=False).input_ids
        return self.embed_text(torch.tensor(ids)).mean(0)

    def _empty(self, positions: int) -> torch.Tensor:
        return torch.zeros(0, positions, self.hidden_size, device=self.device, dtype=self.dtype)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(L,) token ids → (L, D) input embeddings of the LLM."""
        return self.base.get_input_embeddings()(input_ids.to(self.device))

    def splice(self, input_ids: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """(L,) ids holding the placeholder once + (T, D) visual → (L − 1 + T, D)."""
        (where,) = (input_ids == self.placeholder_id).nonzero(as_tuple=True)
        if where.numel() != 1:
            raise ValueError(
                f"a sequence must hold the video placeholder {self.config.video_placeholder!r} exactly once, "
                f"found {where.numel()}"
            )
        at = int(where)
        text = self.embed_text(input_ids)
        return torch.cat([text[:at], visual.to(text.dtype), text[at + 1 :]])

    # ------------------------------------------------------------------ training forward

    def training_batch(
        self,
        input_ids: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor],
        visual_inputs: Sequence[VisualInput],
        zero_deltas: bool = False,
    ) -> TrainingBatch:
        """Variable-length samples → right-padded embeddings, attention mask and labels."""
        if not len(input_ids) == len(labels) == len(visual_inputs):
            raise ValueError("input_ids, labels and visual_inputs must have one entry per sample")
        sequences, sequence_labels = [], []
        visual_embeds_per_sample = self.embed_visuals(visual_inputs, zero_deltas)  # one pass per part
        for ids, sample_labels, visual_embeds in zip(
            input_ids, labels, visual_embeds_per_sample, strict=True
        ):
            if ids.shape != sample_labels.shape:
                raise ValueError(
                    f"labels {tuple(sample_labels.shape)} do not align with input_ids {tuple(ids.shape)}"
                )
            sequences.append(self.splice(ids, visual_embeds))
            at = int((ids == self.placeholder_id).nonzero())
            masked = torch.full((visual_embeds.shape[0],), IGNORE_INDEX, dtype=torch.long)
            sample_labels = sample_labels.long().cpu()
            sequence_labels.append(torch.cat([sample_labels[:at], masked, sample_labels[at + 1 :]]))
        longest = max(s.shape[0] for s in sequences)
        batch = len(sequences)
        embeds = torch.zeros(batch, longest, self.hidden_size, device=self.device, dtype=self.dtype)
        mask = torch.zeros(batch, longest, dtype=torch.long, device=self.device)
        out_labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long, device=self.device)
        for row, (seq, lab) in enumerate(zip(sequences, sequence_labels, strict=True)):
            embeds[row, : seq.shape[0]] = seq
            mask[row, : seq.shape[0]] = 1
            out_labels[row, : lab.shape[0]] = lab.to(self.device)
        return TrainingBatch(embeds, mask, out_labels)

    def forward(
        self,
        input_ids: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor],
        visual_inputs: Sequence[VisualInput],
        zero_deltas: bool = False,
    ) -> CopeLMOutput:
        """Next-token loss of a batch (stage 0 with dense RGB inputs, stage 2 with I + P entries)."""
        batch = self.training_batch(input_ids, labels, visual_inputs, zero_deltas)
        hidden = self.language_model(
            inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, use_cache=False
        ).last_hidden_state  # (B, Lmax, D)
        targets = batch.labels[:, 1:]  # position t predicts token t + 1
        supervised = targets != IGNORE_INDEX
        # The LM head only runs where there is a label: (n, D) → (n, V), not (B, Lmax, V).
        logits = self.lm_head(hidden[:, :-1][supervised])
        num_tokens = int(supervised.sum())
        if num_tokens == 0:
            return CopeLMOutput(loss=hidden.sum() * 0.0, num_tokens=0)
        loss = F.cross_entropy(logits.float(), targets[supervised])
        return CopeLMOutput(loss=loss, num_tokens=num_tokens)

    # ------------------------------------------------------------------ inference (see encoding.py,
    # prompting.py, generation.py)

    def encode_video(self, video, mode: str | None = None, **sampling):
        return encode_video(self, video, mode, **sampling)

    def build_prompt(self, encoded, question: str, system: str | None = None):
        return build_prompt(self, encoded, question, system)

    def stream(self, prompt, generation=None):
        """Generate for a ``PromptInputs``: a ``TextStream`` of text pieces (``.answer`` at the end)."""
        return stream(self, prompt, generation)

    def generate(self, prompt, generation=None):
        return self.stream(prompt, generation).finish()

    def ask(self, video, question: str, mode: str | None = None, generation=None, **sampling):
        """Encode a video, ask one question, return the ``Answer`` (timings included)."""
        encoded = self.encode_video(video, mode, **sampling)
        return self.generate(self.build_prompt(encoded, question), generation)

    def chat(self, encoded, generation=None, system: str | None = None):
        """A multi-turn ``ChatSession`` over an encoded video (``system``: an optional system turn)."""
        return ChatSession(self, encoded, generation, system)

    # ------------------------------------------------------------------ checkpoints

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
    ) -> CopeVideoLM:
        """Load a CoPE checkpoint (local dir or hub repo) or a bare LLaVA-OneVision base model."""
        name = str(path_or_hub_id)
        resolved = resolve_checkpoint(name)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        base, tokenizer = load_base(resolved.base_model, dtype)
        if resolved.cope_dir is None:
            config = base_only_config(resolved.base_model, base.config)
            delta_encoder = None
        else:
            config = read_config(resolved.cope_dir)
            delta_encoder = _load_delta_encoder(config, resolved.cope_dir)
        model = cls(config, base, tokenizer, delta_encoder, name=name, base_source=resolved.base_model)
        return model.to(device=device, dtype=dtype).eval()

    def save_pretrained(
        self,
        directory: str | Path,
        save_base: bool = True,
        overwrite: bool = False,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write config.json + delta_encoder.safetensors (+ base/ with its tokenizer when ``save_base``).

        ``state_dict``: this module's weights to write instead of its own (``base.*`` and
        ``delta_encoder.*`` names), e.g. gathered from the shards FSDP / ZeRO-3 hold.
        """
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()) and not overwrite:
            raise CopeInputError(
                f"{directory}: already exists and is not empty (pass overwrite=True to replace it)"
            )
        directory.mkdir(parents=True, exist_ok=True)
        state = self.state_dict() if state_dict is None else state_dict
        config = replace(self.config, base_model=BASE_SUBFOLDER if save_base else self.base_source)
        if save_base:
            base_state = {k.removeprefix("base."): v for k, v in state.items() if k.startswith("base.")}
            self.base.save_pretrained(directory / BASE_SUBFOLDER, state_dict=base_state)
            self.tokenizer.save_pretrained(directory / BASE_SUBFOLDER)
        if self.delta_encoder is not None:
            delta = {
                k.removeprefix("delta_encoder."): v
                for k, v in state.items()
                if k.startswith("delta_encoder.")
            }
            save_safetensors(delta, directory / DELTA_WEIGHTS_NAME)
        config.save(directory)  # last: a directory without config.json is not a checkpoint
        return directory


def _load_delta_encoder(config: CopeConfig, checkpoint: Path) -> DeltaEncoder | None:
    if config.delta_encoder is None:
        return None
    from cope.model.delta import DeltaEncoderConfig

    weights = Path(checkpoint) / DELTA_WEIGHTS_NAME
    if not weights.is_file():
        raise CopeInputError(f"{weights}: missing (the config names a Δ-encoder)")
    encoder = DeltaEncoder(DeltaEncoderConfig.from_dict(config.delta_encoder, source=str(checkpoint)))
    try:
        encoder.load_state_dict(load_safetensors(weights))
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0]
        raise CopeInputError(f"{weights}: does not match the Δ-encoder config ({reason})") from exc
    return encoder


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto" → cuda, then mps, then cpu."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise CopeInputError(f"device {device!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CopeInputError(f"device {device!r}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CopeInputError(f"device {device!r}: MPS is not available on this machine")
    return device


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None / "auto" → bfloat16 on CUDA, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise CopeInputError(f"dtype {dtype!r}: choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]
