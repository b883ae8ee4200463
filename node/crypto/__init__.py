"""Cryptography: federation PKI, message signatures, subject tokens, end-to-end sealing."""
