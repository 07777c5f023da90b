"""The studio's composition root: settings -> stores, runner, server link, routes, middleware.

`create_app(settings)` builds everything once; `main()` (`covergen-studio`, `make studio`) serves
it with uvicorn on `settings.host:settings.port` (127.0.0.1:8600 by default).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from covergen.errors import ConfigError

from .datasets import DatasetStore
from .jobs import JobRunner, JobStore
from .library import StyleShelf
from .security import StudioGuard, csrf_token
from .server_link import ServerLink, ServerUnavailable
from .settings import StudioSettings

HERE = Path(__file__).parent
log = logging.getLogger("studio")


@dataclass
class Studio:
    """Everything a route needs, built once per app."""

    settings: StudioSettings
    datasets: DatasetStore
    jobs: JobStore
    runner: JobRunner
    shelf: StyleShelf
    server: ServerLink
    templates: Environment
    covers: dict[tuple[str, ...], bytes]  # (style, version, index, ...) -> png, library and preview


def studio_of(request: Request) -> Studio:
    return request.app.state.studio  # type: ignore[no-any-return]


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page or fragment; captions and every other value are autoescaped."""
    studio = studio_of(request)
    html = studio.templates.get_template(template).render(request=request, csrf=csrf_token(request), **context)
    return HTMLResponse(html, status_code=status_code)


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"], default=True)
    )
    env.filters["size"] = lambda n: f"{n / 1048576:g} MiB" if n >= 1048576 else f"{n // 1024} KiB"
    env.filters["duration"] = lambda s: "-" if s is None else f"{int(s // 60)}:{int(s % 60):02d}"
    return env


def create_app(settings: StudioSettings) -> FastAPI:
    from . import pages_data, pages_styles, pages_train

    settings.home.mkdir(parents=True, exist_ok=True)
    jobs = JobStore(settings.database, settings.runs_dir)
    studio = Studio(
        settings=settings,
        datasets=DatasetStore(settings.datasets_dir, max_bytes=settings.max_upload_bytes,
                              max_files=settings.max_dataset_files),
        jobs=jobs,
        runner=JobRunner(jobs, python=settings.python, stop_grace_s=settings.stop_grace_s),
        shelf=StyleShelf(settings.styles_dir, settings.effective_history_dir),
        server=ServerLink(settings.server, settings.admin_token),
        templates=_templates(),
        covers={},
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await studio.runner.start()
        studio.runner.poke()
        yield
        await studio.runner.close()
        jobs.close()

    app = FastAPI(title="covergen studio", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.studio = studio
    app.add_middleware(StudioGuard, token=settings.token)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for module in (pages_styles, pages_data, pages_train):
        app.include_router(module.router)

    @app.exception_handler(ConfigError)
    async def _config_error(request: Request, exc: ConfigError) -> Response:
        return render(request, "error.html", status_code=400, message=str(exc))

    @app.exception_handler(ServerUnavailable)
    async def _server_down(request: Request, exc: ServerUnavailable) -> Response:
        return render(request, "error.html", status_code=502, message=str(exc))

    @app.exception_handler(FileNotFoundError)
    async def _missing(request: Request, exc: FileNotFoundError) -> Response:
        return PlainTextResponse(str(exc), status_code=404)

    return app


def main() -> None:
    """`covergen-studio`: serve the studio (settings from COVERGEN_STUDIO_* variables)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    try:
        settings = StudioSettings()
    except ValueError as exc:
        raise SystemExit(f"covergen-studio: {exc}") from None
    where = f"socket fd {settings.fd}" if settings.fd is not None else f"http://{settings.host}:{settings.port}/"
    print(f"covergen studio on {where} (server {settings.server})", flush=True)
    if settings.fd is not None:
        uvicorn.run(create_app(settings), fd=settings.fd, log_level="warning")
    else:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")
