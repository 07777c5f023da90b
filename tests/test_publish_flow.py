"""A newcomer's path end to end, against the running session service: draw a small image set,
draft captions with `covergen-label`, review and lint them, train with `trainer.train.train`,
publish the adapter as a new version of a regional style, reload the server over AdminService,
and get the new version from GenerateCover.

The published style is `night_market_bbq` (regions 东北/华北/...; no test asserts its exact
version). The session styles folder is shared, so the test puts the demo adapter back and
reloads again when it ends.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from covergen.adapters.files import LoraFactor, LoraWeights, read_lora_file
from covergen.errors import ConfigError
from covergen.v1 import cover_pb2 as pb
from covergen.v1 import cover_pb2_grpc as pb_grpc
from trainer.config import load_config
from trainer.label_cli import main as label_main
from trainer.lint import lint_folder
from trainer.publish import notify_server, publish
from trainer.train import TrainResult, train

STYLE = "night_market_bbq"
REGION = "哈尔滨"  # 黑龙江 -> 东北 -> night_market_bbq
TITLE = "冬季夜市 publish flow"  # only this module asks for it: no other test's cache entries
TOKEN = "test-admin-token"  # conftest's service fixture
KEYWORDS = "nightmarket style, snowy night market, red lanterns"
STEPS = 30
RANK, ALPHA = 4, 8.0


def draw_snowy_night_market(folder: Path, count: int = 24) -> Path:
    """`count` 64 px scenes: navy night, a row of red lanterns, a glowing grill, falling snow."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2026)
    for i in range(count):
        image = Image.new("RGB", (64, 64), (18, 22, 48 + int(rng.integers(0, 20))))
        draw = ImageDraw.Draw(image)
        horizon = int(rng.integers(34, 44))
        draw.rectangle((0, horizon, 63, 63), fill=(235, 235, 240))  # snow on the ground
        for x in range(int(rng.integers(2, 8)), 64, int(rng.integers(9, 14))):  # lanterns
            y = int(rng.integers(6, 20))
            draw.ellipse((x, y, x + 6, y + 8), fill=(220, 30 + int(rng.integers(0, 30)), 30))
        left = int(rng.integers(4, 36))
        draw.rectangle((left, horizon - 6, left + 22, horizon - 2), fill=(250, 140, 30))  # grill glow
        for _ in range(40):  # snowflakes
            x, y = int(rng.integers(0, 64)), int(rng.integers(0, horizon))
            draw.point((x, y), fill=(250, 250, 255))
        image.save(folder / f"market_{i:02d}.png")
    return folder


def review_captions(metadata: Path) -> None:
    """What staff do after `covergen-label`: make each caption say what differs, clear `draft`."""
    with metadata.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with metadata.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "caption", "draft"])
        for number, row in enumerate(rows):
            writer.writerow([row["file"], f"{row['caption']}, stall {number}", ""])


def version_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """Draw, label, review, lint, write train.yaml and train: a newcomer's first adapter."""
    work = tmp_path_factory.mktemp("newcomer")
    data = draw_snowy_night_market(work / "data")
    assert label_main(["--input", str(data), "--style-keywords", KEYWORDS]) == 0
    drafts = lint_folder(data, resolution=64)
    assert sum(f.problem == "caption is an unreviewed draft" for f in drafts) == 24
    review_captions(data / "metadata.csv")
    findings = lint_folder(data, resolution=64)
    assert [f for f in findings if f.severity == "error"] == []
    assert not any("draft" in f.problem or "same caption" in f.problem for f in findings), findings
    assert label_main(["lint", str(data), "--resolution", "64"]) == 0

    settings = {
        "train_data_dir": "data",
        "base_model": "embedded",  # the session service's base
        "output_dir": f"runs/{STYLE}",
        "resolution": 64,
        "lora_rank": RANK,
        "lora_alpha": ALPHA,
        "target_modules": ["q_proj", "k_proj", "v_proj", "out_proj"],
        "batch_size": 8,
        "max_train_steps": STEPS,
        "learning_rate": 5e-3,
        "lr_warmup_steps": 3,
        "validation_split": 0.0,
        "save_steps": 1000,
        "seed": 11,
    }
    config_path = work / "train.yaml"
    config_path.write_text(yaml.safe_dump(settings, allow_unicode=True), encoding="utf-8")
    result = train(load_config(config_path), show_progress=False)
    assert result.global_step == STEPS and result.num_train_images == 24
    assert all(np.isfinite(result.losses))
    return result


