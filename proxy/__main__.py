"""The command line.

    authproxy [--config FILE]          run the proxy (default command)
    authproxy --check-config FILE      validate, print every problem, exit 0 or 2
    authproxy --check-config FILE --online   ... and try it against the provider (proxy/provider/online.py)
    authproxy secret                   print a new random cookie secret
    authproxy ping [--url URL]         exit 0 if /ping answers 200 (container HEALTHCHECK; no curl needed),
                                       and print what /ready says (``--ready``: exit by it instead)
    authproxy config-schema            print the configuration's JSON Schema (for editors and CI)
    authproxy --version

Without ``--config``, ``$AUTHPROXY_CONFIG`` or /etc/authproxy/config.yaml is read; if that file does
not exist and ``AUTHPROXY_*`` variables are set, the configuration comes from the environment alone.
Exit status 2 means the configuration is unusable; every problem is printed before anything listens.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import http.client
import secrets
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request

from . import __version__
from .config import Config, env_overrides, load_config
from .errors import ConfigError

DEFAULT_CONFIG = "/etc/authproxy/config.yaml"
DEFAULT_PING = "http://127.0.0.1:4180/ping"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authproxy", description="Authenticating reverse proxy (OIDC / OAuth 2.0).")
    parser.add_argument("--config", metavar="FILE", help=f"YAML configuration (default: $AUTHPROXY_CONFIG or "
                                                         f"{DEFAULT_CONFIG}, else the environment)")
    parser.add_argument("--check-config", metavar="FILE", help="validate FILE, print every problem, and exit")
    parser.add_argument("--online", action="store_true", help="with --check-config: also fetch discovery and "
                        "the JWKS, try the authorization request and the client's credentials at the provider")
    parser.add_argument("--version", action="version", version=f"authproxy {__version__}")
    parser.add_argument("--url", default=DEFAULT_PING, help="for ping: the URL to check (without it, "
                                                          "https on the same address is tried too)")
    parser.add_argument("--ready", action="store_true",
                        help="for ping: exit 0 only if /ready (on --url's host) answers that all is ready")
    parser.add_argument("command", nargs="?", choices=["run", "secret", "ping", "config-schema"], default="run",
                        help="run (default), secret, ping or config-schema")
    return parser


def config_path(explicit: str | None) -> str | None:
    """The file to read, or None for a configuration from the environment alone."""
    if explicit:
        return explicit
    path = os.environ.get("AUTHPROXY_CONFIG", DEFAULT_CONFIG)
    if not os.path.exists(path) and env_overrides(os.environ):
        return None
    return path


# ``authproxy ping``'s time limits: the container's HEALTHCHECK allows 5 s for the whole command, and
# /ready may wait for Redis (``session.redis.timeout``) before it answers.
PING_TIMEOUT = 3.0
READY_TIMEOUT = 1.5


def ping(url: str, *, ready: bool = False) -> int:
    """Exit 0 if ``url`` (/ping) answers 200 — or, with ``ready``, if /ready does; print both answers.

    Without ``--url`` the https spelling is tried too, so the image's ``HEALTHCHECK`` works whether or not
    ``tls`` is on; an https URL on loopback is not verified (the certificate names the public host; this
    only asks whether our own process on this machine answers)."""
    urls = [url] + ([DEFAULT_PING.replace("http://", "https://", 1)] if url == DEFAULT_PING else [])
    for candidate in urls:
        try:
            with urllib.request.urlopen(candidate, timeout=PING_TIMEOUT, context=_loopback_tls(candidate)) as resp:
                alive = resp.status == 200
                print(f"alive: {candidate} answered {resp.status}")
            break
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            print(f"alive: no: {candidate}: {getattr(exc, 'reason', exc)}")
    else:
        return 1
    is_ready = print_readiness(ready_url(candidate), PING_TIMEOUT if ready else READY_TIMEOUT)
    return 0 if (is_ready if ready else alive) else 1


def _loopback_tls(url: str) -> ssl.SSLContext | None:
    if url.startswith("https://") and urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "::1", "localhost"):
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        return context
    return None


def ready_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/ready", "", ""))


def print_readiness(url: str, timeout: float) -> bool:
    """Print what ``/ready`` says, one check a line; whether it said ready."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=_loopback_tls(url)) as resp:
            status, body = resp.status, resp.read(65536)
    except urllib.error.HTTPError as exc:           # 503: not ready, with the JSON that says why
        status, body = exc.code, exc.read(65536)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        print(f"ready: unknown: {url}: {getattr(exc, 'reason', exc)}")
        return False
    try:
        answer = json.loads(body)
        checks = dict(answer["checks"])
    except (ValueError, KeyError, TypeError):
        print(f"ready: {'yes' if status == 200 else 'no'} ({url} answered {status})")
        return bool(status == 200)
    waiting = [name for name, state in checks.items() if state != "ok"]
    print(f"ready: yes ({status})" if status == 200 and not waiting else
          f"ready: no ({status}): " + ", ".join(f"{name} {checks[name]}" for name in waiting))
    for name, state in checks.items():
        print(f"  {name}: {state}")
    return status == 200 and not waiting


def load_checked(path: str | None) -> Config:
    """The configuration, with what validation cannot see checked too: that ``tls``'s files can be served."""
    from .tls import check

    return check(load_config(path), path or "<environment>")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "secret":
        print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
        return 0
    if args.command == "ping":
        return ping(args.url, ready=args.ready)
    if args.command == "config-schema":
        print(json.dumps(Config.model_json_schema(), indent=2))
        return 0
    path = args.check_config or config_path(args.config)
    try:
        config = load_checked(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{path}: configuration is valid")
        return check_online(config) if args.online else 0
    return run(config, path)


def check_online(config: Config) -> int:
    """The configuration tried against the provider: one line per step, exit 2 if any failed."""
    import asyncio

    from .provider.online import check_online as online

    passed, failed = asyncio.run(online(config))
    for line in passed:
        print(f"ok: {line}")
    for line in failed:
        print(f"problem: {line}", file=sys.stderr)
    return 2 if failed else 0


def run(config: Config, path: str | None) -> int:
    from .logs import configure_logging
    from .server import run as serve

    configure_logging(config.logging)
    upstreams = ", ".join(f"{u.path} -> {u.url}" for u in config.upstreams)
    provider = config.provider.issuer or config.provider.authorization_endpoint
    logging.getLogger("authproxy").info(
        "authproxy %s listening on %s://%s:%d for %s; provider %s (%s); upstreams %s; %d worker(s)", __version__,
        "https" if config.tls else "http", config.listen_host, config.listen_port, config.public_url, provider,
        config.provider.type, upstreams, config.worker_count)
    return serve(config, lambda: load_checked(path))


if __name__ == "__main__":
    sys.exit(main())
