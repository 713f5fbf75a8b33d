"""docs/apps.md stays usable: every guide's configuration is valid, and guides/check.py (which runs the apps
for real, outside the suite: about 1.2 GB of virtualenvs) can read the commands and blocks it checks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from proxy.config import parse_config
from tests.support.proxyrun import config_dict

CHECK = Path(__file__).resolve().parents[2] / "guides" / "check.py"


@pytest.fixture(scope="module")
def guides():
    spec = importlib.util.spec_from_file_location("guides_check", CHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["guides_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("app", ["jupyterlab", "streamlit", "gradio"])
def test_each_guides_configuration_is_valid_and_names_the_port_its_command_uses(guides, app):
    upstreams = guides.upstreams(app, 12345)
    data = config_dict(port=4180, issuer="https://idp.example", upstream_url="http://127.0.0.1:1",
                       client_id="c", client_secret="s")
    data["upstreams"] = upstreams
    config = parse_config(data, environ={})
    assert [u.url for u in config.upstreams] == ["http://127.0.0.1:12345"]       # the port was the doc's
    assert config.upstreams[0].pass_host_header is True


def test_the_commands_are_the_ones_the_checks_expect(guides):
    jupyter = guides.shell_command("jupyterlab", 9999)
    assert jupyter[:2] == ["jupyter", "lab"] and "--ServerApp.base_url=/jupyter/" in jupyter
    assert "--port=9999" in jupyter and "--ServerApp.allow_remote_access=True" in jupyter
    streamlit = guides.shell_command("streamlit", 9998)
    assert "app.py" in streamlit and "--server.baseUrlPath=streamlit" in streamlit and "--server.port=9998" in streamlit
    (launch,) = guides.blocks("gradio", "python")
    assert 'root_path="/gradio"' in launch and "7860" in launch
    assert guides.upstreams("gradio", 1)[0]["strip_prefix"] is True
    assert not any(u.get("strip_prefix") for u in guides.upstreams("jupyterlab", 1))
