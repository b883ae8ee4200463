"""Going back in time: a restored, truncated or copied-back coordinator ledger, and an old CRL put back.

Real federations on loopback (mutual TLS), real `hedui backup`/`restore`/`ledger` commands, a
real coordinator process killed with SIGKILL. Holders are asked directly, with the receipt the
requester kept, so the coordinator's own (restored) view cannot hide what the holder decides.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from node.client.client import PeerRefused, PeerUnreachable
from node.crypto.revocation import revoke
from node.domain.regions import province_uri
from node.server import metrics
from node.store.ledger import LedgerTruncated
from node.store.sqlite.ledger import HEAD_FILE, LEDGER_FILE
from node.testing import Federation, run_cluster
from tests.conftest import WORKER

HEDUI = [sys.executable, "-m", "node.cli.main"]
CHECK = ["deposit.balance_total<=2000000"]
ANSWERED = "answered"
LOST = "no longer in the coordinator's ledger"


def hedui(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEDUI, *map(str, args)], capture_output=True, text=True, timeout=60)


def answer(fed: Federation, info: Any, code: str = "51") -> str:
    """ANSWERED, or why holder 44 refused a direct query under this consent (receipt as the requester kept it)."""
    with fed.client(code, to="44") as peer:
        try:
            peer.verify([WORKER], "dibao", CHECK, consent=info.receipt)
        except (PeerRefused, PeerUnreachable) as exc:
            return str(exc)
    return ANSWERED


def resync(fed: Federation, code: str = "44") -> None:
    """Let holder `code` pull the consent feed now, on a fresh channel (the coordinator may have restarted)."""
    link = fed.servers[code].link

    async def run() -> None:
        link.redial()
        await link.sync_revocations()

    fed.loop.run(run())


def coordinator_dir(fed: Federation) -> Path:
    return fed.root / "coordinator"


def ledger_changes(kind: str, code: str = "44") -> float:
    value = metrics.REGISTRY.get_sample_value("hedui_ledger_changes_total", {"member": province_uri(code), "kind": kind})
    return value or 0.0


def test_restore_of_an_older_ledger_reopens_no_consent(planted: dict[str, Path], tmp_path: Path) -> None:
    """After `hedui restore` of an older coordinator backup, holders refuse consents registered after it and keep every revocation."""
    with run_cluster(["51", "44"], root=tmp_path, data=planted) as fed:
        kept = fed.grant("51", [WORKER], "dibao")
        revoked_later = fed.grant("51", [WORKER], "dibao")
        assert hedui("backup", "--config", fed.coordinator_config, "--out", tmp_path / "bk").returncode == 0
        late = fed.grant("51", [WORKER], "dibao")
        fed.revoke("51", revoked_later.consent_id)
        resync(fed)
        assert answer(fed, late) == ANSWERED and "revoked" in answer(fed, revoked_later)

        fed.stop_node("coordinator")
        restored = hedui("restore", "--config", fed.coordinator_config, "--from", tmp_path / "bk", "--force")
        assert restored.returncode == 0, restored.stderr
        assert f"nodes refuse every consent registered after entry {revoked_later.ledger_index}" in restored.stderr
        assert "1 revocation(s) recorded after the backup were carried over" in restored.stderr
        fed.start_coordinator()
        resync(fed)
        assert LOST in answer(fed, late)  # granted after the backup: the restored ledger cannot revoke it
        assert "revoked" in answer(fed, revoked_later)
        assert answer(fed, kept) == ANSWERED

        fed.revoke("51", kept.consent_id)  # a revocation after the restore reaches the holder
        fresh = fed.grant("51", [WORKER], "dibao")
        resync(fed)
        assert "revoked" in answer(fed, kept) and answer(fed, fresh) == ANSWERED

        fed.stop_node("44")
        fed.start_node("44")  # a restarted holder learns all of it from the restored ledger alone
        assert LOST in answer(fed, late) and "revoked" in answer(fed, revoked_later)
        assert answer(fed, fresh) == ANSWERED


def test_a_ledger_that_lost_its_wal_is_reported_and_not_served(planted: dict[str, Path], tmp_path: Path) -> None:
    """A coordinator killed with SIGKILL whose WAL is then deleted: `ledger verify` exits 1 (truncated), the coordinator
    will not open the ledger, and after `ledger new-epoch` holders refuse the consents it lost."""
    with run_cluster(["51", "44"], root=tmp_path, data=planted) as fed:
        port = fed.coordinator_port
        fed.stop_node("coordinator")  # a clean stop checkpoints the WAL into ledger.sqlite
        proc = subprocess.Popen([*HEDUI, "coordinator", "serve", "--config", str(fed.coordinator_config),
                                 "--listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                if json.loads(line).get("event") == "serving":
                    break
            lost = fed.grant("51", [WORKER], "dibao")
            resync(fed)
            assert answer(fed, lost) == ANSWERED
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        (coordinator_dir(fed) / f"{LEDGER_FILE}-wal").unlink()

        verify = hedui("ledger", "verify", "--config", fed.coordinator_config)
        assert verify.returncode == 1 and "LEDGER TRUNCATED" in verify.stdout, verify.stdout
        assert f"entry {lost.ledger_index} was committed" in verify.stdout
        with pytest.raises(LedgerTruncated):
            fed.start_coordinator()

        epoch = hedui("ledger", "new-epoch", "--config", fed.coordinator_config)
        assert epoch.returncode == 0 and "nodes refuse every consent of earlier epochs" in epoch.stderr
        assert hedui("ledger", "verify", "--config", fed.coordinator_config).returncode == 0
        fed.start_coordinator()
        resync(fed)
        assert LOST in answer(fed, lost)
        assert answer(fed, fed.grant("51", [WORKER], "dibao")) == ANSWERED


def test_an_older_copy_of_the_whole_ledger_put_back_makes_holders_fail_closed(planted: dict[str, Path], tmp_path: Path) -> None:
    """A coordinator data dir rolled back whole (ledger and head file, as a VM snapshot would be): the holder alerts,
    refuses what the ledger lost and what it registers in the same epoch, until a new epoch starts."""
    with run_cluster(["51", "44"], root=tmp_path, data=planted) as fed:
        kept = fed.grant("51", [WORKER], "dibao")
        fed.stop_node("coordinator")
        shutil.copytree(coordinator_dir(fed), tmp_path / "snapshot")
        fed.start_coordinator()
        lost = fed.grant("51", [WORKER], "dibao")
        resync(fed)
        assert answer(fed, lost) == ANSWERED

        fed.stop_node("coordinator")
        for name in (LEDGER_FILE, HEAD_FILE):
            if (tmp_path / "snapshot" / name).exists():
                shutil.copy2(tmp_path / "snapshot" / name, coordinator_dir(fed) / name)
        alerts = ledger_changes("rolled_back")
        fed.start_coordinator()  # its own head file agrees: only the holders can tell
        resync(fed)
        assert ledger_changes("rolled_back") == alerts + 1
        assert LOST in answer(fed, lost) and answer(fed, kept) == ANSWERED
        reused = fed.grant("51", [WORKER], "dibao")  # the same ledger index as `lost`, in the same epoch
        assert reused.ledger_index == lost.ledger_index and LOST in answer(fed, reused)

        fed.stop_node("coordinator")
        assert hedui("ledger", "new-epoch", "--config", fed.coordinator_config).returncode == 0
        fed.start_coordinator()
        resync(fed)
        assert LOST in answer(fed, lost) and answer(fed, kept) == ANSWERED
        assert answer(fed, fed.grant("51", [WORKER], "dibao")) == ANSWERED


def test_an_old_genuine_crl_put_back_does_not_unrevoke_after_restart(planted: dict[str, Path], tmp_path: Path) -> None:
    """CRL #1 put back in place of #2 at the coordinator and at a holder, both restarted: what #2 revoked stays revoked."""
    with run_cluster(["51", "44", "32"], root=tmp_path, data=planted) as fed:
        consent = fed.grant("32", [WORKER], "dibao")
        coordinator_crl = fed.servers["coordinator"].crl.path
        holder_crl = fed.member("44").crl_path

        def publish(report: Any) -> None:
            shutil.copyfile(report.path, coordinator_crl)
            fed.servers["coordinator"].crl.refresh()
            fed.loop.run(fed.servers["44"].link.sync_certificate_revocations())

        first = revoke(fed.pki, serials=[1234567])
        old_crl = first.path.read_bytes()
        publish(first)
        assert answer(fed, consent, "32") == ANSWERED
        second = revoke(fed.pki, member="32")
        assert second.crl_number == first.crl_number + 1
        publish(second)
        assert "revoked" in answer(fed, consent, "32")

        fed.stop_node("44")
        fed.stop_node("coordinator")
        coordinator_crl.write_bytes(old_crl)
        holder_crl.write_bytes(old_crl)
        fed.start_coordinator()
        fed.start_node("44")
        assert "revoked" in answer(fed, consent, "32")
        assert answer(fed, fed.grant("51", [WORKER], "dibao")) == ANSWERED


