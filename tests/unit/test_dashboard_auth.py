"""The dashboard's HTTP Basic authentication (the ASGI middleware, offline) and `tidal dashboard --auth`."""

from __future__ import annotations

import asyncio
import base64

import pytest
from typer.testing import CliRunner

from tidal.cli.main import app
from tidal.monitor.dashboard import BasicAuth


def call(middleware: BasicAuth, path: str, authorization: bytes | None = None) -> tuple[int, dict[bytes, bytes]]:
    """One request through ``middleware``: the status and headers it answered with."""
    sent: list[dict] = []
    headers = [(b"authorization", authorization)] if authorization is not None else []

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(middleware({"type": "http", "path": path, "headers": headers, "method": "GET"}, receive, send))
    start = sent[0]
    return start["status"], dict(start.get("headers", []))


async def ok(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_basic_auth_lets_the_right_credentials_in_and_keeps_healthz_open():
    guard = BasicAuth(ok, "ops:pa:55")  # the password may hold a colon
    right = b"Basic " + base64.b64encode(b"ops:pa:55")
    assert call(guard, "/api/summary", right)[0] == 200
    for wrong in (None, b"", b"Basic " + base64.b64encode(b"ops:pa"), b"Bearer pa:55", right + b"x", right.lower()):
        status, headers = call(guard, "/api/summary", wrong)
        assert status == 401 and headers[b"www-authenticate"].startswith(b'Basic realm="tidal dashboard"')
    assert call(guard, "/healthz")[0] == 200


@pytest.mark.parametrize("credentials", ["nocolon", ":password", "user:", ""])
def test_credentials_must_be_user_colon_password(credentials):
    with pytest.raises(ValueError, match="USER:PASSWORD"):
        BasicAuth(ok, credentials)


def test_the_cli_refuses_bad_auth_before_serving():
    r = CliRunner().invoke(app, ["dashboard", "--no-kafka", "--port", "0", "--auth", "nocolon"])
    assert r.exit_code == 2 and "USER:PASSWORD" in r.output
