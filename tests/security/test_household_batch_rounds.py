"""Batch household rounds (OpenRoundBatch, RouteRoundBatch, ContributeBatch) keep the single round's
guarantees: masks never reused, nothing routed outside a household's holder set, one reply key per
sealed batch, and a refused household refuses only itself."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.client.household import contribution_query
from node.crypto import sealing, signing
from node.crypto.tokens import subject_token
from node.domain import idnumber
from node.domain.regions import province_tls_name, province_uri
from node.server import tls
from node.store import audit
from node.testing import Federation, run_cluster
from node.wire.v1 import household_pb2, household_pb2_grpc

MEASURES = ["financial_assets", "income_monthly"]
A = idnumber.make("510104", dt.date(1980, 3, 1), 201)
B = idnumber.make("510104", dt.date(1981, 4, 2), 202)


def _csv(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    path.write_text("id_number,attribute,value,as_of,source\n"
                    + "".join(f"{i},{a},{v},2026-11-30,test\n" for i, a, v in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """51 asks; 44 holds both households, 33 holds A's second member only."""
    d = tmp_path_factory.mktemp("hhrounds")
    data = {"44": _csv(d / "44.csv", [(A, "income.wage_monthly", 250000), (B, "income.wage_monthly", 90000)]),
            "33": _csv(d / "33.csv", [(A, "deposit.balance_total", 5000)])}
    with run_cluster(["51", "44", "33"], data=data, root=d / "fed") as federation:
        yield federation


@pytest.fixture(scope="module")
def consents(fed: Federation) -> dict[str, Any]:
    return {"A": fed.grant("51", [A]), "B": fed.grant("51", [B])}


def _open(fed: Federation, rounds: list[household_pb2.OpenRoundRequest]) -> household_pb2.OpenRoundBatchResponse:
    with fed.coordinator("51") as c:
        return household_pb2_grpc.HouseholdRoundsStub(c._channel).OpenRoundBatch(
            household_pb2.OpenRoundBatchRequest(request_id=uuid.uuid4().hex, households=rounds), timeout=10)


def _fresh(fed: Federation, consent: Any, ids: list[str], round_id: str | None = None) -> household_pb2.OpenRoundRequest:
    member = fed.member("51")
    with fed.coordinator("51") as c:
        epoch, edts = c.discovery_tokens([subject_token(member.linkage_key, n) for n in ids])
    return household_pb2.OpenRoundRequest(consent_id=consent.consent_id, round_id=round_id or uuid.uuid4().hex,
                                          discovery_tokens=edts, epoch=epoch)


def _queries(fed: Federation, opened: list[tuple[household_pb2.SignedHolderSet, Any, list[str]]], holder: str,
             reply_public: bytes) -> list[household_pb2.SignedContributionQuery]:
    """`holder`'s contribution queries for the given rounds, signed as one batch."""
    member = fed.member("51")
    raws = [contribution_query(member, hs, household_pb2.HolderSetBody.FromString(hs.body), holder,
                               tokens=[subject_token(member.linkage_key, n) for n in ids], measures=MEASURES,
                               consent=consent.receipt, purpose="dibao", reply_public=reply_public)
            for hs, consent, ids in opened]
    signatures = member.signer.sign_many([(signing.CONTRIBUTION_QUERY, r) for r in raws])
    return [household_pb2.SignedContributionQuery(body=r, signature=s) for r, s in zip(raws, signatures, strict=True)]


def _contribute_directly(fed: Federation, holder: str, queries: list[household_pb2.SignedContributionQuery]) -> Any:
    """ContributeBatch straight to `holder` over mutual TLS as province 51 (a sealed batch, as the coordinator relays)."""
    member = fed.member("51")
    with fed.coordinator("51") as c:
        seal_key = c.directory()[holder].seal_public_key
    sealed = sealing.seal(household_pb2.ContributionQueryBatch(queries=queries).SerializeToString(), kind=sealing.QUERY,
                          recipient=province_uri(holder), public_key=seal_key)
    with grpc.secure_channel(fed.addresses[holder], tls.channel_credentials(member.cfg),
                             options=tls.channel_options(member.cfg.limits, server_name=province_tls_name(holder))) as channel:
        return household_pb2_grpc.HouseholdHolderStub(channel).ContributeBatch(
            household_pb2.ContributeBatchRequest(request_id=uuid.uuid4().hex, queries=sealed), timeout=10)


