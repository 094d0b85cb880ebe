"""The HTTP API through a real uvicorn server on 127.0.0.1: the ``openai`` client and raw HTTP."""

from __future__ import annotations

import base64
import json
import shutil
import time

import httpx
import openai
import pytest

from cope.serve.app import create_app
from cope.serve.config import MiB, ServeSettings
from cope.serve.server import BackgroundServer
from tests.serve.support import (
    MODEL_NAME,
    QUESTION,
    SAMPLE,
    assert_error,
    block_worker,
    chat_body,
    fill_queue,
    load,
    tiny_checkpoint,
    video_message,
    wait_idle,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("serve-model") / "tiny")


@pytest.fixture(scope="module")
def allowed_dir(tmp_path_factory):
    """An allow-listed directory with the sample, and a symlink in it that points outside."""
    root = tmp_path_factory.mktemp("serve-files")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    shutil.copy(SAMPLE, allowed / "sample.mp4")
    shutil.copy(SAMPLE, outside / "secret.mp4")
    (allowed / "escape.mp4").symlink_to(outside / "secret.mp4")
    return allowed


@pytest.fixture(scope="module")
def server(checkpoint, allowed_dir, tmp_path_factory):
    settings = ServeSettings(
        model_name=MODEL_NAME,
        max_upload_bytes=1 * MiB,
        cache_max_bytes=64 * MiB,
        queue_size=2,
        max_tokens_limit=20_000,
        allow_dirs=(allowed_dir,),
        work_root=tmp_path_factory.mktemp("serve-work"),
        request_timeout_s=60,
    )
    app = create_app(load(checkpoint), settings)
    with BackgroundServer(app) as running:
        yield running
    assert not app.state.store.work_dir.exists(), "the work directory is removed at shutdown"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def uploaded(client):
    with open(SAMPLE, "rb") as f:
        return client.files.create(file=("sample.mp4", f, "video/mp4"), purpose="user_data")


def app_state(server):
    return server.server.config.app.state


# ----- discovery -------------------------------------------------------------------------------------


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL_NAME
    assert health["queue"]["capacity"] == 2


def test_upload_returns_file_object_with_gop_summary(uploaded):
    assert uploaded.id.startswith("file-") and uploaded.bytes == SAMPLE.stat().st_size
    video = uploaded.model_extra["video"]
    assert video["source"]["frames"] == 240 and video["canonical"]["frame_types"] == {
        "I": 1,
        "P": 239,
        "B": 0,
    }
    # The inspect contract's paper-layout counts, plus this model's own (3×3 pooled grid → 12 per RGB frame).
    assert video["plans"]["cope_k1"] == {
        "visual_tokens": 280,
        "rgb_frames": 1,
        "delta_frames": 7,
        "model_tokens": 82,
    }
    assert video["plans"]["dense64"]["visual_tokens"] == 13440


# ----- chat completions ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def direct(checkpoint):
    """Another instance of the served checkpoint, called directly, and the sample encoded by it."""
    model = load(checkpoint)
    return model, model.encode_video(SAMPLE, "cope")


def test_openai_client_plain_matches_the_model_and_streaming(client, uploaded, direct):
    messages = [video_message(f"cope-file://{uploaded.id}")]
    plain = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=6)
    answer = plain.choices[0].message.content
    usage = plain.usage.model_extra
    assert plain.object == "chat.completion" and plain.model == MODEL_NAME

    # The same greedy answer as the VideoLM called directly (another instance from the same checkpoint).
    from cope.model.videolm import GenerationConfig

    model, encoded = direct
    direct = model.chat(encoded, GenerationConfig(max_new_tokens=6)).ask(QUESTION)
    assert answer == direct.text and plain.choices[0].finish_reason == direct.finish_reason
    assert plain.usage.completion_tokens == direct.new_tokens
    assert plain.usage.prompt_tokens == direct.prompt_tokens
    assert plain.usage.total_tokens == direct.prompt_tokens + direct.new_tokens
    assert usage["visual_tokens"] == encoded.visual_tokens == 82
    assert 0 < usage["ttft_s"] <= usage["e2e_s"]

    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(bool(p) for p in pieces) >= 2, "the answer arrives in several chunks"
    assert "".join(pieces) == answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == direct.finish_reason
    final = chunks[-1]
    assert final.choices == [] and final.usage.completion_tokens == direct.new_tokens
    assert final.usage.model_extra["ttft_s"] > 0


