"""Prometheus metrics for covergen: one `Metrics` object owning its own registry.

Nothing registers on prometheus_client's global registry, so tests (and two servers in one
process) can each build a `Metrics`. The composition root builds one, hands it to the servicer,
the scheduler, the adapter registry and the result cache, and calls `start_http_server` to
serve `/metrics` (default port 9464).

Exposed series (every name starts with `covergen_`):

    requests_total{rpc,code,style}            counter, one per finished RPC
    request_duration_seconds{rpc}             histogram, RPC wall time
    queue_wait_seconds                        histogram, admission to start of generation
    generation_seconds                        histogram, one pipeline call (a whole batch)
    batch_size                                histogram, requests per pipeline call
    cache_requests_total{outcome}             counter, hit / miss / coalesced / bypass
    cache_errors_total                        counter, failed Redis calls
    adapter_loads_total, adapter_evictions_total, adapter_load_seconds, adapters_resident
    inflight_requests, queue_depth, queue_capacity   gauges
    cancelled_total{reason}                   counter, reason = deadline | cancelled
    tone_guarded_total{tone}                  counter, covers served in a guarded tone (restrained)
    device_memory_bytes{device,kind}          gauge, CUDA allocated/reserved, or CPU rss
    feed (issue 16):
    arm_requests_total{arm}                   counter, GenerateCover answers by A/B arm served
    fallbacks_total{reason,arm}               counter, fallback covers by reason
    adapter_unavailable_total{style}          counter, requests that met an unusable style
    prepare_jobs_total{outcome}               counter, queued / painted / cached / retried /
                                              dead_letter / reclaimed
    prepare_stream_lag, prepare_pending       gauges, jobs not yet taken / taken, not acknowledged
    prepare_oldest_job_age_seconds            gauge, age of the oldest job still on the stream
    prepare_dead_letters                      gauge, entries on the dead-letter stream
    hot covers (issue 12, hot_covers.py):
    hot_cache_requests_total{outcome}         counter, in-process lookups: hit / miss
    hot_cache_evictions_total                 counter, covers pushed out by the byte bound
    hot_cache_entries, hot_cache_bytes        gauges
    build_info{version,base_model,device}     always 1
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from covergen import __version__
from covergen.errors import ConfigError

# 5 ms .. 60 s: loopback cache hits at the bottom, cold adapter loads plus queueing at the top.
LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip
ADAPTER_LOAD_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32)

# The sample names a metric family exposes, so labelled families with no children yet count.
_SAMPLE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "unknown": ("",),
}

CacheOutcomeLabel = Literal["hit", "miss", "coalesced", "bypass"]
FALLBACK_REASONS = ("budget", "overloaded", "adapter_unavailable")
PREPARE_OUTCOMES = ("queued", "painted", "cached", "retried", "dead_letter", "reclaimed")
CancelReason = Literal["deadline", "cancelled"]


class _DeviceMemoryCollector(Collector):
    """Reads device memory at scrape time: CUDA allocated/reserved, or this process's RSS."""

    def __init__(self, device: str) -> None:
        self._device = device

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "covergen_device_memory_bytes",
            "Memory held on the generation device: CUDA allocated/reserved, or CPU process rss.",
            labels=["device", "kind"],
        )
        if self._device.startswith("cuda"):
            import torch

            if torch.cuda.is_available():
                for index in range(torch.cuda.device_count()):
                    name = f"cuda:{index}"
                    family.add_metric([name, "allocated"], torch.cuda.memory_allocated(index))
                    family.add_metric([name, "reserved"], torch.cuda.memory_reserved(index))
        else:
            rss = _process_rss_bytes()
            if rss is not None:
                family.add_metric([self._device, "rss"], rss)
        yield family


def _process_rss_bytes() -> int | None:
    """Resident set size of this process from /proc (Linux); None elsewhere."""
    try:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