def _audit_since(fed: Federation, code: str, before: int) -> list[audit.AuditRecord]:
    return [audit.AuditRecord.from_json(e.payload) for e in fed.servers[code].audit_log.entries(after=before)]


def test_a_round_id_is_opened_once_even_within_one_batch(fed: Federation, consents: dict[str, Any]) -> None:
    """Two households of one OpenRoundBatch naming one round id: the second is refused REPLAYED, the first opened."""
    round_id = uuid.uuid4().hex
    reply = _open(fed, [_fresh(fed, consents["A"], [A], round_id), _fresh(fed, consents["B"], [B], round_id)])
    first, second = reply.households
    assert first.holder_set.body and not first.error_code
    assert second.error_code == "REPLAYED" and not second.holder_set.body
    again = _open(fed, [_fresh(fed, consents["A"], [A], round_id)])
    assert again.households[0].error_code == "REPLAYED"


def test_holder_sets_of_a_batch_share_one_signature_and_each_verifies_alone(fed: Federation,
                                                                           consents: dict[str, Any]) -> None:
    """The batch's holder sets are signed under one Merkle root (ed25519-batch-sha256); each verifies on its own."""
    reply = _open(fed, [_fresh(fed, consents["A"], [A]), _fresh(fed, consents["B"], [B])])
    signed = [h.holder_set for h in reply.households]
    assert {s.signature.algorithm for s in signed} == {signing.ED25519_BATCH}
    assert len({s.signature.value for s in signed}) == 1
    holders = [list(household_pb2.HolderSetBody.FromString(s.body).holders) for s in signed]
    assert holders == [["33", "44", "51"], ["44", "51"]]
    for s in signed:
        assert signing.Verifier(fed.member("44").verifier.anchor).verify(s.signature, signing.HOLDER_SET, s.body)


