"""Published standards end to end: a province signs and publishes, the coordinator carries, every member verifies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node import config as config_mod
from node.cli.main import main
from node.client.client import PeerRefused
from node.client.standards import fetch_directory, fetch_standards, find_standard, sign_standards
from node.coordinator.directory import verify_directory
from node.crypto import signing
from node.domain.catalogue import shipped
from node.domain.standards import canonical_bytes, from_canonical, parse_standards
from node.errors import ErrorCode, Refusal
from node.member import Member
from node.store import audit
from node.testing import run_cluster
from node.testing.cluster import Federation
from node.wire.v1 import coordinator_pb2
from node.store.sqlite.storage import audit_file_readonly

SICHUAN = shipped("standards/51-sichuan.toml")


@pytest.fixture(scope="module")
def fed() -> Iterator[Federation]:
    with run_cluster(("32", "44", "51")) as federation:
        yield federation


def _cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _document(fed: Federation, province: str, version: int, standard: int = 90000) -> Any:
    member = fed.member(province)
    text = f"""
province = "{province}"
version = {version}
example = true
[[standard]]
region = "{province}0100"
name_zh = "测试市"
name_en = "Test city"
purpose = "dibao"
period_from = "2024-01"
standard_per_person = {standard}
income_monthly = ["income_monthly"]
rules = ["income"]
source = "test figure"
"""
    return parse_standards(text, member.catalogue, member.policy)


def _publish(fed: Federation, caller: str, signed: coordinator_pb2.SignedStandards) -> Any:
    with fed.coordinator(caller) as coordinator:
        return coordinator.call("PublishStandards", signed)


def _coordinator_audit(fed: Federation) -> list[dict[str, Any]]:
    cfg = config_mod.load(fed.coordinator_config)
    with audit_file_readonly(cfg.data_dir / audit.AUDIT_DB) as log:
        return [json.loads(e.payload) for e in log.entries()]


def test_published_in_one_province_is_shown_in_another(fed: Federation, capsys: pytest.CaptureFixture[str]) -> None:
    """Sichuan publishes its example document; Guangdong's `standards show` lists it, signature verified."""
    code, out, err = _cli(capsys, "standards", "publish", "--config", fed.configs["51"], SICHUAN)
    assert code == 0, err
    assert "province 51 (Sichuan), version 1, 19 entries" in out and "510181" in out
    code, out, _ = _cli(capsys, "standards", "show", "--config", fed.configs["44"], "--region", "510181",
                        "--period", "2023-05", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["region"], r["purpose"], r["standard_per_person"]) for r in rows] == [("510181", "dibao", 86000)]
    row = rows[0]
    assert row["publisher"] == "51" and row["version"] == 1 and row["example"] is True
    assert row["period"] == {"from": "2023-01", "to": "2023-12"}
    assert row["rules"] == ["income", "financial_assets", "vehicles", "homes", "businesses"]
    code, out, _ = _cli(capsys, "standards", "show", "--config", fed.configs["32"], "--region", "510181",
                        "--period", "2026-02")
    assert code == 0 and "510100" in out and "1120.00" in out  # the county falls back to the city's 2026 standard
    code, out, _ = _cli(capsys, "standards", "show", "--config", fed.configs["32"], "--all", "--json")
    assert len([r for r in json.loads(out) if r["publisher"] == "51"]) == 19
    standard = find_standard(fed.member("44"), "510181", "dibao", "2026-02")
    assert standard is not None and standard.standard_per_person == 112000 and standard.publisher == "51"
    assert find_standard(fed.member("44"), "510181", "dibao", "2024-02") is None
    records = [r for r in _coordinator_audit(fed) if r["decision"] == "standards.publish"]
    assert records and records[-1]["requester"] == "51" and records[-1]["extra"]["version"] == "1"