class Metrics:
    """Every covergen metric, on a registry of its own.

    Args:
        base_model: the base model's id, exported in `covergen_build_info`.
        device: "cpu", "cuda" or "cuda:N"; picks what `covergen_device_memory_bytes` reports.
        queue_capacity: COVERGEN_MAX_QUEUE, exported so alerts can compare queue depth with it.
        version: the covergen version, exported in `covergen_build_info`.
    """

    def __init__(
        self,
        *,
        base_model: str = "",
        device: str = "cpu",
        queue_capacity: int = 0,
        version: str = __version__,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(
            "covergen_requests", "Finished RPCs by status code and style.",
            ["rpc", "code", "style"], registry=r,
        )  # fmt: skip
        self._request_duration = Histogram(
            "covergen_request_duration_seconds", "RPC wall time from arrival to reply.",
            ["rpc"], buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self._queue_wait = Histogram(
            "covergen_queue_wait_seconds", "Time from admission to the start of generation.",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self._generation = Histogram(
            "covergen_generation_seconds", "Duration of one pipeline call (a whole batch).",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self._batch_size = Histogram(
            "covergen_batch_size", "Requests served by one pipeline call.",
            buckets=BATCH_SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self._cache_requests = Counter(
            "covergen_cache_requests", "Result-cache lookups by outcome.",
            ["outcome"], registry=r,
        )  # fmt: skip
        self._cache_errors = Counter(
            "covergen_cache_errors", "Redis calls that failed (timeouts, refused connections).",
            registry=r,
        )  # fmt: skip
        self._adapter_loads = Counter(
            "covergen_adapter_loads", "LoRA adapters loaded onto the pipeline.", registry=r
        )
        self._adapter_evictions = Counter(
            "covergen_adapter_evictions", "LoRA adapters evicted to stay under the limit.",
            registry=r,
        )  # fmt: skip
        self._adapter_load_seconds = Histogram(
            "covergen_adapter_load_seconds", "Time to load one LoRA adapter.",
            buckets=ADAPTER_LOAD_BUCKETS_S, registry=r,
        )  # fmt: skip
        self._adapters_resident = Gauge(
            "covergen_adapters_resident", "LoRA adapters currently loaded.", registry=r
        )
        self._inflight = Gauge("covergen_inflight_requests", "RPCs being handled right now.", registry=r)
        self._queue_depth = Gauge(
            "covergen_queue_depth", "Requests admitted and waiting for generation.", registry=r
        )
        self._queue_capacity = Gauge(
            "covergen_queue_capacity", "Admission queue limit (COVERGEN_MAX_QUEUE).", registry=r
        )
        self._queue_capacity.set(queue_capacity)
        self._cancelled = Counter(
            "covergen_cancelled", "Requests abandoned before completion, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self._tone_guarded = Counter(
            "covergen_tone_guarded", "GenerateCover replies painted in a guarded tone (sensitive titles).",
            ["tone"], registry=r,
        )  # fmt: skip
        self._tone_guarded.labels(tone="restrained")
        # Children for every known label value, so dashboards show zeros instead of no data.
        for outcome in ("hit", "miss", "coalesced", "bypass"):
            self._cache_requests.labels(outcome=outcome)
        for reason in ("deadline", "cancelled"):
            self._cancelled.labels(reason=reason)
        self._init_feed_metrics(r)
        self._init_hot_metrics(r)
        build = Info("covergen_build", "Version, base model and device of this server.",
                     registry=r)  # fmt: skip
        build.info({"version": version, "base_model": base_model, "device": device})
        r.register(_DeviceMemoryCollector(device))
        self._http_server: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    # -- requests ---------------------------------------------------------------------------

    def observe_request(self, rpc: str, code: str, style: str, seconds: float) -> None:
        """Count one finished RPC (`code` is the gRPC status name, e.g. "OK") and its time."""
        self._requests.labels(rpc=rpc, code=code, style=style).inc()
        self._request_duration.labels(rpc=rpc).observe(seconds)

    @contextmanager
    def track_inflight(self) -> Iterator[None]:
        """Count an RPC as in flight for the duration of the `with` block."""
        with self._inflight.track_inprogress():
            yield

    def count_cancelled(self, reason: CancelReason) -> None:
        """Count a request abandoned because its deadline passed or its client went away."""
        if reason not in ("deadline", "cancelled"):
            raise ValueError(f"cancel reason {reason!r} is not 'deadline' or 'cancelled'")
        self._cancelled.labels(reason=reason).inc()

    # -- queue and generation ---------------------------------------------------------------

    def count_tone(self, tone: str) -> None:
        """Count one reply whose title tripped the tone guard (`tone` is e.g. "restrained")."""
        self._tone_guarded.labels(tone=tone).inc()

    def set_queue_depth(self, depth: int) -> None:
        self._queue_depth.set(depth)

    def observe_queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def observe_generation(self, seconds: float, batch_size: int = 1) -> None:
        """Record one pipeline call: its duration and how many requests it served."""
        self._generation.observe(seconds)
        self._batch_size.observe(batch_size)

    # -- result cache -----------------------------------------------------------------------

    def observe_cache(self, outcome: CacheOutcomeLabel) -> None:
        """Count one result-cache lookup by outcome: hit, miss, coalesced or bypass."""
        self._cache_requests.labels(outcome=outcome).inc()

    def count_cache_error(self) -> None:
        self._cache_errors.inc()

    # -- adapters ---------------------------------------------------------------------------

    def observe_adapter_load(self, seconds: float) -> None:
        self._adapter_loads.inc()
        self._adapter_load_seconds.observe(seconds)

    def count_adapter_eviction(self) -> None:
        self._adapter_evictions.inc()

    def set_adapters_resident(self, count: int) -> None:
        self._adapters_resident.set(count)

    # -- feed-time serving (issue 16) ---------------------------------------------------------

    # -- hot covers (issue 12) ------------------------------------------------------------------

    def _init_hot_metrics(self, r: CollectorRegistry) -> None:
        self._hot_requests = Counter(
            "covergen_hot_cache_requests", "In-process hot-cover lookups by outcome.", ["outcome"], registry=r
        )
        self._hot_evictions = Counter(
            "covergen_hot_cache_evictions", "Hot covers pushed out by the byte bound.", registry=r
        )
        self._hot_entries = Gauge("covergen_hot_cache_entries", "Covers held in the hot cache.", registry=r)
        self._hot_bytes = Gauge("covergen_hot_cache_bytes", "Bytes held in the hot cache.", registry=r)
        self._hot_hit = self._hot_requests.labels(outcome="hit")  # bound once: the hit path is hot
        self._hot_miss = self._hot_requests.labels(outcome="miss")

    def observe_hot_lookup(self, hit: bool) -> None:
        (self._hot_hit if hit else self._hot_miss).inc()

    def count_hot_evictions(self, count: int) -> None:
        self._hot_evictions.inc(count)

    def set_hot_size(self, entries: int, nbytes: int) -> None:
        self._hot_entries.set(entries)
        self._hot_bytes.set(nbytes)

    def _init_feed_metrics(self, r: CollectorRegistry) -> None:
        self._arm_requests = Counter(
            "covergen_arm_requests", "GenerateCover answers by the A/B arm served.", ["arm"], registry=r
        )
        self._fallbacks = Counter(
            "covergen_fallbacks", "Fallback covers served instead of the region's, by reason.",
            ["reason", "arm"], registry=r,
        )  # fmt: skip
        self._adapter_unavailable = Counter(
            "covergen_adapter_unavailable", "Requests that needed a style whose adapter cannot be used.",
            ["style"], registry=r,
        )  # fmt: skip
        self._prepare_jobs = Counter(
            "covergen_prepare_jobs", "Prepare jobs by outcome.", ["outcome"], registry=r
        )
        self._prepare_lag = Gauge(
            "covergen_prepare_stream_lag", "Prepare jobs on the stream not yet taken by a replica.", registry=r
        )
        self._prepare_pending = Gauge(
            "covergen_prepare_pending", "Prepare jobs taken by a replica and not yet acknowledged.", registry=r
        )
        self._prepare_oldest = Gauge(
            "covergen_prepare_oldest_job_age_seconds",
            "Age of the oldest prepare job still on the stream (0 when empty).", registry=r,
        )  # fmt: skip
        self._dead_letters = Gauge(
            "covergen_prepare_dead_letters", "Entries on the prepare dead-letter stream.", registry=r
        )
        for arm in ("regional", "generic"):
            self._arm_requests.labels(arm=arm)
            for reason in FALLBACK_REASONS:
                self._fallbacks.labels(reason=reason, arm=arm)
        for outcome in PREPARE_OUTCOMES:
            self._prepare_jobs.labels(outcome=outcome)

    def count_arm(self, arm: str) -> None:
        """Count one GenerateCover answer served on `arm` ("regional" or "generic")."""
        self._arm_requests.labels(arm=arm).inc()

    def count_fallback(self, reason: str, arm: str) -> None:
        """Count one fallback cover by reason ("budget", "overloaded", "adapter_unavailable")."""
        if reason not in FALLBACK_REASONS:
            raise ValueError(f"fallback reason {reason!r} is not one of {', '.join(FALLBACK_REASONS)}")
        self._fallbacks.labels(reason=reason, arm=arm).inc()

    def count_adapter_unavailable(self, style: str) -> None:
        self._adapter_unavailable.labels(style=style).inc()

    def count_prepare(self, outcome: str, n: int = 1) -> None:
        """Count prepare jobs by outcome (see PREPARE_OUTCOMES)."""
        if outcome not in PREPARE_OUTCOMES:
            raise ValueError(f"prepare outcome {outcome!r} is not one of {', '.join(PREPARE_OUTCOMES)}")
        self._prepare_jobs.labels(outcome=outcome).inc(n)

    def set_prepare_stream(self, lag: int, pending: int, oldest_age_s: float, dead_letters: int) -> None:
        """The prepare stream's state as last read from Redis."""
        self._prepare_lag.set(lag)
        self._prepare_pending.set(pending)
        self._prepare_oldest.set(oldest_age_s)
        self._dead_letters.set(dead_letters)

    # -- exposition -------------------------------------------------------------------------

    def render(self) -> bytes:
        """The registry in the Prometheus text format, as `/metrics` serves it."""
        return generate_latest(self.registry)

    def metric_names(self) -> set[str]:
        """Every sample name this registry exposes (e.g. `covergen_requests_total`)."""
        names: set[str] = set()
        for family in self.registry.collect():
            names.update(sample.name for sample in family.samples)
            names.update(family.name + suffix for suffix in _SAMPLE_SUFFIXES[family.type])
        return names

    def start_http_server(self, port: int = 9464, addr: str = "0.0.0.0") -> int:
        """Serve `/metrics` from this registry on a daemon thread; return the bound port.

        `port=0` binds a free port. Call `stop_http_server` to release it.
        """
        if self._http_server is not None:
            raise ConfigError(
                f"the metrics server is already listening on port "
                f"{self._http_server.server_port}; call stop_http_server() first"
            )
        try:
            server, thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {addr}:{port} ({exc}); set COVERGEN_METRICS_PORT "
                "to a free port, or 0 to pick one"
            ) from exc
        self._http_server, self._http_thread = server, thread
        return int(server.server_port)

    def stop_http_server(self) -> None:
        """Stop serving `/metrics` and close the socket. Idempotent."""
        if self._http_server is None:
            return
        self._http_server.shutdown()
        self._http_server.server_close()
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)
        self._http_server = self._http_thread = None
