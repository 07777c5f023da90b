"""The other forms a recommender sends a place in, read into an entry of the regions table.

`RegionResolver` first looks a tag up as a name, pinyin or code; what it does not find comes
here, tried in this order:

- coordinates `lat,lon` in decimal degrees (`23.1291,113.2644`): the nearest prefecture-level
  seat of the table (`data/seats.csv`), if it is within `MAX_SEAT_KM`; farther away is unknown;
- the pre-2017 numeric ISO 3166-2 codes `CN-11` ... `CN-65`, `CN-71` (Taiwan), `CN-91` (Hong
  Kong), `CN-92` (Macao);
- traditional script (`蘇州`, `長沙`, `臺北`), converted by OpenCC and looked up again;
- comma-separated parts, broadest last: `Suzhou, Jiangsu`, `Suzhou, Jiangsu, China`,
  `Tianhe District, Guangzhou, Guangdong` (any case; `Province`, `City`, ... suffixes and the
  country are ignored). The broader parts pick among cities sharing a name;
- a Chinese address, with or without the country: `江苏省苏州市`, `中国广东省广州市天河区`,
  `苏州市姑苏区`: the leading province and city names are read, the rest (district, street) is
  ignored. A lone short name followed by other text (`吉林大学`) is not taken for an address.

Each reader answers an entry, an `Ambiguous` set of entries, or None (not this form).
"""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from covergen.errors import InvalidRequest
from covergen.plain_text import plain_text
from covergen.styles import normalize_tag
from covergen.titles.script import to_simplified

if TYPE_CHECKING:
    from covergen.regions import RegionEntry

SEATS_FILE = Path(__file__).resolve().parent / "data" / "seats.csv"
# Beyond this distance from every seat a coordinate is an unknown place (the default style).
# 150 km covers the land of nearly every eastern prefecture around its seat; it leaves out
# Seoul (~370 km from 丹东), Hanoi (~215 km from 崇左) and the far parts of the largest western
# prefectures, which then get the default style.
MAX_SEAT_KM = 150.0
EARTH_RADIUS_KM = 6371.0

_COORDINATES = re.compile(r"^\s*([+-]?\d{1,3}(?:\.\d+)?)\s*[,，]\s*([+-]?\d{1,3}(?:\.\d+)?)\s*$")
_NUMERIC_ISO = re.compile(r"^cn(\d{2})$")
_NUMERIC_ISO_EXCEPTIONS = {"91": "81", "92": "82"}  # Hong Kong and Macao: ISO 91/92, GB/T 81/82
_PART_SEPARATORS = re.compile(r"[,，、]")
_COUNTRIES = frozenset({"china", "prc", "peoplesrepublicofchina", "中国", "中华人民共和国"})
_ENGLISH_SUFFIXES = (
    "specialadministrativeregion", "autonomousregion", "municipality", "prefecture", "province",
    "district", "county", "city", "sar", "sheng", "shi",
)  # fmt: skip
_DISTRICT_ENDINGS = ("区", "县", "旗", "镇", "乡", "街道")


@dataclass(frozen=True)
class Ambiguous:
    """A tag that names more than one entry of the same level."""

    entries: tuple[RegionEntry, ...]


@dataclass(frozen=True)
class Seat:
    """Where a prefecture-level entry is governed from."""

    entry: RegionEntry
    lat: float  # degrees north
    lon: float  # degrees east


def load_seats(entries: Iterable[RegionEntry], path: Path = SEATS_FILE) -> tuple[Seat, ...]:
    """The seats of `entries` listed in `path` (rows naming other places are skipped)."""
    by_place = {
        (e.parent if e.level == "city" else e.name, e.name): e for e in entries if e.level != "macro_region"
    }
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    seats = []
    for row in csv.DictReader(lines):
        entry = by_place.get((row["province"], row["name"]))
        if entry is not None:
            seats.append(Seat(entry, float(row["lat"]), float(row["lon"])))
    return tuple(seats)


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance on a sphere of the Earth's mean radius (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(a))


