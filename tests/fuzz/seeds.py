"""Seed corpora: valid inputs of every target, made with the project's own builders (`python -m tests.fuzz.seeds`).

Rewrites tests/fuzz/corpus/<target>/seed-*. Seeds signed by a member stay valid in later runs
because the fuzz world's keys are the same every time (tests.fuzz.world.deterministic_keys);
signatures carry the certificates of the run that made them, so seeds that depend on them
(receipts and holder sets inside queries) reach the deep paths for the certificates' 730 days.
Re-run this when a message changes or they have expired.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from node.coordinator.consents import CONSENT_REQUEST_DOMAIN
from node.crypto import discovery, locator, masks, pki, possession, revocation, sealing, signing
from node.domain import standards
from node.domain.regions import province_uri
from node.service.consent import commitment
from node.testing import consents
from node.testing.standards import standards_document
from node.wire.v1 import common_pb2, coordinator_pb2, household_pb2, verification_pb2
from node.coordinator.directory import ANNOUNCEMENT
from tests.fuzz.harnesses import TARGETS
from tests.fuzz.world import (DISCOVERY_CONSENT, EPOCH, FACTS, HOLDER, KEY_PASSPHRASE, NOW_MS, REQUESTER, SPOUSE,
                              WORKER, world)

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent.parent
SALT = bytes(range(16))


def _sign(who: str, domain: str, body: bytes) -> common_pb2.Signature:
    return world().signer(who).sign(domain, body)


def receipt(**kw: object) -> verification_pb2.SignedConsent:
    """The coordinator's receipt for a consent request the requester signed (`kw` overrides request fields)."""
    w = world()
    fields: dict[str, object] = dict(
        requester=REQUESTER, request_id="fuzz-consent-0001", nonce=bytes(16), issued_at_ms=NOW_MS - 3_600_000,
        purpose="dibao", scopes=["deposit", "income", "real_estate"],
        subject_commitments=[commitment(SALT, w.token(i)) for i in (WORKER, SPOUSE)], subject_salt=SALT,
        not_before_ms=NOW_MS - 86_400_000, not_after_ms=NOW_MS + 86_400_000, case_reference="case-2026-11",
        evidence_algorithm="sha256", evidence_digest=bytes(32))
    consent_id = str(kw.pop("consent_id", "c-fuzz-0001"))
    fields.update(kw)
    raw, signature = consents.sign_request(w.signer(str(fields["requester"])), **fields)
    return consents.issue(w.signer("coordinator"), raw, signature, consent_id=consent_id,
                          registered_at_ms=NOW_MS - 3_600_000)


def _reply_key() -> bytes:
    return masks.public_bytes(world().seal_keys[REQUESTER])


def query_body(request_id: str = "req-fuzz-0001", checks: Iterable[tuple[str, int, int]] = (
        ("deposit.balance_total", common_pb2.LE, 2_000_000), ("income.wage_monthly", common_pb2.GT, 100_000)),
        ids: Iterable[str] = (WORKER,), audience: str = HOLDER) -> verification_pb2.QueryBody:
    w = world()
    return verification_pb2.QueryBody(
        requester=REQUESTER, request_id=request_id, nonce=bytes(range(16)), issued_at_ms=NOW_MS, purpose="dibao",
        subjects=[w.token(i) for i in ids], checks=[common_pb2.Check(attribute=a, op=op, operand=v) for a, op, v in checks],
        consent=receipt(), audience=audience, reply_seal_suite=sealing.SUITE_NAME, reply_seal_key=_reply_key())


def _locked(body: verification_pb2.QueryBody, ids: Iterable[str]) -> verification_pb2.LockedQuery:
    w = world()
    raw = body.SerializeToString()
    signed = verification_pb2.SignedQuery(body=raw, signature=_sign(REQUESTER, signing.QUERY, raw)).SerializeToString()
    ids = list(ids)
    locked, _ = possession.lock(signed, tokens=[w.token(i) for i in ids], keys=[w.possession(i) for i in ids],
                                recipient=province_uri(HOLDER), request_id=body.request_id)
    return locked


