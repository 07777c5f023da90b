"""Hot covers: a small in-process cache of finished covers in front of Redis, bounded in bytes.

A trending article is read by millions in one region, so the same few covers are asked for
over and over; each read from Redis is a network round trip and a task. `HotCovers` keeps the
most recently read covers in this process:

- keys are the result-cache keys (sha256 of every input that changes the image: base model,
  adapter content versions, prompt, seed, size, ...), so an entry is never stale: a new adapter
  version or base model makes a new key, and the old entry just ages out;
- the bound is in bytes (image bytes plus a per-entry overhead), least recently used out first;
- a cover enters on its *second* read (the first Redis hit after the miss that painted it), so
  a stream of one-off misses does not wash the hot set out.

Hits, misses, evictions, entries and bytes go to the metrics (`covergen_hot_cache_*`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from covergen.cache import CachedCover

ENTRY_OVERHEAD_BYTES = 256  # key, metadata dict and the OrderedDict node, roughly


class HotCoverObserver:
    """What the hot cache reports; the metrics module implements it. Defaults do nothing."""

    def hot_lookup(self, hit: bool) -> None: ...
    def hot_evicted(self, count: int) -> None: ...
    def hot_size(self, entries: int, nbytes: int) -> None: ...


class HotCovers:
    """An LRU of `CachedCover`s by result-cache key, at most `max_bytes` in all. Event-loop only."""

    def __init__(self, max_bytes: int, observer: HotCoverObserver | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}; 0 turns the hot cache off")
        self.max_bytes = max_bytes
        self.observer = observer or HotCoverObserver()
        self._entries: OrderedDict[str, tuple[CachedCover, int]] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedCover | None:
        entry = self._entries.get(key)
        if entry is None:
            self.observer.hot_lookup(False)
            return None
        self._entries.move_to_end(key)
        self.observer.hot_lookup(True)
        return entry[0]

    def put(self, key: str, cover: CachedCover) -> None:
        """Keep `cover` (a cover larger than the whole bound is not kept)."""
        size = len(cover.image) + len(key) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes or key in self._entries:
            return
        self._entries[key] = (cover, size)
        self.nbytes += size
        evicted = 0
        while self.nbytes > self.max_bytes:
            _, (_, freed) = self._entries.popitem(last=False)
            self.nbytes -= freed
            evicted += 1
        if evicted:
            self.observer.hot_evicted(evicted)
        self.observer.hot_size(len(self._entries), self.nbytes)

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0
        self.observer.hot_size(0, 0)
