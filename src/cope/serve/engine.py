"""The loaded VideoLM behind the API, the batch its answers decode in, and the caches that make
later turns cheap.

Everything here runs on the worker thread (``worker.py``), so the model and the caches below are
never touched concurrently.

Continuous batching: a chat job encodes its video (or takes it from the cache) and prepares its
turn; then the worker runs batch steps (``step``). Each step feeds one chunk of one prompt being
prefilled (``prefill_chunk_tokens`` positions, into the answer's own KV cache; the prompts take
turns, so a short one is not stuck behind a long one), and then one decode forward for every
answer in ``cope.model.videolm.batching.BatchDecoder``, each choosing its next token with its own
sampling settings and stopping at its own end token or ``max_tokens``. A prompt whose last chunk
is in chooses its first token and joins the decoding answers. Long prompts never stall the others'
decoding for more than a chunk at a time, and every answer checks its request's cancellation and
deadline at every step. At most ``max_batch`` answers are prefilling or decoding; one that is
done, cancelled or past its deadline leaves at once, and the next queued job starts before the
next step.

Two caches, both least-recently-used:
* encoded videos — ``EncodedVideo`` (the (T, D) visual embeddings) keyed by
  (video SHA-256, mode, keyframes_per_gop, fusion): a second question about the same video under
  the same sampling never re-encodes it;
* chat sessions — a ``ChatSession`` (its KV cache) keyed by the encoded video plus the exact
  conversation it holds (system message included). OpenAI clients resend the whole conversation
  each turn; when the history of a request (everything before its last user message) is what a
  kept session holds, the session continues and only the new turn is prefilled. Otherwise a new
  session starts from the cached embeddings and prefills the given history once.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from cope.errors import CopeInputError
from cope.model.videolm.batching import BatchDecoder, BatchedSequence
from cope.model.videolm.generation import AnswerBuilder, ChatSession, ChatTurn, Prefill, Timings
from cope.serve.config import ServeSettings
from cope.serve.errors import APIError
from cope.serve.protocol import ChatCompletionRequest, Conversation
from cope.serve.videos import VideoFile, VideoStore
from cope.serve.worker import IN_BATCH, Job, internal_error, timeout_error

log = logging.getLogger("cope.serve")


@dataclass(frozen=True)
class Options:
    """Per-request sampling (which frames the model reads) and generation settings."""

    mode: str
    keyframes_per_gop: int
    fusion: int
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    min_tokens: int = 0  # end tokens suppressed until this many are out (vLLM's min_tokens)
    ignore_eos: bool = False  # decode through end tokens up to max_new_tokens (vLLM's ignore_eos)

    @property
    def video_key(self) -> tuple:
        return (self.mode, self.keyframes_per_gop, self.fusion)


@dataclass(frozen=True)
class ChatJob:
    video: VideoFile
    system: str | None  # the request's system message, if any
    history: list[dict]  # the turns before the question, as ``ChatEngine.messages`` builds them
    question: str
    options: Options
    arrival: float  # time.monotonic() when the request arrived


@dataclass
class ChatResult:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int  # every position before the answer: text + visual, all turns
    visual_tokens: int
    completion_tokens: int
    ttft_s: float  # request arrival → first answer token, measured by the server
    queue_s: float  # of which: waiting for the model
    e2e_s: float  # request arrival → last token
    encoded_video_cached: bool  # the visual embeddings came from the cache (no re-encoding)
    kv_cache_reused: bool  # the conversation so far was already in a session's KV cache

    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "visual_tokens": self.visual_tokens,
            "ttft_s": round(self.ttft_s, 6),
            "queue_s": round(self.queue_s, 6),
            "e2e_s": round(self.e2e_s, 6),
            "encoded_video_cached": self.encoded_video_cached,
            "kv_cache_reused": self.kv_cache_reused,
        }


@dataclass
class Answering:
    """A chat job from its prefill to its last token."""

    job: Job
    spec: ChatJob
    session: ChatSession
    turn: ChatTurn
    prefill: Prefill  # the turn's prompt going into its session's cache, a chunk per step
    builder: AnswerBuilder
    started: float  # time.monotonic() when its job started
    video_key: tuple  # the encoded video's key: with the conversation, the session's key in the LRU
    encoded_cached: bool
    kv_reused: bool
    first_piece: float | None = None  # time.monotonic() of the first text piece
    sequence: BatchedSequence | None = None  # its row in the batch, once joined

    def emit(self, piece: str) -> None:
        if piece:
            self.first_piece = self.first_piece or time.monotonic()
            self.job.emit("delta", piece)


class LRU(OrderedDict):
    """A dict that forgets its least recently used entries beyond ``capacity``."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def get_fresh(self, key):
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


