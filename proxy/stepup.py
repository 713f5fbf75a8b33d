"""Step-up authentication per route: a rule may ask *how* and *how recently* the user signed in.

An ``authorization`` section (global, an upstream's, or a forward-auth rule set) may list ``acr`` values
(any one will do) and a ``max_auth_age``. A session meets them when the ID token of the sign-in that
started it carried one of those ``acr`` values and an ``auth_time`` at most that old (OIDC Core §2). The
session keeps both from that sign-in's verified ID token only (``authentication``): a refresh's ID token or
userinfo never changes them, so a provider answer on a refresh — or anything a client sends, which is
never read for them — cannot raise a session's level.

A session that falls short (``shortfall``) is not refused outright: a browser navigation is sent to sign
in again with ``acr_values``, ``max_age`` and ``prompt=login`` (``sign_in_parameters``) — ``prompt=login``
because a provider that still holds a session may otherwise answer at once with the old, weaker sign-in
(oidc-provider does) and the user would only come back to be sent away again. When that sign-in returns,
the ID token must answer what was asked (``authorize_params.check_asked``, OIDC Core §3.1.3.7 items 11
and 13); if it does not, the user gets a 403 page (``StepUpRefused``), never another redirect, which
would loop. If it does, the new session replaces the old one, which ends with ``Reason.STEP_UP``.

An API client, and a Bearer token (which cannot sign in again), gets RFC 9470's 401:
``WWW-Authenticate: Bearer error="insufficient_user_authentication"`` naming the ``acr_values`` and
``max_age`` a new token needs (``challenge``).

Age is judged with ``provider.clock_skew`` of leeway, the same leeway the callback allows the new
sign-in's ``auth_time``: a sign-in the callback accepted always meets the route it was made for, so a
provider whose clock runs a little behind ours cannot cause a loop.

A link that starts a step-up sign-in (the 401's ``login_url``, forward-auth's redirect) carries what to ask
for sealed (``step_up_query``), not as ``acr_values=`` in the clear: ``/oauth2/start`` passes a link's own
sign-in parameters only where ``provider.authorize_parameters`` allows them, and a step-up is the
configuration's request, not the link's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import AuthorizationConfig
from .crypto import Sealer
from .errors import CookieError, LoginError
from .model import Session

# The sealed ``step_up`` value of a /oauth2/start link is bound to this purpose (AEAD associated data).
STEP_UP_PURPOSE = b"authproxy step-up"
# Longest sealed ``step_up`` value read from a link (a few acr URNs sealed fit many times).
MAX_STEP_UP_CHARS = 2048


@dataclass(frozen=True, slots=True)
class Requirement:
    """What the rules that apply to a request ask of the sign-in. ``acr``: None = any; otherwise one of
    these (an empty tuple: two rule sets whose lists share no value, which nobody can meet)."""

    acr: tuple[str, ...] | None = None
    max_age: int | None = None


def requirement(rule_sets: Iterable[AuthorizationConfig]) -> Requirement | None:
    """Every rule set must be met: the acr values all of them accept, the shortest age; None if none asks."""
    acr: tuple[str, ...] | None = None
    max_age: int | None = None
    for rules in rule_sets:
        if rules.acr is not None:
            acr = tuple(rules.acr) if acr is None else tuple(value for value in acr if value in rules.acr)
        if rules.max_auth_age is not None:
            age = int(rules.max_auth_age)
            max_age = age if max_age is None else min(max_age, age)
    if acr is None and max_age is None:
        return None
    return Requirement(acr, max_age)


def authentication(id_token_claims: Mapping[str, Any]) -> tuple[str | None, float | None]:
    """``acr`` and ``auth_time`` of a sign-in's verified ID token, when they have their types (OIDC Core §2)."""
    acr = id_token_claims.get("acr")
    auth_time = id_token_claims.get("auth_time")
    if not isinstance(acr, str) or not acr or len(acr) > 1024:
        acr = None
    if not isinstance(auth_time, (int, float)) or isinstance(auth_time, bool) or not math.isfinite(auth_time):
        auth_time = None
    return acr, None if auth_time is None else float(auth_time)


def shortfall(session: Session, needed: Requirement, now: float, leeway: float) -> str | None:
    """What the session's sign-in lacks for ``needed`` (for the operator's log), or None if it meets it."""
    if needed.acr is not None and session.acr not in needed.acr:
        have = "no acr" if session.acr is None else f"acr {session.acr[:100]!r}"
        return f"the sign-in has {have}, the route asks for one of {' '.join(needed.acr)[:200]!r}"
    if needed.max_age is not None:
        if session.auth_time is None:
            return f"the sign-in's time is not known (no auth_time); the route asks for one within {needed.max_age}s"
        age = now - session.auth_time
        if age > needed.max_age + leeway:
            return f"the user signed in {int(age)}s ago; the route asks for a sign-in within {needed.max_age}s"
    return None


def sign_in_parameters(needed: Requirement, configured_prompt: str | None = None) -> dict[str, str]:
    """What a step-up sign-in asks the provider for (OIDC Core §3.1.2.1): the acr values, the age, and
    ``prompt=login`` next to whatever ``extra_authorize_params`` prompts for (``none`` excepted: it
    contradicts ``login``)."""
    params: dict[str, str] = {}
    if needed.acr:
        params["acr_values"] = " ".join(needed.acr)
    if needed.max_age is not None:
        params["max_age"] = str(needed.max_age)
    words = [word for word in (configured_prompt or "").split() if word not in ("none", "login")]
    params["prompt"] = " ".join(["login", *words])
    return params


def challenge(parameters: Mapping[str, str]) -> str:
    """RFC 9470 §3's ``WWW-Authenticate`` for a client whose token's sign-in falls short. The values come
    from the configuration (``config.access``: no quotes, backslashes or controls in an acr value)."""
    header = ('Bearer realm="authproxy", error="insufficient_user_authentication", '
              'error_description="A stronger or more recent sign-in is required"')
    if "acr_values" in parameters:
        header += f', acr_values="{parameters["acr_values"]}"'
    if "max_age" in parameters:
        header += f", max_age={parameters['max_age']}"
    return header


def step_up_query(sealer: Sealer, parameters: Mapping[str, str]) -> str:
    """The sealed ``step_up`` value for a ``/oauth2/start`` link: what the sign-in must ask for."""
    return sealer.seal(json.dumps(dict(parameters), separators=(",", ":")).encode(), STEP_UP_PURPOSE)


def opened_step_up(sealer: Sealer, value: str) -> dict[str, str]:
    """The sign-in parameters a link's ``step_up`` value carries; LoginError if it is not one we sealed."""
    try:
        if len(value) > MAX_STEP_UP_CHARS:
            raise ValueError("too long")
        data = json.loads(sealer.open(value, STEP_UP_PURPOSE))
    except (CookieError, ValueError):
        raise LoginError("The sign-in link's step_up is not valid; start again from the application.") from None
    if not isinstance(data, dict) or not set(data) <= {"acr_values", "max_age", "prompt"} \
            or not all(isinstance(v, str) for v in data.values()):
        raise LoginError("The sign-in link's step_up is not valid; start again from the application.")
    return data
