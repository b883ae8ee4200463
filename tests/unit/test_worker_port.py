"""`--workers` reserves its port like any server: it binds over its predecessor's TIME_WAIT connections, and no other user can take it."""

from __future__ import annotations

import socket

import pytest

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


def test_another_user_cannot_take_the_reserved_port() -> None:
    """While the port is reserved for the workers, a process of another user cannot bind it (even with
    SO_REUSEADDR) and listen first; a worker of ours still binds it. Needs root to act as another user."""
    import os

    if os.geteuid() != 0:
        pytest.fail("needs root to run a process as another user (CI and scripts/test run as root)")
    reserved, port = reserve_port("127.0.0.1", 0)
    try:
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # another user's process
            os.close(read)
            outcome = b"refused"
            try:
                os.setgid(65534)
                os.setuid(65534)
                other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                other.bind(("127.0.0.1", port))
                other.listen(1)
                outcome = b"bound"
            except OSError:
                pass
            finally:
                os.write(write, outcome)
                os._exit(0)
        os.close(write)
        outcome = os.read(read, 16)
        os.waitpid(child, 0)
        assert outcome == b"refused"
        worker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))
        worker.listen(1)
        worker.close()
    finally:
        reserved.close()
