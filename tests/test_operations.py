"""Operations: a live /metrics scrape passes promtool, request logs carry their fields, and two
server processes share one Redis (a cover made by one is a hit on the other; a request sent to
both at once is generated once)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from covergen.logs import JsonFormatter
from covergen.redis_server import free_loopback_port
from covergen.v1 import cover_pb2 as pb
from covergen.v1 import cover_pb2_grpc as pb_grpc


async def test_live_metrics_scrape_passes_promtool(service, stub, tmp_path: Path) -> None:
    await stub.GenerateCover(pb.GenerateCoverRequest(region="杭州", title="指标测试"), timeout=60)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GenerateCover(pb.GenerateCoverRequest(region="杭州", title=""), timeout=10)
    body = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5).read()
    text = body.decode()
    assert 'covergen_requests_total{code="OK",rpc="GenerateCover",style="jiangnan"}' in text
    assert 'code="INVALID_ARGUMENT"' in text
    for name in ("covergen_generation_seconds_bucket", "covergen_queue_wait_seconds_bucket",
                 "covergen_cache_requests_total", "covergen_adapters_resident", "covergen_batch_size_bucket",
                 "covergen_build_info", "covergen_queue_depth"):  # fmt: skip
        assert name in text, name
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'; .ci/run installs it)")
    scrape = tmp_path / "scrape.txt"
    scrape.write_bytes(body)
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


async def test_request_log_has_fields(stub, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="covergen.requests"):
        reply = await stub.GenerateCover(pb.GenerateCoverRequest(region="成都", title="日志字段"), timeout=60)
    records = [r for r in caplog.records if getattr(r, "request_id", None) == reply.request_id]
    assert records, "the request's log line carries its request id"
    record = records[0]
    assert record.region == "成都" and record.style == "chuanyu_hotpot"  # type: ignore[attr-defined]
    assert record.cache in ("miss", "hit", "coalesced", "bypass")  # type: ignore[attr-defined]
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == reply.request_id and "total_ms" in line["timings"]


@pytest.mark.parametrize("log_titles", [True, False])
async def test_titles_can_be_kept_out_of_logs(
    service, caplog: pytest.LogCaptureFixture, log_titles: bool
) -> None:
    from covergen.rpc import CallEdge

    calls = CallEdge(service.metrics, service.state, log_titles=log_titles)

    async def body() -> str:
        return "done"

    with caplog.at_level(logging.INFO, logger="covergen.requests"):
        await calls.call("GenerateCover", body, {"region": "杭州", "title": "内部标题"})
    record = next(r for r in caplog.records if getattr(r, "region", None) == "杭州")
    assert hasattr(record, "title") is log_titles
    assert ("内部标题" in JsonFormatter().format(record)) is log_titles


@pytest.fixture(scope="module")
def two_replicas(styles_dir: Path, redis_server, model_cache_dir: Path) -> Iterator[list[str]]:
    """Two covergen server processes on one Redis."""
    processes, targets = [], []
    for _ in range(2):
        port = free_loopback_port()
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "COVERGEN_HOST": "127.0.0.1",
            "COVERGEN_GRPC_PORT": str(port),
            "COVERGEN_METRICS_PORT": "0",
            "COVERGEN_REDIS_URL": redis_server.url,
            "COVERGEN_STYLES_DIR": str(styles_dir),
            "COVERGEN_CACHE_DIR": str(model_cache_dir),
            "COVERGEN_DEFAULT_STEPS": "2",
            "COVERGEN_DEVICE": "cpu",
            "OMP_NUM_THREADS": "1",
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "covergen.cli"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
        targets.append(f"127.0.0.1:{port}")
    try:
        for target, process in zip(targets, processes, strict=True):
            _wait_until_ready(target, process)
        yield targets
    finally:
        running = [process for process in processes if process.poll() is None]
        for process in running:
            process.terminate()
        for process in running:
            assert process.wait(timeout=120) == 0


# A bound on a condition, not a speed claim: two model-loading servers started at load ~14 on two
# cores took over 120 s to accept; a replica that exits fails the wait at once with its log.
REPLICA_START_TIMEOUT_S = 600.0


def _wait_until_ready(target: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + REPLICA_START_TIMEOUT_S
    channel = grpc.insecure_channel(target)
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"replica {target} exited with {process.returncode}: {_stderr_tail(process)}")
            try:
                grpc.channel_ready_future(channel).result(timeout=5)
                return
            except grpc.FutureTimeoutError:
                continue
    finally:
        channel.close()
    process.kill()
    process.wait()
    pytest.fail(
        f"replica {target} did not accept within {REPLICA_START_TIMEOUT_S} s: {_stderr_tail(process)}"
    )


def _stderr_tail(process: subprocess.Popen[bytes]) -> str:
    assert process.stderr is not None
    return process.stderr.read().decode(errors="replace")[-2000:]


async def test_two_replicas_share_one_cache(two_replicas: list[str]) -> None:
    channels = [grpc.aio.insecure_channel(t) for t in two_replicas]
    stubs = [pb_grpc.CoverServiceStub(c) for c in channels]
    try:
        request = pb.GenerateCoverRequest(region="广州", title="两个副本共享缓存")
        first = await stubs[0].GenerateCover(request, wait_for_ready=True, timeout=120)
        second = await stubs[1].GenerateCover(request, wait_for_ready=True, timeout=120)
        assert not first.cache_hit and second.cache_hit
        assert second.image == first.image

        together = pb.GenerateCoverRequest(region="厦门", title="同时到达两个副本")
        replies = await asyncio.gather(*(s.GenerateCover(together, timeout=120) for s in stubs))
        assert sorted(r.cache_hit for r in replies) == [False, True], "generated once, shared once"
        assert replies[0].image == replies[1].image
    finally:
        for channel in channels:
            await channel.close()
