"""The documentation against the code, so it cannot drift.

- ``docs/configuration.md`` has one table row per configuration key. Walking the pydantic models (through
  nested models and lists of models), every key has a row and every row is a key; required keys say
  "required"; every documented default is the value authproxy really uses; every example validates; booleans,
  durations and the choices of enumerations are named in the type column; and every row's
  ``AUTHPROXY_...`` variable sets that key.
- Every ``yaml`` block in ``docs/`` that is an authproxy configuration (a top-level key of ``Config``)
  validates, completed with a minimal ``public_url``/``cookie``/``upstreams``/``provider`` where it leaves
  them out; ``providers.md`` has one for every preset.
- ``docs/migrating-from-oauth2-proxy.md`` covers the common oauth2-proxy flags and names only real keys.
- The nginx snippet in ``docs/deployment.md`` passes ``nginx -t`` (when nginx is installed).
"""

from __future__ import annotations

import os

import base64
import copy
import datetime
import itertools
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
import yaml
from joserfc.jwk import RSAKey
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from proxy import presets
from proxy.config import Config, env_overrides, parse_config, parse_duration
from proxy.errors import ConfigError
from tests.support.certs import self_signed_pem

DOCS = Path(__file__).resolve().parents[2] / "docs"
CONFIGURATION = DOCS / "configuration.md"
PROVIDERS = DOCS / "providers.md"
DEPLOYMENT = DOCS / "deployment.md"
MIGRATING = DOCS / "migrating-from-oauth2-proxy.md"

COOKIE_SECRET = base64.urlsafe_b64encode(b"c" * 32).decode()
ENVIRON = {
    "CLIENT_SECRET": "client-secret-from-the-environment",
    "COOKIE_SECRET": COOKIE_SECRET,
    "OLD_COOKIE_SECRET": base64.b64encode(b"o" * 32).decode(),
    "REDIS_PASSWORD": "redis-password-from-the-environment",
}
MINIMAL: dict[str, Any] = {
    "public_url": "https://app.example.com",
    "provider": {"issuer": "https://idp.example.com", "client_id": "authproxy", "client_secret": "${CLIENT_SECRET}"},
    "cookie": {"secret": "${COOKIE_SECRET}"},
    "upstreams": [{"path": "/", "url": "http://127.0.0.1:8080"}],
}
# The configuration defaults and examples are tried against: MINIMAL plus one of each optional section, so a
# key inside them can be set alone. Sentinel URLs are there so that `sentinel_master` may be set alone.
BASE: dict[str, Any] = {
    **copy.deepcopy(MINIMAL),
    "upstreams": [{"path": "/", "url": "http://127.0.0.1:8080", "authorization": {}, "identity_headers": {},
                   "identity_assertion": {"header": "X-Authproxy-Assertion"}}],
    "session": {"redis": {"sentinel_urls": ["redis://10.0.0.1:26379"]}},
    "skip_auth": [{"path": "^/public/"}],
}
# Keys whose validation needs the file or directory to exist: their example is replaced by a real one.
EXISTING_PATHS = {"provider.ca_file": "file", "upstreams[].tls.ca_file": "file", "session.redis.ca_file": "file",
                  "templates_dir": "dir", "provider.client_secret_file": "file", "provider.private_key_file": "file",
                  "provider.private_key_certificate_file": "file"}
# What such a file holds, where an empty one would be refused.
_CLIENT_KEY = RSAKey.generate_key(2048, private=True)
FILE_CONTENTS = {"provider.client_secret_file": "secret-from-a-file\n",
                 "provider.private_key_file": _CLIENT_KEY.as_pem(private=True).decode(),
                 "provider.private_key_certificate_file": self_signed_pem(_CLIENT_KEY).decode()}
_KEY_DIR = tempfile.TemporaryDirectory(prefix="authproxy-docs-")
CLIENT_KEY_FILE = Path(_KEY_DIR.name) / "client-key.pem"
CLIENT_KEY_FILE.write_text(FILE_CONTENTS["provider.private_key_file"])
_KEY_AUTH = {"provider.token_endpoint_auth_method": "private_key_jwt", "provider.client_secret": None}
COLUMNS = ["key", "type", "default", "meaning", "example", "environment variable"]
# Keys whose example is valid only together with another key's value.
# ... and only for their example (their default, null, needs none of it).
EXAMPLE_COMPANIONS = {"provider.client_secret_file": {"provider.client_secret": None},
                      "provider.private_key_file": _KEY_AUTH,
                      **{f"provider.{key}": {**_KEY_AUTH, "provider.private_key_file": str(CLIENT_KEY_FILE)}
                         for key in ("token_endpoint_auth_method", "private_key_id", "client_assertion_audience",
                                     "private_key_certificate_file")}}
