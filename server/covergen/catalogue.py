"""The style catalogue behind ListStyles: every style card with its adapter version, residency
and whether it can be used now.

A resident adapter already knows its version; for the others the adapter file is hashed on a
worker thread, never on the event loop (a file of a few hundred MB takes a noticeable part of a
second to hash).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from covergen.adapters.files import LoraWeights, file_version
from covergen.adapters.registry import AdapterRegistry
from covergen.styles import StyleLibrary

UnusableReason = Callable[[str], "str | None"]


@dataclass(frozen=True)
class StyleEntry:
    """One style as ListStyles shows it."""

    name: str
    display_name: str
    kind: str
    default_weight: float
    version: str  # content version of the adapter in use, "" when the style has no readable file
    aliases: tuple[str, ...]
    resident: bool
    unusable_reason: str | None  # None when the style can be used


async def list_styles(
    library: StyleLibrary, registry: AdapterRegistry | None, unusable: UnusableReason = lambda _s: None
) -> list[StyleEntry]:
    """Every style in `library`, sorted by name, with what `registry` holds of it (None: a
    process that holds no adapters, such as the Ray Serve ingress) and why it is unusable."""
    resident: dict[str, LoraWeights] = {}
    if registry is not None:
        resident = {n: w for n in registry.resident_names() if (w := registry.get_resident(n)) is not None}
    cards = sorted(library, key=lambda c: c.name)
    paths = {card.name: library.adapter_path(card) for card in cards}
    unhashed = {name: path for name, path in paths.items() if path is not None and name not in resident}
    hashed = await asyncio.to_thread(lambda: {name: file_version(path) for name, path in unhashed.items()})
    entries = []
    for card in cards:
        weights = resident.get(card.name)
        entries.append(
            StyleEntry(
                name=card.name,
                display_name=card.display_name,
                kind=card.kind,
                default_weight=card.default_weight,
                version=weights.version if weights is not None else hashed.get(card.name, ""),
                aliases=tuple(card.aliases),
                resident=weights is not None,
                unusable_reason=unusable(card.name),
            )
        )
    return entries
