"""CopeVideoLM: a LLaVA-OneVision-class VideoLM reading I-frame tokens interleaved with Δ-tokens.

See docs/videolm.md (usage) and the "VideoLM API" section of docs/architecture.md (contracts).
"""

from cope.model.videolm.builders import (
    PAPER_7B_BASE,
    cope_tiny_init,
    default_model_path,
    paper_7b,
    paper_7b_config,
    resolve_model,
    tiny_random,
    word_tokenizer,
)
from cope.model.videolm.configuration_cope import MODES, CopeConfig
from cope.model.videolm.encoding import EncodedVideo, encode_video
from cope.model.videolm.generation import (
    Answer,
    ChatSession,
    GenerationConfig,
    IncrementalDetokenizer,
    TextStream,
    Timings,
)
from cope.model.videolm.modeling_cope import CopeLMOutput, CopeVideoLM, TrainingBatch
from cope.model.videolm.prompting import QWEN_1_5_CHAT_TEMPLATE, PromptInputs

__all__ = [
    "MODES",
    "PAPER_7B_BASE",
    "QWEN_1_5_CHAT_TEMPLATE",
    "Answer",
    "ChatSession",
    "CopeConfig",
    "CopeLMOutput",
    "CopeVideoLM",
    "EncodedVideo",
    "GenerationConfig",
    "IncrementalDetokenizer",
    "PromptInputs",
    "TextStream",
    "Timings",
    "TrainingBatch",
    "cope_tiny_init",
    "default_model_path",
    "encode_video",
    "paper_7b",
    "paper_7b_config",
    "resolve_model",
    "tiny_random",
    "word_tokenizer",
]