def test_second_turn_reuses_encoded_video_and_kv_cache(client, server, uploaded):
    state = app_state(server)
    model = state.engine.model
    calls = []
    original = model.encode_video
    model.encode_video = lambda *a, **k: calls.append(a) or original(*a, **k)
    try:
        url = f"cope-file://{uploaded.id}"
        first = client.chat.completions.create(
            model=MODEL_NAME, messages=[video_message(url)], max_tokens=4, extra_body={"keyframes_per_gop": 2}
        )
        assert len(calls) == 1 and first.usage.model_extra["encoded_video_cached"] is False
        messages = [
            video_message(url),
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "which direction ?"},
        ]
        second = client.chat.completions.create(
            model=MODEL_NAME, messages=messages, max_tokens=4, extra_body={"keyframes_per_gop": 2}
        )
        extra = second.usage.model_extra
        assert len(calls) == 1, "the second question must not re-encode the video"
        assert extra["encoded_video_cached"] is True and extra["kv_cache_reused"] is True
        assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens
        # An edited history cannot continue a cached session, but still reuses the encoded video.
        messages[1]["content"] = "something else"
        third = client.chat.completions.create(
            model=MODEL_NAME, messages=messages, max_tokens=4, extra_body={"keyframes_per_gop": 2}
        )
        assert len(calls) == 1 and third.usage.model_extra["kv_cache_reused"] is False
        # Other sampling settings are another encoding.
        other = client.chat.completions.create(
            model=MODEL_NAME, messages=[video_message(url)], max_tokens=4, extra_body={"mode": "iframes-only"}
        )
        assert len(calls) == 2 and other.usage.model_extra["visual_tokens"] == 1 * 12
    finally:
        model.encode_video = original


def test_system_message_is_honoured_and_part_of_the_session(client, uploaded, direct):
    from cope.model.videolm import GenerationConfig

    system = "you are a helpful assistant . answer in one word ."
    messages = [{"role": "system", "content": system}, video_message(f"cope-file://{uploaded.id}")]
    first = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=5)
    model, encoded = direct
    expected = model.chat(encoded, GenerationConfig(max_new_tokens=5), system=system).ask(QUESTION)
    assert first.choices[0].message.content == expected.text
    assert first.usage.prompt_tokens == expected.prompt_tokens
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "which direction ?"},
    ]
    second = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=5)
    assert second.usage.model_extra["kv_cache_reused"] is True
    # The same history under another system message is another conversation.
    messages[0]["content"] = "be brief ."
    third = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=5)
    assert third.usage.model_extra["kv_cache_reused"] is False


def test_data_url_and_allow_listed_file(client, allowed_dir):
    data = base64.b64encode(SAMPLE.read_bytes()).decode()
    by_data = client.chat.completions.create(
        model=MODEL_NAME, messages=[video_message(f"data:video/mp4;base64,{data}")], max_tokens=3
    )
    by_path = client.chat.completions.create(
        model=MODEL_NAME, messages=[video_message((allowed_dir / "sample.mp4").as_uri())], max_tokens=3
    )
    assert by_data.choices[0].message.content == by_path.choices[0].message.content
    assert by_path.usage.model_extra["encoded_video_cached"] is True  # same bytes → same hash → cache


# ----- errors ------------------------------------------------------------------------------------------


