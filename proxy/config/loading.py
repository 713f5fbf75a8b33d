"""Reading the configuration: YAML, ``${VAR}`` substitution, ``AUTHPROXY_*`` overrides, and turning every
validation error into a Problem with its YAML path and a fix."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, get_args, get_origin

import yaml
from pydantic import (BaseModel, ValidationError)
from pydantic_core import ErrorDetails

from ..errors import ConfigError, Problem
from .base import _CrossFieldProblems
from .models import Config
from .values import _ENV_REF, _IDENTIFIER, MAKE_KEY_HINT, Loc, Secret, _kind

ENV_PREFIX = "AUTHPROXY_"
# Environment variables with the prefix that are not configuration keys.
_ENV_NOT_KEYS = frozenset({"AUTHPROXY_CONFIG"})


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Configuration keys from ``AUTHPROXY_<KEY>__<SUBKEY>`` variables (``__`` nests, a number indexes a list).

    ``AUTHPROXY_PROVIDER__ISSUER=https://idp`` sets ``provider.issuer``; ``AUTHPROXY_UPSTREAMS__0__URL``
    sets ``upstreams[0].url``; a value starting with ``[`` or ``{`` is read as YAML (``["a", "b"]``).
    This is how Kubernetes injects secrets; values here override the file's. Only variables whose first
    part names a top-level key count, so ``${AUTHPROXY_SOMETHING}`` can still be used for substitution.
    """
    data: dict[str, Any] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in _ENV_NOT_KEYS:
            continue
        parts: list[Any] = [int(p) if p.isdigit() else p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        if parts[0] not in Config.model_fields:
            continue
        value: Any = environ[name]
        if value.lstrip().startswith(("[", "{")):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass                      # left as text: validation then says what is wrong
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data


def _merge(base: Any, override: Any) -> Any:
    """``override`` over ``base``: mappings merge key by key; integer keys address list items."""
    if isinstance(override, dict) and isinstance(base, list) and all(isinstance(k, int) for k in override):
        merged = list(base)
        for index, value in override.items():
            while len(merged) <= index:
                merged.append({})
            merged[index] = _merge(merged[index], value)
        return merged
    if isinstance(override, dict) and all(isinstance(k, int) for k in override) and override and base is None:
        return _merge([], override)
    if isinstance(override, dict) and isinstance(base, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in override.items()}}
    return override


