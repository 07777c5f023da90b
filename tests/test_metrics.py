"""Metrics: a registry per instance, values recorded, scraped over HTTP, checked by promtool."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator

import pytest

from covergen.errors import ConfigError
from covergen.metrics import Metrics

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package 'prometheus'; .ci/run installs it)",
)


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    instance = Metrics(base_model="tiny-sd", device="cpu", queue_capacity=16)
    yield instance
    instance.stop_http_server()


def record_some_traffic(metrics: Metrics) -> None:
    metrics.observe_request("GenerateCover", "OK", "jiangnan", 0.42)
    metrics.observe_request("GenerateCover", "OK", "jiangnan", 1.3)
    metrics.observe_request("GenerateCover", "NOT_FOUND", "atlantis", 0.002)
    metrics.observe_queue_wait(0.05)
    metrics.observe_generation(1.1, batch_size=2)
    metrics.observe_cache("hit")
    metrics.observe_cache("miss")
    metrics.count_cache_error()
    metrics.observe_adapter_load(0.12)
    metrics.count_adapter_eviction()
    metrics.set_adapters_resident(3)
    metrics.set_queue_depth(5)
    metrics.count_cancelled("deadline")


def test_two_instances_do_not_share_a_registry() -> None:
    first, second = Metrics(), Metrics()
    first.observe_cache("hit")
    assert first.registry.get_sample_value("covergen_cache_requests_total", {"outcome": "hit"})
    assert second.registry.get_sample_value("covergen_cache_requests_total", {"outcome": "hit"}) == 0


def test_recorded_values_are_exposed(metrics: Metrics) -> None:
    record_some_traffic(metrics)
    value = metrics.registry.get_sample_value
    labels = {"rpc": "GenerateCover", "code": "OK", "style": "jiangnan"}
    assert value("covergen_requests_total", labels) == 2
    assert value("covergen_request_duration_seconds_count", {"rpc": "GenerateCover"}) == 3
    assert value("covergen_request_duration_seconds_bucket",
                 {"rpc": "GenerateCover", "le": "0.005"}) == 1  # fmt: skip
    assert value("covergen_batch_size_sum") == 2
    assert value("covergen_adapter_loads_total") == 1
    assert value("covergen_adapters_resident") == 3
    assert value("covergen_queue_depth") == 5
    assert value("covergen_queue_capacity") == 16
    assert value("covergen_cancelled_total", {"reason": "deadline"}) == 1
    assert value("covergen_cancelled_total", {"reason": "cancelled"}) == 0
    assert value("covergen_build_info",
                 {"version": "0.1.0", "base_model": "tiny-sd", "device": "cpu"}) == 1  # fmt: skip
    rss = value("covergen_device_memory_bytes", {"device": "cpu", "kind": "rss"})
    assert rss is not None and rss > 1e6


def test_inflight_gauge_tracks_the_block(metrics: Metrics) -> None:
    with metrics.track_inflight():
        assert metrics.registry.get_sample_value("covergen_inflight_requests") == 1
    assert metrics.registry.get_sample_value("covergen_inflight_requests") == 0


def test_unknown_cancel_reason_is_refused(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="'timeout'"):
        metrics.count_cancelled("timeout")  # type: ignore[arg-type]


def test_http_server_serves_the_registry_and_stops(metrics: Metrics) -> None:
    record_some_traffic(metrics)
    port = metrics.start_http_server(0, addr="127.0.0.1")
    assert port > 0
    with pytest.raises(ConfigError, match="already listening"):
        metrics.start_http_server(0, addr="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert 'covergen_requests_total{code="OK",rpc="GenerateCover",style="jiangnan"} 2.0' in body
    metrics.stop_http_server()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1)


def test_port_in_use_names_the_setting(metrics: Metrics) -> None:
    port = metrics.start_http_server(0, addr="127.0.0.1")
    other = Metrics()
    with pytest.raises(ConfigError, match="COVERGEN_METRICS_PORT"):
        other.start_http_server(port, addr="127.0.0.1")


@needs_promtool
def test_scrape_passes_promtool_check_metrics(metrics: Metrics) -> None:
    record_some_traffic(metrics)
    port = metrics.start_http_server(0, addr="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        scrape = response.read()
    result = subprocess.run(["promtool", "check", "metrics"], input=scrape, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
