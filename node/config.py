"""Node and coordinator configuration: one TOML file per server, paths relative to it."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from node import files
from node.crypto.keyfile import NO_SECRET, SecretSource
from node.crypto.token_key import TokenKey
from node.domain import idnumber, regions
from node.domain.freetext import show
from node.errors import BadInput
from node.logs import LEVELS


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
    #: Connections a client keeps to one server (the coordinator to each province, a batch client to its
    #: coordinator), calls in turn: the kernel spreads connections, not calls, over `--workers` (SO_REUSEPORT).
    connections_per_peer: int = 4
    probe_checks_per_consent_item: int = 3  # distinct checks at values other than published standards (node.service.probing)


@dataclass(frozen=True)
class ClaimPolicy:
    """When the coordinator stops routing to a province whose "held" claims are contradicted.

    Per (holder, requester): over the last `window` judged claims (at least `min_sample`), a
    share of contradicted ones of `max_contradiction_rate` or more stops routing that
    requester's queries to the holder, unless the holder's locator false positives on that
    requester's discoveries explain its contradictions (they reach that many with probability
    above `false_positive_alpha`); once `min_requesters` requesters did so, nobody's are.
    """

    min_sample: int = 20
    max_contradiction_rate: float = 0.2
    window: int = 200
    min_requesters: int = 3
    false_positive_alpha: float = 1e-9

    def __post_init__(self) -> None:
        for name in ("min_sample", "window", "min_requesters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"claims.{name} must be a positive integer")
        rate = self.max_contradiction_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1:
            raise ConfigError("claims.max_contradiction_rate must be a number in (0, 1]")
        alpha = self.false_positive_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 1e-100 <= alpha < 1:
            raise ConfigError("claims.false_positive_alpha must be a number in [1e-100, 1)")
        if self.min_sample > self.window:
            raise ConfigError("claims.min_sample must not exceed claims.window")


@dataclass(frozen=True)
class DiscoveryPolicy:
    """The coordinator's discovery epochs and what it accepts as a province's locator ([discovery]).

    `epoch_s` is published in the signed directory (requesters and holders derive discovery
    tokens for the same epoch); `max_subjects` bounds the subject count one province's locator
    may claim (a claim of more is refused, so no province can ask to be sent everyone's queries).
    """

    epoch_s: int = 7 * 24 * 3600
    max_subjects: int = 200_000_000
    #: Per-province bounds ([discovery.max_subjects_of], e.g. "44" = 180_000_000 from census figures):
    #: tighter than `max_subjects`, so a small province cannot claim a large one's population.
    max_subjects_of: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("epoch_s", "max_subjects"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"discovery.{name} must be a positive integer")
        if not isinstance(self.max_subjects_of, dict):
            raise ConfigError("discovery.max_subjects_of must be a table of province code = positive integer")
        for code, value in self.max_subjects_of.items():
            if not regions.is_province(code) or isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError("discovery.max_subjects_of must map two-digit province codes to positive "
                                  f"integers (not {show(str(code))} = {show(str(value))})")

    def subject_limit(self, province: str) -> int:
        """The most subjects a locator of `province` may claim."""
        return self.max_subjects_of.get(province, self.max_subjects)


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
    sign_key: Path | None  # None when the signing key is in a PKCS#11 token ([pkcs11])
    seal_key: Path
    seal_pub: Path
    linkage_key: Path | None
    coordinator: str | None = None  # the first of `coordinators` (what single-endpoint callers dial)
    #: [member] coordinator as a TOML array: the coordinator's replicas, in the order a node dials them.
    coordinators: tuple[str, ...] = ()
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
    claims: ClaimPolicy = field(default_factory=ClaimPolicy)  # coordinator only: [claims]
    key_passphrase: SecretSource = NO_SECRET  # [keys] passphrase_file / passphrase_credential: opens encrypted key files
    token_key: TokenKey | None = None  # [pkcs11]: the signing key lives in a PKCS#11 token
    discovery: DiscoveryPolicy = field(default_factory=DiscoveryPolicy)  # coordinator only: [discovery]
    store_url: str = "sqlite:"  # [store] url: where this member's storage lives (node.store.factory)

    @property
    def is_coordinator(self) -> bool:
        return self.province is None

    @property
    def coordinator_endpoints(self) -> tuple[str, ...]:
        """Every coordinator replica, in order; `coordinator` alone when it was replaced by another endpoint."""
        if self.coordinators[:1] == (self.coordinator,):
            return self.coordinators
        return () if self.coordinator is None else (self.coordinator,)


def _limits(raw: Any) -> Limits:
    """[limits] of a config file: known keys only, each a positive number of its default's type."""
    if not isinstance(raw, dict):
        raise ConfigError("config table [limits] must be a table")
    defaults = {f.name: f.default for f in dataclasses.fields(Limits)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in defaults:
            raise ConfigError(f"config table [limits] has an unknown key {show(key)}; known: {', '.join(defaults)}")
        kind = type(defaults[key])
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind or not (0 < value < math.inf):
            noun = "a positive integer" if kind is int else "a positive number"
            raise ConfigError(f"config key limits.{key} must be {noun}")
        values[key] = value
    return Limits(**values)


def _text(value: Any, key: str) -> str | None:
    """An optional string setting; one holding an ID number is refused (config strings are sent and logged)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"config key {key} must be a string")
    if idnumber.contains_id_number(value):
        raise ConfigError(f"config key {key} must not contain an ID number")
    return value


def _endpoints(value: Any, key: str) -> tuple[str, ...]:
    """A setting naming one endpoint (a string) or several (an array of distinct strings), in order."""
    if isinstance(value, list):
        endpoints = tuple(e for e in (_text(v, key) for v in value) if e)
        if len(endpoints) != len(value) or len(set(endpoints)) != len(endpoints):
            raise ConfigError(f"config key {key} must be a string or an array of distinct non-empty strings")
        return endpoints
    endpoint = _text(value, key)
    return () if endpoint is None else (endpoint,)


def _resolve(base: Path, value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value or "\0" in value:  # no file name holds a NUL (found by fuzzing)
        raise ConfigError(f"config key {key} must be a path")
    p = Path(value)
    return p if p.is_absolute() else (base / p).resolve()


def _secret(table: dict[str, Any], base: Path, prefix: str, where: str) -> SecretSource:
    """`<prefix>_file` (a path) or `<prefix>_credential` (a systemd credential name) of a table."""
    file_value, credential = table.get(f"{prefix}_file"), table.get(f"{prefix}_credential")
    if file_value and credential:
        raise ConfigError(f"config table [{where}] names both {prefix}_file and {prefix}_credential")
    if credential is not None and not isinstance(credential, str):
        raise ConfigError(f"config key {where}.{prefix}_credential must be a string")
    file_path = _resolve(base, file_value, f"{where}.{prefix}_file") if file_value else None
    return SecretSource(file=file_path, credential=credential or None)


_PKCS11_KEYS = frozenset({"module", "token_label", "key_label", "pin_file", "pin_credential"})


def _token_key(raw: Any, base: Path) -> TokenKey | None:
    """[pkcs11]: module, token_label, key_label, and pin_file or pin_credential."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("config table [pkcs11] must be a table")
    unknown = sorted(set(raw) - _PKCS11_KEYS)
    if unknown:
        raise ConfigError(f"config table [pkcs11] has an unknown key {show(unknown[0])}; known: {', '.join(sorted(_PKCS11_KEYS))}")
    for key in ("module", "token_label", "key_label"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"config key pkcs11.{key} must be a non-empty string")
    pin = _secret(raw, base, "pin", "pkcs11")
    if not pin:
        raise ConfigError("config table [pkcs11] needs pin_file or pin_credential")
    return TokenKey(module=_resolve(base, raw["module"], "pkcs11.module"), pin=pin,  # labels appear in messages
                    token_label=_text(raw["token_label"], "pkcs11.token_label") or "",
                    key_label=_text(raw["key_label"], "pkcs11.key_label") or "")


def _store_url(table: Any, path: Path) -> str:
    """`[store] url` (default "sqlite:": files under data_dir); the scheme is checked when the storage opens."""
    if not isinstance(table, dict) or set(table) - {"url"}:
        raise ConfigError(f"config file {path}: [store] must be a table with only url")
    url = table.get("url", "sqlite:")
    if not isinstance(url, str) or ":" not in url or not url.strip():
        raise ConfigError(f'config key store.url in {path} must be a URL such as "sqlite:" or "postgresql://HOST/DB"')
    return url


def load(path: Path | str) -> MemberConfig:
    """Read a config file written by `hedui node init` or `hedui coordinator init`."""
    path = Path(path)
    try:
        raw = files.parse_toml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    base = path.resolve().parent
    try:
        member, keys = raw["member"], raw["keys"]
        if not isinstance(member, dict) or not isinstance(keys, dict):
            raise ConfigError(f"config file {path}: [member] and [keys] must be tables")
        opt = lambda k: _resolve(base, keys[k], f"keys.{k}") if keys.get(k) else None  # noqa: E731
        token_key = _token_key(raw.get("pkcs11"), base)
        limits = _limits(raw.get("limits", {}))
        claims_table = raw.get("claims", {})
        if not isinstance(claims_table, dict):
            raise ConfigError(f"config file {path}: [claims] must be a table")
        claims = ClaimPolicy(**claims_table)
        discovery_table = raw.get("discovery", {})
        known = {f.name for f in dataclasses.fields(DiscoveryPolicy)}
        if not isinstance(discovery_table, dict) or set(discovery_table) - known:
            raise ConfigError(f"config file {path}: [discovery] must be a table of {', '.join(sorted(known))}")
        discovery = DiscoveryPolicy(**discovery_table)
        store_url = _store_url(raw.get("store", {}), path)
        logging, metrics = raw.get("logging", {}), raw.get("metrics", {})
        if not isinstance(logging, dict) or not isinstance(metrics, dict):
            raise ConfigError(f"config file {path}: [logging] and [metrics] must be tables")
        level = logging.get("level", "info")
        if not isinstance(level, str) or level.lower() not in LEVELS:
            raise ConfigError(f"config key logging.level must be one of {', '.join(LEVELS)}")
        coordinators = _endpoints(member.get("coordinator"), "member.coordinator")
        metrics_path = lambda k: _resolve(base, metrics[k], f"metrics.{k}") if metrics.get(k) else None  # noqa: E731
        allow_plain_remote = metrics.get("allow_plain_remote", False)
        if not isinstance(allow_plain_remote, bool):
            raise ConfigError(f"config key metrics.allow_plain_remote in {path} must be true or false")
        return MemberConfig(
            path=path.resolve(),
            identity=str(member["identity"]),
            province=_text(member.get("province"), "member.province"),
            listen=_text(member["listen"], "member.listen") or "",
            data_dir=_resolve(base, member["data_dir"], "member.data_dir"),
            coordinator=coordinators[0] if coordinators else None,
            coordinators=coordinators,
            advertise=_text(member.get("advertise"), "member.advertise"),
            ca_cert=_resolve(base, keys["ca_cert"], "keys.ca_cert"),
            tls_cert=_resolve(base, keys["tls_cert"], "keys.tls_cert"),
            tls_key=_resolve(base, keys["tls_key"], "keys.tls_key"),
            sign_cert=_resolve(base, keys["sign_cert"], "keys.sign_cert"),
            sign_key=opt("sign_key") if token_key is not None else _resolve(base, keys["sign_key"], "keys.sign_key"),
            seal_key=_resolve(base, keys["seal_key"], "keys.seal_key"),
            seal_pub=_resolve(base, keys["seal_pub"], "keys.seal_pub"),
            linkage_key=opt("linkage_key"),
            catalogue=opt("catalogue"),
            policy=opt("policy"),
            log_level=level.lower(),
            metrics_listen=_text(metrics.get("listen"), "metrics.listen"),
            metrics_tls_cert=metrics_path("tls_cert"),
            metrics_tls_key=metrics_path("tls_key"),
            metrics_tls_client_ca=metrics_path("tls_client_ca"),
            metrics_allow_plain_remote=allow_plain_remote,
            limits=limits,
            claims=claims,
            key_passphrase=_secret(keys, base, "passphrase", "keys"),
            token_key=token_key,
            discovery=discovery,
            store_url=store_url,
        )
    except KeyError as exc:
        raise ConfigError(f"config file {path} lacks key {exc.args[0]}") from None
    except TypeError as exc:
        raise ConfigError(f"config file {path} has an unknown or malformed setting: {exc}") from None


def write(cfg_path: Path, data: dict[str, Any]) -> None:
    """Write a config file (used by the init commands): 0600, atomically, replacing an earlier one."""
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    files.write_file(cfg_path, tomli_w.dumps(data), replace=True)
