"""Bearer-token authentication of the /v1 routes when the server runs with --api-key."""
from __future__ import annotations

import hmac

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mistralrs.server.errors import APIError


def bearer_auth(api_key: str):
    """A FastAPI dependency refusing requests without `Authorization: Bearer <api_key>` (401)."""
    scheme = HTTPBearer(auto_error=False, description="the server's --api-key")
    expected = api_key.encode()

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(),
                                                          expected):
            raise APIError(401, "missing or wrong API key: send the server's key as "
                                "`Authorization: Bearer <key>`", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    return check
