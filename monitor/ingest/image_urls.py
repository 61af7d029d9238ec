"""Fetching images by http(s) URL without becoming a door into the private network (SSRF).

Images by URL are fetched at ingest time, by the records API, before the record is enqueued:
the client learns at once (a 4xx naming the field) when a URL is refused or cannot be fetched,
and the inbox only ever holds image bytes. (The sidecar resolves the URLs of sampled exchanges
the same way, off the request path.)

The rules, all of which must pass for every hop of a redirect chain:

* the scheme is http or https, the URL carries no credentials;
* the host is in ``[ingest] image_url_hosts`` (exact, or ``*.example.com`` for subdomains);
  the list is empty by default, so no URL is ever fetched unless an operator allows hosts;
* the host name is resolved here, and **every** address it resolves to must be a public
  unicast address: loopback, private (RFC 1918, ULA), link-local (cloud metadata at
  169.254.169.254 included), shared/CGNAT, multicast, reserved and unspecified addresses are
  refused, IPv4-mapped and 6to4/Teredo IPv6 forms included;
* the connection then goes to the checked address itself (the URL is pinned to it; the Host
  header and the TLS server name stay the original name, so certificates are still verified),
  which closes the window where a second DNS answer could differ (DNS rebinding);
* redirects are followed by hand (at most ``image_url_max_redirects``), each target checked
  again as above; the body may not exceed ``encoders.image.max_bytes`` (checked on
  Content-Length and while streaming), and the whole fetch, redirects included, must finish
  within ``image_url_timeout``.

No proxy from the environment is used (``trust_env=False``) and connections are not reused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

import httpx

from monitor.config import IngestSettings
from monitor.errors import ImageFetchError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
AddressPolicy = Callable[[IPAddress], str | None]

_SHARED_V4 = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (Alibaba metadata too)


def refusal_reason(address: IPAddress) -> str | None:
    """Why an address may not be fetched from, or None for a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is not None:
            inner = refusal_reason(embedded)
            return f"embeds {embedded}: {inner}" if inner else None
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local (cloud metadata lives here)"),
        (address.is_multicast, "multicast"),
        (address.is_reserved, "reserved"),
        (address.is_private, "private"),
        (isinstance(address, ipaddress.IPv4Address) and address in _SHARED_V4, "shared (CGNAT)"),
        (not address.is_global, "not globally routable"),
    )
    for refused, reason in checks:
        if refused:
            return reason
    return None


def host_allowed(host: str, allowed_hosts: Sequence[str]) -> bool:
    """Exact host names, or ``*.example.com`` for any subdomain (not example.com itself)."""
    name = host.lower().rstrip(".")
    for entry in allowed_hosts:
        pattern = entry.lower().rstrip(".")
        if pattern.startswith("*."):
            if name.endswith(pattern[1:]) and len(name) > len(pattern) - 1:
                return True
        elif name == pattern:
            return True
    return False


