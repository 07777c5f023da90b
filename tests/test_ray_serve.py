"""covergen on Ray Serve, end to end: `covergen-ray` (what `make serve-ray` runs) as a child
process with its own local Ray cluster, two painter replicas on the tiny embedded model, and the
session's real Redis; this test process attaches to the cluster as a second driver to read
Serve's state and to find the replica to kill. One cluster for the whole module: the last test
stops it with SIGTERM and checks that no process of it is left.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

# The cluster uses Ray's token auth (token in ~/.ray/auth_token); this driver attaching must be in
# token mode from Ray's first import, which conftest.py sees to (RAY_AUTH_MODE=token).
pytest.importorskip("ray.serve", reason="needs the covergen[ray] extra (make install brings it)")
psutil = pytest.importorskip("psutil")

from covergen.rayserve.cli import READY_FILE  # noqa: E402
from covergen.v1 import cover_pb2 as pb  # noqa: E402
from covergen.v1 import cover_pb2_grpc as pb_grpc  # noqa: E402

REGIONS = ("杭州", "成都", "北京", "广州")  # four different adapter stacks
MAX_PIXEL_DIFF = 3  # uint8 levels: the engine's own batch-vs-alone bound (tests/test_engine.py)
# cluster + three replicas: 38 s measured on a quiet machine, 105 s at load 13 on its two cores
START_TIMEOUT_S = 600.0
pytestmark = pytest.mark.timeout(900)  # the first test also waits for the cluster


@dataclass
class RayServing:
    process: subprocess.Popen[bytes]
    temp_dir: Path
    styles_dir: Path
    port: int
    log_path: Path
    processes: list[psutil.Process]  # the cluster's processes while it serves

    def stub(self) -> pb_grpc.CoverServiceStub:
        return pb_grpc.CoverServiceStub(grpc.insecure_channel(f"127.0.0.1:{self.port}"))


def _broken_overlay(styles: Path) -> None:
    """An overlay style whose adapter file is not safetensors (theme tag 'broken')."""
    card = styles / "broken"
    card.mkdir()
    (card / "adapter.safetensors").write_bytes(b"not a safetensors file")
    (card / "style.yaml").write_text(
        "name: broken\ndisplay_name: broken overlay\nkind: overlay\nadapter: adapter.safetensors\n"
        'default_weight: 0.5\naliases: [broken]\nprompt:\n  subject: "{subject}"\n  scene: "street"\n'
        '  style: "flat colours"\n  details: "plain"\n',
        encoding="utf-8",
    )


def _wait_until_serving(serving: RayServing) -> None:
    """Health SERVING on the ingress port; fails at once with the log if the command exits."""
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{serving.port}"))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if serving.process.poll() is not None:
            pytest.fail(
                f"covergen-ray exited with {serving.process.returncode}:\n{serving.log_path.read_text()}"
            )
        try:  # each try blocks until the port accepts, or 10 s
            reply = health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=10)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            continue
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        return
    pytest.fail(
        f"covergen-ray did not serve within {START_TIMEOUT_S} s:\n{serving.log_path.read_text()[-4000:]}"
    )


@pytest.fixture(scope="module")
def ray_serving(styles_dir: Path, redis_server, model_cache_dir: Path) -> Iterator[RayServing]:
    from loadtest.servers import free_port

    temp_dir = Path(tempfile.mkdtemp(prefix="cgray-", dir="/tmp"))  # short: Ray's socket paths
    styles = temp_dir / "styles"
    shutil.copytree(styles_dir, styles)
    _broken_overlay(styles)
    port = free_port()
    env = {
        **os.environ,
        "COVERGEN_BASE_MODEL": "embedded",  # the conftest server's model: pixels are compared
        "COVERGEN_STYLES_DIR": str(styles),
        "COVERGEN_CACHE_DIR": str(model_cache_dir),
        "COVERGEN_REDIS_URL": redis_server.url,  # shared with the single-process test server
        "COVERGEN_HOST": "127.0.0.1",
        "COVERGEN_GRPC_PORT": str(port),
        "COVERGEN_METRICS_PORT": "0",
        "COVERGEN_DEVICE": "cpu",
        "COVERGEN_DTYPE": "fp32",
        "COVERGEN_DEFAULT_STEPS": "4",
        "COVERGEN_MAX_SIZE": "256",
        "COVERGEN_MAX_WAIT_MS": "2.0",
        "COVERGEN_TORCH_THREADS": "1",
        "COVERGEN_DRAIN_GRACE_S": "5",
        "RAY_DEDUP_LOGS": "0",
    }
    log_path = temp_dir / "covergen-ray.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "covergen.rayserve.cli", "--ray-temp-dir", str(temp_dir)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    serving = RayServing(process, temp_dir, styles, port, log_path, [])
    try:
        _wait_until_serving(serving)
        serving.processes = psutil.Process(process.pid).children(recursive=True)
        yield serving
    finally:
        import ray

        ray.shutdown()  # this test process's driver only
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(ray_serving: RayServing):
    """This test process attached to the Ray cluster `covergen-ray` started (namespace serve)."""
    import ray

    ready = json.loads((ray_serving.temp_dir / READY_FILE).read_text(encoding="utf-8"))
    ray.init(address="127.0.0.1:" + ready["gcs_address"].rsplit(":", 1)[1],  # loopback: the host address may refuse
             namespace="serve", logging_level="WARNING", log_to_driver=False)
    return ray


def _cover(
    stub: pb_grpc.CoverServiceStub, region: str, title: str, **fields: object
) -> pb.GenerateCoverResponse:
    return stub.GenerateCover(pb.GenerateCoverRequest(region=region, title=title, **fields), timeout=240)


def _pixels(image: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))


def _stack_id(reply: pb.GenerateCoverResponse) -> str:
    from covergen.painters import StackAdapter, stack_id

    return stack_id([StackAdapter(a.name, Path(), a.version, a.weight) for a in reply.adapters])


def _painter_handle(cluster):
    from ray import serve

    from covergen.rayserve.app import APP_NAME, PAINTER

    return serve.get_deployment_handle(PAINTER, app_name=APP_NAME)


def _counters(cluster) -> dict[str, int]:
    from ray import serve

    from covergen.rayserve.app import APP_NAME, INGRESS

    return serve.get_deployment_handle(INGRESS, app_name=APP_NAME).counters.remote().result(timeout_s=60)


def test_two_painters_serve_four_regions_with_health_and_reflection(ray_serving: RayServing, cluster) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    from ray import serve

    from covergen.rayserve.app import APP_NAME, PAINTER

    deployment = serve.status().applications[APP_NAME].deployments[PAINTER]
    assert deployment.replica_states.get("RUNNING") == 2
    stub = ray_serving.stub()
    replies = {region: _cover(stub, region, "ray 四地封面") for region in REGIONS}
    for region, reply in replies.items():
        assert reply.served_by.startswith(f"{APP_NAME}#{PAINTER}#"), (region, reply.served_by)
        assert not reply.cache_hit and reply.image.startswith(b"\x89PNG")
    assert len({r.adapters[0].name for r in replies.values()}) == 4
    names = [p.name() for p in ray_serving.processes]
    assert "raylet" in names and "gcs_server" in names, names  # the cluster is this command's own

    channel = grpc.insecure_channel(f"127.0.0.1:{ray_serving.port}")
    listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30
    )
    services = {s.name for reply in listing for s in reply.list_services_response.service}
    assert {"covergen.v1.CoverService", "grpc.health.v1.Health"} <= services


def _reflected_cover(target: str, region: str, title: str) -> Any:
    """GenerateCover with no generated code: message types from the server's reflection only."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(target)
    ask = reflection_pb2.ServerReflectionRequest(file_containing_symbol="covergen.v1.CoverService")
    (reply,) = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([ask]), timeout=30)
    files = reply.file_descriptor_response.file_descriptor_proto
    pending = [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in files]
    pool, added = descriptor_pool.DescriptorPool(), set()
    while pending:  # dependencies first, whatever order they came in
        ready = [f for f in pending if set(f.dependency) <= added]
        assert ready, f"reflection left dependencies unresolved: {[f.name for f in pending]}"
        for f in ready:
            pool.Add(f)
            added.add(f.name)
        pending = [f for f in pending if f.name not in added]
    message = {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"covergen.v1.{name}"))
        for name in ("GenerateCoverRequest", "GenerateCoverResponse")
    }
    call = channel.unary_unary(
        "/covergen.v1.CoverService/GenerateCover",
        request_serializer=message["GenerateCoverRequest"].SerializeToString,
        response_deserializer=message["GenerateCoverResponse"].FromString,
    )
    return call(message["GenerateCoverRequest"](region=region, title=title), timeout=240)


