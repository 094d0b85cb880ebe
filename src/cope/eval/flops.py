"""Analytic prefill FLOPs of a VideoLM, and the TTFT reduction they predict.

Time-to-first-token is the time to encode the visual input and prefill the LLM. Its compute is

    FLOPs = n_rgb · F_vit + n_rgb · F_proj(T) + n_P · (F_Δ + F_proj(N)) + F_llm(L)

with n_rgb RGB frames, n_P P-frames, T vision tokens per frame, N Δ-tokens per P-frame and
L = visual tokens + text tokens the LLM prefills. Only matrix products are counted (2 FLOPs per
multiply–add); norms, activations, softmax, pooling and the embedding lookup are left out, as
``torch.utils.flop_counter`` leaves them out. Per term (d, f: width, FFN width; D, F, V: the LLM's):

* ``F_vit`` (SigLIP, per frame): patch conv 2·T·3p²·d + per layer [8·T·d² (q, k, v, o)
  + 4·T²·d (scores, weighted sum) + 4·T·d·f (MLP)].
* ``F_proj(n)`` (2-layer GELU MLP): 2·n·(d·D + D·D). LLaVA-Video projects before pooling, so an
  RGB frame pays for all T = 729 tokens.
* ``F_Δ``: counted with ``FlopCounterMode`` on the real ``DeltaEncoder`` built on the meta device
  (nothing allocated; on meta, attention decomposes into counted matmuls).
* ``F_llm(L)`` (Qwen2, GQA, SwiGLU): per layer [2·L·D·(2·H + 2·H_kv)·h (q, o; k, v) + 4·L²·H·h
  (full, non-causal attention as the counter sees it) + 6·L·D·F (MLP)] + 2·D·V for the logits of
  the last position only (generation needs no others).

If TTFT were proportional to FLOPs, ``1 − FLOPs(cope_k1) / FLOPs(dense64)`` would be the TTFT
reduction. Fixed costs (kernel launches, host work) and the lower utilisation of short sequences
push a measured reduction below it, which is why it is read as an upper bound; a baseline that
runs below the device's FLOP rate (attention that materialises the L × L scores of 13K tokens)
pushes the measured reduction above it. The paper's own GPU numbers do the latter for 2 and 4
keyframes per GOP (docs/evaluation.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cope.codec.canonical import CanonicalSettings
from cope.plan import (
    DEFAULT_FUSION,
    PAPER_LAYOUT,
    TokenLayout,
    TokenPlan,
    cope_plan,
    dense_plan,
    regular_gop_starts,
)

CANONICAL_FPS = CanonicalSettings.fps  # the paper's canonical stream: 30 fps, GOP 240
CANONICAL_GOP = CanonicalSettings.gop
DEFAULT_TEXT_TOKENS = 50  # chat template (~20 tokens with qwen_1_5's system prompt) + a question


@dataclass(frozen=True)
class VisionSpec:
    """A SigLIP-style ViT, counted over the layers that actually run for the feature layer used."""

    image_size: int = 384
    patch_size: int = 14
    hidden: int = 1152
    intermediate: int = 4304
    # SigLIP-so400m has 27 layers; LLaVA-Video reads the output of layer 26 (hidden state −2), and
    # the HF port stores the tower with 26 layers, so 26 run.
    layers: int = 26
    channels: int = 3

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def flops_per_frame(self) -> int:
        t, d, f = self.tokens, self.hidden, self.intermediate
        patch_embed = 2 * t * self.channels * self.patch_size**2 * d
        per_layer = 8 * t * d * d + 4 * t * t * d + 4 * t * d * f
        return patch_embed + self.layers * per_layer


@dataclass(frozen=True)
class ProjectorSpec:
    """LLaVA's 2-layer GELU projector: vision width → LLM width → LLM width."""

    in_dim: int = 1152
    out_dim: int = 3584

    def flops(self, tokens: int) -> int:
        return 2 * tokens * (self.in_dim * self.out_dim + self.out_dim * self.out_dim)


