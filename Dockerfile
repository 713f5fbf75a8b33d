# authproxy's container image: Debian 12's own python3 and a virtualenv holding authproxy, nothing else.
#
#   build:  docker build -t authproxy .      (or: buildah bud --format docker -t authproxy .)
#   run:    docker run -p 4180:4180 -v $PWD/config.yaml:/etc/authproxy/config.yaml:ro \
#                  -e CLIENT_SECRET -e COOKIE_SECRET authproxy
#
# The configuration is read from /etc/authproxy/config.yaml (authproxy's default), or the file named by
# AUTHPROXY_CONFIG, or, with no file there, from AUTHPROXY_* variables alone. Arguments go to authproxy:
# `docker run authproxy --check-config /etc/authproxy/config.yaml`, `docker run authproxy secret`.
# tests/container/build-image builds it with buildah where no Docker engine runs; tests/container runs it.

# The same Debian 12 from elsewhere, e.g. a registry mirror: --build-arg BASE_IMAGE=mirror.example/debian:bookworm-slim
ARG BASE_IMAGE=debian:bookworm-slim

# -- build: a virtualenv in /opt/authproxy, made with the same python3 the final image has --------------
FROM ${BASE_IMAGE} AS build
# Debian's versions are not pinned: bookworm only takes security fixes, which a rebuild should pick up.
# binutils for `strip`, in this stage only.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv binutils \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY proxy ./proxy
# Every dependency comes as a wheel (no compiler here), uvloop included (the speed extra: the event loop the
# benchmarks ran on); pip and setuptools leave the virtualenv afterwards.
RUN python3 -m venv /opt/authproxy \
    && /opt/authproxy/bin/pip install --no-cache-dir --disable-pip-version-check '.[speed]' \
    && /opt/authproxy/bin/pip uninstall --yes --quiet pip setuptools \
    && /opt/authproxy/bin/authproxy --version
# Slimming, measured in README.md#the-container. The wheels' extension modules carry their debug symbols
# (uvloop's 13.6 MB .so is 1.6 MB stripped). The .pyc files pip wrote are timestamp-checked, and COPY --from
# does not keep the timestamps they were checked against, so every one was stale in the final image: Python
# compiled each module again at every start. They are replaced by hash-checked ones, which stay valid wherever
# the tree is copied, for the modules authproxy imports (every module of the package and what they import);
# the rest (2.6 MB of source: pydantic.v1 and its mypy plugin, cffi's C parser, Redis search and time series
# commands, idna's Unicode tables) is compiled in memory if it is ever imported. Cython and C sources, headers
# and type stubs are for building and type checking, not for running.
WORKDIR /opt/authproxy
RUN find lib -name '*.so' -exec strip --strip-unneeded {} + \
    && find . -depth -type d -name __pycache__ -exec rm -rf {} + \
    && find lib \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.pyi' -o -name '*.c' -o -name '*.h' \) \
            -delete \
    && rm -f bin/activate* bin/Activate.ps1 \
    && PYTHONDONTWRITEBYTECODE=1 bin/python -c 'import importlib, pkgutil, sys, proxy; \
           [importlib.import_module(m.name) for m in pkgutil.walk_packages(proxy.__path__, "proxy.")]; \
           import aiohttp.web, redis.asyncio, uvloop; \
           files = {getattr(m, "__file__", None) or "" for m in list(sys.modules.values())}; \
           print("\n".join(sorted(f for f in files if f.startswith(sys.prefix) and f.endswith(".py"))))' \
           >/tmp/imported \
    && xargs bin/python -m compileall -q --invalidation-mode checked-hash </tmp/imported \
    && rm /tmp/imported \
    && bin/authproxy --version

# -- final: python3 (and the CA certificates an https provider needs), the virtualenv, a fixed non-root user -
FROM ${BASE_IMAGE}
# After apt: its logs and the -old copies of the files it rewrote go, and so do the parts of the standard
# library that authproxy and its libraries never import: documentation, tests, interactive tools, sqlite, dbm,
# curses, NIS and XML, the pure-Python twins of the C decimal and io modules, CPython's own test extensions; then
# the shared libraries only those needed (sqlite; Kerberos and SunRPC for nis; ncurses for curses). The dpkg
# database still lists those files. tests/container checks that the proxy in the image signs a user in, that every
# module of the package imports there, and that every ELF file left finds its libraries (ldd).
# SC2086: $path is unquoted on purpose, so that its globs expand.
# hadolint ignore=DL3008,SC2086
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log /var/log/alternatives.log \
                               /var/cache/debconf/*-old /var/lib/dpkg/*-old \
    && for path in pydoc_data test unittest distutils lib2to3 idlelib tkinter turtledemo ensurepip venv sqlite3 \
                   curses dbm xml xmlrpc __phello__ pydoc.py doctest.py pdb.py turtle.py tabnanny.py \
                   antigravity.py this.py __hello__.py _pydecimal.py _pyio.py 'lib-dynload/_test*.so' \
                   'lib-dynload/_ctypes_test.*.so' 'lib-dynload/_xxtestfuzz.*.so' 'lib-dynload/xxlimited*.so' \
                   'lib-dynload/_sqlite3.*.so' \
                   'lib-dynload/_curses*.so' 'lib-dynload/_dbm.*.so' 'lib-dynload/_gdbm.*.so' \
                   'lib-dynload/nis.*.so'; do \
           rm -rf /usr/lib/python3.11/$path; \
           case $path in *.py) rm -f "/usr/lib/python3.11/__pycache__/${path%.py}".cpython-311*.pyc ;; esac; \
       done \
    && for lib in libsqlite3.so.0* libnsl.so.2* libtirpc.so.3* libgssapi_krb5.so.2* libkrb5.so.3* krb5 \
                  libk5crypto.so.3* libkrb5support.so.0* libkeyutils.so.1* libncursesw.so.6* libformw.so.6* \
                  libmenuw.so.6* libpanelw.so.6*; do \
           rm -rf /usr/lib/*-linux-gnu/$lib; \
       done \
    && groupadd --gid 10001 authproxy \
    && useradd --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
               --shell /usr/sbin/nologin authproxy \
    && mkdir -p /etc/authproxy
COPY --from=build /opt/authproxy /opt/authproxy
ENV PATH=/opt/authproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so that a runtime refusing to run as root (runAsNonRoot) can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 4180
# `authproxy ping` asks http://127.0.0.1:4180/ping (then https, for `tls`): no curl in the image. Keep `listen` on port 4180.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s CMD ["authproxy", "ping"]
ENTRYPOINT ["authproxy"]
