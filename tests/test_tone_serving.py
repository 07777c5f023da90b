"""The tone guard over gRPC: a sensitive title is painted restrained, whatever the region."""

from __future__ import annotations

from covergen.v1 import cover_pb2 as pb


async def test_a_disaster_title_is_restrained_and_counted(stub, service) -> None:
    before = service.metrics.render().decode()
    reply = await stub.GenerateCover(
        pb.GenerateCoverRequest(region="杭州", title="四川地震救援进行中", themes=["spring"]), timeout=120
    )
    assert reply.tone == "restrained"
    assert list(reply.adapters) == []  # no jiangnan, no spring overlay: the neutral default style
    assert reply.prompt.startswith("documentary news illustration of sichuan, earthquake")
    assert "springtime style" not in reply.prompt and "jiangnan style" not in reply.prompt
    assert "festive" in reply.negative_prompt
    after = service.metrics.render().decode()
    line = 'covergen_tone_guarded_total{tone="restrained"}'
    count = {
        text: float(row.split()[-1])
        for text in (before, after)
        for row in text.splitlines()
        if row.startswith(line)
    }
    assert count[after] == count.get(before, 0.0) + 1


async def test_an_ordinary_title_keeps_its_region(stub) -> None:
    reply = await stub.GenerateCover(
        pb.GenerateCoverRequest(region="杭州", title="西湖春游人气旺"), timeout=120
    )
    assert reply.tone == ""
    assert [a.name for a in reply.adapters] == ["jiangnan"]
