"""Typed answers of the API.

Each answer is a dataclass whose attributes are the snake_case names of the wire's
camelCase fields (``reservationId`` -> ``reservation_id``), and which keeps the
whole decoded body as ``.raw`` so a field the server adds later is readable before
the SDK knows it. Quantities and money are ``int`` (exact, never floats);
timestamps stay the RFC 3339 strings the server sent, so nothing is lost in a
conversion.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Type, TypeVar

T = TypeVar("T", bound="_Model")

_CAMEL_BOUNDARY = re.compile(r"_([a-z])")


def _camel(name: str) -> str:
    return _CAMEL_BOUNDARY.sub(lambda m: m.group(1).upper(), name)


@dataclass
class _Model:
    """Base of every answer: builds itself from a wire dict by field name."""

    # Attributes holding nested models: name -> model class (a list on the wire
    # becomes a list of models, an object becomes one model).
    _nested: ClassVar[Dict[str, Type[_Model]]] = {}

    @classmethod
    def from_dict(cls: Type[T], data: Any) -> T:
        body: Dict[str, Any] = data if isinstance(data, dict) else {}
        values: Dict[str, Any] = {}
        for name, wire in _field_wire_names(cls).items():
            if wire not in body:
                continue
            value = body[wire]
            nested = cls._nested.get(name)
            if nested is not None and value is not None:
                if isinstance(value, list):
                    value = [nested.from_dict(v) for v in value]
                else:
                    value = nested.from_dict(value)
            values[name] = value
        return cls(raw=body, **values)  # type: ignore[call-arg]


def _field_wire_names(cls: Type[_Model]) -> Dict[str, str]:
    """Attribute name -> wire name; ``fail_open`` is the SDK's own, never on the wire."""
    return {
        f.name: _camel(f.name)
        for f in dataclasses.fields(cls)
        if f.name not in ("raw", "fail_open")
    }


@dataclass
class LimitState(_Model):
    """A limit as it stands (API.md section 3). ``remaining`` is
    ``max(0, quota - used - reserved)``; ``resets_at`` is None for lifetime windows."""

    limit_id: str = ""
    label: str = ""
    unit: str = "count"
    kind: str = "consumable"
    scope: str = "user"
    enforcement: str = "hard"
    quota: int = 0
    used: int = 0
    reserved: int = 0
    remaining: int = 0
    window_start: Optional[str] = None
    resets_at: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class ReserveResult(_Model):
    """Answer of ``reserve``. ``fail_open`` is True when the SDK answered locally
    because the server was unreachable (``on_unreachable=FailOpen(...)``)."""

    allowed: bool = False
    reservation_id: Optional[str] = None
    expires_at: Optional[str] = None
    plan_id: Optional[str] = None
    reasons: List[str] = field(default_factory=list)
    denied_by: List[str] = field(default_factory=list)
    limits: List[LimitState] = field(default_factory=list)
    credits: Dict[str, Any] = field(default_factory=dict)
    fail_open: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    _nested: ClassVar[Dict[str, Type[_Model]]] = {"limits": LimitState}


@dataclass
class CheckResult(_Model):
    """Answer of ``check`` (no side effect)."""

    allowed: bool = False
    plan_id: Optional[str] = None
    reasons: List[str] = field(default_factory=list)
    denied_by: List[str] = field(default_factory=list)
    limits: List[LimitState] = field(default_factory=list)
    credits: Dict[str, Any] = field(default_factory=dict)
    fail_open: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    _nested: ClassVar[Dict[str, Type[_Model]]] = {"limits": LimitState}


@dataclass
class CommitResult(_Model):
    """Answer of ``commit``. ``late`` is True for a commit of an expired reservation
    recorded with ``if_expired="record"``; ``overage`` is what did not fit."""

    reservation_id: str = ""
    status: str = "committed"
    event_id: Optional[str] = None
    quantity: int = 0
    overage: int = 0
    late: bool = False
    credits_used: int = 0
    limits: List[LimitState] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    _nested: ClassVar[Dict[str, Type[_Model]]] = {"limits": LimitState}


@dataclass
class ReleaseResult(_Model):
    """Answer of ``release``."""

    reservation_id: str = ""
    status: str = "released"
    limits: List[LimitState] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    _nested: ClassVar[Dict[str, Type[_Model]]] = {"limits": LimitState}


@dataclass
class ExtendResult(_Model):
    """Answer of ``extend``: the reservation's new ``expires_at``."""

    reservation_id: str = ""
    status: str = "pending"
    expires_at: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Reservation(_Model):
    """Answer of ``get_reservation``."""

    reservation_id: str = ""
    status: str = ""
    user_id: str = ""
    event: str = ""
    quantity: int = 0
    metadata: Dict[str, Any] = field(default_factory=dict)
    created_at: Optional[str] = None
    expires_at: Optional[str] = None
    event_id: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class TrackResult(_Model):
    """Answer of ``track``. ``event_id`` is None when nothing was recorded."""

    event_id: Optional[str] = None
    recorded: bool = False
    allowed: bool = False
    reasons: List[str] = field(default_factory=list)
    match_status: Optional[str] = None
    overage: int = 0
    plan_id: Optional[str] = None
    credits_used: int = 0
    limits: List[LimitState] = field(default_factory=list)
    fail_open: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    _nested: ClassVar[Dict[str, Type[_Model]]] = {"limits": LimitState}


