"""deploy/ray/: the Serve config and the KubeRay manifests parse, and agree with each other, with
the application's code (deployment names, import path) and with the service's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from covergen.settings import Settings

pytest.importorskip("ray.serve", reason="needs the covergen[ray] extra (make install brings it)")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RAY = DEPLOY / "ray"


def serve_config() -> dict[str, Any]:
    return yaml.safe_load((RAY / "serve.yaml").read_text())


def manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((RAY / name).read_text())


def deployments() -> dict[str, dict[str, Any]]:
    (app,) = serve_config()["applications"]
    return {d["name"]: d for d in app["deployments"]}


def cluster_spec() -> dict[str, Any]:
    return manifest("rayservice.yaml")["spec"]["rayClusterConfig"]


def config_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    (app,) = serve_config()["applications"]
    for name, value in app["runtime_env"]["env_vars"].items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_serve_config_is_valid_for_ray_serve() -> None:
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config())


def test_rayservice_carries_the_serve_config_verbatim() -> None:
    service = manifest("rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == serve_config()


def test_config_names_the_application_in_code() -> None:
    from ray._common.utils import import_attr

    from covergen.rayserve.app import INGRESS, PAINTER, build_app

    (app,) = serve_config()["applications"]
    assert import_attr(app["import_path"]) is build_app
    assert set(deployments()) == {INGRESS, PAINTER}
    built = build_app(app["args"])  # builds without a cluster
    assert built is not None


def test_env_is_valid_settings_and_ports_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = config_settings(monkeypatch)
    defaults = (Settings.model_fields["grpc_port"].default, Settings.model_fields["metrics_port"].default)
    assert (settings.grpc_port, settings.metrics_port) == defaults == (50051, 9464)
    (head,) = cluster_spec()["headGroupSpec"]["template"]["spec"]["containers"]
    head_ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert (head_ports["grpc"], head_ports["metrics"]) == defaults
    service = manifest("service.yaml")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 50051, "metrics": 9464}
    labels = cluster_spec()["headGroupSpec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_redis_is_the_shared_one_of_deploy_k8s(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = config_settings(monkeypatch)
    redis = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "redis.yaml").read_text()) if d]
    (service,) = [d for d in redis if d["kind"] == "Service"]
    assert settings.redis_url == f"redis://{service['metadata']['name']}:6379/0"


def test_one_gpu_per_painter_and_per_worker_pod() -> None:
    painter = deployments()["Painter"]
    assert painter["ray_actor_options"]["num_gpus"] == 1
    (group,) = cluster_spec()["workerGroupSpecs"]
    assert group["rayStartParams"]["num-gpus"] == "1"
    (worker,) = group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert float(group["rayStartParams"]["num-cpus"]) >= painter["ray_actor_options"]["num_cpus"]


def test_autoscaling_bounds_match_the_gpu_worker_group(monkeypatch: pytest.MonkeyPatch) -> None:
    scaling = deployments()["Painter"]["autoscaling_config"]
    (group,) = cluster_spec()["workerGroupSpecs"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (group["minReplicas"], group["maxReplicas"])
    assert scaling["target_ongoing_requests"] == config_settings(monkeypatch).max_batch
    assert scaling["target_ongoing_requests"] <= deployments()["Painter"]["max_ongoing_requests"]


def test_ingress_is_pinned_to_the_head_and_outlives_its_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    ingress = deployments()["Ingress"]
    (resource,) = ingress["ray_actor_options"]["resources"]
    assert resource in yaml.safe_load(
        yaml.safe_load(cluster_spec()["headGroupSpec"]["rayStartParams"]["resources"])
    )
    drain = config_settings(monkeypatch).drain_grace_s
    assert all(d["graceful_shutdown_timeout_s"] > drain for d in deployments().values())


def test_styles_and_models_come_from_the_deploy_k8s_volumes(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = config_settings(monkeypatch)
    claims = {
        d["metadata"]["name"] for d in yaml.safe_load_all((DEPLOY / "k8s" / "storage.yaml").read_text()) if d
    }
    pods = [cluster_spec()["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in cluster_spec()["workerGroupSpecs"]]
    for pod in pods:
        used = {
            v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        assert used <= claims and len(used) == 2
        mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert str(settings.styles_dir) in mounts
        assert any(settings.base_model.startswith(path + "/") for path in mounts)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(manifest("kustomization.yaml")["resources"])
    assert listed == {p.name for p in RAY.glob("*.yaml")} - {"kustomization.yaml", "serve.yaml"}
