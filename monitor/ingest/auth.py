"""Bearer-token auth for the monitor's own endpoints.

``require_token`` is a FastAPI dependency: it compares the ``Authorization: Bearer <token>``
header with ``[server] token`` in constant time and answers 401 otherwise. With an empty token
(allowed on loopback only, see monitor.config) nothing is required. Health, readiness and
metrics do not use it; nor do the proxied OpenAI routes, whose ``Authorization`` header
belongs to the upstream. The token is read from ``request.app.state.settings`` (set by
``create_app``), so routers added by the daemon use the same dependency.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from monitor.config import Settings
from monitor.errors import MonitorError


class UnauthorizedError(MonitorError):
    """The request carries no bearer token, or the wrong one (answered 401)."""


def check_token(header: str | None, token: str) -> None:
    """Raise UnauthorizedError unless ``header`` is ``Bearer <token>`` (or no token is set)."""
    if not token:
        return
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise UnauthorizedError("this endpoint needs an Authorization: Bearer <token> header")
    if not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
        raise UnauthorizedError("the bearer token is not valid")


async def require_token(request: Request) -> None:
    """FastAPI dependency for the monitor's own routes."""
    settings: Settings = request.app.state.settings
    check_token(request.headers.get("authorization"), settings.server.token)
