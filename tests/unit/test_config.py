"""Tests for proxy.config: defaults, every validation rule (path and message), env substitution, loading."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel

from proxy.config import (Config, CookieConfig, LoggingConfig, ProviderConfig, Secret, UpstreamConfig, load_config,
                          parse_config, parse_duration)
from proxy.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"

KEY = "q" * 43  # base64url of 32 bytes, unpadded
OTHER_KEY = "cXFx" * 10 + "cXE="  # standard base64 of 32 bytes, padded
CLIENT_SECRET = "very-secret-client-value"


def minimal() -> dict[str, Any]:
    return {
        "public_url": "https://app.example.com",
        "provider": {"issuer": "https://idp.example.com", "client_id": "authproxy", "client_secret": CLIENT_SECRET},
        "cookie": {"secret": KEY},
        "upstreams": [{"path": "/", "url": "http://127.0.0.1:8080"}],
    }


def with_(**sections: dict[str, Any]) -> dict[str, Any]:
    """The minimal config with keys merged into (or, for top-level scalars, set on) its sections."""
    data = minimal()
    for name, values in sections.items():
        if isinstance(data.get(name), dict) and isinstance(values, dict):
            data[name] = {**data[name], **values}
        else:
            data[name] = values
    return data


def problems(data: object, environ: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="test.yaml", environ=environ or {})
    return {problem.path: problem.message for problem in caught.value.problems}


def assert_problem(data: object, path: str, fragment: str) -> None:
    found = problems(data)
    assert path in found, found
    assert fragment in found[path], found[path]


# --- a valid config and its defaults -----------------------------------------------------------------------------


def test_minimal_config_has_the_documented_defaults() -> None:
    config = parse_config(minimal(), environ={})
    assert (config.listen, config.listen_host, config.listen_port) == ("0.0.0.0:4180", "0.0.0.0", 4180)
    assert config.redirect_uri == "https://app.example.com/oauth2/callback"
    assert config.logging == LoggingConfig(level="info", format="text")
    p = config.provider
    assert (p.type, p.scopes, p.use_userinfo, p.clock_skew, p.timeout) == ("oidc", ["openid", "email", "profile"],
                                                                           False, 60.0, 10.0)
    assert p.token_endpoint_auth_method == "client_secret_basic"
    assert "none" not in p.id_token_algorithms and p.id_token_algorithms[0] == "RS256"
    assert p.client_secret.get() == CLIENT_SECRET and p.extra_authorize_params == {}
    c = config.cookie
    assert (c.name, c.secure, c.samesite, c.domain, c.path) == ("__Host-authproxy", True, "lax", None, "/")
    assert (c.expire, c.refresh_before) == (168 * 3600.0, 60.0)
    assert c.keys == (b"\xaa" * 32,)
    assert config.upstreams == [UpstreamConfig(path="/", url="http://127.0.0.1:8080", timeout=30.0,
                                               connect_timeout=5.0)]


def test_models_are_frozen() -> None:
    config = parse_config(minimal(), environ={})
    with pytest.raises(ValueError, match="frozen"):
        config.listen = "127.0.0.1:1"  # type: ignore[misc]


@pytest.mark.parametrize(("public_url", "origin", "redirect_uri"), [
    ("https://App.Example.com/", "https://app.example.com", "https://App.Example.com/oauth2/callback"),
    ("https://app.example.com:443/", "https://app.example.com", "https://app.example.com:443/oauth2/callback"),
    ("http://localhost:8000", "http://localhost:8000", "http://localhost:8000/oauth2/callback"),
    ("HTTP://[::1]:80", "http://[::1]", "HTTP://[::1]:80/oauth2/callback"),
])
def test_public_url_origin_and_redirect_uri(public_url: str, origin: str, redirect_uri: str) -> None:
    config = parse_config(with_(public_url=public_url), environ={})
    assert (config.public_origin, config.redirect_uri) == (origin, redirect_uri)


@pytest.mark.parametrize(("listen", "host", "port"), [("127.0.0.1:0", "127.0.0.1", 0), ("[::]:4180", "::", 4180),
                                                      ("localhost:8080", "localhost", 8080)])
def test_listen_host_and_port(listen: str, host: str, port: int) -> None:
    config = parse_config(with_(listen=listen), environ={})
    assert (config.listen_host, config.listen_port) == (host, port)


def test_case_insensitive_choices_and_oauth2_provider() -> None:
    config = parse_config(with_(
        cookie={"samesite": "Strict"}, logging={"level": "DEBUG", "format": "JSON"},
        provider={"type": "oauth2", "issuer": None, "client_id": "gh", "client_secret": "s",
                  "authorization_endpoint": "https://gh.example/authorize",
                  "token_endpoint": "https://gh.example/token",
                  "userinfo_endpoint": "https://api.gh.example/user", "scopes": ["read:user"]}), environ={})
    assert (config.cookie.samesite, config.logging.level, config.logging.format) == ("strict", "debug", "json")
    assert config.provider.use_userinfo is True


def test_oidc_with_explicit_endpoints_skips_discovery_but_keeps_the_issuer() -> None:
    # The issuer is what every ID token's iss is checked against: without it no sign-in could succeed.
    endpoints = {"issuer": "https://idp.example", "authorization_endpoint": "https://idp.example/a",
                 "token_endpoint": "https://idp.example/t", "jwks_uri": "https://idp.example/jwks"}
    provider = parse_config(with_(provider=endpoints), environ={}).provider
    assert provider.issuer == "https://idp.example" and not provider.needs_discovery
    assert_problem(with_(provider={**endpoints, "issuer": None}), "provider.issuer", "ID tokens are checked")


def test_ca_file_must_exist(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert parse_config(with_(provider={"ca_file": str(bundle)}), environ={}).provider.ca_file == str(bundle)
    assert_problem(with_(provider={"ca_file": str(tmp_path / "nope.pem")}), "provider.ca_file", "no such file")


# --- one failing case per rule: the path and a piece of the message ----------------------------------------------

RULES = [
    ({"listen": "4180"}, "listen", 'must be "host:port"'),
    ({"listen": "::1:4180"}, "listen", "[::]:4180"),
    ({"listen": "host:99999"}, "listen", 'must be "host:port"'),
    ({"listen": "my host:80"}, "listen", 'must be "host:port"'),
    ({"listen": "[nope]:80"}, "listen", 'must be "host:port"'),
    ({"public_url": "ftp://app.example.com"}, "public_url", "http or https URL"),
    ({"public_url": "https://app.example.com/?a=b"}, "public_url", "query or fragment"),
    ({"public_url": "https://user:pw@app.example.com"}, "public_url", "user name or password"),
    ({"provider": {"type": "saml"}}, "provider.type", "'zitadel' or 'django-oauth-toolkit', got 'saml'"),
    ({"provider": {"issuer": "idp.example.com"}}, "provider.issuer", "http or https URL"),
    ({"provider": {"issuer": None}}, "provider.issuer", "required for type oidc"),
    ({"provider": {"issuer": None, "token_endpoint": "https://i/t"}}, "provider.issuer",
     "ID tokens are checked against it"),
    ({"public_url": "https://app.example.com/sub"}, "public_url", "without a path"),
    ({"provider": {"type": "oauth2", "issuer": None, "authorization_endpoint": "https://i/a",
                   "token_endpoint": "https://i/t", "userinfo_endpoint": "https://i/u",
                   "accept_bearer_tokens": True}}, "provider.accept_bearer_tokens", "remove accept_bearer_tokens"),
    ({"provider": {"type": "oauth2", "issuer": None}}, "provider.authorization_endpoint", "required for type oauth2"),
    ({"provider": {"type": "oauth2", "issuer": None}}, "provider.token_endpoint", "required for type oauth2"),
    ({"provider": {"type": "oauth2", "issuer": None}}, "provider.userinfo_endpoint", "add userinfo_endpoint"),
    ({"provider": {"type": "oauth2", "use_userinfo": False, "authorization_endpoint": "https://i/a",
                   "token_endpoint": "https://i/t", "userinfo_endpoint": "https://i/u"}},
     "provider.use_userinfo", "claims always come from userinfo"),
    ({"provider": {"token_endpoint": "not a url"}}, "provider.token_endpoint", "http or https URL"),
    ({"provider": {"client_id": " "}}, "provider.client_id", "is empty"),
    ({"provider": {"client_secret": ""}}, "provider.client_secret", "the value is empty"),
    ({"provider": {"scopes": ["email"]}}, "provider.scopes", 'needs the "openid" scope; add openid'),
    ({"provider": {"scopes": ["openid email"]}}, "provider.scopes[0]", "its own list item"),
    ({"provider": {"scopes": "openid email"}}, "provider.scopes", "expected a list, got 'openid email'"),
    ({"provider": {"token_endpoint_auth_method": "tls_client_auth"}}, "provider.token_endpoint_auth_method",
     "'client_secret_basic', 'client_secret_post', 'client_secret_jwt', 'private_key_jwt' or 'none'"),
    ({"provider": {"id_token_algorithms": ["RS256", "none"]}}, "provider.id_token_algorithms[1]", "unsigned"),
    ({"provider": {"id_token_algorithms": ["HS256"]}}, "provider.id_token_algorithms[0]", "HMAC"),
    ({"provider": {"id_token_algorithms": ["RS257"]}}, "provider.id_token_algorithms[0]", "unknown algorithm"),
    ({"provider": {"id_token_algorithms": []}}, "provider.id_token_algorithms", "at least one"),
    ({"provider": {"use_userinfo": "maybe"}}, "provider.use_userinfo", "expected true or false, got 'maybe'"),
    ({"provider": {"clock_skew": "-5s"}}, "provider.clock_skew", "invalid duration '-5s'"),
    ({"provider": {"timeout": 0}}, "provider.timeout", "longer than zero"),
    ({"provider": {"extra_authorize_params": {"prompt": "consent", "scope": "x", "nonce": "n"}}},
     "provider.extra_authorize_params", "may not set nonce, scope"),
    ({"provider": {"extra_authorize_params": {"max_age": 300}}}, "provider.extra_authorize_params.max_age",
     "expected a string, got 300; put it in quotes"),
    ({"provider": {"issuer": "https://idp.example.com", "isuer": "x"}}, "provider.isuer",
     "unknown key 'isuer'; did you mean 'issuer'?"),
    ({"provider": "https://idp.example.com"}, "provider", "expected a mapping of keys to values"),
    ({"cookie": {"name": "my cookie"}}, "cookie.name", "not a valid cookie name"),
    ({"cookie": {"name": "__Host-s", "path": "/app"}}, "cookie.name", 'path "/" and no domain'),
    ({"cookie": {"name": "__Secure-s", "secure": False}}, "cookie.name", "must be secure"),
    ({"cookie": {"samesite": "None", "secure": False}}, "cookie.samesite", '"none" requires secure: true'),
    ({"cookie": {"samesite": "sometimes"}}, "cookie.samesite", "'lax', 'strict' or 'none'"),
    ({"cookie": {"domain": "https://example.com"}}, "cookie.domain", "must be a host name"),
    ({"cookie": {"path": "app"}}, "cookie.path", 'must start with "/"'),
    ({"cookie": {"expire": "0s"}}, "cookie.expire", "longer than zero"),
    ({"cookie": {"refresh_before": "soon"}}, "cookie.refresh_before", "invalid duration 'soon'"),
    ({"cookie": {"secret": []}}, "cookie.secret", "at least one"),
    ({"cookie": {"secret": "c2hvcnQ"}}, "cookie.secret", "must be exactly 32; make one with `authproxy secret`"),
    ({"cookie": {"secret": "not base64!"}}, "cookie.secret", "not base64; make one with"),
    ({"cookie": {"secret": 12345}}, "cookie.secret", "expected a string, got a number"),
    ({"cookie": {"secret": [KEY, 12345]}}, "cookie.secret[1]", "expected a string, got a number"),
    ({"cookie": {"secure": "yes please"}}, "cookie.secure", "expected true or false"),
    ({"upstreams": []}, "upstreams", "at least one"),
    ({"upstreams": {"path": "/", "url": "http://a"}}, "upstreams", 'each starting with "- "'),
    ({"upstreams": [{"path": "api", "url": "http://a"}]}, "upstreams[0].path", 'must start with "/"'),
    ({"upstreams": [{"path": "/", "url": "127.0.0.1:8080"}]}, "upstreams[0].url", "http or https URL"),
    ({"upstreams": [{"path": "/", "url": "http://a", "timeout": "1 minute"}]}, "upstreams[0].timeout",
     "invalid duration"),
    ({"upstreams": [{"path": "/", "url": "http://a", "connect_timeout": 0}]}, "upstreams[0].connect_timeout",
     "longer than zero"),
    ({"upstreams": [{"path": "/", "url": "http://a"}, {"path": "/", "url": "http://b"}]}, "upstreams[1].path",
     "already the path of upstreams[0]"),
    ({"upstreams": [{"path": "/", "url": "http://a", "adress": "x"}]}, "upstreams[0].adress", "unknown key 'adress'"),
    ({"logging": {"level": "verbose"}}, "logging.level", "'debug', 'info', 'warning' or 'error', got 'verbose'"),
    ({"logging": {"format": "xml"}}, "logging.format", "'text' or 'json'"),
    ({"loging": {}}, "loging", "did you mean 'logging'?"),
    ({"bogus": 1}, "bogus", "remove it (keys allowed here: listen, public_url"),
]


@pytest.mark.parametrize(("change", "path", "fragment"), RULES, ids=[f"{r[1]}-{i}" for i, r in enumerate(RULES)])
def test_each_rule_reports_its_path_and_how_to_fix_it(change: dict[str, Any], path: str, fragment: str) -> None:
    assert_problem(with_(**change), path, fragment)


@pytest.mark.parametrize(("section", "key", "example"), [
    (None, "public_url", 'public_url: "https://app.example.com"'),
    (None, "provider", "client_secret"),
    (None, "cookie", "${COOKIE_SECRET}"),
    (None, "upstreams", 'path: "/"'),
    ("provider", "client_id", 'client_id: "authproxy"'),
    ("cookie", "secret", "authproxy secret"),
])
def test_missing_keys_say_what_to_add(section: str | None, key: str, example: str) -> None:
    data = minimal()
    del (data[section] if section else data)[key]
    path = f"{section}.{key}" if section else key
    assert_problem(data, path, "required key is missing; add it, e.g.")
    assert_problem(data, path, example)


def test_a_missing_client_secret_names_every_way_to_give_one() -> None:
    data = minimal()
    del data["provider"]["client_secret"]
    for fragment in ("required with token_endpoint_auth_method client_secret_basic", "${CLIENT_SECRET}",
                     "client_secret_file", "private_key_jwt"):
        assert_problem(data, "provider.client_secret", fragment)


def test_missing_upstream_url() -> None:
    assert_problem(with_(upstreams=[{"path": "/"}]), "upstreams[0].url", 'url: "http://127.0.0.1:8080"')


def test_every_problem_is_reported_at_once_in_file_order() -> None:
    data = {"listen": "nowhere",
            "provider": {"issuer": "https://idp.example.com", "client_id": "", "client_secret": "s"},
            "cookie": {"secret": "c2hvcnQ"},
            "upstreams": [{"path": "/", "url": "x"}],
            "logging": {"level": "loud", "colour": True}}
    found = problems(data)
    assert list(found) == ["listen", "provider.client_id", "cookie.secret", "upstreams[0].url", "logging.level",
                           "logging.colour", "public_url"], found


def test_cross_field_rules_of_one_section_are_reported_with_other_sections_problems() -> None:
    found = problems(with_(provider={"issuer": None}, cookie={"samesite": "none", "secure": False},
                           upstreams=[{"path": "/", "url": "http://a"}, {"path": "/", "url": "http://b"}],
                           logging={"level": "loud"}))
    assert set(found) == {"provider.issuer", "cookie.samesite", "upstreams[1].path", "logging.level"}


def test_config_error_message_lists_the_source_and_every_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(with_(listen="nowhere", logging={"level": "loud"}), source="authproxy.yaml", environ={})
    assert str(caught.value) == (
        "authproxy.yaml: 2 configuration problems:\n"
        '  - listen: must be "host:port", e.g. "0.0.0.0:4180" or "[::]:4180" for IPv6; got \'nowhere\'\n'
        "  - logging.level: must be one of 'debug', 'info', 'warning' or 'error', got 'loud'")


@pytest.mark.parametrize("data", [None, [], "public_url: x"])
def test_top_level_must_be_a_mapping(data: object) -> None:
    assert_problem(data, "(top level)", "write keys such as public_url")


# --- secrets -----------------------------------------------------------------------------------------------------


def test_secret_never_shows_its_value() -> None:
    secret = Secret("hunter2")
    assert repr(secret) == str(secret) == "Secret('**********')"
    assert f"{secret}" == "Secret('**********')"
    assert secret.get() == "hunter2"
    assert secret == Secret("hunter2") and secret != Secret("other") and secret != "hunter2"
    assert len({secret, Secret("hunter2")}) == 1


def test_config_repr_and_json_dump_hide_secrets() -> None:
    config = parse_config(minimal(), environ={})
    for text in (repr(config), str(config), config.model_dump_json()):
        assert CLIENT_SECRET not in text and KEY not in text


def test_problems_never_echo_secret_values() -> None:
    found = problems(with_(provider={"client_secret": ["hunter2-client"]}, cookie={"secret": ["hunter2-cookie"]}))
    assert "expected a string, got a list" in found["provider.client_secret"]
    assert not any("hunter2" in message for message in found.values()), found


def test_cookie_secret_list_rotates_keys() -> None:
    config = parse_config(with_(cookie={"secret": [OTHER_KEY, KEY + "="]}), environ={})
    assert config.cookie.keys == (b"qqq" * 10 + b"qq", b"\xaa" * 32)
    assert all(isinstance(secret, Secret) for secret in config.cookie.secret)


def test_each_wrong_cookie_key_in_a_list_is_reported() -> None:
    found = problems(with_(cookie={"secret": [KEY, "c2hvcnQ=", KEY[:-4]]}))
    assert set(found) == {"cookie.secret[1]", "cookie.secret[2]"}
    assert "decodes to 5 bytes but must be exactly 32" in found["cookie.secret[1]"]
    assert "secrets.token_bytes(32)" in found["cookie.secret[2]"]


# --- environment substitution ------------------------------------------------------------------------------------


def test_environment_substitution_everywhere_with_defaults_and_escapes() -> None:
    data = with_(public_url="https://${HOST}", provider={"client_secret": "${CLIENT_SECRET}"},
                 cookie={"secret": ["${COOKIE_SECRET}"], "name": "${COOKIE_NAME:-_authproxy}",
                         "path": "${EMPTY:-/app}"},
                 upstreams=[{"path": "/$${literal}", "url": "http://${UPSTREAM:-127.0.0.1:9}/"}])
    environ = {"HOST": "proxy.example.com", "CLIENT_SECRET": "from-env", "COOKIE_SECRET": OTHER_KEY, "EMPTY": ""}
    config = parse_config(data, environ=environ)
    assert config.public_url == "https://proxy.example.com"
    assert config.provider.client_secret.get() == "from-env"
    assert (config.cookie.name, config.cookie.path) == ("_authproxy", "/app")
    assert config.upstreams[0].path == "/${literal}" and config.upstreams[0].url == "http://127.0.0.1:9/"


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHPROXY_TEST_CLIENT_ID", "from-os")
    assert parse_config(with_(provider={"client_id": "${AUTHPROXY_TEST_CLIENT_ID}"})).provider.client_id == "from-os"


def test_unset_environment_variables_are_problems_at_their_paths() -> None:
    found = problems(with_(provider={"client_secret": "${CLIENT_SECRET}"}, cookie={"secret": [KEY, "${OLD}"]},
                           listen="${LISTEN}"))
    fix = "is not set; export it or write the value in the file"
    assert found == {"listen": f"environment variable LISTEN {fix}",
                     "provider.client_secret": f"environment variable CLIENT_SECRET {fix}",
                     "cookie.secret[1]": f"environment variable OLD {fix}"}


def test_malformed_reference_is_a_problem() -> None:
    assert_problem(with_(provider={"client_id": "${not closed"}), "provider.client_id", "write $${ for a literal")


def test_substitution_does_not_change_the_input() -> None:
    data = with_(provider={"client_id": "${ID}"})
    before = copy.deepcopy(data)
    parse_config(data, environ={"ID": "x"})
    assert data == before


# --- durations ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("168h", 604800.0), ("60s", 60.0), ("1h30m", 5400.0), ("500ms", 0.5), ("2m", 120.0), ("7d", 604800.0),
    ("1.5h", 5400.0), ("1m0.5s", 60.5), (" 90 ", 90.0), ("0", 0.0), (45, 45.0), (0.25, 0.25),
])
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "5x", "1h 30m", "-5s", "5 s", "1e3", -1, float("inf"), True, None, [1]])
def test_parse_duration_rejects_with_a_clear_message(text: Any) -> None:
    with pytest.raises(ValueError, match=r"duration|seconds"):
        parse_duration(text)


def test_durations_in_config_accept_strings_and_numbers() -> None:
    config = parse_config(with_(cookie={"expire": "1h", "refresh_before": 0}, provider={"clock_skew": 5.5}), environ={})
    assert (config.cookie.expire, config.cookie.refresh_before, config.provider.clock_skew) == (3600.0, 0.0, 5.5)


# --- loading files -----------------------------------------------------------------------------------------------


def test_load_config_reads_yaml_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "authproxy.yaml"
    path.write_text('public_url: "https://app.example.com/"\n'
                    "provider:\n  issuer: https://idp.example.com\n  client_id: authproxy\n"
                    "  client_secret: ${CLIENT_SECRET}\n"
                    "cookie:\n  secret: ${COOKIE_SECRET}\n"
                    "upstreams:\n  - path: /\n    url: http://127.0.0.1:8080\n")
    config = load_config(path, environ={"CLIENT_SECRET": "s", "COOKIE_SECRET": KEY})
    assert config.public_url == "https://app.example.com"
    assert isinstance(config.provider, ProviderConfig) and isinstance(config.cookie, CookieConfig)


def test_load_config_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("listen: 0.0.0.0:4180\nprovider:\n  issuer: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    (problem,) = caught.value.problems
    assert problem.path.startswith("line ") and ", column " in problem.path
    assert "invalid YAML" in problem.message and str(path) in str(caught.value)


def test_load_config_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("listen: 0.0.0.0:1\ncookie: {}\nlisten: 0.0.0.0:2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert [str(problem) for problem in caught.value.problems] == [
        "line 3, column 1: invalid YAML: duplicate key 'listen'; keep only one: otherwise the later one would "
        "silently win"]


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file") as caught:
        load_config(tmp_path / "absent.yaml")
    assert caught.value.source == os.fspath(tmp_path / "absent.yaml")


def test_load_config_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="the configuration is empty"):
        load_config(path, environ={})


# --- config.example.yaml -----------------------------------------------------------------------------------------

EXAMPLE_ENV = {"CLIENT_SECRET": "example-client-secret", "COOKIE_SECRET": KEY}


def test_example_config_validates() -> None:
    config = load_config(EXAMPLE, environ=EXAMPLE_ENV)
    assert config.provider.client_secret.get() == "example-client-secret"
    assert config.cookie.keys == (b"\xaa" * 32,)
    assert config.upstreams[0].path == "/" and config.upstreams[0].url == "http://127.0.0.1:8080"


def test_example_config_needs_its_environment_variables() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE, environ={})
    assert {problem.path for problem in caught.value.problems} == {"provider.client_secret", "cookie.secret"}


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((found for arg in get_args(annotation) if (found := _nested_model(arg))), None)


def _keys_missing_from(model: type[BaseModel], node: object, path: str) -> list[str]:
    missing = []
    for name, field in model.model_fields.items():
        if not isinstance(node, dict) or name not in node:
            missing.append(path + name)
        elif (nested := _nested_model(field.annotation)) is not None:
            # null means "not set" for an optional section documented elsewhere (upstreams[].authorization)
            items = node[name] if isinstance(node[name], list) else [] if node[name] is None else [node[name]]
            for item in items:
                missing += _keys_missing_from(nested, item, f"{path}{name}.")
    return missing


def test_example_config_shows_every_key_of_every_model() -> None:
    assert _keys_missing_from(Config, yaml.safe_load(EXAMPLE.read_text()), "") == []


def test_example_config_shows_the_defaults() -> None:
    config = load_config(EXAMPLE, environ=EXAMPLE_ENV)
    shown_instead_of_default = {("ProviderConfig", "issuer"), ("ProviderConfig", "client_secret")}
    for section in (config, config.provider, config.cookie, config.upstreams[0], config.logging):
        for name, field in type(section).model_fields.items():
            if not field.is_required() and (type(section).__name__, name) not in shown_instead_of_default:
                assert getattr(section, name) == field.default, f"{type(section).__name__}.{name}"


def test_example_config_comments_every_key() -> None:
    previous = ""
    for line in EXAMPLE.read_text().splitlines():
        if re.match(r"\s*(- )?\w+:", line):
            assert "#" in line or previous.lstrip().startswith("#"), f"no comment for: {line}"
        previous = line if line.strip() else previous


# -- configuration from the environment (AUTHPROXY_<KEY>__<SUBKEY>) ----------------------------------

ENV_ONLY = {
    "AUTHPROXY_PUBLIC_URL": "https://app.example.com",
    "AUTHPROXY_PROVIDER__ISSUER": "https://idp.example.com",
    "AUTHPROXY_PROVIDER__CLIENT_ID": "123",
    "AUTHPROXY_PROVIDER__CLIENT_SECRET": "from-env",
    "AUTHPROXY_PROVIDER__SCOPES": "[openid, email]",
    "AUTHPROXY_COOKIE__SECRET": "a" * 43,
    "AUTHPROXY_COOKIE__SECURE": "false",
    "AUTHPROXY_UPSTREAMS__0__PATH": "/",
    "AUTHPROXY_UPSTREAMS__0__URL": "http://127.0.0.1:8080",
}


def test_config_from_environment_only() -> None:
    config = load_config(None, environ=ENV_ONLY)
    assert config.provider.client_id == "123" and config.provider.client_secret.get() == "from-env"
    assert config.provider.scopes == ["openid", "email"] and config.cookie.secure is False
    assert config.upstreams[0].url == "http://127.0.0.1:8080"


def test_environment_overrides_the_file(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(EXAMPLE.read_text())
    env = {**EXAMPLE_ENV, "AUTHPROXY_PROVIDER__CLIENT_SECRET": "injected", "AUTHPROXY_UPSTREAMS__0__URL":
           "http://127.0.0.1:9999", "AUTHPROXY_LOGGING__LEVEL": "debug"}
    config = load_config(path, environ=env)
    assert config.provider.client_secret.get() == "injected"
    assert config.upstreams[0].url == "http://127.0.0.1:9999" and config.upstreams[0].path == "/"
    assert config.logging.level == "debug"


def test_environment_problems_are_reported_with_their_key_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={**ENV_ONLY, "AUTHPROXY_COOKIE__SAMESITE": "sideways"})
    assert [p.path for p in info.value.problems] == ["cookie.samesite"]


def test_prefixed_variables_that_name_no_key_are_left_for_substitution() -> None:
    config = load_config(None, environ={**ENV_ONLY, "AUTHPROXY_MY_SECRET": "x"})
    assert config.provider.client_id == "123"


def test_json_schema_accepts_what_the_loader_accepts() -> None:
    """``config-schema`` is for editors and CI: the shipped configs must validate against it, and so must
    the spellings the loader takes (durations as "168h" or seconds, one cookie secret or a list)."""
    import jsonschema

    schema = Config.model_json_schema()
    deploy = EXAMPLE.parent / "deploy"
    configmap = next(doc for doc in yaml.safe_load_all((deploy / "kubernetes" / "configmap.yaml").read_text())
                     if doc and doc.get("kind") == "ConfigMap")["data"]["config.yaml"]
    shipped = [yaml.safe_load(EXAMPLE.read_text()), yaml.safe_load((deploy / "authproxy.compose.yaml").read_text()),
               yaml.safe_load(configmap)]
    for data in shipped:
        jsonschema.validate(data, schema)
    base = yaml.safe_load(EXAMPLE.read_text())
    for cookie in ({"secret": "one-key", "expire": "168h", "refresh_before": 60},
                   {"secret": ["new", "old"], "expire": "1h30m", "refresh_before": "500ms"}):
        jsonschema.validate({**base, "cookie": {**base["cookie"], **cookie}}, schema)
    for wrong in ({"expire": "a week"}, {"expire": "1h30"}, {"expire": -1}, {"secret": []}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**base, "cookie": {**base["cookie"], **wrong}}, schema)


@pytest.mark.parametrize(("cookie", "name"), [
    ({}, "__Host-authproxy"),                                        # secure, path "/", no domain: the prefix
    ({"secure": False}, "_authproxy"),                               # __Host- needs Secure
    ({"domain": "example.com"}, "_authproxy"),                       # ... and no Domain
    ({"path": "/app"}, "_authproxy"),                                # ... and Path=/
    ({"name": "_authproxy"}, "_authproxy"),                          # a configured name is kept
    ({"name": "__Host-x"}, "__Host-x"),
])
def test_cookie_name_defaults_to_the_host_prefix_when_it_can(cookie, name):
    """Cookie tossing: a sibling subdomain can set "_authproxy" for the parent domain, never "__Host-…"
    (RFC 6265bis §4.1.3.2). The chunk and login-state names derive from this one."""
    assert parse_config(with_(cookie=cookie), environ={}).cookie.name == name


def test_cookie_name_from_the_environment_is_kept():
    config = parse_config(minimal(), environ={"AUTHPROXY_COOKIE__NAME": "_authproxy"})
    assert config.cookie.name == "_authproxy"


# --- templates_dir and limits -----------------------------------------------------------------------------------


def test_templates_dir_refuses_an_error_page_linked_outside_it(tmp_path):
    (tmp_path / "error.html").symlink_to("/proc/self/environ")
    assert_problem(with_(templates_dir=str(tmp_path)), "templates_dir", "outside the directory")
    (tmp_path / "error.html").unlink()
    (tmp_path / "secret.env").write_text("COOKIE_SECRET=x")
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "error.html").symlink_to("../secret.env")
    assert_problem(with_(templates_dir=str(tmp_path / "pages")), "templates_dir", "outside the directory")


def test_templates_dir_refuses_an_error_page_that_is_no_regular_file(tmp_path):
    (tmp_path / "error.html").mkdir()
    assert_problem(with_(templates_dir=str(tmp_path)), "templates_dir", "not a regular file")
    (tmp_path / "error.html").rmdir()
    os.mkfifo(tmp_path / "error.html")
    assert_problem(with_(templates_dir=str(tmp_path)), "templates_dir", "not a regular file")


def test_templates_dir_follows_links_that_stay_inside_it(tmp_path):
    # A Kubernetes ConfigMap volume: error.html -> ..data/error.html -> ..2026_01_01/error.html
    (tmp_path / "..2026_01_01").mkdir()
    (tmp_path / "..2026_01_01" / "error.html").write_text("<p>$message</p>")
    (tmp_path / "..data").symlink_to("..2026_01_01")
    (tmp_path / "error.html").symlink_to("..data/error.html")
    assert parse_config(with_(templates_dir=str(tmp_path))).templates_dir == str(tmp_path)


def test_limits_must_be_positive():
    found = problems(with_(limits={"header_timeout": 0, "keepalive_timeout": "-1s", "max_connections": 0,
                                   "websocket_max_message": 10, "websockets_per_session": 0}))
    assert set(found) == {"limits.header_timeout", "limits.keepalive_timeout", "limits.max_connections",
                          "limits.websocket_max_message", "limits.websockets_per_session"}, found
    assert "between 1 and" in found["limits.max_connections"]


def test_github_groups_only_with_type_github() -> None:
    from proxy.config import ProviderConfig
    with pytest.raises(ValueError, match="only with type: github"):
        ProviderConfig(issuer="https://idp.example", client_id="c", client_secret="s", github_groups=True)
    github = ProviderConfig(type="github", client_id="c", client_secret="s", github_groups=True)
    assert "read:org" in github.scopes
    assert "read:org" not in ProviderConfig(type="github", client_id="c", client_secret="s").scopes


# -- many hosts ------------------------------------------------------------------------------------------------


def _hosts(**sections: Any) -> Config:
    data: dict[str, Any] = {"public_url": "https://auth.example.com",
                            "provider": {"issuer": "https://idp.example.com", "client_id": "c", "client_secret": "s"},
                            "cookie": {"secret": "c" * 43, "domain": "example.com"},
                            "upstreams": [{"path": "/", "url": "http://127.0.0.1:9"}]}
    data.update(sections)
    return parse_config(data, source="<test>", environ={})


def test_allowed_hosts_are_host_names_or_domains_with_an_optional_port():
    config = _hosts(allowed_hosts=["Wiki.Example.com", ".apps.example.com", "ci.example.com:8443", "x.example.com:*"])
    assert config.allowed_hosts == ["wiki.example.com", ".apps.example.com", "ci.example.com:8443", "x.example.com:*"]
    for bad in ("https://wiki.example.com", "wiki.example.com/x", "*.example.com", "wiki.example.com:", "a..b.com",
                "user@wiki.example.com", "wiki.example.com:99999x"):
        with pytest.raises(ConfigError, match=r"allowed_hosts\[0\]"):
            _hosts(allowed_hosts=[bad])


def test_allowed_hosts_need_a_cookie_domain_covering_them_and_public_url():
    with pytest.raises(ConfigError, match=re.escape("parent domain of them all, e.g. example.com")):
        _hosts(cookie={"secret": "c" * 43}, allowed_hosts=["wiki.example.com"])
    with pytest.raises(ConfigError, match=re.escape("'wiki.example.org' is not under cookie.domain")):
        _hosts(allowed_hosts=["wiki.example.org"])
    with pytest.raises(ConfigError, match=re.escape("'auth.example.com' is not under 'wiki.example.com'")):
        _hosts(cookie={"secret": "c" * 43, "domain": "wiki.example.com"}, allowed_hosts=["wiki.example.com"])


def test_upstreams_route_by_host_and_path_each_pair_once_on_an_allowed_host():
    config = _hosts(allowed_hosts=["wiki.example.com"],
                    upstreams=[{"path": "/", "url": "http://127.0.0.1:9"},
                               {"path": "/", "url": "http://127.0.0.1:10", "host": "Wiki.Example.com"}])
    assert config.upstreams[1].host == "wiki.example.com"
    with pytest.raises(ConfigError, match=re.escape("on host 'wiki.example.com' is already the path of upstreams")):
        _hosts(allowed_hosts=["wiki.example.com"],
               upstreams=[{"path": "/", "url": "http://127.0.0.1:9", "host": "wiki.example.com"},
                          {"path": "/", "url": "http://127.0.0.1:10", "host": "wiki.example.com"}])
    with pytest.raises(ConfigError, match=re.escape("'ci.example.com' is neither public_url's host nor in")):
        _hosts(allowed_hosts=["wiki.example.com"],
               upstreams=[{"path": "/", "url": "http://127.0.0.1:9", "host": "ci.example.com"}])
    with pytest.raises(ConfigError, match=r"upstreams\[0\]\.host"):
        _hosts(upstreams=[{"path": "/", "url": "http://127.0.0.1:9", "host": "wiki.example.com:8080"}])


def test_form_post_needs_secure_cookies() -> None:
    assert_problem(with_(provider={"response_mode": "form_post"}, cookie={"secure": False}),
                   "provider.response_mode", "needs cookie.secure: true")
    assert parse_config(with_(provider={"response_mode": "form_post"}), environ={}).provider.response_mode == \
        "form_post"


def test_response_mode_is_not_an_extra_parameter() -> None:
    assert_problem(with_(provider={"extra_authorize_params": {"response_mode": "form_post"}}),
                   "provider.extra_authorize_params", "response_mode")


def test_a_discovery_url_pasted_as_issuer_says_what_to_set() -> None:
    assert_problem(with_(provider={"issuer": "https://idp.example.com/realms/x/.well-known/openid-configuration"}),
                   "provider.issuer", "set issuer: 'https://idp.example.com/realms/x'")


# --- step-up: acr and max_auth_age in every authorization section --------------------------------------------


@pytest.mark.parametrize("where", ["authorization", "upstreams[0].authorization", "forward_auth.rule_sets[0]"])
@pytest.mark.parametrize(("keys", "key", "fragment"), [
    ({"acr": []}, "acr", "is empty: list the acr values"),
    ({"acr": "urn:example:mfa"}, "acr", "expected a list"),
    ({"acr": ["urn:example mfa"]}, "acr[0]", "without spaces"),
    ({"acr": ['urn:"mfa"']}, "acr[0]", "quotes"),
    ({"acr": [""]}, "acr[0]", "one acr value"),
    ({"acr": ["urn:example:" + c * 90 for c in "xyz"]}, "acr", "more than 256 characters"),
    ({"max_auth_age": -5}, "max_auth_age", "zero or more"),
    ({"max_auth_age": "-5m"}, "max_auth_age", "invalid duration"),
    ({"max_auth_age": 0}, "max_auth_age", "at least 1"),
    ({"max_auth_age": "1.5"}, "max_auth_age", "whole number of seconds"),
    ({"max_auth_age": "soon"}, "max_auth_age", "invalid duration"),
])
def test_step_up_keys_name_the_fix(where: str, keys: dict[str, object], key: str, fragment: str) -> None:
    data = minimal()
    if where == "authorization":
        data["authorization"] = keys
    elif where.startswith("upstreams"):
        data["upstreams"] = [{**data["upstreams"][0], "authorization": keys}]
    else:
        data["forward_auth"] = {"rule_sets": [{"name": "mfa", **keys}]}
    assert_problem(data, f"{where}.{key}", fragment)


def test_step_up_keys_are_read_everywhere_rules_are() -> None:
    data = minimal()
    data["authorization"] = {"max_auth_age": "1h"}
    data["upstreams"] = [{**data["upstreams"][0], "authorization": {"acr": ["urn:example:mfa", "2"]}}]
    data["forward_auth"] = {"rule_sets": [{"name": "mfa", "acr": ["urn:example:mfa"], "max_auth_age": 300}]}
    config = parse_config(data, source="test.yaml", environ={})
    assert config.authorization.max_auth_age == 3600 and config.authorization.acr is None
    assert config.upstreams[0].authorization is not None
    assert config.upstreams[0].authorization.acr == ["urn:example:mfa", "2"]
    rule_set = config.forward_auth.rule_set("mfa")
    assert rule_set is not None and (rule_set.acr, rule_set.max_auth_age) == (["urn:example:mfa"], 300)


def test_config_schema_describes_the_step_up_keys() -> None:
    import jsonschema

    schema = Config.model_json_schema()
    keys = schema["$defs"]["AuthorizationConfig"]["properties"]
    assert "acr_values" in keys["acr"]["description"] and "max_age" in keys["max_auth_age"]["description"]
    assert {"acr", "max_auth_age"} <= set(schema["$defs"]["RuleSet"]["properties"])
    base = yaml.safe_load(EXAMPLE.read_text())
    for good in ({"acr": ["urn:example:mfa"]}, {"acr": None}, {"max_auth_age": "15m"}, {"max_auth_age": 900}):
        jsonschema.validate({**base, "authorization": {**base["authorization"], **good}}, schema)
    for wrong in ({"acr": "urn:example:mfa"}, {"acr": [1]}, {"max_auth_age": "soon"}, {"acr_values": ["x"]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**base, "authorization": {**base["authorization"], **wrong}}, schema)


def test_step_up_needs_an_openid_connect_provider() -> None:
    """A plain OAuth 2.0 provider sends no ID token, so no acr: a route asking for one could never be met,
    and every sign-in would send the user back to sign in again."""
    data = minimal()
    data["provider"] = {"type": "github", "client_id": "Iv1.x", "client_secret": "s"}
    data["upstreams"] = [{**data["upstreams"][0], "authorization": {"acr": ["urn:example:mfa"]}}]
    data["forward_auth"] = {"rule_sets": [{"name": "fresh", "max_auth_age": "5m"}]}
    found = problems(data)
    assert "OpenID Connect" in found["upstreams[0].authorization.acr"]
    assert "remove max_auth_age" in found["forward_auth.rule_sets[0].max_auth_age"]
