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
        if city.code is None:  # GB/T 2260 gives Taiwan's cities no prefecture code
            assert city.parent == "台湾"
            continue
        assert city.code[:2] == (provinces[city.parent or ""].code or "")[:2]


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


# --- the other geo tag forms a recommender sends (covergen.geotags) ----------------------------

SUZHOU = ("苏州", "江苏", "长三角")
GUANGZHOU = ("广州", "广东", "岭南")


@pytest.mark.parametrize(
    ("tag", "path"),
    [
        ("江苏省苏州市", SUZHOU),
        ("中国江苏省苏州市", SUZHOU),
        ("中华人民共和国江苏省苏州市", SUZHOU),
        ("江苏苏州", SUZHOU),
        ("苏州市姑苏区", SUZHOU),
        ("广东省广州市天河区", GUANGZHOU),
        ("中国 广东省 广州市 天河区", GUANGZHOU),
        ("广东省广州市天河区天河路385号", GUANGZHOU),
        ("吉林省吉林市", ("吉林", "吉林", "东北")),
        ("广西壮族自治区南宁市", ("南宁", "广西", "岭南")),
        ("北京市朝阳区", ("北京", "京津冀")),  # 朝阳 is also a city of 辽宁: not under 北京
        ("江苏省昆山市", ("江苏", "长三角")),  # a county-level city the table does not list
    ],
)
def test_full_addresses_resolve_to_their_city(
    resolver: RegionResolver, tag: str, path: tuple[str, ...]
) -> None:
    resolution = resolver.resolve(tag)
    assert (resolution.path, resolution.fallback) == (path, False)


@pytest.mark.parametrize(
    ("tag", "path"),
    [
        ("Suzhou, Jiangsu", SUZHOU),
        ("suzhou, jiangsu, china", SUZHOU),
        ("SUZHOU , JIANGSU , CHINA", SUZHOU),
        ("Suzhou City, Jiangsu Province, China", SUZHOU),
        ("Suzhou, Anhui", ("宿州", "安徽", "长三角")),
        ("Guangzhou, Guangdong", GUANGZHOU),
        ("Tianhe District, Guangzhou, Guangdong, China", GUANGZHOU),
        ("Jilin, Jilin", ("吉林", "吉林", "东北")),
        ("Kunshan, Jiangsu", ("江苏", "长三角")),
        ("Shanghai, China", ("上海", "长三角")),
        ("Hangzhou City", ("杭州", "浙江", "长三角")),
        ("苏州，江苏", SUZHOU),
    ],
)
def test_english_city_province_forms(resolver: RegionResolver, tag: str, path: tuple[str, ...]) -> None:
    resolution = resolver.resolve(tag)
    assert (resolution.path, resolution.fallback) == (path, False)


@pytest.mark.parametrize(("code", "iso", "name", "full_name", "pinyin", "macro", "style"), PROVINCES)
def test_pre_2017_numeric_iso_codes_name_the_province(
    resolver: RegionResolver,
    code: str,
    iso: str,
    name: str,
    full_name: str,
    pinyin: str,
    macro: str,
    style: str,
) -> None:
    # ISO 3166-2:CN before 2017 used the GB/T 2260 prefix, except Hong Kong (91) and Macao (92)
    numeric = {"81": "91", "82": "92"}.get(code[:2], code[:2])
    for tag in (f"CN-{numeric}", f"cn-{numeric}", f"CN{numeric}"):
        assert _without_tag(resolver.resolve(tag)) == _without_tag(resolver.resolve(code)), tag


@pytest.mark.parametrize(
    ("tag", "path"),
    [
        ("蘇州", SUZHOU),
        ("長沙", ("长沙", "湖南", "华中")),
        ("廣州市", GUANGZHOU),
        ("廣東省廣州市天河區", GUANGZHOU),
        ("臺北", ("台北", "台湾", "闽台")),
        ("臺灣", ("台湾", "闽台")),
        ("瀋陽", ("沈阳", "辽宁", "东北")),
    ],
)
def test_traditional_script(resolver: RegionResolver, tag: str, path: tuple[str, ...]) -> None:
    resolution = resolver.resolve(tag)
    assert (resolution.path, resolution.fallback) == (path, False)


