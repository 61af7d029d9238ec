"""Image URLs and SSRF: private, loopback, link-local and metadata addresses are refused on the
resolved address, redirects included, and never fetched (the loopback servers here count every
request they receive)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client import CollectorRegistry

from monitor.config import IngestSettings, Settings
from monitor.errors import ImageFetchError
from monitor.ingest.app import create_app
from monitor.ingest.image_urls import (
    AddressPolicy,
    ImageFetcher,
    IPAddress,
    Resolver,
    refusal_reason,
)
from monitor.ingest.service import IngestService
from monitor.metrics import MonitorMetrics
from monitor.store.repository import Repository
from tests.integration.ingest.conftest import TEST_INGEST, make_settings


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "teal").save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Site:
    """What a loopback test server answers, and every request it received."""

    redirect_to: str | None = None
    body: bytes = field(default_factory=png_bytes)
    delay: float = 0.0
    hits: list[str] = field(default_factory=list)


@contextmanager
def http_site(host: str, site: Site) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            site.hits.append(self.path)
            if site.delay:
                time.sleep(site.delay)
            if site.redirect_to is not None:
                self.send_response(302)
                self.send_header("Location", site.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(site.body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the fetcher hangs up on an oversize body
                self.wfile.write(site.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


ALLOWED = [
    "127.0.0.1",
    "127.0.0.2",
    "[::1]",
    "::1",
    "10.0.0.1",
    "169.254.169.254",
    "localhost",
    "0.0.0.0",
    "2130706433",
    "::ffff:127.0.0.1",
    "[::ffff:127.0.0.1]",
    "100.100.100.200",
]


def fetcher(policy: AddressPolicy = refusal_reason, **limits: Any) -> ImageFetcher:
    ingest = IngestSettings(image_url_hosts=ALLOWED, **limits)
    return ImageFetcher(ingest, max_bytes=1024 * 1024, address_policy=policy)


def only_127_0_0_1(address: IPAddress) -> str | None:
    """The test's stand-in for 'a public host': 127.0.0.1 passes, everything else as usual."""
    return None if str(address) == "127.0.0.1" else refusal_reason(address)


def fetch(f: ImageFetcher, url: str) -> bytes:
    async def run() -> bytes:
        try:
            return await f.fetch(url)
        finally:
            await f.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("[::1]", "loopback"),
        ("localhost", "loopback"),  # a name that resolves to loopback
        ("2130706433", "loopback"),  # 127.0.0.1 written as one decimal number
        ("[::ffff:127.0.0.1]", "loopback"),  # IPv4-mapped IPv6
        ("0.0.0.0", "unspecified"),
    ],
)
def test_loopback_urls_are_refused_and_never_fetched(host: str, why: str) -> None:
    site = Site()
    with http_site("127.0.0.1", site) as base:
        port = base.rsplit(":", 1)[1]
        with pytest.raises(ImageFetchError, match=why):
            fetch(fetcher(), f"http://{host}:{port}/cat.png")
    assert site.hits == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://10.0.0.1/cat.png", "private"),
        ("http://169.254.169.254/latest/meta-data/iam/", "link-local"),
        ("http://100.100.100.200/latest/meta-data/", "shared"),
    ],
)
def test_private_and_metadata_urls_are_refused_before_connecting(url: str, why: str) -> None:
    started = time.monotonic()
    with pytest.raises(ImageFetchError, match=why):
        fetch(fetcher(), url)
    assert time.monotonic() - started < 1.0  # refused on the address, no connect attempt


def test_redirect_to_loopback_is_refused_and_the_target_never_fetched() -> None:
    target = Site()
    with http_site("127.0.0.2", target) as target_url:
        hop = Site(redirect_to=f"{target_url}/cat.png")
        with (
            http_site("127.0.0.1", hop) as hop_url,
            pytest.raises(ImageFetchError, match=r"127\.0\.0\.2.*loopback"),
        ):
            fetch(fetcher(only_127_0_0_1), f"{hop_url}/start.png")
    assert hop.hits == ["/start.png"]  # the redirect was followed as far as its check
    assert target.hits == []


def test_redirect_to_an_allowed_address_is_followed() -> None:
    """Positive control for the test above: the redirect path does fetch when allowed."""
    target = Site()
    with http_site("127.0.0.1", target) as target_url:
        hop = Site(redirect_to=f"{target_url}/cat.png")
        with http_site("127.0.0.1", hop) as hop_url:
            assert fetch(fetcher(only_127_0_0_1), f"{hop_url}/start.png") == png_bytes()
    assert target.hits == ["/cat.png"]


def test_redirect_loops_size_and_time_limits() -> None:
    looping = Site()
    with http_site("127.0.0.1", looping) as url:
        looping.redirect_to = f"{url}/again"
        with pytest.raises(ImageFetchError, match="redirected more than 3"):
            fetch(fetcher(only_127_0_0_1), f"{url}/start")
    assert len(looping.hits) == 4
    with (
        http_site("127.0.0.1", Site(body=b"\x00" * (1024 * 1024 + 1))) as url,
        pytest.raises(ImageFetchError, match="over the limit"),
    ):
        fetch(fetcher(only_127_0_0_1), f"{url}/big.png")
    with http_site("127.0.0.1", Site(delay=2.0)) as url:
        started = time.monotonic()
        with pytest.raises(ImageFetchError, match="longer than"):
            fetch(fetcher(only_127_0_0_1, image_url_timeout="300ms"), f"{url}/slow.png")
        assert time.monotonic() - started < 1.5