@dataclass(frozen=True)
class LLMSpec:
    """A Qwen2/Llama-style decoder (GQA attention, SwiGLU MLP)."""

    layers: int = 28
    hidden: int = 3584
    intermediate: int = 18944
    heads: int = 28
    kv_heads: int = 4
    vocab: int = 152064
    head_dim: int | None = None  # hidden // heads when None

    @property
    def head_width(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def prefill_flops(self, prompt_tokens: int, logits_tokens: int = 1) -> int:
        n, d, hd = prompt_tokens, self.hidden, self.head_width
        projections = 2 * n * d * hd * (2 * self.heads + 2 * self.kv_heads)  # q, o + k, v
        attention = 4 * n * n * self.heads * hd
        mlp = 6 * n * d * self.intermediate
        return self.layers * (projections + attention + mlp) + 2 * logits_tokens * d * self.vocab


@dataclass(frozen=True)
class VideoLMFlopModel:
    """Prefill FLOPs of one VideoLM for any token plan."""

    vision: VisionSpec
    projector: ProjectorSpec
    llm: LLMSpec
    delta_flops_per_frame: int  # F_Δ for one P-frame at the canonical resolution
    layout: TokenLayout = PAPER_LAYOUT
    text_tokens: int = DEFAULT_TEXT_TOKENS

    def prefill(self, plan: TokenPlan) -> dict:
        """FLOPs per component of encoding ``plan`` and prefilling the LLM, and their total."""
        prompt = plan.tokens(self.layout) + self.text_tokens
        return self.prefill_counts(plan.rgb_frames, plan.delta_frames, prompt)

    def prefill_counts(self, rgb_frames: int, delta_frames: int, prompt_tokens: int) -> dict:
        """The same from counts: RGB frames, P-frames and every position the LLM prefills."""
        parts = {
            "vision": rgb_frames * self.vision.flops_per_frame(),
            "projector": rgb_frames * self.projector.flops(self.vision.tokens)
            + delta_frames * self.projector.flops(self.layout.delta_tokens),
            "delta": delta_frames * self.delta_flops_per_frame,
            "llm": self.llm.prefill_flops(prompt_tokens),
        }
        return {**parts, "total": sum(parts.values()), "prompt_tokens": prompt_tokens}

    def describe(self) -> dict:
        return {
            "vision": asdict(self.vision),
            "projector": asdict(self.projector),
            "llm": asdict(self.llm),
            "delta_flops_per_frame": self.delta_flops_per_frame,
            "text_tokens": self.text_tokens,
        }


def count_flops(fn, *args, **kwargs) -> int:
    """Matmul/conv FLOPs of ``fn(*args, **kwargs)`` as ``torch.utils.flop_counter`` counts them.

    Run it on meta tensors: nothing is computed, and attention decomposes into counted matmuls
    (on CPU tensors the fused SDPA kernel is invisible to the counter).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def delta_encoder_flops(encoder, height: int = 384, width: int = 384) -> int:
    """F_Δ of one P-frame: the real Δ-encoder's forward, counted on the meta device.

    ``encoder`` is a ``DeltaEncoder`` or its ``DeltaEncoderConfig`` (then built on meta).
    """
    import torch

    if not isinstance(encoder, torch.nn.Module):
        from cope.model.delta import DeltaEncoder

        with torch.device("meta"):
            encoder = DeltaEncoder(encoder)
    device = next(encoder.parameters()).device
    mv = torch.zeros(1, height, width, 2, device=device)
    residual = torch.zeros(1, height, width, 3, device=device)
    return count_flops(encoder, mv, residual)


def paper_7b_flop_model(
    text_tokens: int = DEFAULT_TEXT_TOKENS, delta_config: str = "paper"
) -> VideoLMFlopModel:
    """LLaVA-Video-7B-Qwen2 (SigLIP-so400m + projector + Qwen2-7B) with the named Δ-encoder config."""
    from cope.model.delta.configuration_delta import delta_encoder_config

    return VideoLMFlopModel(
        vision=VisionSpec(),
        projector=ProjectorSpec(),
        llm=LLMSpec(),
        delta_flops_per_frame=delta_encoder_flops(delta_encoder_config(delta_config)),
        text_tokens=text_tokens,
    )


def clip_plans(seconds: int = 64, fusion: int = DEFAULT_FUSION) -> dict[str, TokenPlan]:
    """The bench configs' plans for a canonical clip of ``seconds`` (30 fps, GOP 240)."""
    frames = seconds * CANONICAL_FPS
    starts = regular_gop_starts(frames, CANONICAL_GOP)
    plans = {"dense64": dense_plan(frames, 64, starts)}
    for k in (1, 2, 4):
        plans[f"cope_k{k}"] = cope_plan(frames, starts, CANONICAL_GOP, fusion, k)
    k1 = plans["cope_k1"]
    plans["iframes_k1"] = k1.keyframes_only()
    return plans


def prefill_flop_table(model: VideoLMFlopModel, plans: dict[str, TokenPlan]) -> dict:
    """Prefill FLOPs per config and ``reduction_vs_dense64`` = ``1 − FLOPs / FLOPs(dense64)``."""
    configs = {
        name: {
            "visual_tokens": plan.tokens(model.layout),
            "rgb_frames": plan.rgb_frames,
            "delta_frames": plan.delta_frames,
            **model.prefill(plan),
        }
        for name, plan in plans.items()
    }
    dense = configs["dense64"]["total"]
    for row in configs.values():
        row["reduction_vs_dense64"] = 1 - row["total"] / dense
    return configs


def videolm_flop_model(model, text_tokens: int = DEFAULT_TEXT_TOKENS) -> VideoLMFlopModel:
    """The FLOP model of a loaded ``CopeVideoLM``, from its configs (Δ-encoder counted on meta).

    ``CopeVideoLM`` runs the whole vision tower (it reads a hidden state with
    ``output_hidden_states``), so every layer of the tower's config is counted.
    """
    vision, text = model.base.config.vision_config, model.base.config.text_config
    canonical = model.config.canonical
    delta = 0
    if model.delta_encoder is not None:
        delta = delta_encoder_flops(model.delta_encoder.config, canonical.height, canonical.width)
    return VideoLMFlopModel(
        vision=VisionSpec(
            vision.image_size,
            vision.patch_size,
            vision.hidden_size,
            vision.intermediate_size,
            vision.num_hidden_layers,
            vision.num_channels,
        ),
        projector=ProjectorSpec(vision.hidden_size, text.hidden_size),
        llm=LLMSpec(
            text.num_hidden_layers,
            text.hidden_size,
            text.intermediate_size,
            text.num_attention_heads,
            text.num_key_value_heads,
            text.vocab_size,
            getattr(text, "head_dim", None),
        ),
        delta_flops_per_frame=delta,
        layout=model.config.layout,
        text_tokens=text_tokens,
    )
