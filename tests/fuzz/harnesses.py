"""One fuzz harness per decoder of outside bytes; `check` holds each to its contract (a value or a typed error).

A harness takes the raw bytes an outsider controls and hands them to the project's own public
decoder the way the real caller does. Contract: the decoder returns, or raises a HeduiError
(node/errors.py) or an error the target's caller documents and handles (`Target.allowed`).
Anything else, a hang or a crash is a finding. Where the bytes are a message body that is
signed on the wire, the harness signs them with a real member key, so the fuzzer reaches what
the service does after the signature verifies (a forged signature is the `signature` target).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError, Message

from node import config as config_mod
from node import files
from node.cli.answer_cmd import load_answer_file
from node.client import decision_record as decision_record_mod
from node.client.batch import read_consents, read_households
from node.client.household import check_contribution
from node.client.query import check_answer
from node.client.saved_answers import check_documents
from node.config import DiscoveryPolicy
from node.coordinator.audit_heads import load_witnesses, parse_audit_head
from node.coordinator.consents import CONSENT_REQUEST_DOMAIN
from node.coordinator.locators import LocatorBook
from node.coordinator.server import CoordinatorServicer
from node.coordinator.directory import ANNOUNCEMENT, verify_announcement, verify_directory
from node.coordinator.standards import verify_standards
from node.crypto import keyfile, locator, pki, revocation, sealing, signing
from node.crypto.evidence import Evidence
from node.domain import freetext, idnumber, predicate, request_ids, standards
from node.domain.catalogue import load_catalogue
from node.domain.policy import load_policy
from node.domain.regions import province_uri
from node.errors import ErrorCode, HeduiError, Refusal
from node.service.consent import parse_ledger_head, parse_receipt
from node.service.household import verify_holder_set
from node.service.possession import signed_query
from node.service.verification import require_usable_reply_key
from node.store import audit, witness
from node.store.sqlite.chain import HashChain
from node.store.ingest import ingest_file
from node.wire.v1 import common_pb2, coordinator_pb2, household_pb2, verification_pb2
from tests.fuzz.world import (DISCOVERY_CONSENT, EPOCH, HOLDER, KEY_PASSPHRASE, NOW_MS, NOW_S, REQUESTER, TODAY,
                              WORKER, world)


class ContractViolation(AssertionError):
    """A decoder broke its contract on an input: the input is a finding."""


def _wire(message: type[Message], data: bytes) -> Message | None:
    """`data` decoded as gRPC decodes a request (None when it does not decode: the server answers MALFORMED)."""
    try:
        return message.FromString(data)
    except DecodeError:
        return None


def _text(data: bytes) -> str:
    """Bytes as the text a command line or a form gives (undecodable bytes kept as surrogates)."""
    return data.decode("utf-8", "surrogateescape")


def _file(name: str, data: bytes) -> Path:
    """`data` as the file `name` in the fuzz world's inputs folder (rewritten for every input)."""
    path = world().tmp(name)
    path.write_bytes(data)
    return path


# -- text and files ---------------------------------------------------------------------------

def check_expression(data: bytes) -> None:
    predicate.parse_check(_text(data))


def standards_toml(data: bytes) -> None:
    m = world().holder
    standards.parse_standards(data, m.catalogue, m.policy)


def standards_canonical(data: bytes) -> None:
    m = world().holder
    standards.from_canonical(data, m.catalogue, m.policy)


def ingest_csv(data: bytes) -> None:
    w = world()
    ingest_file(w.ingest_store, _file("facts.csv", data), linkage_key=w.holder.linkage_key,
                catalogue=w.holder.catalogue, today=TODAY)


def ingest_jsonl(data: bytes) -> None:
    w = world()
    ingest_file(w.ingest_store, _file("facts.jsonl", data), linkage_key=w.holder.linkage_key,
                catalogue=w.holder.catalogue, today=TODAY)


def member_config(data: bytes) -> None:
    config_mod.load(_file("member.toml", data))


def catalogue_toml(data: bytes) -> None:
    load_catalogue(_file("catalogue.toml", data))


