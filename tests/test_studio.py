"""The training studio in a real browser, against a real covergen server on the tiny model.

One module-scoped stack (server, studio, Chromium) walks a newcomer's path in order: upload 16
pictures, draft and edit captions, see lint findings, validate and queue a short training,
watch the loss chart and sample grid fill, preview at several weights, publish, see the server
serve the new version, roll back and see it serve the old one. Then the queue: order, a studio
killed mid-run and restarted (the job is interrupted and resumes from its checkpoint), stop.
Bad input: non-image/corrupt/oversized uploads, escaping names, too many files, CSRF, a caption
`<script>`, and two tabs editing one caption.

Set COVERGEN_STUDIO_SCREENSHOTS=docs to write the README's screenshots (docs/studio-*.png).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from studio_stack import (
    ADMIN_TOKEN,
    CHROMEDRIVER,
    CHROMIUM,
    Studio,
    browser,
    covergen_server,
    draw_pictures,
    free_port,
    multipart,
    studio_styles,
    wait_until,
)

from covergen.v1 import cover_pb2 as pb
from covergen.v1 import cover_pb2_grpc as pb_grpc

pytestmark = [
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="no Chromium: apt-get install -y chromium chromium-driver (.ci/run does this)",
    ),
    # The module's stack (server child, studio child, Chromium) starts in the first test's setup;
    # on a loaded 2-core machine that alone took 220 s once, past the suite's 300 s default.
    pytest.mark.timeout(900),
]
DATASET = "street_test"
REGION = "杭州"  # 浙江 -> 长三角 -> jiangnan
SHOTS = Path(os.environ.get("COVERGEN_STUDIO_SCREENSHOTS", "")) if os.environ.get("COVERGEN_STUDIO_SCREENSHOTS") else None
MAX_UPLOAD_BYTES = 256 * 1024
MAX_UPLOAD_FILES = 20
_started = time.monotonic()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("studio")
    styles = studio_styles(tmp)
    with covergen_server(styles, tmp / "server.log") as address:
        sock = __import__("socket").socket()
        sock.bind(("127.0.0.1", free_port()))
        sock.listen(64)
        sock.set_inheritable(True)
        env = {**os.environ, "COVERGEN_STUDIO_HOME": str(tmp / "home"), "COVERGEN_STUDIO_STYLES_DIR": str(styles),
               "COVERGEN_STUDIO_SERVER": address, "COVERGEN_STUDIO_ADMIN_TOKEN": ADMIN_TOKEN,
               "COVERGEN_STUDIO_PREVIEW_STEPS": "2", "COVERGEN_STUDIO_LIBRARY_COVERS": "1", "COVERGEN_STUDIO_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
               "COVERGEN_STUDIO_MAX_UPLOAD_FILES": str(MAX_UPLOAD_FILES), "COVERGEN_STUDIO_STOP_GRACE_S": "20",
               "OMP_NUM_THREADS": "1"}
        studio = Studio(f"http://127.0.0.1:{sock.getsockname()[1]}", sock, env, tmp / "studio.log")
        studio.start()
        driver = browser(tmp / "downloads")
        try:
            yield {"studio": studio, "driver": driver, "styles": styles, "server": address, "tmp": tmp}
        finally:
            driver.quit()
            studio.stop()
            sock.close()


def shot(driver: Any, name: str) -> None:
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SHOTS / f"studio-{name}.png"))


def find(driver: Any, css: str, timeout: float = 60) -> Any:
    from selenium.webdriver.common.by import By

    return wait_until(lambda: (driver.find_elements(By.CSS_SELECTOR, css) or [None])[0], timeout, css)


def text_of(driver: Any, css: str) -> str:
    """The element's text now, or "" while it is missing or being swapped by htmx."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return str(driver.find_element("css selector", css).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def served_version(address: str, style: str) -> str:
    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.CoverServiceStub(channel).ListStyles(pb.ListStylesRequest(), timeout=10)
    return next(s.version for s in reply.styles if s.name == style)


def applied_version(address: str, style: str) -> str:
    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.CoverServiceStub(channel).GenerateCover(
            pb.GenerateCoverRequest(region=REGION, title="发布测试", steps=2), timeout=60
        )
    return next(a.version for a in reply.adapters if a.name == style)