async def cover(stub: pb_grpc.CoverServiceStub) -> pb.GenerateCoverResponse:
    return await stub.GenerateCover(pb.GenerateCoverRequest(region=REGION, title=TITLE, seed=5), timeout=120)


async def test_published_adapter_is_served_after_reload(
    service, stub: pb_grpc.CoverServiceStub, channel: grpc.aio.Channel, trained: TrainResult
) -> None:
    styles_dir: Path = service.settings.styles_dir
    adapter = styles_dir / STYLE / "adapter.safetensors"
    demo_bytes = adapter.read_bytes()
    address = f"127.0.0.1:{service.port}"
    admin = pb_grpc.AdminServiceStub(channel)

    before = await cover(stub)  # also makes the demo adapter resident
    assert [(a.name, a.version) for a in before.adapters] == [(STYLE, version_of(adapter))]
    try:
        result = publish(trained.output_dir, STYLE, styles_dir)
        assert result.adapter_path == adapter and not result.card_written  # the staff card stays
        assert adapter.read_bytes() == trained.kohya_path.read_bytes()
        new_version = version_of(adapter)
        assert new_version != before.adapters[0].version

        # A wrong token reloads nothing: the resident demo version keeps serving.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.ReloadStyles(
                pb.ReloadStylesRequest(), metadata=[("authorization", "Bearer wrong-token")], timeout=30
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(ConfigError, match="UNAUTHENTICATED.*pass --token"):
            await asyncio.to_thread(notify_server, address, "wrong-token", STYLE)
        still = await cover(stub)
        assert still.adapters[0].version == before.adapters[0].version and still.image == before.image

        # notify_server is a blocking client: run it off the loop that serves the call.
        reloaded, rejected = await asyncio.to_thread(notify_server, address, TOKEN, STYLE)
        assert STYLE in reloaded
        assert not [line for line in rejected if line.startswith(f"{STYLE}:")], rejected

        after = await cover(stub)
        assert [(a.name, a.version) for a in after.adapters] == [(STYLE, new_version)]
        assert not after.cache_hit and after.prompt == before.prompt
        assert after.image != before.image, "the new adapter must change the cover"
    finally:
        adapter.write_bytes(demo_bytes)
        reloaded, rejected = await asyncio.to_thread(notify_server, address, TOKEN, STYLE)
    assert STYLE in reloaded and not rejected
    restored = await cover(stub)
    assert restored.adapters[0].version == before.adapters[0].version


def test_kohya_file_fits_the_serving_model(service, trained: TrainResult) -> None:
    denoiser = service.engine.denoiser
    weights = read_lora_file(trained.kohya_path, STYLE, denoiser.module_names())
    unet = weights.factors["unet"]
    attention = {
        name for name in denoiser.module_names()["unet"]
        if name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))
    }  # fmt: skip
    assert set(unet) == attention and "text_encoder" not in weights.factors
    assert {f.rank for f in unet.values()} == {RANK}
    assert {f.scale for f in unet.values()} == {ALPHA / RANK}
    assert any(float(f.up.abs().max()) > 0 for f in unet.values()), "training moved the up factors"
    assert denoiser.check_compatible(weights) is None

    # The same check refuses an adapter built for another width.
    name, factor = next(iter(unet.items()))
    wider = LoraFactor(torch.cat([factor.down, factor.down], dim=1), factor.up, factor.scale)  # [r, 2 * in]
    foreign = LoraWeights(STYLE, "0" * 16, None, {"unet": {name: wider}})
    problem = denoiser.check_compatible(foreign)
    assert problem is not None and name in problem and "another base model" in problem

