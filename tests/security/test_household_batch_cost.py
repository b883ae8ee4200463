"""The household batch made cheaper (issue 13) keeps what it must: the same masks, queries that parse
as the single-household query, one store lookup and one nonce transaction per ContributeBatch, and
contributions that still sum to the exact totals while each holder's vector hides its share."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.client.household import contribution_queries, contribution_query
from node.crypto import masks, sealing, signing
from node.crypto.tokens import subject_token
from node.domain import idnumber
from node.domain.regions import province_tls_name, province_uri
from node.server import tls
from node.testing import Federation, run_cluster
from node.wire.v1 import household_pb2, household_pb2_grpc

MEASURES = ["financial_assets", "income_monthly"]
A = idnumber.make("510104", dt.date(1980, 3, 1), 211)
B = idnumber.make("510104", dt.date(1981, 4, 2), 212)


def _csv(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    path.write_text("id_number,attribute,value,as_of,source\n"
                    + "".join(f"{i},{a},{v},2026-11-30,test\n" for i, a, v in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """51 asks; 44 holds both households' incomes, 33 holds A's deposits."""
    d = tmp_path_factory.mktemp("hhcost")
    data = {"44": _csv(d / "44.csv", [(A, "income.wage_monthly", 250000), (B, "income.wage_monthly", 90000)]),
            "33": _csv(d / "33.csv", [(A, "deposit.balance_total", 5000)])}
    with run_cluster(["51", "44", "33"], data=data, root=d / "fed") as federation:
        yield federation


@pytest.fixture(scope="module")
def consents(fed: Federation) -> dict[str, Any]:
    return {"A": fed.grant("51", [A]), "B": fed.grant("51", [B])}


def _opened(fed: Federation, consents: dict[str, Any]) -> list[tuple[household_pb2.SignedHolderSet, Any, list[str]]]:
    """Fresh rounds for households A and B in one OpenRoundBatch: (holder set, consent, ids) each."""
    member = fed.member("51")
    rounds = []
    with fed.coordinator("51") as c:
        for ids in ([A], [B]):
            epoch, edts = c.discovery_tokens([subject_token(member.linkage_key, n) for n in ids])
            consent = consents["A" if ids == [A] else "B"]
            rounds.append(household_pb2.OpenRoundRequest(consent_id=consent.consent_id, round_id=uuid.uuid4().hex,
                                                         discovery_tokens=edts, epoch=epoch))
        reply = household_pb2_grpc.HouseholdRoundsStub(c._channel).OpenRoundBatch(
            household_pb2.OpenRoundBatchRequest(request_id=uuid.uuid4().hex, households=rounds), timeout=10)
    return [(h.holder_set, consents[k], ids) for h, k, ids in zip(reply.households, "AB", ([A], [B]), strict=True)]


def _contribute(fed: Federation, holder: str, opened: list[Any], reply_key: X25519PrivateKey) -> list[Any]:
    """`holder`'s ContributeBatch over mutual TLS as 51, its queries built as check-batch builds them; the items."""
    member = fed.member("51")
    raws = []
    for hs, consent, ids in opened:
        body = household_pb2.HolderSetBody.FromString(hs.body)
        every = contribution_queries(member, hs, body, body.holders, tokens=[subject_token(member.linkage_key, n)
                                                                             for n in ids], measures=MEASURES,
                                     consent=consent.receipt, purpose="dibao",
                                     reply_public=sealing.public_bytes(reply_key.public_key()))
        raws.append(every[list(body.holders).index(holder)])
    signatures = member.signer.sign_many([(signing.CONTRIBUTION_QUERY, r) for r in raws])
    queries = [household_pb2.SignedContributionQuery(body=r, signature=s) for r, s in zip(raws, signatures, strict=True)]
    with fed.coordinator("51") as c:
        seal_key = c.directory()[holder].seal_public_key
    sealed = sealing.seal(household_pb2.ContributionQueryBatch(queries=queries).SerializeToString(), kind=sealing.QUERY,
                          recipient=province_uri(holder), public_key=seal_key)
    with grpc.secure_channel(fed.addresses[holder], tls.channel_credentials(member.cfg),
                             options=tls.channel_options(member.cfg.limits, server_name=province_tls_name(holder))) as channel:
        reply = household_pb2_grpc.HouseholdHolderStub(channel).ContributeBatch(
            household_pb2.ContributeBatchRequest(request_id=uuid.uuid4().hex, queries=sealed), timeout=10)
    raw = sealing.open_sealed(reply.contributions, kind=sealing.ANSWER, identity=province_uri("51"), private_key=reply_key)
    return list(household_pb2.ContributionBatch.FromString(raw).items)


