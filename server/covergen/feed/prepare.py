"""CoverPreparer: PrepareCovers. Resolve the regions, group those sharing a cover, skip covers
already cached, queue the rest on the prepare stream.

Two regions share a cover when their plans give the same cache key: the same adapter stack
(versions and weights) and the same prompt, seed and settings. The seed is derived from the
stack, not the tag, so 杭州 and 苏州 (both the 长三角 stack) with one title need one cover.
Keys are computed without loading adapters (versions from the registry or the file's hash), so
a prepare for every region costs planning time only; painting happens on the replicas that take
the jobs from the stream.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from covergen.errors import InvalidRequest
from covergen.feed.fallbacks import FallbackChooser
from covergen.feed.standing import DEFAULT_STYLE
from covergen.feed.stream import PrepareJob, PrepareStream, QueueUnavailable
from covergen.metrics import Metrics
from covergen.regions import RegionResolver
from covergen.requests import CoverRequest


@dataclass(frozen=True)
class PrepareLimits:
    """How much one PrepareCovers call may ask for (COVERGEN_MAX_PREPARE_*)."""

    max_titles: int = 50
    max_regions: int = 1000
    max_variants: int = 8


@dataclass(frozen=True)
class PrepareRequest:
    titles: tuple[str, ...]
    regions: tuple[str, ...] = ()  # empty: every region of the table and the default
    variants: int = 0  # 0 means 1
    width: int = 0
    height: int = 0
    steps: int = 0
    format: str = "png"
    count_only: bool = False


@dataclass
class PrepareReport:
    regions: int = 0
    covers: int = 0
    cached: int = 0
    queued: int = 0
    in_progress: int = 0
    failed: int = 0


def every_region_tag(resolver: RegionResolver) -> list[str]:
    """One tag per entry of the regions table (its code, or a macro-region's name), and the default."""
    return [entry.code or entry.name for entry in resolver.entries()] + [DEFAULT_STYLE]


def check_limits(request: PrepareRequest, limits: PrepareLimits) -> None:
    if not request.titles:
        raise InvalidRequest("title is empty; send the article title (or titles for several)")
    if len(request.titles) > limits.max_titles:
        raise InvalidRequest(
            f"title and titles hold {len(request.titles)} titles; the limit is {limits.max_titles} per call "
            "(COVERGEN_MAX_PREPARE_TITLES); split them over several calls"
        )
    if len(request.regions) > limits.max_regions:
        raise InvalidRequest(
            f"regions holds {len(request.regions)} tags; the limit is {limits.max_regions} "
            "(COVERGEN_MAX_PREPARE_REGIONS); send no regions to prepare every region"
        )
    if not 0 <= request.variants <= limits.max_variants:
        raise InvalidRequest(
            f"variants {request.variants} is above the limit of {limits.max_variants} "
            "(COVERGEN_MAX_PREPARE_VARIANTS)"
        )


class CoverPreparer:
    """The object the servicer calls for PrepareCovers."""

    def __init__(
        self,
        chooser: FallbackChooser,
        stream: PrepareStream | None,
        limits: PrepareLimits,
        metrics: Metrics,
    ) -> None:
        self.chooser = chooser  # plans, and adapter versions without loading
        self.stream = stream
        self.limits = limits
        self.metrics = metrics

    async def prepare(self, request: PrepareRequest) -> PrepareReport:
        check_limits(request, self.limits)
        if self.stream is None:
            raise QueueUnavailable(
                "PrepareCovers needs Redis, and this server runs with COVERGEN_CACHE_ENABLED=false; "
                "enable the cache (and COVERGEN_REDIS_URL) to prepare covers"
            )
        report = PrepareReport()
        jobs = await self._group(request, report)
        keys = list(jobs)
        cached = await self.stream.cached(keys)
        todo = [jobs[key] for key, hit in zip(keys, cached, strict=True) if not hit]
        report.covers, report.cached = len(keys), len(keys) - len(todo)
        if request.count_only:
            report.in_progress, report.failed = await self.stream.progress([job.key for job in todo])
        else:
            report.queued, report.in_progress = await self.stream.enqueue(todo)
            self.metrics.count_prepare("queued", report.queued)
        return report

    async def _group(self, request: PrepareRequest, report: PrepareReport) -> dict[str, PrepareJob]:
        """Cache key -> the job that paints it, for every (title, variant, region)."""
        maker = self.chooser.maker
        tags = list(request.regions) or every_region_tag(maker.resolver)
        jobs: dict[str, PrepareJob] = {}
        for title in request.titles:
            for variant in range(max(1, request.variants)):
                for tag in tags:
                    cover = CoverRequest(
                        region=tag, title=title, variant=variant, width=request.width,
                        height=request.height, steps=request.steps, format=request.format,
                    )  # fmt: skip
                    plan = maker.plan(cover)  # InvalidRequest names a bad region or title
                    key = self.chooser.key_of(plan)
                    report.regions += 1
                    if key not in jobs:
                        jobs[key] = PrepareJob(
                            key=key, title=title, region=tag, variant=variant, width=request.width,
                            height=request.height, steps=request.steps, format=request.format,
                        )  # fmt: skip
            await asyncio.sleep(0)  # let live calls run between titles
        return jobs