def _holder_set(**kw: object) -> household_pb2.HolderSetBody:
    fields: dict[str, object] = dict(round_id="round-fuzz-0001", consent_id="c-fuzz-0001", requester=REQUESTER,
                                     holders=[HOLDER, REQUESTER], issued_at_ms=NOW_MS)
    fields.update(kw)
    return household_pb2.HolderSetBody(**fields)  # type: ignore[arg-type]


def contribution_seed(measures: Iterable[str] = ("financial_assets", "income_monthly")) -> household_pb2.ContributionQueryBody:
    w = world()
    hs = _holder_set().SerializeToString()
    return household_pb2.ContributionQueryBody(
        requester=REQUESTER, round_id="round-fuzz-0001", nonce=bytes(range(16)), issued_at_ms=NOW_MS, purpose="dibao",
        subjects=[w.token(WORKER), w.token(SPOUSE)], measures=list(measures),
        consent=receipt(scopes=[]),
        holder_set=household_pb2.SignedHolderSet(body=hs, signature=_sign("coordinator", signing.HOLDER_SET, hs)),
        audience=HOLDER, reply_seal_suite=sealing.SUITE_NAME, reply_seal_key=_reply_key())


def _announcement(code: str) -> bytes:
    w = world()
    m = w.members[code]
    tls = pki.load_cert(m.cfg.tls_cert).public_bytes(Encoding.DER)
    return coordinator_pb2.AnnouncementBody(
        province=code, endpoint=f"node{code}.example:7443", seal_suite=sealing.SUITE_NAME,
        seal_public_key=masks.public_bytes(w.seal_keys[code]), tls_cert_sha256=hashlib.sha256(tls).digest(),
        issued_at_ms=NOW_MS, mask_public_key=w.mask_publics[code]).SerializeToString()


def _standards_doc(province: str = REQUESTER, region: str = "510100") -> bytes:
    m = world().holder
    return standards.canonical_bytes(standards.parse_standards(standards_document(province=province, region=region),
                                                               m.catalogue, m.policy))


def _no_comments(text: str) -> bytes:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")).encode("utf-8") + b"\n"


def _answer_seeds() -> tuple[bytes, bytes, bytes]:
    """(answer body, answer file, contribution body) the holder's own services make for the seed queries."""
    w = world()
    raw = w.sent_query
    sent = verification_pb2.QueryBody.FromString(raw)
    decided = w.verification.decide(verification_pb2.SignedQuery(body=raw, signature=_sign(REQUESTER, signing.QUERY, raw)),
                                    REQUESTER)
    answer_body = decided.answer.SerializeToString()
    signed_answer = verification_pb2.SignedAnswer(body=answer_body, signature=_sign(HOLDER, signing.ANSWER, answer_body))
    answer_file = json.dumps({"format": "hedui-answer/v1", "request_id": sent.request_id, "answers": [
        {"province": HOLDER, "query": base64.b64encode(raw).decode(),
         "answer": base64.b64encode(signed_answer.SerializeToString()).decode()}]}, indent=1).encode()
    cq = contribution_seed().SerializeToString()
    made = w.household.contribute(household_pb2.SignedContributionQuery(
        body=cq, signature=_sign(REQUESTER, signing.CONTRIBUTION_QUERY, cq)), REQUESTER, w.mask_publics)
    return answer_body, answer_file, made.body.SerializeToString()


