"""Servers a load run starts for itself: the ceiling, an in-process covergen, a child covergen.

- `CeilingServer`: a bare grpc.aio CoverService whose GenerateCover returns one canned response
  at once. Driving it with the same load shows what the client, gRPC and loopback alone allow,
  the ceiling that cache-hit throughput is compared with.
- `start_inprocess_service`: covergen's own `start_service` in this process (embedded model,
  embedded Redis unless COVERGEN_REDIS_URL is set) on a free loopback port.
- `ServerProcess`: `python -m covergen.cli` as a child process, so its RSS and open file
  descriptors can be read from /proc without the load generator's own.

Spawned servers serve a private copy of the styles folder with demo adapters filled in
(`python -m trainer.embedded.demo_adapters`), so a fresh checkout works.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from covergen.v1 import cover_pb2 as pb
from covergen.v1 import cover_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
# Reconnect quickly while a spawned server is still loading its model.
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _CannedCovers(pb_grpc.CoverServiceServicer):
    def __init__(self, response: pb.GenerateCoverResponse) -> None:
        self._response = response

    async def GenerateCover(
        self, request: pb.GenerateCoverRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateCoverResponse:
        return self._response


class CeilingServer:
    """A CoverService on a free loopback port that answers every GenerateCover with `response`."""

    def __init__(self, response: pb.GenerateCoverResponse) -> None:
        self._response = response
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> CeilingServer:
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_CoverServiceServicer_to_server(_CannedCovers(self._response), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.stop(0)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def canned_response(sample: pb.GenerateCoverResponse | None, width: int, height: int) -> pb.GenerateCoverResponse:
    """A cache-hit-shaped reply: a copy of a real one when there is one, else random image bytes
    of about a PNG's size at `width` x `height`."""
    if sample is not None:
        reply = pb.GenerateCoverResponse()
        reply.CopyFrom(sample)
        reply.cache_hit = True
        return reply
    return pb.GenerateCoverResponse(
        image=os.urandom(width * height * 3 // 2), mime_type="image/png", width=width, height=height, cache_hit=True
    )


def prepare_styles(source: Path | None = None) -> Path:
    """A temporary copy of the styles folder with a demo adapter for every style lacking one."""
    source = source or Path(os.environ.get("COVERGEN_STYLES_DIR", REPO / "styles"))
    target = Path(tempfile.mkdtemp(prefix="covergen-load-styles-")) / "styles"
    shutil.copytree(source, target)
    subprocess.run(
        [sys.executable, "-m", "trainer.embedded.demo_adapters", "--styles-dir", str(target)],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return target


async def start_inprocess_service(styles_dir: Path, **overrides: Any) -> Any:  # covergen.server.Service
    """covergen in this process on a free loopback port; the caller stops it (`await svc.stop()`)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from covergen.server import start_service  # heavy: torch, diffusers
    from covergen.settings import Settings

    settings = Settings(host="127.0.0.1", grpc_port=0, metrics_port=0, styles_dir=styles_dir, **overrides)
    return await start_service(settings)


async def wait_serving(target: str, timeout_s: float) -> None:
    """Block until the server at `target` reports SERVING on the health service."""
    async with grpc.aio.insecure_channel(target, options=FAST_RECONNECT) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stream = health.Watch(health_pb2.HealthCheckRequest(service=""), wait_for_ready=True, timeout=timeout_s)
        async for reply in stream:
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                stream.cancel()
                return
    raise TimeoutError(f"{target} did not report SERVING within {timeout_s:.0f} s")


class ServerProcess:
    """`python -m covergen.cli` (or another server `module`, e.g. covergen.rayserve.cli) as a
    child process on a free loopback port.

    `env` adds COVERGEN_* settings (HOST, GRPC_PORT and METRICS_PORT are chosen here); the
    child's log goes to `log_path`.
    """

    def __init__(self, env: dict[str, str], log_path: Path, module: str = "covergen.cli") -> None:
        self.module = module
        self.port = free_port()
        self.log_path = log_path
        self._env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "COVERGEN_HOST": "127.0.0.1",
            "COVERGEN_GRPC_PORT": str(self.port),
            "COVERGEN_METRICS_PORT": "0",
            # Torch's default intra-op threads oversubscribe a small shared CPU: measured ~14x
            # slower steps on 2 busy cores. Override OMP_NUM_THREADS in `env` on a big machine.
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            **env,
        }
        self.process: asyncio.subprocess.Process | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    async def start(self, timeout_s: float = 180.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module, env=self._env, stdout=log, stderr=subprocess.STDOUT
            )
        waiting = asyncio.ensure_future(wait_serving(self.target, timeout_s))
        exited = asyncio.ensure_future(self.process.wait())
        done, _ = await asyncio.wait({waiting, exited}, return_when=asyncio.FIRST_COMPLETED)
        if waiting in done:
            exited.cancel()
            waiting.result()
            return
        waiting.cancel()
        tail = self.log_path.read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"{self.module} exited with {self.process.returncode}: " + " | ".join(tail))

    async def terminate(self, timeout_s: float) -> int:
        """SIGTERM and wait for the drain; returns the exit code (kills after `timeout_s`)."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(self.process.wait(), timeout_s)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
                return -signal.SIGKILL
        return int(self.process.returncode)


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (VmRSS from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def open_fds(pid: int) -> int:
    """How many file descriptors `pid` holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    """How many threads `pid` runs."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no Threads line")
