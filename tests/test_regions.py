"""The regions table and RegionResolver: every province-level division, city chains, fallbacks."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from covergen.errors import ConfigError, InvalidRequest
from covergen.regions import RegionResolver, Resolution, StyleWeight
from covergen.styles import StyleLibrary

STYLES_ROOT = Path(__file__).resolve().parents[1] / "styles"
REGIONS = STYLES_ROOT / "regions.yaml"

# The 34 province-level divisions, written out independently of styles/regions.yaml:
# (GB/T 2260, ISO 3166-2, short name, full name, pinyin, macro-region, style of their stack).
PROVINCES = [
    ("110000", "CN-BJ", "北京", "北京市", "beijing", "京津冀", "hutong_breakfast"),
    ("120000", "CN-TJ", "天津", "天津市", "tianjin", "京津冀", "hutong_breakfast"),
    ("130000", "CN-HE", "河北", "河北省", "hebei", "京津冀", "hutong_breakfast"),
    ("140000", "CN-SX", "山西", "山西省", "shanxi", "华北", "night_market_bbq"),
    ("150000", "CN-NM", "内蒙古", "内蒙古自治区", "neimenggu", "华北", "night_market_bbq"),
    ("210000", "CN-LN", "辽宁", "辽宁省", "liaoning", "东北", "night_market_bbq"),
    ("220000", "CN-JL", "吉林", "吉林省", "jilin", "东北", "night_market_bbq"),
    ("230000", "CN-HL", "黑龙江", "黑龙江省", "heilongjiang", "东北", "night_market_bbq"),
    ("310000", "CN-SH", "上海", "上海市", "shanghai", "长三角", "jiangnan"),
    ("320000", "CN-JS", "江苏", "江苏省", "jiangsu", "长三角", "jiangnan"),
    ("330000", "CN-ZJ", "浙江", "浙江省", "zhejiang", "长三角", "jiangnan"),
    ("340000", "CN-AH", "安徽", "安徽省", "anhui", "长三角", "jiangnan"),
    ("350000", "CN-FJ", "福建", "福建省", "fujian", "闽台", "minnan_redbrick"),
    ("360000", "CN-JX", "江西", "江西省", "jiangxi", "华中", "night_market_bbq"),
    ("370000", "CN-SD", "山东", "山东省", "shandong", "华北", "night_market_bbq"),
    ("410000", "CN-HA", "河南", "河南省", "henan", "华中", "night_market_bbq"),
    ("420000", "CN-HB", "湖北", "湖北省", "hubei", "华中", "night_market_bbq"),
    ("430000", "CN-HN", "湖南", "湖南省", "hunan", "华中", "night_market_bbq"),
    ("440000", "CN-GD", "广东", "广东省", "guangdong", "岭南", "lingnan_arcade"),
    ("450000", "CN-GX", "广西", "广西壮族自治区", "guangxi", "岭南", "lingnan_arcade"),
    ("460000", "CN-HI", "海南", "海南省", "hainan", "岭南", "lingnan_arcade"),
    ("500000", "CN-CQ", "重庆", "重庆市", "chongqing", "川渝", "chuanyu_hotpot"),
    ("510000", "CN-SC", "四川", "四川省", "sichuan", "川渝", "chuanyu_hotpot"),
    ("520000", "CN-GZ", "贵州", "贵州省", "guizhou", "西南", "night_market_bbq"),
    ("530000", "CN-YN", "云南", "云南省", "yunnan", "西南", "night_market_bbq"),
    ("540000", "CN-XZ", "西藏", "西藏自治区", "xizang", "西南", "night_market_bbq"),
    ("610000", "CN-SN", "陕西", "陕西省", "shaanxi", "西北", "night_market_bbq"),
    ("620000", "CN-GS", "甘肃", "甘肃省", "gansu", "西北", "night_market_bbq"),
    ("630000", "CN-QH", "青海", "青海省", "qinghai", "西北", "night_market_bbq"),
    ("640000", "CN-NX", "宁夏", "宁夏回族自治区", "ningxia", "西北", "night_market_bbq"),
    ("650000", "CN-XJ", "新疆", "新疆维吾尔自治区", "xinjiang", "西北", "night_market_bbq"),
    ("710000", "CN-TW", "台湾", "台湾省", "taiwan", "闽台", "minnan_redbrick"),
    ("810000", "CN-HK", "香港", "香港特别行政区", "xianggang", "岭南", "lingnan_arcade"),
    ("820000", "CN-MO", "澳门", "澳门特别行政区", "aomen", "岭南", "lingnan_arcade"),
]

WriteTable = Callable[[Callable[[dict[str, Any]], None]], Path]


@pytest.fixture(scope="module")
def library() -> StyleLibrary:
    return StyleLibrary.load(STYLES_ROOT)


@pytest.fixture(scope="module")
def resolver(library: StyleLibrary) -> RegionResolver:
    return RegionResolver.load(REGIONS, library)


@pytest.fixture
def write_table(tmp_path: Path) -> WriteTable:
    """Writes the real regions table after `edit` has changed it in place."""
    original = yaml.safe_load(REGIONS.read_text(encoding="utf-8"))

    def write(edit: Callable[[dict[str, Any]], None]) -> Path:
        table = copy.deepcopy(original)
        edit(table)
        path = tmp_path / "regions.yaml"
        path.write_text(yaml.dump(table, Dumper=yaml.CSafeDumper, allow_unicode=True), encoding="utf-8")
        return path

    return write


def _without_tag(resolution: Resolution) -> Resolution:
    return dataclasses.replace(resolution, tag="")


def _province(table: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in table["provinces"] if p["name"] == name)


def test_the_table_lists_exactly_the_34_province_level_divisions(resolver: RegionResolver) -> None:
    provinces = {(e.code, e.iso, e.name) for e in resolver.entries() if e.level == "province"}
    assert provinces == {(code, iso, name) for code, iso, name, *_ in PROVINCES}


def test_the_table_lists_enough_cities_with_codes_inside_their_province(resolver: RegionResolver) -> None:
    cities = [e for e in resolver.entries() if e.level == "city"]
    assert len(cities) >= 80
    provinces = {e.name: e for e in resolver.entries() if e.level == "province"}
    for city in cities:
        assert city.code is not None and city.code[:2] == (provinces[city.parent or ""].code or "")[:2]


@pytest.mark.parametrize(("code", "iso", "name", "full_name", "pinyin", "macro", "style"), PROVINCES)
def test_every_province_resolves_the_same_by_code_iso_name_and_pinyin(
    resolver: RegionResolver,
    code: str,
    iso: str,
    name: str,
    full_name: str,
    pinyin: str,
    macro: str,
    style: str,
) -> None:
    forms = [code, iso, iso.lower(), name, full_name, pinyin, pinyin.upper(), f" {pinyin.title()} "]
    resolutions = [resolver.resolve(form) for form in forms]
    for form, resolution in zip(forms, resolutions, strict=True):
        assert resolution.tag == form
    expected = _without_tag(resolutions[0])
    assert all(_without_tag(r) == expected for r in resolutions)
    assert expected.path == (name, macro)
    assert not expected.fallback
    assert expected.level in ("province", "macro_region")
    assert [item.style for item in expected.stack] == [style]


@pytest.mark.parametrize(
    ("tag", "path", "level", "stack"),
    [
        ("杭州", ("杭州", "浙江", "长三角"), "macro_region", [StyleWeight("jiangnan", 0.8)]),
        ("330100", ("杭州", "浙江", "长三角"), "macro_region", [StyleWeight("jiangnan", 0.8)]),
        ("苏州", ("苏州", "江苏", "长三角"), "macro_region", [StyleWeight("jiangnan", 0.8)]),
        ("320500", ("苏州", "江苏", "长三角"), "macro_region", [StyleWeight("jiangnan", 0.8)]),
        ("成都", ("成都", "四川", "川渝"), "city", [StyleWeight("chuanyu_hotpot", 0.9)]),
        ("510100", ("成都", "四川", "川渝"), "city", [StyleWeight("chuanyu_hotpot", 0.9)]),
        ("重庆", ("重庆", "川渝"), "province", [StyleWeight("chuanyu_hotpot", 0.9)]),
        ("北京", ("北京", "京津冀"), "province", [StyleWeight("hutong_breakfast", 0.9)]),
        ("广州", ("广州", "广东", "岭南"), "city", [StyleWeight("lingnan_arcade", 0.9)]),
        ("440100", ("广州", "广东", "岭南"), "city", [StyleWeight("lingnan_arcade", 0.9)]),
        ("佛山", ("佛山", "广东", "岭南"), "city", [StyleWeight("lingnan_arcade", 0.9)]),
        ("厦门", ("厦门", "福建", "闽台"), "city", [StyleWeight("minnan_redbrick", 0.9)]),
        ("350200", ("厦门", "福建", "闽台"), "city", [StyleWeight("minnan_redbrick", 0.9)]),
        ("泉州", ("泉州", "福建", "闽台"), "city", [StyleWeight("minnan_redbrick", 0.9)]),
        ("350500", ("泉州", "福建", "闽台"), "city", [StyleWeight("minnan_redbrick", 0.9)]),
        ("漳州", ("漳州", "福建", "闽台"), "city", [StyleWeight("minnan_redbrick", 0.9)]),
        ("鹤岗", ("鹤岗", "黑龙江", "东北"), "macro_region", [StyleWeight("night_market_bbq", 0.8)]),
        ("230400", ("鹤岗", "黑龙江", "东北"), "macro_region", [StyleWeight("night_market_bbq", 0.8)]),
        ("淄博", ("淄博", "山东", "华北"), "macro_region", [StyleWeight("night_market_bbq", 0.8)]),
        ("长三角", ("长三角",), "macro_region", [StyleWeight("jiangnan", 0.8)]),
        # County and district codes resolve through their prefecture, then their province.
        ("330106", ("杭州", "浙江", "长三角"), "macro_region", [StyleWeight("jiangnan", 0.8)]),
        ("110105", ("北京", "京津冀"), "province", [StyleWeight("hutong_breakfast", 0.9)]),
    ],
)
def test_cities_resolve_through_the_chain(
    resolver: RegionResolver, tag: str, path: tuple[str, ...], level: str, stack: list[StyleWeight]
) -> None:
    resolution = resolver.resolve(tag)
    assert resolution.path == path
    assert resolution.level == level
    assert list(resolution.stack) == stack
    assert not resolution.fallback


@pytest.mark.parametrize(
    "tag",
    [
        "杭州",
        "杭州市",
        "330100",
        "hangzhou",
        "Hang Zhou",
        "HANGZHOU",
        "hang-zhou",
        " 杭州 ",
        "杭\u200b州",
        "\u202e杭州",
        "杭州\x00",
        "ｈａｎｇｚｈｏｕ",
    ],
)
def test_city_tag_forms_agree(resolver: RegionResolver, tag: str) -> None:
    assert resolver.resolve(tag).path == ("杭州", "浙江", "长三角")


def test_a_name_shared_by_a_province_and_a_city_goes_to_the_province(resolver: RegionResolver) -> None:
    assert resolver.resolve("吉林").path == ("吉林", "东北")
    assert resolver.resolve("jilin").path == ("吉林", "东北")
    assert resolver.resolve("吉林市").path == ("吉林", "吉林", "东北")
    assert resolver.resolve("220200").path == ("吉林", "吉林", "东北")


@pytest.mark.parametrize(
    ("tag", "codes"),
    [("suzhou", ("320500", "341300")), ("Fu Zhou", ("350100", "361000")), ("taizhou", ("321200", "331000"))],
)
def test_a_pinyin_shared_by_two_cities_is_ambiguous(
    resolver: RegionResolver, tag: str, codes: tuple[str, str]
) -> None:
    with pytest.raises(InvalidRequest, match=rf"region '{tag}' is ambiguous: .*{codes[0]}.*{codes[1]}"):
        resolver.resolve(tag)


@pytest.mark.parametrize("tag", ["火星", "atlantis", "990000", "CN-XX", "x" * 64])
def test_unknown_tags_fall_back_to_the_default_style(resolver: RegionResolver, tag: str) -> None:
    resolution = resolver.resolve(tag)
    assert resolution.fallback
    assert resolution.level == "default"
    assert resolution.path == ()
    assert [item.style for item in resolution.stack] == ["default"]
    assert resolution.tag == tag


@pytest.mark.parametrize("tag", ["", "   ", "\u202e\u200b", "\x00\x07"])
def test_empty_tags_are_invalid(resolver: RegionResolver, tag: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^region is empty; send a GB/T 2260 code"):
        resolver.resolve(tag)


@pytest.mark.parametrize("tag", ["x" * 65, "杭" * 22, "杭州" + "\u200b" * 30])
def test_overlong_tags_are_invalid(resolver: RegionResolver, tag: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^region is \d+ bytes long, over the limit of 64"):
        resolver.resolve(tag)


def test_entries_are_in_file_order(resolver: RegionResolver) -> None:
    entries = resolver.entries()
    assert entries[0].level == "macro_region"
    hangzhou = next(e for e in entries if e.name == "杭州")
    assert hangzhou.full_name == "杭州市"
    assert hangzhou.parent == "浙江"
    assert entries.index(hangzhou) > entries.index(next(e for e in entries if e.name == "浙江"))


def test_the_real_table_loads_from_an_edited_copy(write_table: WriteTable, library: StyleLibrary) -> None:
    path = write_table(lambda table: None)
    assert RegionResolver.load(path, library).resolve("杭州").path == ("杭州", "浙江", "长三角")


def _set_stack(province: str, stack: list[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    def edit(table: dict[str, Any]) -> None:
        _province(table, province)["stack"] = stack

    return edit


def _set_city(province: str, city: str, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def edit(table: dict[str, Any]) -> None:
        entry = next(c for c in _province(table, province)["cities"] if c["name"] == city)
        entry.update(changes)

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _set_stack("浙江", [{"style": "jiangnna"}]),
            r"regions\.yaml: province 浙江 \(330000\) stack names unknown style 'jiangnna'; "
            r"known styles: chuanyu_hotpot",
        ),
        (
            _set_stack("浙江", [{"style": "jiangnan", "weight": 3.0}]),
            r"provinces\[\d+\] 浙江 stack\[0\] weight: weight 3\.0 is outside \[0, 2\]",
        ),
        (
            _set_city("浙江", "杭州", colour="red"),
            r"provinces\[\d+\] 浙江 cities\[0\] 杭州: unknown key 'colour'",
        ),
        (_set_city("浙江", "杭州", code="320100"), r"city 杭州 \(320100\) is listed under province 浙江"),
        (_set_city("浙江", "杭州", code="33010"), r"code '33010' is not a prefecture-level GB/T 2260 code"),
        (_set_city("浙江", "杭州", code="330000"), r"is not a prefecture-level GB/T 2260 code"),
        (_set_city("浙江", "宁波", code="330100"), r"share code 330100; each code may appear once"),
        (
            lambda table: _province(table, "浙江").update(macro_region="江浙沪"),
            r"province 浙江 \(330000\) names macro_region '江浙沪', which is not defined",
        ),
        (
            lambda table: _province(table, "浙江").update(iso="CN-33"),
            r"iso 'CN-33' is not an ISO 3166-2:CN code",
        ),
        (lambda table: table.update(version=2), r"version"),
        (lambda table: table["default"].update(stack=[]), r"default stack is empty"),
    ],
)
def test_bad_tables_are_rejected_naming_the_file_and_entry(
    write_table: WriteTable,
    library: StyleLibrary,
    edit: Callable[[dict[str, Any]], None],
    message: str,
) -> None:
    path = write_table(edit)
    with pytest.raises(ConfigError, match=message):
        RegionResolver.load(path, library)


def test_a_stack_without_weight_takes_the_cards_default_weight(
    write_table: WriteTable, library: StyleLibrary
) -> None:
    path = write_table(
        _set_city("浙江", "杭州", stack=[{"style": "jiangnan"}, {"style": "rain", "weight": 0.3}])
    )
    resolution = RegionResolver.load(path, library).resolve("杭州")
    assert resolution.level == "city"
    assert resolution.stack == (
        StyleWeight("jiangnan", library.get("jiangnan").default_weight),
        StyleWeight("rain", 0.3),
    )
