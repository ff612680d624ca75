"""mint_user_token's format, checked without a server: known-answer vectors shared
with the TypeScript SDK's tests, the payload decoded and the HMAC recomputed here, the
input limits just inside and just outside; and the browser client's headers, through
a mock transport."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import math
import time

import httpx
import pytest

from tollgate import AsyncTollgate, Tollgate, UserToken, mint_user_token

# Known answers, computed apart from both SDKs (printf | base64 and
# `openssl dgst -sha256 -hmac`). The TypeScript SDK's test/user-token-format.test.mjs
# holds the same vectors: both SDKs must agree.
VECTORS = [
    (
        dict(
            token_secret="tg_ts_test_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
            project_id="prj_2x8R",
            environment="test",
            user_id="u_42",
            now=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        ),
        "tg_ut_eyJ2IjoxLCJwcmoiOiJwcmpfMng4UiIsImVudiI6InRlc3QiLCJzdWIiOiJ1XzQyIiwiZXhwIjoxNzY3MjI5MjAwfQ"
        ".Jjn3bV2cKh06pjA5EONvFJ7Cn4dXlbcn7EgKw71nQws",
        "2026-01-01T01:00:00Z",
    ),
    (
        # Non-ASCII, a quote and a slash: the JSON escapes and the UTF-8 must agree too.
        dict(
            token_secret="tg_ts_live___79_Pv6-fj39vX08_Lx8O_u7ezr6uno5-bl5OPi4eA",
            project_id="prj_2x8R",
            environment="live",
            user_id='ü "quoted" 😀/é',
            ttl_seconds=86_400,
            now=1767225600,
        ),
        "tg_ut_eyJ2IjoxLCJwcmoiOiJwcmpfMng4UiIsImVudiI6ImxpdmUiLCJzdWIiOiLDvCBcInF1b3RlZFwiIPCfmIAvw6kiLCJleHAiOjE3NjczMTIwMDB9"
        ".M2E4ZFwr_wgVgTH7VX8ApeFCHZ7nFs8HZdTD350z4mM",
        "2026-01-02T00:00:00Z",
    ),
]

SECRET = VECTORS[0][0]["token_secret"]
BASE = dict(token_secret=SECRET, project_id="prj_2x8R", environment="test", user_id="u_1")


def decode(token: str) -> tuple:
    """(signed part, signature, decoded payload) of a token."""
    signed, signature = token.split(".")
    assert signed.startswith("tg_ut_")
    body = signed[len("tg_ut_") :]
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return signed, signature, payload


@pytest.mark.parametrize("inputs,token,expires_at", VECTORS, ids=["ascii", "unicode"])
def test_known_answer_vectors(inputs: dict, token: str, expires_at: str):
    minted = mint_user_token(**inputs)
    assert isinstance(minted, UserToken)
    assert (minted.token, minted.expires_at) == (token, expires_at)
    assert minted.raw == {"token": token, "expiresAt": expires_at}


def test_the_payload_and_an_hmac_recomputed_here():
    now = dt.datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=dt.timezone.utc)
    minted = mint_user_token(**{**BASE, "user_id": "u_format"}, ttl_seconds=90, now=now)
    signed, signature, payload = decode(minted.token)
    exp = math.floor(now.timestamp()) + 90
    assert payload == {"v": 1, "prj": "prj_2x8R", "env": "test", "sub": "u_format", "exp": exp}
    expected = hmac.new(SECRET.encode(), signed.encode(), hashlib.sha256).digest()
    assert signature == base64.urlsafe_b64encode(expected).decode().rstrip("=")
    assert "=" not in minted.token and len(signature) == 43
    assert minted.expires_at == "2026-03-04T05:07:37Z"


def test_ttl_defaults_to_3600_and_now_to_the_current_time():
    before = math.floor(time.time())
    _, _, payload = decode(mint_user_token(**BASE).token)
    after = math.floor(time.time())
    assert before + 3600 <= payload["exp"] <= after + 3600


def test_ttl_seconds_limits():
    assert decode(mint_user_token(**BASE, ttl_seconds=1, now=0).token)[2]["exp"] == 1
    assert decode(mint_user_token(**BASE, ttl_seconds=86_400, now=0).token)[2]["exp"] == 86_400
    for bad in (0, 86_401, -1):
        with pytest.raises(ValueError, match="ttl_seconds"):
            mint_user_token(**BASE, ttl_seconds=bad)
    for wrong in (1.5, "60", True):
        with pytest.raises(TypeError, match="ttl_seconds"):
            mint_user_token(**BASE, ttl_seconds=wrong)


def test_user_id_limits():
    assert decode(mint_user_token(**{**BASE, "user_id": "é" * 128}).token)[2]["sub"] == "é" * 128
    assert decode(mint_user_token(**{**BASE, "user_id": "a" * 256}).token)[2]["sub"] == "a" * 256
    for bad, why in [
        ("", "1-256 UTF-8 bytes, not 0"),
        ("a" * 257, "not 257"),
        ("é" * 128 + "a", "not 257"),
        ("a\nb", "control characters"),
        ("tab\there", "control characters"),
        ("del\x7f", "control characters"),
        ("c1\x85", "control characters"),
        ("half\ud83d", "lone surrogate"),
    ]:
        with pytest.raises(ValueError, match=why):
            mint_user_token(**{**BASE, "user_id": bad})
    with pytest.raises(TypeError, match="user_id"):
        mint_user_token(**{**BASE, "user_id": 42})


def test_environment_must_be_the_secrets_own():
    with pytest.raises(ValueError, match="environment"):
        mint_user_token(**{**BASE, "environment": "prod"})
    with pytest.raises(ValueError, match='test environment\'s secret but environment is "live"'):
        mint_user_token(**{**BASE, "environment": "live"})
    live_secret = VECTORS[1][0]["token_secret"]
    with pytest.raises(ValueError, match='live environment\'s secret but environment is "test"'):
        mint_user_token(**{**BASE, "token_secret": live_secret})


def test_token_secret_must_be_whole_and_is_never_quoted():
    bad_secrets = [
        "",
        SECRET[:-1],
        SECRET + "A",
        SECRET.replace("tg_ts_", "tg_sk_"),
        SECRET[:-1] + "+",
    ]
    for bad in bad_secrets:
        with pytest.raises(ValueError, match="tg_ts_test_") as err:
            mint_user_token(**{**BASE, "token_secret": bad})
        assert SECRET[11:] not in str(err.value)
    with pytest.raises(TypeError, match="token_secret"):
        mint_user_token(**{**BASE, "token_secret": None})


def test_project_id_now_and_the_token_size():
    for bad in ("", "prj_", "project"):
        with pytest.raises(ValueError, match="project_id"):
            mint_user_token(**{**BASE, "project_id": bad})
    with pytest.raises(ValueError, match="aware"):
        mint_user_token(**BASE, now=dt.datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="now"):
        mint_user_token(**BASE, now="2026-01-01T00:00:00Z")
    assert len(mint_user_token(**{**BASE, "project_id": "prj_" + "x" * 400}).token) <= 1024
    with pytest.raises(ValueError, match="over the server's 1024"):
        mint_user_token(**{**BASE, "project_id": "prj_" + "x" * 800})


# -- the browser client's headers, through a mock transport ------------------------


def _recording() -> tuple:
    seen: list = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"userId": "u_1", "limits": [], "packs": []})

    return seen, handler


def test_me_calls_send_the_publishable_key_and_the_user_token():
    seen, handler = _recording()
    tokens = iter(["tg_ut_1", "tg_ut_2"])
    with Tollgate(
        "http://tg.test",
        secret_key="tg_sk_test_s",
        publishable_key="tg_pk_test_p",
        user_token=lambda: next(tokens),
        transport=httpx.MockTransport(handler),
    ) as tg:
        assert tg.me_usage(event="image.render").user_id == "u_1"
        assert tg.me_credits().user_id == "u_1"
        tg.usage("u_1")
    assert [str(r.url) for r in seen] == [
        "http://tg.test/v1/me/usage?event=image.render",
        "http://tg.test/v1/me/credits",
        "http://tg.test/v1/users/u_1/usage",
    ]
    assert [r.headers["authorization"] for r in seen] == [
        "Bearer tg_pk_test_p",
        "Bearer tg_pk_test_p",
        "Bearer tg_sk_test_s",
    ]
    assert [r.headers.get("x-tollgate-user-token") for r in seen] == ["tg_ut_1", "tg_ut_2", None]


def test_the_async_client_awaits_a_token_function():
    seen, handler = _recording()

    async def token() -> str:
        return "tg_ut_async"

    async def run() -> None:
        async with AsyncTollgate(
            "http://tg.test",
            publishable_key="tg_pk_test_p",
            user_token=token,
            transport=httpx.MockTransport(handler),
        ) as atg:
            await atg.me_usage()
            await atg.me_credits()

    asyncio.run(run())
    assert [r.headers["x-tollgate-user-token"] for r in seen] == ["tg_ut_async"] * 2
    assert {r.headers["authorization"] for r in seen} == {"Bearer tg_pk_test_p"}


def test_refused_locally():
    with pytest.raises(ValueError, match="secret_key .* or publishable_key"):
        Tollgate("http://tg.test")
    with pytest.raises(ValueError, match="publishable_key must be a publishable key"):
        Tollgate("http://tg.test", publishable_key="tg_sk_test_oops")
    seen, handler = _recording()
    transport = httpx.MockTransport(handler)
    with Tollgate("http://tg.test", publishable_key="tg_pk_test_p", transport=transport) as tg:
        with pytest.raises(ValueError, match="me_usage needs a user token"):
            tg.me_usage()
    with Tollgate("http://tg.test", secret_key="tg_sk_test_s", transport=transport) as tg:
        with pytest.raises(ValueError, match="me_credits needs publishable_key"):
            tg.me_credits()
    assert seen == []
