"""Generation: explicit prefill → KV-cached decode loop, streamed text, timings, multi-turn chat.

Timings (seconds; the device is synchronised before every clock read):
* ``vision_s`` / ``delta_s`` — embedding the RGB frames / P-frames (from ``EncodedVideo``);
* ``prefill_s`` — the LLM over the whole prompt + choosing the first token;
* ``ttft_s`` = vision_s + delta_s + prefill_s: the first answer token is available;
* ``decode_s`` — every later token (one cached forward each) and detokenisation;
* ``e2e_s`` = ttft_s + decode_s;
* ``extract_s`` — codec decoding and fusion (reported, not part of ttft/e2e, as in the paper).
Time a consumer spends between two streamed pieces is not counted.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass

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


def new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.language_model.config)


def _cache_argument(language_model) -> str:
    """transformers ≥ 5 calls it ``cache``; earlier versions ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(language_model.forward).parameters else "past_key_values"


def _last_logits(model, cache, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """Run (1, n, D) through the LLM, appending to ``cache``; logits (V,) of the last position."""
    out = model.language_model(
        inputs_embeds=inputs_embeds, use_cache=True, **{_cache_argument(model.language_model): cache}
    )
    return model.lm_head(out.last_hidden_state[0, -1]).float()


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


def _blocked_stops(model, generation: GenerationConfig, produced: int) -> frozenset[int] | None:
    """The stop tokens while fewer than ``min_tokens`` tokens are out, else None."""
    return model.stop_token_ids if produced < generation.min_tokens else None


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

    def _prefill(self, inputs_embeds: torch.Tensor, chunk: int | None) -> torch.Tensor | None:
        """The last position's logits after feeding the prompt; None when stopped in between."""
        total = inputs_embeds.shape[1]
        step = chunk or total
        logits = None
        for start in range(0, total, step):
            signals.check()
            if self._should_stop():
                return None
            logits = _last_logits(self.model, self.cache, inputs_embeds[:, start : start + step])
        return logits

    def _run(
        self, inputs_embeds, context_tokens, visual_tokens, generation, encoded
    ) -> Generator[str, None, None]:
        model, device = self.model, self.model.device
        generator = None
        if generation.seed is not None:
            generator = torch.Generator().manual_seed(generation.seed)
        detokenizer = IncrementalDetokenizer(model.tokenizer)
        timings = Timings()
        if encoded is not None:
            timings.extract_s, timings.vision_s, timings.delta_s = (
                encoded.extract_s,
                encoded.vision_s,
                encoded.delta_s,
            )
        ids: list[int] = []
        fed = 0  # generated tokens already in the cache
        finish = "cancelled"
        consistent = False  # the cache holds exactly the prompt + the fed tokens
        try:
            with torch.inference_mode():
                synchronize(device)
                start = time.perf_counter()
                logits = self._prefill(inputs_embeds, generation.prefill_chunk_tokens)
                if logits is None:  # stopped mid-prefill: the cache holds part of the prompt
                    return
                token = _choose(logits, generation, generator, _blocked_stops(model, generation, 0))
                synchronize(device)
                timings.prefill_s = time.perf_counter() - start
            timings.ttft_s = timings.vision_s + timings.delta_s + timings.prefill_s
            while True:
                start = time.perf_counter()
                if token in model.stop_token_ids and not generation.ignore_eos:
                    finish = "stop"
                    timings.decode_s += time.perf_counter() - start
                    break
                ids.append(token)
                piece = detokenizer.push(token)
                timings.decode_s += time.perf_counter() - start
                if piece:
                    yield piece
                if len(ids) >= generation.max_new_tokens:
                    finish = "length"
                    break
                if self._should_stop():  # finish stays "cancelled"; the cache holds what was fed
                    break
                signals.check()  # a signal swallowed inside torch or a callback still stops us
                start = time.perf_counter()
                with torch.inference_mode():
                    step = model.embed_text(torch.tensor([token])).unsqueeze(0)  # (1, 1, D)
                    logits = _last_logits(model, self.cache, step)
                    token = _choose(
                        logits, generation, generator, _blocked_stops(model, generation, len(ids))
                    )
                    fed += 1
                    synchronize(device)
                timings.decode_s += time.perf_counter() - start
            consistent = True
            tail = detokenizer.flush()
            if tail:
                yield tail
        except GeneratorExit:  # closed by the consumer at a yield: the cache is consistent
            consistent = True
            raise
        finally:
            timings.e2e_s = timings.ttft_s + timings.decode_s
            text = model.tokenizer.decode(ids, skip_special_tokens=True)
            self.answer = Answer(text, ids, finish, context_tokens, visual_tokens, timings)
            if self._on_done is not None:
                self._on_done(self.answer, fed, consistent)


def stream(model, prompt: PromptInputs, generation: GenerationConfig | None = None) -> TextStream:
    """Generate an answer to a one-turn prompt with a fresh KV cache."""
    return TextStream(
        model,
        new_cache(model),
        prompt.inputs_embeds,
        prompt.prompt_tokens,
        prompt.visual_tokens,
        generation or GenerationConfig(),
        prompt.encoded,
    )


class ChatSession:
    """Many questions about one encoded video; every turn extends the same KV cache.

    Turn n renders the whole conversation with the chat template; the part after what is already
    cached (the previous answer's end-of-turn, the new user turn, the assistant header) is the only
    text prefilled. If a template re-renders earlier turns differently (so the cached text is no
    longer a prefix), the session falls back to one full prefill — the video is never re-encoded.
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
        self.cache = None
        self._ids: list[int] = []  # the conversation as ids (placeholder id where the video is)
        self._text = ""  # the text those ids stand for: a prefix of the next turn's rendering
        self._cached_ids = 0  # leading ids of _ids whose positions are in the cache
        self._active: TextStream | None = None

    @property
    def cached_tokens(self) -> int:
        return 0 if self.cache is None else self.cache.get_seq_length()

    def ask(self, question: str) -> Answer:
        return self.stream(question).finish()

    def stream(self, question: str, should_stop: Callable[[], bool] | None = None) -> TextStream:
        """The answer to ``question`` as a ``TextStream`` (see there for ``should_stop``)."""
        model = self.model
        if self._active is not None and self._active.answer is None:
            self._active.close()  # an abandoned stream ends its turn as "cancelled"
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
                cache = new_cache(model)
        context = (0 if cache is None else cache.get_seq_length()) + embeds.shape[0]

        def done(answer: Answer, fed: int, consistent: bool) -> None:
            if not consistent:  # failed mid-forward: recompute everything next turn
                self.cache, self._ids, self._text, self._cached_ids = None, [], "", 0
                return
            self.cache = cache
            self.messages = [*messages, {"role": "assistant", "content": answer.text}]
            self._ids = all_ids + answer.token_ids
            self._cached_ids = len(all_ids) + fed
            self._text = full + answer.text

        self._active = TextStream(
            model,
            cache,
            embeds.unsqueeze(0),
            context,
            self.encoded.visual_tokens,
            self.generation,
            encoded,
            done,
            should_stop,
        )
        return self._active