@dataclass
class CreditBalance(_Model):
    """Credits of one pack item: ``available = remaining - held``."""

    pack_id: Optional[str] = None
    item_id: str = ""
    unit: str = "count"
    available: int = 0
    held: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Usage(_Model):
    """Answer of ``usage``: every limit of the user's plan and their credits."""

    user_id: str = ""
    plan_id: Optional[str] = None
    subscription: Optional[Dict[str, Any]] = None
    limits: List[LimitState] = field(default_factory=list)
    credits: List[CreditBalance] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    _nested: ClassVar[Dict[str, Type[_Model]]] = {
        "limits": LimitState,
        "credits": CreditBalance,
    }

    def limit(self, limit_id: str) -> Optional[LimitState]:
        """The limit state with this id, or None."""
        return next((x for x in self.limits if x.limit_id == limit_id), None)


@dataclass
class UsageEvent(_Model):
    """One usage event (API.md section 9)."""

    event_id: str = ""
    occurred_at: Optional[str] = None
    user_id: Optional[str] = None
    account_id: Optional[str] = None
    event: str = ""
    quantity: int = 0
    metadata: Dict[str, Any] = field(default_factory=dict)
    cost_micros: Optional[int] = None
    status: str = ""
    plan_id: Optional[str] = None
    reservation_id: Optional[str] = None
    reasons: List[str] = field(default_factory=list)
    overage: int = 0
    credits_used: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class EventsPage(_Model):
    """One page of ``events``; pass ``next_cursor`` as ``cursor`` for the next."""

    events: List[UsageEvent] = field(default_factory=list)
    next_cursor: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    _nested: ClassVar[Dict[str, Type[_Model]]] = {"events": UsageEvent}


@dataclass
class IdentifyResult(_Model):
    """Answer of ``identify``; ``merged`` is False when it was already done."""

    user_id: str = ""
    merged: bool = False
    events_merged: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Subscription(_Model):
    """A subscription (the upsert answer and ``get_subscription``)."""

    subscription_id: str = ""
    user_id: Optional[str] = None
    account_id: Optional[str] = None
    plan_id: str = ""
    status: str = ""
    cycle_start: Optional[str] = None
    current_period: Optional[Dict[str, Any]] = None
    ends_at: Optional[str] = None
    created_at: Optional[str] = None
    changed: Optional[bool] = None
    custom_limits: Dict[str, int] = field(default_factory=dict)
    seats: Optional[int] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class CancelResult(_Model):
    """Answer of ``cancel_subscription``."""

    subscription_id: str = ""
    plan_id: str = ""
    ends_at: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class CreditGrant(_Model):
    """A credit grant (API.md section 8)."""

    grant_id: str = ""
    user_id: Optional[str] = None
    account_id: Optional[str] = None
    pack_id: Optional[str] = None
    item_id: str = ""
    unit: str = "count"
    quantity: int = 0
    remaining: int = 0
    held: int = 0
    available: int = 0
    priority: int = 0
    expires_at: Optional[str] = None
    source: str = ""
    external_ref: Optional[str] = None
    note: Optional[str] = None
    created_at: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class GrantResult(_Model):
    """Answer of ``grant_credits``; ``created`` is False for a repeated ``external_ref``."""

    created: bool = False
    grants: List[CreditGrant] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    _nested: ClassVar[Dict[str, Type[_Model]]] = {"grants": CreditGrant}


@dataclass
class RevokedGrant(_Model):
    """Units removed from one grant by ``revoke_credits``."""

    grant_id: str = ""
    quantity: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class RevokeResult(_Model):
    """Answer of ``revoke_credits``."""

    revoked: List[RevokedGrant] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    _nested: ClassVar[Dict[str, Type[_Model]]] = {"revoked": RevokedGrant}


@dataclass
class Credits(_Model):
    """Answer of ``credits``: unexpired grants and per-pack-item balances."""

    user_id: str = ""
    grants: List[CreditGrant] = field(default_factory=list)
    packs: List[CreditBalance] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    _nested: ClassVar[Dict[str, Type[_Model]]] = {
        "grants": CreditGrant,
        "packs": CreditBalance,
    }


@dataclass
class LedgerEntry(_Model):
    """One credit ledger entry."""

    entry_id: str = ""
    at: Optional[str] = None
    type: str = ""
    grant_id: Optional[str] = None
    quantity: int = 0
    remaining_after: int = 0
    held_after: int = 0
    reservation_id: Optional[str] = None
    event_id: Optional[str] = None
    external_ref: Optional[str] = None
    reason: Optional[str] = None
    user_id: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class LedgerPage(_Model):
    """One page of ``credit_ledger``, newest first."""

    entries: List[LedgerEntry] = field(default_factory=list)
    next_cursor: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    _nested: ClassVar[Dict[str, Type[_Model]]] = {"entries": LedgerEntry}


@dataclass
class UserToken(_Model):
    """A user token and when it expires (RFC 3339, whole seconds): the answer of
    ``create_user_token`` and of :func:`~tollgate.mint_user_token`. Send ``token`` as
    ``X-Tollgate-User-Token`` with a publishable key."""

    token: str = ""
    expires_at: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class PendingUsage:
    """Usage the SDK admitted locally while the server was unreachable (fail-open),
    waiting for ``flush()`` to report it as a ``track`` call. ``idempotency_key`` is
    fixed when the usage is recorded, so a retried flush never counts it twice."""

    user_id: str
    event: str
    quantity: int
    occurred_at: str
    idempotency_key: str
    metadata: Optional[Dict[str, Any]] = None
    cost_micros: Optional[int] = None
    reservation_id: Optional[str] = None
