"""The configuration: one typed, frozen model, read and validated once at start-up.

A proxy that guards a login should refuse to start on a bad configuration rather than fail on
the first request, and the operator should be able to fix everything in one pass. So
:func:`load_config` reads the YAML, substitutes ``${VAR}`` from the environment, validates with
pydantic and turns *every* problem (wrong types, misspelt or missing keys, rules across fields)
into a :class:`~proxy.errors.Problem` with its YAML path and a sentence on how to fix it, all
raised together in one :class:`~proxy.errors.ConfigError`, in the order they appear in the file.
A rule across fields of one section runs once that section's fields are each valid, so it never
complains about a value that is wrong in itself. Nothing is built here: the app builds its
clients and stores from the frozen result, so validating has no side effects.

This is the only module that reads YAML or the environment. Secrets live in :class:`Secret`,
whose repr is redacted, and no error message quotes a secret's value.

In every string value, before validation: ``${NAME}`` is replaced from the environment,
``${NAME:-default}`` falls back to the default when NAME is unset or empty, and ``$${`` is a
literal ``${``.

The package: ``values`` (secrets, durations and single-field rules); the frozen models with their rules
across fields — ``base`` (what every model shares), ``provider``, ``sessions`` (cookie and session store),
``access`` (upstreams, authorization, skip_auth, cors), ``tracing`` and ``models`` (``Config`` itself, limits, logging);
``loading`` (YAML, substitution, environment overrides, error messages).
"""

from .loading import ENV_PREFIX, env_overrides, load_config, parse_config
from .access import (AuthorizationConfig, CorsConfig, ForwardAuthConfig, IdentityAssertionConfig,
                     IdentityHeadersConfig, RuleSet, SkipAuthRule, TLSConfig, UpstreamConfig)
from .models import Config, LimitsConfig, ListenTLSConfig, LoggingConfig
from .provider import ClaimsConfig, ProviderConfig
from .sessions import CookieConfig, RedisConfig, SessionConfig
from .tracing import TracingConfig
from .values import (CALLBACK_PATH, COOKIE_KEY_BYTES, DEFAULT_ID_TOKEN_ALGORITHMS, KNOWN_ID_TOKEN_ALGORITHMS,
                     MAKE_KEY_HINT, RESERVED_AUTHORIZE_PARAMS, TEMPLATE_NAME, Duration, Loc, PositiveDuration, Secret,
                     parse_duration, template_problem)

__all__ = [
                     "CALLBACK_PATH",
                     "COOKIE_KEY_BYTES",
                     "DEFAULT_ID_TOKEN_ALGORITHMS",
                     "ENV_PREFIX",
                     "KNOWN_ID_TOKEN_ALGORITHMS",
                     "MAKE_KEY_HINT",
                     "RESERVED_AUTHORIZE_PARAMS",
                     "TEMPLATE_NAME",
                     "AuthorizationConfig",
                     "ClaimsConfig",
                     "Config",
                     "CookieConfig",
                     "CorsConfig",
                     "Duration",
                     "ForwardAuthConfig",
                     "IdentityAssertionConfig",
                     "IdentityHeadersConfig",
                     "LimitsConfig",
                     "ListenTLSConfig",
                     "Loc",
                     "LoggingConfig",
                     "PositiveDuration",
                     "ProviderConfig",
                     "RedisConfig",
                     "RuleSet",
                     "Secret",
                     "SessionConfig",
                     "SkipAuthRule",
                     "TLSConfig",
                     "TracingConfig",
                     "UpstreamConfig",
                     "env_overrides",
                     "load_config",
                     "parse_config",
                     "parse_duration",
                     "template_problem",
]
