"""Mutual-TLS credentials for servers and channels, reloaded when the key files change."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import grpc

from node.config import Limits, MemberConfig
from node.crypto import keyfile
from node.errors import HeduiError


def _read(path: Path) -> bytes:
    return path.read_bytes()


class _ServerCertReloader:
    """gRPC fetcher: re-reads the certificate files when their modification times change.

    The TLS key may be encrypted: it is decrypted in memory (keyfile.plain_pem), never written out.
    """

    def __init__(self, ca: Path, cert: Path, key: Path, passphrase: keyfile.SecretSource = keyfile.NO_SECRET) -> None:
        self._paths = (ca, cert, key)
        self._passphrase = passphrase
        self._lock = threading.Lock()
        self._stamp = self._mtimes()

    def _mtimes(self) -> tuple[int, ...]:
        return tuple(os.stat(p).st_mtime_ns for p in self._paths)

    def config(self) -> Any:
        ca_path, cert_path, key_path = self._paths
        key = keyfile.plain_pem(key_path, self._passphrase)
        return grpc.ssl_server_certificate_configuration([(key, _read(cert_path))], root_certificates=_read(ca_path))

    def __call__(self) -> Any:
        try:
            stamp = self._mtimes()
        except OSError:
            return None  # keep serving with what we have
        with self._lock:
            if stamp == self._stamp:
                return None
            self._stamp = stamp
        try:
            return self.config()
        except (OSError, HeduiError):  # e.g. a key re-encrypted under a passphrase this process lacks
            return None


def server_credentials(cfg: MemberConfig) -> grpc.ServerCredentials:
    """Server credentials that require a client certificate from the federation CA."""
    reloader = _ServerCertReloader(cfg.ca_cert, cfg.tls_cert, cfg.tls_key, cfg.key_passphrase)
    return grpc.dynamic_ssl_server_credentials(reloader.config(), reloader, require_client_authentication=True)


def channel_credentials(cfg: MemberConfig) -> grpc.ChannelCredentials:
    """Client credentials presenting this member's TLS certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(cfg.ca_cert),
        private_key=keyfile.plain_pem(cfg.tls_key, cfg.key_passphrase),
        certificate_chain=_read(cfg.tls_cert),
    )


def server_options(limits: Limits, *, reuse_port: bool = False) -> list[tuple[str, Any]]:
    """Message-size, keepalive and connection-age limits for every server (SO_REUSEPORT for --workers)."""
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.max_connection_idle_ms", 15 * 60_000),
        ("grpc.max_connection_age_ms", 60 * 60_000),
        ("grpc.max_connection_age_grace_ms", 30_000),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]


def channel_options(limits: Limits, *, server_name: str) -> list[tuple[str, Any]]:
    """Message-size and keepalive limits for every client channel, and the name its server must carry.

    `server_name` is the federation-internal DNS name of the member meant (province_tls_name,
    COORDINATOR_TLS_NAME, or the per-certificate name of an announcement). gRPC checks it against
    the server certificate's DNS names in every handshake of the channel, reconnections
    included, before any call is sent: a certificate of another member (or one the
    announcement does not name) fails the handshake, and the call fails UNAVAILABLE.
    """
    if not server_name:
        raise ValueError("a channel needs the federation name of the server it means")
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.ssl_target_name_override", server_name),
    ]


def identity_refused(details: str) -> bool:
    """True when a failed call's details say the server's certificate did not carry the name meant."""
    return "Hostname Verification Check failed" in details or "not in peer certificate" in details