def test_path_rules(server, allowed_dir):
    url = server.url + "/v1/chat/completions"
    outside = allowed_dir.parent / "outside" / "secret.mp4"
    for path_url in (
        outside.as_uri(),  # outside every allowed directory
        f"file://{allowed_dir}/../outside/secret.mp4",  # traversal
        f"file://{allowed_dir}/%2e%2e/outside/secret.mp4",  # encoded traversal
        (allowed_dir / "escape.mp4").as_uri(),  # a symlink out of the allowed directory
        "file:///etc/passwd",
        f"file://{allowed_dir}/missing.mp4",
    ):
        assert_error(httpx.post(url, json=chat_body(path_url)), 403, "path_not_allowed")
    assert_error(httpx.post(url, json=chat_body("file://otherhost/x.mp4")), 400, "unsupported_url")
    assert_error(httpx.post(url, json=chat_body("https://example.com/v.mp4")), 400, "unsupported_url")
    assert_error(httpx.post(url, json=chat_body("ftp://example.com/v.mp4")), 400, "unsupported_url")


def test_bad_requests_get_openai_error_bodies(server, client, uploaded):
    url = server.url + "/v1/chat/completions"
    good = chat_body(f"cope-file://{uploaded.id}")
    json_type = {"content-type": "application/json"}
    assert_error(
        httpx.post(url, content=b'{"model": ', headers=json_type), 400, "invalid_json", "malformed JSON"
    )
    assert_error(httpx.post(url, json={"model": MODEL_NAME}), 400, "invalid_request", "messages")
    assert_error(httpx.post(url, json={**good, "mode": "fast"}), 400, "invalid_request", "mode")
    assert_error(httpx.post(url, json={**good, "n": 2}), 400, "invalid_request")
    assert_error(httpx.post(url, json={**good, "model": "gpt-4o"}), 404, "model_not_found", "gpt-4o")
    assert_error(httpx.post(url, json=chat_body("cope-file://file-" + "0" * 32)), 404, "file_not_found")
    assert_error(httpx.post(url, json={**good, "keyframes_per_gop": 3}), 400, "invalid_sampling", "divide")
    no_video = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}]}
    assert_error(httpx.post(url, json=no_video), 400, contains="exactly one video_url")
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=good["messages"])
    assert caught.value.body["code"] == "model_not_found"
    assert_error(httpx.get(server.url + "/v1/nothing-here"), 404)
    assert_error(httpx.get(server.url + "/v1/chat/completions"), 405)
    assert_error(httpx.get(server.url + "/v1/models/gpt-4o"), 404, "model_not_found")


def test_bad_and_oversize_videos(server, client):
    files = server.url + "/v1/files"
    chat = server.url + "/v1/chat/completions"
    error = assert_error(
        httpx.post(files, files={"file": ("notes.mp4", b"not a video at all" * 50)}), 400, "invalid_video"
    )
    assert error["message"].startswith("notes.mp4: ") and "/" not in error["message"].split(":")[0]
    big = b"\0" * (MiB + 300_000)
    assert_error(httpx.post(files, files={"file": ("big.mp4", big)}), 413, "file_too_large")
    # Without a Content-Length (chunked), the limit applies as the body arrives.
    boundary = "cope-test-boundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n\r\n'.encode()

    def chunked_upload():
        yield head
        for _ in range(24):
            yield b"\0" * 100_000
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    assert_error(httpx.post(files, content=chunked_upload(), headers=headers), 413, "file_too_large")
    chunked_json = (b"\0" * 100_000 for _ in range(40))  # 4 MB > 4/3 MiB + 1 MiB
    assert_error(httpx.post(chat, content=chunked_json, headers={"content-type": "application/json"}), 413)
    big_url = "data:video/mp4;base64," + base64.b64encode(big).decode()
    assert_error(httpx.post(chat, json=chat_body(big_url)), 413, "file_too_large")
    assert_error(httpx.post(chat, json=chat_body("data:video/mp4;base64,%%%")), 400, "invalid_video")
    assert_error(httpx.post(chat, json=chat_body("data:text/plain;base64,aGk=")), 400, "invalid_video")
    junk = "data:video/mp4;base64," + base64.b64encode(b"\x00\x01junk" * 100).decode()
    assert_error(httpx.post(chat, json=chat_body(junk)), 400, "invalid_video", "data-url.mp4")
    assert_error(httpx.post(chat, json=chat_body(junk, stream=True)), 400, "invalid_video")
    # Rejected uploads are not kept.
    store = app_state(server).store
    assert not any(f.filename in ("notes.mp4", "data-url.mp4") for f in store._files.values())
    # ... and the server keeps serving.
    with open(SAMPLE, "rb") as f:
        assert client.files.create(file=("again.mp4", f), purpose="user_data").bytes == SAMPLE.stat().st_size


