"""The regions table (`styles/regions.yaml`) and the resolver from a region tag to a style stack.

A region tag is whatever the newsroom's geo tagger sends: a GB/T 2260 code (`330100`,
`330000`), an ISO 3166-2 code (`CN-ZJ`), a Chinese name with or without its suffix (`杭州`,
`杭州市`, `广西壮族自治区`) or pinyin (`hangzhou`, `Hang Zhou`). Tags are compared by
`normalize_tag`. A tag in none of these forms is read by `covergen.geotags` (addresses,
`City, Province`, `CN-44`, traditional script, Taiwan's cities, `lat,lon`). Resolution walks city -> province -> macro-region -> default and takes the stack
of the first level that defines one; an unknown tag gets the default stack with `fallback=True`.

When two entries share a key (吉林 is a province and a city), the broader level keeps it; two
entries of the same level sharing a pinyin key (苏州/宿州 `suzhou`) make that key ambiguous,
and resolving it is an InvalidRequest that lists the codes to send instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from covergen.config_files import Problem, describe_validation_error, load_yaml
from covergen.errors import ConfigError, InvalidRequest, StyleNotFound
from covergen.geotags import Ambiguous, GeoTagReader, ambiguity_hint, load_seats
from covergen.styles import MAX_WEIGHT, MIN_WEIGHT, normalize_tag

if TYPE_CHECKING:
    from covergen.styles import StyleLibrary

MAX_TAG_BYTES = 64

Level = Literal["city", "province", "macro_region", "default"]

# Broader levels win a key that a narrower level also claims.
_LEVEL_RANK: Mapping[str, int] = {"city": 0, "province": 1, "macro_region": 2}
_SIX_DIGITS = re.compile(r"^[0-9]{6}$")
_TAG_EXAMPLES = "a GB/T 2260 code such as 330100, an ISO code such as CN-ZJ, or a name such as 杭州"


@dataclass(frozen=True)
class StyleWeight:
    """One adapter of a stack and the weight it is applied with, in [0, 2]."""

    style: str
    weight: float


@dataclass(frozen=True)
class Resolution:
    """What a region tag resolved to."""

    tag: str  # as given
    path: tuple[str, ...]  # display path, e.g. ("杭州", "浙江", "长三角"); () when unknown
    level: Level  # the level whose stack won
    stack: tuple[StyleWeight, ...]  # adapters to apply, in order
    fallback: bool  # True when the tag was unknown


@dataclass(frozen=True)
class RegionEntry:
    """One city, province-level division or macro-region of the table."""

    level: Literal["city", "province", "macro_region"]
    name: str  # short Chinese name: 杭州, 浙江, 长三角
    full_name: str  # with suffix: 杭州市, 浙江省; equal to name for macro-regions
    pinyin: str
    code: str | None  # GB/T 2260; None for macro-regions
    iso: str | None  # ISO 3166-2; provinces only
    parent: str | None  # enclosing entry's name: the province of a city, the macro of a province
    stack: tuple[StyleWeight, ...] | None  # None: inherits from the parent
    aliases: tuple[str, ...] = ()

    def label(self) -> str:
        """How error messages name this entry: `city 杭州 (330100)`."""
        level = self.level.replace("_", "-")
        return f"{level} {self.name} ({self.code})" if self.code else f"{level} {self.name}"

    def lookup_keys(self) -> tuple[str, ...]:
        """Every normalised tag that names this entry."""
        raw = (self.name, self.full_name, self.pinyin, self.code or "", self.iso or "")
        return tuple(dict.fromkeys(k for k in map(normalize_tag, (*raw, *self.aliases)) if k))


# ---- the file format -------------------------------------------------------------------------


class _StackItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    style: str
    weight: float | None = None  # None: the card's default_weight

    @field_validator("weight")
    @classmethod
    def _weight_in_range(cls, value: float | None) -> float | None:
        if value is not None and not MIN_WEIGHT <= value <= MAX_WEIGHT:
            raise ValueError(f"weight {value} is outside [0, 2]")
        return value


def _code_as_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) else value


class _City(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str | None = None  # None where GB/T 2260 has no prefecture code (Taiwan's cities)
    name: str
    full_name: str | None = None  # default: name + 市
    pinyin: str
    aliases: tuple[str, ...] = ()
    stack: tuple[_StackItem, ...] | None = None

    _as_text = field_validator("code", mode="before")(_code_as_text)

    @field_validator("code")
    @classmethod
    def _prefecture_code(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _SIX_DIGITS.fullmatch(value) or value.endswith("0000") or not value.endswith("00"):
            raise ValueError(
                f"code {value!r} is not a prefecture-level GB/T 2260 code (six digits ending in "
                f"00 but not 0000, e.g. '330100')"
            )
        return value


class _Province(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    iso: str
    name: str
    full_name: str
    pinyin: str
    aliases: tuple[str, ...] = ()
    macro_region: str
    stack: tuple[_StackItem, ...] | None = None
    cities: tuple[_City, ...] = ()

    _as_text = field_validator("code", mode="before")(_code_as_text)

    @field_validator("code")
    @classmethod
    def _province_code(cls, value: str) -> str:
        if not _SIX_DIGITS.fullmatch(value) or not value.endswith("0000"):
            raise ValueError(
                f"code {value!r} is not a province-level GB/T 2260 code (six digits ending in "
                f"0000, e.g. '330000')"
            )
        return value

    @field_validator("iso")
    @classmethod
    def _iso_code(cls, value: str) -> str:
        if not re.fullmatch(r"CN-[A-Z]{2}", value):
            raise ValueError(f"iso {value!r} is not an ISO 3166-2:CN code such as 'CN-ZJ'")
        return value


class _MacroRegion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    pinyin: str
    aliases: tuple[str, ...] = ()
    stack: tuple[_StackItem, ...] | None = None


class _Default(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stack: tuple[_StackItem, ...]


class _RegionsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    default: _Default
    macro_regions: tuple[_MacroRegion, ...]
    provinces: tuple[_Province, ...]


def _entry_at(raw: Any, loc: Sequence[str | int]) -> str:
    """The innermost named entry on the way to `loc`, e.g. `provinces[3] 浙江 cities[0] 杭州`."""
    parts: list[str] = []
    node = raw
    for step in loc:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            break
        if isinstance(step, int):
            parts[-1] = f"{parts[-1]}[{step}]"
            if isinstance(node, Mapping) and "name" in node:
                parts[-1] += f" {node['name']}"
        else:
            parts.append(str(step))
    return " ".join(parts)


def _phrase_table_problem(raw: Any, path: Path) -> Callable[[Problem], str]:
    """One sentence per problem, naming the file and the entry (e.g. `provinces[3] 浙江`)."""

    def phrase(problem: Problem) -> str:
        key = str(problem.loc[-1]) if problem.loc else "<file>"
        where = _entry_at(raw, problem.owner) or "top level"
        if problem.kind == "unknown":
            return f"{path}: {where}: unknown key '{key}'; remove it"
        if problem.kind == "missing":
            return f"{path}: {where}: missing '{key}'; add it"
        return f"{path}: {where}: {problem.message}; fix {key} in {path}"

    return phrase


# ---- the resolver ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionResolver:
    """Resolves region tags to style stacks; build it with `RegionResolver.load`."""

    _entries: tuple[RegionEntry, ...]
    _default_stack: tuple[StyleWeight, ...]
    _by_name: Mapping[tuple[str, str], RegionEntry]  # (level, name) -> entry
    _index: Mapping[str, RegionEntry | Ambiguous] = field(repr=False)
    _reader: GeoTagReader = field(repr=False)

    @classmethod
    def load(cls, path: Path, library: StyleLibrary) -> RegionResolver:
        """Read and check the regions table against `library`.

        ConfigError names the file and the entry when a style is unknown, a weight is outside
        [0, 2], a code is malformed, duplicated or outside its province, or a province names a
        macro-region that is not defined.
        """
        path = Path(path)
        raw = load_yaml(path, what="regions table")
        try:
            table = _RegionsFile.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, _phrase_table_problem(raw, path))) from exc
        return cls._build(table, library, path)

    @classmethod
    def _build(cls, table: _RegionsFile, library: StyleLibrary, path: Path) -> RegionResolver:
        def stack_of(items: tuple[_StackItem, ...] | None, label: str) -> tuple[StyleWeight, ...] | None:
            if items is None:
                return None
            stack = []
            for item in items:
                try:
                    card = library.get(item.style)
                except StyleNotFound as exc:
                    raise ConfigError(
                        f"{path}: {label} stack names unknown style '{item.style}'; known "
                        f"styles: {', '.join(library.names())}; fix style in {path}"
                    ) from exc
                weight = card.default_weight if item.weight is None else item.weight
                stack.append(StyleWeight(style=card.name, weight=weight))
            return tuple(stack)

        entries: list[RegionEntry] = []
        macro_names = {macro.name for macro in table.macro_regions}
        for macro in table.macro_regions:
            label = f"macro-region {macro.name}"
            entries.append(
                RegionEntry(
                    level="macro_region",
                    name=macro.name,
                    full_name=macro.name,
                    pinyin=macro.pinyin,
                    code=None,
                    iso=None,
                    parent=None,
                    stack=stack_of(macro.stack, label),
                    aliases=macro.aliases,
                )
            )
        for province in table.provinces:
            label = f"province {province.name} ({province.code})"
            if province.macro_region not in macro_names:
                raise ConfigError(
                    f"{path}: {label} names macro_region '{province.macro_region}', which is not "
                    f"defined; use one of {', '.join(sorted(macro_names))} or add it under "
                    f"macro_regions"
                )
            entries.append(
                RegionEntry(
                    level="province",
                    name=province.name,
                    full_name=province.full_name,
                    pinyin=province.pinyin,
                    code=province.code,
                    iso=province.iso,
                    parent=province.macro_region,
                    stack=stack_of(province.stack, label),
                    aliases=province.aliases,
                )
            )
            for city in province.cities:
                city_label = f"city {city.name} ({city.code})" if city.code else f"city {city.name}"
                if city.code is not None and city.code[:2] != province.code[:2]:
                    raise ConfigError(
                        f"{path}: {city_label} is listed under {label} but its code does not "
                        f"start with {province.code[:2]}; fix the code or move the city"
                    )
                entries.append(
                    RegionEntry(
                        level="city",
                        name=city.name,
                        full_name=city.full_name or f"{city.name}市",
                        pinyin=city.pinyin,
                        code=city.code,
                        iso=None,
                        parent=province.name,
                        stack=stack_of(city.stack, city_label),
                        aliases=city.aliases,
                    )
                )
        default_stack = stack_of(table.default.stack, "default") or ()
        if not default_stack:
            raise ConfigError(f"{path}: default stack is empty; add - {{style: default}}")
        index = _build_index(entries, path)
        return cls(
            _entries=tuple(entries),
            _default_stack=default_stack,
            _by_name={(entry.level, entry.name): entry for entry in entries},
            _index=index,
            _reader=GeoTagReader(entries, lambda key: _exact(index, key), load_seats(entries)),
        )

    def entries(self) -> tuple[RegionEntry, ...]:
        """Every entry in file order: macro-regions, then each province followed by its cities."""
        return self._entries

    def default_stack(self) -> tuple[StyleWeight, ...]:
        """The stack unknown tags get."""
        return self._default_stack

    def resolve(self, tag: str) -> Resolution:
        """The stack for `tag`; InvalidRequest for an empty, overlong or ambiguous tag."""
        size = len(tag.encode("utf-8", errors="surrogatepass"))
        if size > MAX_TAG_BYTES:
            raise InvalidRequest(
                f"region is {size} bytes long, over the limit of {MAX_TAG_BYTES}; send {_TAG_EXAMPLES}"
            )
        key = normalize_tag(tag)
        if not key:
            raise InvalidRequest(f"region is empty; send {_TAG_EXAMPLES}")
        found = _exact(self._index, key)
        if found is None:
            found = self._reader.read(tag)
        if isinstance(found, Ambiguous):
            choices = ", ".join(f"{e.full_name} ({e.code or e.parent})" for e in found.entries)
            provinces = {e.name: e for e in self._entries if e.level == "province"}
            raise InvalidRequest(
                f"region {tag!r} is ambiguous: it names {choices}; send the code or the Chinese name"
                f"{ambiguity_hint(found, provinces)} instead"
            )
        if found is None:
            return Resolution(tag=tag, path=(), level="default", stack=self._default_stack, fallback=True)
        chain = list(self._chain(found))
        winner = next((entry for entry in chain if entry.stack is not None), None)
        return Resolution(
            tag=tag,
            path=tuple(entry.name for entry in chain),
            level=winner.level if winner else "default",
            stack=winner.stack if winner and winner.stack is not None else self._default_stack,
            fallback=False,
        )

    def _chain(self, entry: RegionEntry) -> Iterable[RegionEntry]:
        parent_level = {"city": "province", "province": "macro_region"}
        current: RegionEntry | None = entry
        while current is not None:
            yield current
            level = parent_level.get(current.level)
            if level is None or current.parent is None:
                return
            current = self._by_name[(level, current.parent)]


def _exact(index: Mapping[str, RegionEntry | Ambiguous], key: str) -> RegionEntry | Ambiguous | None:
    """`key` (normalised) as a name, pinyin or code; a county or district code goes to its
    prefecture, then its province."""
    found = index.get(key)
    if found is None and _SIX_DIGITS.fullmatch(key):
        found = index.get(key[:4] + "00") or index.get(key[:2] + "0000")
    return found


def _build_index(entries: Iterable[RegionEntry], path: Path) -> dict[str, RegionEntry | Ambiguous]:
    """Normalised key -> entry. Codes must be unique; a broader level keeps a shared key; a key
    shared within one level becomes ambiguous."""
    index: dict[str, RegionEntry | Ambiguous] = {}
    codes: dict[str, RegionEntry] = {}
    for entry in entries:
        for code in filter(None, (entry.code, entry.iso)):
            other = codes.setdefault(code, entry)
            if other is not entry:
                raise ConfigError(
                    f"{path}: {entry.label()} and {other.label()} share code {code}; "
                    f"each code may appear once"
                )
        for key in entry.lookup_keys():
            held = index.get(key)
            if held is None:
                index[key] = entry
                continue
            held_entries = held.entries if isinstance(held, Ambiguous) else (held,)
            held_rank = _LEVEL_RANK[held_entries[0].level]
            rank = _LEVEL_RANK[entry.level]
            if rank > held_rank:
                index[key] = entry
            elif rank == held_rank:
                index[key] = Ambiguous((*held_entries, entry))
    return index
