"""Continuous batching: many answers decoded together, one LLM forward per step for all of them.

Each answer is prefilled alone, into its own KV cache, exactly as ``TextStream`` does (a
``ChatSession`` turn's cache), and then *joins* the batch: its keys and values are copied into one
row of ``SlotCache``, a preallocated per-layer tensor of shape (S slots, H KV heads, C positions,
d). Row r holds its sequence at positions 0 … length_r − 1, contiguously, whatever the other rows
hold; nothing lines the rows up, so rows of any lengths decode side by side. One step:

* input (R, 1, D): the last chosen token of each row (its embedding);
* ``position_ids`` (R, 1) = each row's own length (RoPE per row);
* each attention layer writes the row's new key/value at that position (``SlotCache.update``)
  and attends through a 4-D additive mask (R, 1, 1, W) that shows row r its columns
  0 … length_r (its past and the new token) and hides the rest;
* output (R, V): the logits of each row's new position.

The active sequences always fill rows 0 … A − 1: when one leaves (finished, cancelled), the last
row moves into its place, so a slot is free the moment its sequence leaves and a waiting answer
can join before the next step. Eager steps run on those A rows and W = the longest row + 1 columns.
A compiled step (``compile=True`` on CUDA: ``torch.compile``, CUDA graphs) always runs all S rows
and all C columns, so its shapes never change (the unused rows compute nothing anyone reads). When
a joining answer needs more than C positions (prompt + max_new_tokens), the slot cache is
reallocated at the next power of two (``static_cache_length``) with every row copied over; it
never shrinks.

A leaving sequence can hand its answer's positions back to its own cache (``leave(keep=True)``),
so a chat's next turn prefills only its new text, as after a one-sequence answer.

Greedy answers are those of one-sequence decoding: every row sees exactly its own positions. (A
batched matrix product may round differently in the last bits than one of a single row; greedy
tokens only differ where two logits tie to that precision.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cope.model.videolm.generation import (
    AnswerBuilder,
    _cache_argument,
    cached_length,
    compiled_forward_last,
    compiled_steps_available,
    forward_last,
    static_cache_length,
)

# Attention implementations that take a 4-D additive mask (flash attention takes none).
MASKED_ATTENTION = ("sdpa", "eager")


@dataclass
class BatchedSequence:
    """One answer in the batch."""

    cache: Any  # the sequence's own KV cache: its prompt, and its answer once it leaves with keep=True
    builder: AnswerBuilder  # its tokens and text so far, and how the next token is chosen
    token: int  # the last chosen token: the next step feeds it
    prompt_length: int  # positions its own cache held when it joined
    row: int  # its row of the slot cache
    fed: int = 0  # answer tokens whose keys and values the slot cache holds

    @property
    def length(self) -> int:
        """Positions of this sequence in the slot cache."""
        return self.prompt_length + self.fed


class SlotCache:
    """The batch's KV cache, one sequence per row; the LLM's attention layers call ``update``.

    Before each forward, ``rows``/``width`` say which rows and columns it covers and ``positions``
    (S,) holds each row's length: where its new key/value goes.
    """

    def __init__(self, model, slots: int, capacity: int):
        text = model.language_model.config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        shape = (slots, text.num_key_value_heads, capacity, head_dim)
        layers = range(text.num_hidden_layers)
        device, dtype = model.device, model.dtype
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in layers]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in layers]
        self.positions = torch.zeros(slots, dtype=torch.long, device=device)
        self.row_index = torch.arange(slots, device=device)
        if device.type == "cuda":  # fixed addresses: a CUDA graph may capture them
            for tensor in (*self.keys, *self.values, self.positions, self.row_index):
                torch._dynamo.mark_static_address(tensor)
        self.slots, self.capacity = slots, capacity
        self.rows = self.width = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """(rows, H, 1, d) new keys/values → written at each row's position; (rows, H, width, d) back."""
        rows, positions = self.row_index[: self.rows], self.positions[: self.rows]
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[rows, :, positions] = key_states[:, :, 0]  # (rows, H, d) into each row's own column
        values[rows, :, positions] = value_states[:, :, 0]
        return keys[: self.rows, :, : self.width], values[: self.rows, :, : self.width]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The rows have lengths of their own: the model never needs one (positions are given)."""
        return 0

    def attention_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """(rows, 1, 1, width) additive: 0 on columns 0 … position_r of row r, the dtype's min elsewhere."""
        columns = torch.arange(self.width, device=self.positions.device)
        visible = columns[None, :] <= self.positions[: self.rows, None]  # (rows, width)
        mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
        return mask.masked_fill(~visible, torch.finfo(dtype).min)[:, None, None, :]

    def write_row(self, row: int, layers_kv, length: int) -> None:
        """Positions 0 … length − 1 of row ``row`` from (1, H, ≥ length, d) keys/values per layer."""
        for keys, values, (new_keys, new_values) in zip(self.keys, self.values, layers_kv, strict=True):
            keys[row, :, :length] = new_keys[0, :, :length]
            values[row, :, :length] = new_values[0, :, :length]

    def row_kv(self, row: int):
        """Per layer, row ``row``'s (1, H, capacity, d) keys and values (views)."""
        return [(k[row : row + 1], v[row : row + 1]) for k, v in zip(self.keys, self.values, strict=True)]


