"""One factory opens the storage a config names ([store] url); callers reach storage only through it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from node import config
from node.cli.main import main
from node.errors import BadInput
from node.store import factory
from node.store.interfaces import Storage

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, store: dict[str, Any] | None = None) -> Path:
    """A node config whose key files need not exist (nothing here opens them)."""
    keys = {k: str(tmp_path / f"{k}.pem") for k in
            ("ca_cert", "tls_cert", "tls_key", "sign_cert", "sign_key", "seal_key", "seal_pub", "linkage_key")}
    data: dict[str, Any] = {"member": {"identity": "urn:hedui:province:44", "province": "44", "listen": "127.0.0.1:0",
                                       "data_dir": str(tmp_path / "data")}, "keys": keys}
    if store is not None:
        data["store"] = store
    path = tmp_path / "node44.toml"
    config.write(path, data)
    return path


def test_a_config_without_a_store_table_keeps_its_files_under_data_dir(tmp_path: Path) -> None:
    """No [store] (or url = "sqlite:") opens today's files: store.sqlite, nonces.sqlite, audit.sqlite in data_dir."""
    for store in (None, {"url": "sqlite:"}):
        cfg = config.load(_config(tmp_path, store))
        assert cfg.store_url == "sqlite:"
        with factory.open_storage(cfg) as storage:
            assert isinstance(storage, Storage)
            storage.facts()
            storage.nonces(window_ms=1000)
            storage.audit().append("audit.record", "k", b"{}")
        assert {p.name for p in (tmp_path / "data").iterdir()} >= {"store.sqlite", "nonces.sqlite", "audit.sqlite"}


def test_a_sqlite_url_with_a_directory_puts_the_files_there(tmp_path: Path) -> None:
    """url = "sqlite:///DIR" keeps the files in DIR, not in data_dir; read-only opens find them there."""
    elsewhere = tmp_path / "elsewhere"
    cfg = config.load(_config(tmp_path, {"url": f"sqlite://{elsewhere}"}))
    with factory.open_storage(cfg) as storage:
        storage.chain("ledger").append("x", "", b"")
    assert (elsewhere / "ledger.sqlite").is_file() and not (tmp_path / "data" / "ledger.sqlite").exists()
    with factory.open_storage_readonly(cfg) as storage:
        assert storage.readonly and storage.chain("ledger").head()[0] == 1


@pytest.mark.parametrize("store, problem", [
    ({"url": 5}, "store.url"), ({"url": "no-scheme"}, "store.url"), ({"url": "sqlite:", "pool": 3}, "[store]"),
])  # fmt: skip
def test_a_malformed_store_table_is_a_config_error(tmp_path: Path, store: dict[str, Any], problem: str) -> None:
    """A [store] url that is not a URL string, or an unknown key, is refused when the config loads."""
    with pytest.raises(config.ConfigError, match=re.escape(problem)):
        config.load(_config(tmp_path, store))


def test_an_unknown_scheme_is_one_line_of_bad_input_from_the_cli(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A url no backend serves: BadInput from the factory, and exit 2 with one line (no traceback) from the CLI."""
    path = _config(tmp_path, {"url": "mysql://db.example/hedui"})
    with pytest.raises(BadInput, match="unknown store scheme 'mysql'"):
        factory.open_storage(config.load(path))
    with pytest.raises(BadInput, match="sqlite store url"):
        factory.open_url("sqlite:relative/dir", tmp_path)
    assert main(["audit", "verify", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown store scheme 'mysql'" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_registered_opener_serves_its_scheme(tmp_path: Path) -> None:
    """register(scheme, opener) is how a backend plugs in: open_url hands it the url, data_dir and mode."""
    seen: list[tuple[str, Path, bool]] = []

    def opener(url: str, data_dir: Path, *, readonly: bool) -> Any:
        seen.append((url, data_dir, readonly))
        return factory.open_url("sqlite:", data_dir, readonly=readonly)

    factory.register("testdb", opener)
    try:
        factory.open_url("testdb://here", tmp_path).close()
    finally:
        factory._registered.pop("testdb")
    assert seen == [("testdb://here", tmp_path, False)]


# The concrete SQLite classes, built from paths: only node/store/sqlite (and the factory) may build them.
_CONCRETE = re.compile(r"\bStore\.open\(|\bHashChain\(|\bHashChain\.open_readonly\(|\bNonceStore\(|\bCheckpointFile\("
                       r"|\bAuditLog\.(?:for_member|open_readonly)\(|\bopen_ledger\(")


def test_no_caller_builds_a_sqlite_store_from_a_path() -> None:
    """Servers, coordinator, CLI, web, bench, demo and test harness open storage through node.store.factory only."""
    offenders = [f"{p.relative_to(ROOT)}:{n}" for folder in ("server", "coordinator", "cli", "web", "bench", "testing")
                 for p in sorted((ROOT / "node" / folder).rglob("*.py")) if p.name != "backends.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if _CONCRETE.search(line)]
    offenders += [f"node/demo.py:{n}" for n, line in enumerate((ROOT / "node/demo.py").read_text().splitlines(), 1)
                  if _CONCRETE.search(line)]
    assert offenders == []


def test_the_audit_log_reaches_storage_only_through_the_interfaces() -> None:
    """node/store/audit imports no sqlite3 and no backend; node/store imports no server or coordinator."""
    for path in sorted((ROOT / "node/store/audit").glob("*.py")):
        text = path.read_text()
        assert not re.search(r"^\s*(?:import sqlite3|from node\.store\.(?:sqlite|postgres))", text, re.M), path.name
    for path in sorted((ROOT / "node/store").rglob("*.py")):
        assert not re.search(r"^\s*from node\.(?:server|coordinator|client|cli)\b", path.read_text(), re.M), path.name
