"""The reservation helper: reserve, run the work, commit or release.

Why a helper: the pattern is easy to get subtly wrong by hand. A forgotten
release holds quota until the TTL; a job that outruns its TTL loses its usage
unless the commit says ``ifExpired: "record"``; a long job needs its reservation
extended while it runs. ``with tg.reservation(...) as r:`` does all three.

A denied reserve raises :class:`~tollgate.QuotaExceeded` (carrying the answer)
because a ``with`` block has no way to hand back a value and skip its body.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, Dict, Optional, Type

from ._core import RELEASE_ERROR_CODE_BYTES_MAX
from .errors import QuotaExceeded, TollgateError
from .models import CommitResult, ReserveResult

if TYPE_CHECKING:
    from .async_client import AsyncTollgate
    from .client import Tollgate

#: The server's default TTL, used to pace extensions when none is given.
DEFAULT_TTL_SECONDS = 60


class _ScopeState:
    """What both helpers expose inside the block."""

    def __init__(
        self,
        user_id: str,
        event: str,
        quantity: int,
        metadata: Optional[Dict[str, Any]],
        ttl_seconds: Optional[int],
        prompt: Optional[str],
    ) -> None:
        self.user_id = user_id
        self.event = event
        #: Set before the block ends to commit a different final quantity.
        self.quantity: int = quantity
        #: Set to record the cost of the work, in micros.
        self.cost_micros: Optional[int] = None
        #: Merged over the reserve's metadata on commit.
        self.metadata: Optional[Dict[str, Any]] = None
        self._reserve_metadata = metadata
        self.ttl_seconds = ttl_seconds
        self._prompt = prompt
        self.answer: Optional[ReserveResult] = None
        self.commit_result: Optional[CommitResult] = None
        #: The last error of a background extension, if any (the work goes on).
        self.extend_error: Optional[BaseException] = None

    @property
    def reservation_id(self) -> str:
        if self.answer is None or self.answer.reservation_id is None:
            raise RuntimeError("the reservation is only known inside the with block")
        return self.answer.reservation_id

    @property
    def _interval(self) -> float:
        """Extend every half TTL, so one failed extension still leaves time."""
        return (self.ttl_seconds or DEFAULT_TTL_SECONDS) / 2

    def _admit(self, answer: ReserveResult) -> None:
        if not answer.allowed:
            raise QuotaExceeded(answer)
        self.answer = answer

    @staticmethod
    def _error_code(exc: BaseException) -> str:
        """The exception's class name, cut to the server's byte limit."""
        name = type(exc).__name__.encode()[:RELEASE_ERROR_CODE_BYTES_MAX]
        return name.decode(errors="ignore")


class ReservationScope(_ScopeState):
    """Sync helper returned by :meth:`Tollgate.reservation`."""

    def __init__(self, client: Tollgate, *args: Any) -> None:
        super().__init__(*args)
        self._client = client
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> ReservationScope:
        answer = self._client.reserve(
            user_id=self.user_id,
            event=self.event,
            quantity=self.quantity,
            metadata=self._reserve_metadata,
            ttl_seconds=self.ttl_seconds,
            prompt=self._prompt,
        )
        self._admit(answer)
        self._thread = threading.Thread(target=self._extend_loop, daemon=True)
        self._thread.start()
        return self

    def _extend_loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._client.extend(self.reservation_id, ttl_seconds=self.ttl_seconds)
            except TollgateError as exc:
                # The work goes on; the commit records it late if it must.
                self.extend_error = exc

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc is not None:
            self._release_quietly(exc)
            return None  # let the exception propagate
        self.commit_result = self._client.commit(
            self.reservation_id,
            quantity=self.quantity,
            cost_micros=self.cost_micros,
            metadata=self.metadata,
            if_expired="record",
        )
        return None

    def _release_quietly(self, exc: BaseException) -> None:
        """Release after a failure; a failed release must not hide the caller's
        exception (the hold expires with its TTL anyway)."""
        try:
            self._client.release(
                self.reservation_id, reason="exception", error_code=self._error_code(exc)
            )
        except TollgateError:
            pass


class AsyncReservationScope(_ScopeState):
    """Async helper returned by :meth:`AsyncTollgate.reservation`."""

    def __init__(self, client: AsyncTollgate, *args: Any) -> None:
        super().__init__(*args)
        self._client = client
        self._task: Optional[asyncio.Task[None]] = None

    async def __aenter__(self) -> AsyncReservationScope:
        answer = await self._client.reserve(
            user_id=self.user_id,
            event=self.event,
            quantity=self.quantity,
            metadata=self._reserve_metadata,
            ttl_seconds=self.ttl_seconds,
            prompt=self._prompt,
        )
        self._admit(answer)
        self._task = asyncio.ensure_future(self._extend_loop())
        return self

    async def _extend_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._client.extend(self.reservation_id, ttl_seconds=self.ttl_seconds)
            except TollgateError as exc:
                self.extend_error = exc

    async def _stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self._stop()
        if exc is not None:
            try:
                await self._client.release(
                    self.reservation_id, reason="exception", error_code=self._error_code(exc)
                )
            except TollgateError:
                pass
            return None
        self.commit_result = await self._client.commit(
            self.reservation_id,
            quantity=self.quantity,
            cost_micros=self.cost_micros,
            metadata=self.metadata,
            if_expired="record",
        )
        return None
