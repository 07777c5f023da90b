"""Security: the admin token, TLS and mutual TLS on the gRPC port, names that try to leave
styles/, and request fields at and beyond their bounds."""

from __future__ import annotations

import datetime
import ipaddress
import math
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from covergen.v1 import cover_pb2 as pb
from covergen.v1 import cover_pb2_grpc as pb_grpc

SESSION_TOKEN = "test-admin-token"  # conftest's `service` fixture


# --- certificates made here ----------------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    key: bytes  # PEM
    cert: bytes  # PEM


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], common_name: str, *, server: bool) -> Credential:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Credential(key_pem, cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class Pki:
    ca_pem: bytes
    rogue_ca_pem: bytes
    server: Credential
    client: Credential
    rogue_client: Credential  # signed by a CA the server does not trust
    folder: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, rogue = make_ca("covergen test CA"), make_ca("rogue CA")
    pem = serialization.Encoding.PEM
    made = Pki(
        ca_pem=ca[1].public_bytes(pem),
        rogue_ca_pem=rogue[1].public_bytes(pem),
        server=issue(ca, "covergen server", server=True),
        client=issue(ca, "recommender", server=False),
        rogue_client=issue(rogue, "intruder", server=False),
        folder=folder,
    )
    (folder / "ca.pem").write_bytes(made.ca_pem)
    (folder / "server.pem").write_bytes(made.server.cert)
    (folder / "server.key").write_bytes(made.server.key)
    return made


async def _tls_service(pki: Pki, styles_dir: Path, make_settings: Callable[..., Any], mutual: bool) -> object:
    from covergen.server import start_service

    settings = make_settings(
        styles_dir=styles_dir, default_steps=2,
        tls_cert=pki.folder / "server.pem", tls_key=pki.folder / "server.key",
        tls_client_ca=pki.folder / "ca.pem" if mutual else None,
    )  # fmt: skip
    return await start_service(settings)


@pytest.fixture(scope="module")
async def tls_service(pki: Pki, styles_dir: Path, make_settings: Callable[..., Any]) -> AsyncIterator[object]:
    service = await _tls_service(pki, styles_dir, make_settings, mutual=False)
    yield service
    await service.stop(1.0)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
async def mtls_service(pki: Pki, styles_dir: Path, make_settings: Callable[..., Any]) -> AsyncIterator[object]:
    service = await _tls_service(pki, styles_dir, make_settings, mutual=True)
    yield service
    await service.stop(1.0)  # type: ignore[attr-defined]


def secure(port: int, root: bytes, client: Credential | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=client.key if client else None,
        certificate_chain=client.cert if client else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


async def list_styles(channel: grpc.aio.Channel) -> pb.ListStylesResponse:
    return await pb_grpc.CoverServiceStub(channel).ListStyles(pb.ListStylesRequest(), timeout=10)


async def refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await list_styles(channel)
    return caught.value.code()


# --- TLS and mTLS ---------------------------------------------------------------------------------


async def test_tls_port_serves_a_client_that_trusts_its_ca(tls_service, pki: Pki) -> None:
    async with secure(tls_service.port, pki.ca_pem) as channel:
        styles = await list_styles(channel)
        reply = await pb_grpc.CoverServiceStub(channel).GenerateCover(
            pb.GenerateCoverRequest(region="杭州", title="加密通道"), timeout=60
        )
    assert len(styles.styles) >= 10 and reply.image


async def test_tls_port_refuses_plaintext_and_untrusted_clients(tls_service, pki: Pki) -> None:
    assert await refused(grpc.aio.insecure_channel(f"127.0.0.1:{tls_service.port}")) == grpc.StatusCode.UNAVAILABLE
    assert await refused(secure(tls_service.port, pki.rogue_ca_pem)) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_needs_a_client_certificate_from_the_trusted_ca(mtls_service, pki: Pki) -> None:
    async with secure(mtls_service.port, pki.ca_pem, pki.client) as channel:
        assert (await list_styles(channel)).styles
    port = mtls_service.port
    assert await refused(secure(port, pki.ca_pem)) == grpc.StatusCode.UNAVAILABLE
    assert await refused(secure(port, pki.ca_pem, pki.rogue_client)) == grpc.StatusCode.UNAVAILABLE
    assert await refused(grpc.aio.insecure_channel(f"127.0.0.1:{port}")) == grpc.StatusCode.UNAVAILABLE


async def test_tls_needs_both_certificate_and_key(pki: Pki, styles_dir: Path) -> None:
    from covergen.errors import ConfigError
    from covergen.server import _bind
    from covergen.settings import Settings

    settings = Settings(host="127.0.0.1", grpc_port=0, styles_dir=styles_dir, tls_cert=pki.folder / "server.pem")
    with pytest.raises(ConfigError, match="COVERGEN_TLS_CERT and COVERGEN_TLS_KEY"):
        _bind(grpc.aio.server(), "127.0.0.1:0", settings)


# --- the admin token ------------------------------------------------------------------------------

ADMIN_CALLS = [
    ("ReloadStyles", pb.ReloadStylesRequest()),
    ("LoadAdapter", pb.LoadAdapterRequest(style="jiangnan")),
    ("UnloadAdapter", pb.UnloadAdapterRequest(style="jiangnan")),
]


@pytest.mark.parametrize(("rpc", "message"), ADMIN_CALLS, ids=[c[0] for c in ADMIN_CALLS])
async def test_admin_rpcs_are_off_without_a_configured_token(tls_service, pki: Pki, rpc: str, message: object) -> None:
    async with secure(tls_service.port, pki.ca_pem) as channel:
        admin = pb_grpc.AdminServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer anything"),), (("authorization", "Bearer "),)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await getattr(admin, rpc)(message, metadata=metadata, timeout=10)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "COVERGEN_ADMIN_TOKEN" in caught.value.details()


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong-token"),),
        (("authorization", "Bearer "),),
        (("authorization", SESSION_TOKEN),),  # no scheme
        (("authorization", f"Basic {SESSION_TOKEN}"),),
        (("authorization", f"Bearer {SESSION_TOKEN}x"),),
        (("authorization", f"Bearer {SESSION_TOKEN[:-1]}"),),
        (("x-admin-token", SESSION_TOKEN),),
    ],
    ids=["none", "wrong", "empty", "no-scheme", "basic", "longer", "prefix", "other-header"],
)
@pytest.mark.parametrize(("rpc", "message"), ADMIN_CALLS, ids=[c[0] for c in ADMIN_CALLS])
async def test_admin_rpcs_without_the_right_bearer_are_unauthenticated(
    channel, service, rpc: str, message: object, metadata: tuple
) -> None:
    resident = service.registry.resident_names()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(pb_grpc.AdminServiceStub(channel), rpc)(message, metadata=metadata, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer <COVERGEN_ADMIN_TOKEN>" in caught.value.details()
    assert SESSION_TOKEN not in caught.value.details()
    assert service.registry.resident_names() == resident, "a refused call changed the registry"


async def test_admin_rpcs_with_the_right_bearer_succeed(channel) -> None:
    admin = pb_grpc.AdminServiceStub(channel)
    bearer = (("authorization", f"Bearer {SESSION_TOKEN}"),)
    loaded = await admin.LoadAdapter(pb.LoadAdapterRequest(style="jiangnan"), metadata=bearer, timeout=30)
    assert len(loaded.version) == 16
    unloaded = await admin.UnloadAdapter(pb.UnloadAdapterRequest(style="jiangnan"), metadata=bearer, timeout=30)
    assert unloaded.unloaded
    report = await admin.ReloadStyles(pb.ReloadStylesRequest(), metadata=bearer, timeout=60)
    assert report.style_count >= 10 and not report.rejected


# --- names that try to leave styles/ --------------------------------------------------------------

ESCAPING_NAMES = [
    "../outside", "..", ".", "", "/etc/passwd", "jiangnan/../../outside", "jiangnan/../jiangnan",
    "..\\outside", "~root", "jiangnan\x00", "JIANGNAN", " jiangnan", "jiangnan/", "%2e%2e/outside",
    "styles/jiangnan", "\u202ejiangnan",
]  # fmt: skip


@pytest.fixture
def outside_adapter(styles_dir: Path) -> Path:
    """A valid adapter file just outside styles/, where '../outside' would lead."""
    folder = styles_dir.parent / "outside"
    folder.mkdir(exist_ok=True)
    shutil.copy(styles_dir / "jiangnan" / "adapter.safetensors", folder / "adapter.safetensors")
    return folder


@pytest.mark.parametrize("name", ESCAPING_NAMES)
@pytest.mark.parametrize("rpc", ["LoadAdapter", "UnloadAdapter"])
async def test_adapter_rpcs_never_resolve_names_outside_the_library(
    channel, service, outside_adapter: Path, rpc: str, name: str
) -> None:
    message = pb.LoadAdapterRequest(style=name) if rpc == "LoadAdapter" else pb.UnloadAdapterRequest(style=name)
    resident = service.registry.resident_names()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(pb_grpc.AdminServiceStub(channel), rpc)(
            message, metadata=(("authorization", f"Bearer {SESSION_TOKEN}"),), timeout=10
        )
    assert caught.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    assert "jiangnan" in caught.value.details(), "the message should list the known styles"
    assert service.registry.resident_names() == resident
    assert all(w.path is None or w.path.is_relative_to(service.settings.styles_dir.resolve())
               for w in map(service.registry.get_resident, service.registry.resident_names()) if w)  # fmt: skip


@pytest.mark.parametrize(
    ("card_adapter", "link"),
    [("../outside/adapter.safetensors", False), ("/etc/hostname", False), ("adapter.safetensors", True)],
    ids=["dotdot", "absolute", "symlink-out"],
)
async def test_reload_refuses_a_style_whose_adapter_leaves_the_library(
    channel, stub, service, styles_dir: Path, outside_adapter: Path, card_adapter: str, link: bool
) -> None:
    evil = styles_dir / "evil"
    evil.mkdir()
    card = (styles_dir / "jiangnan" / "style.yaml").read_text(encoding="utf-8")
    card = card.replace("name: jiangnan", "name: evil").replace("adapter: adapter.safetensors", f"adapter: {card_adapter}")
    (evil / "style.yaml").write_text(card, encoding="utf-8")
    if link:
        (evil / "adapter.safetensors").symlink_to(outside_adapter / "adapter.safetensors")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.AdminServiceStub(channel).ReloadStyles(
                pb.ReloadStylesRequest(), metadata=(("authorization", f"Bearer {SESSION_TOKEN}"),), timeout=60
            )
    finally:
        shutil.rmtree(evil)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
    assert "evil" in caught.value.details()
    names = {s.name for s in (await stub.ListStyles(pb.ListStylesRequest(), timeout=10)).styles}
    assert "evil" not in names and "jiangnan" in names, "the previous library must keep serving"
    assert "evil" not in service.registry.resident_names()


# --- request fields at and beyond their bounds ----------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"region": "杭" * 22}, "region"),  # 66 bytes
        ({"region": "   "}, "region"),
        ({"region": "\u202e\u200b"}, "region"),  # only bidi/zero-width marks
        ({"title": " \t\n "}, "title"),
        ({"title": "a" * 513}, "title"),
        ({"themes": ["x" * 33]}, "themes"),
        ({"themes": [""]}, "themes"),
        ({"adapter_weights": {f"s{i}": 1.0 for i in range(9)}}, "adapter_weights"),
        ({"adapter_weights": {"../jiangnan": 1.0}}, "adapter_weights"),
        ({"adapter_weights": {"jiangnan": math.nan}}, "adapter_weights"),
        ({"adapter_weights": {"jiangnan": math.inf}}, "adapter_weights"),
        ({"guidance_scale": math.nan}, "guidance_scale"),
        ({"guidance_scale": -math.inf}, "guidance_scale"),
        ({"seed": 2**63}, "seed"),
        ({"seed": 2**64 - 1}, "seed"),
        ({"width": 2048}, "width"),  # above the session server's COVERGEN_MAX_SIZE=256
        ({"height": 72 + 1}, "height"),
    ],
)
async def test_out_of_bounds_fields_are_invalid_argument(stub, fields: dict, needle: str) -> None:
    request = {"region": "杭州", "title": "边界", **fields}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GenerateCover(pb.GenerateCoverRequest(**request), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert needle in caught.value.details()


@pytest.mark.parametrize(
    "fields",
    [
        {"title": "长" * 170 + "ab"},  # exactly 512 bytes
        {"region": "x" * 64},  # 64 bytes, unknown: falls back
        {"themes": ["spring", "rain", "ink", "春天"]},
        {"seed": 2**63 - 1},
        {"adapter_weights": {"jiangnan": 2.0}},
        {"adapter_weights": {"jiangnan": 0.0}},
        {"variant": 1000},
    ],
    ids=["title-512-bytes", "region-64-bytes", "four-themes", "max-seed", "weight-2", "weight-0", "variant-1000"],
)
async def test_fields_at_their_bounds_are_served(stub, fields: dict) -> None:
    request = {"region": "杭州", "title": "边界", "steps": 1, **fields}
    reply = await stub.GenerateCover(pb.GenerateCoverRequest(**request), timeout=60)
    assert reply.image and reply.mime_type == "image/png"


async def test_an_oversized_request_is_refused_before_the_handler(stub, service) -> None:
    served = service.metrics.registry.get_sample_value(
        "covergen_requests_total", {"rpc": "GenerateCover", "code": "INVALID_ARGUMENT", "style": ""}
    ) or 0.0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GenerateCover(pb.GenerateCoverRequest(region="杭州", title="长" * 700_000), timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    after = service.metrics.registry.get_sample_value(
        "covergen_requests_total", {"rpc": "GenerateCover", "code": "INVALID_ARGUMENT", "style": ""}
    ) or 0.0
    assert after == served, "a 2 MB request must be refused by gRPC, not parsed by the servicer"
