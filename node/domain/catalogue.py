"""The national standard catalogue of data items and household measures: codes, units, calibers, value parsing."""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Final

from node import files
from node.domain import freetext
from node.errors import BadInput

CATALOGUE_FILE: Final[str] = "catalogue.toml"

_CODE_RE: Final[re.Pattern[str]] = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
_DECIMAL_RE: Final[re.Pattern[str]] = re.compile(r"0|[1-9][0-9]{0,18}")
_ITEM_KEYS: Final[frozenset[str]] = frozenset(
    {"code", "name_zh", "name_en", "type", "unit", "period", "caliber", "aggregate", "max"}
)
_REQUIRED_KEYS: Final[frozenset[str]] = _ITEM_KEYS - {"max"}
_MEASURE_RE: Final[re.Pattern[str]] = re.compile(r"[a-z][a-z0-9_]{0,47}")
_MEASURE_KEYS: Final[frozenset[str]] = frozenset({"code", "name_zh", "name_en", "unit", "caliber", "items"})


class UnknownItem(BadInput):
    """A data-item code is not in the catalogue."""


class UnknownMeasure(BadInput):
    """A household-measure code is not in the catalogue."""


class CatalogueError(BadInput):
    """The catalogue file is missing or malformed (operator input: CLI exit 2)."""


class ItemType(enum.StrEnum):
    """The value type of a data item; every type is stored as a non-negative integer."""

    MONEY = "money"
    COUNT = "count"
    AREA = "area"
    BOOLEAN = "boolean"
    MONTHS = "months"

    @property
    def unit(self) -> str:
        """The only unit this type may be expressed in."""
        return _UNITS[self]

    @property
    def bound(self) -> int:
        """The largest value the type allows (keeps any sum of a few sources inside int64)."""
        return _BOUNDS[self]


_UNITS: Final[dict[ItemType, str]] = {
    ItemType.MONEY: "fen",
    ItemType.COUNT: "1",
    ItemType.AREA: "0.01 m²",
    ItemType.BOOLEAN: "0/1",
    ItemType.MONTHS: "month",
}
_BOUNDS: Final[dict[ItemType, int]] = {
    ItemType.MONEY: 10**15,  # ten trillion yuan
    ItemType.COUNT: 10**6,
    ItemType.AREA: 10**11,  # one billion m²
    ItemType.BOOLEAN: 1,
    ItemType.MONTHS: 1200,
}
_TYPE_WORDS: Final[dict[ItemType, str]] = {
    ItemType.MONEY: "a non-negative whole number of fen",
    ItemType.COUNT: "a non-negative whole number",
    ItemType.AREA: "a non-negative whole number of 0.01 m²",
    ItemType.BOOLEAN: "0 or 1",
    ItemType.MONTHS: "a non-negative whole number of months",
}


class Aggregate(enum.StrEnum):
    """How facts from several sources on the same as-of date combine."""

    SUM = "sum"
    MAX = "max"


@dataclass(frozen=True, slots=True)
class Item:
    """One data item of the catalogue."""

    code: str
    name_zh: str
    name_en: str
    type: ItemType
    unit: str
    period: str
    caliber: str
    aggregate: Aggregate
    maximum: int

    @property
    def category(self) -> str:
        """The category: the part of the code before the first dot (e.g. `deposit`)."""
        return self.code.split(".", 1)[0]

    def parse_value(self, text: str) -> int:
        """Parse a value written as canonical decimal text; the error never repeats the text."""
        if not isinstance(text, str) or _DECIMAL_RE.fullmatch(text) is None:
            raise BadInput(self._reason(form=True))
        return self.check_value(int(text))

    def check_value(self, value: int) -> int:
        """Check an already-integer value against the type and bound; return it unchanged."""
        if type(value) is not int:
            raise BadInput(self._reason(form=True))
        if not 0 <= value <= self.maximum:
            raise BadInput(self._reason(form=False))
        return value

    def _reason(self, *, form: bool) -> str:
        if self.type is ItemType.BOOLEAN:
            return f"value of {self.code} must be 0 or 1"
        if form:
            return (
                f"value of {self.code} must be {_TYPE_WORDS[self.type]} written as plain digits"
                " (no sign, decimal point, exponent, spaces or leading zeros)"
            )
        return f"value of {self.code} must be {_TYPE_WORDS[self.type]} not above {self.maximum}"


