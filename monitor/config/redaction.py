"""Secrets masked for display: settings values, URLs with credentials in them."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

# A key whose value is a secret: any part of its snake_case name is one of these words.
_SECRET_WORDS = frozenset(
    {"token", "password", "passwd", "passphrase", "secret", "apikey", "privatekey", "credential"}
    | {"passwords", "secrets", "apikeys", "credentials"}
)
SECRET_MASK = "***"


def is_secret_key(key: str) -> bool:
    """True for names like token, api_key, openai_api_key, db_password, client_secret."""
    parts = re.split(r"[^a-z0-9]+", key.lower())
    joined = {a + b for a, b in itertools.pairwise(parts)}  # api_key -> apikey
    return bool(_SECRET_WORDS & (set(parts) | joined))


# A URL query or fragment parameter whose value is a credential: its name contains one of
# these (case-insensitively). Broader than is_secret_key on purpose: signed-URL and driver
# parameters (sig, X-Amz-Signature, sslpassword, pwd, jwt, AWSAccessKeyId) hide the secret in
# a longer name, and masking a harmless value in a message costs nothing.
_SECRET_PARAM = re.compile(r"key|token|secret|sig|auth|pass|pwd|jwt|credential", re.IGNORECASE)


def _mask_params(text: str, *, every: bool) -> str:
    """``name=value`` pairs (separated by '&' or ';') with secret values masked; ``every``
    masks every value (a fragment: it never reaches a server, so it holds only client data
    such as an OAuth access token)."""
    pairs = re.split(r"([&;])", text)
    for i in range(0, len(pairs), 2):
        name, eq, _ = pairs[i].partition("=")
        if eq and (every or _SECRET_PARAM.search(unquote(name))):
            pairs[i] = f"{name}={SECRET_MASK}"
    return "".join(pairs)


def _split_userinfo(rest: str) -> tuple[str, str]:
    """``rest`` (after ``scheme://``) as (userinfo, what follows its '@'); userinfo is empty
    when there is none. Passwords are often written unescaped, so a '?' or '#' after a
    ``user:`` does not end the authority: the userinfo runs to the last '@' before the path."""
    head = rest.split("/", 1)[0]
    if "@" not in head:
        return "", rest
    userinfo = head.rsplit("@", 1)[0]
    stop = min((i for i in map(userinfo.find, "?#") if i >= 0), default=len(userinfo))
    if stop < len(userinfo) and ":" not in userinfo[:stop]:
        return "", rest  # an '@' in a query value or fragment of a URL with no path
    return userinfo, rest[len(userinfo) + 1 :]


def mask_url(value: str) -> str:
    """A URL with its userinfo password (or a bare userinfo, often a token), the value of any
    query parameter whose name looks secret (:data:`_SECRET_PARAM`) and every fragment value
    masked; other strings unchanged."""
    scheme, sep, rest = value.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return value
    userinfo, rest = _split_userinfo(rest)
    if userinfo:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:{SECRET_MASK}@" if colon else f"{SECRET_MASK}@"
    rest, hash_, fragment = rest.partition("#")
    path, qmark, query = rest.partition("?")
    if qmark:
        query = _mask_params(query, every=False)
    if hash_:
        fragment = _mask_params(fragment, every=True)
    return f"{scheme}://{userinfo}{path}{qmark}{query}{hash_}{fragment}"


def redact(data: Any, key: str = "") -> Any:
    """Plain data (dicts, lists, scalars) with every secret masked: the values of secret-named
    keys (:func:`is_secret_key`) and credentials inside any URL (:func:`mask_url`). Generic by
    name so that settings added later are covered without a list to maintain."""
    if isinstance(data, Mapping):
        return {k: redact(v, str(k)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact(v, key) for v in data]
    if isinstance(data, str):
        if data and is_secret_key(key):
            return SECRET_MASK
        return mask_url(data)
    return data