def test_queue_full_is_429_then_serving_resumes(server, client, uploaded):
    worker = app_state(server).worker
    release = block_worker(worker)
    try:
        fill_queue(worker, release)
        response = httpx.post(
            server.url + "/v1/chat/completions", json=chat_body(f"cope-file://{uploaded.id}")
        )
        assert_error(response, 429, "queue_full", "busy")
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(**chat_body(f"cope-file://{uploaded.id}"))
    finally:
        release.set()
    wait_idle(worker)
    ok = client.chat.completions.create(**chat_body(f"cope-file://{uploaded.id}"))
    assert ok.usage.completion_tokens >= 1


def test_timeout_is_504(checkpoint, uploaded, tmp_path):
    settings = ServeSettings(model_name=MODEL_NAME, request_timeout_s=1.0, work_root=tmp_path)
    app = create_app(load(checkpoint), settings)
    with BackgroundServer(app) as server:
        release = block_worker(app.state.worker)
        try:
            data = base64.b64encode(SAMPLE.read_bytes()).decode()
            start = time.monotonic()
            response = httpx.post(
                server.url + "/v1/chat/completions",
                json=chat_body(f"data:video/mp4;base64,{data}"),
                timeout=30,
            )
            assert_error(response, 504, "request_timeout")
            assert 0.9 < time.monotonic() - start < 10
        finally:
            release.set()
        wait_idle(app.state.worker)  # the abandoned job is skipped, not run


def test_client_disconnect_stops_generation(server, uploaded):
    state = app_state(server)
    model = state.engine.model
    stops = model.stop_token_ids
    model.stop_token_ids = frozenset()  # only max_tokens could end this answer: 20,000 tokens
    try:
        body = chat_body(f"cope-file://{uploaded.id}", stream=True, max_tokens=20_000)
        with httpx.Client(timeout=60) as http:
            with http.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                events = [next(lines) for _ in range(6)]  # role chunk + a few tokens
        assert any('"content": "' in e for e in events if e.startswith("data:"))
        # Generating 20,000 tokens takes minutes; a cancelled job frees the worker in well under that.
        assert wait_idle(state.worker, timeout=20) < 10
    finally:
        model.stop_token_ids = stops
    assert json.loads(httpx.get(server.url + "/health").text)["queue"]["busy"] is False


def test_vllm_min_tokens_and_ignore_eos(client, server, uploaded):
    """vLLM's extra fields: min_tokens holds the end tokens back, ignore_eos decodes through them."""
    messages = [video_message(f"cope-file://{uploaded.id}")]
    for extra in ({"min_tokens": 6}, {"ignore_eos": True}):
        answer = client.chat.completions.create(
            model=MODEL_NAME, messages=messages, max_tokens=6, extra_body=extra
        )
        assert answer.usage.completion_tokens == 6 and answer.choices[0].finish_reason == "length"
    response = httpx.post(
        server.url + "/v1/chat/completions", json=chat_body(uploaded_url(uploaded), min_tokens=7)
    )
    assert_error(response, 400, contains="min_tokens 7 exceeds max_tokens 6")


def uploaded_url(uploaded) -> str:
    return f"cope-file://{uploaded.id}"
