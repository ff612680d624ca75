"""Typed errors of the SDK.

Every non-2xx answer of the server becomes a :class:`TollgateError` carrying the
server's error code (API.md section 2), so callers branch on ``.code`` instead of
parsing messages. A network failure or timeout is a :class:`TollgateNetworkError`:
the server never answered, so there is no code. An end user over quota is not an
error of the API (``allowed`` is false); only the ``reservation()`` helper raises
:class:`QuotaExceeded` for it, because a ``with`` block has no answer to return.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .models import ReserveResult


class TollgateError(Exception):
    """An error answer of the server (any non-2xx status).

    ``code`` is the server's error code (``invalid_request``, ``not_found``,
    ``reservation_not_pending``, ...), ``status`` the HTTP status, ``field`` the
    request field at fault when the server names one, and ``reservation_status``
    the reservation's state on ``reservation_not_pending``.
    """

    def __init__(
        self,
        code: str,
        message: str,
        status: int,
        field: Optional[str] = None,
        reservation_status: Optional[str] = None,
        raw: Optional[dict[str, Any]] = None,
        request_id: Optional[str] = None,
    ) -> None:
        super().__init__(f"{code} ({status}): {message}")
        self.code = code
        self.message = message
        self.status = status
        self.field = field
        self.reservation_status = reservation_status
        self.raw = raw or {}
        self.request_id = request_id


class TollgateNetworkError(TollgateError):
    """The server could not be reached or did not answer in time (after retries).

    ``status`` is 0 and ``code`` is ``network_error`` or ``timeout``; ``__cause__``
    holds the transport's exception.
    """

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__("timeout" if timeout else "network_error", message, 0)
        self.timeout = timeout


class QuotaExceeded(TollgateError):
    """Raised by the ``reservation()`` helper when the reserve was denied.

    ``answer`` is the full :class:`ReserveResult` (``reasons``, ``denied_by``,
    ``limits``), so the caller can tell the end user what ran out and when it resets.
    """

    def __init__(self, answer: ReserveResult) -> None:
        reasons = ", ".join(answer.reasons) or "denied"
        super().__init__("quota_exceeded", f"reserve denied: {reasons}", 200)
        self.answer = answer
        self.reasons = answer.reasons
        self.denied_by = answer.denied_by


def error_from_answer(status: int, body: Any, request_id: Optional[str] = None) -> TollgateError:
    """Build the typed error of a non-2xx answer, tolerating a body that is not the
    documented shape (a proxy's HTML page, an empty body)."""
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict):
        return TollgateError(
            "unexpected_response",
            f"HTTP {status} without a Tollgate error body",
            status,
            request_id=request_id,
        )
    return TollgateError(
        code=str(detail.get("code", "unknown")),
        message=str(detail.get("message", "")),
        status=status,
        field=detail.get("field"),
        reservation_status=detail.get("status"),
        raw=body,
        request_id=request_id,
    )
