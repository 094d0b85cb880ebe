"""Static-cache decoding (``GenerationConfig.compile``) gives the dynamic path's answers token for token."""

from __future__ import annotations

from dataclasses import replace

import pytest
from transformers import DynamicCache, StaticCache

from cope.model.videolm import GenerationConfig, tiny_random
from cope.model.videolm.generation import static_cache_length
from tests.model.support import random_video

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = ("what is moving ?", "which direction ?", "how many objects ?")


@pytest.fixture(scope="module")
def model():
    return tiny_random(seed=0)


@pytest.fixture(scope="module")
def video(model):
    return random_video(model, positions=40)


def test_static_cache_lengths_are_powers_of_two():
    assert [static_cache_length(n) for n in (1, 256, 257, 600, 4096, 4097)] == [
        256,
        256,
        512,
        1024,
        4096,
        8192,
    ]


@pytest.mark.parametrize("extra", [{}, {"ignore_eos": True}, {"min_tokens": 10}, {"prefill_chunk_tokens": 7}])
def test_static_cache_answers_like_the_dynamic_cache(model, video, extra):
    prompt = model.build_prompt(video, QUESTIONS[0])
    dynamic_config = GenerationConfig(max_new_tokens=12, **extra)
    dynamic = model.stream(prompt, dynamic_config)
    static = model.stream(prompt, replace(dynamic_config, compile=True))
    assert isinstance(dynamic.cache, DynamicCache) and isinstance(static.cache, StaticCache)
    assert static.cache.layers[0].max_cache_len == 256  # 40 visual + the text + 12, rounded up
    dynamic_pieces, static_pieces = list(dynamic), list(static)  # streamed piece by piece
    assert len(set(dynamic.answer.token_ids)) >= 3  # the random model's answer is not one token repeated
    assert static.answer.token_ids == dynamic.answer.token_ids
    assert static_pieces == dynamic_pieces and "".join(static_pieces) == static.answer.text
    assert static.answer.finish_reason == dynamic.answer.finish_reason
    assert static.answer.prompt_tokens == dynamic.answer.prompt_tokens == prompt.prompt_tokens
    t = static.answer.timings
    assert t.compile_s == 0.0  # CPU: the static cache with the eager step, nothing compiled
    assert t.e2e_s == pytest.approx(t.ttft_s + t.decode_s)


def test_sampling_with_a_seed_is_the_same_on_both_caches(model, video):
    prompt = model.build_prompt(video, QUESTIONS[1])
    sampling = GenerationConfig(max_new_tokens=10, temperature=1.2, top_p=0.9, seed=4)
    assert (
        model.generate(prompt, replace(sampling, compile=True)).token_ids
        == model.generate(prompt, sampling).token_ids
    )


def test_chat_keeps_reusing_its_static_cache_and_grows_it_when_a_turn_would_overflow(model, video):
    dynamic = model.chat(video, GenerationConfig(max_new_tokens=8))
    static = model.chat(video, GenerationConfig(max_new_tokens=8, compile=True))
    first = [session.ask(QUESTIONS[0]) for session in (dynamic, static)]
    cache = static.cache
    second = [session.ask(QUESTIONS[1]) for session in (dynamic, static)]
    assert static.cache is cache and cache.layers[0].max_cache_len == 256  # turn 2 fitted: reused
    assert static.cached_tokens == dynamic.cached_tokens == second[1].prompt_tokens + 7
    # Turn 3 asks for up to 300 new tokens: more than the 256-position cache holds. The conversation
    # moves into a 512-position cache (the prefix copied, nothing re-encoded or re-prefilled).
    for session in (dynamic, static):
        session.generation = replace(session.generation, max_new_tokens=300, min_tokens=20)
    third = [session.ask(QUESTIONS[2]) for session in (dynamic, static)]
    assert static.cache is not cache and static.cache.layers[0].max_cache_len == 512
    for dynamic_answer, static_answer in (first, second, third):
        assert static_answer.token_ids == dynamic_answer.token_ids
        assert static_answer.prompt_tokens == dynamic_answer.prompt_tokens
    assert static.messages == dynamic.messages and len(static.messages) == 6


def test_a_cancelled_static_turn_keeps_the_chat_consistent(model, video):
    """A stream closed midway leaves the static cache holding the prompt + the fed tokens, as the
    dynamic one does: the next turn continues from there and answers alike."""
    sessions = [model.chat(video, GenerationConfig(max_new_tokens=8, compile=c)) for c in (False, True)]
    for session in sessions:
        stream = session.stream(QUESTIONS[0])
        next(stream), next(stream)
        stream.close()
        assert stream.answer.finish_reason == "cancelled"
    assert sessions[0].cached_tokens == sessions[1].cached_tokens
    answers = [session.ask(QUESTIONS[1]).token_ids for session in sessions]
    assert answers[0] == answers[1]


@pytest.mark.slow
def test_a_compiled_step_answers_like_the_eager_one(model, video, monkeypatch):
    """The torch.compile'd step (forced on this CPU: Inductor, tens of seconds) decodes the same
    tokens; its first step is compile_s, and a second answer at the same cache length compiles nothing."""
    from cope.model.videolm import generation

    monkeypatch.setattr(generation, "compiled_steps_available", lambda device: True)
    prompt = model.build_prompt(video, QUESTIONS[0])
    config = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    eager = model.generate(prompt, config)
    compiled = [model.generate(prompt, replace(config, compile=True)) for _ in range(2)]
    assert [answer.token_ids for answer in compiled] == [eager.token_ids] * 2
    assert compiled[0].timings.compile_s > 0 and compiled[1].timings.compile_s == 0.0
