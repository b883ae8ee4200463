"""The signed directory is verified once per change, on requesters and nodes, and still honours revocation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from node.client.coordinator import CoordinatorClient
from node.client.routed import routed_verify
from node.coordinator.directory_cache import VerifiedDirectory
from node.crypto import signing
from node.testing import run_cluster
from node.wire.v1 import coordinator_pb2
from tests.conftest import WORKER

CHECK = ["deposit.balance_total<=2000000"]


class _Counting:
    """Counts the directory signatures `verifier` checks (the real checks still run)."""

    def __init__(self, verifier: signing.Verifier) -> None:
        self.directory_checks = 0
        original = verifier.verify

        def verify(signature: Any, domain: str, body: bytes, **kw: Any) -> Any:
            self.directory_checks += domain == signing.DIRECTORY
            return original(signature, domain, body, **kw)

        verifier.verify = verify  # type: ignore[method-assign]


def test_routed_calls_verify_the_directory_once_and_again_only_after_it_changed(planted: dict[str, Path],
                                                                                 tmp_path: Path) -> None:
    """Many routed calls on one client fetch and verify the directory once; a re-announced province
    (a new directory, named by the Discover reply) makes the next call fetch and verify it once more."""
    with run_cluster(["51", "44"], root=tmp_path, data=planted) as fed:
        consent = fed.grant("51", [WORKER], "dibao")
        receipt = fed.receipt("51", consent.consent_id)
        member = fed.member("51")
        counting = _Counting(member.verifier)
        fetches: list[str] = []
        with CoordinatorClient(member) as coordinator:
            call = coordinator.call

            def counted(method: str, request: Any, **kw: Any) -> Any:
                fetches.append(method)
                return call(method, request, **kw)

            coordinator.call = counted  # type: ignore[method-assign]

            def verify() -> Any:
                return routed_verify(member, [WORKER], "dibao", CHECK, consent=receipt, coordinator=coordinator)

            results = [verify() for _ in range(5)]
            assert all(r.routing["44"] == "OK" and r.answers[0].signature_valid for r in results)
            assert fetches.count("Directory") == 1 and counting.directory_checks == 1
            fed.stop_node("44")
            fed.start_node("44")  # announces a new endpoint: the coordinator signs a new directory
            again = [verify() for _ in range(3)]
            assert all(r.routing["44"] == "OK" and r.answers[0].signature_valid for r in again)
            assert fetches.count("Directory") == 2 and counting.directory_checks == 2
            assert fetches.count("Discover") == 8 and fetches.count("Route") == 8


def test_a_node_refreshing_an_unchanged_directory_checks_no_signature(planted: dict[str, Path], tmp_path: Path) -> None:
    """A node's periodic directory refresh fetches the directory but verifies it only when it changed."""
    with run_cluster(["51", "44"], root=tmp_path, data=planted) as fed:
        node = fed.servers["44"]
        counting = _Counting(node.link.member.verifier)
        first = fed.loop.run(node.link.directory(refresh=True))
        second = fed.loop.run(node.link.directory(refresh=True))
        assert set(first) == {"51", "44"} and second is first
        assert counting.directory_checks == 0  # verified at start; unchanged since


def test_a_cached_directory_drops_a_member_revoked_since(planted: dict[str, Path], tmp_path: Path) -> None:
    """The same directory bytes verified before lose a member whose signing certificate was revoked since."""
    with run_cluster(["51", "44"], root=tmp_path, data=planted) as fed:
        member = fed.member("51")
        with CoordinatorClient(member) as coordinator:
            signed = coordinator.call("Directory", coordinator_pb2.DirectoryRequest())
        cache = VerifiedDirectory(member.verifier)
        before = cache.get(signed)
        assert "44" in before and cache.get(signed) is before and cache.verifications == 1
        assert cache.current() is before and cache.verifications == 1
        member.verifier.anchor.revoked_serials = frozenset({before["44"].sign_serial})
        held = cache.current()
        assert held is not None and "44" not in held and "51" in held and cache.verifications == 2
        after = cache.get(signed)
        assert after is held and cache.verifications == 2
