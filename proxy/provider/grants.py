"""The token endpoint's side of the code flow: how the client authenticates, and what an answer is.

RFC 6749 §4.1.3 (the code exchange) and §6 (refresh) send the same kind of request and get the same
kind of answer (§5.1); this module checks the answer, turning it into a ``TokenSet``. ``Provider``
sends the request (through ``client.py``), authenticated by ``clientauth.py``. An answer whose token
could not be forwarded upstream, or whose expiry is no number of seconds, is a ``ProviderError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ProviderError

# Longest access-token lifetime believed; a longer expires_in is cut to it (the token is refreshed earlier).
MAX_EXPIRES_IN = 366 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class TokenSet:
    """A successful token response (RFC 6749 §5.1), with ``expires_in`` turned into a time."""

    access_token: str
    expires_at: float | None
    refresh_token: str | None
    id_token: str | None

    def __repr__(self) -> str:
        return f"TokenSet(expires_at={self.expires_at}, refresh_token={'yes' if self.refresh_token else 'no'})"


def token_set(step: str, body: Mapping[str, Any], now: float) -> TokenSet:
    """A token response as a ``TokenSet``, or the ``ProviderError`` that says why it cannot be used."""
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise ProviderError(step, "the token response has no access_token")
    if not access.isascii() or not access.isprintable():
        # RFC 6749 Appendix A.12: VSCHAR only. It goes into every upstream request's Authorization
        # header: a CR or LF would split it (both HTTP clients refuse, so it was a 500 each time).
        raise ProviderError(step, "the access_token has characters other than printable ASCII")
    token_type = body.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise ProviderError(step, f"token_type is {str(token_type)[:40]!r}, but only Bearer tokens can be "
                            "forwarded (RFC 6750)")
    expires_at = _expires_at(step, body.get("expires_in"), now)
    refresh, id_token = body.get("refresh_token"), body.get("id_token")
    return TokenSet(access_token=access, expires_at=expires_at,
                    refresh_token=refresh if isinstance(refresh, str) and refresh else None,
                    id_token=id_token if isinstance(id_token, str) and id_token else None)


def _expires_at(step: str, expires_in: object, now: float) -> float | None:
    """RFC 6749 §5.1 ``expires_in`` as a time: a non-negative finite number (some providers send it as
    a string), capped at ``MAX_EXPIRES_IN``; ``NaN`` or ``Infinity`` would make the token never due."""
    if expires_in is None:
        return None
    try:
        seconds = float(expires_in) if not isinstance(expires_in, bool) else math.nan  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ProviderError(step, "expires_in is not a number of seconds")
    return now + min(seconds, MAX_EXPIRES_IN)
