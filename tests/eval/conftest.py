"""Fixtures of the evaluation tests: a tiny random checkpoint and a three-question local task."""

from __future__ import annotations

import json

import pytest

from tests.clips import write_translation_clip
from tests.eval.support import TASK_LINES


@pytest.fixture(scope="module")
def eval_checkpoint(tmp_path_factory):
    """A randomly initialised tiny CoPE VideoLM saved as a checkpoint directory."""
    from cope.model.videolm import tiny_random

    path = tmp_path_factory.mktemp("eval-model") / "tiny"
    tiny_random(seed=3).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def eval_task(tmp_path_factory):
    """Three questions (two multiple choice, one open) about two 2-s clips with different motion."""
    folder = tmp_path_factory.mktemp("eval-task")
    write_translation_clip(folder / "right.mp4", frames=61, dx=2.0, side=64)
    write_translation_clip(folder / "down.mp4", frames=61, dx=0.0, dy=1.5, side=64)
    path = folder / "task.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in TASK_LINES))
    return path


@pytest.fixture
def eval_env(monkeypatch, tmp_path, cache_dir):
    """Offline datasets cache, the session's transcode cache (nothing under ~), one torch thread.

    One thread: on a busy 2-core machine, two threads of tiny matmuls stall on each other.
    """
    import torch

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("COPE_CACHE_DIR", str(cache_dir))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
