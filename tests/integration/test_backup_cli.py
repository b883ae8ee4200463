"""`hedui backup` / `hedui restore` end to end, and `hedui node serve` on a corrupted store."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

from node import config
from node.store.sqlite.chain import HashChain
from node.store.sqlite.facts import Store
from node.testing.cluster import build_federation, set_coordinator

# Until node/cli/main.py registers backup_cmd, this adds it to the real parser (a no-op after).
_SHIM = """
import argparse, sys
from node.cli import backup_cmd, main
_build = main.build_parser
def build_parser():
    parser = _build()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "backup" not in sub.choices:
        backup_cmd.register(sub)
    return parser
main.build_parser = build_parser
sys.exit(main.main(sys.argv[1:]))
"""


def hedui(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _SHIM, *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("hedui: "), proc.stderr
    assert text in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def node51(tmp_path: Path, planted: dict[str, Path]) -> Path:
    """Province 51's node config, with its departmental data ingested and an audit chain."""
    fed = build_federation(tmp_path, ["51"], data={"51": planted["51"]})
    cfg = config.load(fed.configs["51"])
    with HashChain(cfg.data_dir / "audit.sqlite", table="audit") as chain:
        chain.append_many([("query", f"req-{i}", b"{}") for i in range(5)])
    return fed.configs["51"]


def _config_with_data_dir(cfg_path: Path, data_dir: Path) -> Path:
    """A copy of a config pointing at another data dir (same identity and keys)."""
    data = tomllib.loads(cfg_path.read_text())
    data["member"]["data_dir"] = str(data_dir)
    out = cfg_path.with_name("other.toml")
    out.write_text(tomli_w.dumps(data))
    return out


def _counts(data_dir: Path) -> dict[str, int]:
    with Store.open(data_dir) as store:
        return store.counts()


def test_cli_backup_and_restore_round_trip(node51: Path, tmp_path: Path) -> None:
    """`hedui backup --json` then `hedui restore` into an empty data dir reproduce the node's facts."""
    out = tmp_path / "bk"
    made = hedui("backup", "--config", node51, "--out", out, "--json")
    assert made.returncode == 0 and made.stderr == "", made.stderr
    report = json.loads(made.stdout)
    assert report["identity"] == "urn:hedui:province:51"
    assert {f["name"] for f in report["files"]} == {"store.sqlite", "audit.sqlite"}
    other = _config_with_data_dir(node51, tmp_path / "restored")
    put = hedui("restore", "--config", other, "--from", out)
    assert put.returncode == 0 and put.stderr == "", put.stderr
    assert "restored backup of urn:hedui:province:51" in put.stdout
    assert _counts(tmp_path / "restored") == _counts(config.load(node51).data_dir) == {"subjects": 2, "facts": 4}


def test_cli_backup_bad_input_exits_2(node51: Path, tmp_path: Path) -> None:
    """A missing config or a non-empty --out exits 2 with one line on stderr."""
    one_line_error(hedui("backup", "--config", tmp_path / "none.toml", "--out", tmp_path / "bk"), 2,
                   "config file not found")
    (tmp_path / "bk").mkdir()
    (tmp_path / "bk" / "x").write_text("x")
    one_line_error(hedui("backup", "--config", node51, "--out", tmp_path / "bk"), 2, "exists and is not empty")


def test_cli_restore_over_existing_data(node51: Path, tmp_path: Path) -> None:
    """Restore over a node's data exits 2 without --force; with --force it moves the old files aside."""
    out = tmp_path / "bk"
    assert hedui("backup", "--config", node51, "--out", out).returncode == 0
    one_line_error(hedui("restore", "--config", node51, "--from", out), 2, "use --force to move them aside")
    forced = hedui("restore", "--config", node51, "--from", out, "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    aside = Path(json.loads(forced.stdout)["moved_aside"])
    assert sorted(p.name for p in aside.iterdir()) == ["audit.sqlite", "store.sqlite"]
    assert _counts(config.load(node51).data_dir)["facts"] == 4


def test_cli_restore_tampered_backup_exits_1(node51: Path, tmp_path: Path) -> None:
    """A backup with one flipped byte is refused with exit 1 (invalid artefact) and one line."""
    out = tmp_path / "bk"
    assert hedui("backup", "--config", node51, "--out", out).returncode == 0
    path = out / "audit.sqlite"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x80
    path.write_bytes(bytes(data))
    other = _config_with_data_dir(node51, tmp_path / "restored")
    one_line_error(hedui("restore", "--config", other, "--from", out), 1, "audit.sqlite does not match its manifest")
    one_line_error(hedui("restore", "--config", other, "--from", tmp_path), 2, "is not a Hedui backup")


def test_cli_backup_while_serving_and_restore_refused(node51: Path, tmp_path: Path) -> None:
    """A running node can be backed up, but restoring over its data is refused (exit 2) until it stops."""
    proc = subprocess.Popen([sys.executable, "-m", "node.cli.main", "node", "serve", "--config", str(node51),
                             "--listen", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if json.loads(line).get("event") == "serving":
                break
        else:
            raise AssertionError("node exited before serving")
        out = tmp_path / "bk"
        assert hedui("backup", "--config", node51, "--out", out).returncode == 0
        one_line_error(hedui("restore", "--config", node51, "--from", out, "--force"), 2,
                       "in use by another process: stop the node")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert hedui("restore", "--config", node51, "--from", out, "--force").returncode == 0


def test_node_serve_on_corrupted_store_exits_2(tmp_path: Path) -> None:
    """`hedui node serve` on a store with garbage mid-file exits 2 with one line naming the integrity failure."""
    fed = build_federation(tmp_path, ["51"])
    set_coordinator(fed.configs["51"], "127.0.0.1:9")  # configured as deployed: no "no_coordinator" warning
    data_dir = config.load(fed.configs["51"]).data_dir
    with Store.open(data_dir) as store, store.writer() as w:
        w.upsert_facts((w.subject_id(i.to_bytes(32, "big")), "income.wage_monthly", "2026-10-31", "hrss", i)
                       for i in range(1, 5001))
    path = data_dir / "store.sqlite"
    size = path.stat().st_size
    assert size > 100 * 4096
    with open(path, "r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(b"\xde\xad\xbe\xef" * 2048)
    proc = subprocess.run([sys.executable, "-m", "node.cli.main", "node", "serve", "--config", str(fed.configs["51"]),
                           "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    one_line_error(proc, 2, f"store {path} integrity check failed")
    assert proc.stdout == ""
