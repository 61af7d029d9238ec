"""ImageFetcher against hosts with several addresses: every resolved address is checked before
any connection, and the connection goes to a checked address (resolver and transport are the
fetcher's own injection points; the transport records every request it is handed)."""

from __future__ import annotations

import asyncio
import ipaddress

import httpx
import pytest

from monitor.config import IngestSettings
from monitor.errors import ImageFetchError
from monitor.ingest.image_urls import ImageFetcher, IPAddress

PNG = b"\x89PNG\r\n\x1a\n fake image bytes"
PUBLIC_V4 = ("93.184.215.14", "8.8.8.8")
PUBLIC_V6 = "2606:2800:21f:cb07::1"


class Network:
    """A fake DNS (name -> addresses, lookups counted) and a transport that records requests."""

    def __init__(self, names: dict[str, list[str]], redirects: dict[str, str] | None = None):
        self.names = names
        self.redirects = redirects or {}
        self.lookups: list[str] = []
        self.requests: list[httpx.Request] = []

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append(host)
        return [ipaddress.ip_address(a) for a in self.names[host]]

    def answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        location = self.redirects.get(request.headers["host"])
        if location is not None:
            return httpx.Response(302, headers={"Location": location})
        # A stream, as a network transport gives: the fetcher reads the body chunk by chunk.
        return httpx.Response(
            200, stream=httpx.ByteStream(PNG), headers={"Content-Type": "image/png"}
        )

    def fetch(self, url: str, *, field: str = "records[0].image") -> bytes:
        fetcher = ImageFetcher(
            IngestSettings(image_url_hosts=["*.example.com"]),
            max_bytes=1024,
            resolver=self.resolve,
            transport=httpx.MockTransport(self.answer),
        )

        async def run() -> bytes:
            try:
                return await fetcher.fetch(url, field=field)
            finally:
                await fetcher.aclose()

        return asyncio.run(run())


MIXED = [
    (PUBLIC_V4[0], "10.0.0.1", "private"),
    (PUBLIC_V4[0], "127.0.0.1", "loopback"),
    (PUBLIC_V4[0], "169.254.169.254", "link-local"),
    (PUBLIC_V4[0], "100.100.100.200", "shared"),
    (PUBLIC_V6, "::1", "loopback"),
    (PUBLIC_V6, "fd00::1", "private"),
    (PUBLIC_V6, "fe80::1", "link-local"),
    (PUBLIC_V4[0], "::ffff:10.0.0.1", "embeds 10.0.0.1: private"),
    (PUBLIC_V6, "::ffff:127.0.0.1", "embeds 127.0.0.1: loopback"),
]


@pytest.mark.parametrize("private_first", [False, True], ids=["public-first", "private-first"])
@pytest.mark.parametrize(("public", "private", "why"), MIXED)
def test_a_host_with_a_public_and_a_private_address_is_refused_before_connecting(
    public: str, private: str, why: str, private_first: bool
) -> None:
    addresses = [private, public] if private_first else [public, private]
    net = Network({"img.example.com": addresses})
    with pytest.raises(ImageFetchError) as caught:
        net.fetch("https://img.example.com/cat.png")
    message = str(caught.value)
    assert f"resolves to {ipaddress.ip_address(private)}, which is {why}" in message
    assert public not in message  # the refused address is the one named
    assert caught.value.field == "records[0].image"
    assert net.requests == []


def test_the_private_address_is_found_anywhere_in_a_long_answer() -> None:
    net = Network({"img.example.com": [*PUBLIC_V4, PUBLIC_V6, "192.168.1.7", "8.8.4.4"]})
    with pytest.raises(ImageFetchError, match=r"resolves to 192\.168\.1\.7, which is private"):
        net.fetch("http://img.example.com/cat.png")
    assert net.requests == []


def test_a_redirect_to_a_host_with_a_private_address_is_refused_before_connecting() -> None:
    net = Network(
        {"img.example.com": [PUBLIC_V4[0]], "cdn.example.com": [PUBLIC_V4[1], "fd00::1"]},
        redirects={"img.example.com": "https://cdn.example.com/cat.png"},
    )
    with pytest.raises(ImageFetchError, match=r"cdn\.example\.com' resolves to fd00::1"):
        net.fetch("https://img.example.com/start.png")
    assert [r.headers["host"] for r in net.requests] == ["img.example.com"]


@pytest.mark.parametrize(
    "addresses", [list(PUBLIC_V4), [PUBLIC_V6, PUBLIC_V4[0]], [PUBLIC_V4[1], PUBLIC_V6]]
)
def test_the_connection_is_pinned_to_a_checked_address(addresses: list[str]) -> None:
    """One lookup, then a request to a checked address itself: the name stays in Host and the
    TLS server name only, so no second DNS answer (rebinding) can redirect the connection."""
    net = Network({"img.example.com": addresses})
    assert net.fetch("https://img.example.com:8443/cat.png") == PNG
    assert net.lookups == ["img.example.com"]
    (request,) = net.requests
    assert str(ipaddress.ip_address(request.url.host)) in addresses
    assert request.url.port == 8443 and request.url.path == "/cat.png"
    assert request.headers["host"] == "img.example.com:8443"
    assert request.extensions["sni_hostname"] == "img.example.com"


def test_each_redirect_hop_is_resolved_once_and_pinned_to_its_own_addresses() -> None:
    net = Network(
        {"img.example.com": [PUBLIC_V4[0]], "cdn.example.com": [PUBLIC_V6]},
        redirects={"img.example.com": "http://cdn.example.com/cat.png"},
    )
    assert net.fetch("http://img.example.com/start.png") == PNG
    assert net.lookups == ["img.example.com", "cdn.example.com"]
    assert [(r.url.host, r.headers["host"]) for r in net.requests] == [
        (PUBLIC_V4[0], "img.example.com"),
        (PUBLIC_V6, "cdn.example.com"),
    ]