def test_a_reflection_only_client_gets_covers_and_served_by(ray_serving: RayServing) -> None:
    painted = _reflected_cover(f"127.0.0.1:{ray_serving.port}", "杭州", "ray reflection only")
    hit = _reflected_cover(f"127.0.0.1:{ray_serving.port}", "杭州", "ray reflection only")
    assert painted.image.startswith(b"\x89PNG") and painted.served_by.startswith("covergen#Painter#")
    assert (hit.served_by, hit.image) == ("cache", painted.image)


def test_warm_requests_land_on_the_replica_holding_their_stack(ray_serving: RayServing) -> None:
    stub = ray_serving.stub()
    holder = {region: _cover(stub, region, "ray affinity cold").served_by for region in REGIONS}
    warm = [(region, _cover(stub, region, f"ray affinity warm {i}")) for i in range(5) for region in REGIONS]
    assert not any(reply.cache_hit for _, reply in warm)
    on_holder = sum(reply.served_by == holder[region] for region, reply in warm)
    print(f"affinity: {on_holder}/{len(warm)} warm requests on the replica holding their stack")
    assert on_holder / len(warm) >= 0.9, [(region, r.served_by, holder[region]) for region, r in warm]


async def test_pixels_match_the_single_process_server(ray_serving: RayServing, service) -> None:
    from covergen.requests import CoverRequest

    request = {"region": "成都", "title": "ray 像素对照", "themes": ["rain"]}
    remote = _cover(ray_serving.stub(), **request)  # type: ignore[arg-type]
    local = await service.maker.without_cache().make(
        CoverRequest(region="成都", title="ray 像素对照", themes=("rain",))
    )
    assert remote.served_by != "local" and not remote.cache_hit
    assert (remote.prompt, remote.seed) == (local.prompt, local.seed)
    assert [(a.name, a.version) for a in remote.adapters] == [(a.name, a.version) for a in local.adapters]
    diff = np.abs(_pixels(remote.image).astype(np.int16) - _pixels(local.image).astype(np.int16)).max()
    assert diff <= MAX_PIXEL_DIFF


