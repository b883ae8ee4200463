"""The `hedui` command line end to end: PKI, node init, ingest, serve, verify, answer verify."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import CANARY_DEPOSIT, STRANGER, WORKER, write_csv

HEDUI = [sys.executable, "-m", "node.cli.main"]


def hedui(*args: str | Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*HEDUI, *map(str, args)], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"hedui {args} exited {proc.returncode}: {proc.stderr}")
    return proc


class Serving:
    """A `hedui node|coordinator serve` subprocess; ready once it logged the port it bound."""

    def __init__(self, config: Path, kind: str = "node") -> None:
        self.proc = subprocess.Popen([*HEDUI, kind, "serve", "--config", str(config), "--listen", "127.0.0.1:0"],
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self.log: list[str] = []
        for line in self.proc.stderr:
            self.log.append(line)
            event = json.loads(line)
            if event.get("event") == "serving":
                self.port = int(event["port"])
                break
        else:
            raise AssertionError(f"node exited before serving: {''.join(self.log)}")
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stderr is not None
        self.log.extend(self.proc.stderr.readlines())
        return self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, planted: dict[str, Path]) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("cli")
    pki = root / "pki"
    hedui("pki", "init", "--pki", pki, check=True)
    hedui("pki", "issue", "--pki", pki, "--coordinator", "--loopback", check=True)
    hedui("coordinator", "init", "--pki", pki, "--listen", "127.0.0.1:0", "--data-dir", root / "coord",
          "--config", root / "coord.toml", check=True)
    coordinator = Serving(root / "coord.toml", "coordinator")
    for code in ("44", "51"):
        hedui("pki", "issue", "--pki", pki, "--province", code, "--loopback", "--host", f"node{code}.example", check=True)
        hedui("node", "init", "--pki", pki, "--province", code, "--listen", "127.0.0.1:0",
              "--data-dir", root / f"data{code}", "--config", root / f"node{code}.toml",
              "--coordinator", coordinator.address, check=True)
    hedui("ingest", "--config", root / "node44.toml", planted["44"], check=True)
    server = Serving(root / "node44.toml")
    granted = hedui("consent", "grant", "--config", root / "node51.toml", "--id", WORKER, "--id", STRANGER,
                    "--purpose", "dibao", "--json", check=True)
    consent_id = json.loads(granted.stdout)["consent_id"]
    yield {"root": root, "pki": pki, "cfg44": root / "node44.toml", "cfg51": root / "node51.toml",
           "addr": Path(server.address), "consent": Path(consent_id), "coord": root / "coord.toml"}
    assert server.stop() == 0, "node did not shut down cleanly on SIGTERM"
    assert coordinator.stop() == 0, "coordinator did not shut down cleanly on SIGTERM"


def test_private_keys_are_created_owner_only(setup: dict[str, Path]) -> None:
    """Every private key file the CLI wrote, in the PKI and in node data dirs, is mode 0600."""
    keys = [p for p in setup["root"].rglob("*.key")]
    assert len(keys) >= 8
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in keys)


def test_verify_prints_json_with_subject_indexes(setup: dict[str, Path]) -> None:
    """`hedui verify --json` prints the contract shape and never an ID number."""
    proc = hedui("verify", "--config", setup["cfg51"], "--to", str(setup["addr"]), "--id", WORKER, "--id", STRANGER,
                 "--purpose", "dibao", "--check", "deposit.balance_total<=2000000", "--json",
                 "--consent", str(setup["consent"]))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"request_id", "answers"}
    (answer,) = out["answers"]
    assert answer["province"] == "44" and answer["signature_valid"] is True
    assert answer["results"] == [
        {"subject": 0, "check": "deposit.balance_total<=2000000", "outcome": "NOT_SATISFIED", "as_of": "2026-10-31"},
        {"subject": 1, "check": "deposit.balance_total<=2000000", "outcome": "NO_RECORD", "as_of": None},
    ]
    assert WORKER not in proc.stdout and str(CANARY_DEPOSIT) not in proc.stdout


def test_verify_table_and_saved_answer_checks_offline(setup: dict[str, Path], tmp_path: Path) -> None:
    """The readable table names the province; the saved answer verifies offline and fails when edited."""
    saved = tmp_path / "answer.json"
    proc = hedui("verify", "--config", setup["cfg51"], "--to", str(setup["addr"]), "--id", WORKER,
                 "--purpose", "dibao", "--check", "income.wage_monthly < 300000", "--save", saved,
                 "--consent", str(setup["consent"]))
    assert proc.returncode == 0, proc.stderr
    assert "province 44 (Guangdong): signature valid" in proc.stdout
    assert "NOT_SATISFIED" in proc.stdout
    assert hedui("answer", "verify", "--pki", setup["pki"], saved).returncode == 0
    data = json.loads(saved.read_text())
    import base64

    raw = bytearray(base64.b64decode(data["answers"][0]["answer"]))
    raw[12] ^= 0x01
    data["answers"][0]["answer"] = base64.b64encode(bytes(raw)).decode()
    saved.write_text(json.dumps(data))
    bad = hedui("answer", "verify", "--pki", setup["pki"], saved)
    assert bad.returncode == 1 and "INVALID" in bad.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--id", WORKER[:-1] + "Y"], "check character"),
    (["--id", "12345"], "18 characters"),
    (["--id", WORKER, "--purpose", "lottery"], "unknown purpose"),
    (["--id", WORKER, "--check", "deposit.balance_total<=12.5"], "integer"),
    (["--id", WORKER, "--check", "nonsense.item<=1"], "nonsense.item"),
])
def test_bad_input_exits_2_with_one_line(setup: dict[str, Path], args: list[str], fragment: str) -> None:
    """Bad ID numbers, purposes and checks exit 2 with one line on stderr and no traceback."""
    base = {"--purpose": "dibao", "--check": "deposit.balance_total<=2000000"}
    for i, a in enumerate(args):
        if a in base and i + 1 < len(args):
            base.pop(a)
    extra = [x for kv in base.items() for x in kv]
    proc = hedui("verify", "--config", setup["cfg51"], "--to", str(setup["addr"]), *args, *extra)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert fragment in lines[0]
    assert WORKER not in proc.stderr


def test_routed_verify_through_the_coordinator(setup: dict[str, Path]) -> None:
    """Without --to the query is routed: the JSON gains a routing status per province contacted."""
    proc = hedui("verify", "--config", setup["cfg51"], "--id", WORKER, "--purpose", "dibao",
                 "--check", "deposit.balance_total<=2000000", "--consent", str(setup["consent"]), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["routing"] == {"44": "OK"}
    assert [a["province"] for a in out["answers"]] == ["44"]
    assert out["answers"][0]["results"][0]["outcome"] == "NOT_SATISFIED"


def test_revoked_consent_is_refused_with_exit_3(setup: dict[str, Path]) -> None:
    """After `hedui consent revoke`, a verification under that consent exits 3 (refused)."""
    granted = hedui("consent", "grant", "--config", setup["cfg51"], "--id", WORKER, "--purpose", "dibao", "--json",
                    check=True)
    consent_id = json.loads(granted.stdout)["consent_id"]
    assert hedui("consent", "revoke", "--config", setup["cfg51"], consent_id, check=True).returncode == 0
    shown = json.loads(hedui("consent", "show", "--config", setup["cfg51"], consent_id, "--json", check=True).stdout)
    assert shown["state"] == "REVOKED" and shown["subjects"] == 1
    proc = hedui("verify", "--config", setup["cfg51"], "--id", WORKER, "--purpose", "dibao",
                 "--check", "deposit.balance_total<=2000000", "--consent", consent_id)
    assert proc.returncode == 3 and "revoked" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_ledger_verify_reports_an_intact_chain(setup: dict[str, Path]) -> None:
    """`hedui ledger verify` on the running coordinator's ledger exits 0 and counts the entries."""
    proc = hedui("ledger", "verify", "--config", setup["coord"], "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["entries"] >= 1


def test_unreachable_peer_exits_4(setup: dict[str, Path]) -> None:
    """A peer that is not listening gives exit code 4."""
    proc = hedui("verify", "--config", setup["cfg51"], "--to", "127.0.0.1:1", "--province", "44", "--deadline", "2", "--id", WORKER,
                 "--purpose", "dibao", "--check", "deposit.balance_total<=2000000", "--consent", str(setup["consent"]))
    assert proc.returncode == 4 and len(proc.stderr.strip().splitlines()) == 1


def test_ingest_rejects_a_bad_file_whole_with_line_numbers(setup: dict[str, Path], tmp_path: Path) -> None:
    """A file with bad rows is rejected whole: every bad line is named, and nothing is stored."""
    before = json.loads(hedui("node", "status", "--config", setup["cfg51"], "--json", check=True).stdout)
    bad = write_csv(tmp_path / "bad.csv", [
        (STRANGER, "deposit.balance_total", 100, "2026-10-31", "bank:ICBC"),
        (WORKER[:-1] + "Y", "deposit.balance_total", 100, "2026-10-31", "bank:ICBC"),
        (STRANGER, "no.such_item", 1, "2026-10-31", "x"),
        (STRANGER, "deposit.balance_total", -5, "2026-10-31", "bank:ICBC"),
        (STRANGER, "deposit.balance_total", 5, "2026-13-01", "bank:ICBC"),
    ])
    proc = hedui("ingest", "--config", setup["cfg51"], bad)
    assert proc.returncode == 2
    named = [line.split(":")[1] for line in proc.stderr.splitlines() if line.startswith(str(bad))]
    assert named[:4] == ["3", "4", "5", "6"]
    assert WORKER[:-1] not in proc.stderr
    after = json.loads(hedui("node", "status", "--config", setup["cfg51"], "--json", check=True).stdout)
    assert after == before


def test_health_service_reports_serving(setup: dict[str, Path]) -> None:
    """The standard gRPC health service answers SERVING over mutual TLS."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from node.member import Member
    from node.server import tls

    m = Member.from_config(setup["cfg51"])
    with grpc.secure_channel(str(setup["addr"]), tls.channel_credentials(m.cfg)) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="hedui.v1.Verification"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_no_traceback_for_missing_config(tmp_path: Path) -> None:
    """A missing config file is one line and exit 2."""
    proc = hedui("node", "status", "--config", tmp_path / "nope.toml")
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr
    _ = os


def test_synth_writes_ingestible_csv_per_province(setup: dict[str, Path], tmp_path: Path) -> None:
    """`hedui synth` writes one CSV per province that `hedui ingest` accepts."""
    proc = hedui("synth", "--provinces", "44,51", "--households", "5", "--seed", "3", "--out", tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["households"] == 10 and summary["members"] >= 10
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == ["44.csv", "51.csv", "households.csv", "members.csv"]
    assert hedui("ingest", "--config", setup["cfg51"], tmp_path / "51.csv").returncode == 0
    bad = hedui("synth", "--provinces", "44,99", "--households", "5", "--out", tmp_path / "x")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_version_is_the_packages() -> None:
    """`hedui --version` prints the package's version."""
    from node import __version__

    proc = hedui("--version", check=True)
    assert proc.stdout.strip() == f"hedui {__version__}"


def test_node_status_reports_the_version(setup: dict[str, Path]) -> None:
    """`node status --json` carries the running code's version beside the store counts."""
    from node import __version__

    status = json.loads(hedui("node", "status", "--config", setup["cfg44"], "--json", check=True).stdout)
    assert status["version"] == __version__ and status["subjects"] > 0


def test_init_takes_a_provinces_own_catalogue_and_policy(setup: dict[str, Path], tmp_path: Path) -> None:
    """`node init --catalogue --policy` records the province's own files; a broken one is refused before anything is written."""
    import tomllib

    repo_config = Path(__file__).resolve().parents[2] / "config"
    catalogue, policy = tmp_path / "own-catalogue.toml", tmp_path / "own-policy.toml"
    catalogue.write_bytes((repo_config / "catalogue.toml").read_bytes())
    policy.write_text((repo_config / "policy.toml").read_text().replace("最低生活保障", "最低生活保障（本省）"))
    cfg = tmp_path / "node.toml"
    hedui("node", "init", "--pki", setup["pki"], "--province", "44", "--listen", "127.0.0.1:0", "--data-dir",
          tmp_path / "data", "--config", cfg, "--catalogue", catalogue, "--policy", policy, check=True)
    keys = tomllib.loads(cfg.read_text())["keys"]
    assert keys["catalogue"] == str(catalogue.resolve()) and keys["policy"] == str(policy.resolve())
    from node.member import Member

    assert Member.from_config(cfg).policy.purpose("dibao").name_zh == "最低生活保障（本省）"

    policy.write_text('[purpose.dibao]\nname_zh = "x"\nname_en = "x"\nitems = ["lottery.*"]\n')
    bad = tmp_path / "bad.toml"
    proc = hedui("coordinator", "init", "--pki", setup["pki"], "--listen", "127.0.0.1:0", "--data-dir",
                 tmp_path / "coord", "--config", bad, "--policy", policy)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "lottery.*" in proc.stderr
    assert not bad.exists() and not (tmp_path / "coord").exists()


def test_node_wait_returns_once_the_node_is_routed_to(setup: dict[str, Path]) -> None:
    """`node wait` returns 0 for a serving node the coordinator lists, and 4 with one line when nothing answers."""
    proc = hedui("node", "wait", "--config", setup["cfg44"], "--to", str(setup["addr"]), "--timeout", "20", check=True)
    assert "urn:hedui:province:44 ready" in proc.stdout
    # Ready means findable: the coordinator holds 44's locator for the current discovery epoch.
    from node.client import ready
    from node.client.coordinator import CoordinatorClient
    from node.member import Member

    with CoordinatorClient(Member.from_config(setup["cfg44"])) as coordinator:
        assert ready._located(coordinator)
    with socket.socket() as probe:  # a port nobody listens on: bound, never accepting
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
        proc = hedui("node", "wait", "--config", setup["cfg44"], "--to", dead, "--timeout", "0.5")
    assert proc.returncode == 4 and len(proc.stderr.splitlines()) == 1 and "not ready within 0.5 s" in proc.stderr
