"""`--workers` reserves its port like any server: a port whose previous server left connections in TIME_WAIT binds."""

from __future__ import annotations

import socket

from node.server.workers import reserve_port


def _time_wait_on_a_fresh_port() -> int:
    """A port whose listener (SO_REUSEADDR, as gRPC's) is closed and whose server side closed a connection first
    (TIME_WAIT on that port)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the server closes first: its side of the connection (local port `port`) goes to TIME_WAIT
    assert client.recv(1) == b""
    client.close()
    listener.close()
    return port


def test_a_port_restarted_right_after_its_server_stopped_is_reserved() -> None:
    """Restarting `hedui ... serve --workers N` on the port a server just left binds (SO_REUSEADDR) instead of
    failing with 'Address already in use' for the TIME_WAIT interval; workers still share it (SO_REUSEPORT)."""
    port = _time_wait_on_a_fresh_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as plain:  # the precondition: a plain bind is refused
        try:
            plain.bind(("127.0.0.1", port))
            time_wait = False
        except OSError:
            time_wait = True
    assert time_wait, "no TIME_WAIT left on the port: the test's precondition did not hold"
    reserved, got = reserve_port("127.0.0.1", port)
    try:
        assert got == port
        worker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))  # what each worker's gRPC server does on the same port
        worker.close()
    finally:
        reserved.close()
