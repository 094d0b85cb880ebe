"""The server's video store (content hashing, disk budget, clean-up) and request reduction, without a model."""

from __future__ import annotations

import pytest

from cope.codec.canonical import CanonicalSettings
from cope.serve.config import MiB, ServeSettings
from cope.serve.errors import APIError
from cope.serve.protocol import conversation, parse_request
from cope.serve.videos import VideoStore
from tests.serve.support import SAMPLE


def make_store(tmp_path, **overrides) -> VideoStore:
    settings = ServeSettings(work_root=tmp_path, **{"cache_max_bytes": 64 * MiB, **overrides})
    return VideoStore(settings, CanonicalSettings(width=32, height=32))


def test_same_bytes_same_video_and_least_recently_used_eviction(tmp_path):
    store = make_store(tmp_path, max_upload_bytes=1000, cache_max_bytes=3000)
    a = store.add_bytes(b"a" * 1000, "a.mp4")
    renamed = store.add_bytes(b"a" * 1000, "renamed.mp4")
    assert renamed.video is a.video  # content-addressed: one copy of the bytes ...
    assert renamed.id != a.id and renamed.filename == "renamed.mp4"  # ... but each upload is its own
    assert store.get(a.id) is a
    b = store.add_bytes(b"b" * 1000, "b.mp4")
    c = store.add_bytes(b"c" * 1000, "c.mp4")
    store.get(a.id)  # a is now more recently used than b
    with store.hold(c):
        # The budget holds at every moment: room for d is made before d is written.
        d = store.add_bytes(b"d" * 1000, "d.mp4")
    assert not b.path.exists() and a.path.exists() and c.path.exists() and d.path.exists()
    assert store.disk_bytes() <= 3000
    with pytest.raises(APIError) as missing:
        store.get(b.id)
    assert missing.value.status == 404
    # A held video is never evicted, even when it is the oldest.
    with store.hold(a):
        store.add_bytes(b"e" * 1000, "e.mp4")
        assert store.enforce_budget() == []
    assert a.path.exists() and not d.path.exists()
    store.close()
    assert not store.work_dir.exists()


def test_canonical_stream_cached_and_rejected_uploads_deleted(tmp_path):
    store = make_store(tmp_path)
    video = store.add_bytes(SAMPLE.read_bytes(), "sample.mp4")
    first = store.open_canonical(video)
    assert first.info.width == 32 and first.info.frames == 240
    canonical_files = sorted(store.canonical_dir.glob(f"{video.sha256}-*"))
    assert [p.suffix for p in canonical_files] == [".json", ".mp4"]
    mtime = canonical_files[1].stat().st_mtime_ns
    store.open_canonical(video)  # cached: not transcoded again
    assert canonical_files[1].stat().st_mtime_ns == mtime

    bad = store.add_bytes(b"\0\1garbage" * 100, "garbage.mp4")
    with pytest.raises(APIError) as caught:
        store.open_canonical(bad)
    assert caught.value.status == 400 and caught.value.message.startswith("garbage.mp4: ")
    assert str(store.work_dir) not in caught.value.message  # server paths never leak
    assert not bad.path.exists()
    store.close()


def test_duration_and_resolution_limits_are_checked_before_transcoding(tmp_path):
    store = make_store(tmp_path, max_duration_s=5)
    video = store.add_bytes(SAMPLE.read_bytes(), "sample.mp4")
    with pytest.raises(APIError) as long:
        store.open_canonical(video)
    assert long.value.status == 413 and "8.0 s long" in long.value.message
    assert not list(store.canonical_dir.iterdir()), "refused before any transcoding"
    store.close()
    store = make_store(tmp_path, max_side=320)
    video = store.add_bytes(SAMPLE.read_bytes(), "sample.mp4")
    with pytest.raises(APIError) as wide:
        store.check_limits(video)
    assert wide.value.status == 400 and "480x480" in wide.value.message
    store.close()


def request(*messages, **extra) -> dict:
    return {"model": "m", "messages": list(messages), **extra}


VIDEO = {"type": "video_url", "video_url": {"url": "cope-file://file-x"}}


def test_conversation_reduction():
    conv = conversation(
        parse_request(
            request(
                {"role": "user", "content": [VIDEO, {"type": "text", "text": "q1"}]},
                {"role": "assistant", "content": "a1"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "q2"}, {"type": "text", "text": "more"}],
                },
            )
        )
    )
    assert conv.video_url == "cope-file://file-x" and conv.system is None
    with_system = conversation(
        parse_request(
            request(
                {"role": "system", "content": "be brief"},
                {"role": "system", "content": [{"type": "text", "text": "and kind"}]},
                {"role": "user", "content": [VIDEO, {"type": "text", "text": "q1"}]},
            )
        )
    )
    assert with_system.system == "be brief\nand kind" and len(with_system.turns) == 1
    assert [(t.role, t.text) for t in conv.turns] == [
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "q2\nmore"),
    ]


@pytest.mark.parametrize(
    "messages, needle",
    [
        ([{"role": "user", "content": "q"}], "exactly one video_url"),
        (
            [{"role": "user", "content": [VIDEO, VIDEO, {"type": "text", "text": "q"}]}],
            "exactly one video_url",
        ),
        ([{"role": "assistant", "content": "hi"}, {"role": "user", "content": [VIDEO]}], "start with a user"),
        (
            [
                {"role": "user", "content": [VIDEO, {"type": "text", "text": "q"}]},
                {"role": "assistant", "content": "a"},
            ],
            "last message",
        ),
        ([{"role": "user", "content": [VIDEO]}], "no text"),
        (
            [
                {"role": "user", "content": [VIDEO, {"type": "text", "text": "q"}]},
                {"role": "system", "content": "s"},
            ],
            "come first",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": [VIDEO]},
            ],
            "first user message",
        ),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "does not match"),
    ],
)
def test_conversation_errors(messages, needle):
    with pytest.raises(APIError) as caught:
        conversation(parse_request(request(*messages)))
    assert caught.value.status == 400 and needle in caught.value.message
