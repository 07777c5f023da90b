"""The studio's settings: one typed object, environment `COVERGEN_STUDIO_<FIELD>`."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


class StudioSettings(BaseSettings):
    """Where the studio listens, what it works on, which covergen server it talks to."""

    model_config = SettingsConfigDict(env_prefix="COVERGEN_STUDIO_", extra="forbid")

    host: str = Field("127.0.0.1", description="bind address; anything but loopback needs `token`")
    port: int = Field(8600, ge=0, le=65535)
    fd: int | None = Field(None, ge=0, description="serve on this already-listening socket (tests, socket activation)")
    token: str | None = Field(None, description="required (Bearer header or ?token=) off loopback")
    home: Path = Field(REPO_ROOT / ".studio", description="datasets, runs, queue database")
    styles_dir: Path = Field(REPO_ROOT / "styles", description="the style library it publishes into")
    history_dir: Path | None = Field(None, description="version history (default: <styles_dir>/.history)")
    server: str = Field("127.0.0.1:50051", description="host:port of the running covergen server")
    admin_token: str | None = Field(None, description="the server's COVERGEN_ADMIN_TOKEN (reload)")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="per picture")
    max_upload_files: int = Field(500, ge=1, description="per upload request")
    max_dataset_files: int = Field(2000, ge=1)
    preview_steps: int = Field(20, ge=1, le=100, description="denoising steps of preview covers")
    library_covers: int = Field(2, ge=0, le=6, description="covers per style on the library page")
    python: str | None = Field(None, description="interpreter for covergen-train (default: this one)")
    stop_grace_s: float = Field(10.0, gt=0, description="SIGTERM to SIGKILL when stopping a job")

    @model_validator(mode="after")
    def _token_off_loopback(self) -> StudioSettings:
        if not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"host {self.host} is not loopback: set COVERGEN_STUDIO_TOKEN so the studio "
                "is not open to the network, or bind COVERGEN_STUDIO_HOST=127.0.0.1"
            )
        return self

    @property
    def effective_history_dir(self) -> Path:
        return self.history_dir or self.styles_dir / ".history"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def database(self) -> Path:
        return self.home / "studio.db"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
