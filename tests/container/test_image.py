"""The container image, built for real and run for real: what an operator who runs authproxy as a sidecar gets.

No Docker engine runs on CI, so ``tests/container/build-image`` builds the Dockerfile with buildah
(``--isolation chroot``) on a ``debian:bookworm-slim`` it makes with debootstrap when the machine has none, and
reuses the image while nothing it is built from changes. ``buildah run`` then starts ``authproxy`` inside the
image, with its configuration mounted at the default path, ``/etc/authproxy/config.yaml``. Chroot isolation shares
the host's network and PID namespace: the proxy in the image reaches the real oidc-provider and an echo upstream on
the host's loopback, the test reaches the proxy on 127.0.0.1, and the proxy's process shows its UID in the host's
``/proc``.

Commands run as the image's own ``USER`` (no ``--user``), so the UID checks test the Dockerfile, not the test.
Nothing here skips: without buildah the tests fail and say what to install (``.ci/run`` installs it).

The image's size is asserted too: at most ``MAX_ADDED_BYTES`` on top of its base, the uncompressed size of the
layers it adds as containers/storage records it (what ``podman images`` shows, read here with ``podman image
inspect``). That figure is a function of the files alone, so it is the same on every rebuild of the same sources;
the test prints what takes the space (``pytest -s -n 0``), and the Dockerfile's slimming is checked where it could
silently stop working: stripped extension modules, valid byte code, the standard library the proxy needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

import proxy
from tests.support.browserless import login_via_http
from tests.support.echo import EchoServer, header_values, start_echo
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET, IdPFactory, client_metadata
from tests.support.idp import IdP
from tests.support.ports import free_port
from tests.support.proxyrun import COOKIE_SECRET, config_dict

REPO = Path(__file__).resolve().parents[2]
BUILD_IMAGE = REPO / "tests" / "container" / "build-image"
# Seconds for build-image: debootstrap (~40 s) and a build (~30-60 s) on a fresh machine, with room for a slow
# mirror; reusing an unchanged image takes about one.
BUILD_TIMEOUT = 900
# Seconds for one short command in the image (`authproxy --version`, the health check).
COMMAND_TIMEOUT = 60
# Seconds for the proxy in the image to answer /ping and then /ready, and to exit after SIGTERM.
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.1
# The fixed non-root user and group the Dockerfile runs as.
IMAGE_UID = IMAGE_GID = 10001
# The console script every authproxy process in the image runs (python3 /opt/authproxy/bin/authproxy).
AUTHPROXY_SCRIPT = "/opt/authproxy/bin/authproxy"
# Working containers are named for the test process, so a later session can remove those a killed one left.
CONTAINER_PREFIX = "authproxy-test-"
INSTALL_HINT = "apt-get install buildah podman debootstrap (bash .ci/run installs them)"
# The base the Dockerfile builds on (build-image makes it with debootstrap when the store lacks it).
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
# Issue 18's goal: what the image adds to debian:bookworm-slim, in bytes (decimal MB, as podman prints them).
# 77.2 MB on 2026-12-05 (README.md#the-container), from 118.8 MB before the slimming.
MAX_ADDED_BYTES = 80_000_000
SITE_PACKAGES = "/opt/authproxy/lib/python3.11/site-packages"

pytestmark = [pytest.mark.container, pytest.mark.timeout(BUILD_TIMEOUT + 300)]


# -- buildah --------------------------------------------------------------------------------------------------


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                          stdin=subprocess.DEVNULL)


def buildah(*args: str) -> subprocess.CompletedProcess[str]:
    return run(["buildah", *args])


def run_argv(container: str, *command: str, user: str | None = None, env: dict[str, str] | None = None,
             volumes: tuple[str, ...] = ()) -> list[str]:
    """``buildah run`` of ``command`` in ``container``, as the image's USER unless ``user`` is given."""
    argv = ["buildah", "run", "--isolation", "chroot"]
    if user is not None:
        argv += ["--user", user]
    for name, value in (env or {}).items():
        argv += ["--env", f"{name}={value}"]
    for volume in volumes:
        argv += ["--volume", volume]
    return [*argv, container, "--", *command]


