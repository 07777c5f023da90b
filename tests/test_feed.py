"""Feed-time serving end to end: budgets and fallbacks, A/B arms, PrepareCovers over a real Redis
Stream, dead letters, bad input. A real grpc.aio server with the tiny random `embedded` model at
4 steps and its own real Redis; one style (minnan_redbrick) has its adapter file removed.

Backlogs are built by holding the engine's worker at a gate (a proxy in front of its Denoiser,
the engine's one dependency), so "the fallback came back before the backlog finished" is an
ordering fact, not a timing assumption about this CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from waiting import eventually

from covergen.feed.arms import ArmAssigner, Experiment, bucket
from covergen.feed.prepare import every_region_tag
from covergen.v1 import cover_pb2 as pb
from covergen.v1 import cover_pb2_grpc as pb_grpc

BROKEN = "minnan_redbrick"  # its adapter file is removed in this module's styles copy
EXPERIMENT = "regional-vs-generic-1"
WAIT_S = 120.0  # generous bound on every condition wait; none is expected to come near it


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.asynccontextmanager
async def held_engine(service: Any) -> AsyncIterator[threading.Event]:
    """Hold the engine's worker (before its next admission or step) until the yielded event is set.

    `Engine.run_on_worker` runs a task on the worker thread before it admits or steps again; this
    task waits at the gate, so nothing is painted while the test builds its backlog.
    """
    gate, entered = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        gate.wait(WAIT_S)

    service.engine.run_on_worker(hold)
    await asyncio.to_thread(entered.wait, WAIT_S)
    try:
        yield gate
    finally:
        gate.set()


@pytest.fixture(scope="module")
def feed_redis() -> Iterator[Any]:
    from redis_fixture import running_redis

    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
async def feed_service(
    styles_dir: Path, feed_redis: Any, make_settings: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Any]:
    from covergen.server import start_service

    styles = tmp_path_factory.mktemp("feed") / "styles"
    shutil.copytree(styles_dir, styles)
    (styles / BROKEN / "adapter.safetensors").unlink()
    records = _Records()
    logging.getLogger("covergen.feed").addHandler(records)
    settings = make_settings(
        base_model="embedded",
        styles_dir=styles,
        redis_url=feed_redis.url,
        default_steps=4,
        max_batch=4,
        max_wait_ms=2.0,
        max_queue=6,
        drain_grace_s=2.0,
        max_budget_ms=5000,
        experiment_name=EXPERIMENT,
        experiment_generic_share=0.5,
        prepare_max_attempts=2,
        prepare_visibility_timeout_s=30.0,
        max_prepare_titles=3,
        max_prepare_regions=400,
        max_prepare_variants=2,
    )
    svc = await start_service(settings)
    svc.warnings = records  # type: ignore[attr-defined]
    yield svc
    await svc.stop(1.0)
    logging.getLogger("covergen.feed").removeHandler(records)


@pytest.fixture(scope="module")
async def feed(feed_service: Any) -> AsyncIterator[pb_grpc.CoverServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{feed_service.port}") as channel:
        yield pb_grpc.CoverServiceStub(channel)


def standing_prompt(service: Any, style: str) -> str:
    standing = service.feed.standing.get(style)
    assert standing is not None, f"no standing cover for {style}"
    return str(standing.prompt)


async def cover(stub: pb_grpc.CoverServiceStub, **fields: Any) -> pb.GenerateCoverResponse:
    return await stub.GenerateCover(pb.GenerateCoverRequest(**fields), timeout=WAIT_S)


# ---- budgets and fallbacks --------------------------------------------------------------------


async def test_budget_answers_with_a_fallback_under_a_backlog_then_the_cover_is_cached(
    feed_service: Any, feed: pb_grpc.CoverServiceStub
) -> None:
    title = "西湖边的早茶新店开张"
    async with held_engine(feed_service) as gate:
        backlog = [asyncio.create_task(cover(feed, region="成都", title=f"火锅节第{i}天")) for i in range(3)]
        await eventually(lambda: feed_service.engine.depth >= 3, "the backlog reaching the engine", WAIT_S)
        reply = await cover(feed, region="杭州", title=title, budget_ms=300)
        # the engine is held: the only way to answer was without the regional cover
        assert not gate.is_set() and not any(task.done() for task in backlog)
        assert reply.fallback and reply.fallback_reason == "budget"
        assert not reply.cache_hit
        assert [a.name for a in reply.adapters] == ["jiangnan"], "the standing cover of 杭州's style"
        assert reply.prompt == standing_prompt(feed_service, "jiangnan")
        assert list(reply.region_path) == ["杭州", "浙江", "长三角"]
        assert reply.arm == pb.ARM_REGIONAL
    await asyncio.gather(*backlog)
    await feed_service.feed.covers.background.drained()

    later = await cover(feed, region="杭州", title=title, budget_ms=300)
    plain = await cover(feed, region="杭州", title=title)  # no budget: waits, as before
    assert not later.fallback and later.fallback_reason == ""
    assert later.cache_hit and plain.cache_hit, "the background completion stored the cover"
    assert later.image == plain.image
    assert (later.seed, later.prompt, list(later.adapters)) == (plain.seed, plain.prompt, list(plain.adapters))
    assert later.prompt != standing_prompt(feed_service, "jiangnan")


async def test_full_queue_with_a_budget_is_an_overloaded_fallback(
    feed_service: Any, feed: pb_grpc.CoverServiceStub
) -> None:
    async with held_engine(feed_service):
        flood = [asyncio.create_task(cover(feed, region="北京", title=f"胡同早餐{i}")) for i in range(12)]

        def queue_refused() -> bool:
            return any(t.done() and isinstance(t.exception(), grpc.aio.AioRpcError) for t in flood)

        await eventually(queue_refused, "the admission queue refusing a call", WAIT_S)
        reply = await cover(feed, region="杭州", title="满员测试", budget_ms=300)
        assert reply.fallback and reply.fallback_reason == "overloaded"
        assert reply.image
    results = await asyncio.gather(*flood, return_exceptions=True)
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert refused and all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)


async def test_fallback_order_broader_cached_level_then_standing(
    feed_service: Any, feed: pb_grpc.CoverServiceStub
) -> None:
    """广州 (city stack lingnan 0.9) -> 广东 (inherits 岭南: lingnan 0.8) -> 岭南 -> default."""
    title = "骑楼老街的夜市"
    default_cover = await cover(feed, region="不存在的地方", title=title)  # the default stack's cover
    async with held_engine(feed_service):
        reply = await cover(feed, region="广州", title=title, budget_ms=200)
    assert reply.fallback and reply.image == default_cover.image, "a cached default beats standing covers"
    assert list(reply.adapters) == list(default_cover.adapters) and reply.prompt == default_cover.prompt

    await feed_service.feed.covers.background.drained()  # 广州's own cover for `title` is now cached
    title = "骑楼老街的早茶"
    await cover(feed, region="不存在的地方", title=title)
    province = await cover(feed, region="广东", title=title)
    async with held_engine(feed_service):
        reply = await cover(feed, region="广州", title=title, budget_ms=200)
    assert reply.fallback and reply.image == province.image, "the province's cover beats the default's"
    assert [(a.name, round(a.weight, 3)) for a in reply.adapters] == [("lingnan_arcade", 0.8)]
    assert reply.seed == province.seed and reply.prompt == province.prompt
    await feed_service.feed.covers.background.drained()

    own = await cover(feed, region="广州", title=title, budget_ms=200)
    assert not own.fallback and [(a.name, round(a.weight, 3)) for a in own.adapters] == [("lingnan_arcade", 0.9)]


async def test_unusable_adapter_gets_the_default_standing_cover_and_is_listed(
    feed_service: Any, feed: pb_grpc.CoverServiceStub
) -> None:
    replies = [await cover(feed, region="厦门", title=f"红砖古厝开放日{i}", budget_ms=300) for i in range(2)]
    for reply in replies:
        assert reply.fallback and reply.fallback_reason == "adapter_unavailable"
        assert list(reply.adapters) == [], "the default style's standing cover (the default has no adapter)"
        assert reply.prompt == standing_prompt(feed_service, "default")
    styles = {s.name: s for s in (await feed.ListStyles(pb.ListStylesRequest(), timeout=WAIT_S)).styles}
    assert not styles[BROKEN].usable and "cannot read" in styles[BROKEN].unusable_reason
    assert styles["jiangnan"].usable and styles["jiangnan"].unusable_reason == ""
    warnings = [r for r in feed_service.warnings.records if BROKEN in r.getMessage() and "unusable" in r.getMessage()]
    assert len(warnings) == 1, "logged once, not per request"
    assert "ReloadStyles" in warnings[0].getMessage()
    metrics = feed_service.metrics.render().decode()
    assert f'covergen_adapter_unavailable_total{{style="{BROKEN}"}} 2.0' in metrics
    assert 'covergen_fallbacks_total{arm="regional",reason="adapter_unavailable"} 2.0' in metrics

    with pytest.raises(grpc.aio.AioRpcError) as failed:  # without a budget: the honest error, as before
        await cover(feed, region="厦门", title="红砖古厝开放日0")
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_engine_admits_live_then_background_then_prepare_jobs(feed_service: Any) -> None:
    from covergen.engine.denoise import BACKGROUND, LIVE, PREPARE, CoverJob, Priority

    engine = feed_service.engine
    assert engine.max_batch == 4
    jobs: dict[str, CoverJob] = {}
    async with held_engine(feed_service) as gate:
        order = [("p1", PREPARE), ("p2", PREPARE), ("p3", PREPARE),
                 ("background", BACKGROUND), ("live", LIVE), ("demoted", LIVE)]  # fmt: skip
        assert len(order) <= feed_service.settings.max_queue
        for name, priority in order:  # submitted in this order: the prepare jobs are the oldest
            jobs[name] = CoverJob("a cover", "", 1, 64, 64, 2, 5.0, priority=Priority(priority))
        runs = [asyncio.create_task(engine.submit(job)) for job in jobs.values()]
        await eventually(lambda: engine.depth >= len(jobs), "every job queued behind the gate", WAIT_S)
        jobs["demoted"].priority.demote(PREPARE)  # while it waits, as a budgeted call does
        gate.set()
        await asyncio.gather(*runs)
    first = min(job.started_at or 0.0 for job in jobs.values())
    admitted_first = {name for name, job in jobs.items() if job.started_at == first}
    assert admitted_first == {"live", "background", "p1", "p2"}, "4 slots: best priority, then oldest"


# ---- A/B arms ---------------------------------------------------------------------------------


async def test_generic_arm_is_the_default_cover_of_the_title(feed: pb_grpc.CoverServiceStub) -> None:
    title = "春节庙会人山人海"
    generic = await cover(feed, region="杭州", title=title, arm=pb.ARM_GENERIC)
    unknown_region = await cover(feed, region="火星", title=title, arm=pb.ARM_REGIONAL)
    regional = await cover(feed, region="杭州", title=title, arm=pb.ARM_REGIONAL)
    assert generic.arm == pb.ARM_GENERIC and regional.arm == pb.ARM_REGIONAL
    assert list(generic.adapters) == [] and generic.image == unknown_region.image
    assert [a.name for a in regional.adapters] == ["jiangnan"] and regional.image != generic.image
    assert list(generic.region_path) == ["杭州", "浙江", "长三角"], "the reader's region is still reported"


async def test_arms_are_assigned_by_unit_sticky_and_reported(
    feed_service: Any, feed: pb_grpc.CoverServiceStub
) -> None:
    units = [f"reader-{i}" for i in range(16)]
    first = {u: (await cover(feed, region="成都", title="熊猫基地", unit_id=u)).arm for u in units}
    again = {u: (await cover(feed, region="成都", title="熊猫基地", unit_id=u)).arm for u in reversed(units)}
    assert first == again, "a unit keeps its arm"
    expected = {u: pb.ARM_GENERIC if bucket(EXPERIMENT, u) < 0.5 else pb.ARM_REGIONAL for u in units}
    assert first == expected, "the arm is a function of (experiment, unit) alone: the same on every replica"
    assert set(first.values()) == {pb.ARM_GENERIC, pb.ARM_REGIONAL}
    other_replica = ArmAssigner(Experiment(EXPERIMENT, 0.5))
    assert all((other_replica.assign(None, u) == "generic") == (a == pb.ARM_GENERIC) for u, a in first.items())
    no_unit = await cover(feed, region="成都", title="熊猫基地")
    assert no_unit.arm == pb.ARM_REGIONAL
    served = re.search(r'covergen_arm_requests_total\{arm="generic"\} ([0-9.]+)', feed_service.metrics.render().decode())
    assert served is not None and float(served.group(1)) >= 2 * sum(a == pb.ARM_GENERIC for a in first.values())


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"budget_ms": 5001}, ["budget_ms", "5000"]),
        ({"arm": 7}, ["arm 7", "ARM_GENERIC"]),
        ({"unit_id": "u" * 129}, ["unit_id", "128"]),
    ],
)
async def test_bad_feed_fields_are_invalid_argument(
    feed: pb_grpc.CoverServiceStub, fields: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await cover(feed, region="杭州", title="测试", **fields)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in (failed.value.details() or "")


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"title": "a", "titles": ["b", "c", "d"]}, ["4 titles", "limit is 3"]),
        ({"title": "a", "regions": ["杭州"] * 401}, ["401", "limit is 400"]),
        ({"title": "a", "variants": 3}, ["variants 3", "limit of 2"]),
        ({}, ["title is empty"]),
    ],
)
async def test_bad_prepare_requests_are_invalid_argument(
    feed: pb_grpc.CoverServiceStub, fields: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await feed.PrepareCovers(pb.PrepareCoversRequest(**fields), timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in (failed.value.details() or "")


# ---- PrepareCovers ----------------------------------------------------------------------------


async def test_prepare_dedupes_fills_the_cache_and_dead_letters_the_broken_style(
    feed_service: Any, feed: pb_grpc.CoverServiceStub
) -> None:
    title = "全国早餐地图发布"
    all_regions = len(every_region_tag(feed_service.maker.resolver))
    report = await feed.PrepareCovers(pb.PrepareCoversRequest(title=title), timeout=WAIT_S)
    assert report.regions == all_regions
    assert 1 < report.covers < report.regions / 10, "regions sharing a stack and prompt share one cover"
    assert report.cached == 0 and report.queued == report.covers

    again = await feed.PrepareCovers(pb.PrepareCoversRequest(title=title), timeout=WAIT_S)
    assert again.queued + again.cached + again.in_progress == report.covers and again.queued == 0

    async def settled() -> bool:
        now = await feed.PrepareCovers(pb.PrepareCoversRequest(title=title, count_only=True), timeout=WAIT_S)
        return now.cached + now.failed == report.covers

    await eventually(settled, "every prepared cover cached or dead-lettered", WAIT_S)
    done = await feed.PrepareCovers(pb.PrepareCoversRequest(title=title, count_only=True), timeout=WAIT_S)
    assert done.failed >= 1 and done.cached == report.covers - done.failed

    hangzhou = await cover(feed, region="杭州", title=title, budget_ms=100)
    suzhou = await cover(feed, region="苏州", title=title, budget_ms=100)
    assert hangzhou.cache_hit and suzhou.cache_hit and not hangzhou.fallback
    assert hangzhou.image == suzhou.image, "杭州 and 苏州 share one prepared cover"

    dead = await feed_service.feed.stream.dead_letters()
    assert dead and all(d["attempts"] == "2" and BROKEN in d["reason"] for d in dead)
    metrics = feed_service.metrics.render().decode()
    assert f'covergen_prepare_jobs_total{{outcome="dead_letter"}} {float(done.failed)}' in metrics
    assert f'covergen_prepare_jobs_total{{outcome="queued"}} {float(report.covers)}' in metrics


async def test_redis_down_prepare_is_unavailable_and_live_covers_still_serve(
    feed: pb_grpc.CoverServiceStub, feed_redis: Any
) -> None:
    feed_redis.stop()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await feed.PrepareCovers(pb.PrepareCoversRequest(title="断网"), timeout=WAIT_S)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Redis" in (failed.value.details() or "") and "live GenerateCover" in (failed.value.details() or "")
        reply = await cover(feed, region="杭州", title="断网也有封面")
        assert reply.image and not reply.cache_hit
    finally:
        feed_redis.start()