COMPANIONS = {"session.redis.ca_file": {"session.redis.url": "rediss://redis.internal:6380/0"},
              # the listener's TLS needs both files named (their contents are checked at start-up, not here)
              **{f"tls.{key}": {"tls.cert_file": "/etc/tls.crt", "tls.key_file": "/etc/tls.key"}
                 for key in ("min_version", "reload_interval", "redirect_http_listen", "client_ca_file")},
              "tls.cert_file": {"tls.key_file": "/etc/tls.key"}, "tls.key_file": {"tls.cert_file": "/etc/tls.crt"},
              # other hosts share the sign-in only through a cookie on a parent domain, and must be allowed
              "allowed_hosts": {"cookie.domain": "example.com"},
              "upstreams[].host": {"cookie.domain": "example.com", "allowed_hosts": ["wiki.example.com"]},
              "cors.allow_preflight": {"cors.preflight_paths": ["^/api/"]},
              "provider.github_groups": {"provider.type": "github"},
              "provider.microsoft_graph_url": {"provider.type": "microsoft", "provider.tenant": "t-1"},
              "provider.google_hosted_domains": {"provider.type": "google"},
              # a test case needs its claims and its expected outcome (all lists empty: allowed)
              **{f"{section}.tests[].{key}": {f"{section}.tests[].claims": {"sub": "alice"},
                                              f"{section}.tests[].allow": True}
                 for section in ("authorization", "upstreams[].authorization")
                 for key in ("method", "path", "host")},
              **{f"{section}.tests[].claims": {f"{section}.tests[].allow": True}
                 for section in ("authorization", "upstreams[].authorization")},
              **{f"{section}.tests[].allow": {f"{section}.tests[].claims": {"sub": "alice"}}
                 for section in ("authorization", "upstreams[].authorization")},
              # a rule set needs its name, and its test cases their claims and outcome
              **{f"forward_auth.rule_sets[].{key}": {"forward_auth.rule_sets[].name": "admins"}
                 for key in ("email_domains", "allowed_emails", "allowed_groups", "allowed_users", "rules", "tests",
                             "acr", "max_auth_age")},
              **{f"forward_auth.rule_sets[].tests[].{key}": {"forward_auth.rule_sets[].name": "admins",
                                                             "forward_auth.rule_sets[].tests[].claims": {"sub": "a"},
                                                             "forward_auth.rule_sets[].tests[].allow": True}
                 for key in ("method", "path", "host")},
              "forward_auth.rule_sets[].tests[].claims": {"forward_auth.rule_sets[].name": "admins",
                                                          "forward_auth.rule_sets[].tests[].allow": True},
              "forward_auth.rule_sets[].tests[].allow": {"forward_auth.rule_sets[].name": "admins",
                                                         "forward_auth.rule_sets[].tests[].claims": {"sub": "a"}}}


# -- the models -----------------------------------------------------------------------------------------------


def model_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """``(dotted path, field)`` for every field, recursing into nested models; list items are ``name[]``."""
    for name, info in model.model_fields.items():
        path = prefix + name
        yield path, info
        nested, in_list = _nested_model(info.annotation)
        if nested is not None:
            yield from model_fields(nested, path + ("[]." if in_list else "."))


def _nested_model(annotation: Any, in_list: bool = False) -> tuple[type[BaseModel] | None, bool]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, in_list
    origin = get_origin(annotation)
    for arg in get_args(annotation):
        found, found_in_list = _nested_model(arg, in_list or origin in (list, tuple))
        if found is not None:
            return found, found_in_list
    return None, False


def _literals(annotation: Any) -> list[str]:
    if get_origin(annotation) is Literal:
        return [str(value) for value in get_args(annotation)]
    return [value for arg in get_args(annotation) for value in _literals(arg)]


def _is_duration(info: FieldInfo) -> bool:
    return any(getattr(meta, "func", None) is parse_duration for meta in info.metadata)


FIELDS = dict(model_fields(Config))


# -- the doc's key tables -------------------------------------------------------------------------------------