def policy_toml(data: bytes) -> None:
    load_policy(_file("policy.toml", data), catalogue=world().holder.catalogue)


def households_csv(data: bytes) -> None:
    read_households(_file("households.csv", data), max_members=16)


def consents_csv(data: bytes) -> None:
    read_consents(_file("consents.csv", data))


def id_number(data: bytes) -> None:
    """An ID number as typed on the command line, in a CSV cell or a web form; then the text scans for one."""
    text = _text(data)
    with contextlib.suppress(idnumber.InvalidIdNumber):
        idnumber.validate(text, today=TODAY)
    idnumber.redact(text)
    idnumber.contains_id_number(text)


def free_text(data: bytes) -> None:
    """A case reference (stored in the ledger, sent in every query) and the echo of a value in an error."""
    text = _text(data)
    freetext.show(text)
    freetext.case_reference(text)


def web_case_form(data: bytes) -> None:
    """A case form posted to the web app (urlencoded fields), validated by node.web.cases.parse_case."""
    from node.web.cases import FormErrors, parse_case

    fields = dict(urllib.parse.parse_qsl(_text(data), keep_blank_values=True))
    with contextlib.suppress(FormErrors):  # the page shows each problem next to its field
        parse_case(fields, province=REQUESTER, purposes=tuple(world().holder.policy.purposes))


def evidence_json(data: bytes) -> None:
    files.parse_json(data)


# -- certificates and signatures --------------------------------------------------------------

def crl(data: bytes) -> None:
    """A CRL as the node takes it from the coordinator's feed (a CrlFile of its own: nothing else is revoked)."""
    w = world()
    folder = w.tmp("crl")
    shutil.rmtree(folder, ignore_errors=True)  # each input starts from no accepted CRL
    folder.mkdir()
    crl_file = revocation.CrlFile(folder / "crl.pem", pki.TrustAnchor.load(w.holder.cfg.ca_cert),
                                  state_path=folder / revocation.CRL_STATE_FILE)
    crl_file.accept(data)


def signing_cert(data: bytes) -> None:
    world().holder.anchor.validate_signing_cert(data)


def tls_peer_cert(data: bytes) -> None:
    world().holder.anchor.validate_tls_peer_cert(data)


def signature(data: bytes) -> None:
    sig = _wire(common_pb2.Signature, data)
    if sig is None:
        return
    sig.key_id = hashlib.sha256(sig.certificate).digest()  # else the first check ends every input
    world().holder.verifier.verify(sig, signing.QUERY, b"fuzz")


# -- messages the coordinator signs, as a node reads them --------------------------------------

def _by(who: str, domain: str, body: bytes) -> common_pb2.Signature:
    return world().signer(who).sign(domain, body)


def directory(data: bytes) -> None:
    signed = coordinator_pb2.SignedDirectory(body=data, signature=_by("coordinator", signing.DIRECTORY, data))
    verify_directory(signed, world().holder.verifier)


def ledger_head(data: bytes) -> None:
    signed = coordinator_pb2.SignedLedgerHead(body=data, signature=_by("coordinator", signing.REVOCATIONS, data))
    parse_ledger_head(signed, world().holder.verifier)


def consent_receipt(data: bytes) -> None:
    w = world()
    receipt = verification_pb2.SignedConsent(body=data, signature=_by("coordinator", signing.CONSENT, data))
    body = parse_receipt(receipt, w.holder.verifier)
    query = verification_pb2.QueryBody(requester=body.requester or REQUESTER, purpose=body.purpose,
                                       subjects=[w.token(WORKER)], consent=receipt)
    w.gate.check_items(query, ["deposit.balance_total"])


def holder_set(data: bytes) -> None:
    signed = household_pb2.SignedHolderSet(body=data, signature=_by("coordinator", signing.HOLDER_SET, data))
    verify_holder_set(signed, world().holder.verifier)


# -- messages provinces sign ---------------------------------------------------------------------

