"""`/datasets`: create a dataset, upload pictures, draft and edit captions, see lint findings."""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from .app import render, studio_of
from .datasets import CaptionConflict

router = APIRouter()
LINT_RESOLUTION = 64  # the embedded model's size; the train page's resolution is what training uses


def _resolution(request: Request) -> int:
    value = request.query_params.get("resolution", "")
    return int(value) if value.isdigit() and 64 <= int(value) <= 2048 else LINT_RESOLUTION


@router.get("/datasets")
async def datasets_page(request: Request) -> Response:
    store = studio_of(request).datasets
    counts = {name: len(store.pictures(name, resolution=LINT_RESOLUTION)) for name in store.names()}
    return render(request, "datasets.html", counts=counts)


@router.post("/datasets")
async def create_dataset(request: Request, name: str = Form(...)) -> Response:
    studio_of(request).datasets.create(name.strip())
    return RedirectResponse(f"/datasets/{name.strip()}", status_code=303)


@router.get("/datasets/{name}")
async def dataset_page(request: Request, name: str) -> Response:
    store = studio_of(request).datasets
    store.existing(name)
    resolution = _resolution(request)
    return render(request, "dataset.html", name=name, resolution=resolution,
                  pictures=store.pictures(name, resolution=resolution),
                  limits=studio_of(request).settings)


@router.get("/datasets/{name}/grid")
async def dataset_grid(request: Request, name: str) -> Response:
    resolution = _resolution(request)
    pictures = studio_of(request).datasets.pictures(name, resolution=resolution)
    return render(request, "_grid.html", name=name, pictures=pictures, resolution=resolution)


@router.get("/datasets/{name}/files/{file}")
async def dataset_file(request: Request, name: str, file: str) -> Response:
    return FileResponse(studio_of(request).datasets.picture_path(name, file))


@router.post("/datasets/{name}/upload")
async def upload(request: Request, name: str) -> Response:
    """Many files in one multipart request (spooled to disk by the parser, then checked one by one)."""
    studio = studio_of(request)
    store = studio.datasets
    store.existing(name)
    limit = studio.settings.max_upload_files
    length = int(request.headers.get("content-length") or 0)
    if length > limit * studio.settings.max_upload_bytes:
        return render(request, "_uploaded.html", status_code=413, outcomes=[],
                      error=f"this upload is {length // (1024 * 1024)} MiB; send at most {limit} pictures "
                            f"of {studio.settings.max_upload_bytes // (1024 * 1024)} MiB each")
    form = await request.form(max_files=limit + 1, max_fields=10)
    files = [item for item in form.getlist("files") if isinstance(item, UploadFile)]
    if len(files) > limit:
        await form.close()
        return render(request, "_uploaded.html", status_code=413, outcomes=[],
                      error=f"{len(files)} files in one upload; at most {limit} are accepted")
    outcomes = []
    for item in files:
        outcomes.append(store.save_upload(name, item.filename or "", item.file))
    await form.close()
    return render(request, "_uploaded.html", outcomes=outcomes, error=None)


@router.post("/datasets/{name}/captions")
async def edit_caption(
    request: Request, name: str, file: str = Form(...), caption: str = Form(""), version: str = Form(...)
) -> Response:
    store = studio_of(request).datasets
    try:
        store.edit_caption(name, file, caption, version)
    except CaptionConflict as conflict:
        picture = next(p for p in store.pictures(name, resolution=_resolution(request)) if p.file == file)
        return render(request, "_picture.html", status_code=409, name=name, picture=picture,
                      conflict=f"this caption was changed elsewhere (another tab?) to “{conflict.current}”; "
                               "your text was not saved — it is shown below to copy", attempted=caption)
    picture = next(p for p in store.pictures(name, resolution=_resolution(request)) if p.file == file)
    return render(request, "_picture.html", name=name, picture=picture, conflict=None, saved=True)


@router.post("/datasets/{name}/label")
async def label(request: Request, name: str, keywords: str = Form(""), overwrite: str = Form("")) -> Response:
    studio_of(request).datasets.draft_captions(name, keywords, overwrite=bool(overwrite))
    return RedirectResponse(f"/datasets/{name}", status_code=303)


@router.post("/datasets/{name}/delete")
async def delete_picture(request: Request, name: str, file: str = Form(...)) -> Response:
    studio_of(request).datasets.delete_pictures(name, [file])
    return RedirectResponse(f"/datasets/{name}", status_code=303)
