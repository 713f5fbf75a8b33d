"""``authproxy --check-config FILE --online`` against the real oidc-provider (issue 20)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET, client_metadata
from tests.support.ports import free_port
from tests.support.proxyrun import config_dict

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


async def _check(tmp_path: Path, data: dict) -> tuple[int, str, str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "proxy", "--check-config", str(path), "--online",
                                                cwd=REPO, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def setup(idp_factory):
    port = free_port()
    idp = await idp_factory(clients=[client_metadata(f"http://127.0.0.1:{port}/oauth2/callback")])
    data = config_dict(port=port, issuer=idp.issuer, upstream_url="http://127.0.0.1:9", client_id=CLIENT_ID,
                       client_secret=CLIENT_SECRET)
    return idp, data


async def test_a_working_configuration_passes_every_step(setup, tmp_path):
    _, data = setup
    code, out, err = await _check(tmp_path, data)
    assert code == 0, err
    for step in ("ok: discovery", "ok: jwks: 1 signing key(s)", "ok: authorization request: accepted",
                 "ok: client authentication (client_secret_basic): accepted"):
        assert step in out


async def test_a_wrong_secret_is_found(setup, tmp_path):
    _, data = setup
    data["provider"]["client_secret"] = "wrong"
    code, _, err = await _check(tmp_path, data)
    assert code == 2 and "refused the client (invalid_client)" in err and "wrong" not in err


async def test_an_unregistered_redirect_uri_is_named(setup, tmp_path):
    _, data = setup
    port = free_port()
    data.update(listen=f"127.0.0.1:{port}", public_url=f"http://127.0.0.1:{port}")
    code, _, err = await _check(tmp_path, data)
    assert code == 2 and f"register http://127.0.0.1:{port}/oauth2/callback" in err


async def test_an_issuer_with_a_trailing_slash_says_what_to_set(setup, tmp_path):
    idp, data = setup
    data["provider"]["issuer"] = idp.issuer + "/"
    code, _, err = await _check(tmp_path, data)
    assert code == 2 and f"set provider.issuer: '{idp.issuer}'" in err