def announcement(data: bytes) -> None:
    signed = coordinator_pb2.SignedAnnouncement(body=data, signature=_by(HOLDER, ANNOUNCEMENT, data))
    verify_announcement(signed, world().holder.verifier)


def standards_signed(data: bytes) -> None:
    m = world().holder
    signed = coordinator_pb2.SignedStandards(body=data, signature=_by(REQUESTER, signing.STANDARDS, data))
    verify_standards(signed, m.verifier, catalogue=m.catalogue, policy=m.policy)


def query(data: bytes) -> None:
    """A verification query body as the holder receives it directly from the requester (Verify, signed)."""
    w = world()
    signed = verification_pb2.SignedQuery(body=data, signature=_by(REQUESTER, signing.QUERY, data))
    w.verification.decide(signed, REQUESTER)


def contribution_query(data: bytes) -> None:
    """A household contribution query body as the holder receives it (Contribute)."""
    w = world()
    signed = household_pb2.SignedContributionQuery(body=data, signature=_by(REQUESTER, signing.CONTRIBUTION_QUERY, data))
    w.household.contribute(signed, REQUESTER, w.mask_publics)


def sealed_query(data: bytes) -> None:
    """A sealed query (Verify relayed by the coordinator): open, unlock, decide."""
    w = world()
    sealed = _wire(common_pb2.Sealed, data)
    if sealed is None:
        return
    try:
        raw = sealing.open_sealed(sealed, kind=sealing.QUERY, identity=province_uri(HOLDER), private_key=w.seal_keys[HOLDER])
    except sealing.SealError:
        return
    locked_query(raw)


def locked_query(data: bytes) -> None:
    """The possession-locked query inside a sealed Verify."""
    w = world()
    locked = _wire(verification_pb2.LockedQuery, data)
    if locked is None:
        return
    unlocked = w.unlocker.unlock(locked)
    w.verification.decide(signed_query(unlocked), None, lock=unlocked)


def locked_batch(data: bytes) -> None:
    """The possession-locked queries inside a sealed VerifyBatch, as the servicer takes them apart."""
    w = world()
    batch = _wire(verification_pb2.LockedBatch, data)
    if batch is None:
        return
    opened = w.unlocker.unlock_many(list(batch.queries[:64]))
    unlocked = [o for o in opened if not isinstance(o, HeduiError)]
    if not unlocked:
        return
    contents = []
    for o in unlocked:
        try:
            contents.append(signed_query(o))
        except HeduiError:
            continue
    require_usable_reply_key(c.body for c in contents)
    for o, content in zip(unlocked, contents, strict=False):
        try:
            w.verification.decide(content, None, lock=o)
        except HeduiError:
            continue


# -- what a requester takes back, and the evidence files it keeps --------------------------------

def answer(data: bytes) -> None:
    """A holder's answer body, checked by the requester against the query it sent."""
    w = world()
    signed = verification_pb2.SignedAnswer(body=data, signature=_by(HOLDER, signing.ANSWER, data))
    sent = w.sent_query
    check_answer(signed, verification_pb2.QueryBody.FromString(sent), sent, w.holder.verifier, expect_province=HOLDER)


def contribution(data: bytes) -> None:
    """A holder's contribution to a household round, checked by the requester."""
    w = world()
    signed = household_pb2.SignedContribution(body=data, signature=_by(HOLDER, signing.CONTRIBUTION, data))
    check_contribution(signed, w.holder.verifier, holder_set=w.holder_set, requester=REQUESTER, province=HOLDER,
                       measures=["financial_assets", "income_monthly"])


def answer_file(data: bytes) -> None:
    """A saved answer file (`hedui answer verify`): every (query, answer) pair it holds is checked."""
    w = world()
    check_documents(load_answer_file(_file("answer.json", data)), Evidence.of(pki.load_cert(w.holder.cfg.ca_cert), []))


def decision_record(data: bytes) -> None:
    """A household decision record (`hedui household verify`), checked offline."""
    decision_record_mod.verify_record(files.parse_json(data), world().holder.verifier)


