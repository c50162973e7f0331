"""The one scrubber: credentials and signed-query secrets out of URLs and of any text.

Everything that leaves geomesh as text (run-log lines, audit details, outbox rows, error
messages at the CLI and app edges, ``TileResult.error``) goes through :func:`redact`.
GDAL, libcurl and HTTP clients echo the URL they failed on, with its ``user:password@``
and its ``?token=…`` / ``X-Amz-Signature=…`` query; :func:`redact` keeps the URL readable
(scheme, host, path, harmless parameters) and replaces each secret with ``***``.

Infrastructure: every layer may import it; it imports nothing from geomesh.
"""

from __future__ import annotations

import re
from typing import Any, Final
from urllib.parse import urlsplit

MASK: Final = "***"

#: query parameters whose value is a secret (compared lower-case)
SECRET_PARAMS: Final[frozenset[str]] = frozenset(
    {
        # generic tokens, keys and passwords
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth",
        "authorization",
        "key",
        "api_key",
        "apikey",
        "api-key",
        "password",
        "passwd",
        "pwd",
        "pass",
        "secret",
        "client_secret",
        "credential",
        "credentials",
        "session",
        "sessionid",
        "code",
        # signed URLs: AWS (v2 and v4), Google Cloud Storage, CloudFront, Azure SAS
        "signature",
        "sig",
        "awsaccesskeyid",
        "policy",
        "key-pair-id",
        "se",
        "sp",
        "st",
        "skoid",
        "sktid",
        "skt",
        "ske",
        "sks",
        "skv",
        "sdd",
    }
)
#: query parameter prefixes whose every parameter is part of a signature
SECRET_PREFIXES: Final[tuple[str, ...]] = ("x-amz-", "x-goog-", "x-ms-")

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{}]+")
_USERINFO = re.compile(r"(//)[^/@\s?#'\"]+@")
_PARAM = re.compile(r"([?&;])([^=&#\s'\"<>]+)=([^&#\s'\"<>]*)")


def is_secret_param(name: str) -> bool:
    low = name.lower()
    return low in SECRET_PARAMS or low.startswith(SECRET_PREFIXES)


def _param(m: re.Match[str]) -> str:
    sep, name, value = m.group(1), m.group(2), m.group(3)
    if is_secret_param(name) and value:
        return f"{sep}{name}={MASK}"
    return m.group(0)


def redact_url(url: str) -> str:
    """``url`` with its user info (``user:pass@``) and secret query values masked.

    ``https://u:p@h/x?X-Amz-Signature=abc&a=1`` → ``https://***@h/x?X-Amz-Signature=***&a=1``
    """
    return _PARAM.sub(_param, _USERINFO.sub(rf"\1{MASK}@", url))


def redact(text: str, *urls: str) -> str:
    """``text`` with every URL in it redacted, and with the secret parts of ``urls``
    (password, user name, secret query values) masked wherever a library echoed them
    without their scheme."""
    if not text:
        return text
    out = _URL.sub(lambda m: redact_url(m.group(0)), text)
    out = _USERINFO.sub(rf"\1{MASK}@", out)
    out = _PARAM.sub(_param, out)
    for url in urls:
        for secret in _secrets_of(url):
            out = out.replace(secret, MASK)
    return out


def _secrets_of(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
        password, username = parts.password, parts.username
    except ValueError:
        return []
    found = [s for s in (password, username) if s and len(s) >= 3]
    for m in _PARAM.finditer("?" + parts.query if parts.query else ""):
        if is_secret_param(m.group(2)) and len(m.group(3)) >= 3:
            found.append(m.group(3))
    return sorted(found, key=len, reverse=True)


def redact_value(value: Any) -> Any:
    """A JSON-like value with every string in it redacted (dicts, lists, tuples)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value
