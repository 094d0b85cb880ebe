"""Generation: explicit prefill → KV-cached decode loop, streamed text, timings, multi-turn chat.

Timings (seconds; the device is synchronised before every clock read):
* ``vision_s`` / ``delta_s`` — embedding the RGB frames / P-frames (from ``EncodedVideo``);
* ``prefill_s`` — the LLM over the whole prompt + choosing the first token;
* ``ttft_s`` = vision_s + delta_s + prefill_s: the first answer token is available;
* ``decode_s`` — every later token (one cached forward each) and detokenisation;
* ``e2e_s`` = ttft_s + decode_s;
* ``extract_s`` — codec decoding and fusion (reported, not part of ttft/e2e, as in the paper);
* ``compile_s`` — with ``GenerationConfig.compile`` on CUDA: the first compiled decode step for a
  static-cache length not seen before (tracing + code generation), moved out of ``decode_s``;
  later answers whose cache has a length already compiled report 0.
Time a consumer spends between two streamed pieces is not counted.

KV caches. By default the cache is a ``DynamicCache`` that grows by one position per token. With
``GenerationConfig.compile`` it is a transformers ``StaticCache`` allocated once, for the prompt +
``max_new_tokens`` rounded up to a power of two (``static_cache_length``: the compiled step is
specialised to the cache's length, so a few lengths serve every prompt), and each decode step is
``torch.compile``'d (mode "reduce-overhead": CUDA graphs) on CUDA. On other devices the static cache
runs with the eager step: the same tokens, no compilation (compiling a step at the sizes a CPU runs
costs more than it saves, and Inductor's CPU backend needs a C++ toolchain). The prefill is never
compiled (its length changes with every prompt).
"""

from __future__ import annotations

