"""Stage-1 metrics: how well predicted target-frame tokens match the true ones (pure tensor functions).

* Token agreement: per-token cosine similarity and MSE of predicted vs true target tokens, and the
  same for the copy-reference baseline (the reference frame's tokens used as the prediction —
  what a model that ignores the codec primitives would score).
* Next-frame retrieval (paper App. H.6): given a query for frame t, rank every frame of the same
  video except t by cosine similarity; a hit at k means frame t + 1 is among the first k. Each
  frame is pooled to one vector by the mean over its tokens, then L2-normalised. The Δ-encoder's
  query is its predicted tokens of frame t + 1 (from frame t's tokens and the primitives t → t + 1);
  the baseline's query is the vision encoder's tokens of frame t itself. The database is the vision
  encoder's tokens of every frame in both cases.

Ties are counted against the query: a wrong frame exactly as similar as the right one ranks ahead
of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

RECALL_KS = (1, 2, 5)


def token_cosine(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, T, d) × (B, T, d) → (B,): mean over tokens of each token's cosine similarity."""
    _check_same_shape(predicted, target)
    return F.cosine_similarity(predicted.float(), target.float(), dim=-1).mean(dim=-1)


def token_mse(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, T, d) × (B, T, d) → (B,): mean squared error over tokens and channels (the stage-1 loss)."""
    _check_same_shape(predicted, target)
    return (predicted.float() - target.float()).pow(2).mean(dim=(-2, -1))


def stage1_metrics(
    predicted: torch.Tensor, target: torch.Tensor, reference: torch.Tensor
) -> dict[str, float]:
    """Batch means of cosine and MSE, for the prediction and for the copy-reference baseline.

    ``reference`` (B, T, d) is the reference frame's tokens on the same grid as the target.
    """
    return {
        "cosine": token_cosine(predicted, target).mean().item(),
        "mse": token_mse(predicted, target).mean().item(),
        "copy_cosine": token_cosine(reference, target).mean().item(),
        "copy_mse": token_mse(reference, target).mean().item(),
    }


def frame_embeddings(tokens: torch.Tensor) -> torch.Tensor:
    """(N, T, d) tokens → (N, d): mean over tokens, L2-normalised (one vector per frame)."""
    return F.normalize(tokens.float().mean(dim=1), dim=-1)


def next_frame_ranks(queries: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Rank (1 = best) of frame t + 1 for the query of each frame t of one video.

    ``queries`` (N − 1, e): the query vector for frames 0 … N − 2. ``frames`` (N, e): the database,
    every frame of the video. Frame t itself is excluded from query t's candidates. Returns
    (N − 1,) int64 ranks in 1 … N − 1.
    """
    if frames.dim() != 2 or queries.dim() != 2 or queries.shape != (frames.shape[0] - 1, frames.shape[1]):
        raise ValueError(
            f"expected queries (N-1, e) and frames (N, e), got {tuple(queries.shape)}, {tuple(frames.shape)}"
        )
    similarity = F.normalize(queries.float(), dim=-1) @ F.normalize(frames.float(), dim=-1).T  # (N−1, N)
    steps = torch.arange(queries.shape[0], device=similarity.device)
    similarity[steps, steps] = float("-inf")  # the query frame is not a candidate
    true = similarity[steps, steps + 1].unsqueeze(1)
    return (similarity >= true).sum(dim=1)  # counts the true successor itself, and every tie


def recall_at_k(ranks: torch.Tensor, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Ranks (any shape, e.g. concatenated over videos) → {"R@k": fraction of ranks ≤ k}."""
    ranks = ranks.flatten()
    if ranks.numel() == 0:
        raise ValueError("no ranks to score")
    return {f"R@{k}": (ranks <= k).float().mean().item() for k in ks}


def _check_same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(
            f"expected two (B, T, d) tensors of the same shape, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
