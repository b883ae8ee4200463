"""Canary: a planted ID number and value never reach a node's logs or any file it writes in clear."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from node import logs
from node.client.client import PeerRefused
from node.testing import run_cluster
from tests.conftest import CANARY_DEPOSIT, SPOUSE, WORKER, WORKER_WAGE


def test_no_id_number_or_value_in_node_logs_or_files(planted: dict[str, Path], tmp_path: Path) -> None:
    """After answers and refusals at debug log level, no file or log line holds the ID number or the values."""
    sink = io.StringIO()
    logs.configure("debug", json=True, stream=sink)
    try:
        with run_cluster(["51", "44"], root=tmp_path, data=planted) as fed:
            consent = fed.grant("51", [WORKER, SPOUSE], "dibao").consent_id
            checks = [f"deposit.balance_total=={CANARY_DEPOSIT}", f"income.wage_monthly>={WORKER_WAGE}"]
            for to in ("44", None):
                result = fed.verify("51", [WORKER, SPOUSE], checks, consent_id=consent, to=to)
                assert result.answers[0].results[0].outcome == "SATISFIED"
            with pytest.raises(PeerRefused):
                fed.verify("51", [WORKER], checks, consent_id=consent, purpose="medical", to="44")
    finally:
        logs.configure("warning")
    logged = sink.getvalue()
    assert '"answered"' in logged and '"refused"' in logged, "the node logged nothing: the canary proves nothing"
    assert '"request_id"' in logged and '"peer": "51"' in logged
    needles = [WORKER, WORKER[:17], SPOUSE, str(CANARY_DEPOSIT), str(WORKER_WAGE)]
    assert not [n for n in needles if n in logged]
    written = [p for p in (tmp_path / "node44").rglob("*") if p.is_file()] + \
              [p for p in (tmp_path / "node51").rglob("*") if p.is_file()]
    assert any(p.name == "store.sqlite" for p in written)
    for path in written:
        blob = path.read_bytes()
        for needle in needles:
            assert needle.encode() not in blob, f"{needle!r} found in {path}"
            assert needle.encode("utf-16-le") not in blob, f"{needle!r} found in {path}"
