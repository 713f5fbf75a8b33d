"""Per-request sign-in parameters: what ``/oauth2/start`` may pass to the provider, and what is checked after.

An application may link to ``/oauth2/start?rd=/x&login_hint=alice@example.com&prompt=login`` to pre-fill the
user name, force a fresh sign-in, or ask for a stronger authentication. Each parameter passes only if
``provider.authorize_parameters`` lists it — anyone can craft such a link, so the operator decides which a
link may set — and only with a value that cannot break the request: printable, at most
``MAX_PARAMETER_CHARS`` characters, and of its parameter's shape (OIDC Core §3.1.2.1). A parameter that is
not allowed is left out; one that is allowed but malformed refuses the sign-in start (400).

OIDC Core §3.1.3.7: when ``max_age`` was asked, the ID token must carry ``auth_time`` (§3.1.2.1) no older
than that; when ``acr_values`` was asked, its ``acr`` must be one of them (the provider may answer a lower
level than asked: item 11 leaves the judgement to the client, and a sign-in that asked for a level and did
not get it is refused). Both apply to ``extra_authorize_params`` too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import LoginError, TokenValidationError

# The parameters /oauth2/start may pass through (OIDC Core §3.1.2.1; domain_hint: Entra ID's, Google's hd-like).
PASSABLE = ("login_hint", "prompt", "acr_values", "max_age", "ui_locales", "domain_hint")
# The parameters whose answer the ID token must carry (check_asked).
CHECKED: tuple[str, ...] = ("max_age", "acr_values")
# Longest value of one parameter: enough for an e-mail address or a list of acr URNs.
MAX_PARAMETER_CHARS = 256
# OIDC Core §3.1.2.1 prompt values, and "create" (Initiating User Registration via OpenID Connect 1.0).
PROMPT_VALUES = frozenset({"none", "login", "consent", "select_account", "create"})

_PRINTABLE = re.compile(r"[\x20-\x7e\u00a0-\ud7ff\ue000-\ufffd]*")   # no controls (CR, LF, NUL, DEL …)
_SHAPES = {
    "max_age": re.compile(r"\d{1,9}"),
    "acr_values": re.compile(r"[\x21-\x7e]+( [\x21-\x7e]+)*"),
    "ui_locales": re.compile(r"[A-Za-z0-9-]+( [A-Za-z0-9-]+)*"),
    "domain_hint": re.compile(r"[A-Za-z0-9.-]+"),
}


def requested(query: Mapping[str, str], allowed: Sequence[str]) -> dict[str, str]:
    """The allowed sign-in parameters of a ``/oauth2/start`` query, each checked; a ``LoginError`` names
    the first bad one. Repeated ones count once (the first), as the rest of the query does."""
    found: dict[str, str] = {}
    for name in allowed:
        value = query.get(name)
        if value is None or value == "":
            continue
        if len(value) > MAX_PARAMETER_CHARS or not _PRINTABLE.fullmatch(value) or not _shaped(name, value):
            raise LoginError(f"The sign-in link's {name} is not valid; start again from the application.")
        found[name] = value
    return found


def _shaped(name: str, value: str) -> bool:
    if name == "prompt":
        words = value.split(" ")
        return all(word in PROMPT_VALUES for word in words) and ("none" not in words or len(words) == 1)
    shape = _SHAPES.get(name)
    return shape is None or shape.fullmatch(value) is not None


def check_asked(claims: Mapping[str, Any], asked: Mapping[str, str], now: float, leeway: float) -> None:
    """OIDC Core §3.1.3.7 items 11 and 13: the ID token answers the ``acr_values`` and ``max_age`` asked."""
    max_age = asked.get("max_age")
    if max_age is not None and max_age.isdigit():
        auth_time = claims.get("auth_time")
        if not isinstance(auth_time, (int, float)) or isinstance(auth_time, bool):
            raise TokenValidationError("auth_time", "max_age was asked, but the ID token has no auth_time "
                                       "(OIDC Core §3.1.2.1)")
        if now - auth_time > int(max_age) + leeway:
            raise TokenValidationError("auth_time", f"the user signed in {int(now - auth_time)}s ago, longer than "
                                       f"the max_age of {max_age}s asked for")
    acr_values = asked.get("acr_values")
    if acr_values:
        acr = claims.get("acr")
        if not isinstance(acr, str) or acr not in acr_values.split(" "):
            raise TokenValidationError("acr", f"acr_values {acr_values[:100]!r} was asked, but the ID token's acr "
                                       f"is {str(acr)[:100]!r}")
