"""deploy/: files parse, promtool accepts them, and they name only metrics and settings that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from covergen.metrics import Metrics
from covergen.settings import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "covergen.json"
K8S = DEPLOY / "k8s"

METRIC_NAME = re.compile(r"\bcovergen_[a-z_]+\b")

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package 'prometheus'; .ci/run installs it)",
)

YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
JSON_FILES = sorted(DEPLOY.rglob("*.json"))


def load_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_documents(path)]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name} in deploy/k8s, found {len(matches)}"
    return matches[0]


def covergen_container() -> dict[str, Any]:
    pod = k8s_object("Deployment", "covergen")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "covergen"]
    return container


def alert_expressions() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


def test_deploy_holds_the_expected_files() -> None:
    assert len(YAML_FILES) >= 10
    assert DASHBOARD in JSON_FILES
    assert (DEPLOY / "Dockerfile").is_file()


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert load_documents(path), f"{path} holds no YAML document"


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_json_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


@needs_promtool
def test_promtool_accepts_the_prometheus_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses PromQL in rule files: wrap each panel query in a recording rule.
    rules = [
        {"record": f"covergen_dashboard:query{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, expr in enumerate(dashboard_expressions())
    ]
    rule_file = tmp_path / "dashboard-rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "source", ["alerts", "dashboard", "hpa"], ids=["alerts.yml", "covergen.json", "hpa.yaml"]
)
def test_every_metric_used_is_exported(source: str) -> None:
    if source == "alerts":
        text = "\n".join(alert_expressions())
    elif source == "dashboard":
        text = "\n".join(dashboard_expressions())
    else:
        hpa = k8s_object("HorizontalPodAutoscaler", "covergen")
        text = "\n".join(m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]
                         if m["type"] == "Pods")  # fmt: skip
    used = set(METRIC_NAME.findall(text))
    assert used, f"no covergen_ metric found in {source}"
    exported = Metrics().metric_names()
    assert used <= exported, f"{source} uses metrics Metrics does not export: {used - exported}"


def test_prometheus_scrapes_the_metrics_port() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "covergen"]
    default_port = Settings.model_fields["metrics_port"].default
    assert job["static_configs"][0]["targets"] == [f"covergen:{default_port}"]


def settings_from(env: dict[str, str | None], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Build Settings exactly as the server would from this environment."""
    for name, value in env.items():
        if name.startswith("COVERGEN_") and value is not None:
            monkeypatch.setenv(name, value)
    return Settings()


def test_k8s_env_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {item["name"]: item.get("value") for item in covergen_container()["env"]}
    settings = settings_from(env, monkeypatch)
    assert settings.redis_url == "redis://covergen-redis:6379/0"
    assert (settings.grpc_port, settings.metrics_port) == (50051, 9464)
    assert "COVERGEN_ADMIN_TOKEN" in env  # from an optional Secret


def test_compose_env_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    service = compose["services"]["covergen"]
    settings = settings_from(service["environment"], monkeypatch)
    assert settings.redis_url == "redis://redis:6379/0"
    assert service["environment"]["COVERGEN_ADMIN_TOKEN"] is None  # never an empty token
    grace_s = int(service["stop_grace_period"].removesuffix("s"))
    assert grace_s > settings.drain_grace_s


def test_k8s_pod_waits_out_the_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    pod = k8s_object("Deployment", "covergen")["spec"]["template"]["spec"]
    container = covergen_container()
    settings = settings_from({item["name"]: item.get("value") for item in container["env"]}, monkeypatch)
    pre_stop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + settings.drain_grace_s


def test_k8s_pod_uses_native_grpc_probes_and_one_gpu() -> None:
    container = covergen_container()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50051, probe
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/styles", "/models"} <= mounts


def test_k8s_services_expose_grpc_and_metrics() -> None:
    service = k8s_object("Service", "covergen")
    assert {p["port"] for p in service["spec"]["ports"]} == {50051, 9464}
    headless = k8s_object("Service", "covergen-headless")
    assert headless["spec"]["clusterIP"] == "None"
    redis = k8s_object("Deployment", "covergen-redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
