"""Fault drills: what the running service does when its parts fail or its callers misbehave.

Each drill runs against a real server: `drill_service` (in this process, with a Redis and a
styles folder of its own so that killing or corrupting them disturbs no other test), a server
with a one-slot queue, or covergen-server as a child process for SIGTERM. Two drills go one level
down where a race needs many tries to show: cancelled cache flights against the real Redis, and
prompt planning racing the engine for the tokenizer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from waiting import GENEROUS_S, eventually

from covergen.requests import CoverRequest
from covergen.v1 import cover_pb2 as pb
from covergen.v1 import cover_pb2_grpc as pb_grpc

ADMIN_TOKEN = "drill-admin-token"
BEARER = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
REGIONS = ("杭州", "成都", "北京", "广州", "厦门", "Atlantis")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(title: str, region: str = "杭州", **fields: object) -> pb.GenerateCoverRequest:
    return pb.GenerateCoverRequest(region=region, title=title, **fields)


@contextmanager
def unet_steps(service: object) -> Iterator[list[int]]:
    """Count the UNet forwards (one per denoising step of a batch) the service runs in the block:
    claims about work done or skipped, instead of wall time."""
    count = [0]

    def counted(*_: object) -> None:
        count[0] += 1  # on the engine thread; an int store is atomic under the GIL

    handle = service.engine.denoiser.pipeline.unet.register_forward_hook(counted)  # type: ignore[attr-defined]
    try:
        yield count
    finally:
        handle.remove()


async def outcome(call: object) -> str:
    """The status name a call ended with (OK, DEADLINE_EXCEEDED, CANCELLED, ...)."""
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    except asyncio.CancelledError:
        return "CANCELLED"
    return "OK"


# --- the drill server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drill_redis() -> Iterator[object]:
    from redis_fixture import running_redis

    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def drill_styles(styles_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("drill") / "styles"
    shutil.copytree(styles_dir, target)
    return target


@pytest.fixture(scope="module")
async def drill_service(drill_styles: Path, drill_redis, make_settings) -> AsyncIterator[object]:
    from covergen.server import start_service

    settings = make_settings(
        styles_dir=drill_styles, redis_url=drill_redis.url, default_steps=2, max_size=256,
        max_batch=4, max_wait_ms=2.0, drain_grace_s=2.0, admin_token=ADMIN_TOKEN,
    )  # fmt: skip
    service = await start_service(settings)
    yield service
    await service.stop(1.0)


@pytest.fixture(scope="module")
async def drill_channel(drill_service) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{drill_service.port}") as channel:
        yield channel


@pytest.fixture(scope="module")
def covers(drill_channel: grpc.aio.Channel) -> pb_grpc.CoverServiceStub:
    return pb_grpc.CoverServiceStub(drill_channel)


@pytest.fixture(scope="module")
def admin(drill_channel: grpc.aio.Channel) -> pb_grpc.AdminServiceStub:
    return pb_grpc.AdminServiceStub(drill_channel)


# --- Redis ----------------------------------------------------------------------------------------


async def test_redis_killed_under_load_fails_nothing_and_caching_resumes(
    drill_service, drill_redis, covers: pb_grpc.CoverServiceStub
) -> None:
    completed = 0
    outage_started = asyncio.Event()
    during_outage: list[str] = []

    async def caller(worker: int) -> list[str]:
        nonlocal completed
        codes = []
        for n in range(8):  # every third call repeats an earlier title: hits before, misses after
            title = f"redis drill {worker}-{n - n % 3}"
            codes.append(await outcome(covers.GenerateCover(request(title, REGIONS[n % 5]), timeout=60)))
            if outage_started.is_set():
                during_outage.append(codes[-1])
            completed += 1
            if completed == 12:
                await asyncio.to_thread(drill_redis.stop)
                outage_started.set()
        return codes

    results = await asyncio.gather(*(caller(w) for w in range(6)))
    codes = [code for worker in results for code in worker]
    assert codes == ["OK"] * 48
    assert len(during_outage) >= 20, "most of the load must run while Redis is down"
    assert drill_service.metrics.registry.get_sample_value("covergen_cache_errors_total") > 0

    port = drill_redis.port
    await asyncio.to_thread(drill_redis.start)  # empty, on the same port
    assert drill_redis.port == port

    async def repeated_request_hits() -> bool:
        # the breaker skips Redis for 1 s after the last failure; then one miss stores the cover
        reply = await covers.GenerateCover(request("redis drill after restart"), timeout=60)
        return reply.cache_hit

    await eventually(repeated_request_hits, "a repeated request hit the cache once Redis was back")


# --- bad adapters on reload -----------------------------------------------------------------------


class _Exploit:
    """Unpickling this creates the marker file: proof that a pickle was opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _corrupt(folder: Path, marker: Path) -> None:
    (folder / "adapter.safetensors").write_bytes(b"\x7f\xff\x00\x00\x00\x00\x00\x00not a safetensors header" * 64)