def results_line(data: bytes) -> None:
    """One line of `household check-batch` results (`hedui household verify RESULTS.jsonl`)."""
    decision_record_mod.check_line(files.parse_json(data), world().holder.verifier)


# -- what the coordinator takes from provinces ----------------------------------------------------

def consent_request(data: bytes) -> None:
    """A requester's consent request body as the coordinator registers it (RegisterConsent)."""
    w = world()
    request = coordinator_pb2.RegisterConsentRequest(
        body=data, signature=_by(REQUESTER, CONSENT_REQUEST_DOMAIN, data))
    w.registry.register(REQUESTER, request)


def audit_refusal(data: bytes) -> None:
    """The audit record of a refused query, made from its raw (unauthenticated) body."""
    audit.refusal(ErrorCode.MALFORMED, query=data, requester=REQUESTER)


# -- what the coordinator takes from provinces since locator discovery and linked checkpoints ------

def _book() -> LocatorBook:
    """The fuzz world's coordinator locator book, accepting the epochs around the world's clock (not the real one)."""
    w = world()
    book = getattr(w, "_locator_book", None)
    if book is None:
        folder = w.tmp("locators")
        folder.mkdir(exist_ok=True)
        book = LocatorBook(folder, w.members["coordinator"].verifier, DiscoveryPolicy(max_subjects=1_000_000))
        book.epochs = lambda: range(EPOCH - 1, EPOCH + 2)  # type: ignore[method-assign]
        w._locator_book = book  # type: ignore[attr-defined]
    return book


def locator_body(data: bytes) -> None:
    """A locator shard body as the coordinator checks and keeps it (PublishLocator), signed by the holder."""
    signed = coordinator_pb2.SignedLocator(body=data, signature=_by(HOLDER, signing.LOCATOR, data))
    _book().publish(HOLDER, signed)


def signed_locator(data: bytes) -> None:
    """A whole SignedLocator request (its signature as sent) as PublishLocator takes it."""
    signed = _wire(coordinator_pb2.SignedLocator, data)
    if signed is not None:
        _book().publish(HOLDER, signed)


def locator_shard(data: bytes) -> None:
    """Filter bytes of a shard (after a 4-byte little-endian subject count), as the coordinator loads them."""
    shard = locator.Shard(data[4:], int.from_bytes(data[:4], "little"))
    shard.contains(bytes(32))


class _Coordinator:
    """What CoordinatorServicer._check_discovery reads: the fuzz world's consent registry."""

    def __init__(self) -> None:
        self.consents = world().registry

    check_discovery = CoordinatorServicer._check_discovery


def _discovery_consent() -> str:
    """The id of a consent registered in the fuzz world with discovery commitments (DISCOVERY_CONSENT in seeds)."""
    w = world()
    cid = getattr(w, "_discovery_consent", None)
    if cid is None:
        from tests.fuzz.seeds import discovery_consent_request

        status = w.registry.register(REQUESTER, discovery_consent_request())
        cid = verification_pb2.ConsentBody.FromString(status.receipt.body).consent_id
        w._discovery_consent = cid  # type: ignore[attr-defined]
    return cid


def _consent_id(named: str) -> str:
    """The seeds name the world's discovery consent by a placeholder (its id is the registry's)."""
    return _discovery_consent() if named == DISCOVERY_CONSENT else named


def discover(data: bytes) -> None:
    """A Discover request as the coordinator checks it against the consent, then answers from its locators."""
    request = _wire(coordinator_pb2.DiscoverRequest, data)
    if request is None:
        return
    request_ids.check(request.request_id)
    _Coordinator().check_discovery(REQUESTER, _consent_id(request.consent_id), request.discovery_tokens, request.epoch)
    _book().matches([HOLDER], list(request.discovery_tokens), request.epoch)


def discover_batch(data: bytes) -> None:
    """A DiscoverBatch request: every household checked on its own, the accepted ones matched."""
    request = _wire(coordinator_pb2.DiscoverBatchRequest, data)
    if request is None:
        return
    request_ids.check(request.request_id)
    if not 1 <= len(request.households) <= 64:
        return
    asked = []
    for h in request.households:
        try:
            _Coordinator().check_discovery(REQUESTER, _consent_id(h.consent_id), h.discovery_tokens, request.epoch)
        except Refusal:
            continue
        asked.extend(h.discovery_tokens)
    _book().matches([HOLDER], asked, request.epoch)