def test_cli_refuses_bad_documents_in_one_line(fed: Federation, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A malformed file, or another province's document, is refused locally: exit 2, one line on stderr."""
    bad = tmp_path / "bad.toml"
    bad.write_text(SICHUAN.read_text(encoding="utf-8").replace("standard_per_person = 91000", "standard_per_person = 910.0"),
                   encoding="utf-8")
    code, _, err = _cli(capsys, "standards", "publish", "--config", fed.configs["51"], bad)
    assert code == 2 and err.count("\n") == 1 and "standard_per_person must be an integer" in err and "standard #1" in err
    code, _, err = _cli(capsys, "standards", "publish", "--config", fed.configs["44"], SICHUAN)
    assert code == 2 and err.count("\n") == 1 and "publishes only its own" in err
    code, _, err = _cli(capsys, "standards", "show", "--config", fed.configs["44"], "--period", "2024-13")
    assert code == 2 and "YYYY-MM" in err


def test_document_signed_by_another_province_is_refused(fed: Federation) -> None:
    """A document naming Jiangsu but signed by Guangdong is refused, whoever sends it, and audited."""
    forged = sign_standards(fed.member("44"), _document(fed, "32", 1))
    for caller in ("44", "32"):
        with pytest.raises(PeerRefused) as info:
            _publish(fed, caller, forged)
        assert "signed by the province it names" in str(info.value)
    assert "32" not in fetch_standards(fed.member("51"))
    refused = [r for r in _coordinator_audit(fed) if r["decision"] == "refused:IDENTITY_MISMATCH"]
    assert any(r["extra"].get("call") == "PublishStandards" for r in refused)


def test_province_cannot_publish_for_another(fed: Federation) -> None:
    """Jiangsu's own signed document sent over Guangdong's connection is refused (the caller must be the publisher)."""
    signed = sign_standards(fed.member("32"), _document(fed, "32", 1))
    with pytest.raises(PeerRefused, match="only its own"):
        _publish(fed, "44", signed)


def test_forged_signature_is_refused(fed: Federation) -> None:
    """A body changed after signing does not verify at the coordinator."""
    signed = sign_standards(fed.member("32"), _document(fed, "32", 1))
    tampered = canonical_bytes(_document(fed, "32", 1, standard=1))
    with pytest.raises(PeerRefused, match="does not verify"):
        _publish(fed, "32", coordinator_pb2.SignedStandards(body=tampered, signature=signed.signature))


def test_version_must_increase(fed: Federation) -> None:
    """Version 1 then 2 are accepted; 2 again and 1 after it are refused, and version 2 stays in force."""
    member = fed.member("44")
    assert _publish(fed, "44", sign_standards(member, _document(fed, "44", 1, standard=100000))).version == 1
    assert _publish(fed, "44", sign_standards(member, _document(fed, "44", 2, standard=110000))).version == 2
    for version in (2, 1):
        with pytest.raises(PeerRefused, match=f"version {version} is not above version 2"):
            _publish(fed, "44", sign_standards(member, _document(fed, "44", version, standard=1)))
    doc = fetch_standards(fed.member("51"))["44"]
    assert doc.version == 2 and doc.standards[0].standard_per_person == 110000


def test_documents_survive_a_coordinator_restart(fed: Federation) -> None:
    """The coordinator persists what it carries: after a restart the directory still has every document."""
    member = fed.member("32")
    _publish(fed, "32", sign_standards(member, _document(fed, "32", 7)))
    fed.stop_node("coordinator")
    fed.start_coordinator()
    documents = fetch_standards(fed.member("44"))
    assert documents["32"].version == 7 and "51" in documents


def test_tampered_directory_entry_is_detected(fed: Federation) -> None:
    """A coordinator that changes a carried figure and re-signs the directory is caught by the province's signature."""
    member = fed.member("32")
    _publish(fed, "32", sign_standards(member, _document(fed, "32", 8, standard=95000)))
    with fed.coordinator("44") as coordinator:
        signed_dir = coordinator.call("Directory", coordinator_pb2.DirectoryRequest())
    body = coordinator_pb2.DirectoryBody.FromString(signed_dir.body)
    honest = verify_directory(signed_dir, member.verifier)
    assert honest.standards["32"].standards[0].standard_per_person == 95000 and honest.rejected_standards == ()
    for entry in body.standards:
        doc = from_canonical(entry.body)
        if doc.province == "32":
            raw = json.loads(entry.body)
            raw["standard"][0]["standard_per_person"] = 1  # a lower standard: fewer households eligible
            entry.body = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    coordinator_key = Member(config_mod.load(fed.coordinator_config)).signer
    forged_body = body.SerializeToString()
    forged = coordinator_pb2.SignedDirectory(body=forged_body, signature=coordinator_key.sign(signing.DIRECTORY, forged_body))
    checked = verify_directory(forged, member.verifier)
    assert "32" not in checked.standards and checked.rejected_standards == ("32",)
    assert "51" in checked.standards and set(checked) == set(honest)  # the rest of the directory still verifies
    unsigned = coordinator_pb2.SignedDirectory(body=forged_body, signature=signed_dir.signature)
    with pytest.raises(Refusal) as info:
        verify_directory(unsigned, member.verifier)
    assert info.value.code is ErrorCode.UNAUTHENTICATED


def test_tampered_coordinator_storage_is_not_carried(fed: Federation) -> None:
    """A document edited in the coordinator's standards file is dropped when re-read: the directory never carries it."""
    cfg = config_mod.load(fed.coordinator_config)
    path = cfg.data_dir / "standards.json"
    stored = json.loads(path.read_text())
    edited = []
    for text in stored["standards"]:
        signed = coordinator_pb2.SignedStandards.FromString(bytes.fromhex(text))
        if json.loads(signed.body)["province"] == "51":
            signed.body = signed.body.replace(b'"standard_per_person":86000', b'"standard_per_person":86001')
        edited.append(signed.SerializeToString().hex())
    fed.stop_node("coordinator")
    path.write_text(json.dumps({"standards": edited}))
    fed.start_coordinator()
    directory = fetch_directory(fed.member("44"))
    assert "51" not in directory.standards and directory.rejected_standards == ()
    assert "32" in directory.standards
