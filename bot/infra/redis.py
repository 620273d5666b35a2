"""A Redis for the production layout: the one at REDIS_URL, else Debian's redis-server started on loopback.

Redis holds only locks here (Rasa's lock store, the gateway's conversation locks): nothing is
persisted (`--save '' --appendonly no`), so a restarted Redis starts empty, which is right for locks.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

#: Where Debian's package puts the server (also looked up on the PATH).
REDIS_SERVER = "/usr/bin/redis-server"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _send(host: str, port: int, command: bytes, timeout_s: float) -> bytes:
    """Send one inline command to host:port and return the first reply line (b"" on any error)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(command)
            return sock.recv(256).split(b"\r\n", 1)[0]
    except OSError:
        return b""


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    """Return True when a Redis at `url` (redis://[user:pw@]host:port/db) answers PING.

    A server that asks for a password (NOAUTH) counts as answering: it is there, the clients
    authenticate with the URL's credentials.
    """
    parts = urlsplit(url)
    reply = _send(parts.hostname or "127.0.0.1", parts.port or 6379, b"PING\r\n", timeout_s)
    return reply == b"+PONG" or reply.startswith(b"-NOAUTH")


@dataclass
class LocalRedis:
    """A redis-server this process started (see `ensure_redis`).

    Attributes:
        port: TCP port on 127.0.0.1.
        data_dir: directory of its pid file and log (`redis.pid`, `redis.log`).
        process: the server process (its own process group).
    """

    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The server's URL, database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SHUTDOWN NOSAVE, then SIGTERM, then SIGKILL after `timeout_s` seconds); idempotent."""
        if self.process.poll() is not None:
            return
        _send("127.0.0.1", self.port, b"SHUTDOWN NOSAVE\r\n", 2.0)
        try:
            self.process.wait(timeout=timeout_s / 2)
            return
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout_s / 2)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def find_redis_server() -> str:
    """Return the path of redis-server.

    Raises:
        RuntimeError: it is not installed (the message says to run `make prod-deps`).
    """
    found = REDIS_SERVER if os.access(REDIS_SERVER, os.X_OK) else shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server is not installed: run `make prod-deps` (Debian's redis-server), "
                           "or set REDIS_URL to a running Redis")
    return found


def ensure_redis(url: str, data_dir: Path | str, timeout_s: float = 20.0) -> LocalRedis | None:
    """Make sure a Redis answers at `url`; start one on loopback when none does.

    Args:
        url: redis://host:port/db. When nothing answers there and the host is loopback, Debian's
            redis-server is started bound to 127.0.0.1 at the URL's port (protected mode, no
            persistence: it holds only locks).
        data_dir: directory for the started server's pid file and log (created, mode 0700).
        timeout_s: seconds to wait for the started server's PING.

    Returns:
        None when a Redis already answered (nothing started), else the handle of the started
        server: call its `stop()`.

    Raises:
        RuntimeError: nothing answers at a non-loopback host, redis-server is missing (run
            `make prod-deps`), or the started server did not answer within `timeout_s` (the
            message names its log).
    """
    if redis_answers(url):
        return None
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if host not in LOOPBACK_HOSTS:
        raise RuntimeError(f"no Redis answers at {host}:{parts.port or 6379} (only a loopback one is started here)")
    port = parts.port or 6379
    server = find_redis_server()
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = data / "redis.log"
    command = [server, "--bind", "127.0.0.1", "--port", str(port), "--protected-mode", "yes",
               "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(data),
               "--pidfile", str(data / "redis.pid"), "--logfile", str(log)]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # noqa: S603
                               stderr=subprocess.DEVNULL, start_new_session=True)
    handle = LocalRedis(port, data, process)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}: see {log}")
        if redis_answers(handle.url, timeout_s=0.5):
            return handle
        time.sleep(0.1)
    handle.stop()
    raise RuntimeError(f"redis-server did not answer within {timeout_s:.0f} s: see {log}")