def _open_round(h: household_pb2.OpenRoundRequest) -> None:
    request_ids.check(h.round_id)
    consent = world().registry.check_active(REQUESTER, _consent_id(h.consent_id))
    if h.HasField("previous"):
        return  # a repeat round names its previous holder set: the coordinator's own signed message
    _Coordinator().check_discovery(REQUESTER, _consent_id(h.consent_id), h.discovery_tokens, h.epoch)
    if len(set(h.discovery_tokens)) == len(consent.subject_commitments):
        _book().matches([HOLDER], list(h.discovery_tokens), h.epoch)


def open_round(data: bytes) -> None:
    """An OpenRound request (a fresh round) as the coordinator checks its discovery tokens."""
    request = _wire(household_pb2.OpenRoundRequest, data)
    if request is not None:
        _open_round(request)


def open_round_batch(data: bytes) -> None:
    """An OpenRoundBatch request: every household checked on its own."""
    request = _wire(household_pb2.OpenRoundBatchRequest, data)
    if request is None:
        return
    request_ids.check(request.request_id)
    for h in request.households[:64]:
        with contextlib.suppress(Refusal):
            _open_round(h)


def _checkpoints() -> audit.CheckpointStore:
    w = world()
    store = getattr(w, "_checkpoints", None)
    if store is None:
        store = audit.CheckpointStore(HashChain(w.tmp("checkpoints.sqlite")), w.members["coordinator"].verifier,
                                      clock=lambda: NOW_S)
        w._checkpoints = store  # type: ignore[attr-defined]
    return store


def checkpoint(data: bytes) -> None:
    """An audit checkpoint body (canonical JSON with prev_index/prev_digest), signed by the holder, lodged
    (SubmitCheckpoint): verified, then checked to extend the one held."""
    message = coordinator_pb2.AuditCheckpoint(body=data, signature=_by(HOLDER, signing.CHECKPOINT, data))
    with contextlib.suppress(audit.CheckpointInvalid):
        cp = audit.verify_checkpoint(message, world().holder.verifier)
        audit.extension_problem(cp, cp)
    _checkpoints().receive(message.SerializeToString(deterministic=True), province_uri(HOLDER))


def checkpoint_message(data: bytes) -> None:
    """A whole AuditCheckpoint message (its own signature) as SubmitCheckpoint or `audit verify` read it."""
    audit.verify_checkpoint(data, world().holder.verifier, at_signing_time=True)


def audit_head(data: bytes) -> None:
    """The coordinator's audit head body from a CheckpointAck, signed by it: parsed, then kept and re-read as a witness line."""
    w = world()
    signed = coordinator_pb2.SignedAuditHead(body=data, signature=_by("coordinator", signing.AUDIT_HEAD, data))
    head = parse_audit_head(signed, w.holder.verifier)
    folder = w.tmp("audit-witness")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    witness.WitnessFile(folder / witness.AUDIT_HEADS).offer(witness.Head(  # as CoordinatorLink._submit_checkpoint
        head.index, head.hash, blob=signed.SerializeToString(deterministic=True), at_ms=NOW_MS))
    load_witnesses([folder], witness.AUDIT_HEADS, w.members["coordinator"].verifier)


def witness_line(data: bytes) -> None:
    """One line of a witness file (ledger-heads.jsonl, audit-heads.jsonl)."""
    with contextlib.suppress(ValueError):  # WitnessFile.read reports a line that is not one, by its number
        witness.parse_line(data, "fuzz line 1")


def witness_dir(data: bytes) -> None:
    """A witness folder's ledger-heads.jsonl as `ledger verify --witness` loads it and checks the ledger against it."""
    w = world()
    folder = w.tmp("witness")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / witness.LEDGER_HEADS).write_bytes(data)
    heads, _ = load_witnesses([folder], witness.LEDGER_HEADS, w.members["coordinator"].verifier)
    chain = w.registry.chain
    witness.check_ledger(chain, heads)


