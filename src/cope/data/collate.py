"""Batches for stage-2 training: chat template, assistant-only labels, padding, truncation.

A conversation is rendered with the base model's chat template (ChatML / ``qwen_1_5`` for
LLaVA-Video; the tokenizer's own template for tiny models), with the video placeholder token
exactly once where the record's ``<image>`` was. The VideoLM (docs/architecture.md, "VideoLM API")
replaces that one position with the video's visual tokens.

**Labels.** −100 everywhere except the assistant turns: each answer's content tokens and the
end-of-turn token the template closes it with (``<|im_end|>`` in ChatML), not the newline after
it. The spans are found by rendering the conversation prefix by prefix: the text an assistant turn
adds after the generation prompt, minus trailing whitespace, is what the model must learn to emit.

**Truncation** keeps ``text tokens (+ visual positions when a layout is given) ≤ max_length`` and
never cuts the placeholder: first whole trailing rounds (question + answer) are dropped, keeping at
least the first; if the first round alone is too long its answer is cut at the limit. A sample whose
placeholder or first answer token lies beyond the limit cannot be trained on and is dropped from
the batch (``batch.dropped`` names it and why).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from cope.data.instruct import VIDEO_PLACEHOLDER, InstructSample
from cope.plan import TokenLayout

IGNORE_INDEX = -100


class UnusableSample(ValueError):
    """This sample (not the setup) cannot be encoded; the collator drops it and says why."""


@dataclass
class CollateConfig:
    """How conversations become token ids; mirror the model's ``CopeConfig`` fields."""

    max_length: int = 32768  # LLM positions per sample (LLaVA-Video trains with 32K)
    video_placeholder: str = "<video>"  # one token of the tokenizer (CopeConfig.video_placeholder)
    chat_template: str | None = None  # None: the tokenizer's own (CopeConfig.chat_template)
    system_prompt: str | None = None  # prepended unless the record has its own system turn
    layout: TokenLayout | None = None  # count the plan's visual positions toward max_length
    pad_to_multiple_of: int | None = None  # e.g. 8 for tensor cores


@dataclass
class EncodedConversation:
    input_ids: list[int]
    labels: list[int]
    round_ends: list[int]  # token count up to the end of each round's answer (+ what follows it)
    placeholder_at: int


