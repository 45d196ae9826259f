"""``start_server``: the companion in a daemon thread (uvicorn), next to whatever else runs.

The socket is bound here, before uvicorn starts, so a busy port is a one-line error at once and
``port=0`` gives the chosen port right away.
"""

from __future__ import annotations

import errno
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from tuiwb.errors import TuiwbError, warn
from tuiwb.server.config import LOOPBACK, CompanionConfig
from tuiwb.server.security import LOOPBACK_NAMES, host_name

START_TIMEOUT_S = 30.0


@dataclass
class ServerHandle:
    """A running server."""

    host: str
    port: int
    token: str
    app: object
    """The FastAPI app (``app.state.hub`` holds the hub's counters)."""
    _server: object = field(repr=False, default=None)
    _thread: threading.Thread | None = field(repr=False, default=None)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/?token=TOKEN`` (the host it was bound to when that is not loopback)."""
        host = "127.0.0.1" if self.host in LOOPBACK or self.host in ("0.0.0.0", "::") else host_name(self.host)
        return f"http://{host}:{self.port}/?token={self.token}"

    def ssh_line(self, hostname: str | None = None) -> str:
        """The tunnel an SSH user runs on their own machine to open ``url`` there."""
        return f"ssh -L {self.port}:127.0.0.1:{self.port} {hostname or socket.gethostname()}"

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C stops it)."""
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            self.stop()
            raise


def check_host(host: str) -> None:
    """Loopback is the default; anything else is the user's explicit choice and gets a warning."""
    if host not in LOOPBACK:
        warn(f"serving on {host}, not loopback: anyone who can reach this address and has the token can "
             "drive the model (prefer the default 127.0.0.1 with an ssh -L tunnel)")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise TuiwbError(f"port {port} is already in use: pass another `port` (0 picks a free one)") from None
        raise TuiwbError(f"cannot listen on {host}:{port} ({e.strerror}): check `host` and `port`") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def start_server(session, *, host: str = CompanionConfig.host, port: int = CompanionConfig.port,
                 token: str | None = None,
                 roots: Sequence[Path] = (), web_dir: Path | None = None, target: dict | None = None,
                 ranked: dict | None = None, log_level: str = "warning") -> ServerHandle:
    """Serve ``session`` on ``host:port`` (0: a free port) in a daemon thread; returns once it accepts
    connections. ``token``: the access token (default: a fresh random one)."""
    import uvicorn

    from tuiwb.server.app import create_app
    from tuiwb.server.static import D3_MISSING, d3_path, default_web_dir

    CompanionConfig(host=host, port=int(port))  # checks both
    token = token or secrets.token_urlsafe(24)
    if d3_path(Path(web_dir) if web_dir is not None else default_web_dir()) is None:
        warn(D3_MISSING)
    check_host(host)
    extra = () if host in LOOPBACK else (host,)
    app = create_app(session, token=token, roots=roots, web_dir=web_dir, target=target, ranked=ranked,
                     extra_hosts=_extra_names(extra))
    sock = _bind(host, int(port))
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=log_level, ws="websockets-sansio", lifespan="on", access_log=False,
                            ws_max_size=1 << 20, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tuiwb-companion", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise TuiwbError(f"the companion server did not start on {host}:{bound}")
        time.sleep(0.02)
    return ServerHandle(host=host, port=bound, token=token, app=app, _server=server, _thread=thread)


def _extra_names(hosts: Iterable[str]) -> tuple[str, ...]:
    """An explicit host, plus this machine's name when it binds every interface."""
    out = []
    for h in hosts:
        if h in ("0.0.0.0", "::"):
            out += [socket.gethostname(), socket.getfqdn()]
        else:
            out.append(h)
    return tuple(n for n in out if n not in LOOPBACK_NAMES)
