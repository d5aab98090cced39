"""API keys: with ``MUSICREC_API_KEY`` set, a route guarded here answers 401 unless the request
carries ``Authorization: Bearer <key>``.

The comparison is constant-time (``hmac.compare_digest``), and neither the expected nor the
offered key is ever logged or echoed: the 401 says only what is missing. The guard is added to a
route only when a key is configured, so the OpenAPI spec declares the bearer scheme exactly when
the server enforces it.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

_bearer = HTTPBearer(auto_error=False, scheme_name="apiKey",
                     description="The key set in MUSICREC_API_KEY, sent as `Authorization: Bearer <key>`.")

REFUSAL = "missing or wrong API key: send Authorization: Bearer <key>"


def key_guard(key: str) -> DependsParam:
    """A dependency that refuses requests without ``key`` (a non-empty string)."""
    if not isinstance(key, str) or not key:
        raise ValueError("an API key is a non-empty string")
    if not all("!" <= c <= "~" for c in key):  # what an HTTP header can carry as a bearer token
        raise ValueError("an API key is printable ASCII without spaces")
    expected = key.encode("ascii")

    def require_key(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        offered = b"" if credentials is None else credentials.credentials.encode("utf-8", "surrogateescape")
        # compare_digest over both byte strings: the time taken does not depend on where they differ
        if not hmac.compare_digest(offered, expected):
            raise HTTPException(401, REFUSAL, headers={"WWW-Authenticate": "Bearer"})

    return Depends(require_key)
