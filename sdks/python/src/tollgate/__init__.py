"""Python SDK of Tollgate, the metering and limits server.

``Tollgate`` (sync) and ``AsyncTollgate`` (asyncio) expose the same methods; see
the README for the reserve -> work -> commit/release pattern. ``mint_user_token``
signs the browser's user tokens offline.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._core import FailOpen  # noqa: E402
from .async_client import AsyncTollgate  # noqa: E402
from .client import Tollgate  # noqa: E402
from .errors import QuotaExceeded, TollgateError, TollgateNetworkError  # noqa: E402
from .models import (  # noqa: E402
    CancelResult,
    CheckResult,
    CommitResult,
    CreditBalance,
    CreditGrant,
    Credits,
    EventsPage,
    ExtendResult,
    GrantResult,
    IdentifyResult,
    LedgerEntry,
    LedgerPage,
    LimitState,
    PendingUsage,
    ReleaseResult,
    Reservation,
    ReserveResult,
    RevokedGrant,
    RevokeResult,
    Subscription,
    TrackResult,
    Usage,
    UsageEvent,
    UserToken,
)
from .reservation import AsyncReservationScope, ReservationScope  # noqa: E402
from .user_tokens import mint_user_token  # noqa: E402

__all__ = [
    "AsyncReservationScope",
    "AsyncTollgate",
    "CancelResult",
    "CheckResult",
    "CommitResult",
    "CreditBalance",
    "CreditGrant",
    "Credits",
    "EventsPage",
    "ExtendResult",
    "FailOpen",
    "GrantResult",
    "IdentifyResult",
    "LedgerEntry",
    "LedgerPage",
    "LimitState",
    "PendingUsage",
    "QuotaExceeded",
    "ReleaseResult",
    "Reservation",
    "ReservationScope",
    "ReserveResult",
    "RevokeResult",
    "RevokedGrant",
    "Subscription",
    "Tollgate",
    "TollgateError",
    "TollgateNetworkError",
    "TrackResult",
    "Usage",
    "UsageEvent",
    "UserToken",
    "__version__",
    "mint_user_token",
]
