"""The webhook destination policy (SSRF): addresses, URLs, the settings, and the guarded connect.

GuardedBackend is driven with a fake resolver and a fake inner backend that records which
address it was asked to connect to; the TLS check talks to a local HTTPS server.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpcore
import pytest
from cryptography.fernet import Fernet

from runledger.analysis.webhook_policy import (
    DestinationPolicy,
    DestinationRefused,
    classify,
    parse_networks,
    url_problem,
)
from runledger.config import Settings
from services.analysis.webhooks import GuardedBackend, GuardedTransport, WebhookDispatcher

STRICT = DestinationPolicy()


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.0.0.5", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "reserved"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.10", "reserved"),
        ("198.18.0.1", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped forms are judged as the IPv4 address
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.1.2.3", "private"),
        ("64:ff9b::a00:5", "private"),  # NAT64 of 10.0.0.5
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("2002:a00:5::1", "private"),  # 6to4 of 10.0.0.5
        ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
        ("2001:db8::1", "reserved"),
        # Public: allowed.
        ("93.184.216.34", None),
        ("8.8.8.8", None),
        ("172.32.0.1", None),
        ("100.128.0.1", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
    ],
)
def test_addresses_are_classified(address: str, kind: str | None) -> None:
    import ipaddress

    assert classify(ipaddress.ip_address(address)) == kind
    assert STRICT.allows(address) is (kind is None)


def test_refusal_names_the_address_and_the_settings() -> None:
    with pytest.raises(DestinationRefused) as caught:
        STRICT.check("10.0.0.5")
    message = str(caught.value)
    assert "10.0.0.5 is a private address" in message
    assert "RUNLEDGER_WEBHOOK_ALLOWED_NETWORKS" in message
    assert "an unspecified address" in (STRICT.problem("0.0.0.0") or "")


def test_allowed_networks_open_only_themselves() -> None:
    policy = DestinationPolicy.of(["10.20.0.0/16", "fd00:1::/64", "127.0.0.1"])
    assert policy.allows("10.20.3.4")
    assert policy.allows("::ffff:10.20.3.4")  # the mapped form of an allowed address
    assert policy.allows("fd00:1::7")
    assert policy.allows("127.0.0.1")
    assert not policy.allows("127.0.0.2")
    assert not policy.allows("10.21.0.1")
    assert not policy.allows("169.254.169.254")
    assert not policy.allows("fd00:2::1")
    assert policy.allows("8.8.8.8")


def test_allow_private_networks_allows_everything() -> None:
    policy = DestinationPolicy.of(allow_private_networks=True)
    for address in ("127.0.0.1", "10.0.0.5", "169.254.169.254", "::1", "::ffff:192.168.0.1"):
        assert policy.allows(address), address


def test_parse_networks() -> None:
    assert [str(n) for n in parse_networks(["10.1.2.3/16", " ::1 "])] == ["10.1.0.0/16", "::1/128"]
    with pytest.raises(ValueError, match="not an IP network"):
        parse_networks(["10.0.0.0/33"])


def test_settings_read_comma_separated_or_json_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLEDGER_WEBHOOK_ALLOWED_NETWORKS", "10.1.2.3/16, fd00::/8")
    assert Settings().webhook_allowed_networks == ["10.1.0.0/16", "fd00::/8"]
    monkeypatch.setenv("RUNLEDGER_WEBHOOK_ALLOWED_NETWORKS", '["127.0.0.1"]')
    assert Settings().webhook_allowed_networks == ["127.0.0.1/32"]
    monkeypatch.setenv("RUNLEDGER_WEBHOOK_ALLOWED_NETWORKS", "")
    assert Settings().webhook_allowed_networks == []
    monkeypatch.setenv("RUNLEDGER_WEBHOOK_ALLOWED_NETWORKS", "not-a-network")
    with pytest.raises(ValueError, match="not an IP network"):
        Settings()
    monkeypatch.delenv("RUNLEDGER_WEBHOOK_ALLOWED_NETWORKS")
    assert Settings().webhook_allow_private_networks is False  # the default refuses


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://127.0.0.1:8123/", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]:8080/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://10.0.0.5/hook", "private"),
        ("http://user:pw@example.com/", "credentials"),
        ("https://token@example.com/", "credentials"),
        ("ftp://example.com/hook", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("http:///path", "host"),
        ("http://example.com:99999/", "not a valid URL"),
    ],
)
def test_bad_urls_are_refused(url: str, fragment: str) -> None:
    problem = url_problem(url, STRICT)
    assert problem is not None and fragment in problem and problem.startswith("url")


def test_good_urls_pass() -> None:
    for url in ("https://hooks.example.com/x?y=1", "http://8.8.8.8:8080/", "HTTPS://EXAMPLE.COM/"):
        assert url_problem(url, STRICT) is None, url
    # A hostname is judged by its addresses later (registration's lookup, every delivery).
    assert url_problem("http://localhost:8123/", STRICT) is None
    assert url_problem("http://127.0.0.1:8123/", DestinationPolicy.of(["127.0.0.0/8"])) is None


# --- GuardedBackend: resolve, check, connect to the checked address ---------------------------------


class FakeStream(httpcore.AsyncNetworkStream):
    def __init__(self, address: str) -> None:
        self.address = address


class FakeInner(httpcore.AsyncNetworkBackend):
    """Records connects; refuses the addresses in `down`."""

    def __init__(self, down: Iterable[str] = ()) -> None:
        self.connects: list[str] = []
        self.down = set(down)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append(host)
        if host in self.down:
            raise httpcore.ConnectError(f"{host} refused")
        return FakeStream(host)


def fixed(*addresses: str) -> object:
    async def resolver(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolver


async def test_backend_refuses_a_name_resolving_only_to_forbidden_addresses() -> None:
    inner = FakeInner()
    backend = GuardedBackend(STRICT, inner=inner, resolver=fixed("127.0.0.1", "::1"))  # type: ignore[arg-type]
    with pytest.raises(DestinationRefused, match=r"localhost resolves to 127\.0\.0\.1, ::1: destination 127"):
        await backend.connect_tcp("localhost", 80, timeout=1.0)
    assert inner.connects == []  # nothing was connected to


async def test_backend_connects_to_the_checked_address_not_the_name() -> None:
    # A name with a forbidden and a public address (the rebinding trick): only the public one is used,
    # by its IP, so a second DNS answer cannot change where the connection goes.
    inner = FakeInner()
    backend = GuardedBackend(STRICT, inner=inner, resolver=fixed("10.0.0.5", "93.184.216.34"))  # type: ignore[arg-type]
    stream = await backend.connect_tcp("rebind.example", 443, timeout=1.0)
    assert isinstance(stream, FakeStream) and stream.address == "93.184.216.34"
    assert inner.connects == ["93.184.216.34"]


async def test_backend_tries_the_next_allowed_address_and_honours_allowed_networks() -> None:
    inner = FakeInner(down={"10.20.0.1"})
    policy = DestinationPolicy.of(["10.20.0.0/16"])
    backend = GuardedBackend(policy, inner=inner, resolver=fixed("10.20.0.1", "10.20.0.2", "10.30.0.1"))  # type: ignore[arg-type]
    stream = await backend.connect_tcp("alerts.internal", 80, timeout=1.0)
    assert isinstance(stream, FakeStream) and stream.address == "10.20.0.2"
    assert inner.connects == ["10.20.0.1", "10.20.0.2"]


async def test_backend_resolution_errors_are_connect_errors() -> None:
    async def broken(host: str, port: int) -> list[str]:
        raise OSError(-2, "Name or service not known")

    backend = GuardedBackend(STRICT, inner=FakeInner(), resolver=broken)
    with pytest.raises(httpcore.ConnectError, match="cannot resolve"):
        await backend.connect_tcp("nowhere.invalid", 80, timeout=1.0)


async def test_transport_refuses_a_literal_loopback_url_before_any_connection() -> None:
    import httpx

    transport = GuardedTransport(STRICT, max_connections=1)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(DestinationRefused, match=r"127\.0\.0\.1 is a loopback address"):
            await client.post("http://127.0.0.1:8123/", content=b"{}")


async def test_tls_verifies_the_url_hostname_while_connecting_to_the_checked_address(
    tmp_path: Path,
) -> None:
    """httpcore passes the URL's host to start_tls apart from the address the backend connected to."""
    pytest.importorskip("cryptography")
    import httpx

    cert_file = _self_signed_localhost(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, tmp_path / "key.pem")
    seen_sni: list[str | None] = []
    server_context.sni_callback = lambda _sock, name, _ctx: seen_sni.append(name)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    connects: list[str] = []

    class Recording(httpcore.AnyIOBackend):
        async def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
            local_address: str | None = None,
            socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
        ) -> httpcore.AsyncNetworkStream:
            connects.append(host)
            return await super().connect_tcp(host, port, timeout, local_address, socket_options)

    transport = GuardedTransport(
        DestinationPolicy.of(["127.0.0.1/32"]),
        max_connections=1,
        inner=Recording(),
        resolver=fixed("127.0.0.1"),  # type: ignore[arg-type]
        ssl_context=ssl.create_default_context(cafile=str(cert_file)),
    )
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.post(f"https://localhost:{port}/", content=b"{}")
            assert r.status_code == 200
            assert connects == ["127.0.0.1"] and seen_sni == ["localhost"]
            # The certificate names localhost only: the same server by its IP fails verification.
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.post(f"https://127.0.0.1:{port}/", content=b"{}")
    finally:
        server.shutdown()
        server.server_close()


def _self_signed_localhost(directory: Path) -> Path:
    """A self-signed certificate for DNS:localhost (cert.pem) and its key (key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return directory / "cert.pem"


async def test_dispatcher_policy_defaults_to_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from runledger.config import get_settings

    monkeypatch.setenv("RUNLEDGER_WEBHOOK_ALLOWED_NETWORKS", "10.9.0.0/16")
    monkeypatch.setenv("RUNLEDGER_SECRETS_KEY", Fernet.generate_key().decode())  # no key file written
    get_settings.cache_clear()
    try:
        d = WebhookDispatcher(object())  # type: ignore[arg-type]
        assert d._policy.allows("10.9.1.1") and not d._policy.allows("10.8.1.1")
        await d.aclose()
    finally:
        get_settings.cache_clear()
