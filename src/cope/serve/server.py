"""Run the app with uvicorn: in the foreground (``cope serve``) or in a background thread (tests,
benchmarks), on a given port or a free one (``port=0``)."""

from __future__ import annotations

import threading
import time

import uvicorn

KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this long


def uvicorn_config(app, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    """uvicorn's settings for ``app`` (built by ``create_app``, whose settings bound the connections).

    One process: the model lives in this process's worker thread, so there is no --workers.
    ``limit_concurrency`` caps open connections (one more gets uvicorn's plain 503), so slow or idle
    clients cannot pile up sockets; bodies have their own deadline in the app.
    """
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=KEEP_ALIVE_S,
        limit_concurrency=app.state.settings.max_connections,
    )


class BackgroundServer:
    """A uvicorn server on a daemon thread; ``url`` is known once ``start()`` returns.

    with BackgroundServer(app) as server:
        httpx.get(server.url + "/health")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.server = uvicorn.Server(uvicorn_config(app, host, port, log_level))
        self.thread = threading.Thread(target=self.server.run, name="cope-uvicorn", daemon=True)
        self.host = host

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the uvicorn server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
