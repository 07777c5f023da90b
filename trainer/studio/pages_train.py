"""`/train` (the form, presets, validation, YAML) and `/jobs` (queue, progress, chart, samples)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from .app import Studio, render, studio_of
from .jobs import RUNNING, STOPPING, Job, log_tail, read_events
from .presets import FORM_KEYS, PRESETS, build_config, parse_form, preset_values

router = APIRouter()


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _form_state(studio: Studio, form: dict[str, str]) -> tuple[dict[str, Any], list[str], str, Any]:
    values, problems = parse_form(form)
    style = (form.get("style") or "").strip()
    dataset = (form.get("dataset") or "").strip()
    if not style:
        problems.append("style: name the style this trains (e.g. jiangnan_rain); it becomes styles/<style>/")
    if dataset not in studio.datasets.names():
        problems.append(f"dataset: pick one of the datasets ({', '.join(studio.datasets.names()) or 'none yet'})")
        return values, problems, "", None
    folder = studio.datasets.folder(dataset)
    config, text, config_problems = build_config(values, folder, studio.settings.runs_dir / "job-NNNNN" / "output")
    return values, problems + config_problems, text, config


def _page(request: Request, form: dict[str, str], values: dict[str, Any], problems: list[str], text: str) -> Response:
    studio = studio_of(request)
    return render(request, "train.html", keys=FORM_KEYS, presets=PRESETS, values=values, form=form,
                  problems=problems, yaml_text=text, datasets=studio.datasets.names(),
                  status_code=400 if problems and form.get("_submitted") else 200)


@router.get("/train")
async def train_page(request: Request) -> Response:
    studio = studio_of(request)
    preset = request.query_params.get("preset", "regional")
    values = preset_values(preset, studio.settings.styles_dir)
    form = {"preset": preset, "dataset": request.query_params.get("dataset", ""),
            "style": request.query_params.get("style", "")}
    return _page(request, form, values, [], "")


@router.post("/train/check")
async def check(request: Request) -> Response:
    form = {k: str(v) for k, v in (await request.form()).items()}
    values, problems, text, _ = _form_state(studio_of(request), form)
    return render(request, "_yaml.html", problems=problems, yaml_text=text)


@router.post("/train/yaml")
async def download_yaml(request: Request) -> Response:
    form = {k: str(v) for k, v in (await request.form()).items()}
    _, problems, text, _ = _form_state(studio_of(request), form)
    body = text if not problems else "# problems:\n" + "".join(f"# {p}\n" for p in problems) + text
    return Response(body, media_type="application/x-yaml",
                    headers={"content-disposition": 'attachment; filename="train.yaml"'})


@router.post("/train")
async def submit(request: Request) -> Response:
    studio = studio_of(request)
    form = {k: str(v) for k, v in (await request.form()).items()}
    values, problems, text, config = _form_state(studio, form)
    if problems or config is None:
        return _page(request, {**form, "_submitted": "1"}, values, problems, text)
    folder = studio.datasets.folder(form["dataset"])

    def make_yaml(job_dir: Path) -> str:
        return build_config(values, folder, job_dir / "output")[1]

    job = studio.jobs.add(form["style"].strip(), form["dataset"], _device(config.device), make_yaml)
    studio.runner.poke()
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


def progress(studio: Studio, job: Job) -> dict[str, Any]:
    """Position, step/total, speed, time left, losses, samples: what the job page draws."""
    folder = studio.jobs.job_dir(job.id)
    events = read_events(folder)
    total = next((e["total_steps"] for e in reversed(events) if e["kind"] == "start"), None)
    steps = [e for e in events if e["kind"] == "step"]
    step = steps[-1]["step"] if steps else 0
    recent = steps[-20:]
    speed = None
    if len(recent) >= 2 and recent[-1]["t"] > recent[0]["t"]:
        speed = (recent[-1]["step"] - recent[0]["step"]) / (recent[-1]["t"] - recent[0]["t"])
    left = (total - step) / speed if speed and total and job.state in (RUNNING, STOPPING) else None
    samples = [e for e in events if e["kind"] == "samples"]
    return {
        "position": studio.jobs.position(job),
        "step": step,
        "total": total,
        "percent": round(100 * step / total) if total else 0,
        "speed": speed,
        "left": left,
        "train": [[e["step"], e["loss"]] for e in steps],
        "validation": [[e["step"], e["loss"]] for e in events if e["kind"] == "validation"],
        "samples": [{"step": e["step"], "epoch": e["epoch"], "file": Path(e["path"]).name} for e in samples],
        "resumable": job.final and studio.jobs.has_checkpoint(job.id),
        "elapsed": (job.finished or time.time()) - job.started if job.started else None,
    }


@router.get("/jobs")
async def jobs_page(request: Request) -> Response:
    studio = studio_of(request)
    jobs = studio.jobs.all()
    return render(request, "jobs.html", jobs=jobs, positions={j.id: studio.jobs.position(j) for j in jobs})


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: int) -> Response:
    studio = studio_of(request)
    job = studio.jobs.get(job_id)
    yaml_text = (studio.jobs.job_dir(job_id) / "train.yaml").read_text(encoding="utf-8")
    return render(request, "job.html", job=job, p=progress(studio, job), yaml_text=yaml_text)


@router.get("/jobs/{job_id}/status")
async def job_status(request: Request, job_id: int) -> Response:
    studio = studio_of(request)
    job = studio.jobs.get(job_id)
    return render(request, "_job_status.html", job=job, p=progress(studio, job),
                  log=log_tail(studio.jobs.job_dir(job_id)))


@router.get("/jobs/{job_id}/progress.json")
async def job_json(request: Request, job_id: int) -> Response:
    studio = studio_of(request)
    job = studio.jobs.get(job_id)
    return JSONResponse({"state": job.state, **progress(studio, job)})


@router.get("/jobs/{job_id}/samples/{file}")
async def job_sample(request: Request, job_id: int, file: str) -> Response:
    from fastapi.responses import FileResponse

    folder = (studio_of(request).jobs.job_dir(job_id) / "output" / "samples").resolve()
    path = (folder / file).resolve()
    if path.parent != folder or not path.is_file():
        raise FileNotFoundError(f"no sample {file[:80]!r} for job {job_id}")
    return FileResponse(path)


@router.post("/jobs/{job_id}/stop")
async def stop(request: Request, job_id: int) -> Response:
    await studio_of(request).runner.stop(job_id)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.post("/jobs/{job_id}/resume")
async def resume(request: Request, job_id: int) -> Response:
    try:
        await studio_of(request).runner.resume(job_id)
    except ValueError as exc:
        return render(request, "error.html", status_code=409, message=str(exc))
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)
