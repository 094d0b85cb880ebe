"""Named model builders (paper-7b, tiny random) and where the bundled default model lives.

* ``paper_7b``: LLaVA-Video-7B-Qwen2 — SigLIP-so400m-patch14-384 (26 layers as converted by
  llava-hf, i.e. the original's hidden state −2) + 2-layer GELU projector + Qwen2-7B — loaded from
  ``llava-hf/LLaVA-Video-7B-Qwen2-hf`` with transformers' LLaVA-OneVision classes, plus a Δ-encoder
  with the paper's dimensions (App. B). Needs the weights and a GPU.
* ``paper_7b_random``: the same architecture with random weights, built directly on the device
  (``meta`` allocates nothing), for latency and memory sizing without a download.
* ``cope_tiny_init``: CoPE-Tiny before training — the architecture of the bundled default model
  (``make tiny-model`` trains it on MotionQA, stages 0 → 1 → 2) with MotionQA's closed vocabulary.
* ``tiny_random``: the same classes with small random configs (SigLIP-architecture tower,
  Qwen2- or Llama-architecture LM, vision_feature_layer −2) and a word-level tokenizer built in
  code; fast on a CPU, for tests and as the starting point of the bundled tiny model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import torch

from cope.codec.canonical import CanonicalSettings
from cope.errors import CopeInputError
from cope.model.videolm.configuration_cope import CopeConfig
from cope.model.videolm.modeling_cope import CopeVideoLM, resolve_device, resolve_dtype
from cope.model.videolm.prompting import QWEN_1_5_CHAT_TEMPLATE
from cope.plan import PAPER_LAYOUT, TokenLayout

PAPER_7B_BASE = "llava-hf/LLaVA-Video-7B-Qwen2-hf"

# Special tokens of the tiny tokenizer: ChatML's, plus the video placeholder.
UNK, PAD, IM_START, IM_END, VIDEO = "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<video>"
# A small default vocabulary: the template's words and the kind of questions tests ask.
DEFAULT_WORDS = (
    "system user assistant you are a helpful . , ? ! : ' - "
    "what which where when how why who is are was does do did the an it this that in on of to from "
    "and or not no yes video clip frame object objects ball square circle box thing moving moves move "
    "left right up down still static fast slow direction color colour red green blue yellow white black "
    "first second last one two three four five six seven eight nine ten many number count "
    "0 1 2 3 4 5 6 7 8 9 describe happens happening"
).split()


def default_model_path() -> Path:
    """The bundled tiny model: ``src/cope/assets/cope-tiny`` (built by ``make tiny-model``)."""
    return Path(__file__).resolve().parents[2] / "assets" / "cope-tiny"


def resolve_model(model: str | None) -> str:
    """``--model`` as given, or the bundled model when none is given (one-line error if it is absent)."""
    if model is not None:
        return model
    path = default_model_path()
    if not (path / "config.json").is_file():
        raise CopeInputError(
            f"{path}: the bundled default model is missing; build it with `make tiny-model` or pass --model"
        )
    return str(path)


def word_tokenizer(words: Iterable[str] = DEFAULT_WORDS):
    """A word-level fast tokenizer with ChatML special tokens, ``<video>`` and LLaVA-Video's template.

    Text is split on whitespace and punctuation; unknown words map to ``<unk>``. ``<|im_end|>`` is
    the EOS (end of turn), ``<|endoftext|>`` the padding.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [UNK, PAD, IM_START, IM_END, VIDEO]
    vocab = {token: i for i, token in enumerate(specials)}
    for word in words:
        for piece, _ in pre_tokenizers.Whitespace().pre_tokenize_str(word):
            vocab.setdefault(piece.lower(), len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.normalizer = _lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=IM_END,
        additional_special_tokens=[IM_START, VIDEO],
        chat_template=QWEN_1_5_CHAT_TEMPLATE,
    )


def _lowercase():
    from tokenizers import normalizers

    return normalizers.Lowercase()


