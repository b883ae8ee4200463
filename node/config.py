"""Node and coordinator configuration: one TOML file per server, paths relative to it."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from node.errors import BadInput


class ConfigError(BadInput):
    """The configuration file is missing, unreadable or incomplete."""


@dataclass(frozen=True)
class Limits:
    """Bounds every server and client enforces."""

    max_message_bytes: int = 4 * 1024 * 1024
    max_subjects: int = 16
    max_checks: int = 32
    clock_skew_s: int = 300
    default_deadline_s: float = 10.0
    rate_per_peer_per_s: float = 5000.0
    rate_burst: int = 10000
    max_concurrent_rpcs: int = 512  # calls one server process handles at once (besides the reserved feeds)
    max_concurrent_per_peer: int = 64  # one caller's share of max_concurrent_rpcs
    reserved_feed_rpcs: int = 64  # capacity only the consent, revocation, directory and checkpoint feeds use
    max_feed_calls_per_peer: int = 8  # one caller's share of reserved_feed_rpcs
    max_province_wait_s: float = 15.0  # the longest the coordinator waits on one province, whatever the caller's deadline


@dataclass(frozen=True)
class MemberConfig:
    """Everything a federation member (province node or coordinator) needs to run."""

    path: Path
    identity: str  # "urn:hedui:province:32" or "urn:hedui:coordinator"
    province: str | None
    listen: str
    data_dir: Path
    ca_cert: Path
    tls_cert: Path
    tls_key: Path
    sign_cert: Path
    sign_key: Path
    seal_key: Path
    seal_pub: Path
    linkage_key: Path | None
    coordinator: str | None = None
    advertise: str | None = None  # host peers reach this member at (default: the listen host)
    catalogue: Path | None = None
    policy: Path | None = None
    log_level: str = "info"
    metrics_listen: str | None = None  # HOST:PORT for Prometheus metrics; None = off
    metrics_tls_cert: Path | None = None  # serve metrics over HTTPS with this certificate...
    metrics_tls_key: Path | None = None  # ...and key
    metrics_tls_client_ca: Path | None = None  # and require scrapers' client certificates from this CA
    metrics_allow_plain_remote: bool = False  # explicit opt-in: plain HTTP on a non-loopback address
    limits: Limits = field(default_factory=Limits)

    @property
    def is_coordinator(self) -> bool:
        return self.province is None


def _resolve(base: Path, value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"config key {key} must be a path")
    p = Path(value)
    return p if p.is_absolute() else (base / p).resolve()


def load(path: Path | str) -> MemberConfig:
    """Read a config file written by `hedui node init` or `hedui coordinator init`."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    base = path.resolve().parent
    try:
        member, keys = raw["member"], raw["keys"]
        opt = lambda k: _resolve(base, keys[k], f"keys.{k}") if keys.get(k) else None  # noqa: E731
        limits = Limits(**raw.get("limits", {}))
        metrics = raw.get("metrics", {})
        metrics_path = lambda k: _resolve(base, metrics[k], f"metrics.{k}") if metrics.get(k) else None  # noqa: E731
        allow_plain_remote = metrics.get("allow_plain_remote", False)
        if not isinstance(allow_plain_remote, bool):
            raise ConfigError(f"config key metrics.allow_plain_remote in {path} must be true or false")
        return MemberConfig(
            path=path.resolve(),
            identity=str(member["identity"]),
            province=member.get("province") or None,
            listen=str(member["listen"]),
            data_dir=_resolve(base, member["data_dir"], "member.data_dir"),
            coordinator=member.get("coordinator") or None,
            advertise=member.get("advertise") or None,
            ca_cert=_resolve(base, keys["ca_cert"], "keys.ca_cert"),
            tls_cert=_resolve(base, keys["tls_cert"], "keys.tls_cert"),
            tls_key=_resolve(base, keys["tls_key"], "keys.tls_key"),
            sign_cert=_resolve(base, keys["sign_cert"], "keys.sign_cert"),
            sign_key=_resolve(base, keys["sign_key"], "keys.sign_key"),
            seal_key=_resolve(base, keys["seal_key"], "keys.seal_key"),
            seal_pub=_resolve(base, keys["seal_pub"], "keys.seal_pub"),
            linkage_key=opt("linkage_key"),
            catalogue=opt("catalogue"),
            policy=opt("policy"),
            log_level=str(raw.get("logging", {}).get("level", "info")),
            metrics_listen=metrics.get("listen") or None,
            metrics_tls_cert=metrics_path("tls_cert"),
            metrics_tls_key=metrics_path("tls_key"),
            metrics_tls_client_ca=metrics_path("tls_client_ca"),
            metrics_allow_plain_remote=allow_plain_remote,
            limits=limits,
        )
    except KeyError as exc:
        raise ConfigError(f"config file {path} lacks key {exc.args[0]}") from None
    except TypeError as exc:
        raise ConfigError(f"config file {path} has an unknown or malformed setting: {exc}") from None


def write(cfg_path: Path, data: dict[str, Any]) -> None:
    """Write a config file (used by the init commands)."""
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(tomli_w.dumps(data), encoding="utf-8")
