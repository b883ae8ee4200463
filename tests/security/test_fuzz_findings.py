"""What the fuzzer found, through the commands a person runs: one clear line, no traceback.

Each input is the regression file the fuzzer's finding left in tests/fuzz/regressions/ (replayed
through its harness by tests/fuzz/test_fuzz_corpus.py); here `hedui` itself reads it, as a
subprocess, against the fuzz world's real PKI (the record is signed by its members).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from tests.fuzz.world import world

REGRESSIONS = Path(__file__).resolve().parents[1] / "fuzz" / "regressions"


def hedui(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def test_config_with_a_nul_in_a_path_is_refused_in_one_line(tmp_path: Path) -> None:
    """A member config whose path setting holds a NUL is a config error (exit 2, one line), not a ValueError traceback."""
    config = tmp_path / "node.toml"
    config.write_bytes((REGRESSIONS / "member_config" / "nul-in-path").read_bytes())
    proc = hedui("node", "status", "--config", config)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert "member.data_dir must be a path" in proc.stderr


def test_decision_record_whose_totals_are_not_an_object_is_invalid(tmp_path: Path) -> None:
    """`household verify` of a record whose decision totals are not a JSON object says INVALID with the reason (exit 1)."""
    record = tmp_path / "record.json"
    record.write_bytes((REGRESSIONS / "decision_record" / "totals-not-an-object").read_bytes())
    assert json.loads(record.read_bytes())["body"]["decision"]["totals"] == []
    proc = hedui("household", "verify", "--pki", world().root / "pki", record)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "decision record INVALID" in proc.stdout and "household totals must map each measure" in proc.stdout


def test_results_line_whose_totals_are_not_an_object_is_invalid(tmp_path: Path) -> None:
    """`household verify RESULTS.jsonl` reports a line whose record's totals are not an object as invalid, no traceback."""
    results = tmp_path / "results.jsonl"
    results.write_bytes((REGRESSIONS / "results_line" / "totals-not-an-object").read_bytes() + b"\n")
    proc = hedui("household", "verify", "--pki", world().root / "pki", results, "--json")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "household totals must map each measure" in proc.stdout


def _answer_file(tmp_path: Path, answer_body: bytes, query_body: bytes | None = None) -> Path:
    """A `hedui-answer/v1` file holding `answer_body` signed by the fuzz world's holder (44)."""
    from node.crypto import signing
    from node.wire.v1 import verification_pb2

    w = world()
    signed = verification_pb2.SignedAnswer(body=answer_body, signature=w.signer("44").sign(signing.ANSWER, answer_body))
    path = tmp_path / "answer.json"
    path.write_text(json.dumps({"format": "hedui-answer/v1", "answers": [{
        "province": "44", "query": base64.b64encode(query_body or w.sent_query).decode(),
        "answer": base64.b64encode(signed.SerializeToString()).decode()}]}), encoding="utf-8")
    return path


def test_answer_with_an_unknown_outcome_is_invalid_not_a_crash(tmp_path: Path) -> None:
    """`answer verify` of a holder-signed answer whose result carries an outcome outside the enum says INVALID (exit 1)."""
    body = (REGRESSIONS / "answer" / "unknown-outcome").read_bytes()
    proc = hedui("answer", "verify", "--pki", world().root / "pki", _answer_file(tmp_path, body), "--json")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["answers"][0]["problem"] == "answer has a result with an unknown outcome"


def test_saved_query_with_an_unknown_comparator_is_invalid_not_a_crash(tmp_path: Path) -> None:
    """`answer verify` of a file whose saved query has a comparator outside the enum reports it invalid (exit 1)."""
    path = tmp_path / "answer.json"
    path.write_bytes((REGRESSIONS / "answer_file" / "unknown-comparator-in-saved-query").read_bytes())
    proc = hedui("answer", "verify", "--pki", world().root / "pki", path, "--json")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["answers"][0]["valid"] is False


def _one(target: str) -> bytes:
    (path,) = sorted((REGRESSIONS / target).glob("crash-*"))[:1]
    return path.read_bytes()


def test_query_signed_with_a_certificate_of_bad_version_is_unauthenticated(planted: dict[str, Path]) -> None:
    """A query whose signature carries a certificate with an out-of-range version is refused UNAUTHENTICATED, not INTERNAL."""
    import grpc

    from node.client.query import prepare, sign_query
    from node.testing import run_cluster
    from node.wire.v1 import verification_pb2, verification_pb2_grpc
    from tests.conftest import WORKER

    certificate = _one("signing_cert")
    with run_cluster(["44", "51"], data=planted) as fed:
        m = fed.member("51")
        receipt = fed.grant("51", [WORKER], "dibao").receipt
        prepared = prepare(requester="51", linkage_key=m.linkage_key, ids=[WORKER], purpose="dibao",
                           checks=["deposit.balance_total<=2000000"], catalogue=m.catalogue, policy=m.policy)
        query = sign_query(m.signer, prepared.body(consent=receipt))
        query.signature.certificate = certificate
        query.signature.key_id = hashlib.sha256(certificate).digest()
        creds = grpc.ssl_channel_credentials(root_certificates=(fed.pki / "ca.pem").read_bytes(),
                                             private_key=m.cfg.tls_key.read_bytes(),
                                             certificate_chain=m.cfg.tls_cert.read_bytes())
        with grpc.secure_channel(fed.addresses["44"], creds) as ch:
            try:
                verification_pb2_grpc.VerificationStub(ch).Verify(verification_pb2.VerifyRequest(signed=query), timeout=10)
                raise AssertionError("the query was answered")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
                assert "malformed certificate" in (err.details() or "")


