"""Published assistance standards (低保标准 and the rules beside it) and the household means test they decide.

A province publishes one standards document: per region (GB/T 2260 code), purpose and period,
the monthly standard per person, which household measures count as income, which are
deducted, the asset limits, and which rules decide eligibility. The operator writes it in TOML
(format: the comment header of the files in config/standards/, and docs/PROTOCOL.md); the
signed form is its canonical JSON (`canonical_bytes`). `evaluate` applies one standard to a
household's measure totals with exact integer arithmetic.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from node import files
from node.domain.catalogue import Catalogue, UnknownMeasure
from node.domain.policy import Policy, UnknownPurpose
from node.domain.regions import is_province
from node.errors import BadInput

#: Rule names, in the order decisions list them.
RULES: Final[tuple[str, ...]] = ("income", "financial_assets", "vehicles", "homes", "floor_area", "businesses")
ELIGIBLE, NOT_ELIGIBLE, INCOMPLETE = "ELIGIBLE", "NOT_ELIGIBLE", "INCOMPLETE"
ALLOWANCES: Final[tuple[str, ...]] = ("gap", "none")
MAX_DOCUMENT_BYTES: Final[int] = 96 * 1024  # 31 provinces' documents fit in one directory message
MAX_ENTRIES: Final[int] = 512
MAX_TEXT: Final[int] = 600
MAX_FEN: Final[int] = 10**15
MAX_STANDARD: Final[int] = 10**9  # ten million yuan a person a month
MAX_COUNT: Final[int] = 10**6
MAX_AREA: Final[int] = 10**11
MAX_MONTHS: Final[int] = 1200

#: The catalogue measure each asset rule reads, and the unit that measure must have.
RULE_MEASURES: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "financial_assets": (("financial_assets", "fen"),),
    "vehicles": (("vehicle_count", "1"), ("vehicle_value", "fen")),
    "homes": (("homes", "1"),),
    "floor_area": (("floor_area", "0.01 m²"),),
    "businesses": (("businesses", "1"),),
}
#: The reference periods (catalogue item `period`) each income list accepts.
_MONTHLY: Final[frozenset[str]] = frozenset({"calendar month ending at as-of"})
_YEARLY: Final[frozenset[str]] = frozenset({"12 months to as-of", "calendar year before as-of"})
_TWELVE_MONTHS: Final[frozenset[str]] = frozenset({"12 months to as-of"})
_MEASURE_LISTS: Final[dict[str, frozenset[str]]] = {
    "income_monthly": _MONTHLY, "income_annual": _YEARLY, "deductions_12m": _TWELVE_MONTHS,
}

_DOC_KEYS: Final[frozenset[str]] = frozenset({"province", "version", "example", "standard"})
_ENTRY_KEYS: Final[frozenset[str]] = frozenset({
    "region", "name_zh", "name_en", "purpose", "period_from", "period_to", "standard_per_person",
    "income_monthly", "income_annual", "deductions_12m", "rules", "allowance", "source", "notes", *RULES[1:],
})  # fmt: skip
_ENTRY_REQUIRED: Final[frozenset[str]] = frozenset({
    "region", "name_zh", "name_en", "purpose", "period_from", "standard_per_person", "rules", "source",
})  # fmt: skip
_REGION_RE: Final = re.compile(r"[1-9][0-9]{5}")
_PERIOD_RE: Final = re.compile(r"(19[0-9]{2}|20[0-9]{2}|2100)-(0[1-9]|1[0-2])")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
_CODE_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,47}")


class StandardsError(BadInput):
    """A standards document is malformed or does not fit the catalogue and policy (CLI exit 2)."""


@dataclass(frozen=True, slots=True)
class FinancialAssetsLimit:
    """Financial assets per person: at most `per_person` fen, or `months_of_standard` times the standard."""

    per_person: int | None
    months_of_standard: int | None
    source: str

    def limit_per_person(self, standard_per_person: int) -> int:
        """The limit per person in fen."""
        if self.per_person is not None:
            return self.per_person
        assert self.months_of_standard is not None
        return self.months_of_standard * standard_per_person


@dataclass(frozen=True, slots=True)
class VehiclesLimit:
    """At most `count_max` vehicles; or any number whose assessed value is at most `value_max` fen."""

    count_max: int
    value_max: int | None
    source: str


@dataclass(frozen=True, slots=True)
class HomesLimit:
    """At most `max` homes; or at most `exception_max` when the floor area per person is at most
    `exception_area_per_person_max` (0.01 m²)."""

    max: int
    exception_max: int | None
    exception_area_per_person_max: int | None
    source: str


@dataclass(frozen=True, slots=True)
class FloorAreaLimit:
    """Floor area at most `per_person_max` (0.01 m²) per person."""

    per_person_max: int
    source: str


@dataclass(frozen=True, slots=True)
class BusinessesLimit:
    """At most `max` registered business entities."""

    max: int
    source: str


@dataclass(frozen=True, slots=True)
class Standard:
    """One published standard: a region, purpose and period, its figures and deciding rules."""

    region: str
    name_zh: str
    name_en: str
    purpose: str
    period_from: str
    period_to: str | None
    standard_per_person: int
    income_monthly: tuple[str, ...]
    income_annual: tuple[str, ...]
    deductions_12m: tuple[str, ...]
    rules: tuple[str, ...]
    allowance: str
    source: str
    notes: str = ""
    financial_assets: FinancialAssetsLimit | None = None
    vehicles: VehiclesLimit | None = None
    homes: HomesLimit | None = None
    floor_area: FloorAreaLimit | None = None
    businesses: BusinessesLimit | None = None
    publisher: str = ""
    version: int = 0
    example: bool = False
    _measures: tuple[str, ...] = field(init=False, repr=False, compare=False)  # `measures`, computed once

    def __post_init__(self) -> None:
        codes = set(self.income_monthly) | set(self.income_annual) | set(self.deductions_12m)
        for rule in self.rules:
            codes.update(code for code, _ in RULE_MEASURES.get(rule, ()))
        if self.homes is not None and self.homes.exception_max is not None:
            codes.add("floor_area")
        object.__setattr__(self, "_measures", tuple(sorted(codes)))

    def covers(self, period: str) -> bool:
        """True when `period` ("YYYY-MM") lies in [period_from, period_to]."""
        return self.period_from <= period and (self.period_to is None or period <= self.period_to)

    @property
    def measures(self) -> tuple[str, ...]:
        """Every measure code this standard reads (what a household's totals must hold), sorted."""
        return self._measures

    def to_json(self) -> dict[str, Any]:
        """The entry as it appears in the canonical document (optional parts left out when absent)."""
        out: dict[str, Any] = {
            "region": self.region, "name_zh": self.name_zh, "name_en": self.name_en, "purpose": self.purpose,
            "period_from": self.period_from, "standard_per_person": self.standard_per_person,
            "income_monthly": list(self.income_monthly), "income_annual": list(self.income_annual),
            "deductions_12m": list(self.deductions_12m), "rules": list(self.rules), "allowance": self.allowance,
            "source": self.source,
        }  # fmt: skip
        if self.period_to is not None:
            out["period_to"] = self.period_to
        if self.notes:
            out["notes"] = self.notes
        for rule in RULES[1:]:
            limit = getattr(self, rule)
            if limit is not None:
                out[rule] = {k: getattr(limit, k) for k in limit.__slots__ if getattr(limit, k) is not None}
        return out


@dataclass(frozen=True, slots=True)
class StandardsDocument:
    """A province's standards document: publisher, increasing version, entries."""

    province: str
    version: int
    example: bool
    standards: tuple[Standard, ...]
    _index: dict[tuple[str, str], tuple[Standard, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[tuple[str, str], list[Standard]] = {}
        for standard in self.standards:
            index.setdefault((standard.region, standard.purpose), []).append(standard)
        object.__setattr__(self, "_index", {k: tuple(v) for k, v in index.items()})

    def find(self, region: str, purpose: str, period: str) -> Standard | None:
        """The standard in force for `region`, `purpose` and `period`: the region's own entry, else
        its city's (`xxxx00`), else its province's (`xx0000`); None when none is in force."""
        for code in fallback_regions(region):
            for standard in self._index.get((code, purpose), ()):
                if standard.covers(period):
                    return standard
        return None

    def in_force(self, period: str) -> tuple[Standard, ...]:
        """The entries whose period covers `period`, in document order."""
        return tuple(s for s in self.standards if s.covers(period))


def fallback_regions(region: str) -> tuple[str, ...]:
    """`region`, then its city and province codes (each once): 510181 -> 510181, 510100, 510000."""
    if not isinstance(region, str) or _REGION_RE.fullmatch(region) is None:
        raise BadInput("region must be a 6-digit GB/T 2260 code")
    return tuple(dict.fromkeys((region, region[:4] + "00", region[:2] + "0000")))


def check_period(period: str) -> str:
    """`period` if it is "YYYY-MM"; else BadInput."""
    if not isinstance(period, str) or _PERIOD_RE.fullmatch(period) is None:
        raise BadInput("period must be YYYY-MM")
    return period


# -- the household means test ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one standard applied to one household's totals."""

    verdict: str
    members: int
    region: str
    period: str
    purpose: str
    standard_per_person: int
    income_per_person: int
    allowance: int
    rules: dict[str, bool]
    totals: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        """The stable JSON keys of `household check --json` that the decision supplies."""
        return {
            "verdict": self.verdict, "members": self.members, "region": self.region, "period": self.period,
            "purpose": self.purpose, "standard_per_person": self.standard_per_person,
            "income_per_person": self.income_per_person, "allowance": self.allowance,
            "totals": dict(self.totals), "rules": dict(self.rules),
        }  # fmt: skip


def evaluate(standard: Standard, members: int, totals: Mapping[str, int], *, complete: bool,
             region: str | None = None, period: str | None = None) -> Decision:
    """Decide a household of `members` whose measure totals are `totals` (measure -> fen, count or 0.01 m²).

    Income per person = max(0, floor((12·Σmonthly + Σannual − Σdeductions_12m) / (12·members)));
    every rule of `standard.rules` is computed; the verdict is INCOMPLETE when `complete` is
    False (some holder did not answer), else ELIGIBLE when every rule holds. `region` and
    `period` (default: the standard's own) name the household's, and must fall under it.
    """
    if type(members) is not int or members < 1:
        raise BadInput("a household has at least one member")
    if not isinstance(totals, Mapping):  # e.g. a decision record's "totals" that is not a JSON object (found by fuzzing)
        raise BadInput("household totals must map each measure to its total")
    region = standard.region if region is None else region
    if standard.region not in fallback_regions(region):
        raise BadInput(f"standard of region {standard.region} does not apply to region {region}")
    period = standard.period_from if period is None else check_period(period)
    if not standard.covers(period):
        raise BadInput(f"standard of region {standard.region} is not in force in {period}")
    values = {code: _total(totals, code) for code in standard.measures}
    income = 12 * sum(values[c] for c in standard.income_monthly) + sum(values[c] for c in standard.income_annual)
    income -= sum(values[c] for c in standard.deductions_12m)
    income_per_person = max(0, income // (12 * members))
    outcome = {rule: _rule(standard, rule, members, values, income_per_person) for rule in RULES if rule in standard.rules}
    if not complete:
        verdict = INCOMPLETE
    else:
        verdict = ELIGIBLE if all(outcome.values()) else NOT_ELIGIBLE
    allowance = 0
    if verdict == ELIGIBLE and standard.allowance == "gap":
        allowance = max(0, standard.standard_per_person - income_per_person) * members
    shown = {code: _total(totals, code) for code in sorted(totals)}
    return Decision(verdict, members, region, period, standard.purpose, standard.standard_per_person,
                    income_per_person, allowance, outcome, shown)


def _total(totals: Mapping[str, int], code: str) -> int:
    value = totals.get(code) if isinstance(code, str) else None
    if value is None:
        raise BadInput(f"household totals lack measure {code!r}")
    if type(value) is not int or value < 0:
        raise BadInput(f"household total of {code!r} must be a non-negative integer")
    return value


def _rule(standard: Standard, rule: str, members: int, values: Mapping[str, int], income_per_person: int) -> bool:
    if rule == "income":
        return income_per_person < standard.standard_per_person
    if rule == "financial_assets":
        assert standard.financial_assets is not None
        limit = standard.financial_assets.limit_per_person(standard.standard_per_person)
        return values["financial_assets"] <= members * limit
    if rule == "vehicles":
        assert standard.vehicles is not None
        count, value_max = values["vehicle_count"], standard.vehicles.value_max
        return count <= standard.vehicles.count_max or (
            value_max is not None and count > 0 and values["vehicle_value"] <= value_max)
    if rule == "homes":
        homes = standard.homes
        assert homes is not None
        if values["homes"] <= homes.max:
            return True
        return (homes.exception_max is not None and homes.exception_area_per_person_max is not None
                and values["homes"] <= homes.exception_max
                and values["floor_area"] <= members * homes.exception_area_per_person_max)
    if rule == "floor_area":
        assert standard.floor_area is not None
        return values["floor_area"] <= members * standard.floor_area.per_person_max
    assert rule == "businesses" and standard.businesses is not None
    return values["businesses"] <= standard.businesses.max


# -- reading and writing documents -------------------------------------------------------------


def load_standards(path: Path, catalogue: Catalogue, policy: Policy) -> StandardsDocument:
    """Read and validate a standards TOML file; StandardsError names the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StandardsError(f"standards file not found: {path}") from None
    except OSError as exc:
        raise StandardsError(f"cannot read standards file {path}: {exc.strerror}") from None
    return parse_standards(data, catalogue, policy, source=str(path))


def parse_standards(text: str | bytes, catalogue: Catalogue, policy: Policy, *, source: str = "standards") -> StandardsDocument:
    """Parse and validate the TOML an operator writes; one-line StandardsError naming the entry."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise StandardsError(f"{source}: not UTF-8 text") from None
    try:
        raw = files.parse_toml(text)
    except tomllib.TOMLDecodeError as exc:
        raise StandardsError(f"{source}: not valid TOML: {exc}") from None
    doc = _document(raw, catalogue, policy, source)
    if len(canonical_bytes(doc)) > MAX_DOCUMENT_BYTES:
        raise StandardsError(f"{source}: the signed form exceeds {MAX_DOCUMENT_BYTES} bytes; split regions over fewer entries")
    return doc


def canonical_bytes(doc: StandardsDocument) -> bytes:
    """The signed form: JSON, keys sorted, no whitespace, UTF-8 (see docs/PROTOCOL.md)."""
    body = {"province": doc.province, "version": doc.version, "example": doc.example,
            "standard": [s.to_json() for s in doc.standards]}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def from_canonical(data: bytes, catalogue: Catalogue | None = None, policy: Policy | None = None) -> StandardsDocument:
    """Read a signed form back; StandardsError unless it is valid and canonical. Measures and
    purposes are checked against `catalogue` and `policy` when given."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise StandardsError(f"standards document exceeds {MAX_DOCUMENT_BYTES} bytes")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise StandardsError("standards document is not JSON") from None
    doc = _document(raw, catalogue, policy, "standards document")
    if canonical_bytes(doc) != data:
        raise StandardsError("standards document is not in canonical form")
    return doc


def _document(raw: Any, catalogue: Catalogue | None, policy: Policy | None, source: str) -> StandardsDocument:
    if not isinstance(raw, dict):
        raise StandardsError(f"{source}: not a table")
    _keys(raw, _DOC_KEYS, {"province", "version", "standard"}, source)
    province = raw["province"]
    if not isinstance(province, str) or not is_province(province):
        raise StandardsError(f"{source}: province must be a two-digit province code such as \"51\"")
    version = raw["version"]
    if type(version) is not int or not 1 <= version < 2**53:
        raise StandardsError(f"{source}: version must be a positive integer")
    example = raw.get("example", False)
    if type(example) is not bool:
        raise StandardsError(f"{source}: example must be true or false")
    entries = raw["standard"]
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_ENTRIES:
        raise StandardsError(f"{source}: 1 to {MAX_ENTRIES} [[standard]] entries")
    standards = tuple(_entry(e, n, province, version, example, catalogue, policy, source) for n, e in enumerate(entries, 1))
    _no_overlaps(standards, source)
    return StandardsDocument(province, version, example, standards)


def _entry(raw: Any, n: int, province: str, version: int, example: bool, catalogue: Catalogue | None,
           policy: Policy | None, source: str) -> Standard:
    where = f"{source}: standard #{n}"
    if not isinstance(raw, dict):
        raise StandardsError(f"{where} is not a table")
    region = raw.get("region")
    if isinstance(region, str) and _REGION_RE.fullmatch(region):
        purpose = raw.get("purpose")
        shown = f", {purpose}" if isinstance(purpose, str) and _CODE_RE.fullmatch(purpose) else ""
        where = f"{where} (region {region}{shown})"
    _keys(raw, _ENTRY_KEYS, _ENTRY_REQUIRED, where)
    if not isinstance(region, str) or _REGION_RE.fullmatch(region) is None:
        raise StandardsError(f"{where}: region must be a 6-digit GB/T 2260 code")
    if region[:2] != province:
        raise StandardsError(f"{where}: region {region} is not in the publisher's province {province}")
    texts = {k: _text(raw, k, where) for k in ("name_zh", "name_en", "source")}
    notes = _text(raw, "notes", where, required=False)
    purpose = _text(raw, "purpose", where)
    if policy is not None:
        try:
            policy.purpose(purpose)
        except UnknownPurpose as exc:
            raise StandardsError(f"{where}: {exc}") from None
    period_from = _period(raw, "period_from", where)
    period_to = _period(raw, "period_to", where) if "period_to" in raw else None
    if period_to is not None and period_to < period_from:
        raise StandardsError(f"{where}: period_to is before period_from")
    standard = _int(raw, "standard_per_person", where, 1, MAX_STANDARD)
    lists = {key: _measures(raw, key, where, catalogue) for key in _MEASURE_LISTS}
    named = [code for codes in lists.values() for code in codes]
    if len(named) != len(set(named)):
        raise StandardsError(f"{where}: a measure appears twice among income_monthly, income_annual and deductions_12m")
    rules = _rules(raw, where)
    if "income" in rules and not (lists["income_monthly"] or lists["income_annual"]):
        raise StandardsError(f"{where}: rule income needs income_monthly or income_annual measures")
    if lists["deductions_12m"] and not (lists["income_monthly"] or lists["income_annual"]):
        raise StandardsError(f"{where}: deductions_12m without income measures")
    allowance = raw.get("allowance", "gap")
    if allowance not in ALLOWANCES:
        raise StandardsError(f"{where}: allowance must be \"gap\" (差额救助) or \"none\"")
    limits = {rule: _limit(raw, rule, where) for rule in RULES[1:]}
    for rule in RULES[1:]:
        if (limits[rule] is None) == (rule in rules):
            raise StandardsError(f"{where}: [standard.{rule}] must be given exactly when rule {rule} is listed")
        if rule in rules and catalogue is not None:
            for code, unit in RULE_MEASURES[rule]:
                _measure(catalogue, code, unit, None, f"{where}: rule {rule}")
    homes = limits["homes"]
    if isinstance(homes, HomesLimit) and homes.exception_max is not None and catalogue is not None:
        _measure(catalogue, "floor_area", "0.01 m²", None, f"{where}: homes exception")
    standard_entry = Standard(
        region=region, purpose=purpose, period_from=period_from, period_to=period_to, standard_per_person=standard,
        income_monthly=lists["income_monthly"], income_annual=lists["income_annual"],
        deductions_12m=lists["deductions_12m"], rules=rules, allowance=allowance, notes=notes,
        publisher=province, version=version, example=example, **texts, **limits,  # type: ignore[arg-type]
    )  # fmt: skip
    if catalogue is not None and policy is not None:
        _purpose_allows(standard_entry, catalogue, policy, where)
    return standard_entry


def _purpose_allows(standard: Standard, catalogue: Catalogue, policy: Policy, where: str) -> None:
    """Every item the standard's measures add must be one its purpose may check (the holders enforce that)."""
    allowed = policy.items_for(standard.purpose)
    for code in standard.measures:
        barred = [item for item in catalogue.measure(code).items if item not in allowed]
        if barred:
            raise StandardsError(f"{where}: purpose {standard.purpose} may not check {barred[0]}, an item of measure {code!r}")


def _limit(raw: Mapping[str, Any], rule: str, where: str) -> Any:
    if rule not in raw:
        return None
    body, where = raw[rule], f"{where}: [standard.{rule}]"
    if not isinstance(body, dict):
        raise StandardsError(f"{where} is not a table")
    source = _text(body, "source", where)
    if rule == "financial_assets":
        _keys(body, {"per_person", "months_of_standard", "source"}, {"source"}, where)
        if ("per_person" in body) == ("months_of_standard" in body):
            raise StandardsError(f"{where}: give exactly one of per_person (fen) and months_of_standard")
        return FinancialAssetsLimit(_int(body, "per_person", where, 0, MAX_FEN, required=False),
                                    _int(body, "months_of_standard", where, 1, MAX_MONTHS, required=False), source)
    if rule == "vehicles":
        _keys(body, {"count_max", "value_max", "source"}, {"count_max", "source"}, where)
        return VehiclesLimit(_int(body, "count_max", where, 0, MAX_COUNT),
                             _int(body, "value_max", where, 0, MAX_FEN, required=False), source)
    if rule == "homes":
        keys = {"max", "exception_max", "exception_area_per_person_max", "source"}
        _keys(body, keys, {"max", "source"}, where)
        if ("exception_max" in body) != ("exception_area_per_person_max" in body):
            raise StandardsError(f"{where}: exception_max and exception_area_per_person_max go together")
        limit = HomesLimit(_int(body, "max", where, 0, MAX_COUNT), _int(body, "exception_max", where, 1, MAX_COUNT, required=False),
                           _int(body, "exception_area_per_person_max", where, 0, MAX_AREA, required=False), source)
        if limit.exception_max is not None and limit.exception_max <= limit.max:
            raise StandardsError(f"{where}: exception_max must be above max")
        return limit
    if rule == "floor_area":
        _keys(body, {"per_person_max", "source"}, {"per_person_max", "source"}, where)
        return FloorAreaLimit(_int(body, "per_person_max", where, 0, MAX_AREA), source)
    _keys(body, {"max", "source"}, {"max", "source"}, where)
    return BusinessesLimit(_int(body, "max", where, 0, MAX_COUNT), source)


def _rules(raw: Mapping[str, Any], where: str) -> tuple[str, ...]:
    rules = raw["rules"]
    if not isinstance(rules, list) or not rules or not all(isinstance(r, str) for r in rules):
        raise StandardsError(f"{where}: rules must be a non-empty list of rule names")
    for rule in rules:
        if rule not in RULES:
            raise StandardsError(f"{where}: unknown rule {_show(rule)} (one of {', '.join(RULES)})")
    if len(set(rules)) != len(rules):
        raise StandardsError(f"{where}: a rule is listed twice")
    return tuple(r for r in RULES if r in rules)


def _measures(raw: Mapping[str, Any], key: str, where: str, catalogue: Catalogue | None) -> tuple[str, ...]:
    codes = raw.get(key, [])
    if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
        raise StandardsError(f"{where}: {key} must be a list of measure codes")
    for code in codes:
        if _CODE_RE.fullmatch(code) is None:
            raise StandardsError(f"{where}: {key}: {_show(code)} is not a measure code")
    if len(set(codes)) != len(codes):
        raise StandardsError(f"{where}: {key} lists a measure twice")
    if catalogue is not None:
        for code in codes:
            _measure(catalogue, code, "fen", _MEASURE_LISTS[key], f"{where}: {key}")
    return tuple(sorted(codes))


def _measure(catalogue: Catalogue, code: str, unit: str, periods: frozenset[str] | None, where: str) -> None:
    try:
        measure = catalogue.measure(code)
    except UnknownMeasure:
        raise StandardsError(f"{where}: {_show(code)} is not a household measure of the catalogue") from None
    if measure.unit != unit:
        raise StandardsError(f"{where}: measure {code!r} is in {measure.unit!r}, not {unit!r}")
    if periods is not None and measure.period not in periods:
        raise StandardsError(f"{where}: measure {code!r} covers {measure.period!r}, not {' or '.join(sorted(periods))!r}")


def _no_overlaps(standards: tuple[Standard, ...], source: str) -> None:
    seen: dict[tuple[str, str], list[tuple[int, Standard]]] = {}
    for n, standard in enumerate(standards, 1):
        for m, other in seen.get((standard.region, standard.purpose), ()):
            if standard.period_from <= (other.period_to or "9999-12") and other.period_from <= (standard.period_to or "9999-12"):
                raise StandardsError(f"{source}: standard #{n} (region {standard.region}, {standard.purpose}) overlaps"
                                     f" standard #{m} in period")
        seen.setdefault((standard.region, standard.purpose), []).append((n, standard))


def _keys(raw: Mapping[str, Any], allowed: frozenset[str] | set[str], required: frozenset[str] | set[str], where: str) -> None:
    unknown = set(raw) - set(allowed)
    if unknown:
        raise StandardsError(f"{where}: unknown keys {sorted(unknown)}")
    missing = set(required) - set(raw)
    if missing:
        raise StandardsError(f"{where} lacks {sorted(missing)}")


def _text(raw: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = raw.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > MAX_TEXT:
        raise StandardsError(f"{where}: {key} must be a{' non-empty' if required else ''} string of at most {MAX_TEXT} characters")
    if _CONTROL_RE.search(value):
        raise StandardsError(f"{where}: {key} must be one line without control characters")
    return value


def _int(raw: Mapping[str, Any], key: str, where: str, low: int, high: int, *, required: bool = True) -> Any:
    if key not in raw and not required:
        return None
    value = raw[key]
    if type(value) is not int or not low <= value <= high:
        raise StandardsError(f"{where}: {key} must be an integer in {low}..{high}")
    return value


def _period(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or _PERIOD_RE.fullmatch(value) is None:
        raise StandardsError(f"{where}: {key} must be a month written \"YYYY-MM\"")
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 70 else text[:67] + "..."