# ChatML without a default system turn: CoPE-Tiny's prompts are "<video>\nQUESTION" and nothing else.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cope_tiny_init(tokenizer=None, seed: int = 0) -> CopeVideoLM:
    """CoPE-Tiny before training: the architecture of the bundled default model, random weights.

    * vision tower: SigLIP architecture, 112×112 input, 8-px patches → 14×14 grid, width 96, 3
      layers used (+ the last one, dropped as LLaVA-Video drops SigLIP's);
    * projector: LLaVA-OneVision's 2-layer GELU MLP, 96 → 128;
    * LLM: Llama architecture, width 128, 6 layers, 4 heads (2 KV heads), tied embeddings;
    * tokenizer: a closed word-level vocabulary, every word MotionQA uses (``cope.motionqa.vocabulary``,
      135 words, ChatML's 3 role names and 5 special tokens), unless ``tokenizer`` is given;
    * Δ-encoder: the ``tiny`` preset at the tower's width, 96, with its 8 tokens pinned to a 2×4
      grid of the frame (``token_grid``; fused motion of MotionQA stays within ±48 px, which
      ``motion_max_displacement`` maps to ±1);
    * layout: 7×7 pooled tokens + 7 newlines = 56 positions per RGB frame, 2×4 + 2 = 10 per P-frame;
    * canonical stream: 128×128, 30 fps, GOP 240 (MotionQA's clips).
    """
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    from cope.model.delta import DeltaEncoder, delta_encoder_config

    if tokenizer is None:
        from cope.motionqa import vocabulary

        tokenizer = word_tokenizer(["system", "user", "assistant", *vocabulary()])  # + ChatML's roles
    placeholder_id = tokenizer.convert_tokens_to_ids(VIDEO)
    vision_width, width = 96, 128
    base_config = LlavaOnevisionConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": vision_width,
            "intermediate_size": 4 * vision_width,
            "num_hidden_layers": 4,
            "num_attention_heads": 3,
            "image_size": 112,
            "patch_size": 8,
            "vision_use_head": False,
        },
        text_config={
            "model_type": "llama",
            "hidden_size": width,
            "intermediate_size": 4 * width,
            "num_hidden_layers": 6,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 1 << 16,
            "tie_word_embeddings": True,
            # 1/√width instead of 0.02: at width 128, 0.02 shrinks every layer's output ~4× and
            # left the LLM ignoring the visual tokens for hundreds of steps (docs/tiny-model.md).
            "initializer_range": width**-0.5,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_feature_layer=-2,
        vision_feature_select_strategy="full",
        image_token_index=placeholder_id,
        video_token_index=placeholder_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    base = LlavaOnevisionForConditionalGeneration(base_config)
    base.generation_config.eos_token_id = tokenizer.eos_token_id
    delta_config = delta_encoder_config(
        "tiny", output_dim=vision_width, width=vision_width, motion_max_displacement=48.0, token_grid=(2, 4)
    )
    config = CopeConfig(
        base_model="base",
        delta_encoder=delta_config.to_dict(),
        layout=TokenLayout(image_side=7),
        canonical=CanonicalSettings(width=128, height=128),
        dense_frames=8,
        chat_template=CHATML_TEMPLATE,
        max_new_tokens=8,  # MotionQA's answers are one or two words and the end token
    )
    return CopeVideoLM(config, base, tokenizer, DeltaEncoder(delta_config), name="cope-tiny").eval()


def tiny_base_config(
    vocab_size: int,
    placeholder_id: int,
    image_size: int = 48,
    patch_size: int = 8,
    vision_width: int = 32,
    text_width: int = 64,
    layers: int = 2,
    text_model: str = "qwen2",
):
    """A small ``LlavaOnevisionConfig``: SigLIP-architecture tower + Qwen2/Llama-architecture LM."""
    from transformers import LlavaOnevisionConfig

    if text_model not in ("qwen2", "llama"):
        raise ValueError(f"text_model must be 'qwen2' or 'llama', got {text_model!r}")
    return LlavaOnevisionConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": vision_width,
            "intermediate_size": 2 * vision_width,
            "num_hidden_layers": layers + 1,  # the last layer is dropped (feature layer −2)
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch_size,
            "vision_use_head": False,
        },
        text_config={
            "model_type": text_model,
            "hidden_size": text_width,
            "intermediate_size": 2 * text_width,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": vocab_size,
            "max_position_embeddings": 1 << 20,  # RoPE: long videos need long contexts
            "tie_word_embeddings": False,
        },
        vision_feature_layer=-2,
        vision_feature_select_strategy="full",
        image_token_index=placeholder_id,
        video_token_index=placeholder_id,
    )


def tiny_random(
    *,
    image_size: int = 48,
    patch_size: int = 8,
    vision_width: int = 32,
    text_width: int = 64,
    layers: int = 2,
    canonical_side: int = 48,
    canonical_fps: int = CanonicalSettings.fps,
    canonical_gop: int = CanonicalSettings.gop,
    vocab_words: Iterable[str] = DEFAULT_WORDS,
    text_model: str = "qwen2",
    with_delta_encoder: bool = True,
    seed: int = 0,
    **config_overrides,
) -> CopeVideoLM:
    """A randomly initialised tiny CoPE VideoLM (float32, CPU), deterministic for a given ``seed``.

    The image grid is ``image_size / patch_size`` (48 / 8 = 6 → pooled 3×3 + 3 newlines = 12
    positions per RGB frame); P-frames keep the paper's 2×4 Δ-tokens (10 positions).
    ``config_overrides`` set other ``CopeConfig`` fields (fusion, keyframes_per_gop, …).
    """
    from transformers import LlavaOnevisionForConditionalGeneration

    tokenizer = word_tokenizer(vocab_words)
    placeholder_id = tokenizer.convert_tokens_to_ids(VIDEO)
    torch.manual_seed(seed)
    base = LlavaOnevisionForConditionalGeneration(
        tiny_base_config(
            len(tokenizer),
            placeholder_id,
            image_size,
            patch_size,
            vision_width,
            text_width,
            layers,
            text_model,
        )
    )
    base.generation_config.eos_token_id = tokenizer.eos_token_id
    delta_encoder = None
    delta_config = None
    if with_delta_encoder:
        from cope.model.delta import DeltaEncoder, delta_encoder_config

        delta_config = delta_encoder_config("tiny", output_dim=vision_width)
        delta_encoder = DeltaEncoder(delta_config)
    grid = image_size // patch_size
    config = CopeConfig(
        base_model="base",
        delta_encoder=None if delta_config is None else delta_config.to_dict(),
        layout=TokenLayout(image_side=math.ceil(grid / 2)),
        canonical=CanonicalSettings(
            fps=canonical_fps, gop=canonical_gop, width=canonical_side, height=canonical_side
        ),
        **config_overrides,
    )
    return CopeVideoLM(config, base, tokenizer, delta_encoder, name="tiny-random").eval()