def load_config(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file at ``path`` (None: environment only), apply ``AUTHPROXY_*`` overrides,
    substitute ``${VAR}`` and validate; raise ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    if path is None:
        return parse_config({}, source="(environment)", environ=env)
    source = os.fsdecode(path)
    try:
        with open(source, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise ConfigError(source, [Problem("(file)", "no such file; check the path, or start from "
                                                     "config.example.yaml")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [Problem("(file)", f"cannot be read ({exc}); check that it is a readable "
                                                     "UTF-8 text file")]) from None
    return parse_config(_parse_yaml(text, source), source=source, environ=env)


def parse_config(data: object, *, source: str = "<config>", environ: Mapping[str, str] | None = None) -> Config:
    """Substitute ``${VAR}`` in already-parsed YAML and validate it; raise ConfigError listing every problem."""
    overrides = env_overrides(os.environ if environ is None else environ)
    if overrides and (isinstance(data, dict) or data is None):
        data = _merge(data or {}, overrides)
    if not isinstance(data, dict) or not data:
        what = "empty" if not data else f"{_kind(data)}, not a mapping"
        raise ConfigError(source, [Problem("(top level)", f"the configuration is {what}; write keys such as "
                                                          "public_url, provider, cookie and upstreams "
                                                          "(see config.example.yaml)")])
    found: list[tuple[Loc, str]] = []
    expanded = _substitute(data, (), os.environ if environ is None else environ, found)
    unset = [loc for loc, _ in found]
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        located = [(_as_written(expanded, loc), message) for loc, message in _locate(exc)]
        found += [(loc, message) for loc, message in located if not any(loc[:len(u)] == u for u in unset)]
    else:
        if not found:
            return config
    found.sort(key=lambda item: _document_order(data, item[0]))
    raise ConfigError(source, [Problem(_path(loc), message) for loc, message in found])


def _as_written(data: object, loc: Loc) -> Loc:
    """A list the file gave as one scalar (``secret: KEY``) is reported at the scalar's path, without ``[0]``."""
    for index, part in enumerate(loc):
        if isinstance(part, int) and not isinstance(data, (list, dict)):
            return loc[:index] + loc[index + 1:]
        try:
            data = data[part]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            break
    return loc


def _document_order(data: object, loc: Loc) -> tuple[int, ...]:
    """Where ``loc`` sits in the file, so problems read top to bottom; missing keys sort after their siblings."""
    order: list[int] = []
    for part in loc:
        keys = list(data) if isinstance(data, dict) else range(len(data)) if isinstance(data, list) else []
        if part not in keys:
            order.append(len(keys))
            break
        order.append(keys.index(part))  # type: ignore[arg-type]   # a str for a dict, an int for a list
        data = data[part]  # type: ignore[index]
    return tuple(order)


class _DuplicateKey(yaml.constructor.ConstructorError):
    hint = "keep only one: otherwise the later one would silently win"


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise _DuplicateKey(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _parse_yaml(text: str, source: str) -> object:
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
        hint = getattr(exc, "hint", "fix the syntax there (indentation, colons, quotes)")
        raise ConfigError(source, [Problem(where, f"invalid YAML: {exc.problem}; {hint}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [Problem("(yaml)", f"invalid YAML: {exc}")]) from None


def _substitute(value: object, loc: Loc, environ: Mapping[str, str], found: list[tuple[Loc, str]]) -> object:
    """Replace ``${NAME}`` in every string value (not keys); record unset variables and non-string keys."""
    if isinstance(value, str):
        return _ENV_REF.sub(lambda match: _env_value(match, loc, environ, found), value)
    if isinstance(value, list):
        return [_substitute(item, (*loc, index), environ, found) for index, item in enumerate(value)]
    if isinstance(value, dict):
        for key in [key for key in value if not isinstance(key, str)]:
            found.append(((*loc, yaml.safe_dump(key).splitlines()[0]), "this key is not a string (YAML reads "
                          'yes/no/on/off as true/false and bare numbers as numbers); quote it, e.g. "on":'))
        return {key: _substitute(item, (*loc, key), environ, found) for key, item in value.items()
                if isinstance(key, str)}
    return value


def _env_value(match: re.Match[str], loc: Loc, environ: Mapping[str, str], found: list[tuple[Loc, str]]) -> str:
    name, default = match["name"], match["default"]
    if match[0] == "$${":
        return "${"
    if name is None:
        found.append((loc, 'has a "${" that is not ${NAME} or ${NAME:-default}; fix it, or write $${ for a '
                           'literal "${"'))
        return match[0]
    value = environ.get(name)
    if default is not None:
        return value or default
    if value is None:
        found.append((loc, f"environment variable {name} is not set; export it or write the value in the file"))
        return ""
    return value


def _locate(error: ValidationError) -> Iterator[tuple[Loc, str]]:
    for detail in error.errors():
        loc = tuple(detail["loc"])
        cause = detail.get("ctx", {}).get("error")
        if isinstance(cause, _CrossFieldProblems):
            yield from ((loc + sub, message) for sub, message in cause.problems)
        else:
            yield loc, _message(detail, loc)


_EXPECTED = {"string_type": "a string", "bool_type": "true or false", "bool_parsing": "true or false",
             "float_type": "a number", "float_parsing": "a number", "int_type": "a whole number",
             "int_parsing": "a whole number", "list_type": "a list", "tuple_type": "a list",
             "dict_type": "a mapping of keys to values", "model_type": "a mapping of keys to values",
             "model_attributes_type": "a mapping of keys to values"}

_EXAMPLES = {
    "public_url": 'public_url: "https://app.example.com"',
    "provider": ('provider: {issuer: "https://idp.example.com", client_id: "authproxy", '
                 'client_secret: "${CLIENT_SECRET}"}'),
    "provider.client_id": 'client_id: "authproxy" (the client ID the identity provider gave this app)',
    "provider.client_secret": 'client_secret: "${CLIENT_SECRET}"',
    "cookie": 'cookie: {secret: "${COOKIE_SECRET}"}',
    "cookie.secret": f'secret: "${{COOKIE_SECRET}}"; {MAKE_KEY_HINT}',
    "upstreams": 'upstreams: [{path: "/", url: "http://127.0.0.1:8080"}]',
    "upstreams.path": 'path: "/"',
    "upstreams.url": 'url: "http://127.0.0.1:8080"',
}


def _message(detail: ErrorDetails, loc: Loc) -> str:
    """What is wrong and how to fix it, in words; never a secret's value."""
    kind, ctx, value = detail["type"], detail.get("ctx", {}), detail.get("input")
    secret, _ = _resolve(loc)
    given = _kind(value) if secret else _given(value)
    if kind == "missing":
        example = _EXAMPLES.get(".".join(part for part in loc if isinstance(part, str)))
        return f"required key is missing; add it, e.g. {example}" if example else \
            "required key is missing; add it (see config.example.yaml)"
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {given}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {given}{_type_hint(kind, value)}"
    return f"{detail['msg']} (see config.example.yaml)"


def _type_hint(kind: str, value: object) -> str:
    if kind == "string_type" and isinstance(value, (int, float, bool)):
        return "; put it in quotes"
    if kind in ("list_type", "tuple_type"):
        return '; write one item per line, each starting with "- "'
    return ""


def _unknown_key(loc: Loc) -> str:
    _, model = _resolve(loc[:-1])
    names = list(model.model_fields) if model else []
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    if close:
        return f"unknown key {loc[-1]!r}; did you mean {close[0]!r}?"
    return f"unknown key {loc[-1]!r}; remove it (keys allowed here: {', '.join(names)})"


def _resolve(loc: Loc) -> tuple[bool, type[BaseModel] | None]:
    """Walk ``loc`` through the models: is it inside a Secret field, and which model is there."""
    model: type[BaseModel] | None = Config
    secret = False
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            continue
        field = model.model_fields.get(part) if model and isinstance(part, str) else None
        if field is None:
            return secret, None
        secret = secret or _find_class(field.annotation, Secret) is not None
        model = _find_class(field.annotation, BaseModel)
    return secret, model


def _find_class(annotation: Any, base: type[Any]) -> Any:
    if get_origin(annotation) is None and isinstance(annotation, type) and issubclass(annotation, base):
        return annotation
    for arg in get_args(annotation):
        if (found := _find_class(arg, base)) is not None:
            return found
    return None


def _path(loc: Loc) -> str:
    """``upstreams[0].url`` from ``("upstreams", 0, "url")``."""
    text = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        elif isinstance(part, str) and _IDENTIFIER.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text or "(top level)"




def _given(value: object) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return _kind(value)
