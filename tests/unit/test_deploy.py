"""The deployment examples under ``deploy/``: they parse, the authproxy configurations in them pass the real
``python -m proxy --check-config``, and the Kubernetes sidecar, its values-style file, the compose trial and the
Keycloak realm agree with each other (ports, probes, secrets, the non-root user, redirect URIs). The values file's
``config`` validates against the JSON Schema the real ``python -m proxy config-schema`` prints."""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from proxy.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_CONFIG = DEPLOY / "authproxy.compose.yaml"
REALM = DEPLOY / "keycloak-realm.json"
VALUES = DEPLOY / "values.example.yaml"

SECRETS = {"CLIENT_SECRET": "client-secret-for-the-check",
           "COOKIE_SECRET": base64.urlsafe_b64encode(b"k" * 32).decode()}
PORT = 4180
UID = 10001


def documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(KUBERNETES.glob("*.yaml")) for doc in documents(path)]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for doc in manifests() if doc.get("kind") == kind and name in (None, doc["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/kubernetes, found {len(found)}"
    return found[0]


def container(name: str) -> dict[str, Any]:
    containers = one("Deployment")["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == name]
    assert len(found) == 1, [c["name"] for c in containers]
    return found[0]


def check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real CLI, as a process, with only the given secrets in its environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTHPROXY_") and k not in SECRETS}
    return subprocess.run([sys.executable, "-m", "proxy", "--check-config", str(path)], cwd=ROOT,
                          env={**clean, **env}, capture_output=True, text=True, timeout=60, check=False)


def configmap_config() -> str:
    return one("ConfigMap", "authproxy")["data"]["config.yaml"]


# -- everything parses ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]),
                         ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path):
    docs = documents(path)
    assert docs and all(isinstance(doc, dict) for doc in docs)


def test_every_kubernetes_manifest_has_kind_and_name():
    for doc in manifests():
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc


def test_keycloak_realm_parses():
    assert json.loads(REALM.read_text(encoding="utf-8"))["realm"]


# -- the authproxy configurations pass the real CLI -----------------------------------------------------------


def test_configmap_config_passes_check_config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(configmap_config(), encoding="utf-8")
    result = check_config(path, SECRETS)
    assert result.returncode == 0, result.stderr


def test_configmap_config_takes_both_secrets_from_the_environment(tmp_path):
    """Without the Secret's variables the check fails and names both: they really are read from there."""
    path = tmp_path / "config.yaml"
    path.write_text(configmap_config(), encoding="utf-8")
    result = check_config(path, {})
    assert result.returncode == 2
    assert "CLIENT_SECRET" in result.stderr and "COOKIE_SECRET" in result.stderr


def test_compose_config_passes_check_config():
    result = check_config(COMPOSE_CONFIG, SECRETS)
    assert result.returncode == 0, result.stderr


def test_example_secret_holds_placeholders_authproxy_refuses(tmp_path):
    """Applying secret.example.yaml unchanged must not start a proxy with a guessable cookie key."""
    values = one("Secret", "authproxy")["stringData"]
    assert set(values) == set(SECRETS)
    path = tmp_path / "config.yaml"
    path.write_text(configmap_config(), encoding="utf-8")
    result = check_config(path, values)
    assert result.returncode == 2 and "cookie.secret" in result.stderr


# -- the Kubernetes sidecar -----------------------------------------------------------------------------------


def _port(probe_or_port: Any, ports: list[dict[str, Any]]) -> int:
    """A probe's or Service's port, resolving a port name through the container's ports."""
    if isinstance(probe_or_port, int):
        return probe_or_port
    return next(p["containerPort"] for p in ports if p.get("name") == probe_or_port)


def test_authproxy_sidecar_runs_the_image_with_the_configmap():
    proxy = container("authproxy")
    assert proxy["image"] == "authproxy:latest"
    assert proxy["args"] == ["--config", "/etc/authproxy/config.yaml"]
    mounts = {m["name"]: m for m in proxy["volumeMounts"]}
    volumes = {v["name"]: v for v in one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    config_mounts = [m for m in mounts.values() if m["mountPath"] == "/etc/authproxy"]
    assert len(config_mounts) == 1 and config_mounts[0].get("readOnly") is True
    assert volumes[config_mounts[0]["name"]]["configMap"]["name"] == "authproxy"


def test_authproxy_sidecar_takes_the_secrets_from_the_secret():
    env = {e["name"]: e for e in container("authproxy")["env"]}
    for name in SECRETS:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "authproxy", "key": name}
    assert '"${CLIENT_SECRET}"' in configmap_config() and '"${COOKIE_SECRET}"' in configmap_config()


def test_probes_are_ping_and_ready_on_the_listen_port():
    proxy = container("authproxy")
    ports = proxy["ports"]
    config = parse_config(yaml.safe_load(configmap_config()), environ=SECRETS)
    assert config.listen_port == PORT
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/ping"
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("livenessProbe", "readinessProbe"):
        assert _port(proxy[probe]["httpGet"]["port"], ports) == PORT
    assert PORT in [p["containerPort"] for p in ports]


def test_authproxy_runs_as_uid_10001_non_root_with_a_read_only_root():
    pod = one("Deployment")["spec"]["template"]["spec"]
    context = {**pod.get("securityContext", {}), **container("authproxy")["securityContext"]}
    assert context["runAsUser"] == UID
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]


def test_authproxy_has_requests_and_limits():
    resources = container("authproxy")["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])


def test_shutdown_fits_in_the_grace_period():
    config = parse_config(yaml.safe_load(configmap_config()), environ=SECRETS)
    pod = one("Deployment")["spec"]["template"]["spec"]
    pre_stop = container("authproxy")["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert config.shutdown_timeout + float(pre_stop[1]) < pod["terminationGracePeriodSeconds"]


def test_service_exposes_authproxy_only():
    deployment, service = one("Deployment"), one("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = container("authproxy")["ports"]
    assert [(p["port"], _port(p["targetPort"], ports)) for p in service["spec"]["ports"]] == [(PORT, PORT)]


def test_app_is_reached_on_loopback_inside_the_pod():
    config = parse_config(yaml.safe_load(configmap_config()), environ=SECRETS)
    assert [u.url for u in config.upstreams] == ["http://127.0.0.1:8080"]
    assert "ports" not in container("app")


# -- the values-style file and the configuration's JSON Schema ------------------------------------------------


def values() -> dict[str, Any]:
    return documents(VALUES)[0]


@pytest.fixture(scope="module")
def config_schema() -> dict[str, Any]:
    """What `authproxy config-schema` prints, from the real CLI: generated here, so it is never stale."""
    result = subprocess.run([sys.executable, "-m", "proxy", "config-schema"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def test_values_config_validates_against_config_schema(config_schema):
    jsonschema.Draft202012Validator(config_schema).validate(values()["config"])


@pytest.mark.parametrize(("where", "change"), [
    ("provider", {"isuer": "https://keycloak.example.com/realms/example"}),   # a misspelt key
    ("cookie", {"expire": "a week"}),                                         # not a duration
    ("logging", {"format": "xml"}),                                           # not one of the choices
])
def test_config_schema_refuses_a_wrong_values_config(config_schema, where, change):
    """The check has teeth: the mistakes an operator makes in the values file fail it, naming the key."""
    config = copy.deepcopy(values()["config"])
    config[where].update(change)
    errors = list(jsonschema.Draft202012Validator(config_schema).iter_errors(config))
    assert errors
    assert any(where in [str(part) for part in error.absolute_path] or where in error.message for error in errors)


def test_values_config_passes_check_config(tmp_path):
    """authproxy's own loader takes the same section (the schema is not the only judge)."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values()["config"]), encoding="utf-8")
    result = check_config(path, SECRETS)
    assert result.returncode == 0, result.stderr


def test_values_describe_the_kubernetes_manifests():
    """Every value is what deploy/kubernetes/ applies: a changed manifest or values file without the other fails."""
    given = values()
    pod = one("Deployment")["spec"]["template"]["spec"]
    proxy, app = container("authproxy"), container("app")
    assert given["config"] == yaml.safe_load(configmap_config())
    assert given["image"] == proxy["image"]
    assert given["replicas"] == one("Deployment")["spec"]["replicas"]
    assert given["app"]["image"] == app["image"]
    assert given["resources"] == proxy["resources"]
    assert given["terminationGracePeriodSeconds"] == pod["terminationGracePeriodSeconds"]
    assert proxy["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(given["preStopSleepSeconds"])]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in proxy["env"] if "valueFrom" in e} == {given["secret"]}
    assert one("Secret")["metadata"]["name"] == given["secret"]
    config = parse_config(given["config"], environ=SECRETS)
    assert [u.url for u in config.upstreams] == [f"http://127.0.0.1:{given['app']['port']}"]
    assert config.shutdown_timeout + given["preStopSleepSeconds"] < given["terminationGracePeriodSeconds"]


# -- the compose trial and its Keycloak realm -----------------------------------------------------------------


def compose() -> dict[str, Any]:
    return documents(COMPOSE)[0]


def compose_config():
    return parse_config(yaml.safe_load(COMPOSE_CONFIG.read_text(encoding="utf-8")), environ=SECRETS)


def test_compose_builds_authproxy_from_the_repository_and_mounts_its_config():
    proxy = compose()["services"]["authproxy"]
    context = (COMPOSE.parent / proxy["build"]["context"]).resolve()
    assert (context / proxy["build"].get("dockerfile", "Dockerfile")).is_file()
    assert proxy["command"] == ["--config", "/etc/authproxy/config.yaml"]
    assert f"./{COMPOSE_CONFIG.name}:/etc/authproxy/config.yaml:ro" in proxy["volumes"]
    assert set(SECRETS) <= set(proxy["environment"])


def test_compose_runs_keycloak_in_dev_mode_with_the_realm_imported():
    keycloak = compose()["services"]["keycloak"]
    assert keycloak["image"].startswith("quay.io/keycloak/keycloak:")
    assert keycloak["command"][:1] == ["start-dev"] and "--import-realm" in keycloak["command"]
    assert any(v.startswith(f"./{REALM.name}:/opt/keycloak/data/import/") for v in keycloak["volumes"])


def test_compose_services_share_keycloaks_network_namespace_and_publish_on_loopback():
    services = compose()["services"]
    for name in ("app", "authproxy"):
        assert services[name]["network_mode"] == "service:keycloak"
        assert "ports" not in services[name]
    published = services["keycloak"]["ports"]
    assert all(p.startswith("127.0.0.1:") for p in published)
    assert f"127.0.0.1:{PORT}:{PORT}" in published


def test_realm_client_matches_the_compose_config():
    config, realm = compose_config(), json.loads(REALM.read_text(encoding="utf-8"))
    client = next(c for c in realm["clients"] if c["clientId"] == config.provider.client_id)
    assert config.provider.issuer == f"http://localhost:8080/realms/{realm['realm']}"
    assert client["publicClient"] is False and client["standardFlowEnabled"] is True
    assert client["redirectUris"] == [config.redirect_uri] == ["http://localhost:4180/oauth2/callback"]
    assert client["attributes"]["post.logout.redirect.uris"] == config.public_url + "/oauth2/signed_out"
    assert client["attributes"]["backchannel.logout.url"] == config.public_url + "/oauth2/backchannel_logout"
    assert client["secret"] == compose()["services"]["authproxy"]["environment"]["CLIENT_SECRET"]


def test_realm_has_a_test_user_who_passes_the_compose_rules():
    config, realm = compose_config(), json.loads(REALM.read_text(encoding="utf-8"))
    mapper = next(m for c in realm["clients"] for m in c.get("protocolMappers", [])
                  if m["protocolMapper"] == "oidc-group-membership-mapper")
    assert mapper["config"]["claim.name"] == config.provider.claims.groups
    assert mapper["config"]["full.path"] == "false"
    users = [u for u in realm["users"] if u["enabled"] and u.get("credentials")]
    allowed_groups = set(config.authorization.allowed_groups)
    allowed = [u for u in users if {g.strip("/") for g in u.get("groups", [])} & allowed_groups]
    assert allowed, "no test user is in an allowed group"
