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
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
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

# -- final: python3 (and the CA certificates an https provider needs), the virtualenv, a fixed non-root user -
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
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