@dataclass(frozen=True, slots=True)
class Measure:
    """A household measure: items of one unit that add into one figure of the means test.

    A member's value of the measure is the sum of the member's (aggregated) values of the
    items; the household's is the sum over its members. `period` is the items' common
    reference period (filled in by the catalogue).
    """

    code: str
    name_zh: str
    name_en: str
    unit: str
    caliber: str
    items: tuple[str, ...]
    period: str = ""

    def value(self, item_values: Mapping[str, int]) -> int:
        """One member's value: the sum of its item values (an item it has no value for counts 0)."""
        return sum(item_values.get(code, 0) for code in self.items)


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The loaded catalogue: an ordered, immutable set of items indexed by code, and the measures."""

    items: tuple[Item, ...]
    version: str = ""
    measures: tuple[Measure, ...] = ()
    _by_code: dict[str, Item] = field(init=False, repr=False, compare=False)
    _measures: dict[str, Measure] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_code: dict[str, Item] = {}
        for item in self.items:
            if item.code in by_code:
                raise CatalogueError(f"duplicate data item code {item.code!r}")
            by_code[item.code] = item
        object.__setattr__(self, "_by_code", by_code)
        measures: dict[str, Measure] = {}
        for measure in self.measures:
            if measure.code in measures:
                raise CatalogueError(f"duplicate measure code {measure.code!r}")
            measures[measure.code] = _checked_measure(measure, by_code)
        object.__setattr__(self, "measures", tuple(measures[c] for c in sorted(measures)))
        object.__setattr__(self, "_measures", measures)

    def measure(self, code: str) -> Measure:
        """The household measure with this code, or UnknownMeasure."""
        try:
            return self._measures[code]
        except (KeyError, TypeError):
            raise UnknownMeasure(f"unknown household measure {_show(code)}") from None

    def get(self, code: str) -> Item:
        """The item with this code, or UnknownItem."""
        try:
            return self._by_code[code]
        except (KeyError, TypeError):
            raise UnknownItem(f"unknown data item {_show(code)}") from None

    def __contains__(self, code: object) -> bool:
        return isinstance(code, str) and code in self._by_code

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def codes(self) -> tuple[str, ...]:
        """All item codes in catalogue order."""
        return tuple(item.code for item in self.items)

    @property
    def categories(self) -> tuple[str, ...]:
        """The distinct categories, in order of first appearance."""
        return tuple(dict.fromkeys(item.category for item in self.items))

    def in_category(self, category: str) -> tuple[Item, ...]:
        """The items of one category (empty when the category is unknown)."""
        return tuple(item for item in self.items if item.category == category)

    def aggregates(self) -> dict[str, str]:
        """code -> "sum" | "max", as the store needs it."""
        return {item.code: item.aggregate.value for item in self.items}


def _checked_measure(measure: Measure, items: Mapping[str, Item]) -> Measure:
    """The measure with its period filled in, once its items exist and share one unit and period."""
    where = f"measure {measure.code!r}"
    if not measure.items or len(set(measure.items)) != len(measure.items):
        raise CatalogueError(f"{where}: items must be a non-empty list without repeats")
    periods = set()
    for code in measure.items:
        item = items.get(code)
        if item is None:
            raise CatalogueError(f"{where}: {code!r} is not a catalogue item")
        if item.unit != measure.unit:
            raise CatalogueError(f"{where}: item {code!r} is in {item.unit!r}, the measure in {measure.unit!r}")
        periods.add(item.period)
    if len(periods) != 1:
        raise CatalogueError(f"{where}: its items must share one reference period")
    (period,) = periods
    if measure.period not in ("", period):
        raise CatalogueError(f"{where}: period must be its items' period {period!r}")
    return Measure(measure.code, measure.name_zh, measure.name_en, measure.unit, measure.caliber, measure.items, period)


def shipped(name: str) -> Traversable:
    """A config file shipped inside the package (`node/data/`, which is `config/` of the repository)."""
    return resources.files("node").joinpath("data", name)


def load_catalogue(path: Path | None = None) -> Catalogue:
    """Load and validate a catalogue file (default: the national catalogue shipped in the package)."""
    source = path or shipped(CATALOGUE_FILE)
    doc = read_toml(source, "catalogue", CatalogueError)
    unknown = set(doc) - {"version", "item", "measure"}
    if unknown:
        raise CatalogueError(f"{source}: unknown top-level keys {sorted(unknown)}")
    version = doc.get("version", "")
    if not isinstance(version, str):
        raise CatalogueError(f"{source}: version must be a string")
    entries = doc.get("item")
    if not isinstance(entries, list) or not entries:
        raise CatalogueError(f"{source}: no [[item]] entries")
    items = tuple(_item(source, n, entry) for n, entry in enumerate(entries, 1))
    raw_measures = doc.get("measure", [])
    if not isinstance(raw_measures, list):
        raise CatalogueError(f"{source}: measure must be [[measure]] entries")
    measures = tuple(_measure(source, n, entry) for n, entry in enumerate(raw_measures, 1))
    try:
        return Catalogue(items, version, measures)
    except CatalogueError as exc:
        raise CatalogueError(f"{source}: {exc}") from None


def read_toml(path: Path | Traversable, what: str, error: type[BadInput] = CatalogueError) -> dict[str, Any]:
    """Read a TOML config file, turning every failure into `error` naming the file."""
    try:
        with path.open("rb") as fh:
            return files.parse_toml(fh.read().decode("utf-8"))
    except FileNotFoundError:
        raise error(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{what} file {path} is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} file {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} file {path} is not valid TOML: {exc}") from None


def _item(path: Path | Traversable, n: int, entry: Any) -> Item:
    where = f"{path}: item #{n}"
    if not isinstance(entry, dict):
        raise CatalogueError(f"{where} is not a table")
    missing = _REQUIRED_KEYS - set(entry)
    if missing:
        raise CatalogueError(f"{where} lacks {sorted(missing)}")
    extra = set(entry) - _ITEM_KEYS
    if extra:
        raise CatalogueError(f"{where} has unknown keys {sorted(extra)}")
    for key in _REQUIRED_KEYS:
        if not isinstance(entry[key], str) or not entry[key].strip():
            raise CatalogueError(f"{where}: {key} must be a non-empty string")
    code = entry["code"]
    where = f"{path}: item {code!r}"
    if _CODE_RE.fullmatch(code) is None:
        raise CatalogueError(f"{where}: code must look like category.name (lower case)")
    try:
        item_type = ItemType(entry["type"])
    except ValueError:
        raise CatalogueError(
            f"{where}: unknown type {entry['type']!r} (one of {[t.value for t in ItemType]})"
        ) from None
    try:
        aggregate = Aggregate(entry["aggregate"])
    except ValueError:
        raise CatalogueError(f"{where}: aggregate must be 'sum' or 'max'") from None
    if entry["unit"] != item_type.unit:
        raise CatalogueError(f"{where}: unit of a {item_type} item must be {item_type.unit!r}")
    if item_type is ItemType.BOOLEAN and aggregate is not Aggregate.MAX:
        raise CatalogueError(f"{where}: a boolean item must aggregate by 'max'")
    maximum = entry.get("max", item_type.bound)
    if type(maximum) is not int or not 0 < maximum <= item_type.bound:
        raise CatalogueError(f"{where}: max must be an integer in 1..{item_type.bound}")
    return Item(
        code=code,
        name_zh=entry["name_zh"],
        name_en=entry["name_en"],
        type=item_type,
        unit=entry["unit"],
        period=entry["period"],
        caliber=entry["caliber"],
        aggregate=aggregate,
        maximum=maximum,
    )


def _measure(path: Path | Traversable, n: int, entry: Any) -> Measure:
    where = f"{path}: measure #{n}"
    if not isinstance(entry, dict):
        raise CatalogueError(f"{where} is not a table")
    missing = _MEASURE_KEYS - set(entry)
    if missing:
        raise CatalogueError(f"{where} lacks {sorted(missing)}")
    extra = set(entry) - _MEASURE_KEYS
    if extra:
        raise CatalogueError(f"{where} has unknown keys {sorted(extra)}")
    for key in _MEASURE_KEYS - {"items"}:
        if not isinstance(entry[key], str) or not entry[key].strip():
            raise CatalogueError(f"{where}: {key} must be a non-empty string")
    code = entry["code"]
    if _MEASURE_RE.fullmatch(code) is None:
        raise CatalogueError(f"{where}: code {_show(code)} must be lower-case letters, digits and _ (no dot)")
    items = entry["items"]
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise CatalogueError(f"{path}: measure {code!r}: items must be a list of item codes")
    return Measure(code, entry["name_zh"], entry["name_en"], entry["unit"], entry["caliber"], tuple(items))


def _show(code: object) -> str:
    """A one-line, bounded rendering of a user-supplied code, ID-number-like runs masked."""
    return freetext.show(code, 70)
