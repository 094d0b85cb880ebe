"""Continuous batching in ``cope serve``: concurrent requests decode together, each answering as it
would alone, and a cancelled request's place in the batch goes to a waiting one at once."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from cope.serve.app import create_app
from cope.serve.config import ServeSettings
from cope.serve.server import BackgroundServer
from tests.serve.support import MODEL_NAME, SAMPLE, chat_body, load, tiny_checkpoint, wait_idle

QUESTIONS = (
    "what is moving ?",
    "which direction ?",
    "how many objects ?",
    "what color is the ball ?",
    "why ?",
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("batching-model") / "tiny")


def serving(checkpoint, work, **limits):
    settings = ServeSettings(model_name=MODEL_NAME, work_root=work, request_timeout_s=60, **limits)
    return create_app(load(checkpoint), settings)


def upload(http: httpx.Client, url: str) -> str:
    with open(SAMPLE, "rb") as f:
        response = http.post(url + "/v1/files", files={"file": ("sample.mp4", f, "video/mp4")})
    response.raise_for_status()
    return f"cope-file://{response.json()['id']}"


def streamed_text(url: str, body: dict) -> str:
    """The content of a streamed completion, piece by piece as the server sent it."""
    pieces, done = [], False
    with httpx.Client(timeout=60) as http, http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                pieces += [c["delta"].get("content") or "" for c in chunk["choices"]]
    assert done
    return "".join(pieces)


def test_concurrent_streams_decode_together_and_answer_as_alone(checkpoint, tmp_path):
    from cope.model.videolm import GenerationConfig

    app = serving(checkpoint, tmp_path, max_batch=3)
    decoder = app.state.engine.decoder
    sizes, step = [], decoder.step
    decoder.step = lambda: sizes.append(len(decoder)) or step()  # the batch size at every step
    lengths = [6, 9, 12, 7, 10]  # forced with min_tokens, so the answers overlap in time
    with BackgroundServer(app) as server, httpx.Client(timeout=60) as http:
        video = upload(http, server.url)
        bodies = [
            chat_body(video, question, max_tokens=n, min_tokens=n, stream=True)
            for question, n in zip(QUESTIONS, lengths, strict=True)
        ]
        with ThreadPoolExecutor(len(bodies)) as pool:
            texts = list(pool.map(lambda body: streamed_text(server.url, body), bodies))
        wait_idle(app.state.worker)
    assert max(sizes) == 3  # three answers decoded in one forward; the others waited for a row
    model = load(checkpoint)  # the same checkpoint, answering one question at a time
    encoded = model.encode_video(SAMPLE, "cope")
    alone = [
        model.chat(encoded, GenerationConfig(max_new_tokens=n, min_tokens=n)).ask(question).text
        for question, n in zip(QUESTIONS, lengths, strict=True)
    ]
    assert texts == alone


def test_a_cancelled_request_gives_its_place_in_the_batch_to_a_waiting_one(checkpoint, tmp_path):
    app = serving(checkpoint, tmp_path, max_batch=1, max_tokens_limit=20_000)
    worker = app.state.worker
    with BackgroundServer(app) as server, httpx.Client(timeout=60) as http:
        video = upload(http, server.url)
        endless = chat_body(video, max_tokens=20_000, ignore_eos=True, stream=True)  # minutes of decoding
        waiting: dict = {}

        def second_request() -> None:
            waiting["response"] = http.post(server.url + "/v1/chat/completions", json=chat_body(video))
            waiting["at"] = time.monotonic()

        with (
            httpx.Client(timeout=60) as other,
            other.stream("POST", server.url + "/v1/chat/completions", json=endless) as response,
        ):
            lines = response.iter_lines()
            [next(lines) for _ in range(4)]  # decoding: it holds the batch's one row
            thread = threading.Thread(target=second_request)
            thread.start()
            time.sleep(1.0)
            assert "response" not in waiting and worker.waiting == 1  # queued behind the full batch
            cancelled_at = time.monotonic()
        thread.join(30)  # leaving the stream closed the connection: the server cancels that answer
        assert waiting["response"].status_code == 200, waiting["response"].text
        assert waiting["at"] - cancelled_at < 5
        wait_idle(worker)
