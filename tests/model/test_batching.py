"""Continuous batching: N answers decoded together equal N answers decoded one after another."""

from __future__ import annotations

import pytest

from cope.model.videolm import GenerationConfig, Timings, tiny_random
from cope.model.videolm.batching import BatchDecoder
from cope.model.videolm.generation import AnswerBuilder, cached_length, prefill
from tests.model.support import QUESTIONS, decode_batched, random_video, requests, start

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model(request):
    return tiny_random(seed=0, text_model=request.param)


def test_batched_greedy_answers_equal_sequential_ones(model):
    work = requests(model, 6)
    sequential = [model.generate(prompt, config).token_ids for prompt, config in work]
    assert len({tuple(ids) for ids in sequential}) == 6 and all(len(ids) >= 3 for ids in sequential)
    assert decode_batched(model, work, max_batch=4) == sequential  # rows of different lengths, joins


def test_a_cancelled_sequence_frees_its_row_for_the_next(model):
    work = requests(model, 3)
    sequential = [model.generate(prompt, config).token_ids for prompt, config in work]
    decoder = BatchDecoder(model, max_batch=2)
    answers = decode_batched(model, work, max_batch=2, cancel={0: 2}, decoder=decoder)
    assert answers[0] == sequential[0][:3]  # its first token + two decoded, then it left
    assert answers[1:] == sequential[1:]  # the third joined in the freed row and answered alike
    assert len(decoder) == 0 and decoder.has_room


def test_the_slot_cache_grows_for_a_long_prompt_without_disturbing_the_others(model):
    work = requests(model, 3, longest=400)  # the last prompt needs more than 256 positions
    sequential = [model.generate(prompt, config).token_ids for prompt, config in work]
    decoder = BatchDecoder(model, max_batch=3)
    assert decode_batched(model, work, max_batch=3, decoder=decoder) == sequential
    assert decoder.cache.capacity == 512


def test_a_chat_turn_decoded_in_a_batch_continues_like_one_decoded_alone(model):
    """leave(keep=True) hands the answer's keys and values back to the session's cache: the next
    turn prefills only its new text and answers as in a session that never saw a batch."""
    video = random_video(model, positions=25)
    alone, batched = (model.chat(video, GenerationConfig(max_new_tokens=7)) for _ in range(2))
    first = alone.ask(QUESTIONS[0])
    turn = batched.prepare(QUESTIONS[0])
    builder = AnswerBuilder(model, batched.generation)
    token = builder.choose(prefill(model, turn.cache, turn.inputs_embeds, None, lambda: False))
    builder.accept(token)
    decoder = BatchDecoder(model, max_batch=2)
    other = decoder.join(*start(model, *requests(model, 1)[0]), positions=200)  # a neighbour row
    sequence = decoder.join(turn.cache, builder, token, turn.context_tokens + 7)
    while sequence.builder.finish_reason is None:
        decoder.step()
    decoder.leave(sequence, keep=True)
    decoder.leave(other)
    answer = builder.answer(builder.finish_reason, turn.context_tokens, turn.visual_tokens, Timings())
    batched.complete(turn, answer, sequence.fed, consistent=True)
    assert answer.token_ids == first.token_ids
    assert cached_length(batched.cache) == alone.cached_tokens
    assert batched.ask(QUESTIONS[1]).token_ids == alone.ask(QUESTIONS[1]).token_ids


@pytest.mark.slow
def test_a_compiled_batch_step_answers_like_the_eager_one(monkeypatch):
    """All rows and columns every step (fixed shapes for torch.compile; forced on this CPU)."""
    from cope.model.videolm import batching

    monkeypatch.setattr(batching, "compiled_steps_available", lambda device: True)
    model = tiny_random(seed=0)
    work = requests(model, 3)
    sequential = [model.generate(prompt, config).token_ids for prompt, config in work]
    decoder = BatchDecoder(model, max_batch=2, compile=True)
    assert decode_batched(model, work, max_batch=2, decoder=decoder) == sequential
