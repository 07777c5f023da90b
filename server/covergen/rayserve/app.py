"""The covergen Serve application: an Ingress deployment bound to a Painter deployment.

`build_app` is the import path of `deploy/ray/serve.yaml` (`serve run` / `serve deploy`, and the
KubeRay RayService); `covergen-ray` builds the same application with local options. Options in a
Serve config override the defaults here by deployment name (`Ingress`, `Painter`).
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from covergen.rayserve.ingress import IngressReplica
from covergen.rayserve.painter import PainterReplica
from covergen.settings import Settings

APP_NAME = "covergen"
PAINTER = "Painter"
INGRESS = "Ingress"


def settings_overrides(settings: Settings) -> dict[str, Any]:
    """The settings given explicitly (flags or COVERGEN_* variables), for the replicas to rebuild."""
    return settings.model_dump(mode="json", exclude_unset=True)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The application for a Serve config: `args.settings` are Settings fields for every replica
    (COVERGEN_* variables in the config's runtime_env reach them too)."""
    overrides = dict((args or {}).get("settings", {}))
    settings = Settings(**overrides)
    # replicas unset: the config's autoscaling_config sizes the painter tier
    painter = painter_deployment(settings, replicas=None)
    return ingress_deployment(settings).bind(painter.bind(overrides), overrides)


def painter_deployment(settings: Settings, replicas: int | None = 0) -> Any:
    """The painter tier: `replicas` fixed replicas (0: `ray_painter_replicas`; None: leave the count
    to the Serve config's `autoscaling_config`)."""
    options: dict[str, Any] = {
        "name": PAINTER,
        "ray_actor_options": {
            "num_cpus": settings.ray_painter_num_cpus,
            "num_gpus": settings.ray_painter_num_gpus,
        },
        # enough concurrent jobs per replica for the engine to batch them, and a bounded queue
        "max_ongoing_requests": max(settings.max_batch * 2, 4),
        "graceful_shutdown_timeout_s": settings.drain_grace_s + 5.0,
        "health_check_period_s": 10.0,
    }
    if replicas is not None:
        options["num_replicas"] = replicas or settings.ray_painter_replicas
    return serve.deployment(PainterReplica, **options)


def ingress_deployment(settings: Settings) -> Any:
    """The ingress tier: one CPU replica serving covergen.v1 gRPC on `settings.grpc_port`."""
    return serve.deployment(
        IngressReplica,
        name=INGRESS,
        num_replicas=1,
        ray_actor_options={"num_cpus": 0.25},
        graceful_shutdown_timeout_s=settings.drain_grace_s + 5.0,
    )
