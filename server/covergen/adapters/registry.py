"""Which adapters are resident, with an explicit limit: load, evict, LRU, all idempotent.

An adapter is read from disk on a loader thread (never the engine's thread, so a cold load
never stalls the batch in progress), checked against the base model, moved to the device in the
layout the engine applies directly, and kept until the count or byte budget pushes it out.
Jobs hold references to the `LoraWeights` they use, so evicting an adapter never breaks a batch
that is already queued.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from covergen.adapters.files import LoraWeights, read_lora_file
from covergen.errors import AdapterRejected

log = logging.getLogger(__name__)


class RegistryObserver:
    """What the registry reports; the metrics module implements it. Defaults do nothing."""

    def adapter_loaded(self, name: str, seconds: float) -> None: ...
    def adapter_evicted(self, name: str) -> None: ...
    def resident_count(self, count: int) -> None: ...


@dataclass(frozen=True)
class AdapterSource:
    """Where one style's adapter bytes live."""

    name: str
    path: Path


class AdapterRegistry:
    """Resident adapters by style name, bounded by `max_resident` and `max_bytes`."""

    def __init__(
        self,
        *,
        module_names: dict[str, list[str]],
        check: Callable[[LoraWeights], str | None],
        device: torch.device,
        dtype: torch.dtype,
        max_resident: int = 32,
        max_bytes: int | None = None,
        observer: RegistryObserver | None = None,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self._module_names = module_names
        self._check = check
        self._device = device
        self._dtype = dtype
        self.max_resident = max_resident
        self.max_bytes = max_bytes
        self._observer = observer or RegistryObserver()
        self._on_evict = on_evict
        self._resident: OrderedDict[str, LoraWeights] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, asyncio.Future[LoraWeights]] = {}
        # last good versions of styles whose new file was rejected by a reload; served instead
        # of the file on disk until a reload accepts a new version
        self._retained: dict[str, LoraWeights] = {}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="covergen-adapter-loader")

    # --- queries -------------------------------------------------------------------------------

    def resident_names(self) -> list[str]:
        with self._lock:
            return list(self._resident)

    def get_resident(self, name: str) -> LoraWeights | None:
        with self._lock:
            weights = self._resident.get(name)
            if weights is not None:
                self._resident.move_to_end(name)
            return weights

    @property
    def resident_bytes(self) -> int:
        with self._lock:
            return sum(w.nbytes for w in self._resident.values())

    # --- load and evict ------------------------------------------------------------------------

    def read(self, source: AdapterSource) -> LoraWeights:
        """Read and check one adapter file without making it resident (raises AdapterRejected,
        logged here at WARNING with its reason: every load, reload and warm-up comes through)."""
        try:
            weights = read_lora_file(source.path, source.name, self._module_names)
            problem = self._check(weights)
            if problem is not None:
                raise AdapterRejected(
                    f"adapter '{source.name}' ({source.path.name}) does not fit the base model: {problem}"
                )
        except AdapterRejected as exc:
            log.warning("adapter rejected: style %s, file %s: %s", source.name, source.path, exc)
            raise
        return weights.to(self._device, self._dtype)

    def load(self, source: AdapterSource, *, replace: bool = False) -> LoraWeights:
        """Make `source` resident (synchronously). Idempotent unless `replace` is set."""
        if not replace:
            existing = self.get_resident(source.name)
            if existing is not None:
                return existing
        started = time.perf_counter()
        weights = self.read(source)
        self._observer.adapter_loaded(source.name, time.perf_counter() - started)
        self.install(weights)
        return weights

    def install(self, weights: LoraWeights) -> None:
        """Put already-read weights in the resident set, replacing an older version."""
        with self._lock:
            old = self._resident.pop(weights.name, None)
            self._resident[weights.name] = weights
            evicted = self._enforce_limits()
            count = len(self._resident)
        if old is not None and old.version != weights.version and self._on_evict:
            self._on_evict(old.name)
        for name in evicted:
            self._observer.adapter_evicted(name)
            if self._on_evict:
                self._on_evict(name)
        self._observer.resident_count(count)

    def evict(self, name: str) -> bool:
        """Drop `name` from the resident set. Returns whether it was resident."""
        with self._lock:
            weights = self._resident.pop(name, None)
            count = len(self._resident)
        if weights is None:
            return False
        self._observer.adapter_evicted(name)
        self._observer.resident_count(count)
        if self._on_evict:
            self._on_evict(name)
        return True

    def current(self, name: str) -> LoraWeights | None:
        """The version of `name` being served: resident, else retained after a rejected reload."""
        with self._lock:
            return self._resident.get(name) or self._retained.get(name)

    def retain(self, weights: LoraWeights) -> None:
        """Keep serving `weights` for its style although the file on disk was rejected."""
        with self._lock:
            self._retained[weights.name] = weights

    def release(self, name: str) -> None:
        """A new version of `name` was accepted: stop serving the retained one."""
        with self._lock:
            self._retained.pop(name, None)

    async def acquire(self, sources: Iterable[AdapterSource]) -> dict[str, LoraWeights]:
        """Resident weights for every source, loading missing ones on the loader thread."""
        out: dict[str, LoraWeights] = {}
        for source in sources:
            weights = self.get_resident(source.name)
            if weights is None:
                with self._lock:
                    weights = self._retained.get(source.name)
                if weights is not None:
                    self.install(weights)
            if weights is None:
                weights = await self._load_once(source)
            out[source.name] = weights
        return out

    async def _load_once(self, source: AdapterSource) -> LoraWeights:
        # single-flight per adapter: concurrent requests for a cold adapter share one load
        flight = self._loading.get(source.name)
        if flight is None:
            loop = asyncio.get_running_loop()
            flight = asyncio.ensure_future(loop.run_in_executor(self._loader, self.load, source))
            self._loading[source.name] = flight
            flight.add_done_callback(partial(self._loading_done, source.name))
        return await asyncio.shield(flight)

    def _loading_done(self, name: str, _future: asyncio.Future[LoraWeights]) -> None:
        self._loading.pop(name, None)

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)

    def _enforce_limits(self) -> list[str]:
        evicted: list[str] = []
        while len(self._resident) > self.max_resident or (
            self.max_bytes is not None
            and len(self._resident) > 1
            and sum(w.nbytes for w in self._resident.values()) > self.max_bytes
        ):
            name, _ = self._resident.popitem(last=False)
            evicted.append(name)
            log.info("evicted adapter %s (LRU)", name)
        return evicted
