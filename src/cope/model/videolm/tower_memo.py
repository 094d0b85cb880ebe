"""``TowerFeatureMemo``: a frozen vision tower's features of every frame training has seen, kept in
memory so that each cached frame goes through the tower once per run, not once per epoch.

The tower is frozen in LLaVA-Video and in CoPE's stage 2 (and in every CoPE-Tiny stage after the
tower's own pre-training), so a frame's tower output never changes during a run. A frame is named
by its video (``VisualInput.source``, set by the slot cache) and its display index; frames without
a source are computed every time. The projector, which trains, still runs on every step.

Memory: one (G², C) tensor per frame in the model's dtype, in CPU memory (CoPE-Tiny: 196 × 96
float32 = 75 kB, so its 29,600 MotionQA slots take 2.2 GB; SigLIP-so400m in bf16: 1.7 MB a frame).
``max_bytes`` caps it (default 4 GiB), after which new frames are computed but not kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cope.model.inputs import VisualInput


class TowerFeatureMemo:
    def __init__(self, max_bytes: int = 4 << 30):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.features: dict[tuple[str, int], torch.Tensor] = {}  # (source, index) → (G², C), on the CPU
        self.hits = 0
        self.misses = 0

    def image_tokens(self, model, visuals: Sequence[VisualInput]) -> torch.Tensor:
        """The RGB entries of ``visuals``, in order → (ΣnI, S·(S+1), D), as ``model.image_tokens``."""
        if model.config.train_vision_tower:
            raise ValueError("a tower-feature memo needs a frozen vision tower")
        frames = torch.cat([v.frames for v in visuals])  # (ΣnI, H, W, 3)
        if frames.shape[0] == 0:
            return model.image_tokens(frames)  # the model's own empty block
        keys = [key for v in visuals for key in _keys(v)]
        missing = [i for i, key in enumerate(keys) if key is None or key not in self.features]
        computed = self._compute(model, frames, missing)
        for i, feature in computed.items():
            key, size = keys[i], feature.numel() * feature.element_size()
            if key is not None and self.bytes + size <= self.max_bytes:
                self.features[key] = feature.to("cpu")
                self.bytes += size
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        features = []
        for i, key in enumerate(keys):
            if i in computed or key is None:
                features.append(computed[i])
            else:
                features.append(self.features[key].to(model.device))
        stacked = torch.stack(features)  # (ΣnI, G², C)
        return torch.cat(
            [model.tokens_from_features(chunk) for chunk in stacked.split(model.config.vision_batch_size)]
        )

    def _compute(self, model, frames: torch.Tensor, rows: list[int]) -> dict[int, torch.Tensor]:
        """Tower features of ``frames[rows]`` in ``vision_batch_size`` chunks: row → (G², C)."""
        computed: dict[int, torch.Tensor] = {}
        for start in range(0, len(rows), model.config.vision_batch_size):
            chunk = torch.tensor(rows[start : start + model.config.vision_batch_size], dtype=torch.long)
            with torch.no_grad():
                features = model.tower_features(frames[chunk])  # (n, G², C)
            computed.update(zip(chunk.tolist(), features, strict=True))
        return computed


def _keys(visual: VisualInput) -> list[tuple[str, int] | None]:
    """One key per RGB entry: (source, display index), or None when the video has no source."""
    indices = [index for index, kind in zip(visual.indices, visual.kinds, strict=True) if kind == "I"]
    if visual.source is None:
        return [None] * len(indices)
    return [(visual.source, index) for index in indices]
