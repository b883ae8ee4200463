"""`hedui pki encrypt-keys` and `hedui pki hsm-generate`: key custody (encrypted key files, a PKCS#11 token)."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from node.errors import BadInput

_KEY_FILES = ("tls.key", "sign.key", "seal.key")


def add_secret_options(parser: Any, prefix: str, what: str) -> None:
    """`--PREFIX-file FILE` / `--PREFIX-credential NAME` (a systemd credential), mutually exclusive."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(f"--{prefix}-file", type=Path, metavar="FILE", help=f"read {what} from this file")
    group.add_argument(f"--{prefix}-credential", metavar="NAME",
                       help=f"read {what} from the systemd credential NAME ($CREDENTIALS_DIRECTORY/NAME)")


def secret_from(args: argparse.Namespace, prefix: str) -> Any:
    """The SecretSource the options of add_secret_options name (empty when neither was given)."""
    from node.crypto.keyfile import SecretSource

    attr = prefix.replace("-", "_")
    path = getattr(args, f"{attr}_file")
    return SecretSource(file=path.resolve() if path else None, credential=getattr(args, f"{attr}_credential"))


def passphrase_keys(source: Any) -> dict[str, str]:
    """The [keys] entries recording where the key passphrase comes from."""
    if source.credential is not None:
        return {"passphrase_credential": source.credential}
    return {"passphrase_file": str(source.file)} if source.file is not None else {}


def new_passphrase(args: argparse.Namespace) -> bytes | None:
    """The passphrase `--passphrase-file/--passphrase-credential` name for keys a command writes, or None."""
    source = secret_from(args, "passphrase")
    return source.read() if source else None


def register(pki_sub: Any) -> None:
    enc = pki_sub.add_parser("encrypt-keys", help="encrypt plain private key files in place (PKCS#8, scrypt)",
                             description="Encrypt a member's key files (--config: its TLS, signing and sealing keys, "
                                         "and record the passphrase source in its [keys]) or a whole PKI dir (--pki: "
                                         "ca.key and every member's keys). Keys already encrypted under the passphrase "
                                         "are left as they are. Restart a running server afterwards.")
    where = enc.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, metavar="FILE", help="a node or coordinator config")
    where.add_argument("--pki", type=Path, metavar="DIR", help="a PKI dir (ca.key and members/*)")
    add_secret_options(enc, "passphrase", "the passphrase (default with --config: the one it names)")
    enc.set_defaults(func=_encrypt_keys)

    hsm = pki_sub.add_parser("hsm-generate", help="generate the signing key inside a PKCS#11 token and certify it",
                             description="Generate the member's Ed25519 signing key inside a PKCS#11 token (never "
                                         "extractable), issue its signing certificate with the CA in --pki, install "
                                         "the certificate, point the config's [pkcs11] at the token and delete the "
                                         "plain signing key files. Restart the server, then revoke the old signing "
                                         "certificate (its serial is printed).")
    hsm.add_argument("--config", required=True, type=Path, metavar="FILE", help="the node or coordinator config")
    hsm.add_argument("--pki", required=True, type=Path, metavar="DIR", help="the PKI dir holding the CA")
    hsm.add_argument("--module", required=True, type=Path, metavar="SO", help="the PKCS#11 module, e.g. libsofthsm2.so")
    hsm.add_argument("--token-label", required=True, metavar="LABEL")
    hsm.add_argument("--key-label", default="hedui-sign", metavar="LABEL", help="label of the new key (default hedui-sign)")
    add_secret_options(hsm, "pin", "the token's user PIN")
    add_secret_options(hsm, "ca-passphrase", "the passphrase of an encrypted ca.key")
    hsm.set_defaults(func=_hsm_generate)