def _record_seeds(contribution_body: bytes) -> tuple[bytes, bytes]:
    """A household decision record (as `household check` writes it) and its check-batch results line."""
    from node.client import decision_record as dr

    w = world()
    holder_set = contribution_seed().holder_set
    signed = household_pb2.SignedContribution(body=contribution_body, signature=_sign(HOLDER, signing.CONTRIBUTION,
                                                                                       contribution_body))
    doc = _standards_doc()
    standard = coordinator_pb2.SignedStandards(body=doc, signature=_sign(REQUESTER, signing.STANDARDS, doc))
    parsed = standards.from_canonical(doc, w.holder.catalogue, w.holder.policy)
    entry = parsed.find("510100", "dibao", "2026-11")
    measures = sorted(entry.measures)
    totals = {m: 0 for m in measures}
    decision = standards.evaluate(entry, 2, totals, complete=False, region="510100", period="2026-11").to_json()
    body = dr.record_body(requester=REQUESTER, consent_id="c-fuzz-0001", purpose="dibao", region="510100",
                          period="2026-11", members=2, measures=measures, decision=decision,
                          routing={HOLDER: "answered", REQUESTER: "own"}, missing=[], as_of=("2026-09-30", "2026-10-31"),
                          holder_set=holder_set, contributions=[signed], standard=standard, decided_at_ms=NOW_MS)
    record = dr.signed_record(body, _sign(REQUESTER, signing.HOUSEHOLD_DECISION, dr.canonical(body)))
    line = {"household": "h1", **decision, "routing": body["routing"], "missing": [], "as_of": body["as_of"],
            "consent_id": "c-fuzz-0001", "round_id": "round-fuzz-0001", "record": record}
    return json.dumps(record).encode(), json.dumps(line).encode()


def _consent_request() -> bytes:
    w = world()
    return coordinator_pb2.ConsentRequestBody(
        requester=REQUESTER, request_id="creq-fuzz-0001", nonce=bytes(range(16)), issued_at_ms=NOW_MS, purpose="dibao",
        subject_salt=SALT, subject_commitments=[commitment(SALT, w.token(i)) for i in (WORKER, SPOUSE)],
        scopes=["deposit", "income"], not_before_ms=NOW_MS - 60_000, not_after_ms=NOW_MS + 30 * 86_400_000,
        case_reference="case-2026-11", evidence_algorithm="sha256", evidence_digest=bytes(32)).SerializeToString()


def discovery_consent_request() -> coordinator_pb2.RegisterConsentRequest:
    """The consent (both household members, committed for the world's discovery epochs) the discovery seeds name."""
    w = world()
    nb, na = NOW_MS - 60_000, NOW_MS + 30 * 86_400_000
    epochs = range(EPOCH, EPOCH + 5)  # consent_epochs starts at the real clock's epoch; the world's clock is fixed
    tokens = [w.token(i) for i in (WORKER, SPOUSE)]
    body = coordinator_pb2.ConsentRequestBody(
        requester=REQUESTER, request_id="creq-fuzz-discovery", nonce=bytes(range(1, 17)), issued_at_ms=NOW_MS,
        purpose="dibao", subject_salt=SALT, subject_commitments=[commitment(SALT, t) for t in tokens],
        scopes=["deposit", "income"], not_before_ms=nb, not_after_ms=na, case_reference="case-2026-11",
        discovery_commitments=discovery.consent_commitments(SALT, tokens, epochs),
        discovery_first_epoch=epochs.start).SerializeToString()
    return coordinator_pb2.RegisterConsentRequest(body=body, signature=_sign(REQUESTER, CONSENT_REQUEST_DOMAIN, body))


def _edts(epoch: int = EPOCH) -> list[bytes]:
    return [discovery.discovery_token(world().token(i), epoch) for i in (WORKER, SPOUSE)]