def test_route_round_batch_forwards_nothing_outside_the_holder_sets(fed: Federation, consents: dict[str, Any]) -> None:
    """An envelope for a province no holder set names, or one missing a holder, refuses the whole call: nothing reaches a holder."""
    reply = _open(fed, [_fresh(fed, consents["B"], [B])])  # holders 44 and 51
    holder_set = reply.households[0].holder_set
    sealed = sealing.seal(b"opaque", kind=sealing.QUERY, recipient=province_uri("33"),
                          public_key=X25519PrivateKey.generate().public_key().public_bytes_raw())
    before = fed.servers["33"].audit_log.head()[0]
    bad = [
        [household_pb2.RoundBatchEnvelope(province=p, queries=sealed if p == "33" else sealing.seal(
            b"opaque", kind=sealing.QUERY, recipient=province_uri(p),
            public_key=X25519PrivateKey.generate().public_key().public_bytes_raw()), rounds=[0])
         for p in ("33", "44", "51")],  # 33 is no holder of the round
        [household_pb2.RoundBatchEnvelope(province="44", queries=sealing.seal(
            b"opaque", kind=sealing.QUERY, recipient=province_uri("44"),
            public_key=X25519PrivateKey.generate().public_key().public_bytes_raw()), rounds=[0])],  # 51 left out
    ]
    with fed.coordinator("51") as c:
        stub = household_pb2_grpc.HouseholdRoundsStub(c._channel)
        for envelopes in bad:
            with pytest.raises(grpc.RpcError) as err:
                stub.RouteRoundBatch(household_pb2.RouteRoundBatchRequest(
                    request_id=uuid.uuid4().hex, envelopes=envelopes, rounds=[household_pb2.HouseholdRound(
                        consent_id=consents["B"].consent_id, holder_set=holder_set)]), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "one query per holder" in (err.value.details() or "")
    assert fed.servers["33"].audit_log.head()[0] == before  # 33 was never called


def test_a_replayed_contribution_batch_is_refused_and_audited_by_household(fed: Federation,
                                                                          consents: dict[str, Any]) -> None:
    """The same sealed queries sent twice: the holder contributes once; the second time every round id is
    refused REPLAYED (masks never reused) and its audit record names each refused round."""
    opened = _open(fed, [_fresh(fed, consents["A"], [A]), _fresh(fed, consents["B"], [B])])
    rounds = [(h.holder_set, consents[k], ids) for h, k, ids in zip(opened.households, "AB", ([A], [B]), strict=True)]
    reply_key = X25519PrivateKey.generate()
    queries = _queries(fed, rounds, "44", sealing.public_bytes(reply_key.public_key()))
    before = fed.servers["44"].audit_log.head()[0]
    first = _contribute_directly(fed, "44", queries)
    raw = sealing.open_sealed(first.contributions, kind=sealing.ANSWER, identity=province_uri("51"), private_key=reply_key)
    items = household_pb2.ContributionBatch.FromString(raw).items
    assert [bool(i.contribution.body) for i in items] == [True, True]
    assert {i.contribution.signature.algorithm for i in items} == {signing.ED25519_BATCH}
    with pytest.raises(grpc.RpcError) as err:
        _contribute_directly(fed, "44", queries)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    records = _audit_since(fed, "44", before)
    contributed = [r for r in records if r.decision == "contributed"]
    replayed = [r for r in records if r.decision == "refused:REPLAYED"]
    round_ids = {household_pb2.HolderSetBody.FromString(hs.body).round_id for hs, _, _ in rounds}
    assert len(contributed) == 1 and {e.request_id for e in contributed[0].batch} == round_ids
    assert len(replayed) == 1 and {e.request_id for e in replayed[0].batch} == round_ids


def test_a_batch_naming_two_reply_keys_is_refused_whole(fed: Federation, consents: dict[str, Any]) -> None:
    """Queries sealing their answers to different keys cannot travel in one batch: refused before any is decided."""
    opened = _open(fed, [_fresh(fed, consents["A"], [A]), _fresh(fed, consents["B"], [B])])
    rounds = [(h.holder_set, consents[k], ids) for h, k, ids in zip(opened.households, "AB", ([A], [B]), strict=True)]
    one = _queries(fed, rounds[:1], "44", sealing.public_bytes(X25519PrivateKey.generate().public_key()))
    two = _queries(fed, rounds[1:], "44", sealing.public_bytes(X25519PrivateKey.generate().public_key()))
    before = fed.servers["44"].audit_log.head()[0]
    with pytest.raises(grpc.RpcError) as err:
        _contribute_directly(fed, "44", one + two)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "one reply key" in (err.value.details() or "")
    assert not [r for r in _audit_since(fed, "44", before) if r.decision == "contributed"]
    ok = _contribute_directly(fed, "44", _queries(fed, rounds, "44", sealing.public_bytes(
        X25519PrivateKey.generate().public_key())))  # the rounds were not spent by the refused batch
    assert ok.contributions.ciphertext


def test_a_household_refused_in_a_batch_refuses_only_itself(fed: Federation, consents: dict[str, Any]) -> None:
    """A query for a round whose holder set leaves this holder out is refused as an item; the batch's other
    household is contributed under the same call."""
    opened = _open(fed, [_fresh(fed, consents["A"], [A]), _fresh(fed, consents["B"], [B])])
    rounds = [(h.holder_set, consents[k], ids) for h, k, ids in zip(opened.households, "AB", ([A], [B]), strict=True)]
    reply_key = X25519PrivateKey.generate()
    queries = _queries(fed, rounds, "33", sealing.public_bytes(reply_key.public_key()))  # B's round has no 33
    reply = _contribute_directly(fed, "33", queries)
    raw = sealing.open_sealed(reply.contributions, kind=sealing.ANSWER, identity=province_uri("51"), private_key=reply_key)
    first, second = household_pb2.ContributionBatch.FromString(raw).items
    assert first.contribution.body and not first.error_code
    assert second.error_code == "MALFORMED" and not second.contribution.body
    assert "not in the round's holder set" in second.error
