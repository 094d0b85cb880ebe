"""Stage-1 evaluation on held-out videos: does the Δ-encoder beat copying the reference frame?

Two measurements (metric functions in ``cope.model.delta.metrics``):

* **Token agreement** over every held-out pair: cosine similarity and MSE of the predicted target
  tokens vs the vision tower's true target tokens, next to the *copy-reference* baseline (the
  reference frame's tokens used as the prediction, what ignoring the codec primitives gives).
* **Next-frame retrieval** (paper App. H.6), per video: the query for slot t is the predicted
  tokens of slot t + 1 (from slot t's tokens and the primitives t → t + 1); the database is the
  tower's tokens of every slot of the video except t; Recall@1/2/5 of the true slot t + 1. The
  baseline query is the tower's tokens of slot t itself. Only slots followed by a Δ (not the last
  slot of a GOP) are queries, for both.

``evaluate_stage1`` is what training calls every ``eval_every`` steps and at the end; ``cope
pretrain CONFIG --eval-only`` runs it on a saved checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from cope.data.pairs import FramePairDataset, load_video_slots
from cope.model.delta.metrics import (
    RECALL_KS,
    frame_embeddings,
    next_frame_ranks,
    recall_at_k,
    stage1_metrics,
)

TokenFn = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N, H, W, 3) → (N, T, d) tower tokens


@torch.no_grad()
def pair_metrics(
    pretrainer,
    dataset: FramePairDataset,
    tokens_of: TokenFn | None,
    batch_size: int = 32,
    max_pairs: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Mean cosine / MSE of predicted vs true target tokens and of the copy-reference baseline."""
    count = len(dataset) if max_pairs <= 0 else min(max_pairs, len(dataset))
    if count == 0:
        return {}
    # Held-out pairs spread over the whole set when capped (every k-th), always the same ones.
    indices = torch.linspace(0, len(dataset) - 1, count).round().long().unique().tolist()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False
    )
    totals: dict[str, float] = {}
    seen = 0
    for batch in loader:
        reference, target = pair_tokens(batch, tokens_of, device)
        predicted, _ = pretrainer.predict(batch["mv"].to(device), batch["residual"].to(device), reference)
        n = len(target)
        for name, value in stage1_metrics(predicted, target, reference).items():
            totals[name] = totals.get(name, 0.0) + value * n
        seen += n
    return {name: total / seen for name, total in totals.items()} | {"pairs": float(seen)}


def pair_tokens(batch: dict, tokens_of: TokenFn | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(reference, target) tokens of a batch: cached features, or the tower run on the RGB frames."""
    if "reference_tokens" in batch:
        return batch["reference_tokens"].to(device).float(), batch["target_tokens"].to(device).float()
    if tokens_of is None:
        raise ValueError("the batch has RGB frames but no vision tower was given")
    both = tokens_of(torch.cat([batch["reference_rgb"], batch["target_rgb"]]).to(device)).float()
    return both.chunk(2)


@torch.no_grad()
def retrieval_metrics(
    pretrainer,
    store_files: list[Path],
    feature_files: list[Path] | None,
    tokens_of: TokenFn | None,
    batch_size: int = 32,
    max_videos: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Next-frame Recall@1/2/5 of the Δ-encoder's prediction and of the vision-tower baseline."""
    ours, baseline = [], []
    files = store_files if max_videos <= 0 else store_files[:max_videos]
    for number, store_file in enumerate(files):
        video = load_video_slots(store_file, feature_files[number] if feature_files else None)
        if len(video.slot_index) < 3 or len(video.delta_slot) == 0:
            continue  # retrieval needs a query and at least two candidates
        tokens = video.tokens.float().to(device) if video.tokens is not None else None
        if tokens is None:
            tokens = torch.cat(
                [
                    tokens_of(video.rgb[i : i + batch_size].to(device))
                    for i in range(0, len(video.rgb), batch_size)
                ]
            ).float()
        database = frame_embeddings(tokens)  # (n, d)
        query_rows = video.delta_slot - 1  # slot t is a query when slot t + 1 has a Δ
        predicted = []
        for start in range(0, len(video.delta_slot), batch_size):
            rows = video.delta_slot[start : start + batch_size]
            out, _ = pretrainer.predict(
                video.mv[start : start + batch_size].to(device),
                video.residual[start : start + batch_size].to(device),
                tokens[rows - 1],
            )
            predicted.append(out)
        base_queries = database[:-1]
        our_queries = base_queries.clone()
        our_queries[query_rows] = frame_embeddings(torch.cat(predicted))
        ours.append(next_frame_ranks(our_queries, database)[query_rows])
        baseline.append(next_frame_ranks(base_queries, database)[query_rows])
    if not ours:
        return {}
    result = recall_at_k(torch.cat(ours), RECALL_KS)
    result |= {f"vision_{k}": v for k, v in recall_at_k(torch.cat(baseline), RECALL_KS).items()}
    result["queries"] = float(sum(len(r) for r in ours))
    return result


def evaluate_stage1(
    pretrainer,
    dataset: FramePairDataset,
    store_files: list[Path],
    feature_files: list[Path] | None,
    tokens_of: TokenFn | None = None,
    batch_size: int = 32,
    max_pairs: int = 0,
    max_videos: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Both measurements on held-out videos; ``{}`` when there are none.

    Keys: ``cosine``, ``mse``, ``copy_cosine``, ``copy_mse``, ``pairs``; ``R@1``, ``R@2``, ``R@5``
    (Δ-encoder) and ``vision_R@1`` … (vision-tower baseline), ``queries``.
    """
    was_training = pretrainer.training
    pretrainer.eval()
    try:
        result = pair_metrics(pretrainer, dataset, tokens_of, batch_size, max_pairs, device)
        result |= retrieval_metrics(
            pretrainer, store_files, feature_files, tokens_of, batch_size, max_videos, device
        )
    finally:
        pretrainer.train(was_training)
    return result