def paper_7b_config() -> CopeConfig:
    """The paper's model: LLaVA-Video-7B-Qwen2 + Δ-encoder (App. B dims), 384×384 canonical stream,
    14×14 + 14 newlines per RGB frame, 2×4 + 2 per P-frame, qwen_1_5 chat template."""
    from cope.model.delta import delta_encoder_config

    return CopeConfig(
        base_model=PAPER_7B_BASE,
        delta_encoder=delta_encoder_config("paper").to_dict(),
        layout=PAPER_LAYOUT,
        canonical=CanonicalSettings(),
        chat_template=QWEN_1_5_CHAT_TEMPLATE,
    )


def paper_7b(device: str = "auto", dtype: str | torch.dtype | None = None, delta_encoder=None) -> CopeVideoLM:
    """LLaVA-Video-7B-Qwen2 from ``llava-hf/LLaVA-Video-7B-Qwen2-hf`` + a Δ-encoder.

    ``delta_encoder``: a pre-trained ``DeltaEncoder`` (stage 1); None = freshly initialised with
    the paper's dimensions (the start of stage 2). Downloads ~16 GB of weights on first use.
    """
    from cope.model.delta import DeltaEncoder, delta_encoder_config
    from cope.model.videolm.loading import load_base

    config = paper_7b_config()
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    base, tokenizer = load_base(config.base_model, torch_dtype)
    if delta_encoder is None:
        delta_encoder = DeltaEncoder(delta_encoder_config("paper"))
    model = CopeVideoLM(config, base, tokenizer, delta_encoder, name="paper-7b", base_source=PAPER_7B_BASE)
    return model.to(device=target, dtype=torch_dtype).eval()


def paper_7b_base_config():
    """``LlavaOnevisionConfig`` of ``llava-hf/LLaVA-Video-7B-Qwen2-hf``, the architecture only.

    SigLIP-so400m-patch14-384 as converted by llava-hf (hidden 1152, FFN 4304, 26 layers — the
    original's last layer dropped, so features come from ``vision_feature_layer = -1`` —, 16 heads)
    + 2-layer GELU projector + Qwen2-7B (hidden 3584, FFN 18944, 28 layers, 28 heads, 4 KV heads,
    vocabulary 152,064, RoPE θ 10⁶). The checkpoint's own config.json carries the same numbers.
    """
    from transformers import LlavaOnevisionConfig

    return LlavaOnevisionConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 26,
            "num_attention_heads": 16,
            "image_size": 384,
            "patch_size": 14,
            "vision_use_head": False,
        },
        text_config={
            "model_type": "qwen2",
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "rope_theta": 1000000.0,
            "max_position_embeddings": 32768,
            "tie_word_embeddings": False,
        },
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_token_index=151646,
        video_token_index=151647,
    )


def paper_7b_random(
    device: str = "auto", dtype: str | torch.dtype | None = None, delta: str = "paper", seed: int = 0
) -> CopeVideoLM:
    """The paper model's exact architecture (``paper_7b_base_config`` + a ``delta`` Δ-encoder preset)
    with random weights, built directly on ``device`` (``meta``: shapes only, nothing allocated).

    The hub's Qwen2 tokenizer is not needed: a word-level tokenizer with the same ChatML special
    tokens renders the prompts, so the visual token counts are exact and the text prompt is a few
    tokens shorter or longer than Qwen2's. For latency and memory sizing only: the answers are noise.
    """
    from transformers import LlavaOnevisionForConditionalGeneration

    from cope.model.delta import DeltaEncoder, delta_encoder_config

    target = torch.device("meta") if str(device) == "meta" else resolve_device(device)
    torch_dtype = resolve_dtype(
        "bfloat16" if target.type == "meta" and dtype in (None, "auto") else dtype, target
    )
    tokenizer = word_tokenizer()
    base_config = paper_7b_base_config()
    base_config.image_token_index = base_config.video_token_index = tokenizer.convert_tokens_to_ids(VIDEO)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)  # initialise in the target dtype: no float32 copy of 8B weights
    try:
        with target:
            base = LlavaOnevisionForConditionalGeneration(base_config)
            delta_encoder = DeltaEncoder(delta_encoder_config(delta))
    finally:
        torch.set_default_dtype(previous)
    base.generation_config.eos_token_id = tokenizer.eos_token_id
    config = replace(paper_7b_config(), base_model="base")
    model = CopeVideoLM(config, base, tokenizer, delta_encoder, name=f"paper-7b-random-{delta}")
    return model.eval()