class ChatEngine:
    """One ``CopeVideoLM`` with its encoded-video and chat-session caches."""

    def __init__(self, model, settings: ServeSettings):
        self.model = model
        self.settings = settings
        self.encoded = LRU(settings.encoded_cache_entries)  # (sha256, mode, K, fusion) → EncodedVideo
        self.sessions = LRU(settings.chat_sessions)  # (video key, conversation) → ChatSession
        self.encode_calls = 0
        self.context_tokens = model.language_model.config.max_position_embeddings
        self.max_prompt_tokens = settings.max_prompt_tokens or default_prompt_limit(
            self.context_tokens, settings.max_tokens_limit
        )
        # No token covers more characters than the longest vocabulary entry, so a text longer than
        # max_prompt_tokens × that is refused before anything tokenizes it.
        self.max_token_chars = max(map(len, model.tokenizer.get_vocab()), default=1)
        # A private copy of the tokenizer for request threads, so they never share the worker's.
        self.text_tokenizer = _private_tokenizer(model.tokenizer)
        self.decoder = BatchDecoder(model, settings.max_batch, compile=settings.compile)
        self.prefilling: deque[Answering] = deque()  # answers whose prompts are going in, in turn
        self.answering: dict[int, Answering] = {}  # id(sequence) → the answer decoding in that row

    @property
    def canonical_settings(self):
        """The model's canonical settings, with the server's ``--codec`` where one was given."""
        canonical = self.model.config.canonical
        return replace(canonical, codec=self.settings.codec) if self.settings.codec else canonical

    def options(self, request: ChatCompletionRequest) -> Options:
        """The request's settings with the server's and the model's defaults filled in."""
        config, settings = self.model.config, self.settings
        mode = request.mode or config.mode
        if mode == "cope" and self.model.delta_encoder is None:
            raise APIError(
                400,
                "this model has no Δ-encoder: use mode dense, iframes-only or delta-zero",
                code="unsupported_mode",
                param="mode",
            )
        max_tokens = request.max_completion_tokens or request.max_tokens or settings.default_max_tokens
        if max_tokens > settings.max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens {max_tokens} exceeds this server's limit {settings.max_tokens_limit}",
                param="max_tokens",
            )
        if request.stop is not None:
            raise APIError(
                400,
                "stop sequences are not supported; the model stops at its end-of-turn token",
                param="stop",
            )
        keyframes_per_gop = request.keyframes_per_gop or config.keyframes_per_gop
        fusion = request.fusion or config.fusion
        check_sampling(config.canonical.gop, fusion, keyframes_per_gop)
        return Options(
            mode=mode,
            keyframes_per_gop=keyframes_per_gop,
            fusion=fusion,
            max_new_tokens=max_tokens,
            temperature=0.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            seed=request.seed,
            min_tokens=self._min_tokens(request, max_tokens),
            ignore_eos=request.ignore_eos,
        )

    @staticmethod
    def _min_tokens(request: ChatCompletionRequest, max_tokens: int) -> int:
        if (request.min_tokens or 0) > max_tokens:
            raise APIError(
                400, f"min_tokens {request.min_tokens} exceeds max_tokens {max_tokens}", param="min_tokens"
            )
        return request.min_tokens or 0

    def check_text_length(self, conversation: Conversation) -> None:
        """Refuse a conversation whose text alone exceeds the prompt limit (a request thread, before
        queueing: a huge text never reaches the worker). Tokenized alone, a text may split one token
        differently at each end than inside the template: one token per text is conceded."""
        texts = [turn.text for turn in conversation.turns] + [conversation.system or ""]
        chars = sum(map(len, texts))
        if chars > self.max_prompt_tokens * self.max_token_chars:  # decided without tokenizing
            raise prompt_too_long(f"the messages are {chars} characters", self.max_prompt_tokens)
        if self.text_tokenizer is None:
            return
        tokens = sum(
            len(e.ids) - 1 for e in self.text_tokenizer.encode_batch(texts, add_special_tokens=False)
        )
        if tokens > self.max_prompt_tokens:
            raise prompt_too_long(f"the messages alone are over {tokens} tokens", self.max_prompt_tokens)

    def check_prompt(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """OpenAI's context_length_exceeded: the prompt, or prompt + completion, does not fit."""
        if prompt_tokens > self.max_prompt_tokens:
            raise prompt_too_long(
                f"the prompt is {prompt_tokens} tokens (text + video, all turns)", self.max_prompt_tokens
            )
        if prompt_tokens + max_new_tokens > self.context_tokens:  # OpenAI's own wording
            message = (
                f"This model's maximum context length is {self.context_tokens} tokens. However, you "
                f"requested {prompt_tokens + max_new_tokens} tokens ({prompt_tokens} in the messages, "
                f"{max_new_tokens} in the completion)."
            )
            raise APIError(400, message, code="context_length_exceeded", param="messages")

    # ----- jobs (worker thread) ---------------------------------------------------------------------

    def summarize(self, store: VideoStore, video: VideoFile) -> dict:
        """The GOP/token summary of an uploaded video (``cope inspect``'s report, model layout added)."""
        stored = video.video  # the summary belongs to the bytes: computed once for every upload of them
        if stored.summary is None:
            with store.hold(video):
                codec_video = store.open_canonical(video)
            plans = codec_video.standard_plans(self.model.config.fusion)
            layout = self.model.config.layout
            stored.summary = {
                "source": codec_video.source.to_dict(),
                "canonical": codec_video.info.to_dict(),
                "plans": {
                    name: {**plan.to_dict(), "model_tokens": plan.tokens(layout)}
                    for name, plan in plans.items()
                },
            }
        return stored.summary

    def respond(self, job: Job, store: VideoStore, spec: ChatJob):
        """Encode (or reuse) the video, continue (or start) a chat session and prepare the turn;
        ``IN_BATCH``: the batch steps prefill it and decode its answer (``step``).

        Emits "ready" once the video is encoded and the prompt checked; the steps then emit one
        "delta" per text piece.
        """
        from cope.model.videolm import GenerationConfig

        started = time.monotonic()
        options = spec.options
        video_key = (spec.video.sha256, *options.video_key)
        session = self.sessions.pop((video_key, spec.system, _freeze(spec.history)), None)
        kv_reused = encoded_cached = session is not None  # a kept session holds its encoded video
        if session is None:
            with store.hold(spec.video):
                encoded, encoded_cached = self._encoded_video(store, spec.video, options)
            session = self.model.chat(encoded, system=spec.system)
            session.messages = list(spec.history)
        session.generation = GenerationConfig(  # the session's own cache only takes the prefill
            max_new_tokens=options.max_new_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            seed=options.seed,
            min_tokens=options.min_tokens,
            ignore_eos=options.ignore_eos,
        )
        turn = self._prepare(session, spec.question)
        job.emit("ready", None)
        chunk = self.settings.prefill_chunk_tokens
        answer = Answering(
            job,
            spec,
            session,
            turn,
            Prefill(self.model, turn.cache, turn.inputs_embeds, chunk),
            AnswerBuilder(self.model, session.generation),
            started,
            video_key,
            encoded_cached,
            kv_reused,
        )
        self.prefilling.append(answer)
        return IN_BATCH

    # ----- the batch (worker.Batch) -----------------------------------------------------------------

    @property
    def active(self) -> int:
        return len(self.decoder) + len(self.prefilling)

    @property
    def has_room(self) -> bool:
        """A job may start: fewer than ``max_batch`` answers are prefilling or decoding (so the
        decoder has a row for each prompt that completes)."""
        return self.active < self.decoder.max_batch

    def step(self) -> list[tuple[Job, tuple[str, Any]]]:
        """One prefill chunk (if a prompt is going in), then one decode step for every answer in
        the batch; the jobs that finished, with their outcomes."""
        finished = self._prefill_step() if self.prefilling else []
        if len(self.decoder):
            finished += self._decode_step()
        return finished

    def _prefill_step(self) -> list[tuple[Job, tuple[str, Any]]]:
        """The next chunk of the next prompt going in (it goes to the back of the line); after its
        last chunk, the answer's first token, and the answer joins the decoder (or is done)."""
        answer = self.prefilling.popleft()
        job, builder = answer.job, answer.builder
        try:
            if job.should_stop():  # its session, holding part of a prompt, is dropped
                return [(job, self._settle(lambda: self._result(answer)))]
            answer.prefill.advance()
            if not answer.prefill.done:
                self.prefilling.append(answer)
                return []
            token = builder.choose(answer.prefill.logits)
            answer.emit(builder.accept(token))
            if builder.finish_reason is not None:  # an end token first, or max_tokens 1
                return [(job, self._settle(lambda: self._complete(answer, fed=0)))]
            positions = answer.turn.context_tokens + answer.spec.options.max_new_tokens
            answer.sequence = self.decoder.join(answer.turn.cache, builder, token, positions)
            self.answering[id(answer.sequence)] = answer
            return []
        except Exception as exc:  # a failed forward fails this answer only
            log.exception("prefill failed")
            return [(job, ("error", internal_error(exc)))]

    def _decode_step(self) -> list[tuple[Job, tuple[str, Any]]]:
        try:
            with torch.inference_mode():
                pieces = self.decoder.step()
        except Exception as exc:  # the forward failed: no row can be trusted, every answer fails
            log.exception("batch step failed")
            failed = [(answer.job, ("error", internal_error(exc))) for answer in self.answering.values()]
            self.decoder.clear()  # their sessions are not kept: the next turns start over
            self.answering.clear()
            return failed
        finished = []
        for sequence, piece in pieces:
            answer = self.answering[id(sequence)]
            answer.emit(piece)
            if sequence.builder.finish_reason is not None or answer.job.should_stop():
                finished.append(answer)
        return [(answer.job, self._outcome(answer)) for answer in finished]

    def _outcome(self, answer: Answering) -> tuple[str, Any]:
        """Take a finished or cancelled answer out of the decoder: its job's outcome."""
        sequence = answer.sequence
        del self.answering[id(sequence)]
        complete = answer.builder.finish_reason is not None
        self.decoder.leave(sequence, keep=complete)  # its row is free for the next job
        if complete:
            return self._settle(lambda: self._complete(answer, sequence.fed))
        return self._settle(lambda: self._result(answer))

    @staticmethod
    def _settle(result: Callable[[], ChatResult]) -> tuple[str, Any]:
        """``result()`` as a job outcome: the ChatResult, or the error it raised."""
        try:
            return ("result", result())
        except APIError as exc:  # the deadline passed
            return ("error", exc)
        except Exception as exc:  # a bug: this job fails, the others go on
            log.exception("finishing an answer failed")
            return ("error", internal_error(exc))

    def _complete(self, answer: Answering, fed: int) -> ChatResult:
        """A complete answer (its cache holds the prompt + ``fed`` answer tokens): the last text, the
        session kept for the conversation's next turn, the result."""
        builder, turn, session = answer.builder, answer.turn, answer.session
        answer.emit(builder.flush())
        reply = builder.answer(builder.finish_reason, turn.context_tokens, turn.visual_tokens, Timings())
        session.complete(turn, reply, fed, consistent=True)
        self.sessions.put((answer.video_key, answer.spec.system, _freeze(session.messages)), session)
        return self._result(answer)

    def _result(self, answer: Answering) -> ChatResult:
        """The job's result; a cut-off answer's session is dropped (nobody continues it)."""
        done = time.monotonic()
        builder, job = answer.builder, answer.job
        finish_reason = builder.finish_reason or "cancelled"
        if finish_reason == "cancelled" and done > job.deadline and not job.cancelled.is_set():
            # Stopped by the request's own deadline (between prefill chunks or tokens), not by the
            # client: that is a timeout, whichever side noticed it first.
            raise timeout_error(self.settings.request_timeout_s)
        arrival = answer.spec.arrival
        return ChatResult(
            text=self.model.tokenizer.decode(builder.token_ids, skip_special_tokens=True),
            finish_reason=finish_reason,
            prompt_tokens=answer.turn.context_tokens,
            visual_tokens=answer.turn.visual_tokens,
            completion_tokens=len(builder.token_ids),
            ttft_s=(answer.first_piece or done) - arrival,
            queue_s=answer.started - arrival,
            e2e_s=done - arrival,
            encoded_video_cached=answer.encoded_cached,
            kv_cache_reused=answer.kv_reused,
        )

    def _prepare(self, session: ChatSession, question: str) -> ChatTurn:
        """The turn, its prompt checked before any prefill (a refusal is a plain 400)."""
        try:
            turn = session.prepare(question)
        except CopeInputError as exc:
            raise APIError(400, str(exc), param="messages") from exc
        self.check_prompt(turn.context_tokens, session.generation.max_new_tokens)
        return turn

    def _encoded_video(self, store: VideoStore, video: VideoFile, options: Options):
        key = (video.sha256, *options.video_key)
        encoded = self.encoded.get_fresh(key)
        if encoded is not None:
            return encoded, True
        codec_video = store.open_canonical(video)
        try:
            encoded = self.model.encode_video(
                codec_video, options.mode, keyframes_per_gop=options.keyframes_per_gop, fusion=options.fusion
            )
        except CopeInputError as exc:  # e.g. a keyframes_per_gop that does not divide the GOP's slots
            raise APIError(400, store.scrub(str(exc)), code="invalid_sampling") from exc
        self.encode_calls += 1
        self.encoded.put(key, encoded)
        return encoded, False

    def messages(self, conversation: Conversation) -> tuple[list[dict], str]:
        """The conversation as a session's messages (placeholder in the first user turn) + the question.

        Checked on the request's thread, before the job is queued.
        """
        from cope.model.videolm.prompting import video_turn

        placeholder = self.model.config.video_placeholder
        turns = conversation.turns
        for turn in turns:
            if placeholder in turn.text:
                raise APIError(
                    400, f"messages must not contain the video placeholder {placeholder!r}", param="messages"
                )
        history: list[dict] = []
        for i, turn in enumerate(turns[:-1]):  # the first turn is the user's, with the video
            history.append(
                video_turn(self.model, turn.text) if i == 0 else {"role": turn.role, "content": turn.text}
            )
        return history, turns[-1].text


def prompt_too_long(what: str, limit: int) -> APIError:
    return APIError(
        400,
        f"{what}; this server accepts at most {limit} prompt tokens",
        code="context_length_exceeded",
        param="messages",
    )


def _private_tokenizer(tokenizer):
    """An independent copy of a fast tokenizer's Rust backend (None for a slow tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def default_prompt_limit(context_tokens: int, max_tokens_limit: int) -> int:
    """The model's context minus the most a request may generate (half the context if that is all)."""
    return context_tokens - max_tokens_limit if context_tokens > max_tokens_limit else context_tokens // 2


def check_sampling(gop: int, fusion: int, keyframes_per_gop: int) -> None:
    """The CLI's rules for fusion and keyframes per GOP (a 400 ``invalid_sampling`` otherwise)."""
    from cope.plan import check_plan_options

    try:
        check_plan_options(gop, fusion, keyframes_per_gop)
    except ValueError as exc:
        param = "keyframes_per_gop" if str(exc).startswith("keyframes") else "fusion"
        raise APIError(400, str(exc), code="invalid_sampling", param=param) from exc


def _freeze(messages: list[dict]) -> tuple:
    return tuple((m["role"], m["content"]) for m in messages)
