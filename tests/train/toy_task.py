"""A small regression task for the generic loop's tests: dropout, a frozen layer, two parts."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from cope.train.loop import LoopConfig, TrainTask

DIM = 8


class ToyDataset(torch.utils.data.Dataset):
    """y = sin(x·w) + noise, fixed by ``seed``; deterministic per index."""

    def __init__(self, size: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, DIM, generator=g)
        w = torch.randn(DIM, generator=torch.Generator().manual_seed(1234))
        self.y = torch.sin(self.x @ w).unsqueeze(1) + 0.05 * torch.randn(size, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class ToyModel(nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        self.frozen_embed = nn.Linear(DIM, DIM)  # stays as initialised: never in a part
        self.body = nn.Sequential(nn.Linear(DIM, 32), nn.GELU(), nn.Dropout(dropout), nn.LayerNorm(32))
        self.head = nn.Linear(32, 1)
        self.frozen_embed.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.frozen_embed(x)))


class ToyTask(TrainTask):
    def __init__(self, dropout: float = 0.1, size: int = 96):
        self.dropout, self.size = dropout, size

    def build_model(self) -> nn.Module:
        return ToyModel(self.dropout)

    def parts(self, model):
        return {
            "body": list(model.body.named_parameters(prefix="body")),
            "head": list(model.head.named_parameters(prefix="head")),
        }

    def train_dataset(self):
        return ToyDataset(self.size, seed=7)

    def loss(self, model, batch):
        pred = model(batch["x"])
        loss = nn.functional.mse_loss(pred, batch["y"])
        return loss, {"pred_mean": pred.mean().item()}

    def evaluate(self, model, accelerator):
        data = ToyDataset(32, seed=99)
        return {"mse": nn.functional.mse_loss(model(data.x), data.y).item()}

    def save_final(self, model, state_dict, directory: Path) -> None:
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(directory / "model.safetensors"))


def toy_config(out: Path, **overrides) -> LoopConfig:
    values = dict(
        output_dir=str(out),
        seed=3,
        max_steps=10,
        per_device_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=3e-2,
        part_learning_rates={"head": 1e-2},
        weight_decay=0.01,
        warmup_steps=2,
        save_every=3,
        keep_last=2,
        progress=False,
    )
    values.update(overrides)
    return LoopConfig(**values)