def test_library_lists_styles_with_covers(stack: dict[str, Any]) -> None:
    driver = stack["driver"]
    driver.get(stack["studio"].url + "/")
    row = find(driver, "#style-jiangnan")
    assert "regional" in row.text and "长三角" in row.text
    wait_until(lambda: driver.execute_script(
        "return [...document.querySelectorAll('#style-jiangnan img.cover')].every(i => i.complete && i.naturalWidth == 64)"
    ), 120, "jiangnan's covers from the server")
    shot(driver, "library")


def test_upload_sixteen_pictures_draft_and_lint(stack: dict[str, Any]) -> None:
    driver, studio = stack["driver"], stack["studio"]
    pictures = draw_pictures(stack["tmp"] / "pictures")
    stack["path_started"] = time.monotonic()
    driver.get(studio.url + "/datasets")
    find(driver, "#new-dataset").send_keys(DATASET)
    find(driver, "#create-dataset").click()
    find(driver, "#file-input").send_keys("\n".join(str(p) for p in pictures))
    summary = find(driver, ".upload-summary")
    assert "kept 16" in summary.text and "refused 0" in summary.text
    wait_until(lambda: len(driver.find_elements("css selector", ".picture")) == 16, 60, "16 thumbnails")
    assert "missing caption" in find(driver, ".picture .findings").text  # lint: no captions yet
    find(driver, "#keywords").send_keys("street style, nice old street")
    find(driver, "#draft-captions").click()
    warnings = find(driver, ".picture .findings .warning").find_element("xpath", "..").text
    assert "vague words: nice" in warnings and "unreviewed draft" in warnings
    rows = (Path(studio.env["COVERGEN_STUDIO_HOME"]) / "datasets" / DATASET / "metadata.csv").read_text(encoding="utf-8")
    assert rows.splitlines()[0] == "file,caption,draft" and rows.count("street style") == 16  # the CLI's format
    shot(driver, "dataset")


def test_caption_edit_is_text_and_two_tabs_conflict(stack: dict[str, Any]) -> None:
    driver, studio = stack["driver"], stack["studio"]
    url = f"{studio.url}/datasets/{DATASET}"
    driver.get(url)
    first = driver.current_window_handle
    driver.switch_to.new_window("tab")
    driver.get(url)
    second = driver.current_window_handle
    for handle, text in ((first, "<script>alert(1)</script>"), (second, "street style, the other tab")):
        driver.switch_to.window(handle)
        box = find(driver, "#pic-street_00_png textarea")
        box.clear()
        box.send_keys(text)
        find(driver, "#pic-street_00_png button.save").click()
    conflict = find(driver, "#pic-street_00_png .conflict")  # the second tab started from the old caption
    assert "changed elsewhere" in conflict.text and "<script>alert(1)</script>" in conflict.text
    assert find(driver, "#pic-street_00_png textarea").get_attribute("value") == "street style, the other tab"  # kept to copy
    driver.close()
    driver.switch_to.window(first)
    driver.get(url)
    shown = find(driver, "#pic-street_00_png .current-caption").get_attribute("textContent")
    assert shown == "<script>alert(1)</script>"  # shown as typed, never run
    assert driver.execute_script("return document.querySelectorAll('figure script').length") == 0
    box = find(driver, "#pic-street_00_png textarea")
    box.clear()
    box.send_keys("street style, black roofs, white wall, corner shop")
    find(driver, "#pic-street_00_png button.save").click()
    find(driver, "#pic-street_00_png .saved")


