"""Open the storage a member's config names (`[store] url`), through a registry of backends by URL scheme.

    [store]
    url = "sqlite:"                 # the default (also when [store] is absent): files under data_dir
    url = "sqlite:///srv/hedui"     # SQLite files in another directory
    url = "postgresql://user@host/db"   # node.store.postgres (registered in BACKENDS below)

A backend is a module with `open_url(url, data_dir, *, readonly) -> Storage` (see
node.store.interfaces.Storage). To add one, add one line to `BACKENDS` (scheme -> module
path); the module is imported only when a config names its scheme, so an unused backend's
driver need not be installed. Tests and plug-ins may instead call `register(scheme, opener)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from node.errors import BadInput
from node.store.audit import AuditLog, retention_days
from node.store.interfaces import Storage

#: URL scheme -> the module whose `open_url` opens it.
BACKENDS: Final[dict[str, str]] = {
    "sqlite": "node.store.sqlite.storage",
    "postgresql": "node.store.postgres.storage",
}
DEFAULT_URL: Final[str] = "sqlite:"

Opener = Callable[..., Storage]  # (url, data_dir, *, readonly) -> Storage
_registered: dict[str, Opener] = {}


def register(scheme: str, opener: Opener) -> None:
    """Use `opener(url, data_dir, *, readonly=...)` for URLs of `scheme` (overrides BACKENDS)."""
    _registered[scheme] = opener


def scheme_of(url: str) -> str:
    """The scheme of a store URL ("postgres" is read as "postgresql"); BadInput if it has none."""
    scheme, sep, _ = url.partition(":")
    if not sep or not scheme:
        raise BadInput(f'config key store.url must be a URL such as "{DEFAULT_URL}" (got no scheme)')
    scheme = scheme.lower()
    return "postgresql" if scheme == "postgres" else scheme


def opener(url: str) -> Opener:
    """The opener for `url`'s scheme; BadInput for a scheme no backend serves (or whose driver is missing)."""
    scheme = scheme_of(url)
    if scheme in _registered:
        return _registered[scheme]
    module_name = BACKENDS.get(scheme)
    if module_name is None:
        raise BadInput(f"config key store.url: unknown store scheme {scheme!r} (known: {', '.join(sorted(BACKENDS))})")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInput(f"config key store.url: the {scheme} backend cannot be loaded ({exc.name} is missing)") from None
    result: Opener = module.open_url
    return result


def open_url(url: str, data_dir: Path, *, readonly: bool = False) -> Storage:
    """Open the storage at `url` (`data_dir`: the member's data directory, for backends that keep files there)."""
    try:
        return opener(url)(url, Path(data_dir), readonly=readonly)
    except ValueError as exc:
        raise BadInput(f"config key store.url: {exc}") from None


def open_storage(cfg: Any) -> Storage:
    """The storage `cfg` (a node.config.MemberConfig) names, opened for reading and writing."""
    return open_url(_url(cfg), cfg.data_dir)


def open_storage_readonly(cfg: Any) -> Storage:
    """The storage `cfg` names, read-only (for the verify and export CLIs): nothing is created or changed."""
    return open_url(_url(cfg), cfg.data_dir, readonly=True)


def open_audit_log(storage: Storage, cfg: Any) -> AuditLog:
    """The member's audit log on `storage`, with `[audit] retention_days` of `cfg`'s file."""
    return AuditLog(storage.audit(), retention_days=retention_days(cfg.path))


def _url(cfg: Any) -> str:
    return getattr(cfg, "store_url", None) or DEFAULT_URL
