"""The typed client a provincial platform (and the CLI) uses to query peers.

    from node.client import PeerClient
    with PeerClient.from_config("/etc/hedui/node32.toml", "node44.example:7443") as peer:
        result = peer.verify(ids=["..."], purpose="dibao", checks=["deposit.balance_total<=2000000"])
        for answer in result.answers:
            print(answer.province, answer.signature_valid, answer.results)
"""

from node.client.client import AsyncPeerClient, PeerClient, PeerRefused, PeerUnreachable
from node.client.query import Answer, ResultRow, VerifyResult

__all__ = ["Answer", "AsyncPeerClient", "PeerClient", "PeerRefused", "PeerUnreachable", "ResultRow", "VerifyResult"]