def _locator_seeds() -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(locator bodies, signed locators, shards with their count) of the holder's locator for the world's epoch."""
    edts = _edts()
    bits, shards = locator.build(edts, len(edts))
    bodies = [coordinator_pb2.LocatorBody(
        province=HOLDER, epoch=EPOCH, filter_kind=locator.FILTER_KIND, subject_count=len(edts), shard_bits=bits,
        shard=i, shard_count=n, filter=data, generation=NOW_MS + g).SerializeToString()
        for g in (0, 1) for i, (n, data) in enumerate(shards)]
    signed = [coordinator_pb2.SignedLocator(body=b, signature=_sign(HOLDER, signing.LOCATOR, b)).SerializeToString()
              for b in bodies[:1]]
    _, big = locator.build([hashlib.sha256(b"%d" % i).digest() for i in range(300)], 300)
    shard_seeds = [n.to_bytes(4, "little") + data for n, data in shards + big[:1]]
    return bodies, signed, shard_seeds


def _discovery_seeds() -> dict[str, list[bytes]]:
    edts = _edts()
    fresh = household_pb2.OpenRoundRequest(consent_id=DISCOVERY_CONSENT, round_id="round-fuzz-0002",
                                           discovery_tokens=edts, epoch=EPOCH)
    return {
        "discover": [coordinator_pb2.DiscoverRequest(consent_id=DISCOVERY_CONSENT, request_id="req-fuzz-0003",
                                                     discovery_tokens=edts, epoch=EPOCH).SerializeToString(),
                     coordinator_pb2.DiscoverRequest(consent_id=DISCOVERY_CONSENT, request_id="req-fuzz-0004",
                                                     discovery_tokens=_edts(EPOCH + 1)[:1],
                                                     epoch=EPOCH + 1).SerializeToString()],
        "discover_batch": [coordinator_pb2.DiscoverBatchRequest(request_id="req-fuzz-0005", epoch=EPOCH, households=[
            coordinator_pb2.HouseholdDiscovery(consent_id=DISCOVERY_CONSENT, discovery_tokens=edts),
            coordinator_pb2.HouseholdDiscovery(consent_id="c-unknown", discovery_tokens=edts[:1])]).SerializeToString()],
        "open_round": [fresh.SerializeToString()],
        "open_round_batch": [household_pb2.OpenRoundBatchRequest(request_id="req-fuzz-0006", households=[
            fresh, household_pb2.OpenRoundRequest(consent_id=DISCOVERY_CONSENT, round_id="round-fuzz-0003",
                                                  discovery_tokens=edts[:1], epoch=EPOCH)]).SerializeToString()],
    }


def _checkpoint_seeds() -> tuple[list[bytes], list[bytes]]:
    """(checkpoint bodies, signed AuditCheckpoint messages): the holder's first checkpoint and one linked to it."""
    from node.store import audit
    from node.store.sqlite.chain import GENESIS

    member = province_uri(HOLDER)
    first = audit.Checkpoint(member, 3, hashlib.sha256(b"head-3").digest(), NOW_MS - 60_000, audit.NO_PREVIOUS)
    second = audit.Checkpoint(member, 7, hashlib.sha256(b"head-7").digest(), NOW_MS, first.link)
    genesis = audit.Checkpoint(member, 0, GENESIS, NOW_MS - 120_000, audit.NO_PREVIOUS)
    bodies = [c.body() for c in (first, second, genesis)]
    signer = world().signer(HOLDER)
    return bodies, [audit.sign_checkpoint(c, signer).blob for c in (first, second)]


def _witness_seeds() -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(audit head bodies, witness lines, witness files) signed by the world's coordinator."""
    from node.store import witness

    w = world()
    audit_bodies = [coordinator_pb2.AuditHeadBody(head_index=i, head_hash=hashlib.sha256(b"%d" % i).digest(),
                                                  at_ms=NOW_MS + i, anchor_index=0).SerializeToString(deterministic=True)
                    for i in (1, 40)]
    chain = w.registry.chain
    index, digest = chain.head()
    from node.store import ledger as ledger_mod

    ident = ledger_mod.read_identity(chain)
    lines = []
    for at in (NOW_MS, NOW_MS + 60_000):
        body = coordinator_pb2.LedgerHeadBody(ledger_id=ident.ledger_id if ident else b"", epoch=ident.epoch if ident else b"",
                                              head_index=index, head_hash=digest).SerializeToString()
        signed = coordinator_pb2.SignedLedgerHead(body=body, signature=_sign("coordinator", signing.REVOCATIONS, body))
        lines.append(witness.Head(index, digest, ident.epoch if ident else b"", ident.ledger_id if ident else b"",
                                  signed.SerializeToString(), at, "").to_json_line().encode())
    audit_signed = coordinator_pb2.SignedAuditHead(body=audit_bodies[0], signature=_sign(
        "coordinator", signing.AUDIT_HEAD, audit_bodies[0])).SerializeToString()
    lines.append(witness.Head(1, hashlib.sha256(b"1").digest(), blob=audit_signed, at_ms=NOW_MS).to_json_line().encode())
    return audit_bodies, lines, [b"\n".join(lines[:2]) + b"\n", lines[0] + b"\n" + b'{"at": 1}\n' + lines[1]]


