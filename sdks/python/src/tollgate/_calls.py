"""The calls of the API, described once for both clients.

Each function takes the SDK's snake_case arguments and answers a
:class:`~tollgate._core.Call` with the wire's camelCase body (names checked against
API.md and the server's OpenAPI document).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ._core import _UNSET, Call, compact, new_idempotency_key, seg
from .errors import TollgateError
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
    ReleaseResult,
    Reservation,
    ReserveResult,
    RevokeResult,
    Subscription,
    TrackResult,
    Usage,
    UserToken,
)

Metadata = Optional[Dict[str, Any]]


def reserve(
    user_id: str,
    event: str,
    quantity: int,
    metadata: Metadata,
    ttl_seconds: Optional[int],
    idempotency_key: Optional[str],
    prompt: Optional[str],
) -> Call[ReserveResult]:
    body = compact(
        userId=user_id,
        event=event,
        quantity=quantity,
        metadata=metadata,
        ttlSeconds=ttl_seconds,
        prompt=prompt,
    )
    return Call(
        "POST",
        "/v1/reserve",
        ReserveResult.from_dict,
        body=body,
        idempotency_key=idempotency_key or new_idempotency_key(),
        fail_open="reserve",
    )


def commit(
    reservation_id: str,
    quantity: Optional[int],
    cost_micros: Optional[int],
    metadata: Metadata,
    if_expired: Optional[str],
    response: Optional[str],
) -> Call[CommitResult]:
    body = compact(
        quantity=quantity,
        costMicros=cost_micros,
        metadata=metadata,
        ifExpired=if_expired,
        response=response,
    )
    path = f"/v1/reservations/{seg(reservation_id)}/commit"
    return Call("POST", path, CommitResult.from_dict, body=body)


def release(
    reservation_id: str,
    reason: Optional[str],
    error_code: Optional[str],
    response: Optional[str],
) -> Call[ReleaseResult]:
    body = compact(reason=reason, errorCode=error_code, response=response)
    path = f"/v1/reservations/{seg(reservation_id)}/release"
    return Call("POST", path, ReleaseResult.from_dict, body=body)


def extend(reservation_id: str, ttl_seconds: Optional[int]) -> Call[ExtendResult]:
    body = compact(ttlSeconds=ttl_seconds)
    path = f"/v1/reservations/{seg(reservation_id)}/extend"
    return Call("POST", path, ExtendResult.from_dict, body=body)


def get_reservation(reservation_id: str) -> Call[Reservation]:
    path = f"/v1/reservations/{seg(reservation_id)}"
    return Call("GET", path, Reservation.from_dict)


def track(
    user_id: str,
    event: str,
    quantity: Optional[int],
    metadata: Metadata,
    cost_micros: Optional[int],
    occurred_at: Optional[str],
    enforce: Optional[bool],
    idempotency_key: Optional[str],
    prompt: Optional[str],
    response: Optional[str],
) -> Call[TrackResult]:
    body = compact(
        userId=user_id,
        event=event,
        quantity=quantity,
        metadata=metadata,
        costMicros=cost_micros,
        occurredAt=occurred_at,
        enforce=enforce,
        prompt=prompt,
        response=response,
    )
    return Call(
        "POST",
        "/v1/track",
        TrackResult.from_dict,
        body=body,
        idempotency_key=idempotency_key or new_idempotency_key(),
        fail_open="track",
    )


def check(
    user_id: str, event: str, quantity: Optional[int], metadata: Metadata
) -> Call[CheckResult]:
    body = compact(userId=user_id, event=event, quantity=quantity, metadata=metadata)
    # No side effect: always safe to retry.
    return Call("POST", "/v1/check", CheckResult.from_dict, body=body, fail_open="check")


def usage(user_id: str, event: Optional[str]) -> Call[Usage]:
    params = compact(event=event)
    return Call("GET", f"/v1/users/{seg(user_id)}/usage", Usage.from_dict, params=params)


def events(
    user_id: Optional[str],
    account_id: Optional[str],
    event: Optional[str],
    status: Optional[str],
    from_: Optional[str],
    to: Optional[str],
    metadata: Optional[Dict[str, str]],
    limit: Optional[int],
    cursor: Optional[str],
) -> Call[EventsPage]:
    params = compact(
        userId=user_id,
        accountId=account_id,
        event=event,
        status=status,
        to=to,
        limit=limit,
        cursor=cursor,
        **{"from": from_},
    )
    for key, value in (metadata or {}).items():
        params[f"metadata.{key}"] = value
    return Call("GET", "/v1/events", EventsPage.from_dict, params=params)


def identify(anonymous_id: str, user_id: str, traits: Metadata) -> Call[IdentifyResult]:
    body = compact(anonymousId=anonymous_id, userId=user_id, traits=traits)
    # A repeated identify answers merged=false and changes nothing: safe to retry.
    return Call("POST", "/v1/identify", IdentifyResult.from_dict, body=body)


def _one_subject(user_id: Optional[str], account_id: Optional[str]) -> None:
    """Refuse locally what the server would refuse: exactly one of the two."""
    if (user_id is None) == (account_id is None):
        raise TollgateError(
            "invalid_request", "give exactly one of user_id and account_id", 400, field="userId"
        )


def upsert_subscription(
    plan_id: str,
    user_id: Optional[str],
    account_id: Optional[str],
    cycle_start: Optional[str],
    ends_at: Optional[str],
    custom_limits: Optional[Dict[str, int]],
    seats: Optional[int],
    status: Optional[str],
    timezone: Optional[str],
) -> Call[Subscription]:
    _one_subject(user_id, account_id)
    body = compact(
        userId=user_id,
        accountId=account_id,
        planId=plan_id,
        cycleStart=cycle_start,
        endsAt=ends_at,
        customLimits=custom_limits,
        seats=seats,
        status=status,
        timezone=timezone,
    )
    # The same upsert twice is a no-op (changed=false): safe to retry.
    return Call("POST", "/v1/subscriptions", Subscription.from_dict, body=body)


def cancel_subscription(
    user_id: Optional[str], account_id: Optional[str], at: Optional[str], reason: Optional[str]
) -> Call[CancelResult]:
    _one_subject(user_id, account_id)
    body = compact(userId=user_id, accountId=account_id, at=at, reason=reason)
    # Not retried: a second cancel after an immediate end answers 409 already_canceled.
    return Call("POST", "/v1/subscriptions/cancel", CancelResult.from_dict, body=body, retry=False)


def get_subscription(user_id: Optional[str], account_id: Optional[str]) -> Call[Subscription]:
    _one_subject(user_id, account_id)
    if account_id is not None:
        path = f"/v1/accounts/{seg(account_id)}/subscription"
    else:
        path = f"/v1/subscriptions/{seg(user_id or '')}"
    return Call("GET", path, Subscription.from_dict)


def grant_credits(
    pack_id: str,
    user_id: Optional[str],
    account_id: Optional[str],
    quantity: Optional[int],
    external_ref: Optional[str],
    expires_at: Any,
    source: Optional[str],
    note: Optional[str],
) -> Call[GrantResult]:
    _one_subject(user_id, account_id)
    body = compact(
        userId=user_id,
        accountId=account_id,
        packId=pack_id,
        quantity=quantity,
        externalRef=external_ref,
        source=source,
        note=note,
    )
    if expires_at is not _UNSET:
        body["expiresAt"] = expires_at  # None: the grant never expires
    # Only a grant with an external_ref is idempotent (the ref grants once).
    retry = external_ref is not None
    return Call("POST", "/v1/credits/grants", GrantResult.from_dict, body=body, retry=retry)


def revoke_credits(
    grant_id: Optional[str], external_ref: Optional[str], reason: Optional[str]
) -> Call[RevokeResult]:
    body = compact(grantId=grant_id, externalRef=external_ref, reason=reason)
    # Revoking again removes nothing more: safe to retry.
    return Call("POST", "/v1/credits/revoke", RevokeResult.from_dict, body=body)


def credits(user_id: str) -> Call[Credits]:
    return Call("GET", f"/v1/users/{seg(user_id)}/credits", Credits.from_dict)


def credit_ledger(user_id: str, limit: Optional[int], cursor: Optional[str]) -> Call[LedgerPage]:
    params = compact(limit=limit, cursor=cursor)
    path = f"/v1/users/{seg(user_id)}/credits/ledger"
    return Call("GET", path, LedgerPage.from_dict, params=params)


def create_user_token(user_id: str, ttl_seconds: Optional[int]) -> Call[UserToken]:
    body = compact(userId=user_id, ttlSeconds=ttl_seconds)
    # A token changes nothing on the server: asking twice is harmless.
    return Call("POST", "/v1/user-tokens", UserToken.from_dict, body=body)


def me_usage(event: Optional[str], headers: Dict[str, str]) -> Call[Usage]:
    params = compact(event=event)
    return Call("GET", "/v1/me/usage", Usage.from_dict, params=params, headers=headers)


def me_credits(headers: Dict[str, str]) -> Call[Credits]:
    return Call("GET", "/v1/me/credits", Credits.from_dict, headers=headers)
