"""The command line: ``authproxy --config FILE``, ``--check-config FILE``, ``--version``, ``secret``.

Exit status 2 means the configuration is unusable; every problem is printed before anything listens.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import secrets
import sys

from . import __version__
from .config import Config, load_config
from .errors import ConfigError

DEFAULT_CONFIG = "/etc/authproxy/config.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authproxy", description="Authenticating reverse proxy (OIDC / OAuth 2.0).")
    parser.add_argument("--config", metavar="FILE", default=os.environ.get("AUTHPROXY_CONFIG", DEFAULT_CONFIG),
                        help=f"YAML configuration (default: $AUTHPROXY_CONFIG or {DEFAULT_CONFIG})")
    parser.add_argument("--check-config", metavar="FILE", help="validate FILE, print every problem, and exit")
    parser.add_argument("--version", action="version", version=f"authproxy {__version__}")
    parser.add_argument("command", nargs="?", choices=["run", "secret"], default="run",
                        help="run (default) the proxy, or print a new random cookie secret")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "secret":
        print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
        return 0
    path = args.check_config or args.config
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{path}: configuration is valid")
        return 0
    run(config)
    return 0


def configure_logging(config: Config) -> None:
    logging.basicConfig(stream=sys.stderr, level=config.logging.level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run(config: Config) -> None:
    from aiohttp import web

    from .app import create_app

    configure_logging(config)
    upstreams = ", ".join(f"{u.path} -> {u.url}" for u in config.upstreams)
    logging.getLogger("authproxy").info(
        "authproxy %s listening on %s:%d for %s; provider %s; upstreams %s", __version__, config.listen_host,
        config.listen_port, config.public_url, config.provider.issuer or config.provider.authorization_endpoint,
        upstreams)
    web.run_app(create_app(config), host=config.listen_host, port=config.listen_port, access_log=None,
                print=None, handler_cancellation=True)


if __name__ == "__main__":
    sys.exit(main())