def _key_seeds() -> list[bytes]:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from node.crypto import keyfile

    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    return [keyfile.pem_of(key), keyfile.pem_of(key, KEY_PASSPHRASE)]


def seeds() -> dict[str, list[bytes]]:
    """Target name -> its seed inputs."""
    w = world()
    m = w.holder
    csv = "id_number,attribute,value,as_of,source\n" + "".join(",".join(map(str, r)) + "\n" for r in FACTS)
    jsonl = "".join(json.dumps(dict(zip(("id_number", "attribute", "value", "as_of", "source"), r, strict=True)),
                               ensure_ascii=False) + "\n" for r in FACTS)
    small_catalogue = (REPO / "config/catalogue.toml").read_text(encoding="utf-8")
    items = re.split(r"\n(?=\[\[)", _no_comments(small_catalogue).decode())
    tiny = "\n".join([items[0]] + [b for b in items if 'code = "income.wage_monthly"' in b or 'code = "pension.monthly"' in b
                                   or 'code = "unemployment.benefit_monthly"' in b or 'code = "income_monthly"' in b])
    rec = receipt()
    consents = "household,consent_id,receipt\nh1,c-fuzz-0001," + base64.b64encode(rec.SerializeToString()).decode() + "\n"
    pki_dir = w.root / "pki"
    crl_report = revocation.revoke(pki_dir, serials=[4242, 77])
    del crl_report
    crl_pem = (pki_dir / "crl.pem").read_bytes()
    sign_der = pki.load_cert(m.cfg.sign_cert).public_bytes(Encoding.DER)
    many = w.signer(REQUESTER).sign_many([(signing.QUERY, b"fuzz"), (signing.QUERY, b"other")])
    directory = coordinator_pb2.DirectoryBody(issued_at_ms=NOW_MS, members=[
        coordinator_pb2.SignedAnnouncement(body=a, signature=_sign(code, ANNOUNCEMENT, a))
        for code, a in ((c, _announcement(c)) for c in (HOLDER, REQUESTER))],
        standards=[coordinator_pb2.SignedStandards(body=_standards_doc(), signature=_sign(
            REQUESTER, signing.STANDARDS, _standards_doc()))])
    q1 = query_body()
    q2 = query_body("req-fuzz-0002", [("real_estate.count", common_pb2.EQ, 0)], ids=(WORKER, SPOUSE))
    l1, l2 = _locked(q1, [WORKER]), _locked(q2, [WORKER, SPOUSE])
    answer_body, answer_file, contribution_body = _answer_seeds()
    record, line = _record_seeds(contribution_body)
    locator_bodies, signed_locators, shards = _locator_seeds()
    checkpoint_bodies, checkpoint_messages = _checkpoint_seeds()
    audit_heads, witness_lines, witness_files = _witness_seeds()
    return {
        **_discovery_seeds(),
        "locator_body": locator_bodies,
        "signed_locator": signed_locators,
        "locator_shard": shards,
        "checkpoint": checkpoint_bodies,
        "checkpoint_message": checkpoint_messages,
        "audit_head": audit_heads,
        "witness_line": witness_lines,
        "witness_dir": witness_files,
        "private_key": _key_seeds(),
        "answer": [answer_body],
        "contribution": [contribution_body],
        "answer_file": [answer_file],
        "decision_record": [record],
        "results_line": [line],
        "consent_request": [_consent_request()],
        "check_expression": [b"deposit.balance_total<=2000000", b"income.wage_monthly>100000", b"real_estate.count==0",
                             b"vehicle.count != 1", b"securities.value_total>=0"],
        "standards_toml": [standards_document().encode("utf-8"),
                           _no_comments((REPO / "config/standards/44-guangdong.toml").read_text(encoding="utf-8"))],
        "standards_canonical": [_standards_doc(), _standards_doc("44", "440100")],
        "standards_signed": [_standards_doc()],
        "ingest_csv": [csv.encode("utf-8")],
        "ingest_jsonl": [jsonl.encode("utf-8")],
        "member_config": [Path(m.cfg.path).read_bytes(), Path(w.members["coordinator"].cfg.path).read_bytes()],
        "catalogue_toml": [tiny.encode("utf-8")],
        "policy_toml": [_no_comments((REPO / "config/policy.toml").read_text(encoding="utf-8"))],
        "households_csv": [f"household,id_number,region\nh1,{WORKER},510100\nh1,{SPOUSE},510100\n".encode(),
                           f"household,id_number,evidence_sha256\nh2,{WORKER},{'ab' * 32}\n".encode()],
        "consents_csv": [consents.encode("ascii")],
        "id_number": [WORKER.encode(), SPOUSE.lower().encode(), f" {WORKER[:6]} {WORKER[6:14]} {WORKER[14:]} ".encode(),
                      f"call {WORKER} now".encode()],
        "free_text": [b"case-2026-11", b"SC/2026/chengdu.17"],
        "web_case_form": [f"region=510104&purpose=dibao&applicant=Zhang+Wei&notes=&id_1={WORKER}&wage_1=5%2C678.00"
                          f"&deposit_1=&id_2={SPOUSE}&wage_2=&deposit_2=1500&consent_days=30".encode()],
        "evidence_json": [json.dumps({"format": "hedui-answer/v1", "query": "AAEC", "answers": [{"a": [1, 2]}]}).encode()],
        "crl": [crl_pem, revocation.der_and_digest(pki_dir / "crl.pem")[0]],
        "signing_cert": [sign_der],
        "tls_peer_cert": [pki.load_cert(m.cfg.tls_cert).public_bytes(Encoding.PEM)],
        "signature": [_sign(REQUESTER, signing.QUERY, b"fuzz").SerializeToString(), many[0].SerializeToString()],
        "announcement": [_announcement(HOLDER)],
        "directory": [directory.SerializeToString()],
        "ledger_head": [coordinator_pb2.LedgerHeadBody(
            ledger_id=bytes(16), epoch=bytes(range(16)), head_index=12, head_hash=bytes(32),
            lineage=[coordinator_pb2.EpochLimit(epoch=b"", last_index=3)]).SerializeToString()],
        "consent_receipt": [receipt().body, receipt(scopes=[]).body],
        "holder_set": [_holder_set().SerializeToString(), _holder_set(missing=["33"], holders=["33", "44", "51"],
                                                                      previous_round_id="round-fuzz-0000").SerializeToString()],
        "query": [q1.SerializeToString(), q2.SerializeToString()],
        "contribution_query": [contribution_seed().SerializeToString(), contribution_seed(["income_monthly"]).SerializeToString()],
        "sealed_query": [sealing.seal(l1.SerializeToString(), kind=sealing.QUERY, recipient=province_uri(HOLDER),
                                      public_key=masks.public_bytes(w.seal_keys[HOLDER])).SerializeToString()],
        "locked_query": [l1.SerializeToString(), l2.SerializeToString()],
        "locked_batch": [verification_pb2.LockedBatch(queries=[l1, l2]).SerializeToString()],
        "audit_refusal": [q1.SerializeToString()],
    }


def main(argv: list[str]) -> int:
    from tests.fuzz.world import SENT_QUERY

    SENT_QUERY.unlink(missing_ok=True)  # the world then makes a fresh one with today's messages
    SENT_QUERY.write_bytes(world().sent_query)
    made = seeds()
    missing = set(TARGETS) - set(made)
    if missing:
        print(f"no seeds for: {', '.join(sorted(missing))}", file=sys.stderr)
        return 1
    for name in sorted(set(argv) or made):
        folder = ROOT / "corpus" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for n, data in enumerate(made[name], 1):
            (folder / f"seed-{n}").write_bytes(data)
        print(f"{name}: {len(made[name])} seed(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