class BatchDecoder:
    """Up to ``max_batch`` sequences decoding together (see the module docstring).

    join(cache, builder, token, positions) → BatchedSequence   # after its prefill and first token
    step() → [(sequence, text piece)]   # one forward; each sequence's next token chosen and accepted
    leave(sequence, keep)               # frees its row at once (finished: builder.finish_reason set)
    """

    def __init__(self, model, max_batch: int, compile: bool = False):
        if max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
        attention = model.language_model.config._attn_implementation
        if attention not in MASKED_ATTENTION:
            raise ValueError(f"batched decoding needs sdpa or eager attention, the model uses {attention}")
        self.model = model
        self.max_batch = max_batch
        self.compiled = compile and compiled_steps_available(model.device)
        self.cache: SlotCache | None = None  # allocated when the first sequence joins
        self.sequences: list[BatchedSequence] = []  # sequences[i] is in row i
        self.cache_argument = _cache_argument(model.language_model)

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def has_room(self) -> bool:
        return len(self.sequences) < self.max_batch

    def join(self, cache, builder: AnswerBuilder, token: int, positions: int) -> BatchedSequence:
        """Add a prefilled sequence: ``cache`` holds its prompt, ``builder`` has accepted ``token``,
        its first answer token (fed at the next step), and ``positions`` is the most it will reach
        (prompt + max_new_tokens)."""
        if not self.has_room:
            raise RuntimeError(f"the batch is full ({self.max_batch} sequences)")
        slots = self._fit(positions)
        length = cached_length(cache)
        sequence = BatchedSequence(cache, builder, token, length, row=len(self.sequences))
        slots.write_row(sequence.row, [(layer.keys, layer.values) for layer in cache.layers], length)
        self.sequences.append(sequence)
        return sequence

    def step(self) -> list[tuple[BatchedSequence, str]]:
        """Feed every sequence its ``token`` (one forward), then choose and accept its next one:
        each sequence with its new text piece (maybe ""). A sequence whose ``builder.finish_reason``
        is now set has finished: ``leave`` it (its last token, an end token or the last one allowed,
        is not fed)."""
        slots, active = self.cache, len(self.sequences)
        if slots is None or not active:
            raise RuntimeError("no sequence to decode")
        model = self.model
        if self.compiled:
            slots.rows, slots.width = slots.slots, slots.capacity
        else:
            slots.rows, slots.width = active, max(s.length for s in self.sequences) + 1
        idle = slots.rows - active  # compiled: rows without a sequence (their outputs go unread)
        lengths = [s.length for s in self.sequences] + [0] * idle
        slots.positions[: slots.rows].copy_(torch.tensor(lengths))
        tokens = torch.tensor([s.token for s in self.sequences] + [0] * idle)
        forward = {
            self.cache_argument: slots,
            "attention_mask": slots.attention_mask(model.dtype),
            "position_ids": slots.positions[: slots.rows, None],
        }
        step = forward_last
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()
            step = compiled_forward_last()
        logits = step(model.language_model, model.lm_head, model.embed_text(tokens).unsqueeze(1), **forward)
        logits = logits[:active].float()  # (A, V), a copy: a CUDA graph reuses its output buffer
        pieces = []
        for sequence, row_logits in zip(self.sequences, logits, strict=True):
            sequence.fed += 1
            sequence.token = sequence.builder.choose(row_logits)
            pieces.append((sequence, sequence.builder.accept(sequence.token)))
        return pieces

    def leave(self, sequence: BatchedSequence, keep: bool = False) -> None:
        """Remove ``sequence``, its row free at once. ``keep``: first append its answer's keys and
        values to its own cache (which then holds prompt + the ``fed`` answer tokens)."""
        slots = self.cache
        if slots is None or self.sequences[sequence.row] is not sequence:
            raise ValueError("the sequence is not in this batch")
        if keep and sequence.fed:
            start, end = sequence.prompt_length, sequence.length
            where = {"cache_position": torch.arange(start, end, device=self.model.device)}  # transformers 4.x
            for index, (keys, values) in enumerate(slots.row_kv(sequence.row)):
                sequence.cache.update(keys[:, :, start:end], values[:, :, start:end], index, where)
        last = self.sequences.pop()
        if last is not sequence:  # the last row moves into the freed one: active rows stay in front
            slots.write_row(sequence.row, slots.row_kv(last.row), last.length)
            last.row = sequence.row
            self.sequences[last.row] = last

    def clear(self) -> None:
        """Drop every sequence (after a failed step: their rows no longer match their lengths)."""
        self.sequences = []

    def _fit(self, positions: int) -> SlotCache:
        """The slot cache, (re)allocated so that rows of ``positions`` positions fit."""
        slots = self.cache
        if slots is not None and slots.capacity >= positions:
            return slots
        grown = SlotCache(self.model, self.max_batch, static_cache_length(positions))
        if slots is not None:  # keep the rows decoding now
            for old, new in zip((*slots.keys, *slots.values), (*grown.keys, *grown.values), strict=True):
                new[:, :, : slots.capacity] = old
        self.cache = grown
        return grown