def test_records_api_refuses_ssrf_urls_and_fetches_allowed_ones(repository: Repository) -> None:
    settings: Settings = make_settings(
        ingest=TEST_INGEST.model_copy(update={"image_url_hosts": ALLOWED})
    )
    metrics = MonitorMetrics(CollectorRegistry(), [s.name for s in settings.streams])
    service = IngestService(
        settings,
        repository,
        metrics,
        fetcher=ImageFetcher(settings.ingest, max_bytes=1024 * 1024, address_policy=only_127_0_0_1),
    )
    client = TestClient(create_app(settings, repository, metrics, ingest=service))
    inner = Site()
    with http_site("127.0.0.2", inner) as inner_url, http_site("127.0.0.1", Site()) as ok_url:
        hop = Site(redirect_to=f"{inner_url}/x.png")
        with http_site("127.0.0.1", hop) as hop_url:
            for url in (f"{inner_url}/x.png", f"{hop_url}/r.png", "http://169.254.169.254/"):
                answer = client.post(
                    "/v1/records",
                    json={"records": [{"prompt": "p"}, {"prompt": "q", "image": {"url": url}}]},
                )
                assert answer.status_code == 422, answer.text
                assert answer.json()["error"]["code"] == "image_url_refused"
                assert answer.json()["error"]["field"] == "records[1].image"
            assert inner.hits == []
            assert repository.inbox_depth() == 0
            fine = client.post("/v1/records", json={"prompt": "q", "image": f"{ok_url}/y.png"})
            assert fine.status_code == 202, fine.text
    (entry,) = repository.claim("w")
    assert entry.record.image == png_bytes() and entry.record.image_url is None


def resolving(answers: dict[str, list[str]]) -> Resolver:
    """A DNS stand-in: each name's addresses, in the order given."""

    async def resolve(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in answers[host]]

    return resolve


MIXED_ANSWERS = [
    (["127.0.0.1", "10.0.0.1"], "10.0.0.1", "private"),
    (["10.0.0.1", "127.0.0.1"], "10.0.0.1", "private"),
    (["127.0.0.1", "::1"], "::1", "loopback"),
    (["::1", "127.0.0.1"], "::1", "loopback"),
    (["127.0.0.1", "fd00::1"], "fd00::1", "private"),
    (["127.0.0.1", "::ffff:10.0.0.1"], "::ffff:a00:1", "embeds 10.0.0.1: private"),
    (["127.0.0.1", "169.254.169.254"], "169.254.169.254", "link-local"),
]


@pytest.mark.parametrize(("answer", "named", "why"), MIXED_ANSWERS)
def test_a_name_with_a_public_and_a_private_address_is_refused_and_never_fetched(
    answer: list[str], named: str, why: str
) -> None:
    """127.0.0.1 plays the public address (it passes the policy, and a fetch would reach the
    server here): any other address of the name must still refuse it, in either order."""
    site = Site()
    with http_site("127.0.0.1", site) as base:
        port = base.rsplit(":", 1)[1]
        f = ImageFetcher(
            IngestSettings(image_url_hosts=["img.example.com"]),
            max_bytes=1024 * 1024,
            resolver=resolving({"img.example.com": answer}),
            address_policy=only_127_0_0_1,
        )
        with pytest.raises(ImageFetchError) as caught:
            fetch(f, f"http://img.example.com:{port}/cat.png")
    assert f"resolves to {named}, which is {why}" in str(caught.value)
    assert site.hits == []


def test_a_name_with_only_passing_addresses_is_fetched_from_the_checked_address() -> None:
    """Positive control: the same name and policy fetch, over the network, from the address
    checked (the name itself resolves nowhere: only the pinned address can be reached)."""
    site = Site()
    with http_site("127.0.0.1", site) as base:
        port = base.rsplit(":", 1)[1]
        f = ImageFetcher(
            IngestSettings(image_url_hosts=["img.example.com"]),
            max_bytes=1024 * 1024,
            resolver=resolving({"img.example.com": ["127.0.0.1"]}),
            address_policy=only_127_0_0_1,
        )
        assert fetch(f, f"http://img.example.com:{port}/cat.png") == png_bytes()
    assert site.hits == ["/cat.png"]


def test_records_api_refuses_a_name_with_a_private_address_naming_it(
    repository: Repository,
) -> None:
    settings: Settings = make_settings(
        ingest=TEST_INGEST.model_copy(update={"image_url_hosts": ["img.example.com"]})
    )
    metrics = MonitorMetrics(CollectorRegistry(), [s.name for s in settings.streams])
    site = Site()
    with http_site("127.0.0.1", site) as base:
        port = base.rsplit(":", 1)[1]
        fetcher = ImageFetcher(
            settings.ingest,
            max_bytes=1024 * 1024,
            resolver=resolving({"img.example.com": ["127.0.0.1", "fd00::1"]}),
            address_policy=only_127_0_0_1,
        )
        service = IngestService(settings, repository, metrics, fetcher=fetcher)
        client = TestClient(create_app(settings, repository, metrics, ingest=service))
        answer = client.post(
            "/v1/records",
            json={"prompt": "q", "image": {"url": f"http://img.example.com:{port}/cat.png"}},
        )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "image_url_refused" and "fd00::1" in error["message"]
    assert site.hits == [] and repository.inbox_depth() == 0