import functools
import inspect
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from cope import signals
from cope.errors import CopeInputError
from cope.model.videolm.encoding import EncodedVideo, synchronize
from cope.model.videolm.prompting import PromptInputs, check_question, render_chat, tokenize, video_turn


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 → greedy (argmax); > 0 → sampling from softmax(logits / T)
    top_p: float = 1.0  # nucleus sampling mass, when sampling
    seed: int | None = None  # sampling seed (None: nondeterministic)
    ignore_eos: bool = False  # decode through EOS / end of turn up to max_new_tokens (`cope bench`)
    # The end tokens are suppressed until this many tokens are out (vLLM's ``min_tokens``): fixed-
    # length answers for load tests, without decoding past an end the way ``ignore_eos`` does.
    min_tokens: int = 0
    # Prefill the prompt this many positions per forward (None: all at once). A stream with a
    # ``should_stop`` check consults it between chunks, so a long prompt can be cancelled midway.
    # Greedy answers are the same either way: each chunk attends to the cached positions before it.
    prefill_chunk_tokens: int | None = None
    # Decode with a preallocated StaticCache and, on CUDA, a torch.compile'd step with CUDA graphs
    # (Timings.compile_s holds the one-off compilation). Elsewhere: the static cache, eager step.
    compile: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise CopeInputError(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        if not 0 <= self.min_tokens <= self.max_new_tokens:
            raise CopeInputError(
                f"min_tokens must be between 0 and max_new_tokens ({self.max_new_tokens}), got {self.min_tokens}"
            )
        if self.prefill_chunk_tokens is not None and self.prefill_chunk_tokens < 1:
            raise CopeInputError(f"prefill_chunk_tokens must be ≥ 1, got {self.prefill_chunk_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise CopeInputError("temperature must be ≥ 0 and top_p in (0, 1]")


@dataclass
class Timings:
    extract_s: float = 0.0
    vision_s: float = 0.0
    delta_s: float = 0.0
    prefill_s: float = 0.0
    ttft_s: float = 0.0
    decode_s: float = 0.0
    e2e_s: float = 0.0
    compile_s: float = 0.0  # first compiled decode step for a new static-cache length (not in e2e)


@dataclass
class Answer:
    text: str
    token_ids: list[int]  # generated ids, without the stop token
    finish_reason: str  # "stop" (EOS / end of turn), "length" (max_new_tokens) or "cancelled"
    prompt_tokens: int  # context positions before the answer (text + visual; all turns in a chat)
    visual_tokens: int
    timings: Timings

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    def to_dict(self) -> dict:
        return {
            "answer": self.text,
            "finish_reason": self.finish_reason,
            "visual_tokens": self.visual_tokens,
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            **{k: round(v, 6) for k, v in asdict(self.timings).items()},
        }


class IncrementalDetokenizer:
    """Token ids → text pieces whose concatenation is ``decode(all ids)``.

    Decodes a two-window slice each step (the previous token(s) + the new ones) and emits the
    growth, so sentencepiece's leading spaces and byte-level pieces of a multi-byte character (held
    back while the text ends in U+FFFD) come out right.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the context window
        self.read_offset = 0  # end of what has been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        """What is still held back (an incomplete character at the very end)."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix) :]


def new_cache(model, capacity: int | None = None):
    """An empty KV cache: a ``DynamicCache``, or a ``StaticCache`` for ``capacity`` positions
    (rounded up to ``static_cache_length``)."""
    from transformers import DynamicCache, StaticCache

    config = model.language_model.config
    if capacity is None:
        return DynamicCache(config=config)
    return StaticCache(config=config, max_cache_len=static_cache_length(capacity))


MIN_STATIC_CACHE = 256


def static_cache_length(positions: int) -> int:
    """The length a static cache for ``positions`` positions gets: the next power of two, ≥ 256.

    A compiled step is specialised to its cache's length; powers of two let a handful of compiled
    steps serve every prompt length, at most doubling the cache's memory."""
    return max(MIN_STATIC_CACHE, 1 << (positions - 1).bit_length())


def cached_length(cache) -> int:
    """Positions a cache holds (a ``StaticCache`` counts them in a tensor)."""
    return 0 if cache is None else int(cache.get_seq_length())


def is_static(cache) -> bool:
    from transformers import StaticCache

    return isinstance(cache, StaticCache)


def fit_cache(model, cache, positions: int, static: bool):
    """The cache to decode with when the context will reach ``positions`` positions in all.

    ``cache`` itself when it is of the asked kind and, if static, long enough; otherwise a new
    cache holding a copy of what ``cache`` holds (None: an empty one). A chat whose static cache
    would overflow on this turn moves to a longer one (the next power of two); a shorter turn keeps
    reusing the one it has."""
    if cache is not None and is_static(cache) == static:
        if not static or cache.layers[0].max_cache_len >= positions:
            return cache
    fresh = new_cache(model, positions if static else None)
    length = cached_length(cache)
    if length:
        # The cache_position keyword is what transformers 4.x static layers index with (5.x ignores it).
        where = {"cache_position": torch.arange(length, device=model.device)}
        for index, layer in enumerate(cache.layers):
            fresh.update(layer.keys[:, :, :length], layer.values[:, :, :length], index, where)
    return fresh


def _cache_argument(language_model) -> str:
    """transformers ≥ 5 calls it ``cache``; earlier versions ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(language_model.forward).parameters else "past_key_values"


def forward_last(language_model, lm_head, inputs_embeds: torch.Tensor, **forward) -> torch.Tensor:
    """(B, n, D) through the LLM (``forward``: its cache, masks, positions); (B, V) logits of each
    row's last position. The LM head runs on those positions only."""
    hidden = language_model(inputs_embeds=inputs_embeds, use_cache=True, **forward).last_hidden_state
    return lm_head(hidden[:, -1])


def compiled_steps_available(device: torch.device) -> bool:
    """Decode steps are compiled on CUDA only (see the module docstring)."""
    return device.type == "cuda"


@functools.cache
def compiled_forward_last():
    """``forward_last`` under ``torch.compile``, mode "reduce-overhead": a CUDA graph replays the
    whole step (the static caches' tensors keep fixed addresses). One compiled function for every
    model; dynamo specialises it per model, cache length and batch size."""
    return torch.compile(forward_last, mode="reduce-overhead")


# model → the static-cache lengths its decode step has been compiled for
_compiled_cache_lengths: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class DecodeStep:
    """One decode step of one sequence: (1, 1, D) embedding → (V,) logits, appended to ``cache``.

    Eager, or compiled when the config asks for it and the device supports it. ``warming_up`` says
    whether the next call compiles (the first at a static-cache length this model has not compiled
    for): its time is ``Timings.compile_s``, not decode time.
    """

    def __init__(self, model, cache, generation: GenerationConfig):
        self.model = model
        self.cache = cache
        self.compiled = generation.compile and compiled_steps_available(model.device)
        self.warming_up = False
        if self.compiled:
            compiled_lengths = _compiled_cache_lengths.setdefault(model, set())
            length = cache.layers[0].max_cache_len
            self.warming_up = length not in compiled_lengths
            compiled_lengths.add(length)

    def __call__(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        model = self.model
        if not self.compiled:
            return _last_logits(model, self.cache, inputs_embeds)
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
        forward = {_cache_argument(model.language_model): self.cache}
        logits = compiled_forward_last()(model.language_model, model.lm_head, inputs_embeds, **forward)
        self.warming_up = False
        return logits[0].float()  # a copy: the graph's output buffer is reused by the next replay


def _last_logits(model, cache, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """Run (1, n, D) through the LLM, appending to ``cache``; logits (V,) of the last position."""
    forward = {_cache_argument(model.language_model): cache}
    return forward_last(model.language_model, model.lm_head, inputs_embeds, **forward)[0].float()


def _choose(
    logits: torch.Tensor, generation: GenerationConfig, generator: torch.Generator | None, blocked=None
) -> int:
    """The next token: greedy, or sampled; never one of ``blocked`` (token ids)."""
    if blocked:
        logits = logits.clone()
        logits[..., list(blocked)] = float("-inf")
    if generation.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.cpu() / generation.temperature, dim=-1)
    if generation.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < generation.top_p  # the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class AnswerBuilder:
    """The per-answer half of decoding, whoever runs the forwards (``TextStream`` for one sequence,
    ``cope.model.videolm.batching`` for many at once): which token comes next (greedy or sampled,
    end tokens held back until ``min_tokens`` are out), where the answer ends, and its text.

    ``choose(logits)`` picks a token; ``accept(token)`` takes it and returns the new text piece
    (maybe ""); once the answer is complete ``finish_reason`` is "stop" (an end token, not part of
    the answer) or "length" (``max_new_tokens``).
    """

    def __init__(self, model, generation: GenerationConfig):
        self.generation = generation
        self.tokenizer = model.tokenizer
        self.stop_token_ids: frozenset[int] = model.stop_token_ids
        self.generator = None if generation.seed is None else torch.Generator().manual_seed(generation.seed)
        self.detokenizer = IncrementalDetokenizer(model.tokenizer)
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None

    def choose(self, logits: torch.Tensor) -> int:
        held_back = len(self.token_ids) < self.generation.min_tokens
        return _choose(logits, self.generation, self.generator, self.stop_token_ids if held_back else None)

    def accept(self, token: int) -> str:
        if token in self.stop_token_ids and not self.generation.ignore_eos:
            self.finish_reason = "stop"
            return ""
        self.token_ids.append(token)
        piece = self.detokenizer.push(token)
        if len(self.token_ids) >= self.generation.max_new_tokens:
            self.finish_reason = "length"
        return piece

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end)."""
        return self.detokenizer.flush()

    def answer(self, finish_reason: str, prompt_tokens: int, visual_tokens: int, timings: Timings) -> Answer:
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        return Answer(text, list(self.token_ids), finish_reason, prompt_tokens, visual_tokens, timings)


def start_timings(encoded: EncodedVideo | None) -> Timings:
    """An answer's timings, the video's encoding costs filled in (they count on its first turn)."""
    if encoded is None:
        return Timings()
    return Timings(extract_s=encoded.extract_s, vision_s=encoded.vision_s, delta_s=encoded.delta_s)


class Prefill:
    """A (1, n, D) prompt fed into ``cache``, ``chunk`` positions per forward (None: all at once).

    ``advance()`` runs one forward over the next chunk: each chunk attends to the cached positions
    before it, so greedy answers are the same whatever the chunk. Once ``done``, ``logits`` are the
    (V,) logits of the prompt's last position. A server advances one chunk at a time between batch
    steps; ``prefill`` runs them all.
    """

    def __init__(self, model, cache, inputs_embeds: torch.Tensor, chunk: int | None):
        self.model = model
        self.cache = cache
        self.inputs_embeds = inputs_embeds
        self.chunk = chunk or inputs_embeds.shape[1]
        self.fed = 0  # prompt positions in the cache
        self.logits: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        return self.fed == self.inputs_embeds.shape[1]

    def advance(self) -> None:
        with torch.inference_mode():
            positions = self.inputs_embeds[:, self.fed : self.fed + self.chunk]
            self.logits = _last_logits(self.model, self.cache, positions)
        self.fed += positions.shape[1]


def prefill(model, cache, inputs_embeds: torch.Tensor, chunk: int | None, should_stop) -> torch.Tensor | None:
    """Feed the (1, n, D) prompt into ``cache``, ``chunk`` positions per forward; the (V,) logits of
    its last position, or None when ``should_stop`` said so between chunks."""
    feeding = Prefill(model, cache, inputs_embeds, chunk)
    while not feeding.done:
        signals.check()
        if should_stop():
            return None
        feeding.advance()
    return feeding.logits


class TextStream:
    """Iterate for the answer's text pieces; ``answer`` is set once the iteration ends.

    ``finish()`` drains the stream and returns the ``Answer``; ``close()`` stops early (the answer
    so far gets finish_reason "cancelled"). ``should_stop``, when given, is asked between prefill
    chunks and before every decode step; once it says True the stream ends as "cancelled" (a server
    uses it for disconnected clients and deadlines, which must not wait for a whole prefill).
    """

    def __init__(
        self,
        model,
        cache,
        inputs_embeds: torch.Tensor,
        context_tokens: int,
        visual_tokens: int,
        generation: GenerationConfig,
        encoded: EncodedVideo | None,
        on_done: Callable[[Answer, int, bool], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        self.model = model
        self.cache = cache
        self.answer: Answer | None = None
        self.prompt_tokens = context_tokens  # known before the prefill runs (servers check it)
        self._on_done = on_done
        self._should_stop = should_stop or (lambda: False)
        self._pieces: Generator[str, None, None] = self._run(
            inputs_embeds, context_tokens, visual_tokens, generation, encoded
        )

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def __next__(self) -> str:
        return next(self._pieces)

    def finish(self) -> Answer:
        for _ in self._pieces:
            pass
        if self.answer is None:  # set by the generator's ``finally`` on every way out
            raise RuntimeError("the stream ended without an answer")
        return self.answer

    def close(self) -> None:
        self._pieces.close()

    def _run(
        self, inputs_embeds, context_tokens, visual_tokens, generation, encoded
    ) -> Generator[str, None, None]:
        model, device = self.model, self.model.device
        builder = AnswerBuilder(model, generation)
        step = DecodeStep(model, self.cache, generation)
        timings = start_timings(encoded)
        fed = 0  # generated tokens already in the cache
        finish = "cancelled"
        consistent = False  # the cache holds exactly the prompt + the fed tokens
        try:
            with torch.inference_mode():
                synchronize(device)
                start = time.perf_counter()
                logits = prefill(
                    model, self.cache, inputs_embeds, generation.prefill_chunk_tokens, self._should_stop
                )
                if logits is None:  # stopped mid-prefill: the cache holds part of the prompt
                    return
                token = builder.choose(logits)
                synchronize(device)
                timings.prefill_s = time.perf_counter() - start
            timings.ttft_s = timings.vision_s + timings.delta_s + timings.prefill_s
            while True:
                start = time.perf_counter()
                piece = builder.accept(token)
                timings.decode_s += time.perf_counter() - start
                if piece:
                    yield piece
                if builder.finish_reason is not None:
                    finish = builder.finish_reason
                    break
                if self._should_stop():  # finish stays "cancelled"; the cache holds what was fed
                    break
                signals.check()  # a signal swallowed inside torch or a callback still stops us
                warming_up = step.warming_up
                start = time.perf_counter()
                with torch.inference_mode():
                    logits = step(model.embed_text(torch.tensor([token])).unsqueeze(0))  # (1, 1, D) in
                    token = builder.choose(logits)
                    fed += 1
                    synchronize(device)
                elapsed = time.perf_counter() - start
                if warming_up:
                    timings.compile_s += elapsed
                else:
                    timings.decode_s += elapsed
            consistent = True
            tail = builder.flush()
            if tail:
                yield tail
        except GeneratorExit:  # closed by the consumer at a yield: the cache is consistent
            consistent = True
            raise
        finally:
            timings.e2e_s = timings.ttft_s + timings.decode_s
            self.answer = builder.answer(finish, context_tokens, visual_tokens, timings)
            if self._on_done is not None:
                self._on_done(self.answer, fed, consistent)


def stream(model, prompt: PromptInputs, generation: GenerationConfig | None = None) -> TextStream:
    """Generate an answer to a one-turn prompt with a fresh KV cache."""
    generation = generation or GenerationConfig()
    positions = prompt.prompt_tokens + generation.max_new_tokens
    return TextStream(
        model,
        fit_cache(model, None, positions, static=generation.compile),
        prompt.inputs_embeds,
        prompt.prompt_tokens,
        prompt.visual_tokens,
        generation,
        prompt.encoded,
    )


@dataclass
class ChatTurn:
    """A chat turn ready to prefill: what ``ChatSession.prepare`` computed for one question."""

    messages: list[dict]  # the conversation, the new question last
    text: str  # ``messages`` rendered, with the assistant header
    ids: list[int]  # ``text`` as ids (the placeholder id where the video is)
    cache: (
        Any  # the KV cache (Dynamic or Static) this turn extends: it holds the conversation's cached prefix
    )
    inputs_embeds: torch.Tensor  # (1, n, D) the positions to prefill
    context_tokens: int  # every position before the answer: cached before the turn + n
    visual_tokens: int
    encoded: EncodedVideo | None  # the video, when its encoding cost counts in this turn (the first)


class ChatSession:
    """Many questions about one encoded video; every turn extends the same KV cache.

    Turn n renders the whole conversation with the chat template; the part after what is already
    cached (the previous answer's end-of-turn, the new user turn, the assistant header) is the only
    text prefilled. If a template re-renders earlier turns differently (so the cached text is no
    longer a prefix), the session falls back to one full prefill — the video is never re-encoded.

    With ``generation.compile`` the cache is a ``StaticCache`` sized for the turn's prompt +
    ``max_new_tokens`` (rounded up to a power of two); later turns keep reusing it while they fit,
    and a turn that would overflow it moves the conversation into a cache of the next size that fits.
    """

    def __init__(
        self,
        model,
        encoded: EncodedVideo,
        generation: GenerationConfig | None = None,
        system: str | None = None,
    ):
        self.model = model
        self.encoded = encoded
        self.generation = generation or GenerationConfig()
        self.system = system  # a system turn before the video turn (None: config / template default)
        self.messages: list[dict] = []  # the conversation (the first user turn carries the placeholder)
        self.cache: Any = None  # DynamicCache | StaticCache once a turn has run
        self._ids: list[int] = []  # the conversation as ids (placeholder id where the video is)
        self._text = ""  # the text those ids stand for: a prefix of the next turn's rendering
        self._cached_ids = 0  # leading ids of _ids whose positions are in the cache
        self._active: TextStream | None = None

    @property
    def cached_tokens(self) -> int:
        return cached_length(self.cache)

    def ask(self, question: str) -> Answer:
        return self.stream(question).finish()

    def stream(self, question: str, should_stop: Callable[[], bool] | None = None) -> TextStream:
        """The answer to ``question`` as a ``TextStream`` (see there for ``should_stop``)."""
        if self._active is not None and self._active.answer is None:
            self._active.close()  # an abandoned stream ends its turn as "cancelled"
        turn = self.prepare(question)
        self._active = TextStream(
            self.model,
            turn.cache,
            turn.inputs_embeds,
            turn.context_tokens,
            turn.visual_tokens,
            self.generation,
            turn.encoded,
            functools.partial(self.complete, turn),
            should_stop,
        )
        return self._active

    def prepare(self, question: str) -> ChatTurn:
        """The next turn: what to prefill, into which cache (``stream`` runs it; a batching server
        prefills and decodes it itself, then calls ``complete``)."""
        model = self.model
        check_question(model, question)
        user = {"role": "user", "content": question} if self.messages else video_turn(model, question)
        messages = [*self.messages, user]
        full = render_chat(model, messages, add_generation_prompt=True, system=self.system)
        cache, encoded = self.cache, None
        with torch.inference_mode():
            if cache is not None and full.startswith(self._text):
                new_ids = tokenize(model, full[len(self._text) :]).tolist()
                all_ids = self._ids + new_ids
                embeds = model.embed_text(torch.tensor(all_ids[self._cached_ids :], dtype=torch.long))
            else:  # first turn, or start over (the video's embeddings are reused, never re-encoded)
                all_ids = tokenize(model, full).tolist()
                embeds = model.splice(torch.tensor(all_ids), self.encoded.embeds)
                encoded = None if self.messages else self.encoded  # the video's cost counts on turn 1
                cache = None
            context = cached_length(cache) + embeds.shape[0]
            cache = fit_cache(model, cache, context + self.generation.max_new_tokens, self.generation.compile)
        return ChatTurn(
            messages, full, all_ids, cache, embeds.unsqueeze(0), context, self.encoded.visual_tokens, encoded
        )

    def complete(self, turn: ChatTurn, answer: Answer, fed: int, consistent: bool) -> None:
        """Record a finished turn: ``turn.cache`` holds its prompt + the first ``fed`` answer tokens
        when ``consistent``; otherwise (a forward failed midway) the next turn starts over."""
        if not consistent:
            self.cache, self._ids, self._text, self._cached_ids = None, [], "", 0
            return
        self.cache = turn.cache
        self.messages = [*turn.messages, {"role": "assistant", "content": answer.text}]
        self._ids = turn.ids + answer.token_ids
        self._cached_ids = len(turn.ids) + fed
        self._text = turn.text + answer.text
