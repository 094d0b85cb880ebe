"""Session fixtures shared by every test package: synthetic clips with known motion, caches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.clips import write_translation_clip


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and steady on a busy shared 2-core CPU.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cope-cache")


@pytest.fixture(scope="session")
def integer_clip(clip_dir) -> Path:
    return write_translation_clip(clip_dir / "integer.mp4", frames=61, dx=2.0)


@pytest.fixture(scope="session")
def halfpel_clip(clip_dir) -> Path:
    return write_translation_clip(clip_dir / "halfpel.mp4", frames=61, dx=1.5, dy=-0.5)


@pytest.fixture(scope="session")
def static_clip(clip_dir) -> Path:
    return write_translation_clip(clip_dir / "static.mp4", frames=31, dx=0.0)


@pytest.fixture(scope="session")
def sample_video() -> Path:
    from cope.codec.canonical import sample_video_path

    return sample_video_path()
