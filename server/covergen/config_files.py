"""Reading YAML config files and turning pydantic errors into teaching sentences, in one place.

Style cards, the regions table and `train.yaml` all read a YAML file, check it with a pydantic
model and report each problem as a sentence naming the file and the key.  The reading and the
walk over `ValidationError.errors()` live here; each caller keeps only its own phrasing (the
sentences differ because the things they name differ: a style, an entry of the table, a key).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from covergen.errors import ConfigError

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built in


def load_yaml(path: Path, *, what: str) -> Any:
    """Parse `path` as YAML; ConfigError names `what` (e.g. 'style card') and the file."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from exc


def load_yaml_mapping(path: Path, *, what: str, holds: str, empty_ok: bool = False) -> dict[str, Any]:
    """Parse `path` as a YAML mapping; `holds` says what the mapping should contain when it is not.

    An empty file reads as `{}` when `empty_ok`, and is refused otherwise.
    """
    raw = load_yaml(path, what=what)
    if raw is None and empty_ok:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{what} {path} must be a YAML mapping with {holds}; got {type(raw).__name__}")
    return dict(raw)


@dataclass(frozen=True)
class Problem:
    """One pydantic error, classified: an unknown key, a missing key, or a bad value."""

    kind: Literal["unknown", "missing", "invalid"]
    loc: tuple[str | int, ...]  # where pydantic put it, key included
    type: str  # pydantic's (or our PydanticCustomError's) error type
    message: str  # pydantic's message without its "Value error, " prefix
    input: Any

    @property
    def key(self) -> str:
        """The dotted location, e.g. `prompt.details`; empty at the top level."""
        return ".".join(str(part) for part in self.loc)

    @property
    def owner(self) -> tuple[str | int, ...]:
        """Where the problem sits: the enclosing entry for a key problem, else the value itself."""
        return self.loc[:-1] if self.kind != "invalid" else self.loc


_KINDS: dict[str, Literal["unknown", "missing"]] = {"extra_forbidden": "unknown", "missing": "missing"}


def validation_problems(error: ValidationError) -> list[Problem]:
    """Each error of `error`, classified, in pydantic's order."""
    return [
        Problem(
            kind=_KINDS.get(item["type"], "invalid"),
            loc=tuple(item["loc"]),
            type=item["type"],
            message=str(item["msg"]).removeprefix("Value error, "),
            input=item.get("input"),
        )
        for item in error.errors()
    ]


def describe_validation_error(error: ValidationError, phrase: Callable[[Problem], str]) -> str:
    """One line per problem, each worded by `phrase` (which names the file and what to fix)."""
    return "\n".join(phrase(problem) for problem in validation_problems(error))
