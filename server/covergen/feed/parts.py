"""The feed half of the composition root: `build_feed` wires the feed objects from settings.

Called by `server.build_service` after the CoverMaker exists; `FeedParts.start` renders the
standing covers and starts the prepare consumer, `after_reload` refreshes both health and
standing covers, `close` stops everything it started.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from covergen.covers import CoverMaker
from covergen.engine.batcher import Engine
from covergen.feed.arms import ArmAssigner, Experiment
from covergen.feed.budget import FeedCovers
from covergen.feed.consumer import PrepareConsumer
from covergen.feed.fallbacks import FallbackChooser
from covergen.feed.health import StyleHealth
from covergen.feed.prepare import CoverPreparer, PrepareLimits
from covergen.feed.standing import StandingCovers
from covergen.feed.stream import PrepareStream
from covergen.metrics import Metrics
from covergen.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class FeedParts:
    settings: Settings
    health: StyleHealth
    standing: StandingCovers
    covers: FeedCovers
    preparer: CoverPreparer
    stream: PrepareStream | None
    consumer: PrepareConsumer | None

    async def start(self) -> None:
        if self.settings.standing_covers:
            await self.standing.refresh()
        if self.consumer is not None:
            self.consumer.start()

    async def after_reload(self) -> None:
        """Styles were reloaded: forget unusable records, repaint standing covers."""
        self.health.reset()
        if self.settings.standing_covers:
            await self.standing.refresh()

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        await self.covers.background.close()
        if self.stream is not None:
            await self.stream.close()


def build_feed(
    settings: Settings, maker: CoverMaker, engine: Engine | None, metrics: Metrics, redis_url: str | None
) -> FeedParts:
    health = StyleHealth(metrics)
    standing = StandingCovers(maker, health)
    chooser = FallbackChooser(maker, maker.cache, standing)
    experiment = None
    if settings.experiment_name:
        experiment = Experiment(settings.experiment_name, settings.experiment_generic_share)
        log.info(
            "A/B experiment %s: %.0f%% of units on the generic arm",
            experiment.name, experiment.generic_share * 100,
        )  # fmt: skip
    covers = FeedCovers(
        maker=maker,
        chooser=chooser,
        health=health,
        arms=ArmAssigner(experiment, settings.max_unit_id_bytes),
        metrics=metrics,
        max_budget_ms=settings.max_budget_ms,
    )
    stream = None
    if redis_url is not None:
        stream = PrepareStream(
            redis_url,
            visibility_timeout_s=settings.prepare_visibility_timeout_s,
            max_attempts=settings.prepare_max_attempts,
            connect_timeout_s=max(settings.redis_timeout_s, 0.5),
        )
    limits = PrepareLimits(
        max_titles=settings.max_prepare_titles,
        max_regions=settings.max_prepare_regions,
        max_variants=settings.max_prepare_variants,
    )
    consumer = None
    if stream is not None and settings.prepare_consumer:
        consumer = PrepareConsumer(
            maker, stream, engine, metrics, concurrency=settings.prepare_concurrency or settings.max_batch
        )
    return FeedParts(settings, health, standing, covers, CoverPreparer(chooser, stream, limits, metrics), stream, consumer)
