"""The chat prompt around a video: the base model's chat template, one placeholder, spliced embeddings.

The first user turn is ``"<video>\\n" + question`` (LLaVA-Video puts the visual block before the
question); the template renders it, the tokenizer turns it into ids with the placeholder as one
token, and the video's (T, D) embeddings replace that one position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cope.errors import CopeInputError

if TYPE_CHECKING:  # encoding imports the model code, which imports this module
    from cope.model.videolm.encoding import EncodedVideo

# LLaVA-Video's ``qwen_1_5`` conversation format (ChatML): the system turn is added when the
# conversation has none. Rendered for one question:
#   <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<video>\nQ<|im_end|>\n
#   <|im_start|>assistant\n
QWEN_1_5_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class PromptInputs:
    input_ids: torch.Tensor  # (L,) the rendered prompt's ids; the placeholder id once, where the video goes
    inputs_embeds: torch.Tensor  # (1, L − 1 + T, D)
    visual_tokens: int  # T
    text: str  # the rendered prompt
    encoded: EncodedVideo | None = None  # the EncodedVideo it was built from (its costs enter the timings)

    @property
    def prompt_tokens(self) -> int:
        """Every position the LLM prefills: text tokens (without the placeholder) + visual tokens."""
        return self.inputs_embeds.shape[1]

    @property
    def text_tokens(self) -> int:
        return self.prompt_tokens - self.visual_tokens


def check_question(model, question: str) -> None:
    placeholder = model.config.video_placeholder
    if placeholder in question:
        raise CopeInputError(f"the question must not contain the video placeholder {placeholder!r}")


def video_turn(model, question: str) -> dict:
    """The first user message: the video placeholder, then the question."""
    return {"role": "user", "content": f"{model.config.video_placeholder}\n{question}"}


def render_chat(
    model, messages: list[dict], add_generation_prompt: bool = True, system: str | None = None
) -> str:
    """Messages → prompt text with the model's chat template (config override, else the tokenizer's).

    ``system`` (else ``config.system_prompt``) becomes a leading system turn; without either, the
    template adds its own default (qwen_1_5: "You are a helpful assistant.").
    """
    template = model.config.chat_template or model.tokenizer.chat_template
    if template is None:
        raise ValueError(f"{model.name}: the tokenizer has no chat template and the config sets none")
    system = system if system is not None else model.config.system_prompt
    if system is not None:
        messages = [{"role": "system", "content": system}, *messages]
    return model.tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def tokenize(model, text: str) -> torch.Tensor:
    """Prompt text → (L,) ids. No BOS/EOS added: templates that want a BOS write it themselves."""
    ids = model.tokenizer(text, add_special_tokens=False).input_ids
    return torch.tensor(ids, dtype=torch.long)


def build_prompt(model, encoded, question: str, system: str | None = None) -> PromptInputs:
    """A one-question prompt about an encoded video (``EncodedVideo`` or a (T, D) tensor)."""
    check_question(model, question)
    visual = encoded if isinstance(encoded, torch.Tensor) else encoded.embeds
    text = render_chat(model, [video_turn(model, question)], system=system)
    input_ids = tokenize(model, text)
    with torch.inference_mode():
        embeds = model.splice(input_ids, visual)
    source = None if isinstance(encoded, torch.Tensor) else encoded
    return PromptInputs(input_ids, embeds.unsqueeze(0), visual.shape[0], text, source)