def test_masks_of_a_household_are_the_per_measure_prf() -> None:
    """`masks_of` (HMAC written out over SHA-256, one message prefix per household) gives exactly PROTOCOL §21's `mask` per measure."""
    measures = ["financial_assets", "income_monthly", "vehicles", "x" * 40]
    for secret in (bytes(range(32)), bytes(range(64)), bytes(range(100))):  # RFC 2104: a key over 64 bytes is hashed
        for household in ("c-000000000000000000000001", "c-" + "9" * 24):
            expected = [masks.mask(secret, "ab" * 32, household, m) for m in measures]
            assert masks.masks_of(secret, "ab" * 32, household, measures) == expected


def test_queries_encoded_from_a_shared_part_parse_as_the_single_household_query(fed: Federation,
                                                                                consents: dict[str, Any]) -> None:
    """Each holder's query built from the household's shared part reads, field by field, as `contribution_query`'s
    (its own nonce, its own audience), so holders check and hash exactly what was signed."""
    (hs, consent, ids), _ = _opened(fed, consents)
    member = fed.member("51")
    body = household_pb2.HolderSetBody.FromString(hs.body)
    tokens = [subject_token(member.linkage_key, n) for n in ids]
    reply_public = sealing.public_bytes(X25519PrivateKey.generate().public_key())
    args: dict[str, Any] = dict(tokens=tokens, measures=MEASURES, consent=consent.receipt, purpose="dibao",
                                reply_public=reply_public)
    built = contribution_queries(member, hs, body, body.holders, **args)
    assert len(built) == len(body.holders) == 3
    nonces = set()
    for holder, raw in zip(body.holders, built, strict=True):
        got = household_pb2.ContributionQueryBody.FromString(raw)
        want = household_pb2.ContributionQueryBody.FromString(contribution_query(member, hs, body, holder, **args))
        assert got.audience == holder and len(got.nonce) == 16
        nonces.add(got.nonce)
        for field in ("nonce", "issued_at_ms"):
            got.ClearField(field)
            want.ClearField(field)
        assert got == want
    assert len(nonces) == 3


def test_a_contribute_batch_reads_the_store_once_and_records_its_rounds_in_one_transaction(
        fed: Federation, consents: dict[str, Any]) -> None:
    """A ContributeBatch of two households costs the holder one facts lookup and one nonce transaction
    (holding both round ids, so neither can be answered again), and both contributions verify."""
    server = fed.servers["44"]
    facts_sql: list[str] = []
    reader = server.store._reader

    def traced() -> Any:
        conn = reader()
        conn.set_trace_callback(facts_sql.append)
        return conn

    nonce_sql: list[str] = []
    server.store._reader = traced  # type: ignore[method-assign]
    server._nonces._db.set_trace_callback(nonce_sql.append)
    try:
        opened = _opened(fed, consents)
        nonce_sql.clear()
        items = _contribute(fed, "44", opened, X25519PrivateKey.generate())
    finally:
        server._nonces._db.set_trace_callback(None)
        del server.store._reader
    assert [bool(i.contribution.body) and not i.error_code for i in items] == [True, True]
    lookups = [s for s in facts_sql if "facts" in s.lower() and s.lstrip().upper().startswith(("SELECT", "WITH"))]
    assert len(lookups) == 1
    assert [s for s in nonce_sql if s.strip().upper().startswith("BEGIN")] == ["BEGIN IMMEDIATE"]
    assert len([s for s in nonce_sql if s.lstrip().upper().startswith("INSERT")]) == 2
    verifier = fed.member("51").verifier
    for item in items:
        assert verifier.verify(item.contribution.signature, signing.CONTRIBUTION, item.contribution.body)


def test_masked_contributions_sum_to_the_totals_and_hide_each_share(fed: Federation, consents: dict[str, Any]) -> None:
    """Household A's three holders, asked as check-batch asks them: their vectors sum to the exact totals,
    and no holder's vector shows its own partial sum."""
    opened = _opened(fed, consents)[:1]
    reply_key = X25519PrivateKey.generate()
    vectors = {}
    for holder in ("33", "44", "51"):
        (item,) = _contribute(fed, holder, opened, reply_key)
        body = household_pb2.ContributionBody.FromString(item.contribution.body)
        vectors[holder] = [masks.decode(v) for v in body.masked]
    assert masks.unmask(vectors.values(), 2) == [5000, 250000]  # financial_assets, income_monthly
    assert vectors["33"][0] != 5000 and vectors["44"][1] != 250000 and vectors["51"] != [0, 0]
