"""The async client against the real server."""

from __future__ import annotations

import asyncio

import pytest
from conftest import Proxy, Server, dead_url, used_reserved

from tollgate import AsyncTollgate, FailOpen, QuotaExceeded, TollgateError, TollgateNetworkError

pytestmark = pytest.mark.asyncio


async def test_reserve_then_commit(server: Server, user: str):
    async with AsyncTollgate(base_url=server.url, secret_key=server.secret) as atg:
        r = await atg.reserve(user_id=user, event="image.render", quantity=2)
        assert r.allowed is True and r.limits[0].reserved == 2
        c = await atg.commit(r.reservation_id, quantity=1)
        assert (c.status, c.quantity) == ("committed", 1)
        usage = await atg.usage(user)
        assert (usage.limit("images").used, usage.limit("images").reserved) == (1, 0)


async def test_reserve_then_release_and_typed_errors(server: Server, user: str):
    async with AsyncTollgate(base_url=server.url, secret_key=server.secret) as atg:
        r = await atg.reserve(user_id=user, event="image.render")
        await atg.release(r.reservation_id)
        with pytest.raises(TollgateError) as err:
            await atg.commit(r.reservation_id)
        assert (err.value.status, err.value.reservation_status) == (409, "released")
    assert used_reserved(server, user) == (0, 0)


async def test_a_race_of_50_reserves_admits_exactly_the_quota(server: Server, user: str):
    async with AsyncTollgate(base_url=server.url, secret_key=server.secret) as atg:
        answers = await asyncio.gather(
            *(atg.reserve(user_id=user, event="image.render") for _ in range(50))
        )
    assert sum(a.allowed for a in answers) == 5
    assert used_reserved(server, user) == (0, 5)


async def test_a_dropped_reserve_answer_retried_holds_once(server: Server, proxy: Proxy, user: str):
    proxy.mode, proxy.drop_path = "drop", "/v1/reserve"
    async with AsyncTollgate(base_url=proxy.url, secret_key=server.secret) as atg:
        r = await atg.reserve(user_id=user, event="image.render")
    assert r.allowed is True
    assert proxy.seen.count("POST /v1/reserve") == 2
    assert used_reserved(server, user) == (0, 1)


async def test_helper_commits_on_success(server: Server, user: str):
    async with AsyncTollgate(base_url=server.url, secret_key=server.secret) as atg:
        async with atg.reservation(user_id=user, event="image.render", quantity=3) as r:
            assert used_reserved(server, user) == (0, 3)
            r.quantity = 1
    assert r.commit_result is not None and r.commit_result.quantity == 1
    assert used_reserved(server, user) == (1, 0)


async def test_helper_releases_on_exception(server: Server, user: str):
    async with AsyncTollgate(base_url=server.url, secret_key=server.secret) as atg:
        with pytest.raises(KeyError):
            async with atg.reservation(user_id=user, event="image.render", quantity=2):
                raise KeyError("provider failed")
        with pytest.raises(QuotaExceeded) as denied:
            async with atg.reservation(user_id=user, event="image.render", quantity=6):
                pytest.fail("the block must not run when denied")
    assert denied.value.answer.denied_by == ["images"]
    assert used_reserved(server, user) == (0, 0)


async def test_helper_extends_while_the_block_runs(server: Server, user: str):
    async with AsyncTollgate(base_url=server.url, secret_key=server.secret) as atg:
        async with atg.reservation(user_id=user, event="image.render", ttl_seconds=2) as r:
            await asyncio.sleep(3.2)
            assert (await atg.get_reservation(r.reservation_id)).status == "pending"
    assert r.commit_result is not None and r.commit_result.late is False


async def test_unreachable_closed_and_fail_open(user: str):
    async with AsyncTollgate(base_url=dead_url(), secret_key="tg_sk_test_x", max_retries=0) as atg:
        with pytest.raises(TollgateNetworkError):
            await atg.reserve(user_id=user, event="image.render")
    policy = FailOpen(units_per_user_per_hour=1)
    async with AsyncTollgate(
        base_url=dead_url(), secret_key="tg_sk_test_x", max_retries=0, on_unreachable=policy
    ) as atg:
        a = await atg.reserve(user_id=user, event="image.render")
        b = await atg.reserve(user_id=user, event="image.render")
        assert (a.allowed, a.fail_open, b.allowed) == (True, True, False)
        await atg.commit(a.reservation_id, quantity=1)
        assert [p.quantity for p in atg.pending_fail_open()] == [1]
