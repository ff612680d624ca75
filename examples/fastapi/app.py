"""A FastAPI app whose `POST /chat` streams a (fake) LLM answer, gated by Tollgate.

Why it looks like this: the reservation must be decided *before* the streaming
response starts (a denied user gets a 429 with the limit that ran out, not a
broken stream), and settled *after* the last token (commit the tokens actually
streamed, or release when the model fails). So the helper is entered by hand
before the response and exited by the stream's generator.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Union

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from tollgate import AsyncReservationScope, AsyncTollgate, QuotaExceeded

#: The most tokens one answer may stream; reserved up front, the rest returned on commit.
MAX_TOKENS = 64
EVENT = "llm.tokens"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.tollgate = AsyncTollgate(
        base_url=os.environ.get("TOLLGATE_URL", "http://127.0.0.1:7070"),
        secret_key=os.environ["TOLLGATE_KEY"],
    )
    yield
    await app.state.tollgate.aclose()


app = FastAPI(lifespan=lifespan)


class ChatRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=256)
    message: str = Field(min_length=1, max_length=4000)


async def fake_llm(message: str) -> AsyncIterator[str]:
    """Stands in for a model: echoes the message word by word, up to MAX_TOKENS."""
    words = f"You said: {message}".split()
    for word in words[:MAX_TOKENS]:
        await asyncio.sleep(0.01)
        yield word + " "


async def settle(scope: AsyncReservationScope, message: str) -> AsyncIterator[str]:
    """Stream the answer, then commit the tokens streamed (or release on failure)."""
    try:
        async for token in fake_llm(message):
            scope.quantity += 1
            yield token
    except BaseException as exc:
        await scope.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    await scope.__aexit__(None, None, None)


@app.post("/chat", response_model=None)
async def chat(body: ChatRequest) -> Union[StreamingResponse, JSONResponse]:
    tg: AsyncTollgate = app.state.tollgate
    scope = tg.reservation(user_id=body.user_id, event=EVENT, quantity=MAX_TOKENS)
    try:
        await scope.__aenter__()
    except QuotaExceeded as denied:
        limit = denied.answer.limits[0] if denied.answer.limits else None
        return JSONResponse(
            status_code=429,
            content={
                "error": "quota_exceeded",
                "reasons": denied.answer.reasons,
                "remaining": limit.remaining if limit else 0,
                "resetsAt": limit.resets_at if limit else None,
            },
        )
    scope.quantity = 0  # count what is actually streamed
    return StreamingResponse(settle(scope, body.message), media_type="text/plain")
