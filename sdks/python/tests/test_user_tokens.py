"""User tokens against the real server: tokens minted offline from GET /v1/settings
and tokens from create_user_token read their own user's usage and credits with the
publishable key; expired, altered, forged and misplaced tokens are refused with the
contract's codes."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Iterator, Optional

import httpx
import pytest
from conftest import Server, admin

from tollgate import AsyncTollgate, Tollgate, TollgateError, mint_user_token


@pytest.fixture
def tg(server: Server) -> Iterator[Tollgate]:
    with Tollgate(base_url=server.url, secret_key=server.secret) as client:
        yield client


@pytest.fixture(scope="module")
def settings(server: Server) -> dict:
    return admin(server, "GET", "/v1/settings")


@pytest.fixture
def users(tg: Tollgate) -> tuple:
    """Fresh users A and B with different usage (2 and 4 images), so an answer shows
    whose it is; A also holds a pack of 10 credits."""
    a, b = (f"u_{uuid.uuid4().hex[:12]}" for _ in range(2))
    tg.track(user_id=a, event="image.render", quantity=2)
    tg.track(user_id=b, event="image.render", quantity=4)
    tg.grant_credits(user_id=a, pack_id="pack10")
    return a, b


def mint(settings: dict, user_id: str, **extra) -> str:
    """A token minted offline from the settings' three values."""
    args = dict(
        token_secret=settings["tokenSecret"],
        project_id=settings["projectId"],
        environment=settings["environment"],
        user_id=user_id,
    )
    args.update(extra)
    return mint_user_token(**args).token


def browser(server: Server, token: str, publishable: Optional[str] = None) -> Tollgate:
    """A browser's client: the publishable key and a user token, nothing else."""
    key = publishable or server.publishable
    return Tollgate(server.url, publishable_key=key, user_token=token, max_retries=0)


def refused(server: Server, token: str, status: int, code: str, publishable: Optional[str] = None):
    with browser(server, token, publishable) as client:
        with pytest.raises(TollgateError) as err:
            client.me_usage()
    assert (err.value.status, err.value.code) == (status, code), err.value


def payload_of(token: str) -> dict:
    body = token[len("tg_ut_") :].split(".")[0]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def images(answer) -> int:
    return next(x for x in answer.limits if x.limit_id == "images").used


# -- accepted -----------------------------------------------------------------------


def test_settings_give_what_mint_needs(settings: dict):
    assert settings["tokenSecret"].startswith("tg_ts_test_")
    assert len(settings["tokenSecret"]) == len("tg_ts_test_") + 43
    assert settings["projectId"].startswith("prj_")
    assert settings["environment"] == "test"


def test_an_offline_token_reads_its_users_usage_and_credits(
    server: Server, tg: Tollgate, settings: dict, users: tuple
):
    a, _ = users
    with browser(server, mint(settings, a)) as client:
        usage = client.me_usage()
        assert (usage.user_id, images(usage)) == (a, 2)
        assert usage.raw == tg.usage(a).raw
        assert client.me_usage(event="image.render").raw == tg.usage(a, event="image.render").raw
        credits = client.me_credits()
        assert (credits.user_id, credits.packs[0].available) == (a, 10)
        assert credits.raw == tg.credits(a).raw


def test_create_user_token_is_accepted_and_expires_ttl_seconds_from_now(
    server: Server, tg: Tollgate, settings: dict, users: tuple
):
    a, b = users
    before = int(time.time())
    created = tg.create_user_token(a, ttl_seconds=120)
    expires = datetime.strptime(created.expires_at, "%Y-%m-%dT%H:%M:%SZ")
    exp = int(expires.replace(tzinfo=timezone.utc).timestamp())
    assert before + 120 <= exp <= int(time.time()) + 120
    assert payload_of(created.token) == {
        "v": 1, "prj": settings["projectId"], "env": "test", "sub": a, "exp": exp,
    }  # fmt: skip
    with browser(server, created.token) as client:
        assert images(client.me_usage()) == 2

    by_default = tg.create_user_token(b)
    assert 3590 < payload_of(by_default.token)["exp"] - time.time() <= 3600
    with browser(server, by_default.token) as client:
        assert client.me_usage().user_id == b


