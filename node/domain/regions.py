"""Province-level administrative division codes (GB/T 2260): the 31 provinces of the federation."""

from __future__ import annotations

from typing import Final

#: code -> (Chinese name, English name)
PROVINCES: Final[dict[str, tuple[str, str]]] = {
    "11": ("北京市", "Beijing"),
    "12": ("天津市", "Tianjin"),
    "13": ("河北省", "Hebei"),
    "14": ("山西省", "Shanxi"),
    "15": ("内蒙古自治区", "Inner Mongolia"),
    "21": ("辽宁省", "Liaoning"),
    "22": ("吉林省", "Jilin"),
    "23": ("黑龙江省", "Heilongjiang"),
    "31": ("上海市", "Shanghai"),
    "32": ("江苏省", "Jiangsu"),
    "33": ("浙江省", "Zhejiang"),
    "34": ("安徽省", "Anhui"),
    "35": ("福建省", "Fujian"),
    "36": ("江西省", "Jiangxi"),
    "37": ("山东省", "Shandong"),
    "41": ("河南省", "Henan"),
    "42": ("湖北省", "Hubei"),
    "43": ("湖南省", "Hunan"),
    "44": ("广东省", "Guangdong"),
    "45": ("广西壮族自治区", "Guangxi"),
    "46": ("海南省", "Hainan"),
    "50": ("重庆市", "Chongqing"),
    "51": ("四川省", "Sichuan"),
    "52": ("贵州省", "Guizhou"),
    "53": ("云南省", "Yunnan"),
    "54": ("西藏自治区", "Tibet"),
    "61": ("陕西省", "Shaanxi"),
    "62": ("甘肃省", "Gansu"),
    "63": ("青海省", "Qinghai"),
    "64": ("宁夏回族自治区", "Ningxia"),
    "65": ("新疆维吾尔自治区", "Xinjiang"),
}

PROVINCE_CODES: Final[tuple[str, ...]] = tuple(PROVINCES)


def is_province(code: str) -> bool:
    """True when `code` is one of the 31 two-digit province codes."""
    return code in PROVINCES


def province_name(code: str) -> str:
    """English name of a province code, or the code itself when unknown."""
    return PROVINCES.get(code, (code, code))[1]


def province_uri(code: str) -> str:
    """The federation identity of a province, as carried in certificate SANs."""
    return f"urn:hedui:province:{code}"


COORDINATOR_URI: Final[str] = "urn:hedui:coordinator"

TLS_NAME_SUFFIX: Final[str] = ".hedui.internal"
"""Federation-internal DNS names in TLS certificates end so: never resolved, only verified (docs/PROTOCOL.md §2)."""

COORDINATOR_TLS_NAME: Final[str] = "coordinator" + TLS_NAME_SUFFIX


def province_tls_name(code: str) -> str:
    """The DNS name every TLS certificate of a province carries, and that clients require of its server."""
    return f"province-{code}{TLS_NAME_SUFFIX}"
