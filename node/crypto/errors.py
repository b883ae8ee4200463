"""Errors of the cryptography layer; messages are public and never carry key material."""

from __future__ import annotations

from node.errors import BadInput, HeduiError


class CryptoError(HeduiError):
    """Base of the errors raised by node.crypto."""


class SignatureInvalid(CryptoError):
    """A signature is malformed or does not verify; the message is a short public reason."""


class CertificateRejected(CryptoError):
    """A certificate presented by a peer is refused; the message is a short public reason."""


class PkiError(BadInput, CryptoError):
    """A PKI directory operation was refused (CA missing or present, unknown member...)."""
