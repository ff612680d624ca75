"""What the sync and async clients share: how each call is built, which calls may
be retried, the backoff, and the fail-open ledger.

A call is described once as a :class:`Call` (method, path, body, whether a retry is
safe, how to read the answer); :class:`~tollgate.Tollgate` and
:class:`~tollgate.AsyncTollgate` only differ in how they send it. Keeping the
description apart means the two clients cannot drift in field names or retry rules.
"""

from __future__ import annotations

import datetime as _dt
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Generic, List, Optional, Tuple, TypeVar, Union
from urllib.parse import quote

from .errors import TollgateError, TollgateNetworkError, error_from_answer
from .models import (
    CheckResult,
    PendingUsage,
    ReserveResult,
    TrackResult,
)

T = TypeVar("T")

#: Statuses retried on idempotent calls: the API's own rate limit and 503
#: (``unavailable``: nothing applied; ``outcome_unknown``: replay settles it).
RETRY_STATUSES = frozenset({429, 503})
#: First backoff delay, doubled on every attempt, with full jitter.
BACKOFF_BASE_SECONDS = 0.2
#: No single wait is longer than this, whatever ``Retry-After`` says.
BACKOFF_MAX_SECONDS = 10.0
#: ``reason`` and ``errorCode`` limits of release (API.md section 4).
RELEASE_REASON_BYTES_MAX = 500
RELEASE_ERROR_CODE_BYTES_MAX = 100
#: Prefix of reservations the SDK admitted locally while the server was unreachable.
LOCAL_RESERVATION_PREFIX = "local_"

# Marks an argument left out, where None means JSON null (e.g. ``expires_at=None``:
# a credit grant that never expires).
_UNSET: Any = object()


@dataclass(frozen=True)
class FailOpen:
    """``on_unreachable`` policy: when the server cannot be reached after retries,
    admit each user up to ``units_per_user_per_hour`` units per clock hour locally,
    and keep what was used for :meth:`~tollgate.Tollgate.flush`."""

    units_per_user_per_hour: int

    def __post_init__(self) -> None:
        if (
            isinstance(self.units_per_user_per_hour, bool)
            or not isinstance(self.units_per_user_per_hour, int)
            or self.units_per_user_per_hour < 0
        ):
            raise ValueError("units_per_user_per_hour must be a non-negative int")


OnUnreachable = Union[str, FailOpen]


def check_policy(policy: OnUnreachable) -> Optional[FailOpen]:
    """The fail-open budget of a policy, None for ``"closed"``."""
    if isinstance(policy, FailOpen):
        return policy
    if policy == "closed":
        return None
    raise ValueError('on_unreachable must be "closed" or FailOpen(units_per_user_per_hour=N)')


@dataclass
class Call(Generic[T]):
    """One API call, independent of how it is sent.

    ``retry`` says whether sending it twice is safe (GET; reserve and track with an
    ``Idempotency-Key`` fixed for the logical call; commit, release and extend, which
    are idempotent per reservation id; the calls that are no-ops when repeated).
    ``fail_open`` names the local answer to give when the server is unreachable.
    ``headers`` are this call's own (the ``me`` routes' publishable key and user
    token), over the client's.
    """

    method: str
    path: str
    parse: Callable[[Any], T]
    body: Optional[Dict[str, Any]] = None
    params: Optional[Dict[str, Any]] = None
    retry: bool = True
    idempotency_key: Optional[str] = None
    fail_open: Optional[str] = None
    headers: Optional[Dict[str, str]] = None


def seg(value: str) -> str:
    """A path segment, percent-encoded (a user id may hold ``/``)."""
    return quote(value, safe="")


def compact(**fields: Any) -> Dict[str, Any]:
    """A JSON body of the given camelCase fields, leaving out the unset ones: the
    server rejects unknown fields and treats a field written out as a different
    request, so only what the caller gave is sent."""
    return {k: v for k, v in fields.items() if v is not None and v is not _UNSET}


def user_headers(publishable_key: Optional[str], token: Any, method: str) -> Dict[str, str]:
    """The headers of the ``me`` routes: the publishable key and the user token,
    whatever other key the client holds."""
    if publishable_key is None:
        raise ValueError(f"{method} needs publishable_key and user_token on the client")
    if not isinstance(token, str) or not token:
        raise ValueError(f"{method} needs a user token: user_token is unset or answered none")
    return {"Authorization": f"Bearer {publishable_key}", "X-Tollgate-User-Token": token}


