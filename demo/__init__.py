"""A local demo of authproxy that needs no outside account: ``python -m demo`` from the repository root.

Three processes on loopback, each on a fixed default port (``--help`` for the flags that move them):

- the real OpenID provider, ``oidc-provider`` (tests/idp, started by ``tests.support.idp.start_idp``), on
  127.0.0.1:9000; its development login page accepts any username with any password;
- the demo app (``demo.app``), the application that has no login of its own, on 127.0.0.1:8080;
- authproxy itself, as ``python -m proxy --config FILE`` in a subprocess, on 127.0.0.1:4180, with a config
  written to a temporary directory: a fresh random cookie secret and client secret for every run, and
  ``cookie.secure: false`` because everything is plain http on loopback.

``--smoke`` starts all three, signs in once over plain HTTP (``tests.support.browserless``), checks that the app
greets the user and that signing out works, prints ``OK`` and exits 0. A test runs it.
"""
