"""ServePainter: the ingress's `Painter`, painting on the Ray Serve painter deployment.

Each job goes to `painter.paint` with the job's canonical stack id as Serve's multiplexed model
id, so it lands on a replica that holds the stack's adapters. Painting is idempotent (same job,
same pixels), so a replica that dies mid-request is retried once on another replica. Errors the
painter raised on purpose come back as the domain's own exceptions, so the edge maps them to
the same status and message as the single-process server.

Adapter versions (part of the cache key) are read from the adapter files here, without loading
any weights: the ingress needs no model and no GPU.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from covergen.adapters.files import file_version
from covergen.adapters.registry import AdapterSource
from covergen.errors import CovergenError, Draining, Overloaded
from covergen.painters import Painting, PaintJob

log = logging.getLogger(__name__)


class PainterUnavailable(Draining):
    """No painter replica could take the job (died twice, or none is running): UNAVAILABLE."""


class FileVersions:
    """`file_version` of adapter files, re-read only when a file's size or mtime changes."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[int, int, str]] = {}

    def of(self, path: Path) -> str:
        try:
            stat = path.stat()
        except OSError:
            return ""  # the painter's load reports the missing file, as the local server does
        known = self._known.get(path)
        if known is not None and known[:2] == (stat.st_mtime_ns, stat.st_size):
            return known[2]
        version = file_version(path)
        self._known[path] = (stat.st_mtime_ns, stat.st_size, version)
        return version


class ServePainter:
    """Paints on a painter deployment handle; counts what it sends (cache hits send nothing)."""

    def __init__(self, handle: Any, retries: int = 1) -> None:
        self.handle = handle  # ray.serve.handle.DeploymentHandle of the painter deployment
        self.retries = retries
        self.sent = 0  # paint calls sent to painter replicas, retries included
        self.retried = 0  # of those, retries after a replica died
        self._versions = FileVersions()

    async def versions(self, sources: Sequence[AdapterSource]) -> dict[str, str]:
        return {source.name: self._versions.of(source.path) for source in sources}

    async def paint(self, job: PaintJob) -> Painting:
        wire = dataclasses.replace(job, deadline=None)  # monotonic clocks differ between nodes
        routed = self.handle.options(multiplexed_model_id=job.stack_id)
        attempt = 0
        while True:
            budget = None if job.deadline is None else job.deadline - time.monotonic()
            self.sent += 1
            try:
                painting: Painting = await routed.paint.remote(wire, budget)
                return painting
            except RayTaskError as exc:
                raise _domain_error(exc) from None
            except RayActorError as exc:
                if attempt >= self.retries:
                    raise PainterUnavailable(
                        f"painter replicas died {attempt + 1} times painting this cover; retry, and check "
                        "the painters' logs (out of memory?)"
                    ) from exc
                attempt += 1
                self.retried += 1
                log.warning("painter replica died mid-request (%s); retrying on another replica", exc)
            except BackPressureError as exc:
                raise Overloaded(
                    "every painter replica is at max_ongoing_requests; retry with backoff, or raise "
                    "max_replicas / max_ongoing_requests in the serve config"
                ) from exc
            except DeploymentUnavailableError as exc:
                raise PainterUnavailable(f"the painter deployment is not running: {exc}") from exc


def _domain_error(exc: RayTaskError) -> BaseException:
    """The painter's own exception for one it raised on purpose; else the Ray error (INTERNAL)."""
    cause = exc.cause
    return cause if isinstance(cause, CovergenError) else exc