def backoff_seconds(attempt: int, retry_after: Optional[float]) -> float:
    """Wait before retry number ``attempt`` (0-based): exponential with full jitter,
    never shorter than the server's ``Retry-After``, never above the cap."""
    exp = BACKOFF_BASE_SECONDS * (2**attempt)
    delay = random.uniform(exp / 2, exp)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, BACKOFF_MAX_SECONDS)


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """``Retry-After`` in seconds (the server sends delta-seconds); None if absent
    or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def new_idempotency_key() -> str:
    """A fresh key for one logical reserve or track, reused on its retries."""
    return f"sdk_{uuid.uuid4().hex}"


def now_rfc3339() -> str:
    """Now in UTC, to the millisecond, as the API writes timestamps."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


@dataclass
class _LocalReservation:
    user_id: str
    event: str
    quantity: int
    hour: int
    metadata: Optional[Dict[str, Any]]
    occurred_at: str


@dataclass
class LocalLedger:
    """The fail-open state: each user's units admitted in the current hour, the
    local reservations, and the usage waiting to be flushed.

    Guarded by a lock because the sync client may be shared by threads; every
    critical section is a few dict operations, so the async client uses it too.
    """

    policy: FailOpen
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _spent: Dict[Tuple[str, int], int] = field(default_factory=dict)
    _reservations: Dict[str, _LocalReservation] = field(default_factory=dict)
    _pending: List[PendingUsage] = field(default_factory=list)

    @staticmethod
    def _hour() -> int:
        return int(time.time()) // 3600

    def _room(self, user_id: str, hour: int) -> int:
        return self.policy.units_per_user_per_hour - self._spent.get((user_id, hour), 0)

    def reserve(
        self, user_id: str, event: str, quantity: int, metadata: Optional[Dict[str, Any]]
    ) -> ReserveResult:
        with self._lock:
            hour = self._hour()
            if quantity > self._room(user_id, hour):
                return ReserveResult(allowed=False, reasons=["fail_open_budget"], fail_open=True)
            self._spent[(user_id, hour)] = self._spent.get((user_id, hour), 0) + quantity
            rid = f"{LOCAL_RESERVATION_PREFIX}{uuid.uuid4().hex}"
            self._reservations[rid] = _LocalReservation(
                user_id, event, quantity, hour, metadata, now_rfc3339()
            )
            return ReserveResult(allowed=True, reservation_id=rid, fail_open=True)

    def check(self, user_id: str, quantity: int) -> CheckResult:
        with self._lock:
            allowed = quantity <= self._room(user_id, self._hour())
        reasons = [] if allowed else ["fail_open_budget"]
        return CheckResult(allowed=allowed, reasons=reasons, fail_open=True)

    def track(
        self,
        user_id: str,
        event: str,
        quantity: int,
        metadata: Optional[Dict[str, Any]],
        cost_micros: Optional[int],
        occurred_at: Optional[str],
        enforce: bool,
        idempotency_key: str,
    ) -> TrackResult:
        """Track while unreachable: kept for flush and counted in the hour's budget;
        an enforced track past the budget records nothing, as the server would.

        The usage keeps the track call's own idempotency key: if the call did reach
        the server (only its answer was lost), the flush is refused as an
        idempotency conflict instead of counting it twice."""
        with self._lock:
            hour = self._hour()
            if enforce and quantity > self._room(user_id, hour):
                return TrackResult(allowed=False, reasons=["fail_open_budget"], fail_open=True)
            self._spent[(user_id, hour)] = self._spent.get((user_id, hour), 0) + quantity
            self._pending.append(
                PendingUsage(
                    user_id=user_id,
                    event=event,
                    quantity=quantity,
                    occurred_at=occurred_at or now_rfc3339(),
                    idempotency_key=idempotency_key,
                    metadata=metadata,
                    cost_micros=cost_micros,
                )
            )
            return TrackResult(recorded=True, allowed=True, fail_open=True)

    def commit(
        self,
        reservation_id: str,
        quantity: Optional[int],
        cost_micros: Optional[int],
        metadata: Optional[Dict[str, Any]],
    ) -> Dict[str, Any]:
        """Commit of a local reservation: the final quantity replaces the held one
        in the hour's budget and the usage waits for flush."""
        with self._lock:
            held = self._take(reservation_id)
            final = held.quantity if quantity is None else quantity
            key = (held.user_id, held.hour)
            self._spent[key] = max(0, self._spent.get(key, 0) - held.quantity + final)
            merged = dict(held.metadata or {})
            merged.update(metadata or {})
            self._pending.append(
                PendingUsage(
                    user_id=held.user_id,
                    event=held.event,
                    quantity=final,
                    occurred_at=held.occurred_at,
                    idempotency_key=new_idempotency_key(),
                    metadata=merged or None,
                    cost_micros=cost_micros,
                    reservation_id=reservation_id,
                )
            )
        return {
            "reservationId": reservation_id,
            "status": "committed",
            "eventId": None,
            "quantity": final,
            "overage": 0,
            "late": False,
            "limits": [],
        }

    def release(self, reservation_id: str) -> Dict[str, Any]:
        with self._lock:
            held = self._take(reservation_id)
            key = (held.user_id, held.hour)
            self._spent[key] = max(0, self._spent.get(key, 0) - held.quantity)
        return {"reservationId": reservation_id, "status": "released", "limits": []}

    def extend(self, reservation_id: str) -> Dict[str, Any]:
        with self._lock:
            if reservation_id not in self._reservations:
                raise _local_not_pending(reservation_id)
        return {"reservationId": reservation_id, "status": "pending", "expiresAt": None}

    def _take(self, reservation_id: str) -> _LocalReservation:
        held = self._reservations.pop(reservation_id, None)
        if held is None:
            raise _local_not_pending(reservation_id)
        return held

    def pending(self) -> List[PendingUsage]:
        with self._lock:
            return list(self._pending)

    def forget(self, item: PendingUsage) -> None:
        """Drop a pending usage once the server has recorded it."""
        with self._lock:
            self._pending = [p for p in self._pending if p is not item]


