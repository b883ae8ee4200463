"""A federation member's loaded material: keys, trust anchor, catalogue and policy."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from node import config as config_mod
from node import logs
from node.config import MemberConfig
from node.crypto import pki, revocation, signing
from node.crypto.tokens import load_linkage_key
from node.domain.catalogue import Catalogue, load_catalogue
from node.domain.policy import Policy, load_policy
from node.errors import BadInput


def signing_key(cfg: MemberConfig) -> signing.SigningKey:
    """The configured Ed25519 signing key: in the [pkcs11] token, else the `sign_key` file (decrypted in memory)."""
    if cfg.token_key is not None:
        from node.crypto.token_key import Pkcs11SigningKey

        return Pkcs11SigningKey(cfg.token_key)
    if cfg.sign_key is None:
        raise BadInput("the config names no signing key: set [keys] sign_key or a [pkcs11] table")
    key = pki.load_private_key(cfg.sign_key, cfg.key_passphrase)
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInput(f"{cfg.sign_key} is not an Ed25519 key")
    return key


@dataclass
class Member:
    """Loads lazily what a command or server needs from one member config."""

    cfg: MemberConfig

    @classmethod
    def from_config(cls, path: Path | str) -> Member:
        return cls(config_mod.load(path))

    @property
    def anchor(self) -> pki.TrustAnchor:
        """The federation CA, with the newest revocation list this member has accepted applied."""
        return self.crl.anchor

    @cached_property
    def crl(self) -> revocation.CrlFile:
        """The member's CRL file and the newest CRL it ever accepted (a CRL put back that is older is refused)."""
        crl = revocation.CrlFile(self.crl_path, pki.TrustAnchor.load(self.cfg.ca_cert),
                                 state_path=self.cfg.data_dir / revocation.CRL_STATE_FILE)
        refused = crl.load()
        if refused is not None:
            logs.get("member").error("revocation_list_rolled_back", path=str(self.crl_path), reason=refused)
        return crl

    @property
    def crl_path(self) -> Path:
        return self.cfg.data_dir / "crl.pem"

    @cached_property
    def verifier(self) -> signing.Verifier:
        return signing.Verifier(self.anchor)

    @cached_property
    def signer(self) -> signing.Signer:
        """The member's message signer: its key from a (possibly encrypted) file or a PKCS#11 token."""
        cert = pki.load_cert(self.cfg.sign_cert)
        return signing.Signer(signing_key(self.cfg), cert.public_bytes(Encoding.DER))

    @cached_property
    def linkage_key(self) -> bytes:
        if self.cfg.linkage_key is None:
            raise BadInput("this member holds no linkage key (only provinces do)")
        return load_linkage_key(self.cfg.linkage_key)

    @cached_property
    def catalogue(self) -> Catalogue:
        return load_catalogue(self.cfg.catalogue)

    @cached_property
    def policy(self) -> Policy:
        return load_policy(self.cfg.policy, catalogue=self.catalogue)

    @property
    def province(self) -> str:
        if self.cfg.province is None:
            raise BadInput("this config is not a province node's")
        return self.cfg.province
