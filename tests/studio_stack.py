"""A real covergen server, a real studio and a real headless Chromium for tests/test_studio.py.

The server is `covergen-server` in a child process on the tiny `embedded` model over a private
copy of styles/; the studio is `python -m trainer.studio` in another child, serving a socket the
test binds first (so the studio can be killed and restarted on the same address, and no test
waits for a port to open). Chromium comes from Debian (`apt-get install chromium
chromium-driver`, which .ci/run does); without it the browser tests skip and say so.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "studio-test-admin-token"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Re-check a condition until it holds (bounded generously; never a fixed sleep as sync)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def draw_pictures(folder: Path, count: int = 16) -> list[Path]:
    """`count` distinct 64 px scenes: a sky, a wall, roofs and windows in seeded colours."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(14)
    paths = []
    for i in range(count):
        sky = tuple(int(v) for v in rng.integers(120, 240, 3))
        image = Image.new("RGB", (64, 64), sky)  # type: ignore[arg-type]
        draw = ImageDraw.Draw(image)
        base = int(rng.integers(28, 44))
        draw.rectangle((0, base, 63, 63), fill=(235, 232, 225))
        for x in range(int(rng.integers(0, 8)), 64, int(rng.integers(10, 18))):
            draw.polygon([(x, base), (x + 7, base - int(rng.integers(6, 14))), (x + 14, base)], fill=(30, 30, 36))
            draw.rectangle((x + 4, base + 8, x + 9, base + 14), fill=tuple(int(v) for v in rng.integers(0, 120, 3)))
        for _ in range(30):
            px, py = int(rng.integers(0, 64)), int(rng.integers(0, 64))
            draw.point((px, py), fill=(int(rng.integers(0, 255)), 40, 40))
        path = folder / f"street_{i:02d}.png"
        image.save(path)
        paths.append(path)
    return paths


@dataclass
class Studio:
    """The studio child process and plain HTTP access to it (a cookie jar with its CSRF token)."""

    url: str
    sock: socket.socket
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    jar: http.cookiejar.CookieJar = field(default_factory=http.cookiejar.CookieJar)

    def start(self) -> None:
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trainer.studio"], env={**self.env, "COVERGEN_STUDIO_FD": str(self.sock.fileno())},
                pass_fds=(self.sock.fileno(),), stdout=sink, stderr=subprocess.STDOUT, cwd=REPO,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """End of the module: no graceful path under test here, so no waiting for one."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()

    def opener(self) -> urllib.request.OpenerDirector:
        return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with self.opener().open(self.url + path, timeout=120) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def csrf(self) -> str:
        self.get("/datasets")
        return next(c.value for c in self.jar if c.name == "studio_csrf")

    def post(self, path: str, data: dict[str, str] | None = None, *, body: bytes | None = None,
             headers: dict[str, str] | None = None, csrf: bool = True) -> tuple[int, bytes]:
        payload = body if body is not None else urllib.parse.urlencode({**(data or {}), **({"csrf": self.csrf()} if csrf else {})}).encode()
        request = urllib.request.Request(self.url + path, data=payload, method="POST", headers=headers or {})
        try:
            with self.opener().open(request, timeout=120) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "----studio-test-boundary"
    parts = []
    for name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@contextlib.contextmanager
def covergen_server(styles_dir: Path, log: Path) -> Iterator[str]:
    """`covergen-server` on the tiny embedded model; yields host:port once it answers health checks."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = free_port()
    env = {**os.environ, "COVERGEN_BASE_MODEL": "embedded", "COVERGEN_HOST": "127.0.0.1",
           "COVERGEN_GRPC_PORT": str(port), "COVERGEN_METRICS_PORT": "0", "COVERGEN_STYLES_DIR": str(styles_dir),
           "COVERGEN_CACHE_DIR": str(REPO / ".cache" / "covergen"), "COVERGEN_DEVICE": "cpu",
           "COVERGEN_DTYPE": "fp32", "COVERGEN_DEFAULT_STEPS": "4", "COVERGEN_ADMIN_TOKEN": ADMIN_TOKEN,
           "COVERGEN_CACHE_ENABLED": "false", "COVERGEN_TORCH_THREADS": "1", "COVERGEN_DRAIN_GRACE_S": "1"}
    with log.open("ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "covergen.cli"], env=env, stdout=sink, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def serving() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"covergen-server exited ({proc.returncode}); see {log}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True)
                except grpc.RpcError:
                    return False
                return reply.status == health_pb2.HealthCheckResponse.SERVING

            wait_until(serving, 240, "covergen-server to serve")
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def studio_styles(tmp: Path) -> Path:
    target = tmp / "styles"
    shutil.copytree(REPO / "styles", target, ignore=shutil.ignore_patterns(".history", "studio-preview"))
    return target


def browser(download_dir: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 "--lang=zh-CN"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir)})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