def _local_not_pending(reservation_id: str) -> TollgateError:
    return TollgateError(
        "reservation_not_pending",
        f"local reservation {reservation_id} is not pending (already committed or released)",
        409,
    )


def is_local(reservation_id: str) -> bool:
    return reservation_id.startswith(LOCAL_RESERVATION_PREFIX)


def already_recorded(error: TollgateError) -> bool:
    """A flushed usage refused as an idempotency conflict: its key (unique to the
    SDK call that recorded it) was already used on the server, so the original
    track reached it and counted; drop it instead of counting it again."""
    return error.code == "idempotency_conflict"


def flush_call(item: PendingUsage) -> Call[TrackResult]:
    """The track call that reports one fail-open usage, with the key it was given."""
    body = compact(
        userId=item.user_id,
        event=item.event,
        quantity=item.quantity,
        metadata=item.metadata,
        costMicros=item.cost_micros,
        occurredAt=item.occurred_at,
    )
    return Call(
        "POST",
        "/v1/track",
        TrackResult.from_dict,
        body=body,
        idempotency_key=item.idempotency_key,
    )


@dataclass
class Outcome:
    """What one attempt of a call came to: an answer body, or an error and whether
    (and after how long, at least) the call may be tried again."""

    body: Any = None
    error: Optional[TollgateError] = None
    retryable: bool = False
    retry_after: Optional[float] = None


def read_response(status: int, headers: Any, content: bytes) -> Outcome:
    """Sort an HTTP answer into success, a retryable error (429, 503) or a final one."""
    import json

    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    if 200 <= status < 300:
        return Outcome(body=body)
    error = error_from_answer(status, body, headers.get("x-request-id"))
    return Outcome(
        error=error,
        retryable=status in RETRY_STATUSES,
        retry_after=parse_retry_after(headers.get("retry-after")),
    )


def network_outcome(exc: Exception, timeout: bool) -> Outcome:
    """A transport failure: always retryable for a call that may be retried."""
    kind = "timed out" if timeout else "could not reach the server"
    error = TollgateNetworkError(f"{kind}: {exc}", timeout=timeout)
    error.__cause__ = exc
    return Outcome(error=error, retryable=True)


def request_headers(call: Call[Any]) -> Dict[str, str]:
    headers = dict(call.headers or {})
    if call.idempotency_key is not None:
        headers["Idempotency-Key"] = call.idempotency_key
    return headers


def base_headers(api_key: str) -> Dict[str, str]:
    """The headers of every call: ``api_key`` is the secret key, or the publishable
    key of a client that has no secret key."""
    from . import __version__

    return {
        "Authorization": f"Bearer {api_key}",
        "Accept": "application/json",
        "User-Agent": f"tollgate-python/{__version__}",
    }


def check_settings(
    base_url: str,
    secret_key: Optional[str],
    publishable_key: Optional[str],
    user_token: Any,
    max_retries: int,
    timeout: float,
) -> None:
    """Refuse a client that could never work, at construction rather than first call."""
    if not base_url.startswith(("http://", "https://")):
        raise ValueError("base_url must start with http:// or https://")
    if secret_key is not None and not secret_key:
        raise ValueError("secret_key must not be empty")
    if publishable_key is not None and not (
        isinstance(publishable_key, str) and publishable_key.startswith("tg_pk_")
    ):
        # Guards against a secret key handed out under the publishable key's name.
        raise ValueError("publishable_key must be a publishable key, tg_pk_...")
    if secret_key is None and publishable_key is None:
        raise ValueError(
            "secret_key (server side) or publishable_key with user_token (me_usage, "
            "me_credits) is required"
        )
    if user_token is not None and not (isinstance(user_token, str) or callable(user_token)):
        raise ValueError("user_token must be a token str or a function answering one")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError("max_retries must be a non-negative int")
    if timeout <= 0:
        raise ValueError("timeout must be positive (seconds)")