@pytest.mark.parametrize(
    "tags",
    [("台北", "臺北市", "taipei", "Taibei"), ("新北", "New Taipei"), ("桃园", "桃園", "Taoyuan"),
     ("台中", "臺中", "Taichung"), ("台南", "臺南", "Tainan"), ("高雄", "高雄市", "kaohsiung", "gaoxiong"),
     ("基隆", "Keelung"), ("新竹", "Hsinchu"), ("嘉义", "嘉義", "Chiayi")],
)  # fmt: skip
def test_the_cities_of_taiwan(resolver: RegionResolver, tags: tuple[str, ...]) -> None:
    paths = {resolver.resolve(tag).path for tag in tags}
    assert paths == {(tags[0], "台湾", "闽台")}
    assert [i.style for i in resolver.resolve(tags[0]).stack] == ["minnan_redbrick"]


@pytest.mark.parametrize(
    ("tag", "path"),
    [
        ("23.1291,113.2644", GUANGZHOU),  # 广州's seat
        (" 23.1291 , 113.2644 ", GUANGZHOU),
        ("31.30,120.59", SUZHOU),
        ("31.32,120.70", SUZHOU),  # Suzhou Industrial Park, ~10 km east of the seat
        ("30.2469,120.2098", ("杭州", "浙江", "长三角")),
        ("39.9042,116.4074", ("北京", "京津冀")),
        ("22.6209,120.3120", ("高雄", "台湾", "闽台")),
        ("22.28,114.17", ("香港", "岭南")),
    ],
)
def test_coordinates_resolve_to_the_nearest_seat(
    resolver: RegionResolver, tag: str, path: tuple[str, ...]
) -> None:
    resolution = resolver.resolve(tag)
    assert (resolution.path, resolution.fallback) == (path, False)


@pytest.mark.parametrize(
    "tag", ["35.68,139.69", "37.57,126.98", "0,0", "-33.87,151.21"]
)  # Tokyo, Seoul, sea, Sydney
def test_coordinates_beyond_the_cap_fall_back(resolver: RegionResolver, tag: str) -> None:
    from covergen.geotags import MAX_SEAT_KM

    assert MAX_SEAT_KM == 150.0
    resolution = resolver.resolve(tag)
    assert resolution.fallback and resolution.path == () and resolution.level == "default"


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ("113.2644,23.1291", r"not a coordinate pair: .*looks like lon,lat"),
        ("95,120", r"latitude must lie in \[-90, 90\]"),
        ("Suzhou, China", r"ambiguous: it names 苏州市 \(320500\), 宿州市 \(341300\).*'Suzhou, Jiangsu'"),
        ("suzhou", r"ambiguous: .*'City, Province' such as 'Suzhou, Jiangsu'"),
    ],
)
def test_bad_or_ambiguous_geo_tags_say_what_to_send(resolver: RegionResolver, tag: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        resolver.resolve(tag)


@pytest.mark.parametrize(
    "tag", ["吉林大学", "朝阳区", "Springfield, Illinois", "Atlantis, China", "CN-99", "火星市火星区"]
)
def test_unknown_places_in_the_new_forms_fall_back(resolver: RegionResolver, tag: str) -> None:
    resolution = resolver.resolve(tag)
    assert resolution.fallback and resolution.path == ()


def test_every_prefecture_level_entry_has_a_seat(resolver: RegionResolver) -> None:
    from covergen.geotags import load_seats

    seated = {seat.entry for seat in load_seats(resolver.entries())}
    provinces_with_cities = {e.parent for e in resolver.entries() if e.level == "city"}
    expected = {
        e for e in resolver.entries()
        if e.level == "city" or (e.level == "province" and e.name not in provinces_with_cities)
    }  # fmt: skip
    assert seated == expected