class GeoTagReader:
    """Reads coordinates, numeric ISO codes, traditional script, `City, Province` and addresses."""

    def __init__(
        self,
        entries: Sequence[RegionEntry],
        lookup: Callable[[str], RegionEntry | Ambiguous | None],
        seats: Sequence[Seat],
    ) -> None:
        self._lookup = lookup  # the resolver's exact lookup of a normalised key
        self._seats = tuple(seats)
        self._by_code = {e.code: e for e in entries if e.code}
        self._named: dict[str, list[RegionEntry]] = defaultdict(list)  # every entry a key names
        self._chinese: dict[str, list[RegionEntry]] = defaultdict(list)  # Chinese names, for addresses
        self._full_names: set[str] = set()
        for entry in entries:
            if entry.level == "macro_region":
                continue
            for key in entry.lookup_keys():
                self._named[key].append(entry)
            for name in (entry.name, entry.full_name, *entry.aliases):
                key = normalize_tag(name)
                if key and not key.isascii() and entry not in self._chinese[key]:
                    self._chinese[key].append(entry)
            self._full_names.add(normalize_tag(entry.full_name))
        self._longest_name = max((len(k) for k in self._chinese), default=0)

    def read(self, tag: str) -> RegionEntry | Ambiguous | None:
        """The entry `tag` names in one of the forms above, or None."""
        text = plain_text(tag)
        coordinates = _COORDINATES.fullmatch(text)
        if coordinates:
            return self.nearest_seat(float(coordinates[1]), float(coordinates[2]), tag)
        iso = _NUMERIC_ISO.fullmatch(normalize_tag(text))
        if iso:
            prefix = _NUMERIC_ISO_EXCEPTIONS.get(iso[1], iso[1])
            return self._by_code.get(f"{prefix}0000")
        simplified = to_simplified(text)
        if simplified != text:
            found = self._lookup(normalize_tag(simplified))
            if found is not None:
                return found
        if _PART_SEPARATORS.search(simplified):
            return self._read_parts(_PART_SEPARATORS.split(simplified))
        single = self._read_parts([simplified])
        return single if single is not None else self._read_address(normalize_tag(simplified))

    def nearest_seat(self, lat: float, lon: float, tag: str) -> RegionEntry | None:
        """The entry whose seat is nearest to (lat, lon), if within MAX_SEAT_KM."""
        if not -90 <= lat <= 90 or not -180 <= lon <= 180:
            swapped = " (it looks like lon,lat: send latitude first)" if -90 <= lon <= 90 else ""
            raise InvalidRequest(
                f"region {tag!r} is not a coordinate pair: latitude must lie in [-90, 90] and "
                f"longitude in [-180, 180]{swapped}; send 'lat,lon' in decimal degrees, e.g. 23.1291,113.2644"
            )
        best = min(self._seats, key=lambda s: distance_km(lat, lon, s.lat, s.lon), default=None)
        if best is None or distance_km(lat, lon, best.lat, best.lon) > MAX_SEAT_KM:
            return None
        return best.entry

    def _keys_of(self, part: str) -> list[str]:
        key = normalize_tag(part)
        keys = [key]
        for suffix in _ENGLISH_SUFFIXES:
            if key.endswith(suffix) and len(key) > len(suffix):
                keys.append(key.removesuffix(suffix))
        return keys

    def _candidates(self, part: str) -> list[RegionEntry]:
        return next((self._named[k] for k in self._keys_of(part) if k in self._named), [])

    def _read_parts(self, parts: Sequence[str]) -> RegionEntry | Ambiguous | None:
        """`City, Province[, Country]`: narrow from the broadest part to the narrowest."""
        named = [p for p in parts if normalize_tag(p) and normalize_tag(p) not in _COUNTRIES]
        current: RegionEntry | Ambiguous | None = None
        for part in reversed(named):
            candidates = self._candidates(part)
            if current is None:
                if candidates:
                    current = _broadest(candidates)
                continue
            if isinstance(current, Ambiguous):
                break
            children = [c for c in candidates if c.parent == current.name and c.level == "city"]
            if not children:
                if current in candidates:
                    continue  # "Shanghai, Shanghai"
                break  # a district or town the table does not hold: the broader entry stands
            current = children[0] if len(children) == 1 else Ambiguous(tuple(children))
        return current

    def _read_address(self, key: str) -> RegionEntry | Ambiguous | None:
        """A Chinese address: leading province and city names, then anything."""
        for country in sorted(_COUNTRIES, key=len, reverse=True):
            if key.startswith(country) and not country.isascii():
                key = key[len(country) :]
                break
        found = self._lookup(key) if key else None
        if found is not None:
            return found
        current: RegionEntry | None = None
        position, steps, suffixed = 0, 0, False
        while position < len(key):
            step = self._next_name(key, position, current)
            if step is None:
                break
            name, current = step
            position += len(name)
            steps += 1
            suffixed = suffixed or name in self._full_names
        rest = key[position:]
        district = len(rest) >= 2 and rest.endswith(_DISTRICT_ENDINGS)
        if current is None or not (steps >= 2 or suffixed or district):
            return None
        return current

    def _next_name(
        self, key: str, position: int, current: RegionEntry | None
    ) -> tuple[str, RegionEntry] | None:
        """The longest name at `position` that fits under `current` (a child city, or at the
        start any province or city, the broader first)."""
        for length in range(min(self._longest_name, len(key) - position), 0, -1):
            name = key[position : position + length]
            entries = self._chinese.get(name, [])
            if current is not None:
                entries = [e for e in entries if e.level == "city" and e.parent == current.name]
            if entries:
                chosen = _broadest(entries)
                if isinstance(chosen, Ambiguous):
                    return None
                return name, chosen
        return None


def _broadest(entries: Sequence[RegionEntry]) -> RegionEntry | Ambiguous:
    """The province among `entries` if there is one, else the one city, else Ambiguous."""
    provinces = [e for e in entries if e.level == "province"]
    chosen = provinces or list(entries)
    return chosen[0] if len(chosen) == 1 else Ambiguous(tuple(chosen))


def ambiguity_hint(found: Ambiguous, parents: Mapping[str, RegionEntry]) -> str:
    """`Suzhou, Jiangsu` for the first entry of `found`: the form that picks one."""
    first = found.entries[0]
    parent = parents.get(first.parent or "")
    if parent is None:
        return ""
    return f", or 'City, Province' such as '{first.pinyin.title()}, {parent.pinyin.title()}'"