def _encrypt_keys(args: argparse.Namespace) -> int:
    from node import config
    from node.crypto.keyfile import SecretSource

    given = secret_from(args, "passphrase")
    if args.config is not None:
        cfg = config.load(args.config)
        source = given or cfg.key_passphrase
        paths = [p for p in (cfg.tls_key, cfg.sign_key, cfg.seal_key) if p is not None]
    else:
        source = given
        paths = [args.pki / "ca.key", *sorted(p for name in _KEY_FILES for p in (args.pki / "members").glob(f"*/{name}"))]
    if not isinstance(source, SecretSource) or not source:
        raise BadInput("name the passphrase: --passphrase-file FILE or --passphrase-credential NAME")
    secret = source.read()
    planned = [(path, _plain_key(path, source)) for path in paths]  # every key opens before anything is written
    if args.config is not None and given:
        _record_passphrase(args.config, given)  # first: a plain key still loads under a configured passphrase
    from node.crypto.keyfile import pem_of

    done = 0
    for path, key in planned:
        if key is not None:
            from node import files

            files.write_file(path, pem_of(key, secret), replace=True, mode=files.PRIVATE)
            done += 1
    print(f"encrypted {done} key file(s), {len(planned) - done} already encrypted; passphrase from {source.where}")
    return 0


def _plain_key(path: Path, source: Any) -> Any:
    """The key at `path` when it is stored plain (to encrypt); None when it already opens under `source`."""
    from node.crypto import keyfile, pki

    if not path.exists():
        raise BadInput(f"missing private key {path}")
    if keyfile.is_encrypted(path):
        keyfile.load_private_key(path, source)  # a wrong passphrase: one-line PkiError, nothing written
        return None
    if path.name == "seal.key" and not path.read_bytes().lstrip().startswith(b"-----BEGIN"):
        return pki.load_seal_keys(path, path.with_name("seal.pub"))[0]
    return keyfile.load_private_key(path)


def _record_passphrase(cfg_path: Path, source: Any) -> None:
    """Write the passphrase source into the config's [keys] (replacing an earlier one)."""
    from node import config

    data = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    keys = data["keys"]
    keys.pop("passphrase_file", None)
    keys.pop("passphrase_credential", None)
    keys.update(passphrase_keys(source))
    config.write(cfg_path, data)


def _hsm_generate(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.serialization import Encoding

    from node import config, files
    from node.crypto import pki, token_key

    cfg = config.load(args.config)
    pin = secret_from(args, "pin")
    if not pin:
        raise BadInput("name the token's user PIN: --pin-file FILE or --pin-credential NAME")
    member = cfg.province or pki.COORDINATOR
    paths = pki.member_paths(args.pki, member)
    ca_cert, ca_key = pki.load_ca(args.pki, secret_from(args, "ca-passphrase"))  # before touching the token
    old_serial = pki.load_cert(cfg.sign_cert).serial_number if cfg.sign_cert.exists() else None
    where = token_key.TokenKey(module=args.module.resolve(), token_label=args.token_label, key_label=args.key_label, pin=pin)
    public = token_key.generate(where)
    cert = pki.issue_signing_cert(ca_cert, ca_key, cfg.identity, public)
    pem = cert.public_bytes(Encoding.PEM)
    data = tomllib.loads(args.config.read_text(encoding="utf-8"))
    data["keys"].pop("sign_key", None)
    data["pkcs11"] = {"module": str(where.module), "token_label": where.token_label, "key_label": where.key_label,
                      **({"pin_credential": pin.credential} if pin.credential else {"pin_file": str(pin.file)})}
    config.write(args.config, data)
    files.write_file(paths.sign_cert, pem, replace=True, mode=files.PUBLIC)
    files.write_file(cfg.sign_cert, pem, replace=True, mode=files.PUBLIC)
    for plain in {paths.sign_key, *([cfg.sign_key] if cfg.sign_key else [])}:
        plain.unlink(missing_ok=True)  # the file key is no longer this member's: no copy stays behind
    print(f"signing key generated in PKCS#11 token {where.token_label!r} as {where.key_label!r}; certificate serial "
          f"{cert.serial_number} installed; restart the server"
          + (f", then revoke the old signing certificate: hedui pki revoke --pki {args.pki} --serial {old_serial}"
             if old_serial is not None else ""))
    return 0
