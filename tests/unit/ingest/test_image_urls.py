"""The SSRF policy as pure functions: which addresses, hosts and URLs are refused."""

from __future__ import annotations

import ipaddress

import pytest

from monitor.errors import ImageFetchError
from monitor.ingest.image_urls import check_image_url, host_allowed, refusal_reason


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "private"),  # AWS metadata over IPv6
        ("100.100.100.200", "shared"),  # Alibaba metadata, CGNAT range
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
        ("192.0.2.10", "private"),  # documentation range
        ("198.18.0.1", "private"),  # benchmarking range
    ],
)
def test_refused_addresses(address: str, reason: str) -> None:
    found = refusal_reason(ipaddress.ip_address(address))
    assert found is not None and reason in found


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:2800:21f:cb07::1"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_host_allow_list_exact_and_wildcard() -> None:
    allowed = ["cdn.example.com", "*.images.example.org"]
    assert host_allowed("cdn.example.com", allowed)
    assert host_allowed("CDN.Example.com.", allowed)
    assert host_allowed("a.images.example.org", allowed)
    assert host_allowed("a.b.images.example.org", allowed)
    assert not host_allowed("images.example.org", allowed)
    assert not host_allowed("evilimages.example.org", allowed)
    assert not host_allowed("cdn.example.com.evil.net", allowed)
    assert not host_allowed("anything", [])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://cdn.example.com/a.png", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("https://user:pw@cdn.example.com/a.png", "credentials"),
        ("https://other.example.com/a.png", "image_url_hosts; send"),
        ("http://[::1", "not a valid URL"),
    ],
)
def test_check_image_url_refusals(url: str, message: str) -> None:
    with pytest.raises(ImageFetchError, match=message) as caught:
        check_image_url(url, ["cdn.example.com"], field="records[2].image")
    assert caught.value.field == "records[2].image"


def test_check_image_url_accepts_allowed_and_empty_list_refuses_all() -> None:
    assert check_image_url("https://cdn.example.com/a.png", ["cdn.example.com"]).host == (
        "cdn.example.com"
    )
    with pytest.raises(ImageFetchError, match="image_url_hosts is empty"):
        check_image_url("https://cdn.example.com/a.png", [])