def private_key(data: bytes) -> None:
    """A private key file (plain or passphrase-encrypted PKCS#8 PEM) as a node loads it with its passphrase."""
    w = world()
    path = _file("key.pem", data)
    secret = w.tmp("passphrase")
    if not secret.exists():
        secret.write_bytes(KEY_PASSPHRASE + b"\n")
    keyfile.plain_pem(path, keyfile.SecretSource(file=secret))
    keyfile.load_private_key(path, keyfile.SecretSource(file=secret))


@dataclass(frozen=True)
class Target:
    """A harness and the errors, besides HeduiError, its caller handles as a refusal."""

    run: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...] = ()


TARGETS: dict[str, Target] = {
    "check_expression": Target(check_expression),
    "standards_toml": Target(standards_toml),
    "standards_canonical": Target(standards_canonical),
    "standards_signed": Target(standards_signed),
    "ingest_csv": Target(ingest_csv),
    "ingest_jsonl": Target(ingest_jsonl),
    "member_config": Target(member_config),
    "catalogue_toml": Target(catalogue_toml),
    "policy_toml": Target(policy_toml),
    "households_csv": Target(households_csv),
    "id_number": Target(id_number),
    "free_text": Target(free_text),
    "web_case_form": Target(web_case_form),
    "consents_csv": Target(consents_csv),
    # node.files.parse_json raises ValueError (json's own) for text that is not JSON; its callers catch it.
    "evidence_json": Target(evidence_json, (ValueError,)),
    "crl": Target(crl),
    "signing_cert": Target(signing_cert),
    "tls_peer_cert": Target(tls_peer_cert),
    "signature": Target(signature),
    "announcement": Target(announcement),
    "directory": Target(directory),
    "ledger_head": Target(ledger_head),
    "consent_receipt": Target(consent_receipt),
    "holder_set": Target(holder_set),
    "query": Target(query),
    "contribution_query": Target(contribution_query),
    "sealed_query": Target(sealed_query),
    "locked_query": Target(locked_query),
    "locked_batch": Target(locked_batch),
    "answer": Target(answer),
    "contribution": Target(contribution),
    # files.parse_json raises ValueError for text that is not JSON: `household verify` reports it as such.
    "answer_file": Target(answer_file),
    "decision_record": Target(decision_record, (ValueError,)),
    "results_line": Target(results_line, (ValueError,)),
    "consent_request": Target(consent_request),
    # The servicer records a refusal without the query's fields when audit.refusal raises ValueError.
    "audit_refusal": Target(audit_refusal, (ValueError,)),
    "locator_body": Target(locator_body),
    "signed_locator": Target(signed_locator),
    # locator.FilterRejected (a ValueError) is what LocatorBook turns into MALFORMED.
    "locator_shard": Target(locator_shard, (locator.FilterRejected,)),
    "discover": Target(discover),
    "discover_batch": Target(discover_batch),
    "open_round": Target(open_round),
    "open_round_batch": Target(open_round_batch),
    "checkpoint": Target(checkpoint),
    # verify_checkpoint raises CheckpointInvalid; SubmitCheckpoint and `audit verify` report it.
    "checkpoint_message": Target(checkpoint_message, (audit.CheckpointInvalid,)),
    "audit_head": Target(audit_head),
    "witness_line": Target(witness_line),
    "witness_dir": Target(witness_dir),
    "private_key": Target(private_key),
}


def check(name: str, data: bytes) -> None:
    """Run target `name` on `data`; ContractViolation (chained to the cause) when it breaks its contract."""
    target = TARGETS[name]
    try:
        target.run(data)
    except HeduiError:
        pass
    except target.allowed:
        pass
    except Exception as exc:  # noqa: BLE001 - anything else is the finding
        raise ContractViolation(f"{name}: {type(exc).__name__}: {exc}") from exc