def check_image_url(url: str, allowed_hosts: Sequence[str], *, field: str = "image") -> httpx.URL:
    """The URL parsed, if its scheme and host may be fetched; no DNS lookup yet."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise ImageFetchError(f"image URL is not a valid URL: {exc}", field=field) from exc
    if parsed.scheme not in ("http", "https"):
        raise ImageFetchError(
            f"image URL scheme {parsed.scheme!r} is refused: only http and https", field=field
        )
    if parsed.userinfo:
        raise ImageFetchError("image URLs may not carry credentials", field=field)
    if not parsed.host:
        raise ImageFetchError("image URL has no host", field=field)
    if not host_allowed(parsed.host, allowed_hosts):
        where = (
            "no image URL hosts are allowed ([ingest] image_url_hosts is empty)"
            if not allowed_hosts
            else "it is not in [ingest] image_url_hosts"
        )
        raise ImageFetchError(
            f"image URL host {parsed.host!r} is refused: {where}; send the image inline as a "
            "data URL",
            field=field,
        )
    return parsed


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for ``host``."""
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return [literal]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class ImageFetcher:
    """Fetches allowed image URLs under the rules of this module; one per app."""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        max_bytes: int,
        resolver: Resolver = system_resolver,
        address_policy: AddressPolicy = refusal_reason,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``transport``: where the pinned requests go (None: httpx's own, over the network);
        a test passes one that records every request it is handed."""
        self.allowed_hosts = tuple(settings.image_url_hosts)
        self.max_bytes = max_bytes
        self.max_redirects = settings.image_url_max_redirects
        self.timeout = settings.image_url_timeout.total_seconds()
        self._resolve = resolver
        self._policy = address_policy
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                trust_env=False,
                follow_redirects=False,
                timeout=httpx.Timeout(self.timeout),
                limits=httpx.Limits(max_keepalive_connections=0),
                transport=self._transport,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def fetch(self, url: str, *, field: str = "image") -> bytes:
        """The bytes at ``url``, or ImageFetchError saying why not (never a private address)."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._fetch(url, field)
        except TimeoutError as exc:
            raise ImageFetchError(
                f"image URL fetch took longer than {self.timeout:g} s", field=field
            ) from exc
        except httpx.HTTPError as exc:
            raise ImageFetchError(f"image URL fetch failed: {exc}", field=field) from exc

    async def _fetch(self, url: str, field: str) -> bytes:
        current = url
        for _hop in range(self.max_redirects + 1):
            target = check_image_url(current, self.allowed_hosts, field=field)
            address = await self._checked_address(target, field)
            response = await self._http().send(_pinned_request(target, address), stream=True)
            try:
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise ImageFetchError("image URL redirects nowhere", field=field)
                    current = str(target.join(location))
                    continue
                if response.status_code != 200:
                    raise ImageFetchError(
                        f"image URL answered HTTP {response.status_code}", field=field
                    )
                return await self._read_limited(response, field)
            finally:
                await response.aclose()
        raise ImageFetchError(
            f"image URL redirected more than {self.max_redirects} times", field=field
        )

    async def _checked_address(self, target: httpx.URL, field: str) -> IPAddress:
        port = target.port or (443 if target.scheme == "https" else 80)
        try:
            addresses = await self._resolve(target.host, port)
        except (OSError, UnicodeError) as exc:
            raise ImageFetchError(
                f"image URL host {target.host!r} does not resolve: {exc}", field=field
            ) from exc
        if not addresses:
            raise ImageFetchError(f"image URL host {target.host!r} has no address", field=field)
        for address in addresses:
            reason = self._policy(address)
            if reason is not None:
                raise ImageFetchError(
                    f"image URL host {target.host!r} resolves to {address}, which is {reason}: "
                    "refused",
                    field=field,
                )
        return addresses[0]

    async def _read_limited(self, response: httpx.Response, field: str) -> bytes:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise ImageFetchError(
                f"image URL body is {int(declared):,} bytes, over the limit of {self.max_bytes:,}",
                field=field,
            )
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_raw():
            total += len(chunk)
            if total > self.max_bytes:
                raise ImageFetchError(
                    f"image URL body is over the limit of {self.max_bytes:,} bytes", field=field
                )
            chunks.append(chunk)
        return b"".join(chunks)


def _pinned_request(target: httpx.URL, address: IPAddress) -> httpx.Request:
    """A GET to the checked address itself, the original name in Host and TLS SNI."""
    host_header = target.host if target.port is None else f"{target.host}:{target.port}"
    if ":" in target.host and target.port is None:
        host_header = f"[{target.host}]"
    elif ":" in target.host:
        host_header = f"[{target.host}]:{target.port}"
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return httpx.Request(
        "GET",
        target.copy_with(host=str(address)),
        headers={"Host": host_header, "Accept": "image/*", "Accept-Encoding": "identity"},
        extensions=extensions,
    )