def test_a_crl_issued_from_a_restored_pki_dir_keeps_every_revocation(planted: dict[str, Path], tmp_path: Path) -> None:
    """`pki revoke --publish` after the PKI's crl.pem went back to an older copy issues a CRL numbered past the
    published one and still listing what it revoked, so members accept it and un-revoke nothing."""
    with run_cluster(["51", "44", "32"], root=tmp_path, data=planted) as fed:
        consent = fed.grant("32", [WORKER], "dibao")
        coord = fed.coordinator_config

        def publish(*who: object) -> None:
            assert hedui("pki", "revoke", "--pki", fed.pki, *who, "--publish", coord).returncode == 0
            fed.servers["coordinator"].crl.refresh()
            fed.loop.run(fed.servers["44"].link.sync_certificate_revocations())

        publish("--serial", 1234567)
        old_pki_crl = (fed.pki / "crl.pem").read_bytes()
        publish("--province", "32")
        (fed.pki / "crl.pem").write_bytes(old_pki_crl)  # the PKI directory restored from an older backup
        publish("--serial", 7654321)
        fed.stop_node("44")
        fed.stop_node("coordinator")
        fed.start_coordinator()
        fed.start_node("44")
        assert "revoked" in answer(fed, consent, "32")
        published = x509.load_pem_x509_crl((coordinator_dir(fed) / "crl.pem").read_bytes())
        assert published.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
