"""The cover request as the domain sees it, and its validation against the configured limits.

The servicer copies proto fields into a `CoverRequest`; `validate` rejects anything out of range
with `InvalidRequest` naming the field, the value and the allowed range, before any work starts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from covergen.errors import InvalidRequest
from covergen.regions import MAX_TAG_BYTES
from covergen.styles import MAX_WEIGHT, MIN_WEIGHT, STYLE_NAME_PATTERN

FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
ARMS = ("regional", "generic")
MAX_REGION_BYTES = MAX_TAG_BYTES
MAX_THEMES = 4
MAX_THEME_BYTES = 32
MAX_WEIGHT_OVERRIDES = 8
MAX_VARIANT = 1000
MAX_SEED = 2**63 - 1
STEPS_RANGE = (1, 100)
GUIDANCE_RANGE = (1.0, 20.0)
WEIGHT_RANGE = (MIN_WEIGHT, MAX_WEIGHT)
_STYLE_NAME = STYLE_NAME_PATTERN


class WeightOverrides(Mapping[str, float]):
    """A request's per-adapter weights: read-only and hashable, so a request can key a memo."""

    __slots__ = ("_weights",)

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self._weights = dict(weights or {})

    def __getitem__(self, name: str) -> float:
        return self._weights[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._weights)

    def __len__(self) -> int:
        return len(self._weights)

    def __hash__(self) -> int:
        return hash(frozenset(self._weights.items()))

    def __repr__(self) -> str:
        return f"WeightOverrides({self._weights!r})"


@dataclass(frozen=True)
class Limits:
    """Server-side bounds and defaults a request is checked against (from Settings)."""

    max_title_bytes: int = 512
    max_size: int = 1024
    default_size: int = 64
    default_steps: int = 20
    default_guidance: float = 5.0


@dataclass(frozen=True)
class CoverRequest:
    """One GenerateCover call. Zero/None mean "server default" where the proto says so.

    Frozen and hashable (`adapter_weights` becomes a `WeightOverrides`): the request itself is
    the key of the plan memo, so a field added here can never return a stale plan.
    """

    region: str
    title: str
    seed: int | None = None
    variant: int = 0
    width: int = 0
    height: int = 0
    steps: int = 0
    guidance_scale: float | None = None
    format: str = "png"
    themes: tuple[str, ...] = ()
    adapter_weights: Mapping[str, float] = field(default_factory=WeightOverrides)
    arm: str = "regional"  # A/B arm: "regional" (the region's stack) or "generic" (the default's)

    def __post_init__(self) -> None:
        if not isinstance(self.adapter_weights, WeightOverrides):
            object.__setattr__(self, "adapter_weights", WeightOverrides(self.adapter_weights))


@dataclass(frozen=True)
class GenerationSettings:
    """The request's knobs with defaults filled in and every value checked."""

    width: int
    height: int
    steps: int
    guidance_scale: float
    format: str


def validate(request: CoverRequest, limits: Limits) -> GenerationSettings:
    """Check every field; return the effective settings or raise InvalidRequest."""
    _check_text("region", request.region, MAX_REGION_BYTES)
    _check_text("title", request.title, limits.max_title_bytes)
    if request.seed is not None and not 0 <= request.seed <= MAX_SEED:
        raise InvalidRequest(f"seed {request.seed} is outside [0, 2^63-1]")
    if not 0 <= request.variant <= MAX_VARIANT:
        raise InvalidRequest(f"variant {request.variant} is outside [0, {MAX_VARIANT}]")
    width = _check_size("width", request.width or limits.default_size, limits.max_size)
    height = _check_size("height", request.height or limits.default_size, limits.max_size)
    steps = request.steps or limits.default_steps
    if not STEPS_RANGE[0] <= steps <= STEPS_RANGE[1]:
        raise InvalidRequest(
            f"steps {steps} is outside [{STEPS_RANGE[0]}, {STEPS_RANGE[1]}]; 0 means the default"
        )
    guidance = limits.default_guidance if request.guidance_scale is None else float(request.guidance_scale)
    if not GUIDANCE_RANGE[0] <= guidance <= GUIDANCE_RANGE[1] or guidance != guidance:
        raise InvalidRequest(
            f"guidance_scale {guidance} is outside [{GUIDANCE_RANGE[0]}, {GUIDANCE_RANGE[1]}]; leave it unset for the default"
        )
    if request.arm not in ARMS:
        raise InvalidRequest(f"arm '{request.arm}' is not one of {', '.join(ARMS)}")
    if request.format not in FORMATS:
        raise InvalidRequest(f"format '{request.format}' is not one of {', '.join(FORMATS)}")
    if len(request.themes) > MAX_THEMES:
        raise InvalidRequest(f"themes has {len(request.themes)} tags; at most {MAX_THEMES} are allowed")
    for theme in request.themes:
        _check_text("themes[]", theme, MAX_THEME_BYTES)
    if len(request.adapter_weights) > MAX_WEIGHT_OVERRIDES:
        raise InvalidRequest(
            f"adapter_weights has {len(request.adapter_weights)} entries; at most {MAX_WEIGHT_OVERRIDES} are allowed"
        )
    for name, weight in request.adapter_weights.items():
        if not _STYLE_NAME.fullmatch(name):  # match() would let a trailing newline through
            raise InvalidRequest(
                f"adapter_weights key '{name[:64]}' is not a style name (lowercase a-z, 0-9, _ or -)"
            )
        if not WEIGHT_RANGE[0] <= weight <= WEIGHT_RANGE[1] or weight != weight:
            raise InvalidRequest(
                f"adapter_weights['{name}'] = {weight} is outside [{WEIGHT_RANGE[0]:g}, {WEIGHT_RANGE[1]:g}]; "
                "0 switches the adapter off"
            )
    return GenerationSettings(
        width=width, height=height, steps=steps, guidance_scale=guidance, format=request.format
    )


def _check_text(name: str, value: str, max_bytes: int) -> None:
    if not value or not value.strip():
        raise InvalidRequest(f"{name} is empty; send a non-empty {name}")
    size = len(value.encode("utf-8"))
    if size > max_bytes:
        raise InvalidRequest(f"{name} is {size} bytes of UTF-8; the limit is {max_bytes} bytes")


def _check_size(name: str, value: int, max_size: int) -> int:
    if value % 8 != 0:
        raise InvalidRequest(f"{name} {value} is not a multiple of 8; use e.g. {max(64, value // 8 * 8)}")
    if not 64 <= value <= max_size:
        raise InvalidRequest(
            f"{name} {value} is outside [64, {max_size}]; raise COVERGEN_MAX_SIZE on the server for larger covers"
        )
    return value