def test_bad_uploads_are_refused_with_reasons_and_the_rest_kept(stack: dict[str, Any]) -> None:
    studio = stack["studio"]
    good = (stack["tmp"] / "pictures" / "street_00.png").read_bytes()
    body, kind = multipart([
        ("notes.txt", b"hello"),
        ("broken.png", good[:200]),
        ("../../escape.png", good),
        ("huge.png", good + b"\0" * MAX_UPLOAD_BYTES),
        ("fake.jpg", b"GIF89a not really"),
        ("kept.png", good),
    ])
    status, reply = studio.post(f"/datasets/{DATASET}/upload", body=body,
                                headers={"Content-Type": kind, "X-CSRF-Token": studio.csrf()})
    text = reply.decode()
    assert status == 200 and "kept 2" in text and "refused 4" in text, text
    assert "not a picture file name" in text and "not a readable picture" in text and "per-picture limit" in text
    folder = Path(studio.env["COVERGEN_STUDIO_HOME"]) / "datasets" / DATASET
    assert (folder / "escape.png").is_file() and not (folder.parent / "escape.png").exists()
    assert not list(folder.parent.parent.glob("escape*"))
    too_many, kind = multipart([(f"x{i}.png", good) for i in range(MAX_UPLOAD_FILES + 1)])
    status, reply = studio.post(f"/datasets/{DATASET}/upload", body=too_many,
                                headers={"Content-Type": kind, "X-CSRF-Token": studio.csrf()})
    assert status == 413 and f"at most {MAX_UPLOAD_FILES}" in reply.decode()
    for name in ("escape.png", "kept.png"):
        assert studio.post(f"/datasets/{DATASET}/delete", {"file": name})[0] == 200  # redirect followed
    status, reply = studio.get(f"/datasets/{DATASET}/files/..%2F..%2Fstudio.db")
    assert status == 404


def test_state_changes_need_the_csrf_token(stack: dict[str, Any]) -> None:
    studio = stack["studio"]
    assert studio.post("/datasets", {"name": "nope"}, csrf=False)[0] == 403
    status, reply = studio.post("/datasets", {"name": "nope"}, headers={"Origin": "http://evil.example"})
    assert status == 403 and b"cross-site" in reply
    assert not (Path(studio.env["COVERGEN_STUDIO_HOME"]) / "datasets" / "nope").exists()


def _fill_train_form(driver: Any, values: dict[str, str]) -> None:
    for key, value in values.items():
        box = find(driver, f"#{key}")
        box.clear()
        box.send_keys(value)


def test_train_form_validates_with_the_cli_messages_then_runs(stack: dict[str, Any]) -> None:
    driver, studio = stack["driver"], stack["studio"]
    driver.get(f"{studio.url}/train?preset=regional&dataset={DATASET}&style=jiangnan")
    _fill_train_form(driver, {"lora_rank": "0"})
    wait_until(lambda: "train.yaml: lora_rank must be 1..256, got 0" in text_of(driver, "#problems"), 30,
               "the CLI's lora_rank message")
    _fill_train_form(driver, {"lora_rank": "4", "max_train_steps": "6", "save_steps": "2", "batch_size": "4",
                              "sample_prompts": "street style, black roofs\nstreet style, corner shop",
                              "sample_steps": "2"})
    wait_until(lambda: "max_train_steps: 6" in text_of(driver, "#yaml-text") and text_of(driver, "#valid"), 30,
               "the valid YAML")
    assert "lora_rank: 4" in text_of(driver, "#yaml-text")
    shot(driver, "train")
    find(driver, "#queue-training").click()
    wait_until(lambda: re.search(r"/jobs/\d+$", driver.current_url), 30, "the job page")
    wait_until(lambda: driver.execute_script(
        "const c = document.getElementById('loss-chart'); return c.dataset.final && +c.dataset.trainPoints")
        , 300, "the run to finish with its loss chart drawn")
    wait_until(lambda: text_of(driver, "#job-state") in ("succeeded", "failed"), 30, "the status line")
    assert text_of(driver, "#job-state") == "succeeded", text_of(driver, "#log")
    canvas = find(driver, "#loss-chart")
    assert int(canvas.get_attribute("data-train-points")) == 6
    assert int(canvas.get_attribute("data-validation-points")) >= 2  # before training and at the end
    wait_until(lambda: len(driver.find_elements("css selector", "#samples img")) >= 2, 30, "sample rows")
    assert "before" in text_of(driver, "#samples")  # the row painted before training started
    shot(driver, "job")
    stack["job_url"] = driver.current_url


