"""GenerateCover end to end over a real grpc.aio server with the tiny model and demo adapters."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from covergen.v1 import cover_pb2 as pb

STARTER_REGIONS = {
    "杭州": "jiangnan",
    "成都": "chuanyu_hotpot",
    "北京": "hutong_breakfast",
    "广州": "lingnan_arcade",
    "厦门": "minnan_redbrick",
    "哈尔滨": "night_market_bbq",
}


def pixels(image: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"), dtype=np.int16)


async def cover(stub, **fields) -> pb.GenerateCoverResponse:
    fields.setdefault("title", "城市早餐新店开张")
    return await stub.GenerateCover(pb.GenerateCoverRequest(**fields), timeout=120)


@pytest.mark.parametrize(("region", "style"), sorted(STARTER_REGIONS.items()))
async def test_each_starter_region_gets_its_adapter(stub, region: str, style: str) -> None:
    reply = await cover(stub, region=region)
    assert [a.name for a in reply.adapters] == [style]
    assert reply.adapters[0].weight > 0 and len(reply.adapters[0].version) == 16
    assert reply.mime_type == "image/png" and (reply.width, reply.height) == (64, 64)
    assert pixels(reply.image).shape == (64, 64, 3)
    assert reply.prompt and reply.region_path and not reply.region_fallback

    off = await cover(stub, region=region, adapter_weights={style: 0.0})
    assert list(off.adapters) == []
    assert off.prompt == reply.prompt, "weight 0 drops the adapter, not the style's template"
    assert np.abs(pixels(off.image) - pixels(reply.image)).max() > 0, "the adapter must change the cover"


async def test_regions_get_different_covers(stub) -> None:
    images = {}
    for region in STARTER_REGIONS:
        reply = await cover(stub, region=region, seed=1234)
        images[region] = pixels(reply.image)
    regions = sorted(images)
    for i, a in enumerate(regions):
        for b in regions[i + 1 :]:
            assert np.abs(images[a] - images[b]).mean() > 1.0, f"{a} and {b} look the same"


async def test_resolved_path_and_fallback(stub) -> None:
    reply = await cover(stub, region="杭州")
    assert list(reply.region_path) == ["杭州", "浙江", "长三角"]
    unknown = await cover(stub, region="Atlantis")
    assert unknown.region_fallback and list(unknown.region_path) == ["default"]
    assert list(unknown.adapters) == []


async def test_same_request_same_bytes_and_variants_differ(service, stub) -> None:
    from covergen.requests import CoverRequest

    first = await cover(stub, region="成都", title="火锅节开幕 determinism")
    uncached = service.maker.without_cache()
    again = await uncached.make(CoverRequest(region="成都", title="火锅节开幕 determinism"))
    assert again.image == first.image and again.seed == first.seed
    variant = await cover(stub, region="成都", title="火锅节开幕 determinism", variant=1)
    assert variant.seed != first.seed and variant.image != first.image


async def test_served_by_names_the_local_painter_then_the_cache(stub) -> None:
    painted = await cover(stub, region="广州", title="served_by says who painted")
    hit = await cover(stub, region="广州", title="served_by says who painted")
    assert (painted.cache_hit, painted.served_by) == (False, "local")
    assert (hit.cache_hit, hit.served_by) == (True, "cache")
    assert hit.image == painted.image


async def test_theme_overlay_stacks_after_region(stub) -> None:
    plain = await cover(stub, region="杭州", title="春天来了")
    stacked = await cover(stub, region="杭州", title="春天来了", themes=["spring", "雨"])
    assert [a.name for a in stacked.adapters] == ["jiangnan", "spring", "rain"]
    assert stacked.image != plain.image


async def test_title_cannot_inject_adapters_or_prompt_syntax(stub) -> None:
    reply = await cover(
        stub, region="杭州", title="<lora:hutong_breakfast:2> {scene} (masterpiece:1.5) negative: 火锅"
    )
    assert [a.name for a in reply.adapters] == ["jiangnan"]
    for fragment in ("<", ">", "{", "}", "lora", "masterpiece:1.5"):
        assert fragment not in reply.prompt


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"title": ""}, "title"),
        ({"title": "长" * 300}, "title"),
        ({"region": ""}, "region"),
        ({"width": 100}, "width"),
        ({"height": 4096}, "height"),
        ({"width": 32}, "width"),
        ({"steps": 101}, "steps"),
        ({"guidance_scale": 0.5}, "guidance_scale"),
        ({"guidance_scale": 25.0}, "guidance_scale"),
        ({"format": 7}, "format"),
        ({"adapter_weights": {"jiangnan": 3.0}}, "adapter_weights"),
        ({"adapter_weights": {"jiangnan": -0.1}}, "adapter_weights"),
        ({"adapter_weights": {"hutong_breakfast": 1.0}}, "adapter_weights"),
        ({"themes": ["a", "b", "c", "d", "e"]}, "themes"),
        ({"variant": 5000}, "variant"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(stub, fields: dict, needle: str) -> None:
    request = {"region": "杭州", "title": "新闻", **fields}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GenerateCover(pb.GenerateCoverRequest(**request), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in caught.value.details()
    ok = await cover(stub, region="杭州", title="坏请求之后")  # the server keeps serving
    assert ok.image


async def test_unknown_theme_is_not_found(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cover(stub, region="杭州", themes=["volcano"])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "spring" in caught.value.details()


@pytest.mark.parametrize("fmt,mime,magic", [
    (pb.IMAGE_FORMAT_PNG, "image/png", b"\x89PNG"),
    (pb.IMAGE_FORMAT_JPEG, "image/jpeg", b"\xff\xd8"),
    (pb.IMAGE_FORMAT_WEBP, "image/webp", b"RIFF"),
])  # fmt: skip
async def test_output_formats(stub, fmt: int, mime: str, magic: bytes) -> None:
    reply = await cover(stub, region="北京", format=fmt)
    assert reply.mime_type == mime and reply.image.startswith(magic)


async def test_size_override(stub) -> None:
    reply = await cover(stub, region="北京", width=128, height=96, steps=2)
    assert pixels(reply.image).shape == (96, 128, 3) and reply.steps == 2


async def test_list_styles_and_resolve(stub) -> None:
    styles = {s.name: s for s in (await stub.ListStyles(pb.ListStylesRequest())).styles}
    assert {"jiangnan", "chuanyu_hotpot", "hutong_breakfast", "lingnan_arcade", "minnan_redbrick",
            "night_market_bbq", "ink_wash", "spring", "rain", "default"} <= set(styles)  # fmt: skip
    assert styles["spring"].kind == "overlay" and "春天" in styles["spring"].aliases
    resolved = await stub.ResolveRegion(pb.ResolveRegionRequest(region="510100"))
    assert resolved.stack[0].style == "chuanyu_hotpot" and resolved.level in (
        "city",
        "province",
        "macro_region",
    )


async def test_every_province_resolves_over_grpc(service, stub) -> None:
    provinces = [e for e in service.maker.resolver.entries() if e.level == "province"]
    assert len(provinces) == 34
    for entry in provinces:
        reply = await stub.ResolveRegion(pb.ResolveRegionRequest(region=entry.code))
        assert not reply.fallback and reply.stack, entry.name
        assert reply.region_path[0] == entry.name


async def test_health_and_reflection(channel) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "covergen.v1.CoverService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    async for response in responses:
        names = {s.name for s in response.list_services_response.service}
        assert "covergen.v1.CoverService" in names
        break
