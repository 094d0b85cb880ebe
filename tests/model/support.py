"""Shared by the model tests: a tiny random VideoLM's prompts about a random 'video', no codec work,
and a driver that decodes many of them in one batch."""

from __future__ import annotations

import torch

from cope.model.videolm import GenerationConfig
from cope.model.videolm.batching import BatchDecoder
from cope.model.videolm.generation import AnswerBuilder, new_cache, prefill


def random_video(model, positions: int = 30, seed: int = 1):
    """An ``EncodedVideo`` of ``positions`` random visual embeddings (its plan and stream are empty):
    what the LLM reads, without decoding or embedding any frames."""
    from cope.codec.primitives import StreamInfo
    from cope.model.videolm import EncodedVideo
    from cope.plan import TokenPlan

    embeds = torch.randn(positions, model.hidden_size, generator=torch.Generator().manual_seed(seed))
    embeds = embeds.to(model.device)  # the same values on every device
    return EncodedVideo(embeds, TokenPlan(()), "cope", StreamInfo("random", 48, 48, 30.0, 0, 0.0, 0))


QUESTIONS = ("what is moving ?", "which direction ?", "how many objects ?", "what color is the ball ?")


def requests(model, count: int, longest: int = 60):
    """``count`` different prompts (videos of different lengths, different questions) and configs."""
    out = []
    for i in range(count):
        video = random_video(model, positions=10 + (longest - 10) * i // max(count - 1, 1), seed=i)
        config = GenerationConfig(max_new_tokens=6 + 3 * i, min_tokens=2 * (i % 2))
        out.append((model.build_prompt(video, QUESTIONS[i % len(QUESTIONS)]), config))
    return out


def start(model, prompt, config: GenerationConfig):
    """Prefill alone and choose the first token: (its own cache, builder, first token)."""
    cache = new_cache(model)
    builder = AnswerBuilder(model, config)
    token = builder.choose(prefill(model, cache, prompt.inputs_embeds, None, lambda: False))
    builder.accept(token)
    return cache, builder, token


def decode_batched(model, work, max_batch: int, cancel: dict[int, int] | None = None, decoder=None):
    """Run ``work`` [(prompt, config)] through one batch, joining in order as rows free up; the token
    ids of each. ``cancel``: request index → steps after which it leaves unfinished."""
    decoder = BatchDecoder(model, max_batch) if decoder is None else decoder
    cancel = cancel or {}
    waiting, answers, index_of, steps = list(enumerate(work)), {}, {}, {}
    while waiting or len(decoder):
        while waiting and decoder.has_room:
            index, (prompt, config) = waiting.pop(0)
            cache, builder, token = start(model, prompt, config)
            if builder.finish_reason is not None:
                answers[index] = builder.token_ids
                continue
            sequence = decoder.join(cache, builder, token, prompt.prompt_tokens + config.max_new_tokens)
            index_of[id(sequence)], steps[index] = index, 0
        leaving = []
        for sequence, _ in decoder.step():
            index = index_of[id(sequence)]
            steps[index] += 1
            if sequence.builder.finish_reason is not None or steps[index] == cancel.get(index):
                leaving.append(sequence)
                answers[index] = sequence.builder.token_ids
        for sequence in leaving:
            decoder.leave(sequence)
    return [answers[i] for i in range(len(work))]
