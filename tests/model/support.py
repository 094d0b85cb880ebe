"""Shared by the model tests: a tiny random VideoLM's prompts about a random 'video', no codec work."""

from __future__ import annotations

import torch


def random_video(model, positions: int = 30, seed: int = 1):
    """An ``EncodedVideo`` of ``positions`` random visual embeddings (its plan and stream are empty):
    what the LLM reads, without decoding or embedding any frames."""
    from cope.codec.primitives import StreamInfo
    from cope.model.videolm import EncodedVideo
    from cope.plan import TokenPlan

    embeds = torch.randn(positions, model.hidden_size, generator=torch.Generator().manual_seed(seed))
    return EncodedVideo(embeds, TokenPlan(()), "cope", StreamInfo("random", 48, 48, 30.0, 0, 0.0, 0))