def test_create_user_token_ttl_limits(tg: Tollgate, users: tuple):
    a, _ = users
    tg.create_user_token(a, ttl_seconds=86_400)
    for bad in (0, 86_401):
        with pytest.raises(TollgateError) as err:
            tg.create_user_token(a, ttl_seconds=bad)
        assert (err.value.status, err.value.code, err.value.field) == (
            400,
            "invalid_request",
            "ttlSeconds",
        )


def test_a_live_token_works_with_the_live_publishable_key(server: Server, users: tuple):
    a, _ = users
    live = admin(server, "GET", "/v1/settings", key=server.live_secret)
    assert live["environment"] == "live"
    token = mint(live, a)
    with browser(server, token, server.live_publishable) as client:
        assert client.me_usage().user_id == a
    refused(server, token, 403, "forbidden")


@pytest.mark.asyncio
async def test_the_async_client_creates_and_reads(server: Server, users: tuple):
    a, _ = users
    async with AsyncTollgate(server.url, server.secret) as atg:
        created = await atg.create_user_token(a, ttl_seconds=60)
    async with AsyncTollgate(
        server.url, publishable_key=server.publishable, user_token=created.token
    ) as browser_client:
        usage = await browser_client.me_usage()
        credits = await browser_client.me_credits()
    assert (usage.user_id, images(usage), credits.user_id) == (a, 2, a)


# -- refused ------------------------------------------------------------------------


def test_a_token_for_a_never_reads_b(server: Server, settings: dict, users: tuple):
    a, b = users
    token = mint(settings, a)
    with browser(server, token) as client:
        usage = client.me_usage()
    assert (usage.user_id, images(usage)) == (a, 2), "A's usage, not B's 4"
    headers = {"Authorization": f"Bearer {server.publishable}", "X-Tollgate-User-Token": token}
    # No parameter names another user: one that tries is ignored or refused, never obeyed.
    probe = httpx.get(f"{server.url}/v1/me/usage", params={"userId": b}, headers=headers)
    if probe.status_code == 200:
        assert probe.json()["userId"] == a
    else:
        assert 400 <= probe.status_code < 500, probe.text
    # B's own route needs the secret key, whatever token comes with the publishable key.
    assert httpx.get(f"{server.url}/v1/users/{b}/usage", headers=headers).status_code == 403


def test_an_expired_token_is_401(server: Server, settings: dict, users: tuple):
    a, _ = users
    past = datetime.now(timezone.utc) - timedelta(hours=2)
    refused(server, mint(settings, a, ttl_seconds=60, now=past), 401, "invalid_key")


def test_one_altered_character_is_401(server: Server, settings: dict, users: tuple):
    a, _ = users
    token = mint(settings, a)
    dot = token.index(".")
    for index in ((6 + dot) // 2, dot + 20):  # the middle of the payload; the signature
        altered = token[:index] + ("B" if token[index] == "A" else "A") + token[index + 1 :]
        refused(server, altered, 401, "invalid_key")


def test_as_signature_on_a_payload_naming_b_is_401(server: Server, settings: dict, users: tuple):
    a, b = users
    signature = mint(settings, a).split(".")[1]
    forged = mint(settings, b).split(".")[0]
    refused(server, f"{forged}.{signature}", 401, "invalid_key")


def test_a_test_token_with_the_live_publishable_key_is_403(
    server: Server, settings: dict, users: tuple
):
    a, _ = users
    refused(server, mint(settings, a), 403, "forbidden", server.live_publishable)


def test_a_token_for_another_project_is_403(server: Server, settings: dict, users: tuple):
    a, _ = users
    refused(server, mint(settings, a, project_id="prj_someoneelse"), 403, "forbidden")


def test_no_token_or_garbage_is_401(server: Server):
    bare = httpx.get(
        f"{server.url}/v1/me/usage", headers={"Authorization": f"Bearer {server.publishable}"}
    )
    assert (bare.status_code, bare.json()["error"]["code"]) == (401, "invalid_key")
    refused(server, "tg_ut_not-a-token", 401, "invalid_key")
