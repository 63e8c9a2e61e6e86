"""Serving the web interface with uvicorn: beside the mail service (a component thread of
``escalations run``, stopped by the service's stop event) or alone (``escalations web``).

The listening socket is bound when the server is made, in the caller's thread: a port in use is a
set-up error naming ``ESCALATIONS_WEB__BIND`` before anything starts, and a port of 0 is known at
once (tests). uvicorn's own access log is off: ours (escalations.web.headers) has route templates,
never query strings."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Generator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import structlog
import uvicorn

from escalations.errors import SetupError
from escalations.settings import Settings
from escalations.web.app import create_web_app

if TYPE_CHECKING:
    from escalations.app import App

log = structlog.get_logger("escalations.web.server")
#: How often expired sessions, spent links and old sign-in attempts are deleted.
HOUSEKEEPING_SECONDS = 600


class _QuietServer(uvicorn.Server):
    """No signal handlers: the service (or the command) owns SIGINT and SIGTERM."""

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise SetupError("ESCALATIONS_WEB__BIND", f"cannot listen on {host}:{port} ({exc.strerror or exc}): "
                                                  "choose another host:port or stop what uses it") from None
    sock.setblocking(False)
    return sock


class WebServer:
    def __init__(self, application: App, settings: Settings, *, host: str | None = None,
                 port: int | None = None) -> None:
        web = settings.web
        self.host = host or web.host
        self.asgi = create_web_app(application, settings)  # a set-up mistake before any socket is taken
        self.socket = bind(self.host, web.port if port is None else port)
        self.port: int = self.socket.getsockname()[1]
        config = uvicorn.Config(self.asgi, log_config=None, access_log=False, lifespan="off", server_header=False,
                                date_header=False, proxy_headers=True, timeout_graceful_shutdown=5)
        self.server = _QuietServer(config)
        # uvicorn logs each request with its query string: a search for a child's name. Its access log
        # stays off whatever logging set-up came first (ours, escalations.web.headers, has route templates).
        quiet = logging.getLogger("uvicorn.access")
        quiet.handlers, quiet.propagate, quiet.disabled = [], False, True
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # "Started server process": ours say it
        self.started = threading.Event()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set (the service's component signature)."""

        def stopper() -> None:
            stop.wait()
            self.server.should_exit = True

        threading.Thread(target=stopper, name="web-stopper", daemon=True).start()
        threading.Thread(target=self._housekeeping, args=(stop,), name="web-housekeeping", daemon=True).start()
        log.info("web.started", port=self.port)
        try:
            asyncio.run(self._serve())
        finally:
            self.socket.close()
            log.info("web.stopped")

    def _housekeeping(self, stop: threading.Event) -> None:
        accounts = self.asgi.state.web.accounts
        while True:
            try:
                removed = accounts.housekeeping()
                if any(removed.values()):
                    log.info("web.housekeeping", **removed)
            except Exception:
                log.exception("web.housekeeping.failed")
            if stop.wait(HOUSEKEEPING_SECONDS):
                return

    async def _serve(self) -> None:
        self.started.set()
        await self.server.serve(sockets=[self.socket])
