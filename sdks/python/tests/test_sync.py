"""The sync client against the real server."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import Proxy, Server, admin, dead_url, used_reserved

from tollgate import (
    FailOpen,
    QuotaExceeded,
    Tollgate,
    TollgateError,
    TollgateNetworkError,
)


@pytest.fixture
def tg(server: Server):
    with Tollgate(base_url=server.url, secret_key=server.secret) as client:
        yield client


def test_reserve_then_commit_counts_the_final_quantity(tg: Tollgate, server: Server, user: str):
    r = tg.reserve(user_id=user, event="image.render", quantity=3, metadata={"model": "m1"})
    assert r.allowed is True
    assert r.reservation_id is not None and r.reservation_id.startswith("rsv_")
    assert r.limits[0].limit_id == "images"
    assert (r.limits[0].reserved, r.limits[0].remaining) == (3, 2)
    assert r.raw["reservationId"] == r.reservation_id

    c = tg.commit(r.reservation_id, quantity=2, cost_micros=1500)
    assert (c.status, c.quantity, c.overage, c.late) == ("committed", 2, 0, False)
    assert c.event_id is not None and c.event_id.startswith("evt_")
    assert used_reserved(server, user) == (2, 0)

    got = tg.get_reservation(r.reservation_id)
    assert (got.status, got.quantity, got.event_id, got.user_id) == (
        "committed",
        2,
        c.event_id,
        user,
    )
    page = tg.events(user_id=user, status="committed")
    assert [(e.event_id, e.quantity, e.cost_micros) for e in page.events] == [(c.event_id, 2, 1500)]


def test_reserve_then_release_returns_the_hold(tg: Tollgate, server: Server, user: str):
    r = tg.reserve(user_id=user, event="image.render", quantity=2)
    assert used_reserved(server, user) == (0, 2)
    rel = tg.release(r.reservation_id, reason="provider_error", error_code="timeout")
    assert rel.status == "released"
    assert rel.limits[0].reserved == 0
    assert used_reserved(server, user) == (0, 0)
    assert tg.usage(user).limit("images").remaining == 5


def test_denied_reserve_is_an_answer_not_an_error(tg: Tollgate, user: str):
    r = tg.reserve(user_id=user, event="image.render", quantity=6)
    assert r.allowed is False
    assert r.reservation_id is None
    assert r.reasons == ["limit_reached"]
    assert r.denied_by == ["images"]


def test_extend_track_and_check(tg: Tollgate, server: Server, user: str):
    r = tg.reserve(user_id=user, event="image.render", ttl_seconds=5)
    e = tg.extend(r.reservation_id, ttl_seconds=600)
    assert e.status == "pending" and e.expires_at is not None and e.expires_at > r.expires_at
    t = tg.track(user_id=user, event="llm.tokens", quantity=250, cost_micros=31)
    assert (t.recorded, t.allowed, t.match_status, t.overage) == (True, True, "matched", 0)
    assert t.limits[0].used == 250
    ch = tg.check(user_id=user, event="llm.tokens", quantity=751)
    assert (ch.allowed, ch.denied_by) == (False, ["tokens"])
    assert tg.check(user_id=user, event="llm.tokens", quantity=750).allowed is True
    assert used_reserved(server, user, "tokens") == (250, 0)


def test_a_race_of_50_reserves_admits_exactly_the_quota(tg: Tollgate, server: Server, user: str):
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(
            pool.map(lambda _: tg.reserve(user_id=user, event="image.render"), range(50))
        )
    assert sum(a.allowed for a in answers) == 5
    assert len({a.reservation_id for a in answers if a.allowed}) == 5
    assert used_reserved(server, user) == (0, 5)


def test_a_dropped_reserve_answer_retried_holds_once(server: Server, proxy: Proxy, user: str):
    proxy.mode, proxy.drop_path = "drop", "/v1/reserve"
    with Tollgate(base_url=proxy.url, secret_key=server.secret, max_retries=2) as tg:
        r = tg.reserve(user_id=user, event="image.render")
        assert r.allowed is True
        assert proxy.seen.count("POST /v1/reserve") == 2  # the first answer was lost
        assert used_reserved(server, user) == (0, 1)
        tg.commit(r.reservation_id)
    assert used_reserved(server, user) == (1, 0)


def test_a_503_is_retried_and_counts_once(server: Server, proxy: Proxy, user: str):
    proxy.mode, proxy.drop_path = "unavailable", "/v1/track"
    with Tollgate(base_url=proxy.url, secret_key=server.secret) as tg:
        t = tg.track(user_id=user, event="image.render", quantity=2)
    assert t.recorded is True
    assert proxy.seen.count("POST /v1/track") == 2
    assert used_reserved(server, user) == (2, 0)


def test_retry_after_is_honoured(server: Server, proxy: Proxy, user: str):
    proxy.mode, proxy.drop_path, proxy.retry_after = "unavailable", "/v1/check", "1"
    with Tollgate(base_url=proxy.url, secret_key=server.secret) as tg:
        started = time.monotonic()
        assert tg.check(user_id=user, event="image.render").allowed is True
        assert time.monotonic() - started >= 1.0
    assert proxy.seen.count("POST /v1/check") == 2


def test_no_retry_when_max_retries_is_zero(server: Server, proxy: Proxy, user: str):
    proxy.mode, proxy.drop_path = "unavailable", "/v1/reserve"
    with Tollgate(base_url=proxy.url, secret_key=server.secret, max_retries=0) as tg:
        with pytest.raises(TollgateError) as err:
            tg.reserve(user_id=user, event="image.render")
    assert (err.value.code, err.value.status) == ("unavailable", 503)
    assert used_reserved(server, user) == (0, 0)


def test_bad_key_is_401(server: Server, user: str):
    with Tollgate(base_url=server.url, secret_key="tg_sk_test_nope") as bad:
        with pytest.raises(TollgateError) as err:
            bad.reserve(user_id=user, event="image.render")
    assert (err.value.status, err.value.code) == (401, "invalid_key")
    assert not isinstance(err.value, TollgateNetworkError)


def test_negative_quantity_is_400_naming_the_field(tg: Tollgate, user: str):
    with pytest.raises(TollgateError) as err:
        tg.reserve(user_id=user, event="image.render", quantity=-1)
    assert (err.value.status, err.value.code, err.value.field) == (
        400,
        "invalid_request",
        "quantity",
    )


def test_unknown_reservation_is_404(tg: Tollgate):
    with pytest.raises(TollgateError) as err:
        tg.commit("rsv_doesnotexist")
    assert (err.value.status, err.value.code) == (404, "not_found")


def test_commit_after_release_is_409_and_a_double_commit_replays(tg: Tollgate, user: str):
    r = tg.reserve(user_id=user, event="image.render")
    first = tg.commit(r.reservation_id)
    again = tg.commit(r.reservation_id, quantity=4)  # idempotent: same answer, body ignored
    assert (again.event_id, again.quantity) == (first.event_id, 1)

    r2 = tg.reserve(user_id=user, event="image.render")
    tg.release(r2.reservation_id)
    with pytest.raises(TollgateError) as err:
        tg.commit(r2.reservation_id)
    assert (err.value.status, err.value.code, err.value.reservation_status) == (
        409,
        "reservation_not_pending",
        "released",
    )


def test_unreachable_closed_raises_a_network_error(user: str):
    with Tollgate(base_url=dead_url(), secret_key="tg_sk_test_x", max_retries=1) as tg:
        for call in (
            lambda: tg.reserve(user_id=user, event="image.render"),
            lambda: tg.check(user_id=user, event="image.render"),
            lambda: tg.track(user_id=user, event="image.render"),
        ):
            with pytest.raises(TollgateNetworkError) as err:
                call()
            assert (err.value.code, err.value.status) == ("network_error", 0)
        assert tg.pending_fail_open() == []


def test_fail_open_admits_within_budget_then_flushes_once(server: Server, proxy: Proxy, user: str):
    proxy.mode = "down"
    policy = FailOpen(units_per_user_per_hour=3)
    with Tollgate(
        base_url=proxy.url, secret_key=server.secret, max_retries=0, on_unreachable=policy
    ) as tg:
        a = tg.reserve(user_id=user, event="image.render", quantity=2)
        assert (a.allowed, a.fail_open, a.limits) == (True, True, [])
        assert a.reservation_id is not None and a.reservation_id.startswith("local_")
        denied = tg.reserve(user_id=user, event="image.render", quantity=2)
        assert (denied.allowed, denied.fail_open, denied.reservation_id) == (False, True, None)
        b = tg.reserve(user_id=user, event="image.render", quantity=1)
        assert b.allowed is True
        assert tg.check(user_id=user, event="image.render").allowed is False  # budget spent
        tg.commit(a.reservation_id)
        tg.release(b.reservation_id)  # gives its unit back to the hour's budget
        t = tg.track(user_id=user, event="image.render", quantity=1)
        assert (t.recorded, t.fail_open) == (True, True)
        pending = tg.pending_fail_open()
        assert [(p.user_id, p.quantity) for p in pending] == [(user, 2), (user, 1)]
        assert len({p.idempotency_key for p in pending}) == 2

        # Back up, but the first flushed answer is lost (and this client never retries):
        # flush raises, keeps the usage pending, and the next flush counts it once.
        proxy.mode, proxy.drop_path = "drop", "/v1/track"
        with pytest.raises(TollgateNetworkError):
            tg.flush()
        assert len(tg.pending_fail_open()) == 2
        results = tg.flush()
        assert [r.recorded for r in results] == [True, True]
        assert tg.pending_fail_open() == []
        assert tg.flush() == []
    assert used_reserved(server, user) == (3, 0)


def test_helper_commits_on_success(tg: Tollgate, server: Server, user: str):
    with tg.reservation(user_id=user, event="image.render", quantity=3) as r:
        assert used_reserved(server, user) == (0, 3)
        r.quantity = 2
        r.cost_micros = 700
    assert r.commit_result is not None
    assert (r.commit_result.quantity, r.commit_result.late) == (2, False)
    assert used_reserved(server, user) == (2, 0)


def test_helper_releases_on_exception_and_reraises(tg: Tollgate, server: Server, user: str):
    with pytest.raises(ZeroDivisionError):
        with tg.reservation(user_id=user, event="image.render", quantity=2) as r:
            assert used_reserved(server, user) == (0, 2)
            raise ZeroDivisionError("the provider failed")
    assert used_reserved(server, user) == (0, 0)
    assert tg.get_reservation(r.reservation_id).status == "released"


def test_helper_raises_quota_exceeded_with_the_answer(tg: Tollgate, server: Server, user: str):
    with pytest.raises(QuotaExceeded) as err:
        with tg.reservation(user_id=user, event="image.render", quantity=9):
            pytest.fail("the block must not run when denied")
    assert err.value.answer.denied_by == ["images"]
    assert err.value.answer.limits[0].remaining == 5
    assert used_reserved(server, user) == (0, 0)


def test_helper_extends_while_the_block_runs(tg: Tollgate, server: Server, user: str):
    with tg.reservation(user_id=user, event="image.render", ttl_seconds=2) as r:
        time.sleep(3.2)  # past the TTL: only the background extensions keep it pending
        assert tg.get_reservation(r.reservation_id).status == "pending"
    assert r.extend_error is None
    assert r.commit_result is not None and r.commit_result.late is False
    assert used_reserved(server, user) == (1, 0)


def test_helper_records_a_job_that_outran_its_ttl(tg: Tollgate, server: Server, user: str):
    with tg.reservation(user_id=user, event="image.render", ttl_seconds=60) as r:
        admin(server, "POST", "/v1/test/clock/advance", {"seconds": 120})
        assert tg.get_reservation(r.reservation_id).status == "expired"
    assert r.commit_result is not None and r.commit_result.late is True
    assert used_reserved(server, user) == (1, 0)


def test_subscriptions_identify_and_credits(tg: Tollgate, server: Server, user: str):
    sub = tg.upsert_subscription(user_id=user, plan_id="free")
    assert (sub.plan_id, sub.user_id, sub.changed) == ("free", user, True)
    assert sub.subscription_id.startswith("sub_")
    assert tg.get_subscription(user_id=user).subscription_id == sub.subscription_id
    cancel = tg.cancel_subscription(user_id=user, at="now")
    assert cancel.subscription_id == sub.subscription_id and cancel.ends_at is not None

    anon = f"anon_{user}"
    tg.track(user_id=anon, event="image.render", quantity=2)
    ident = tg.identify(anonymous_id=anon, user_id=user)
    assert (ident.user_id, ident.merged) == (user, True)
    assert used_reserved(server, user) == (2, 0)

    g = tg.grant_credits(user_id=user, pack_id="pack10", quantity=2, external_ref=f"pay_{user}")
    assert g.created is True and g.grants[0].quantity == 20
    again = tg.grant_credits(user_id=user, pack_id="pack10", quantity=2, external_ref=f"pay_{user}")
    assert again.created is False
    assert tg.credits(user).packs[0].available == 20
    rv = tg.revoke_credits(grant_id=g.grants[0].grant_id, reason="refund")
    assert rv.revoked[0].quantity == 20
    ledger = tg.credit_ledger(user, limit=10)
    assert [e.type for e in ledger.entries] == ["revoke", "grant"]


def test_a_fail_open_track_that_reached_the_server_is_not_flushed_twice(
    server: Server, proxy: Proxy, user: str
):
    # The track is applied but its answer is lost: the client records it locally too.
    proxy.mode, proxy.drop_path = "drop", "/v1/track"
    policy = FailOpen(units_per_user_per_hour=10)
    with Tollgate(
        base_url=proxy.url, secret_key=server.secret, max_retries=0, on_unreachable=policy
    ) as tg:
        t = tg.track(user_id=user, event="image.render", quantity=2)
        assert (t.fail_open, [p.quantity for p in tg.pending_fail_open()]) == (True, [2])
        assert used_reserved(server, user) == (2, 0)
        assert tg.flush() == []  # the server already has it: dropped, not counted again
        assert tg.pending_fail_open() == []
    assert used_reserved(server, user) == (2, 0)
