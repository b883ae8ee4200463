"""Prometheus metrics on their own port: latency by method and status, outcomes, fan-out, refusals."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from node.client.client import PeerRefused
from node.testing import run_cluster
from tests.conftest import WORKER


def test_metrics_endpoint_reports_calls_outcomes_fanout_and_refusals(planted: dict[str, Path], tmp_path: Path) -> None:
    """After answered and refused calls, the node's metrics port shows them by label, with no subject data."""
    extra = {"metrics": {"listen": "127.0.0.1:0"}}
    with run_cluster(["51", "44"], root=tmp_path, data=planted, config_extra=extra) as fed:
        consent = fed.grant("51", [WORKER], "dibao").consent_id
        fed.verify("51", [WORKER], ["deposit.balance_total<=2000000"], consent_id=consent)
        fed.verify("51", [WORKER], ["deposit.balance_total<=2000000"], consent_id=consent, to="44")
        try:
            fed.verify("51", [WORKER], ["deposit.balance_total<=2000000"], consent_id=consent, to="44", purpose="medical")
        except PeerRefused:
            pass
        port = fed.servers["44"].metrics_port
        assert port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    node44 = 'member="urn:hedui:province:44"'
    assert any(line.startswith("hedui_call_seconds_count") and node44 in line and 'method="Verify"' in line
               and 'status="OK"' in line for line in text.splitlines())
    assert f'hedui_outcomes_total{{{node44},outcome="NOT_SATISFIED"}}' in text
    assert any(line.startswith("hedui_refusals_total") and node44 in line and "CONSENT_INVALID" in line
               for line in text.splitlines())
    assert 'hedui_fanout_total{member="urn:hedui:coordinator",province="44",status="OK"}' in text
    assert WORKER not in text
