"""Training checkpoints without pickles: safetensors for tensors, JSON for everything else.

A checkpoint is one directory per optimizer step, ``OUTPUT/checkpoints/step-00000100/``:

    model.safetensors                 trainable parameters + persistent buffers, full names
    optimizer.safetensors + .json     the full optimizer state keyed by parameter names (gathered
                                      under FSDP): tensors by path + the structure
                                      (``optimizer-rank{r}.*`` per process under DeepSpeed)
    scheduler.json                    scheduler.state_dict()
    rng-rank{r}.safetensors + .json   torch CPU/CUDA generator states, numpy and python states
    trainer_state.json                step, epoch, samples seen, seed, batch geometry

It is written to ``step-XXXXXXXX.tmp`` and renamed when complete, so a killed run never leaves a
directory that looks like a checkpoint. ``torch.load`` / ``pickle`` are never used: loading a
checkpoint cannot execute code.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cope.errors import CopeInputError
from cope.hub import load_safetensors, save_safetensors

CHECKPOINT_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainerState:
    """Where a run is: enough to continue it with no lost or repeated steps."""

    step: int  # optimizer steps done
    epoch: int  # epoch of the next step
    samples_seen: int  # global samples consumed = step × global batch
    seed: int
    global_batch_size: int
    num_processes: int
    max_steps: int


# --------------------------------------------------------------------------------------------
# Nested state (dicts / lists / tuples of tensors and scalars) ⇄ safetensors + JSON


def flatten_state(obj: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state into ``{path: tensor}`` and a JSON skeleton that references the paths.

    Dicts keep their key types (optimizer states are keyed by int), tuples stay tuples, floats
    round-trip exactly (JSON keeps repr precision, and inf/nan are written as Infinity/NaN).
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[path] = node.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(node, dict):
            return {"__dict__": [[_key(k), walk(v, f"{path}.{k}")] for k, v in node.items()]}
        if isinstance(node, list | tuple):
            items = [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
            return {"__tuple__": items} if isinstance(node, tuple) else items
        if node is None or isinstance(node, bool | int | float | str):
            return node
        raise TypeError(f"cannot store a {type(node).__name__} at {path or '<root>'} without pickling")

    skeleton = walk(obj, prefix)
    return tensors, skeleton


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``flatten_state``."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
        return {_unkey(k): unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def _key(key: Any) -> list:
    if isinstance(key, bool) or not isinstance(key, int | str):
        raise TypeError(f"cannot store a state dict key of type {type(key).__name__}")
    return ["int", key] if isinstance(key, int) else ["str", key]


def _unkey(key: list) -> int | str:
    kind, value = key
    return int(value) if kind == "int" else str(value)


def save_state(path_stem: Path, state: Any) -> None:
    """Write ``state`` as ``<stem>.safetensors`` (tensors) and ``<stem>.json`` (structure)."""
    tensors, skeleton = flatten_state(state)
    # safetensors refuses tensors that share memory: clone the (rare) aliases.
    seen: set[int] = set()
    for key, tensor in tensors.items():
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else -1
        if ptr in seen:
            tensors[key] = tensor.clone()
        seen.add(ptr)
    save_safetensors(tensors, path_stem.with_suffix(".safetensors"))
    path_stem.with_suffix(".json").write_text(json.dumps(skeleton))


def load_state(path_stem: Path) -> Any:
    tensors = load_safetensors(path_stem.with_suffix(".safetensors"))
    skeleton = json.loads(path_stem.with_suffix(".json").read_text())
    return unflatten_state(skeleton, tensors)


# --------------------------------------------------------------------------------------------
# RNG states


def rng_state() -> dict:
    """This process's torch (CPU + every CUDA device), numpy and python generator states."""
    version, mt, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch_cpu": torch.get_rng_state(),
        "python": {"version": version, "mt": list(mt), "gauss": gauss},
        "numpy": {
            "kind": np_kind,
            "keys": [int(k) for k in np_keys],
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_cpu"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["mt"]), py["gauss"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np.asarray(np_state["keys"], dtype=np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


# --------------------------------------------------------------------------------------------
# Checkpoint directories


def checkpoint_root(output_dir: Path) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def step_dir(output_dir: Path, step: int) -> Path:
    return checkpoint_root(output_dir) / f"step-{step:08d}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary ``.tmp`` directories are ignored)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def prune_checkpoints(output_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (and stale temporary directories)."""
    root = checkpoint_root(output_dir)
    for stale in root.glob("step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    if keep_last > 0:
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def write_trainer_state(directory: Path, state: TrainerState) -> None:
    (directory / "trainer_state.json").write_text(json.dumps(asdict(state), indent=1))


def read_trainer_state(directory: Path) -> TrainerState:
    path = directory / "trainer_state.json"
    try:
        return TrainerState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise CopeInputError(f"{path}: not a readable trainer state ({exc})") from exc


def save_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    save_safetensors(state_dict, path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(path)
