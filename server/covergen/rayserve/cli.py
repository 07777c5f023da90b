"""`covergen-ray` (`make serve-ray`): covergen on a local Ray cluster, on one gRPC port.

Starts a Ray cluster of its own (`ray.init(num_cpus=2, include_dashboard=False)`), an embedded
Redis unless COVERGEN_REDIS_URL is set, and the Serve application (ingress + painter replicas,
`COVERGEN_RAY_PAINTER_REPLICAS`, default 2). SIGTERM or SIGINT: the ingress drains (health
NOT_SERVING, in-flight calls finish), Serve stops, the Ray cluster it started stops with every
raylet and worker, Redis stops.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from covergen.errors import ConfigError
from covergen.logs import configure_logging
from covergen.settings import Settings

log = logging.getLogger("covergen.rayserve")
# Written under the Ray temp dir once serving: {"grpc_port", "gcs_address", "pid"}, for operators
# and tests that attach to the cluster.
READY_FILE = "covergen-ray.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="covergen-ray", description="Serve covergen on a local Ray Serve cluster (ingress + painters)."
    )
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--ray-temp-dir", type=Path, help="Ray's session folder root (default: a new one)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        settings = Settings()
    except Exception as exc:  # pydantic's message names the bad variable
        print(f"covergen-ray: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    # short: Ray's unix sockets live under it and their paths are limited to 107 bytes
    temp_dir = args.ray_temp_dir or Path(tempfile.mkdtemp(prefix="covergen-ray-", dir="/tmp"))
    try:
        run(settings, args.num_cpus, temp_dir, threading.Event())
    except ConfigError as exc:
        print(f"covergen-ray: {exc}", file=sys.stderr)
        return 2
    return 0


def run(settings: Settings, num_cpus: int, temp_dir: Path, stop: threading.Event) -> None:
    """Start everything, serve until `stop` is set, then drain and stop everything started."""
    import ray
    from ray import serve

    from covergen.rayserve.app import APP_NAME, ingress_deployment, painter_deployment
    from covergen.redis_server import EmbeddedRedis

    started = time.perf_counter()
    redis: EmbeddedRedis | None = None
    if settings.cache_enabled and settings.redis_url is None:
        redis = EmbeddedRedis(
            maxmemory=settings.embedded_redis_maxmemory, data_dir=settings.resolved_cache_dir() / "redis"
        )
        settings = settings.model_copy(update={"redis_url": redis.start()})
    overrides = settings.model_dump(mode="json", exclude_unset=True)
    overrides["redis_url"] = settings.redis_url
    try:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",  # loopback only: the host's other address may be unreachable
            _temp_dir=str(temp_dir),
            logging_level=logging.WARNING,
        )
        ray_s = time.perf_counter() - started
        for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own
            signal.signal(sig, lambda *_: stop.set())
        try:
            serve.start(http_options={"location": "NoServer"})
            app = ingress_deployment(settings).bind(painter_deployment(settings).bind(overrides), overrides)
            ingress = serve.run(app, name=APP_NAME, route_prefix=None)
            port = ingress.port.remote().result()
            ready = {
                "grpc_port": port,
                "gcs_address": ray.get_runtime_context().gcs_address,
                "pid": os.getpid(),
            }
            (temp_dir / READY_FILE).write_text(json.dumps(ready), encoding="utf-8")
            log.info(
                "covergen on Ray Serve: gRPC on :%d, %d painter replicas; ready in %.1f s (Ray cluster %.1f s); "
                "Ray session under %s",
                port,
                settings.ray_painter_replicas,
                time.perf_counter() - started,
                ray_s,
                temp_dir,
            )
            stop.wait()
            log.info("draining")
            ingress.drain.remote().result()
        finally:
            serve.shutdown()
    finally:
        ray.shutdown()
        if redis is not None:
            redis.stop()
        log.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