def _code(cell: str) -> str | None:
    """The text of the cell's first `code` span."""
    match = re.search(r"`([^`]*)`", cell)
    return match[1] if match else None


def key_rows(text: str) -> dict[str, dict[str, str]]:
    """The rows of every table whose header is COLUMNS, by the key in their first cell."""
    rows: dict[str, dict[str, str]] = {}
    in_table = False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells == COLUMNS:
            in_table = True
            continue
        if not in_table or set(line) <= set("|-: "):
            continue
        assert len(cells) == len(COLUMNS), f"configuration.md line {number} has {len(cells)} cells, not 6"
        key = _code(cells[0])
        assert key is not None, f"configuration.md line {number}: the key is not in backticks"
        assert key not in rows, f"configuration.md documents {key} twice"
        rows[key] = dict(zip(COLUMNS, cells, strict=False))
    return rows


ROWS = key_rows(CONFIGURATION.read_text(encoding="utf-8"))


def _steps(path: str) -> list[str | int]:
    """``upstreams[].tls.ca_file`` → ``["upstreams", 0, "tls", "ca_file"]``."""
    steps: list[str | int] = []
    for part in path.split("."):
        if part.endswith("[]"):
            steps += [part[:-2], 0]
        else:
            steps.append(part)
    return steps


def _has(data: Any, steps: list[str | int]) -> bool:
    for step in steps:
        try:
            data = data[step]
        except (KeyError, IndexError, TypeError):
            return False
    return True


def _set(data: dict[str, Any], steps: list[str | int], value: Any) -> None:
    node: Any = data
    for step, following in itertools.pairwise(steps):
        if isinstance(step, int):
            while len(node) <= step:
                node.append({})
        elif step not in node or node[step] is None:
            node[step] = [] if isinstance(following, int) else {}
        node = node[step]
    last = steps[-1]
    if isinstance(last, int):
        while len(node) <= last:
            node.append(None)
    node[last] = value


def _get(config: Config, steps: list[str | int]) -> Any:
    value: Any = config
    for step in steps:
        value = value[step] if isinstance(step, int) else getattr(value, step)
    return value


def _parse(data: object) -> Config:
    return parse_config(data, source="<docs>", environ=ENVIRON)


def _value(cell: str) -> Any:
    code = _code(cell)
    assert code is not None
    return yaml.safe_load(code)


# -- configuration.md -----------------------------------------------------------------------------------------


def test_every_configuration_key_is_documented():
    missing = sorted(set(FIELDS) - set(ROWS))
    assert not missing, f"docs/configuration.md lacks a row for: {', '.join(missing)}"


def test_every_documented_key_exists():
    stale = sorted(set(ROWS) - set(FIELDS))
    assert not stale, f"docs/configuration.md documents keys the models do not have: {', '.join(stale)}"


DOCUMENTED = sorted(set(FIELDS) & set(ROWS))


@pytest.mark.parametrize("path", DOCUMENTED)
def test_required_keys_and_only_those_say_so(path):
    says_required = ROWS[path]["default"].startswith("required")
    assert says_required == FIELDS[path].is_required(), ROWS[path]["default"]


@pytest.mark.parametrize("path", DOCUMENTED)
def test_type_column_names_booleans_durations_and_choices(path):
    info, cell = FIELDS[path], ROWS[path]["type"]
    if info.annotation is bool:
        assert "boolean" in cell
    if _is_duration(info):
        assert "duration" in cell
    for choice in _literals(info.annotation):
        assert f"`{choice}`" in cell, f"{path}: the type column does not list `{choice}`"


DEFAULTS = [path for path in sorted(ROWS) if path in FIELDS and _code(ROWS[path]["default"]) is not None
            and not _has(BASE, _steps(path))]


def test_the_defaults_checked_are_most_of_them():
    assert len(DEFAULTS) > 50, DEFAULTS


@pytest.mark.parametrize("path", DEFAULTS)
def test_documented_default_is_the_real_one(path):
    """Setting a key to its documented default changes nothing."""
    steps = _steps(path)
    base = copy.deepcopy(BASE)
    for other, companion in COMPANIONS.get(path, {}).items():
        _set(base, _steps(other), companion)
    data = copy.deepcopy(base)
    _set(data, steps, _value(ROWS[path]["default"]))
    assert _get(_parse(data), steps) == _get(_parse(base), steps)