def test_a_cache_hit_does_not_reach_a_painter(ray_serving: RayServing, cluster) -> None:
    stub = ray_serving.stub()
    painted = _cover(stub, "北京", "ray cache hit")
    before = _counters(cluster)
    hit = _cover(stub, "北京", "ray cache hit")
    assert (hit.cache_hit, hit.served_by, hit.image) == (True, "cache", painted.image)
    assert _counters(cluster) == before


async def test_an_adapter_that_cannot_load_answers_like_the_single_process_server(
    ray_serving: RayServing,
    service,
) -> None:
    from covergen.clip_tokens import clip_token_counter
    from covergen.covers import CoverMaker
    from covergen.errors import AdapterRejected
    from covergen.planning import load_styles
    from covergen.requests import CoverRequest

    count_tokens = clip_token_counter(service.base.pipeline.tokenizer)
    library, resolver, prompts = load_styles(ray_serving.styles_dir, count_tokens)
    local = CoverMaker(
        library=library,
        resolver=resolver,
        prompts=prompts,
        registry=service.registry,
        engine=service.engine,
        cache=None,
        limits=service.maker.limits,
        base_model_id=service.maker.base_model_id,
        scheduler_name=service.maker.scheduler_name,
    )
    with pytest.raises(AdapterRejected) as local_error:
        await local.make(CoverRequest(region="杭州", title="ray broken", themes=("broken",)))
    with pytest.raises(grpc.RpcError) as remote_error:
        _cover(ray_serving.stub(), "杭州", "ray broken", themes=["broken"])
    assert remote_error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert remote_error.value.details() == str(local_error.value)
    assert _cover(ray_serving.stub(), "杭州", "ray after broken").image  # and the painters keep serving


def test_a_painter_killed_mid_request_loses_no_request(ray_serving: RayServing, cluster) -> None:
    from concurrent.futures import ThreadPoolExecutor

    stub = ray_serving.stub()
    warm = _cover(stub, "广州", "ray kill warm-up")
    before = _counters(cluster)
    handle = _painter_handle(cluster).options(multiplexed_model_id=_stack_id(warm))
    with ThreadPoolExecutor(1) as pool:
        # 100 steps at 128 px: seconds of painting, so the kill lands mid-request
        slow = pool.submit(_cover, stub, "广州", "ray kill 慢", steps=100, width=128, height=128)
        painting = handle.wait_until_painting.remote().result(timeout_s=240)
        os.kill(painting.pid, signal.SIGKILL)
        reply = slow.result(timeout=300)
    assert reply.image and not reply.cache_hit
    assert reply.served_by != painting.replica, "the retry must run on another replica"
    after = _counters(cluster)
    assert after["retried"] == before["retried"] + 1
    assert (
        not psutil.pid_exists(painting.pid) or psutil.Process(painting.pid).status() == psutil.STATUS_ZOMBIE
    )


def test_sigterm_stops_every_process_it_started(ray_serving: RayServing, cluster) -> None:
    cluster.shutdown()  # detach this test's driver first
    # now, so a replica Serve restarted after the kill drill is counted too
    started = psutil.Process(ray_serving.process.pid).children(recursive=True)
    assert {"raylet", "gcs_server"} <= {p.name() for p in started}, "the cluster is not this command's child"
    ray_serving.process.send_signal(signal.SIGTERM)
    assert ray_serving.process.wait(120) == 0, ray_serving.log_path.read_text()[-4000:]
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [(p.pid, p.name()) for p in alive]
    marker = str(ray_serving.temp_dir)
    leftovers = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(marker in part for part in p.info["cmdline"] or ()):
            leftovers.append(p)
    assert not leftovers, [(p.pid, p.info["cmdline"]) for p in leftovers]
