"""Public test helpers: start a real federation on loopback (port 0, mutual TLS, temp dirs).

    from node.testing import run_cluster
    with run_cluster(["32", "44"]) as fed:
        with fed.client("32", to="44") as peer:
            result = peer.verify(ids=[...], purpose="dibao", checks=["deposit.balance_total<=2000000"])
"""

from node.testing.capture import capture_logs
from node.testing.cluster import Federation, LoopThread, build_federation, run_cluster

__all__ = ["Federation", "LoopThread", "build_federation", "capture_logs", "run_cluster"]