EXAMPLES = [path for path in sorted(ROWS) if _code(ROWS[path]["example"]) is not None]


def test_every_leaf_key_has_an_example():
    leaves = [path for path in FIELDS if not any(other.startswith((path + ".", path + "[]"))
                                                 for other in FIELDS)]
    assert sorted(set(leaves) - set(EXAMPLES)) == []


@pytest.mark.parametrize("path", EXAMPLES)
def test_documented_example_is_valid(path, tmp_path):
    value = _value(ROWS[path]["example"])
    if path in EXISTING_PATHS:             # validation needs it to exist: use a real one of the same kind
        assert isinstance(value, str) and value.startswith("/")
        real = tmp_path / "example"
        if EXISTING_PATHS[path] == "file":
            real.write_text(FILE_CONTENTS.get(path, ""))
        else:
            real.mkdir()
        value = str(real)
    data = copy.deepcopy(BASE)
    _set(data, _steps(path), value)
    for other, companion in {**COMPANIONS.get(path, {}), **EXAMPLE_COMPANIONS.get(path, {})}.items():
        _set(data, _steps(other), companion)
    try:
        _parse(data)
    except ConfigError as exc:
        pytest.fail(f"the example for {path} ({ROWS[path]['example']}) is refused: {exc}")


@pytest.mark.parametrize("path", sorted(ROWS))
def test_environment_variable_sets_the_key(path):
    name = _code(ROWS[path]["environment variable"])
    expected = "AUTHPROXY_" + "__".join(str(step).upper() for step in _steps(path))
    assert name == expected
    overrides = env_overrides({name: "value"})
    assert _has(overrides, _steps(path)), overrides


# -- configuration snippets in every doc ----------------------------------------------------------------------