def test_crl_with_a_malformed_issuer_is_rejected_and_the_accepted_one_kept(tmp_path: Path) -> None:
    """A CRL whose issuer name does not parse is CertificateRejected by CrlFile.accept; the CRL in force stays."""
    import pytest

    from node.crypto import pki, revocation

    w = world()
    state = tmp_path / "crl-state.json"
    crl = revocation.CrlFile(tmp_path / "crl.pem", pki.TrustAnchor.load(w.holder.cfg.ca_cert), state_path=state)
    good = (REGRESSIONS.parent / "corpus" / "crl" / "seed-1").read_bytes()
    assert crl.accept(good) == 2
    with pytest.raises(revocation.CertificateRejected, match="revocation list does not parse"):
        crl.accept(_one("crl"))
    assert crl.number >= 1
    assert crl.anchor.revoked_serials == frozenset({4242, 77})


def _one_line_exit_2(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_consents_file_with_a_field_past_the_csv_limit_is_bad_input(tmp_path: Path) -> None:
    """`verify-batch` given a consents file with a field longer than csv's limit exits 2 with one line, no csv.Error traceback."""
    from tests.fuzz.world import WORKER

    households = tmp_path / "households.csv"
    households.write_text(f"household,id_number\nh,{WORKER}\n", encoding="utf-8")
    consents = tmp_path / "consents.csv"
    consents.write_bytes((REGRESSIONS / "consents_csv" / "field-past-csv-limit").read_bytes())
    proc = hedui("verify-batch", "--config", world().members["51"].cfg.path, "--in", households, "--consents", consents,
                 "--purpose", "dibao", "--check", "deposit.balance_total<=2000000", "--out", tmp_path / "out.jsonl")
    assert "not a consents file" in _one_line_exit_2(proc)


def test_toml_with_an_integer_of_5000_digits_is_not_valid_toml(tmp_path: Path) -> None:
    """A config file or standards document with an integer past Python's digit limit is refused as bad TOML (exit 2)."""
    config = tmp_path / "node.toml"
    config.write_bytes((REGRESSIONS / "member_config" / "integer-of-5000-digits").read_bytes())
    assert "more digits than any setting can use" in _one_line_exit_2(hedui("node", "status", "--config", config))
    document = tmp_path / "standards.toml"
    document.write_bytes((REGRESSIONS / "standards_toml" / "integer-of-5000-digits").read_bytes())
    line = _one_line_exit_2(hedui("standards", "publish", "--config", world().members["51"].cfg.path, document))
    assert "not valid TOML" in line


def test_crl_with_a_bad_version_is_rejected(tmp_path: Path) -> None:
    """A CRL whose version field is out of range is CertificateRejected (not x509.InvalidVersion) by CrlFile.accept."""
    import pytest

    from node.crypto import pki, revocation

    crl = revocation.CrlFile(tmp_path / "crl.pem", pki.TrustAnchor.load(world().holder.cfg.ca_cert),
                             state_path=tmp_path / "crl-state.json")
    bad = [p for p in sorted((REGRESSIONS / "crl").glob("crash-*")) if p.name.startswith("crash-0995")]
    with pytest.raises(revocation.CertificateRejected, match="revocation list does not parse"):
        crl.accept(bad[0].read_bytes())


def _pki_with_ca_key(tmp_path: Path, regression: str) -> tuple[Path, Path]:
    """A copy of the fuzz world's PKI whose CA key file is the regression input, and a passphrase file."""
    import shutil

    from tests.fuzz.world import KEY_PASSPHRASE

    pki = tmp_path / "pki"
    shutil.copytree(world().root / "pki", pki)
    (pki / "ca.key").write_bytes((REGRESSIONS / "private_key" / regression).read_bytes())
    passphrase = tmp_path / "passphrase"
    passphrase.write_bytes(KEY_PASSPHRASE + b"\n")
    return pki, passphrase


def test_encrypted_key_whose_scrypt_n_is_not_a_power_of_two_is_refused_in_one_line(tmp_path: Path) -> None:
    """An encrypted key file whose scrypt N is not a power of two is refused (exit 2, one line), not an OpenSSL InternalError."""
    pki, passphrase = _pki_with_ca_key(tmp_path, "scrypt-n-not-a-power-of-two")
    line = _one_line_exit_2(hedui("pki", "issue", "--pki", pki, "--province", "32", "--ca-passphrase-file", passphrase))
    assert "ca.key is not an encrypted key this node reads: scrypt parameters are not valid" in line


def test_encrypted_key_asking_for_a_gigabyte_or_minutes_of_scrypt_is_refused_before_deriving(tmp_path: Path) -> None:
    """An encrypted key file whose scrypt parameters ask for 1 GiB of memory, or 1000 times the work, is refused
    by its parameters (exit 2, one line) instead of being derived (a node stalled or killed at start)."""
    for regression in ("scrypt-1gib-of-memory", "scrypt-p-1000"):
        pki, passphrase = _pki_with_ca_key(tmp_path / regression, regression)
        line = _one_line_exit_2(hedui("pki", "issue", "--pki", pki, "--province", "32",
                                      "--ca-passphrase-file", passphrase))
        assert "scrypt parameters ask for more memory or work than a key file may" in line, regression
        assert not (pki / "members" / "32").exists()