@dataclass
class InstructBatch:
    input_ids: torch.Tensor  # (B, L) int64, right-padded
    attention_mask: torch.Tensor  # (B, L) int64, 1 on real tokens
    labels: torch.Tensor  # (B, L) int64, −100 outside assistant answers and on padding
    visual: list  # B × cope.model.inputs.VisualInput, in batch order
    plans: list  # B × TokenPlan
    ids: list[str]  # record ids
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (video, reason) the dataset skipped
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) dropped by truncation

    def __len__(self) -> int:
        return len(self.ids)

    def sequences(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Unpadded per-sample (input_ids, labels): what ``CopeVideoLM.forward`` takes."""
        lengths = self.attention_mask.sum(dim=1).tolist()
        ids = [row[:n] for row, n in zip(self.input_ids, lengths, strict=True)]
        labels = [row[:n] for row, n in zip(self.labels, lengths, strict=True)]
        return ids, labels

    def to(self, device, non_blocking: bool = False) -> InstructBatch:
        """Move the text tensors (the model moves visual inputs itself, in vision batches)."""
        moved = {
            name: getattr(self, name).to(device, non_blocking=non_blocking)
            for name in ("input_ids", "attention_mask", "labels")
        }
        return replace(self, **moved)


class InstructCollator:
    """``DataLoader(collate_fn=InstructCollator(tokenizer, config))``: samples → ``InstructBatch``.

    The tokenizer must be a fast tokenizer (offsets locate the assistant spans) with the video
    placeholder as a single token and a chat template (its own or ``config.chat_template``).
    """

    def __init__(self, tokenizer, config: CollateConfig | None = None):
        self.tokenizer = tokenizer
        self.config = config or CollateConfig()
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("the collator needs a fast tokenizer (offset mappings)")
        self.template = self.config.chat_template or tokenizer.chat_template
        if self.template is None:
            raise ValueError("the tokenizer has no chat template and the config sets none")
        ids = tokenizer(self.config.video_placeholder, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"video placeholder {self.config.video_placeholder!r} is not one token: {ids}")
        self.placeholder_id = ids[0]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token to pad with")
        self.pad_id = pad

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def messages(self, conversation: list[dict]) -> list[dict]:
        """The record's turns with the model's placeholder and optional system prompt."""
        messages = [
            {
                "role": t["role"],
                "content": t["content"].replace(VIDEO_PLACEHOLDER, self.config.video_placeholder),
            }
            for t in conversation
        ]
        if self.config.system_prompt is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.config.system_prompt})
        return messages

    def encode(self, conversation: list[dict]) -> EncodedConversation:
        """Token ids and labels of a whole conversation (no truncation)."""
        messages = self.messages(conversation)
        text = self.render(messages)
        spans, round_ends = [], []  # character spans of the answers; character ends of the rounds
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], add_generation_prompt=True)
            through = self.render(messages[: i + 1])
            if not (through.startswith(prompt) and text.startswith(through)):
                raise ValueError("the chat template does not render conversations prefix by prefix")
            spans.append((len(prompt), len(through.rstrip())))
            round_ends.append(len(through))
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = list(encoding.input_ids)
        starts = [start for start, _ in encoding.offset_mapping]
        labels = [
            token if any(a <= s < b for a, b in spans) else IGNORE_INDEX
            for token, s in zip(input_ids, starts, strict=True)
        ]
        if input_ids.count(self.placeholder_id) != 1:  # e.g. the placeholder's text inside an answer
            count = input_ids.count(self.placeholder_id)
            raise UnusableSample(f"the rendered conversation holds {count} video placeholders, not 1")
        token_round_ends = [sum(1 for s in starts if s < end) for end in round_ends]
        return EncodedConversation(input_ids, labels, token_round_ends, input_ids.index(self.placeholder_id))

    def truncate(self, encoded: EncodedConversation, budget: int) -> tuple[list[int], list[int]] | str:
        """Fit ``budget`` text tokens (module doc); returns (ids, labels) or the reason to drop."""
        ids, labels = encoded.input_ids, encoded.labels
        if len(ids) <= budget:
            return ids, labels
        fitting = [end for end in encoded.round_ends if end <= budget]
        keep = fitting[-1] if fitting else budget  # whole rounds, else cut inside the first answer
        if encoded.placeholder_at >= keep:
            return (
                f"the video placeholder is at token {encoded.placeholder_at}, beyond the {budget}-token limit"
            )
        if all(label == IGNORE_INDEX for label in labels[:keep]):
            return f"no answer token fits in the {budget}-token limit"
        return ids[:keep], labels[:keep]

    def __call__(self, samples: list[InstructSample]) -> InstructBatch:
        rows, kept, skipped, dropped = [], [], [], []
        for sample in samples:
            skipped.extend(sample.skipped)
            budget = self.config.max_length
            if self.config.layout is not None:  # the placeholder's one position becomes the visual block
                budget -= sample.plan.tokens(self.config.layout) - 1
            try:
                result = self.truncate(self.encode(sample.conversation), budget)
            except UnusableSample as exc:
                result = str(exc)
            if isinstance(result, str):
                dropped.append((sample.id, result))
                continue
            rows.append(result)
            kept.append(sample)
        length = max((len(ids) for ids, _ in rows), default=0)
        multiple = self.config.pad_to_multiple_of
        if multiple and length % multiple:
            length += multiple - length % multiple
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        for row, (ids, labs) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(labs)] = torch.tensor(labs)
            attention[row, : len(ids)] = 1
        return InstructBatch(
            input_ids=input_ids,
            attention_mask=attention,
            labels=labels,
            visual=[s.visual for s in kept],
            plans=[s.plan for s in kept],
            ids=[s.id for s in kept],
            skipped=skipped,
            dropped=dropped,
        )
