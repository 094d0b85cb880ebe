"""On a CUDA GPU: the compiled decode steps (static cache, torch.compile with CUDA graphs) give the
eager dynamic path's greedy tokens. CPU tests cover the same equalities with the eager static step
(and Inductor forced in two slow tests); only here do CUDA graphs replay. Skipped without CUDA."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cope.model.videolm import GenerationConfig, tiny_random
from cope.model.videolm.batching import BatchDecoder
from tests.model.support import QUESTIONS, decode_batched, random_video, requests

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model(request):
    return tiny_random(seed=0, text_model=request.param).to("cuda")  # float32


def test_compiled_single_answers_equal_dynamic_ones(model):
    work = requests(model, 6)
    dynamic = [model.generate(prompt, config).token_ids for prompt, config in work]
    assert len({tuple(ids) for ids in dynamic}) == 6
    compiled = [model.generate(prompt, replace(config, compile=True)) for prompt, config in work]
    assert [answer.token_ids for answer in compiled] == dynamic
    assert compiled[0].timings.compile_s > 0  # the first answer at this cache length compiled the step


def test_a_compiled_chat_answers_like_a_dynamic_one(model):
    video = random_video(model, positions=40)
    dynamic, compiled = (
        model.chat(video, GenerationConfig(max_new_tokens=8, compile=c)) for c in (False, True)
    )
    for question in QUESTIONS[:3]:
        assert compiled.ask(question).token_ids == dynamic.ask(question).token_ids


def test_a_compiled_batch_answers_like_sequential_dynamic_runs(model):
    work = requests(model, 6)
    sequential = [model.generate(prompt, config).token_ids for prompt, config in work]
    decoder = BatchDecoder(model, max_batch=4, compile=True)
    assert decode_batched(model, work, max_batch=4, decoder=decoder) == sequential
