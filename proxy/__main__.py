"""The command line.

    authproxy [--config FILE]          run the proxy (default command)
    authproxy --check-config FILE      validate, print every problem, exit 0 or 2
    authproxy --check-config FILE --online   ... and try it against the provider (proxy/provider/online.py)
    authproxy secret                   print a new random cookie secret
    authproxy ping [--url URL]         exit 0 if /ping answers 200 (container HEALTHCHECK; no curl needed)
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


def ping(url: str) -> int:
    """0 when ``url`` answers 200. Without ``--url``, the https spelling is tried too, so the image's
    ``HEALTHCHECK`` works whether or not ``tls`` is on; an https URL on loopback is not verified (the
    certificate names the public host; this only asks whether our own process on this machine answers)."""
    urls = [url] + ([DEFAULT_PING.replace("http://", "https://", 1)] if url == DEFAULT_PING else [])
    return 0 if any(_answers(candidate) for candidate in urls) else 1


def _answers(url: str) -> bool:
    context = None
    if url.startswith("https://") and urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "::1", "localhost"):
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return False


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
        return ping(args.url)
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
