"""The synchronous client, :class:`Tollgate`."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, TypeVar, Union

import httpx

from . import _calls
from ._core import (
    _UNSET,
    Call,
    LocalLedger,
    OnUnreachable,
    Outcome,
    already_recorded,
    backoff_seconds,
    base_headers,
    check_policy,
    check_settings,
    flush_call,
    is_local,
    network_outcome,
    read_response,
    request_headers,
    user_headers,
)
from .errors import TollgateError, TollgateNetworkError
from .models import (
    CancelResult,
    CheckResult,
    CommitResult,
    Credits,
    EventsPage,
    ExtendResult,
    GrantResult,
    IdentifyResult,
    LedgerPage,
    PendingUsage,
    ReleaseResult,
    Reservation,
    ReserveResult,
    RevokeResult,
    Subscription,
    TrackResult,
    Usage,
    UserToken,
)
from .reservation import ReservationScope

T = TypeVar("T")
Metadata = Optional[Dict[str, Any]]
#: A user token, or a function answering the current one.
UserTokenSource = Union[str, Callable[[], str], None]


class Tollgate:
    """Client of a Tollgate server, for server-side code (it holds a secret key).

    Safe to share between threads. ``timeout`` is in seconds per attempt;
    ``max_retries`` is how many times a call that is safe to repeat is retried on a
    network error, a timeout, ``429`` or ``503``. ``on_unreachable`` is
    ``"closed"`` (raise :class:`TollgateNetworkError`) or
    ``FailOpen(units_per_user_per_hour=N)``. ``transport`` is for tests only.

    ``publishable_key`` and ``user_token`` (a token from ``create_user_token`` or
    :func:`~tollgate.mint_user_token`, or a function answering the current one) are
    what ``me_usage`` and ``me_credits`` send. Without ``secret_key`` the client sends
    the publishable key, and only those two calls can work.
    """

    def __init__(
        self,
        base_url: str,
        secret_key: Optional[str] = None,
        *,
        publishable_key: Optional[str] = None,
        user_token: UserTokenSource = None,
        timeout: float = 10.0,
        max_retries: int = 2,
        on_unreachable: OnUnreachable = "closed",
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        check_settings(base_url, secret_key, publishable_key, user_token, max_retries, timeout)
        policy = check_policy(on_unreachable)
        self.base_url = base_url.rstrip("/")
        self.publishable_key = publishable_key
        self._user_token = user_token
        self.max_retries = max_retries
        self._local = LocalLedger(policy) if policy is not None else None
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=base_headers(secret_key or publishable_key or ""),
            timeout=timeout,
            transport=transport,
        )

    # -- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Tollgate:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- sending -----------------------------------------------------------------

    def _attempt(self, call: Call[Any]) -> Outcome:
        try:
            resp = self._http.request(
                call.method,
                call.path,
                json=call.body if call.method != "GET" else None,
                params=call.params,
                headers=request_headers(call),
            )
        except httpx.TimeoutException as exc:
            return network_outcome(exc, timeout=True)
        except httpx.TransportError as exc:
            return network_outcome(exc, timeout=False)
        return read_response(resp.status_code, resp.headers, resp.content)

    def _send(self, call: Call[T]) -> T:
        """Send a call, retrying what is safe to retry, and read its answer."""
        attempts = 1 + (self.max_retries if call.retry else 0)
        for attempt in range(attempts):
            outcome = self._attempt(call)
            if outcome.error is None:
                return call.parse(outcome.body)
            if not outcome.retryable or attempt + 1 >= attempts:
                raise outcome.error
            time.sleep(backoff_seconds(attempt, outcome.retry_after))
        raise AssertionError("unreachable: the loop returns or raises")

    def _run(self, call: Call[T], local: Optional[Callable[[], T]] = None) -> T:
        """Send a call; under fail-open, answer locally when the server is unreachable."""
        try:
            return self._send(call)
        except TollgateNetworkError:
            if self._local is None or local is None:
                raise
            return local()

    def _user_headers(self, method: str) -> Dict[str, str]:
        token = self._user_token() if callable(self._user_token) else self._user_token
        return user_headers(self.publishable_key, token, method)

    def _ledger(self, reservation_id: str) -> LocalLedger:
        if self._local is None:
            raise TollgateError("not_found", f"unknown local reservation {reservation_id}", 404)
        return self._local

    # -- metering ----------------------------------------------------------------

    def reserve(
        self,
        *,
        user_id: str,
        event: str,
        quantity: int = 1,
        metadata: Metadata = None,
        ttl_seconds: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        prompt: Optional[str] = None,
    ) -> ReserveResult:
        """Hold ``quantity`` of every limit matching the event, or answer
        ``allowed=False`` (not an error). One idempotency key is generated per call
        (unless given) and reused on retries, so a retried reserve holds once."""
        call = _calls.reserve(
            user_id, event, quantity, metadata, ttl_seconds, idempotency_key, prompt
        )
        local = self._local
        return self._run(
            call, (lambda: local.reserve(user_id, event, quantity, metadata)) if local else None
        )

    def commit(
        self,
        reservation_id: str,
        *,
        quantity: Optional[int] = None,
        cost_micros: Optional[int] = None,
        metadata: Metadata = None,
        if_expired: Optional[str] = None,
        response: Optional[str] = None,
    ) -> CommitResult:
        """Record the work of a reservation; ``quantity`` is the final amount
        (default: the reserved one). ``if_expired="record"`` records a job that
        outran its TTL instead of answering 409."""
        if is_local(reservation_id):
            ledger = self._ledger(reservation_id)
            return CommitResult.from_dict(
                ledger.commit(reservation_id, quantity, cost_micros, metadata)
            )
        return self._send(
            _calls.commit(reservation_id, quantity, cost_micros, metadata, if_expired, response)
        )

    def release(
        self,
        reservation_id: str,
        *,
        reason: Optional[str] = None,
        error_code: Optional[str] = None,
        response: Optional[str] = None,
    ) -> ReleaseResult:
        """Give a reservation's hold back (the work failed or was not done)."""
        if is_local(reservation_id):
            return ReleaseResult.from_dict(self._ledger(reservation_id).release(reservation_id))
        return self._send(_calls.release(reservation_id, reason, error_code, response))

    def extend(self, reservation_id: str, *, ttl_seconds: Optional[int] = None) -> ExtendResult:
        """Set the reservation's expiry to now + ``ttl_seconds`` (server default 60)."""
        if is_local(reservation_id):
            return ExtendResult.from_dict(self._ledger(reservation_id).extend(reservation_id))
        return self._send(_calls.extend(reservation_id, ttl_seconds))

    def get_reservation(self, reservation_id: str) -> Reservation:
        """Read a reservation (``status`` pending, committed, released or expired)."""
        return self._send(_calls.get_reservation(reservation_id))

    def track(
        self,
        *,
        user_id: str,
        event: str,
        quantity: Optional[int] = None,
        metadata: Metadata = None,
        cost_micros: Optional[int] = None,
        occurred_at: Optional[str] = None,
        enforce: Optional[bool] = None,
        idempotency_key: Optional[str] = None,
        prompt: Optional[str] = None,
        response: Optional[str] = None,
    ) -> TrackResult:
        """Record usage in one step (``enforce=True``: only if it fits)."""
        call = _calls.track(
            user_id, event, quantity, metadata, cost_micros, occurred_at, enforce,
            idempotency_key, prompt, response,
        )  # fmt: skip
        local = self._local
        units = 1 if quantity is None else quantity
        key = call.idempotency_key or ""
        return self._run(
            call,
            (
                lambda: local.track(
                    user_id,
                    event,
                    units,
                    metadata,
                    cost_micros,
                    occurred_at,
                    bool(enforce),
                    key,
                )  # fmt: skip
            )
            if local
            else None,
        )

    def check(
        self, *, user_id: str, event: str, quantity: Optional[int] = None, metadata: Metadata = None
    ) -> CheckResult:
        """Would a reserve be allowed now? Changes nothing."""
        call = _calls.check(user_id, event, quantity, metadata)
        local = self._local
        units = 1 if quantity is None else quantity
        return self._run(call, (lambda: local.check(user_id, units)) if local else None)

    def usage(self, user_id: str, *, event: Optional[str] = None) -> Usage:
        """Every limit of the user's plan (or those matching ``event``) and their credits."""
        return self._send(_calls.usage(user_id, event))

    def events(
        self,
        *,
        user_id: Optional[str] = None,
        account_id: Optional[str] = None,
        event: Optional[str] = None,
        status: Optional[str] = None,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        metadata: Optional[Dict[str, str]] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> EventsPage:
        """One page of usage events, newest first (``GET /v1/events``)."""
        return self._send(
            _calls.events(user_id, account_id, event, status, from_, to, metadata, limit, cursor)
        )

    def identify(
        self, *, anonymous_id: str, user_id: str, traits: Metadata = None
    ) -> IdentifyResult:
        """Merge an anonymous visitor's usage into the user they turned out to be."""
        return self._send(_calls.identify(anonymous_id, user_id, traits))

    # -- subscriptions -------------------------------------------------------------

    def upsert_subscription(
        self,
        *,
        plan_id: str,
        user_id: Optional[str] = None,
        account_id: Optional[str] = None,
        cycle_start: Optional[str] = None,
        ends_at: Optional[str] = None,
        custom_limits: Optional[Dict[str, int]] = None,
        seats: Optional[int] = None,
        status: Optional[str] = None,
        timezone: Optional[str] = None,
    ) -> Subscription:
        """Create or change the subscription of a user or an account."""
        return self._send(
            _calls.upsert_subscription(
                plan_id,
                user_id,
                account_id,
                cycle_start,
                ends_at,
                custom_limits,
                seats,
                status,
                timezone,
            )  # fmt: skip
        )

    def cancel_subscription(
        self,
        *,
        user_id: Optional[str] = None,
        account_id: Optional[str] = None,
        at: Optional[str] = None,
        reason: Optional[str] = None,
    ) -> CancelResult:
        """End a subscription ``at`` ``"now"``, ``"period_end"`` or a timestamp."""
        return self._send(_calls.cancel_subscription(user_id, account_id, at, reason))

    def get_subscription(
        self, *, user_id: Optional[str] = None, account_id: Optional[str] = None
    ) -> Subscription:
        """The subscription of a user or an account (404 if never had one)."""
        return self._send(_calls.get_subscription(user_id, account_id))

    # -- credits -------------------------------------------------------------------

    def grant_credits(
        self,
        *,
        pack_id: str,
        user_id: Optional[str] = None,
        account_id: Optional[str] = None,
        quantity: Optional[int] = None,
        external_ref: Optional[str] = None,
        expires_at: Any = _UNSET,
        source: Optional[str] = None,
        note: Optional[str] = None,
    ) -> GrantResult:
        """Grant ``quantity`` credit packs. ``expires_at=None`` never expires (left
        out: the pack's expiry). Retried only with an ``external_ref``."""
        return self._send(
            _calls.grant_credits(
                pack_id, user_id, account_id, quantity, external_ref, expires_at, source, note
            )
        )

    def revoke_credits(
        self,
        *,
        grant_id: Optional[str] = None,
        external_ref: Optional[str] = None,
        reason: Optional[str] = None,
    ) -> RevokeResult:
        """Remove what remains of a grant (or of every grant of an external ref)."""
        return self._send(_calls.revoke_credits(grant_id, external_ref, reason))

    def credits(self, user_id: str) -> Credits:
        """A user's unexpired grants and balances per pack item."""
        return self._send(_calls.credits(user_id))

    def credit_ledger(
        self, user_id: str, *, limit: Optional[int] = None, cursor: Optional[str] = None
    ) -> LedgerPage:
        """One page of a user's credit ledger, newest first."""
        return self._send(_calls.credit_ledger(user_id, limit, cursor))

    # -- user tokens and the browser routes -------------------------------------------

    def create_user_token(self, user_id: str, *, ttl_seconds: Optional[int] = None) -> UserToken:
        """A token that lets a browser read ``user_id``'s usage and credits with the
        publishable key, for ``ttl_seconds`` (1-86400, server default 3600)
        (``POST /v1/user-tokens``, secret key). Offline: :func:`~tollgate.mint_user_token`."""
        return self._send(_calls.create_user_token(user_id, ttl_seconds))

    def me_usage(self, *, event: Optional[str] = None) -> Usage:
        """The ``usage`` answer of the user token's user (``GET /v1/me/usage``)."""
        headers = self._user_headers("me_usage")
        return self._send(_calls.me_usage(event, headers))

    def me_credits(self) -> Credits:
        """The ``credits`` answer of the user token's user (``GET /v1/me/credits``)."""
        headers = self._user_headers("me_credits")
        return self._send(_calls.me_credits(headers))

    # -- fail-open -------------------------------------------------------------------

    def pending_fail_open(self) -> List[PendingUsage]:
        """Usage admitted locally while the server was unreachable, not yet flushed."""
        return self._local.pending() if self._local is not None else []

    def flush(self) -> List[TrackResult]:
        """Report fail-open usage to the server as ``track`` calls, each with the
        idempotency key it got when recorded (a retried flush counts once; a usage
        whose original track did reach the server is dropped, not counted again).
        Stops at the first failure, which it raises; what was not sent stays pending.
        Answers the track results of what it recorded."""
        results: List[TrackResult] = []
        if self._local is None:
            return results
        for item in self._local.pending():
            try:
                results.append(self._send(flush_call(item)))
            except TollgateError as error:
                if not already_recorded(error):
                    raise
            self._local.forget(item)
        return results

    # -- the helper --------------------------------------------------------------------

    def reservation(
        self,
        *,
        user_id: str,
        event: str,
        quantity: int = 1,
        metadata: Metadata = None,
        ttl_seconds: Optional[int] = None,
        prompt: Optional[str] = None,
    ) -> ReservationScope:
        """``with tg.reservation(...) as r:`` reserve on enter (raise
        :class:`QuotaExceeded` if denied), commit ``r.quantity`` on a clean exit
        (recording it even if the TTL ran out), release on an exception, and extend
        in the background while the block runs."""
        return ReservationScope(self, user_id, event, quantity, metadata, ttl_seconds, prompt)
