"""A/B arms of the regional-versus-generic cover experiment, assigned by a salted hash.

`ArmAssigner.assign(requested, unit_id)` keeps an arm the caller asked for; otherwise, with an
experiment configured (`COVERGEN_EXPERIMENT_NAME`, `COVERGEN_EXPERIMENT_GENERIC_SHARE`), the
unit's bucket is the first 8 bytes of sha256("<experiment>:<unit_id>") read as a fraction of
2^64, and units below the generic share get the generic arm. The hash depends only on the
experiment name and the unit, so a unit keeps its arm across calls, restarts and replicas; a new
experiment name reshuffles every unit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from covergen.errors import InvalidRequest

REGIONAL = "regional"
GENERIC = "generic"
ARMS = (REGIONAL, GENERIC)


@dataclass(frozen=True)
class Experiment:
    """A configured experiment: its name salts the hash; `generic_share` in [0, 1]."""

    name: str
    generic_share: float

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("an experiment needs a name; set COVERGEN_EXPERIMENT_NAME")
        if not 0.0 <= self.generic_share <= 1.0:
            raise ValueError(
                f"generic share {self.generic_share} is outside [0, 1]; set COVERGEN_EXPERIMENT_GENERIC_SHARE"
            )


def bucket(experiment: str, unit_id: str) -> float:
    """Where `unit_id` falls in [0, 1) for `experiment`."""
    digest = hashlib.sha256(f"{experiment}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class ArmAssigner:
    """Picks the arm a request is served with."""

    def __init__(self, experiment: Experiment | None, max_unit_id_bytes: int = 128) -> None:
        self.experiment = experiment
        self.max_unit_id_bytes = max_unit_id_bytes

    def assign(self, requested: str | None, unit_id: str) -> str:
        """`requested` ("regional", "generic", or None for unspecified) and the caller's unit.

        Unspecified without an experiment, or without a unit_id to bucket, is the regional arm.
        """
        size = len(unit_id.encode("utf-8", errors="surrogatepass"))
        if size > self.max_unit_id_bytes:
            raise InvalidRequest(
                f"unit_id is {size} bytes; the limit is {self.max_unit_id_bytes} bytes "
                "(COVERGEN_MAX_UNIT_ID_BYTES); send a reader or session id, not a payload"
            )
        if requested is not None:
            if requested not in ARMS:
                raise InvalidRequest(f"arm {requested!r} is not one of {', '.join(ARMS)}")
            return requested
        if self.experiment is None or not unit_id:
            return REGIONAL
        return GENERIC if bucket(self.experiment.name, unit_id) < self.experiment.generic_share else REGIONAL