def yaml_blocks(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every ```yaml fenced block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```yaml":
            start = number
        elif start is not None and line.strip() == "```":
            yield start, "\n".join(lines[start:number - 1])
            start = None
    assert start is None, f"{path.name}: the yaml block at line {start} is not closed"


def config_snippets(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The blocks that are authproxy configuration: a mapping with at least one top-level key of Config."""
    found = []
    for line, text in yaml_blocks(path):
        data = yaml.safe_load(text)
        if isinstance(data, dict) and set(data) & set(Config.model_fields):
            found.append((f"{path.name}:{line}", data))
    return found


SNIPPETS = [snippet for doc in (CONFIGURATION, PROVIDERS, DEPLOYMENT, MIGRATING) for snippet in config_snippets(doc)]


@pytest.mark.parametrize(("where", "snippet"), SNIPPETS, ids=[where for where, _ in SNIPPETS])
def test_configuration_snippet_is_valid(where, snippet):
    """Each snippet, with the required sections it leaves out taken from a minimal configuration."""
    data = {**copy.deepcopy(MINIMAL), **snippet}
    try:
        _parse(data)
    except ConfigError as exc:
        pytest.fail(f"the configuration at {where} is refused: {exc}")


def test_providers_md_has_a_snippet_for_every_preset_and_for_okta_and_auth0():
    snippets = [data for _, data in config_snippets(PROVIDERS) if "provider" in data]
    types = {data["provider"].get("type", "oidc") for data in snippets}
    assert set(presets.PRESETS) <= types
    issuers = " ".join(str(data["provider"].get("issuer", "")) for data in snippets)
    assert "okta.com" in issuers and "auth0.com" in issuers


def test_providers_md_names_the_three_urls_to_register():
    text = PROVIDERS.read_text(encoding="utf-8")
    for path in ("/oauth2/callback", "/oauth2/signed_out", "/oauth2/backchannel_logout"):
        assert "https://app.example.com" + path in text


# -- the migration guide --------------------------------------------------------------------------------------

# oauth2-proxy flags the guide must cover.
FLAGS = (
    "--provider", "--oidc-issuer-url", "--client-id", "--client-secret", "--cookie-secret", "--cookie-name",
    "--cookie-secure", "--cookie-samesite", "--cookie-domain", "--cookie-expire", "--cookie-refresh", "--upstream",
    "--email-domain", "--authenticated-emails-file", "--allowed-group", "--skip-auth-route", "--api-route",
    "--skip-jwt-bearer-tokens", "--extra-jwt-issuers", "--pass-access-token", "--set-xauthrequest",
    "--reverse-proxy", "--redirect-url", "--session-store-type", "--redis-connection-url", "--whitelist-domain",
    "--http-address", "--metrics-address", "--scope", "--code-challenge-method", "--backend-logout-url",
)
_KEY_LIKE = re.compile(r"[a-z_]+(\[\])?(\.[a-z_]+(\[\])?)*")


def migration_rows() -> list[list[str]]:
    rows, in_table = [], False
    for line in MIGRATING.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[:2] == ["oauth2-proxy", "authproxy"] and len(cells) == 3:
            in_table = True
        elif in_table and not set(line) <= set("|-: "):
            assert len(cells) == 3, line
            rows.append(cells)
    return rows


def test_migration_table_covers_the_common_flags():
    flags = {flag for first, _, _ in migration_rows() for flag in re.findall(r"`(--[a-z0-9-]+)", first)}
    assert sorted(set(FLAGS) - flags) == []


def test_migration_table_names_only_real_keys():
    for _, keys, notes in migration_rows():
        for code in re.findall(r"`([^`]+)`", keys + " " + notes):
            path = code.split(":")[0].strip()
            if _KEY_LIKE.fullmatch(path) and path.split(".")[0].removesuffix("[]") in Config.model_fields:
                assert path in FIELDS, f"the migration guide names {code!r}, which is not a configuration key"


# -- links ----------------------------------------------------------------------------------------------------

_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slugs(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text."""
    slugs = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower().replace("`", "")
            slugs.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return slugs


@pytest.mark.parametrize("doc", [CONFIGURATION, PROVIDERS, DEPLOYMENT, MIGRATING], ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(doc):
    for target in _LINK.findall(doc.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists(), f"{doc.name} links to {target}, which does not exist"
        if anchor:
            assert anchor in _slugs(file.read_text(encoding="utf-8")), f"{doc.name}: no heading for {target}"


# -- the nginx snippet ----------------------------------------------------------------------------------------

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "app.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# Outside CI nginx may be missing; in CI (.ci/run installs nginx-light) it must run.
@pytest.mark.skipif(not Path(NGINX).exists() and not os.environ.get("CI"), reason="nginx is not installed")
def test_nginx_snippet_passes_nginx_t(tmp_path):
    blocks = re.findall(r"```nginx\n(.*?)```", DEPLOYMENT.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) == 1
    cert, key = _self_signed(tmp_path)
    snippet = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", blocks[0])
    snippet = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", snippet)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path};\n  proxy_temp_path {tmp_path};\n"
        f"{snippet}\n}}\n")
    result = subprocess.run([NGINX, "-t", "-q", "-e", "stderr", "-p", str(tmp_path), "-c",
                             str(tmp_path / "nginx.conf")], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr


# -- test references in the docs -----------------------------------------------------------------------------

# A test named in a document: `tests/x/test_y.py::test_z[case]`, or `::test_z` after such a path on the same line.
_TEST_REF = re.compile(r"`((?:tests/[\w/]+\.py)?::[\w\[\]<>|, .=+-]*?|tests/[\w/]+\.py)`")
_DOCS_WITH_TEST_REFS = ["SECURITY.md", "README.md", "docs/configuration.md", "docs/deployment.md",
                        "docs/providers.md", "docs/migrating-from-oauth2-proxy.md", "tests/fuzz/README.md"]


def _test_refs(text: str) -> list[tuple[str, str]]:
    found = []
    for line in text.splitlines():
        current = None
        for match in _TEST_REF.finditer(line):
            path, _, name = match.group(1).partition("::")
            current = path or current
            if name and current:
                found.append((current, re.split(r"[\[\s]", name, maxsplit=1)[0]))
    return found


@pytest.mark.parametrize("doc", _DOCS_WITH_TEST_REFS)
def test_every_test_a_document_names_exists(doc):
    """SECURITY.md's tables say which test proves each defence: a renamed or deleted test must not leave the
    claim standing without its proof."""
    missing = []
    for path, name in _test_refs((DOCS.parent / doc).read_text()):
        source = DOCS.parent / path
        if not source.is_file() or not re.search(rf"^(async )?def {re.escape(name)}\b", source.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert missing == []


def test_the_test_reference_reader_finds_references():
    refs = _test_refs("| x | `tests/unit/test_a.py::test_b[c]`, `::test_d` |")
    assert refs == [("tests/unit/test_a.py", "test_b"), ("tests/unit/test_a.py", "test_d")]
