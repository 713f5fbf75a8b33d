"""Policy expressions: access rules written as CEL over the user's claims and the request.

The four allow-lists (``authz.py``) say *who*; an expression can also say *what*: ``"admins" in groups
|| (email.endsWith("@example.com") && method == "GET")``. Expressions are CEL (the Common Expression
Language of Kubernetes, Envoy and Google IAM): no loops, no side effects, no I/O, guaranteed to end —
what a rule in a proxy's configuration must be. Never Python's ``eval``.

The library is ``common-expression-language`` (the Rust ``cel-interpreter`` behind a Python binding),
an optional extra (``pip install 'authproxy[policy]'``): a compiled rule evaluates in ~35 µs, where the
pure-Python ``cel-python`` took ~1.6 ms, which every request of a restricted upstream would pay.

- **Compiled once**: ``compile_rule`` at configuration load; a syntax error or an unknown name stops
  start-up naming the rule (``check``), instead of denying every request later.
- **Variables** (``VARIABLES``): ``user`` (the user id, ``sub`` for OpenID Connect), ``email`` (verified
  and well formed, else ``""``), ``preferred_username``, ``name``, ``groups`` (a list), ``method``,
  ``path`` (normalised, segment parameters removed: the match key every other rule sees), ``host``;
  at ``/oauth2/auth``, the original request a trusted ingress describes (``forward_auth.py``:
  ``X-Forwarded-Method/-Uri/-Host``, ``X-Original-URL``, Envoy's path; else empty strings).
  Nothing else: in particular no token.
- **Fail closed**: an expression that errors at run time (a type mismatch) or returns anything but
  ``true`` denies, with the error in the operator's log.
- **Tested with the configuration**: each rule may carry cases (claims and a request in, allow or deny
  out); ``run_cases`` runs them at load, so ``--check-config`` fails on a policy that does not do what
  its author wrote down, before it is deployed.
"""

from __future__ import annotations

import importlib
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import AuthorizationConfig
    from .model import Identity


def _library() -> types.ModuleType | None:
    """The CEL library, or None without the ``policy`` extra (then a rule is a configuration error)."""
    try:
        return importlib.import_module("cel")
    except ImportError:
        return None


cel = _library()

VARIABLES = frozenset({"user", "email", "preferred_username", "name", "groups", "method", "path", "host"})
INSTALL_HINT = "install the policy extra: pip install 'authproxy[policy]'"


@dataclass(frozen=True, slots=True)
class Facts:
    """What an expression may look at: who (already checked claims) and what they ask for."""

    user: str
    email: str
    preferred_username: str
    name: str
    groups: tuple[str, ...]
    method: str
    path: str
    host: str

    def activation(self) -> dict[str, Any]:
        return {"user": self.user, "email": self.email, "preferred_username": self.preferred_username,
                "name": self.name, "groups": list(self.groups), "method": self.method, "path": self.path,
                "host": self.host}


class CompiledRule:
    """One expression, compiled; ``allows(facts)`` is true only for a boolean ``true``."""

    __slots__ = ("_program", "source")

    def __init__(self, source: str) -> None:
        program, problem = _compiled(source)
        if program is None:
            raise ValueError(problem)
        self.source = source
        self._program = program

    def allows(self, facts: Facts) -> tuple[bool, str]:
        """(allowed, reason): the reason says why not, for the operator's log."""
        try:
            result = self._program.execute(facts.activation())
        except Exception as exc:                 # the binding maps CEL errors to many Python types: all deny
            return False, f"the expression failed: {_first_line(exc)}"
        if result is True:
            return True, "allowed"
        return False, "the expression is false" if result is False else f"the expression gave {type(result).__name__}"


_COMPILED: dict[str, CompiledRule] = {}


def compile_rule(source: str) -> CompiledRule:
    """The compiled rule for ``source``, compiled the first time only (configuration loads and reloads)."""
    rule = _COMPILED.get(source)
    if rule is None:
        rule = _COMPILED[source] = CompiledRule(source)
    return rule


def check(source: str) -> str | None:
    """What is wrong with ``source`` as a rule, or None: the library missing, a syntax error, a name
    that is not a variable (a misspelt ``group`` would otherwise deny everyone at run time)."""
    return _compiled(source)[1]


def _compiled(source: str) -> tuple[Any, str | None]:
    """(the compiled program, None), or (None, what is wrong with it)."""
    if cel is None:
        return None, f"policy expressions need the CEL library; {INSTALL_HINT}"
    try:
        program = cel.compile(source)
    except (ValueError, RuntimeError) as exc:
        return None, f"not a valid CEL expression: {_first_line(exc)}"
    unknown = sorted(set(program.variables()) - VARIABLES)
    if unknown:
        return None, f"unknown name {unknown[0]!r}; the variables are {', '.join(sorted(VARIABLES))}"
    return program, None


def facts(identity: Identity, email: str | None, method: str, path: str, host: str) -> Facts:
    """The facts for one request; ``email`` as ``authz`` checked it (verified, well formed) or None."""
    return Facts(user=identity.sub, email=email or "", preferred_username=identity.preferred_username or "",
                 name=identity.name or "", groups=identity.groups, method=method, path=path, host=host)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def run_case(rules: AuthorizationConfig, claims: dict[str, Any], method: str, path: str,
             host: str) -> tuple[bool, str]:
    """A test from the configuration, through the same steps as a request: the claims become an identity
    as the provider's would (``Identity.from_claims``), then ``authz.authorize`` decides."""
    from .authz import Asked, authorize
    from .errors import TokenValidationError
    from .model import Identity

    try:
        identity = Identity.from_claims(claims)
    except TokenValidationError as exc:
        return False, f"the claims name no user: {_first_line(exc)}"
    decision = authorize(identity, rules, Asked(method, path, host))
    return decision.allowed, decision.reason
