"""Secrets inside URLs are masked: one case per secret parameter name through mask_url (the
commands that print URLs are covered in tests/integration/test_cli_secrets.py)."""

from __future__ import annotations

import pytest

from monitor.config import SECRET_MASK, mask_url

SECRET = "s3cr3tVALUE"

# Query parameter names whose value is a credential: each contains (case-insensitively) key,
# token, secret, sig, signature, auth, pass, pwd, jwt or credential.
SECRET_PARAMS = [
    "key",
    "api_key",
    "apiKey",
    "subscription-key",
    "token",
    "access_token",
    "id_token",
    "secret",
    "client_secret",
    "sig",
    "signature",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Goog-Signature",
    "auth",
    "authorization",
    "pass",
    "password",
    "sslpassword",
    "PassPhrase",
    "pwd",
    "jwt",
    "credential",
    "credentials",
    "AWSAccessKeyId",
    "X-Amz-Security-Token",
]

# Names that carry no secret: left readable (a masked sslmode would hide a real setting).
PLAIN_PARAMS = ["sslmode", "q", "n", "page", "model", "application_name", "connect_timeout"]


@pytest.mark.parametrize("name", SECRET_PARAMS)
def test_every_secret_query_parameter_is_masked(name: str) -> None:
    url = f"https://h.example/p?n=1&{name}={SECRET}&m=2"
    shown = mask_url(url)
    assert SECRET not in shown, shown
    assert shown == f"https://h.example/p?n=1&{name}={SECRET_MASK}&m=2"


@pytest.mark.parametrize("name", SECRET_PARAMS)
def test_secret_parameters_are_masked_whatever_their_case_and_escaping(name: str) -> None:
    escaped = "".join(f"%{ord(c):02X}" if c in "-_" else c for c in name.upper())
    shown = mask_url(f"postgresql://db/x?{escaped}={SECRET}")
    assert shown == f"postgresql://db/x?{escaped}={SECRET_MASK}"


@pytest.mark.parametrize("name", PLAIN_PARAMS)
def test_plain_query_parameters_stay_readable(name: str) -> None:
    url = f"postgresql+psycopg://db:5432/x?{name}=v1"
    assert mask_url(url) == url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # OAuth implicit flow: the token travels in the fragment.
        (
            f"https://app.example/cb#access_token={SECRET}&token_type=bearer&state=x",
            "https://app.example/cb#access_token=***&token_type=***&state=***",
        ),
        # A fragment with no query before it.
        (f"https://h/p#sig={SECRET}", "https://h/p#sig=***"),
        # A fragment after a query: both masked.
        (f"https://h/p?sig={SECRET}#jwt={SECRET}", "https://h/p?sig=***#jwt=***"),
        # A plain anchor stays.
        ("https://h/docs#install", "https://h/docs#install"),
        # ';' separates parameters too.
        (f"http://h/p?a=1;key={SECRET}", "http://h/p?a=1;key=***"),
        # A '?' or '#' inside a userinfo password (unescaped, as people write them) does not
        # end the authority early and leak the password as a query or fragment.
        (f"postgresql://u:{SECRET}#x?y@db/m", "postgresql://u:***@db/m"),
        # ... while an '@' inside a query value is no userinfo.
        ("http://h?q=a@b", "http://h?q=a@b"),
        # The userinfo password and a secret parameter together.
        (
            f"postgresql://u:{SECRET}@db/x?sslmode=require&sslpassword={SECRET}",
            "postgresql://u:***@db/x?sslmode=require&sslpassword=***",
        ),
    ],
)
def test_fragments_and_combinations(url: str, shown: str) -> None:
    assert mask_url(url) == shown
