"""The one typed settings object of the service, read from `COVERGEN_*` environment variables.

Built once by the CLI (`Settings()`) and passed down explicitly; nothing reads the environment
at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]
LCM_DEFAULT_STEPS = 4  # LCM-LoRA's authors sample in 2-8 steps; 4 is their usual example


class Settings(BaseSettings):
    """Every knob of the service. Environment: `COVERGEN_<FIELD>` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="COVERGEN_", extra="forbid")

    # --- model -------------------------------------------------------------------------------
    base_model: str = Field(
        "embedded:regional",
        description='"embedded:regional" (tiny model trained on drawn regional scenes), "embedded" '
        "(the same layout with random weights), a diffusers directory, or one .safetensors",
    )
    base_model_config: Path | None = Field(
        None, description="config dir for a single-file base model (default: shipped SD 1.5)"
    )
    device: str = Field("auto", description='"auto", "cpu", "cuda", "cuda:1", ...')
    dtype: str = Field("auto", description='"auto" (fp16 on CUDA, fp32 on CPU), "fp32", "fp16"')
    torch_threads: int | None = Field(
        None, ge=1, le=256, description="intra-op CPU threads (unset: torch's default); 1 helps on busy CPUs"
    )
    cache_dir: Path | None = Field(None, description="model cache (default: <repo>/.cache/covergen)")
    styles_dir: Path = Field(REPO_ROOT / "styles", description="style cards, regions, glossary")
    # --- titles (covergen.titles) ---
    translator: Path | None = Field(
        None, description="local MarianMT folder (e.g. a copy of opus-mt-zh-en) for titles; never downloaded"
    )
    translator_budget_ms: float = Field(
        250.0, ge=0.0, le=10_000.0, description="longest wait for a translation before the dictionary path serves"
    )

    # --- generation defaults and limits ---------------------------------------------------------
    default_steps: int | None = Field(
        None, ge=1, le=100, description="steps when a request gives none (unset: 20, or 4 with lcm_lora)"
    )
    default_guidance: float | None = Field(
        None,
        ge=1.0,
        le=20.0,
        description="guidance when a request gives none (unset: 5.0, or 1.0 with lcm_lora)",
    )
    max_size: int = Field(1024, ge=64, le=2048, description="largest width/height in pixels")
    max_title_bytes: int = Field(512, ge=16, le=4096)
    max_resident_adapters: int = Field(32, ge=1, description="LRU limit of resident adapters")

    # --- engine --------------------------------------------------------------------------------
    max_batch: int = Field(4, ge=1, le=64)
    max_wait_ms: float = Field(5.0, ge=0.0, le=1000.0)
    max_queue: int = Field(64, ge=1, description="admission queue bound; beyond it RESOURCE_EXHAUSTED")
    batching: Literal["step", "static"] = Field(
        "step",
        description='"step": jobs join and leave the running batch at every denoising step (max_batch '
        'slots); "static": a batch runs all its steps before the next is formed (kept for comparison)',
    )

    # --- speedups (engine/speedups.py; measured effects in loadtest/RESULTS.md) ---------------
    fuse_shared_stacks: bool = Field(
        False,
        description="run a batch whose jobs share one adapter stack on fused weight copies instead of "
        "LoRA hooks; wins on small models and GPUs, loses on a large UNet on a CPU",
    )
    attention: Literal["sdpa", "classic"] = Field(
        "sdpa", description='UNet and VAE attention: "sdpa" (AttnProcessor2_0) or "classic" (AttnProcessor)'
    )
    channels_last: bool = Field(False, description="UNet and VAE in channels_last memory format")
    compile_unet: bool = Field(
        False,
        description="torch.compile the UNet (CUDA only: refused on a CPU); adapter switches of the same "
        "shape reuse the compiled graph",
    )
    tiny_vae: Path | None = Field(
        None,
        description="local diffusers AutoencoderTiny directory (taesd layout) that decodes instead of the VAE",
    )
    lcm_lora: Path | None = Field(
        None,
        description="local LCM-LoRA .safetensors: applied at weight 1.0 under every stack, LCMScheduler, "
        "default 4 steps and guidance 1.0",
    )

    # --- network -------------------------------------------------------------------------------
    host: str = "0.0.0.0"
    grpc_port: int = Field(50051, ge=0, le=65535)
    metrics_port: int = Field(9464, ge=0, le=65535, description="0 picks a free port; -1 is not allowed")
    max_message_bytes: int = Field(32 * 1024 * 1024, ge=1024 * 1024)
    drain_grace_s: float = Field(20.0, ge=0.0)
    admin_token: str | None = Field(None, description="enables AdminService; clients send Bearer")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = Field(None, description="set to require client certificates (mTLS)")

    # --- cache ---------------------------------------------------------------------------------
    redis_url: str | None = Field(None, description="unset: start an embedded Redis server")
    cache_enabled: bool = True
    cache_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    embedded_redis_maxmemory: str = "256mb"
    redis_timeout_s: float = Field(0.1, gt=0.0, le=10.0)
    hot_cache_bytes: int = Field(
        32 * 1024 * 1024,
        ge=0,
        description="in-process cache of covers read more than once, in front of Redis (bytes; 0: off)",
    )

    cache_lock_ttl_s: float = Field(
        120.0, gt=0.0, description="a replica's generation lock; longer than the slowest cover, or two paint it"
    )

    # --- feed-time serving (issue 16) ----------------------------------------------------------
    max_budget_ms: int = Field(10_000, ge=1, le=600_000, description="largest GenerateCover budget_ms")
    max_unit_id_bytes: int = Field(128, ge=1, le=4096)
    experiment_name: str | None = Field(
        None, description="A/B experiment salting the arm hash; unset: ARM_UNSPECIFIED serves regional"
    )
    experiment_generic_share: float = Field(0.5, ge=0.0, le=1.0, description="share of units on ARM_GENERIC")
    standing_covers: bool = Field(True, description="paint one fallback cover per style at start-up and reload")
    prepare_consumer: bool = Field(True, description="take PrepareCovers jobs from the Redis Stream")
    prepare_concurrency: int | None = Field(None, ge=1, le=256, description="prepare jobs in flight (unset: max_batch)")
    prepare_visibility_timeout_s: float = Field(
        120.0, gt=0.0, description="a taken job idle this long is reclaimed by another replica"
    )
    prepare_max_attempts: int = Field(3, ge=1, le=100, description="failures before the dead-letter stream")
    max_prepare_titles: int = Field(50, ge=1)
    max_prepare_regions: int = Field(1000, ge=1)
    max_prepare_variants: int = Field(8, ge=1, le=1000)

    # --- Ray Serve (covergen.rayserve: make serve-ray, deploy/ray/) -------------------------
    ray_painter_replicas: int = Field(2, ge=1, le=64, description="painter replicas `make serve-ray` starts")
    ray_painter_num_cpus: float = Field(0.5, gt=0.0, description="CPUs Ray reserves per painter replica")
    ray_painter_num_gpus: float = Field(0.0, ge=0.0, description="GPUs per painter replica (1 on GPU nodes)")
    ray_stacks_per_replica: int | None = Field(
        None,
        ge=1,
        description="adapter stacks a painter replica keeps routed to it (Serve max_num_models_per_replica; "
        "unset: max_resident_adapters // 3, as many as its adapter registry holds)",
    )

    # --- logs ----------------------------------------------------------------------------------
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    log_titles: bool = Field(True, description="false keeps article titles out of the logs")

    def resolved_default_steps(self) -> int:
        """`default_steps`, else 4 in LCM few-step mode and 20 otherwise."""
        if self.default_steps is not None:
            return self.default_steps
        return LCM_DEFAULT_STEPS if self.lcm_lora is not None else 20

    def resolved_default_guidance(self) -> float:
        """`default_guidance`, else 1.0 in LCM few-step mode (no CFG) and 5.0 otherwise."""
        if self.default_guidance is not None:
            return self.default_guidance
        return 1.0 if self.lcm_lora is not None else 5.0

    def resolved_cache_dir(self) -> Path:
        """The model cache folder: the setting, else `models.cache.default_cache_dir()` (the one rule)."""
        from covergen.models.cache import default_cache_dir  # the models package imports torch

        return self.cache_dir if self.cache_dir is not None else default_cache_dir()