def _truncate(folder: Path, marker: Path) -> None:
    data = (folder / "adapter.safetensors").read_bytes()
    (folder / "adapter.safetensors").write_bytes(data[: len(data) // 2])


def _pickle_checkpoint(folder: Path, marker: Path) -> None:
    (folder / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": _Exploit(marker)}))
    card = (folder / "style.yaml").read_text(encoding="utf-8")
    (folder / "style.yaml").write_text(card.replace("adapter: adapter.safetensors", "adapter: evil.ckpt"), encoding="utf-8")


@pytest.mark.parametrize(
    ("sabotage", "reason"),
    [(_corrupt, "corrupt or truncated"), (_truncate, "corrupt or truncated"), (_pickle_checkpoint, "pickle checkpoint")],
    ids=["corrupt", "truncated", "pickle-ckpt"],
)
async def test_bad_adapter_is_rejected_on_reload_and_the_old_version_keeps_serving(
    drill_styles: Path, covers: pb_grpc.CoverServiceStub, admin: pb_grpc.AdminServiceStub,
    tmp_path: Path, sabotage, reason: str,
) -> None:  # fmt: skip
    folder = drill_styles / "jiangnan"
    saved = {p.name: p.read_bytes() for p in folder.iterdir()}
    marker = tmp_path / "pwned"
    before = await covers.GenerateCover(request(f"adapter drill {reason}"), timeout=60)  # makes it resident
    version = before.adapters[0].version
    try:
        sabotage(folder, marker)
        report = await admin.ReloadStyles(pb.ReloadStylesRequest(), metadata=BEARER, timeout=60)
        rejected = [line for line in report.rejected if line.startswith("jiangnan:")]
        assert len(rejected) == 1 and reason in rejected[0], report.rejected
        assert "jiangnan" not in report.reloaded
        after = await covers.GenerateCover(request(f"adapter drill {reason} after"), timeout=60)
        assert [(a.name, a.version) for a in after.adapters] == [("jiangnan", version)]
        assert not marker.exists(), "a pickle was unpickled"
    finally:
        for path in folder.iterdir():
            if path.name not in saved:
                path.unlink()
        for name, data in saved.items():
            (folder / name).write_bytes(data)
    restored = await admin.ReloadStyles(pb.ReloadStylesRequest(), metadata=BEARER, timeout=60)
    assert not restored.rejected and "jiangnan" not in restored.reloaded
    assert not marker.exists()


async def test_a_rejected_style_keeps_its_previous_adapter_after_eviction(
    drill_styles: Path, covers: pb_grpc.CoverServiceStub, admin: pb_grpc.AdminServiceStub, tmp_path: Path
) -> None:
    folder = drill_styles / "jiangnan"
    saved = {p.name: p.read_bytes() for p in folder.iterdir()}
    version = (await covers.GenerateCover(request("eviction drill"), timeout=60)).adapters[0].version
    try:
        _pickle_checkpoint(folder, tmp_path / "pwned")
        report = await admin.ReloadStyles(pb.ReloadStylesRequest(), metadata=BEARER, timeout=60)
        assert any(line.startswith("jiangnan:") for line in report.rejected)
        await admin.UnloadAdapter(pb.UnloadAdapterRequest(style="jiangnan"), metadata=BEARER, timeout=30)
        after = await covers.GenerateCover(request("eviction drill after"), timeout=60)
        assert [(a.name, a.version) for a in after.adapters] == [("jiangnan", version)]
    finally:
        for path in folder.iterdir():
            if path.name not in saved:
                path.unlink()
        for name, data in saved.items():
            (folder / name).write_bytes(data)
        await admin.ReloadStyles(pb.ReloadStylesRequest(), metadata=BEARER, timeout=60)


async def test_styles_reloaded_under_load_fail_no_request(
    drill_styles: Path, covers: pb_grpc.CoverServiceStub, admin: pb_grpc.AdminServiceStub
) -> None:
    await covers.GenerateCover(request("reload drill: make jiangnan resident"), timeout=60)
    adapter = drill_styles / "jiangnan" / "adapter.safetensors"
    original = adapter.read_bytes()
    other = (drill_styles / "spring" / "adapter.safetensors").read_bytes()  # valid, different bytes
    reloads: list[pb.ReloadStylesResponse] = []
    codes: list[str] = []

    async def caller(worker: int) -> None:
        n = 0
        while len(reloads) < 3 or n < 4:
            region = REGIONS[(worker + n) % len(REGIONS)]
            themes = ["spring"] if n % 4 == 0 else []
            call = covers.GenerateCover(request(f"reload drill {worker}-{n}", region, themes=themes), timeout=60)
            codes.append(await outcome(call))
            n += 1

    def replace_adapter(data: bytes) -> None:
        # Atomically, as `covergen-train publish` does: adapters are read at paint time, so an
        # in-place rewrite can hand a concurrent cold load a half-written (corrupt) file.
        temp = adapter.with_suffix(".tmp")
        temp.write_bytes(data)
        os.replace(temp, adapter)

    async def reloader() -> None:
        for i in range(3):
            replace_adapter(other if i % 2 == 0 else original)
            reloads.append(await admin.ReloadStyles(pb.ReloadStylesRequest(), metadata=BEARER, timeout=60))

    try:
        await asyncio.gather(reloader(), *(caller(w) for w in range(4)))
    finally:
        replace_adapter(original)
        await admin.ReloadStyles(pb.ReloadStylesRequest(), metadata=BEARER, timeout=60)
    assert len(codes) >= 16 and set(codes) == {"OK"}, sorted(set(codes))
    assert all(not r.rejected for r in reloads)
    assert sum("jiangnan" in r.reloaded for r in reloads) >= 2, "the adapter must really change under load"


# --- callers that leave ---------------------------------------------------------------------------


STORM_STEPS = 12


async def _storm(covers: pb_grpc.CoverServiceStub, tag: str, size: int = 40) -> list[str]:
    """`size` calls: half with deadlines of 1-60 ms, half cancelled by the client after 0-60 ms."""
    rng = random.Random(tag)
    calls = []
    for i in range(size):
        req = request(f"storm {tag} {i}", REGIONS[i % len(REGIONS)], steps=STORM_STEPS)
        if i % 2:
            calls.append(covers.GenerateCover(req, timeout=rng.uniform(0.001, 0.06)))
        else:
            call = covers.GenerateCover(req, timeout=60)
            asyncio.get_running_loop().call_later(rng.uniform(0.0, 0.06), call.cancel)
            calls.append(call)
    return list(await asyncio.gather(*(outcome(c) for c in calls)))


async def test_cancellation_storm_leaks_nothing(
    drill_service, drill_redis, covers: pb_grpc.CoverServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    stored = redis.Redis.from_url(drill_redis.url)
    await _storm(covers, "warm-up")  # grows thread pools to their working size
    await covers.GenerateCover(request("after warm-up storm"), timeout=60)
    threads, tasks = threading.active_count(), len(asyncio.all_tasks())
    keys = await asyncio.to_thread(stored.dbsize)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        codes = await _storm(covers, "measured")
        assert set(codes) <= {"OK", "DEADLINE_EXCEEDED", "CANCELLED"}, codes
        assert codes.count("OK") < len(codes) // 2, "the storm must actually cut calls short"

        with unet_steps(drill_service) as steps:
            reply = await covers.GenerateCover(request("after the storm", steps=2), timeout=60)
        gc.collect()
    # FIFO: a generation for an abandoned call would have run (and been cached) before this one.
    new_keys = await asyncio.to_thread(stored.dbsize) - keys
    locks = await asyncio.to_thread(stored.keys, "lock:*")
    stored.close()
    assert not locks, "cancelled calls left generation locks behind"
    assert new_keys == codes.count("OK") + 1, "covers were generated for callers that had gone"
    # Abandoned jobs stop between steps: before this call's 2 steps the engine may finish the
    # step in progress (or a few, while cancellations reach the server), never a whole 12-step job.
    assert reply.image
    assert steps[0] < STORM_STEPS + 2, f"{steps[0]} UNet steps ran for a 2-step call after the storm"
    assert drill_service.engine.depth == 0  # FIFO: every storm job was taken or dropped before this one
    assert threading.active_count() <= threads + 2, "threads leaked"
    assert len(asyncio.all_tasks()) <= tasks + 4, "tasks leaked"
    unretrieved = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not unretrieved, "abandoned jobs' results must be dropped quietly"


async def test_cancelled_cache_flights_neither_generate_nor_leave_locks(drill_redis) -> None:
    """Callers that leave at any point of the cache's Redis round trips: no cover is generated
    for them and no generation lock outlives them (a retry would wait out the lock's TTL)."""
    import redis

    from covergen.cache import CachedCover, ResultCache
    from covergen.metrics import Metrics

    cache = ResultCache(drill_redis.url, Metrics(base_model="drill", device="cpu", queue_capacity=1))
    orphans: list[int] = []

    async def attempt(i: int) -> None:
        caller_gone = False
        key = f"covergen:drill:cancel:{i}"

        async def generate() -> CachedCover:
            if caller_gone:  # the flight was cancelled before it got here
                orphans.append(i)
            await asyncio.sleep(10)
            return CachedCover(b"cover")

        caller = asyncio.create_task(cache.get_or_generate(key, generate))
        for _ in range(i % 40):  # cancel at every point of the Redis round trips
            await asyncio.sleep(0)
        flights = [t for t in asyncio.all_tasks() if t.get_name() == f"cover-flight {key}"]
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await caller
        caller_gone = True  # the caller's exit has cancelled the flight by now
        if flights:  # the flight runs to its end: cancelled, or (the bug) on into generate()
            await asyncio.wait(flights, timeout=GENEROUS_S)

    try:
        for i in range(320):
            await attempt(i)
    finally:
        await cache.close()
    assert not orphans, f"{len(orphans)} of 320 flights started generating after their caller left"
    with redis.Redis.from_url(drill_redis.url) as raw:
        locks = raw.keys("lock:covergen:drill:cancel:*")
    assert not locks, f"{len(locks)} generation locks were left behind by cancelled flights"


async def test_deadline_mid_generation_stops_the_job_between_steps(
    drill_service, covers: pb_grpc.CoverServiceStub
) -> None:
    long = request("deadline drill: a hundred steps", steps=100, width=256, height=256)
    with unet_steps(drill_service) as steps:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await covers.GenerateCover(long, timeout=1.5)  # the whole job takes ~10 s or more here
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        reply = await covers.GenerateCover(request("deadline drill: next", steps=2), timeout=60)
    # The long job stopped between steps when its deadline passed, short of its 100 steps (on a
    # slow machine it may not have started at all); the next call ran its own 2.
    assert reply.image
    assert steps[0] < 100 + 2, f"the expired job ran to the end ({steps[0]} UNet steps)"


async def test_out_of_memory_fails_one_request_and_the_next_succeeds(
    drill_service, covers: pb_grpc.CoverServiceStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    unet = drill_service.engine.denoiser.pipeline.unet
    real_forward = unet.forward
    injected = []

    def forward_that_runs_out_of_memory_once(*args: object, **kwargs: object) -> object:
        if not injected:
            injected.append(True)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the drill)")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", forward_that_runs_out_of_memory_once)
    same = request("oom drill", region="成都")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await covers.GenerateCover(same, timeout=60)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "out of memory" in caught.value.details() and "COVERGEN_MAX_BATCH" in caught.value.details()
    reply = await covers.GenerateCover(same, timeout=60)  # the failure was not cached
    assert reply.image and not reply.cache_hit and injected == [True]


def test_planning_requests_never_disturbs_the_engines_tokenizer(drill_service) -> None:
    """Requests are planned (prompt tokens counted) on the event loop while the engine thread
    encodes padded batches: the two must not share tokenizer state."""
    maker, denoiser = drill_service.maker, drill_service.engine.denoiser
    stop = threading.Event()

    def plan_requests() -> None:
        n = 0
        while not stop.is_set():  # a new title each time: no plan comes from the memo
            title = f"火锅节开幕 spring festival hotpot market {n} " * 4
            maker.plan(CoverRequest(region="杭州", title=title, themes=("春天",)))
            n += 1

    planner = threading.Thread(target=plan_requests)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads as often as possible
    failures = []
    try:
        planner.start()
        for i in range(200):
            try:
                denoiser._encode(["", f"prompt {i} with a few more words than the empty one"])  # [2, 77, d]
            except ValueError as exc:  # unpadded ids of unequal length cannot form a tensor
                failures.append(str(exc)[:80])
    finally:
        stop.set()
        planner.join()
        sys.setswitchinterval(interval)
    assert not failures, f"{len(failures)} of 200 engine encodes failed: {failures[0]}"


# --- overload -------------------------------------------------------------------------------------


async def test_full_queue_refuses_at_once_and_serves_the_rest(styles_dir: Path, make_settings) -> None:
    from covergen.server import start_service

    settings = make_settings(styles_dir=styles_dir, default_steps=2, max_queue=1, max_batch=1, max_wait_ms=0.0)
    service = await start_service(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = pb_grpc.CoverServiceStub(channel)
            await stub.GenerateCover(request("connect"), timeout=60)

            async def counted(i: int, steps: list[int]) -> tuple[str, int, str]:
                """The call's status, the UNet steps the engine ran while it was out, its details."""
                before = steps[0]
                try:
                    await stub.GenerateCover(request(f"flood {i}", steps=12), timeout=120)
                except grpc.aio.AioRpcError as exc:
                    return exc.code().name, steps[0] - before, exc.details() or ""
                return "OK", steps[0] - before, ""

            with unet_steps(service) as steps:
                results = await asyncio.gather(*(counted(i, steps) for i in range(12)))
    finally:
        await service.stop(1.0)
    refused = [r for r in results if r[0] == "RESOURCE_EXHAUSTED"]
    served = [r for r in results if r[0] == "OK"]
    assert len(refused) + len(served) == 12, [r[0] for r in results]
    assert refused and served
    assert all("queue is full" in r[2] and "COVERGEN_MAX_QUEUE" in r[2] for r in refused)
    # one generation is 12 steps: a refusal comes back before the engine has run one
    assert max(r[1] for r in refused) < 12, "refusals must not wait for a generation"
    assert max(r[1] for r in served) >= 12


# --- SIGTERM --------------------------------------------------------------------------------------


def _inflight(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("covergen_inflight_requests "):
                return float(line.split()[1])
    return 0.0


async def _wait_for_inflight(metrics_port: int, count: int) -> None:
    """The child server's own in-flight gauge, read until `count` calls are being handled."""

    async def reached() -> bool:
        return await asyncio.to_thread(_inflight, metrics_port) >= count

    await eventually(reached, f"{count} calls reached the server")


async def test_sigterm_drains_in_flight_calls_and_refuses_new_ones(
    styles_dir: Path, redis_server, model_cache_dir: Path, tmp_path: Path
) -> None:
    # a drain ends when its calls finish: a generous grace costs nothing and holds under load
    port, metrics_port, grace = free_port(), free_port(), GENEROUS_S
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "COVERGEN_HOST": "127.0.0.1", "COVERGEN_GRPC_PORT": str(port),
        "COVERGEN_METRICS_PORT": str(metrics_port), "COVERGEN_REDIS_URL": redis_server.url,
        "COVERGEN_STYLES_DIR": str(styles_dir), "COVERGEN_CACHE_DIR": str(model_cache_dir),
        "COVERGEN_DRAIN_GRACE_S": str(grace), "COVERGEN_DEFAULT_STEPS": "2", "COVERGEN_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",  # 2 shared cores: more intra-op threads make each step ~10x slower
    }  # fmt: skip
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen([sys.executable, "-m", "covergen.cli"], env=env, stdout=sink, stderr=subprocess.STDOUT)
    options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=120)
            while (await watch.read()).status != health_pb2.HealthCheckResponse.SERVING:
                pass
            stub = pb_grpc.CoverServiceStub(channel)
            in_flight = [
                asyncio.ensure_future(stub.GenerateCover(request(f"sigterm {i}", steps=12, width=128, height=128), timeout=2 * GENEROUS_S))
                for i in range(3)
            ]
            await _wait_for_inflight(metrics_port, 3)
            server.send_signal(signal.SIGTERM)
            while (await watch.read()).status != health_pb2.HealthCheckResponse.NOT_SERVING:
                pass  # the drain has begun
            watch.cancel()
            assert not any(call.done() for call in in_flight), "the calls must still be running in the drain"

            status = await health.Check(health_pb2.HealthCheckRequest(), timeout=GENEROUS_S)
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GenerateCover(request("sigterm: too late"), timeout=GENEROUS_S)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            replies = await asyncio.gather(*in_flight)
            assert all(r.image for r in replies), "in-flight calls must finish during the drain"
        code = await asyncio.wait_for(asyncio.to_thread(server.wait), 2 * GENEROUS_S)  # a hang guard only
        assert code == 0, log.read_text(errors="replace")[-2000:]
        assert "stopped" in log.read_text(errors="replace"), "the drain must end in a clean stop"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