def test_preview_publish_rollback_reach_the_server(stack: dict[str, Any]) -> None:
    driver, address = stack["driver"], stack["server"]
    old = served_version(address, "jiangnan")
    driver.get(stack["job_url"])
    find(driver, "#to-preview").click()
    regions = find(driver, "#preview-regions")
    regions.clear()
    regions.send_keys("杭州, 成都")
    find(driver, "#make-preview").click()
    wait_until(lambda: driver.execute_script(
        "const i = [...document.querySelectorAll('img.preview-cover')];"
        "return i.length == 8 && i.every(x => x.complete && x.naturalWidth == 64)"), 120, "8 preview covers")
    shot(driver, "preview")
    find(driver, "#publish").click()
    new = find(driver, "#published code").text
    published = time.monotonic()
    assert new != old and find(driver, "#served-version").text == new
    assert served_version(address, "jiangnan") == new and applied_version(address, "jiangnan") == new
    assert "studio-preview" not in {s for s in os.listdir(stack["styles"])}  # staging is gone after publishing
    shot(driver, "style")
    row = find(driver, f"#history tr[data-version='{old}']")
    row.find_element("css selector", "button.rollback").click()
    wait_until(lambda: text_of(driver, "#published code") == old, 60, "the rollback page")
    assert served_version(address, "jiangnan") == old and applied_version(address, "jiangnan") == old
    # The number the README and the report quote (a print, not an assertion): pictures on disk to
    # a published, previewed, rolled-back style, with this test module's clicks in between.
    print(f"\nstudio path: pictures -> published and previewed {published - stack['path_started']:.1f} s, "
          f"module so far {time.monotonic() - _started:.1f} s")


def _queue(studio: Studio, steps: int) -> int:
    status, _ = studio.post("/train", {"style": "queue_test", "dataset": DATASET, "base_model": "embedded",
                                       "lora_rank": "2", "lora_alpha": "2", "target_modules": "to_q, to_v",
                                       "batch_size": "2", "epochs": "1", "learning_rate": "0.001",
                                       "save_steps": "2", "max_train_steps": str(steps), "lr_scheduler": "constant",
                                       "lr_warmup_steps": "0", "caption_dropout": "0", "validation_split": "0",
                                       "seed": "1", "device": "cpu", "sample_prompts": "", "sample_steps": "2"})
    assert status == 200
    page = studio.get("/jobs")[1].decode()
    return max(int(n) for n in re.findall(r'data-id="(\d+)"', page))


def _job(studio: Studio, job_id: int) -> dict[str, Any]:
    return json.loads(studio.get(f"/jobs/{job_id}/progress.json")[1])


def test_queue_order_restart_recovery_and_stop(stack: dict[str, Any]) -> None:
    studio = stack["studio"]
    first, second, third = _queue(studio, 2000), _queue(studio, 2000), _queue(studio, 4)
    wait_until(lambda: _job(studio, first)["state"] == "running", 60, "the first job to start")
    assert [_job(studio, j)["state"] for j in (second, third)] == ["queued", "queued"]
    assert [_job(studio, j)["position"] for j in (second, third)] == [2, 3]  # in order, behind the running one
    checkpoints = Path(studio.env["COVERGEN_STUDIO_HOME"]) / "runs" / f"job-{first:05d}" / "output" / "checkpoints"
    wait_until(lambda: checkpoints.is_dir() and any(checkpoints.glob("*.pt")), 120, "a first checkpoint")
    studio.kill()  # no goodbye: the training child dies with it (PDEATHSIG)
    studio.start()
    recovered = wait_until(lambda: _job(studio, first), 60, "the restarted studio")
    assert recovered["state"] == "interrupted" and recovered["resumable"]
    wait_until(lambda: _job(studio, second)["state"] == "running", 60, "the queue to move on")
    studio.post(f"/jobs/{second}/stop")  # at once: stopping a job that is still loading its model
    assert _job(studio, second)["state"] == "stopped"  # stop returns once the process has ended
    wait_until(lambda: _job(studio, third)["state"] == "running", 60, "the kept queue to move on in order")
    studio.post(f"/jobs/{third}/stop")
    assert _job(studio, third)["state"] == "stopped"
    studio.post(f"/jobs/{first}/resume")
    log = Path(studio.env["COVERGEN_STUDIO_HOME"]) / "runs" / f"job-{first:05d}" / "train.log"
    wait_until(lambda: "resumed from step-" in log.read_text(errors="replace"), 120, "the resumed run")
    studio.post(f"/jobs/{first}/stop")
    assert _job(studio, first)["state"] == "stopped"
