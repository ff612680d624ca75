"""User tokens (API.md section 12), minted offline.

A user token is a short-lived signed statement that lets a browser, holding only a
publishable key, read one user's usage and credits. :func:`mint_user_token` makes,
without a round trip, the same token ``POST /v1/user-tokens`` answers, from the
three values ``GET /v1/settings`` shows a secret key (``tokenSecret``,
``projectId``, ``environment``). The token secret signs tokens for every user of its
environment: keep it on the server, like a secret key.

Format, version 1 (the contract's; the server verifies the HMAC over the exact
characters it receives before the ``.``, then parses the JSON)::

    token   = "tg_ut_" + B64(payload) + "." + B64(HMAC-SHA256(key, "tg_ut_" + B64(payload)))
    B64     = base64url without padding (RFC 4648 section 5)
    key     = the UTF-8 bytes of the whole token secret, prefix included
    payload = UTF-8 JSON {"v": 1, "prj": project_id, "env": environment,
                          "sub": user_id, "exp": unix seconds}

The JSON is written compactly, in that field order, with non-ASCII characters as
they are, exactly as the TypeScript SDK's ``JSON.stringify`` writes it, so both SDKs
mint the same token from the same inputs (their tests share known answers).
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import json
import math
import re
import time
from typing import Optional, Union

from .models import UserToken

USER_TOKEN_PREFIX = "tg_ut_"
USER_TOKEN_VERSION = 1
#: A token's lifetime when none is given.
USER_TOKEN_TTL_SECONDS_DEFAULT = 3_600
#: The longest lifetime the server accepts (a day).
USER_TOKEN_TTL_SECONDS_MAX = 86_400
#: The longest token the server accepts; a token is ASCII, so characters are bytes.
USER_TOKEN_BYTES_MAX = 1_024
#: The API's bound on a user id (section 1), in UTF-8 bytes.
USER_ID_BYTES_MAX = 256

# ``tg_ts_<env>_`` then 32 random bytes in base64url without padding: 43 characters.
_TOKEN_SECRET = re.compile(r"tg_ts_(test|live)_[A-Za-z0-9_-]{43}")
# Unicode's control characters (category Cc): C0, DEL and C1.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

Now = Union[_dt.datetime, int, float]


def mint_user_token(
    *,
    token_secret: str,
    project_id: str,
    environment: str,
    user_id: str,
    ttl_seconds: int = USER_TOKEN_TTL_SECONDS_DEFAULT,
    now: Optional[Now] = None,
) -> UserToken:
    """Sign a user token offline with the environment's token secret.

    ``environment`` is ``"test"`` or ``"live"`` and must be the secret's own;
    ``user_id`` is 1-256 UTF-8 bytes without control characters; ``ttl_seconds`` is
    1-86400. ``now`` (default: the current time) is an aware ``datetime`` or Unix
    seconds. Answers a :class:`UserToken` (``token``, ``expires_at``), like
    ``create_user_token``. Raises ``TypeError`` or ``ValueError`` naming the
    argument at fault; the secret itself is never quoted.
    """
    _check_environment(environment)
    _check_token_secret(token_secret, environment)
    _check_project_id(project_id)
    _check_user_id(user_id)
    _check_ttl_seconds(ttl_seconds)
    exp = _unix_seconds(now) + ttl_seconds

    payload = {
        "v": USER_TOKEN_VERSION,
        "prj": project_id,
        "env": environment,
        "sub": user_id,
        "exp": exp,
    }
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    signed = USER_TOKEN_PREFIX + _b64url(text.encode("utf-8"))
    mac = hmac.new(token_secret.encode("utf-8"), signed.encode("ascii"), hashlib.sha256)
    token = f"{signed}.{_b64url(mac.digest())}"
    if len(token) > USER_TOKEN_BYTES_MAX:
        raise ValueError(
            f"the token would be {len(token)} bytes, over the server's "
            f"{USER_TOKEN_BYTES_MAX}; shorten user_id"
        )
    expiry = _dt.datetime.fromtimestamp(exp, _dt.timezone.utc)
    expires_at = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
    raw = {"token": token, "expiresAt": expires_at}
    return UserToken(token=token, expires_at=expires_at, raw=raw)


def _check_environment(environment: object) -> None:
    if environment not in ("test", "live"):
        raise ValueError('environment must be "test" or "live"')


def _check_token_secret(token_secret: object, environment: str) -> None:
    if not isinstance(token_secret, str):
        raise TypeError("token_secret must be a str")
    match = _TOKEN_SECRET.fullmatch(token_secret)
    if match is None:
        raise ValueError(
            "token_secret must be a token secret, tg_ts_test_ or tg_ts_live_ and 43 base64url "
            "characters (GET /v1/settings shows it as tokenSecret)"
        )
    if match.group(1) != environment:
        raise ValueError(
            f"token_secret is the {match.group(1)} environment's secret "
            f'but environment is "{environment}"'
        )


def _check_project_id(project_id: object) -> None:
    if not isinstance(project_id, str):
        raise TypeError("project_id must be a str")
    if not project_id.startswith("prj_") or project_id == "prj_" or _CONTROL.search(project_id):
        raise ValueError(
            "project_id must be the project's id, prj_... (GET /v1/settings shows it as projectId)"
        )


def _check_user_id(user_id: object) -> None:
    if not isinstance(user_id, str):
        raise TypeError("user_id must be a str")
    try:
        size = len(user_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("user_id is not valid Unicode (a lone surrogate)") from None
    if not 1 <= size <= USER_ID_BYTES_MAX:
        raise ValueError(f"user_id must be 1-{USER_ID_BYTES_MAX} UTF-8 bytes, not {size}")
    if _CONTROL.search(user_id):
        raise ValueError("user_id must not contain control characters")


def _check_ttl_seconds(ttl_seconds: object) -> None:
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise TypeError(f"ttl_seconds must be an int from 1 to {USER_TOKEN_TTL_SECONDS_MAX}")
    if not 1 <= ttl_seconds <= USER_TOKEN_TTL_SECONDS_MAX:
        raise ValueError(f"ttl_seconds must be from 1 to {USER_TOKEN_TTL_SECONDS_MAX}")


def _unix_seconds(now: Optional[Now]) -> int:
    """Whole seconds since the epoch, rounded down."""
    if now is None:
        return math.floor(time.time())
    if isinstance(now, _dt.datetime):
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be an aware datetime (a naive one names no instant)")
        return math.floor(now.timestamp())
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise TypeError("now must be an aware datetime or Unix seconds")
    return math.floor(now)


def _b64url(data: bytes) -> str:
    """RFC 4648 section 5 base64url, without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