def run_in(container: str, *command: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    return run(run_argv(container, *command, user=user))


def new_container(image: str) -> str:
    name = f"{CONTAINER_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    result = buildah("from", "--pull=never", "--quiet", "--name", name, image)
    assert result.returncode == 0, f"buildah from {image}: {result.stderr}"
    return name


@contextlib.contextmanager
def working_container(image: str) -> Iterator[str]:
    name = new_container(image)
    try:
        yield name
    finally:
        buildah("rm", name)


def remove_abandoned_containers() -> None:
    """Working containers of test processes that are gone (killed by a CI timeout, say)."""
    listing = buildah("containers", "--format", "{{.ContainerName}}")
    for name in listing.stdout.split():
        match = re.fullmatch(re.escape(CONTAINER_PREFIX) + r"(\d+)-[0-9a-f]+", name)
        if match and not Path(f"/proc/{match[1]}").exists():
            buildah("rm", name)


def build_image() -> str:
    """Run build-image; its image ID. Kills the whole build (buildah included) if it takes too long."""
    proc = subprocess.Popen(["bash", str(BUILD_IMAGE)], cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"build-image took over {BUILD_TIMEOUT}s:\n{err[-4000:]}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"build-image failed (exit status {proc.returncode}):\n{err[-4000:]}", pytrace=False)
    for line in err.splitlines():
        if line.startswith("build-image:"):
            print(line)                     # which image, its size, and whether it was reused (pytest -s -n 0)
    return out.split()[-1]


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    """The ID of localhost/authproxy:test, built from the working tree (or reused: see build-image).

    A working container made from it right away is kept for the session: another session's build-image, after a
    source change, removes older images, but never one a container still uses.
    """
    missing = [tool for tool in ("buildah", "podman") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: the container tests build and run the image for real. "
                    f"{INSTALL_HINT}", pytrace=False)
    remove_abandoned_containers()
    image_id = build_image()
    with working_container(image_id):
        yield image_id


@pytest.fixture(scope="session")
def image_config(image: str) -> dict[str, Any]:
    """The Docker-format configuration of the image (what `docker inspect` shows under Config)."""
    result = buildah("inspect", "--type", "image", image)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["Docker"]["config"]


def health_check(image_config: dict[str, Any]) -> list[str]:
    """The image's HEALTHCHECK command, as an argv."""
    test = image_config["Healthcheck"]["Test"]
    assert test[0] == "CMD", test
    return test[1:]


# -- the image as built -----------------------------------------------------------------------------------------


def test_image_runs_authproxy_as_the_fixed_user_on_4180_with_a_health_check(image_config):
    assert image_config["User"] == f"{IMAGE_UID}:{IMAGE_GID}"
    assert image_config["Entrypoint"] == ["authproxy"]
    assert not image_config.get("Cmd")
    assert set(image_config["ExposedPorts"]) == {"4180/tcp"}
    # The Docker format keeps HEALTHCHECK (OCI drops it); `authproxy ping` needs no curl.
    assert health_check(image_config) == ["authproxy", "ping"]
    assert next(v for v in image_config["Env"] if v.startswith("PATH=")).startswith("PATH=/opt/authproxy/bin:")


PROBE = """\
import importlib.util, json, os, shutil, sys
print(json.dumps({
    "uid": os.getuid(),
    "gid": os.getgid(),
    "python": os.path.realpath(sys.executable),
    "prefix": sys.prefix,
    "tools": sorted(t for t in ("gcc", "cc", "c++", "make", "pip", "pip3", "curl", "wget", "strip", "ld", "as")
                    if shutil.which(t)),
    "modules": sorted(m for m in ("pip", "setuptools", "wheel") if importlib.util.find_spec(m)),
    "leftovers": sorted(p for p in ("/etc/pip.conf", "/run/build-ca.crt", "/root/build-ca.crt", "/root/.config",
                                    "/root/.cache", "/src", "/var/lib/apt/lists/partial") if os.path.lexists(p)),
    "apt_lists": os.listdir("/var/lib/apt/lists") if os.path.isdir("/var/lib/apt/lists") else [],
    "config_dir": os.path.isdir("/etc/authproxy"),
}))
"""


def test_image_holds_debians_python3_and_the_virtualenv_and_nothing_from_the_build(image):
    with working_container(image) as container:
        version = run_in(container, "authproxy", "--version")
        assert version.returncode == 0, version.stderr
        assert version.stdout == f"authproxy {proxy.__version__}\n"
        # As root: /root is private, and a pip cache or the build's CA bundle would be under it.
        probe = run_in(container, "python3", "-c", PROBE, user="0:0")
    assert probe.returncode == 0, probe.stderr
    facts = json.loads(probe.stdout)
    assert facts["python"].startswith("/usr/bin/python3"), facts   # Debian's interpreter, through the venv
    assert facts["prefix"] == "/opt/authproxy"
    assert facts["tools"] == [], "no compiler, pip or downloader in the final image"
    assert facts["modules"] == [], "pip and setuptools are removed from the virtualenv"
    assert facts["leftovers"] == [], "the build's pip config, CA bundle, caches or sources reached the image"
    assert facts["apt_lists"] in ([], ["lock"]), facts["apt_lists"]
    assert facts["config_dir"]


# -- its size, and the slimming that keeps it small ------------------------------------------------------------


def image_facts(ref: str) -> dict[str, Any]:
    result = run(["podman", "image", "inspect", ref])
    assert result.returncode == 0, f"podman image inspect {ref}: {result.stderr}"
    return json.loads(result.stdout)[0]


SPACE_PROBE = """\
import glob, json, os, sys
def size(path):
    if os.path.islink(path) or not os.path.isdir(path):
        return os.lstat(path).st_size
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(path) for f in files)
site = sys.argv[1]
by_package = {}
for name in os.listdir(site):
    key = name.split("-")[0] if name.endswith(".dist-info") else name.removesuffix(".py").split(".")[0]
    by_package[key] = by_package.get(key, 0) + size(os.path.join(site, name))
# Each Debian package's files as they are in the image (the Dockerfile deletes some), from dpkg's file lists.
debian = {}
for listing in glob.glob("/var/lib/dpkg/info/*.list"):
    package = os.path.basename(listing).removesuffix(".list").split(":")[0]
    with open(listing) as f:
        paths = [line.rstrip("\\n") for line in f]
    debian[package] = sum(os.lstat(p).st_size for p in paths if os.path.isfile(p) and not os.path.islink(p))
print(json.dumps({"site-packages": size(site), "by_package": by_package, "stdlib": size("/usr/lib/python3.11"),
                  "stdlib_pyc": size("/usr/lib/python3.11/__pycache__"), "debian": debian}))
"""


def space_report(image: str) -> str:
    """What takes the space in the image, as a table: the virtualenv per package, the standard library, and the
    Debian packages the image adds to its base (the bytes of their files still in the image)."""
    with working_container(image) as container:
        probe = run_in(container, "python3", "-c", SPACE_PROBE, SITE_PACKAGES, user="0:0")
    assert probe.returncode == 0, probe.stderr
    with working_container(BASE_IMAGE) as container:
        listed = run_in(container, "dpkg-query", "-W", "-f", "${Package}\n", user="0:0")
    assert listed.returncode == 0, listed.stderr
    mine, in_base = json.loads(probe.stdout), set(listed.stdout.split())
    added = {name: size for name, size in mine["debian"].items() if name not in in_base}
    lines = [f"{'virtualenv site-packages':<40}{mine['site-packages'] / 1e6:8.1f} MB"]
    for name, size in sorted(mine["by_package"].items(), key=lambda item: -item[1])[:12]:
        lines.append(f"  {name:<38}{size / 1e6:8.1f} MB")
    lines.append(f"{'/usr/lib/python3.11 (stdlib)':<40}{mine['stdlib'] / 1e6:8.1f} MB"
                 f"  (of which __pycache__ {mine['stdlib_pyc'] / 1e6:.1f} MB)")
    lines.append(f"{'Debian packages added (files left)':<40}{sum(added.values()) / 1e6:8.1f} MB")
    for name, size in sorted(added.items(), key=lambda item: -item[1])[:12]:
        lines.append(f"  {name:<38}{size / 1e6:8.1f} MB")
    return "\n".join(lines)


def test_image_adds_at_most_80_mb_to_its_base(image):
    """Issue 18: the image adds at most 80 MB to debian:bookworm-slim; and what takes the space, printed."""
    mine, base = image_facts(image), image_facts(BASE_IMAGE)
    base_layers = base["RootFS"]["Layers"]
    assert mine["RootFS"]["Layers"][:len(base_layers)] == base_layers, "the image is not built on " + BASE_IMAGE
    added = mine["Size"] - base["Size"]
    report = space_report(image)
    summary = (f"image {mine['Size'] / 1e6:.1f} MB = base {base['Size'] / 1e6:.1f} MB + {added / 1e6:.1f} MB "
               f"in {len(mine['RootFS']['Layers']) - len(base_layers)} layer(s)")
    print(f"\n{summary}\n{report}")
    assert 0 < added <= MAX_ADDED_BYTES, f"{summary}: over {MAX_ADDED_BYTES / 1e6:.0f} MB\n{report}"


SLIMMING_PROBE = """\
import json, os, struct, sys
def debug_sections(path):
    # The section names of a 64-bit little-endian ELF file that hold debugging information.
    with open(path, "rb") as f:
        data = f.read()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def header(i):
        return struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
    strtab = header(shstrndx)[4]
    names = [data[strtab + header(i)[0]:].split(b"\\0", 1)[0].decode() for i in range(shnum)]
    return [n for n in names if n.startswith((".debug_", ".symtab"))]
unstripped = {}
sources = []
for d, _, files in os.walk(sys.argv[1]):
    for f in files:
        p = os.path.join(d, f)
        if f.endswith(".so") or ".so." in f:
            found = debug_sections(p)
            if found:
                unstripped[p] = found
        if f.endswith((".pyx", ".pxd", ".pyi", ".c", ".h")):
            sources.append(p)
print(json.dumps({"unstripped": unstripped, "sources": sources}))
"""

# ldd of every shared object and program in the places the Dockerfile touches, and its count.
LDD_PROBE = """\
count=0
for f in $(find /usr/bin /usr/sbin /usr/lib/*-linux-gnu /usr/lib/python3.11 /opt/authproxy \\
                -type f \\( -name '*.so*' -o -perm -u+x \\)); do
    head -c 4 "$f" | grep -q ELF || continue
    count=$((count + 1))
    ldd "$f" 2>&1 | grep 'not found' | sed "s|^|$f: |"
done
echo "checked $count"
"""

# Everything the proxy imports at run time must still be there after the standard library is trimmed: every
# module of the package, and what its libraries import lazily (uvloop's loop, the Redis client, the C YAML
# loader, the AEAD ciphers, the TLS context with Debian's CA bundle).
IMPORT_PROBE = """\
import importlib, json, pkgutil, ssl, sys
import proxy
failed = {}
for module in pkgutil.walk_packages(proxy.__path__, "proxy."):
    try:
        importlib.import_module(module.name)
    except Exception as exc:
        failed[module.name] = repr(exc)
import aiohttp.web, uvloop, redis.asyncio, yaml, prometheus_client, joserfc.jwt, joserfc.jwk, httptools, pydantic
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
loop = uvloop.new_event_loop(); loop.close()
AESGCM(AESGCM.generate_key(bit_length=256))
assert yaml.CSafeLoader
context = ssl.create_default_context()
print(json.dumps({"failed": failed, "cas": context.cert_store_stats()["x509_ca"],
                  "encodings": [b"\\xe3\\x81\\x82".decode(c) for c in ("utf-8",)] + ["x".encode("idna").decode()]}))
"""


def test_image_slimming_kept_what_the_proxy_needs(image):
    """Stripped extension modules, no build sources, byte code that Python really uses, and a standard library
    from which nothing the proxy or its libraries import was removed."""
    with working_container(image) as container:
        slim = run_in(container, "python3", "-c", SLIMMING_PROBE, SITE_PACKAGES)
        # Every ELF file left still finds its shared libraries (the Dockerfile removes some of Debian's).
        linked = run_in(container, "sh", "-c", LDD_PROBE, user="0:0")
        imports = run_in(container, "python3", "-c", IMPORT_PROBE)
        # -v names each module's byte code as it is loaded, and says when it is stale and compiled again.
        verbose = run_in(container, "python3", "-v", "-c", "import proxy.__main__, proxy.app, proxy.server")
    assert slim.returncode == 0, slim.stderr
    found = json.loads(slim.stdout)
    assert found["unstripped"] == {}, "extension modules with debug symbols (strip --strip-unneeded them)"
    assert found["sources"] == [], "build sources or stubs left in the virtualenv"
    assert linked.returncode == 0, linked.stderr
    checked = [line for line in linked.stdout.splitlines() if line.startswith("checked ")]
    assert checked and int(checked[0].split()[1]) > 50, linked.stdout
    missing = [line for line in linked.stdout.splitlines() if "not found" in line]
    assert missing == [], "shared libraries missing from the image:\n" + "\n".join(missing)
    assert imports.returncode == 0, imports.stderr
    facts = json.loads(imports.stdout)
    assert facts["failed"] == {}, "modules of the package no longer import in the image"
    assert facts["cas"] > 100, "no CA certificates: an https provider could not be verified"
    assert verbose.returncode == 0, verbose.stderr
    stale = [line for line in verbose.stderr.splitlines() if "bytecode is stale" in line]
    assert stale == [], f"{len(stale)} modules compiled again at start-up, e.g. {stale[:3]}"
    loaded = [line for line in verbose.stderr.splitlines()
              if line.startswith("# code object from") and SITE_PACKAGES + "/proxy/__pycache__/" in line]
    assert loaded, "the package's byte code was not used"


# -- the proxy running in the image -----------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from the host's /proc (chroot isolation shares the PID namespace)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue                            # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def authproxy_processes(pid: int) -> list[int]:
    """The authproxy processes ``buildah run`` (``pid``) started: python3 running the console script."""
    found = []
    for child in descendants(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not argv[0].startswith("buildah") and AUTHPROXY_SCRIPT in argv[1:]:
            found.append(child)
    return found


def ids(pid: int, field: str) -> list[int]:
    """The real, effective, saved and filesystem IDs on the ``Uid:`` or ``Gid:`` line of /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return [int(value) for value in line.split()[1:]]
    raise AssertionError(f"no {field} line for {pid}")


class ProxyInImage:
    """``authproxy`` started by ``buildah run`` in a working container, as the image's ENTRYPOINT would be."""

    def __init__(self, container: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.container = container
        self.proc = proc
        self.log_path = log_path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def processes(self) -> list[int]:
        return authproxy_processes(self.proc.pid)

    async def wait_for(self, client: aiohttp.ClientSession, url: str) -> None:
        """Until ``url`` answers 200; fails with the proxy's log if it exits or takes too long."""
        deadline = asyncio.get_running_loop().time() + READY_TIMEOUT
        while True:
            assert self.proc.returncode is None, f"authproxy in the image exited early:\n{self.log}"
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with client.get(url) as resp:
                    if resp.status == 200:
                        return
            assert asyncio.get_running_loop().time() < deadline, f"no 200 from {url}:\n{self.log}"
            await asyncio.sleep(POLL_INTERVAL)

    async def terminate(self) -> int | None:
        """SIGTERM to authproxy itself, as `docker stop` sends it to the entry point; buildah's exit status."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
        return None

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


@contextlib.asynccontextmanager
async def proxy_in_image(image: str, config_path: Path, env: dict[str, str],
                         log_path: Path) -> AsyncIterator[ProxyInImage]:
    """authproxy in a new working container, reading ``config_path`` at the default /etc/authproxy/config.yaml.

    Afterwards the process (and whatever buildah left of it) is killed and the working container removed.
    """
    container = new_container(image)
    try:
        argv = run_argv(container, "authproxy", env=env, volumes=(f"{config_path}:/etc/authproxy/config.yaml:ro",))
        with log_path.open("wb") as log:
            # A session of its own, so that kill() can end the whole process group.
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=log,
                                                        stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        running = ProxyInImage(container, proc, log_path)
        try:
            yield running
        finally:
            await running.kill()
    finally:
        buildah("rm", container)


def write_config(path: Path, *, port: int, issuer: str, upstream: str) -> None:
    """A proxy on 127.0.0.1:``port`` (the container shares the host's network); secrets from the environment."""
    data = config_dict(port=port, issuer=issuer, upstream_url=upstream, client_id=CLIENT_ID,
                       client_secret="${CLIENT_SECRET}", cookie={"secret": "${COOKIE_SECRET}"})
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o644)                           # readable by the image's user, 10001


async def assert_upstream_saw(echo: EchoServer, idp: IdP, path: str, user: str) -> None:
    """The app behind the proxy got the user's identity and an access token the provider really issued."""
    [seen] = [record for record in echo.seen if record["path"] == path]
    assert header_values(seen, "X-Forwarded-User") == [user]
    [authorization] = header_values(seen, "Authorization")
    assert authorization.startswith("Bearer ")
    assert (await idp.userinfo(authorization.removeprefix("Bearer ")))["sub"] == user


def assert_runs_as_image_user(running: ProxyInImage) -> None:
    """Every authproxy process, seen from the host, has 10001 as its real, effective, saved and fs UID and GID."""
    pids = running.processes()
    assert pids, f"no authproxy process under buildah run {running.proc.pid}:\n{running.log}"
    for pid in pids:
        assert ids(pid, "Uid") == [IMAGE_UID] * 4, f"process {pid}"
        assert ids(pid, "Gid") == [IMAGE_GID] * 4, f"process {pid}"


async def test_proxy_in_the_image_signs_a_user_in_and_runs_as_10001(image, image_config, idp_factory: IdPFactory,
                                                                     tmp_path):
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    idp = await idp_factory(clients=[client_metadata(public + "/oauth2/callback",
                                                     post_logout_redirect_uri=public + "/oauth2/signed_out")])
    echo = await start_echo(free_port())
    config_path = tmp_path / "config.yaml"
    write_config(config_path, port=port, issuer=idp.issuer, upstream=echo.url)
    env = {"CLIENT_SECRET": CLIENT_SECRET, "COOKIE_SECRET": COOKIE_SECRET}
    try:
        async with proxy_in_image(image, config_path, env, tmp_path / "authproxy.log") as running:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
                await running.wait_for(client, public + "/ping")
                await running.wait_for(client, public + "/ready")       # the provider's metadata is loaded
                result = await login_via_http(client, public + "/html/from-the-image", username="carol")
            assert result.status == 200, f"{result.visited}\n{result.body_text}\n{running.log}"
            assert "carol" in result.body_text
            await assert_upstream_saw(echo, idp, "/html/from-the-image", "carol")
            assert_runs_as_image_user(running)

            # The HEALTHCHECK command, in the same container. It asks 127.0.0.1:4180 by default, the port the image
            # exposes; on the shared host network the test's proxy has a free port instead, given with --url.
            check = run_argv(running.container, *health_check(image_config), "--url", public + "/ping")
            healthy = await asyncio.to_thread(run, check)
            assert healthy.returncode == 0, healthy.stderr

            status = await running.terminate()
            assert status == 0, f"authproxy did not stop cleanly on SIGTERM ({status}):\n{running.log}"
            assert "Traceback" not in running.log, running.log
            unhealthy = await asyncio.to_thread(run, check)
            assert unhealthy.returncode == 1, "the health check passes with the proxy stopped"
    finally:
        await echo.close()
