"""`/` (the library), `/preview` (covers at several weights), publish, `/styles/<name>` (history, rollback)."""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from covergen.errors import ConfigError

from .app import Studio, render, studio_of
from .jobs import SUCCEEDED
from .library import PREVIEW_STYLE, regions_by_style
from .server_link import ServerUnavailable, resolve_stack

router = APIRouter()
LIBRARY_TITLES = ("春节庙会人潮涌动", "雨后老街")
PREVIEW_WEIGHTS = (0.0, 0.5, 0.7, 0.9)
DEFAULT_TITLE = "周末古镇游客多"


@router.get("/")
async def library_page(request: Request) -> Response:
    studio = studio_of(request)
    entries = studio.shelf.entries()
    try:
        served = await run_in_threadpool(studio.server.styles)
        server_error = None
    except ServerUnavailable as exc:
        served, server_error = {}, str(exc)
    return render(request, "library.html", entries=entries, served=served, server_error=server_error,
                  covers=range(studio.settings.library_covers))


def _sample_region(studio: Studio, style: str, kind: str) -> tuple[str, tuple[str, ...]]:
    if kind == "overlay":
        return "default", (style,)
    regions = regions_by_style(studio.settings.styles_dir).get(style) or ["default"]
    return regions[0], ()


@router.get("/covers/{style}/{index}.png")
async def library_cover(request: Request, style: str, index: int) -> Response:
    studio = studio_of(request)
    entry = next((e for e in studio.shelf.entries() if e.card.name == style), None)
    if entry is None or not 0 <= index < len(LIBRARY_TITLES):
        raise FileNotFoundError(f"no cover {index} of style {style!r}")
    key = ("library", style, entry.version, str(index))
    if key not in studio.covers:
        region, themes = _sample_region(studio, style, entry.card.kind)
        cover = await run_in_threadpool(studio.server.cover, region, LIBRARY_TITLES[index],
                                        steps=studio.settings.preview_steps, themes=themes)
        studio.covers[key] = cover.png
    return Response(studio.covers[key], media_type="image/png")


def _finished_jobs(studio: Studio) -> list:  # type: ignore[type-arg]
    return [j for j in studio.jobs.all() if j.state == SUCCEEDED]


@router.get("/preview")
async def preview_page(request: Request) -> Response:
    studio = studio_of(request)
    q = request.query_params
    jobs = _finished_jobs(studio)
    job_id = int(q["job"]) if q.get("job", "").isdigit() else (jobs[0].id if jobs else None)
    job = next((j for j in jobs if j.id == job_id), None)
    regions = [r.strip() for r in (q.get("regions") or "").replace("，", ",").split(",") if r.strip()]
    if not regions and job is not None:
        regions = (regions_by_style(studio.settings.styles_dir).get(job.name) or ["杭州"])[:3]
    return render(request, "preview.html", jobs=jobs, job=job, regions=regions,
                  title=q.get("title") or DEFAULT_TITLE, replace=q.get("replace") == "1",
                  staged=q.get("staged"), weights=PREVIEW_WEIGHTS, styles=[e.card.name for e in studio.shelf.entries()])


@router.post("/preview")
async def stage_preview(
    request: Request, job: int = Form(...), regions: str = Form(""), title: str = Form(DEFAULT_TITLE),
    replace: str = Form(""),
) -> Response:
    studio = studio_of(request)
    record = studio.jobs.get(job)
    if record.state != SUCCEEDED:
        raise ConfigError(f"job {job} is {record.state}; preview needs a finished training")
    version = studio.shelf.stage(studio.jobs.job_dir(job) / "output")
    _, rejected = await run_in_threadpool(studio.server.reload)
    problems = [r for r in rejected if r.startswith(f"{PREVIEW_STYLE}:")]
    if problems:
        raise ConfigError(f"the server refused the staged adapter: {problems[0]}")
    from urllib.parse import urlencode

    query = urlencode({"job": job, "regions": regions, "title": title, "replace": "1" if replace else "",
                       "staged": version})
    return RedirectResponse(f"/preview?{query}", status_code=303)


@router.get("/preview/cover.png")
async def preview_cover(request: Request) -> Response:
    studio = studio_of(request)
    q = request.query_params
    region, title, staged = q.get("region", ""), q.get("title", DEFAULT_TITLE), q.get("staged", "")
    weight = float(q.get("w", "0"))
    if not 0.0 <= weight <= 2.0:
        raise ConfigError(f"preview weight {weight} is outside [0, 2]")
    weights = {PREVIEW_STYLE: weight}
    if q.get("replace") == "1":
        for style in await run_in_threadpool(resolve_stack, studio.server, region):
            weights[style] = 0.0
    key = ("preview", staged, region, title, f"{weight:g}", q.get("replace", ""))
    if key not in studio.covers:
        cover = await run_in_threadpool(studio.server.cover, region, title, steps=studio.settings.preview_steps,
                                        themes=(PREVIEW_STYLE,), weights=weights)
        studio.covers[key] = cover.png
    return Response(studio.covers[key], media_type="image/png")


@router.post("/publish")
async def publish(request: Request, job: int = Form(...), style: str = Form(...)) -> Response:
    studio = studio_of(request)
    record = studio.jobs.get(job)
    if record.state != SUCCEEDED:
        raise ConfigError(f"job {job} is {record.state}; only a finished training can be published")
    version = studio.shelf.publish(studio.jobs.job_dir(job) / "output", style.strip(), f"job {job}")
    reloaded, rejected = await run_in_threadpool(studio.server.reload)
    mine = [r for r in rejected if r.startswith(f"{style.strip()}:")]
    if mine:
        raise ConfigError(f"published {style} {version}, but the server rejected it: {mine[0]}")
    return RedirectResponse(f"/styles/{style.strip()}?published={version}", status_code=303)


@router.get("/styles/{style}")
async def style_page(request: Request, style: str) -> Response:
    studio = studio_of(request)
    entry = next((e for e in studio.shelf.entries() if e.card.name == style), None)
    if entry is None:
        raise FileNotFoundError(f"no style {style!r} in {studio.settings.styles_dir}")
    try:
        served = (await run_in_threadpool(studio.server.styles)).get(style)
        server_error = None
    except ServerUnavailable as exc:
        served, server_error = None, str(exc)
    return render(request, "style.html", entry=entry, history=list(reversed(studio.shelf.history(style))),
                  served=served, server_error=server_error, published=request.query_params.get("published"),
                  covers=range(studio.settings.library_covers))


@router.post("/styles/{style}/rollback")
async def rollback(request: Request, style: str, number: int = Form(...)) -> Response:
    studio = studio_of(request)
    version = studio.shelf.rollback(style, number)
    _, rejected = await run_in_threadpool(studio.server.reload)
    mine = [r for r in rejected if r.startswith(f"{style}:")]
    if mine:
        raise ConfigError(f"rolled {style} back to {version}, but the server rejected it: {mine[0]}")
    return RedirectResponse(f"/styles/{style}?published={version}", status_code=303)
