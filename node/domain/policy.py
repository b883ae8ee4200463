"""Purpose policy: which catalogue items a verification of each assistance purpose may check."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from node.domain import freetext
from node.domain.catalogue import (
    Catalogue,
    load_catalogue,
    read_toml,
    shipped,
)
from node.errors import BadInput

POLICY_FILE: Final[str] = "policy.toml"
_PURPOSE_RE: Final[re.Pattern[str]] = re.compile(r"[a-z][a-z0-9_]{0,31}")
_PURPOSE_KEYS: Final[frozenset[str]] = frozenset({"name_zh", "name_en", "items"})


class UnknownPurpose(BadInput):
    """A purpose code is not defined by the policy."""


class PolicyError(BadInput):
    """The policy file is missing or malformed, or names items the catalogue lacks (CLI exit 2)."""


@dataclass(frozen=True, slots=True)
class Purpose:
    """One assistance purpose and the items it may check."""

    code: str
    name_zh: str
    name_en: str
    entries: tuple[str, ...]
    """The entries as written in the policy file: item codes and `category.*` patterns."""
    items: frozenset[str]
    """The entries expanded against the catalogue: every item code the purpose may check."""


@dataclass(frozen=True, slots=True)
class Policy:
    """The loaded policy: purpose code -> Purpose, in file order."""

    purposes: Mapping[str, Purpose]

    def purpose(self, code: str) -> Purpose:
        """The purpose with this code, or UnknownPurpose."""
        try:
            return self.purposes[code]
        except (KeyError, TypeError):
            raise UnknownPurpose(f"unknown purpose {_show(code)}") from None

    def allows(self, purpose: str, item_code: str) -> bool:
        """True when `purpose` may check `item_code`; UnknownPurpose for an unknown purpose."""
        return item_code in self.purpose(purpose).items

    def items_for(self, purpose: str) -> frozenset[str]:
        """Every item code `purpose` may check."""
        return self.purpose(purpose).items


def load_policy(path: Path | None = None, catalogue: Catalogue | None = None) -> Policy:
    """Load a policy file (default: the purpose policy shipped in the package), validating every
    entry against the catalogue."""
    source = path or shipped(POLICY_FILE)
    catalogue = catalogue if catalogue is not None else load_catalogue()
    doc = read_toml(source, "policy", PolicyError)
    unknown = set(doc) - {"purpose"}
    if unknown:
        raise PolicyError(f"{source}: unknown top-level keys {sorted(unknown)}")
    table = doc.get("purpose")
    if not isinstance(table, dict) or not table:
        raise PolicyError(f"{source}: no [purpose.<code>] tables")
    purposes = {code: _purpose(source, code, body, catalogue) for code, body in table.items()}
    return Policy(MappingProxyType(purposes))


def _purpose(path: Path | Traversable, code: str, body: Any, catalogue: Catalogue) -> Purpose:
    where = f"{path}: purpose {code!r}"
    if _PURPOSE_RE.fullmatch(code) is None:
        raise PolicyError(f"{where}: code must be lower-case letters, digits and _")
    if not isinstance(body, dict):
        raise PolicyError(f"{where} is not a table")
    missing = _PURPOSE_KEYS - set(body)
    if missing:
        raise PolicyError(f"{where} lacks {sorted(missing)}")
    extra = set(body) - _PURPOSE_KEYS
    if extra:
        raise PolicyError(f"{where} has unknown keys {sorted(extra)}")
    for key in ("name_zh", "name_en"):
        if not isinstance(body[key], str) or not body[key].strip():
            raise PolicyError(f"{where}: {key} must be a non-empty string")
    entries = body["items"]
    if not isinstance(entries, list) or not entries:
        raise PolicyError(f"{where}: items must be a non-empty list")
    items: set[str] = set()
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, str):
            raise PolicyError(f"{where}: every item must be a string")
        if entry in seen:
            raise PolicyError(f"{where}: {entry!r} is listed twice")
        seen.add(entry)
        if entry.endswith(".*"):
            members = catalogue.in_category(entry[:-2])
            if not members:
                raise PolicyError(f"{where}: {entry!r} names no catalogue category")
            items.update(item.code for item in members)
        elif entry in catalogue:
            items.add(entry)
        else:
            raise PolicyError(f"{where}: {entry!r} is not a catalogue item")
    return Purpose(code, body["name_zh"], body["name_en"], tuple(entries), frozenset(items))


def _show(code: object) -> str:
    """A one-line, bounded rendering of a user-supplied code, ID-number-like runs masked."""
    return freetext.show(code, 70)
