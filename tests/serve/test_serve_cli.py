"""``cope serve`` on the command line: bad usage exits 2 with one line; the real command serves."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from cope.cli import main
from tests.serve.support import tiny_checkpoint


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("cope: error: "), err
    return err


def test_missing_model_exits_2(capsys, tmp_path, monkeypatch):
    err = one_line_error(capsys, main(["serve", "--port", "0", "--model", str(tmp_path / "nope")]))
    assert "nope" in err
    # Without --model the bundled model is used; when it is absent, one line says how to get it.
    import cope.model.videolm.builders as builders

    monkeypatch.setattr(builders, "default_model_path", lambda: tmp_path / "cope-tiny")
    err = one_line_error(capsys, main(["serve", "--port", "0"]))
    assert "cope-tiny" in err and "missing" in err


def test_bad_options_exit_2(capsys, tmp_path):
    err = one_line_error(capsys, main(["serve", "--port", "0", "--allow-dir", str(tmp_path / "absent")]))
    assert "--allow-dir" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = one_line_error(capsys, main(["serve", "--port", str(port), "--model", str(tmp_path)]))
    assert f"127.0.0.1:{port}" in err
    checkpoint = str(tiny_checkpoint(tmp_path / "model"))
    capsys.readouterr()  # save_pretrained's progress bar
    err = one_line_error(capsys, main(["serve", "--port", "0", "--model", checkpoint, "--max-batch", "0"]))
    assert "max_batch must be positive" in err


@pytest.mark.slow
def test_cope_serve_process_serves_and_stops_cleanly(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "my-model")
    work = tmp_path / "work"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cope.cli",
            "serve",
            "--port",
            "0",
            "--model",
            str(checkpoint),
            "--work-dir",
            str(work),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = None
        for line in process.stderr:
            if found := re.search(r"at (http://127\.0\.0\.1:\d+)/", line):
                url = found.group(1)
                break
        assert url, "the server did not announce its address"
        models = httpx.get(url + "/v1/models", timeout=30).json()
        assert [m["id"] for m in models["data"]] == ["my-model"]  # the model directory's name
        assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"
        assert len(list(work.iterdir())) == 1  # the server's private work directory
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    assert process.returncode == 130  # Ctrl-C: uvicorn shuts down gracefully, then cope exits as interrupted
    assert list(work.iterdir()) == [], "the work directory is removed at shutdown"
