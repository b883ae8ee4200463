"""Key custody (issue 12 point 6): encrypted PKCS#8 key files, and the signing key in a SoftHSM2 token.

Real parts only: a federation on loopback with mutual TLS, real Ed25519 signatures, and a real
SoftHSM2 token created in a temp dir (SOFTHSM2_CONF). Without SoftHSM2 these tests fail, saying so.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from cryptography import x509

from node.cli.main import main
from node.crypto import keyfile, signing, token_key
from node.crypto.errors import PkiError
from node.crypto.pki import init_pki, issue_member, load_cert
from node.member import Member
from node.testing import Federation, LoopThread, build_federation
from node.testing.cluster import write_node_config
from tests.conftest import WORKER

CHECK = ["deposit.balance_total<=2000000"]
PASSPHRASE = "correct horse battery staple 2026"
SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
TOKEN = "hedui-test"
USER_PIN = "31415926"
PLAIN_PEM = b"-----BEGIN PRIVATE KEY-----"


def hedui(*args: object) -> subprocess.CompletedProcess[str]:
    """`hedui ARGS` in a child process (its own environment, as a service would run)."""
    return subprocess.run([sys.executable, "-m", "node.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=os.environ.copy())


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def secret_file(path: Path, text: str) -> Path:
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def started(fed: Federation) -> Iterator[Federation]:
    """Start the coordinator and every node of a built federation (as run_cluster does); stop them after."""
    fed.loop = LoopThread()
    try:
        fed.start_coordinator()
        for code in fed.configs:
            fed.start_node(code)
        yield fed
    finally:
        for code in sorted(fed.servers, key=lambda c: c == "coordinator"):
            fed.stop_node(code)
        fed.loop.close()


def served_tls_certificate(fed: Federation, code: str) -> x509.Certificate:
    """The TLS certificate node `code` presents on a fresh handshake (the client's own key is encrypted too)."""
    m = fed.member("51")
    context = ssl.create_default_context(cafile=str(m.cfg.ca_cert))
    context.load_cert_chain(str(m.cfg.tls_cert), str(m.cfg.tls_key), password=PASSPHRASE)
    context.set_alpn_protocols(["h2"])
    host, port = fed.addresses[code].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def plain_private_keys(root: Path) -> list[Path]:
    """Every file under `root` holding an unencrypted PEM private key."""
    return [p for p in root.rglob("*") if p.is_file() and PLAIN_PEM in p.read_bytes()]


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SoftHSM2 token labelled TOKEN in a temp dir, SOFTHSM2_CONF pointing at it; the module's path."""
    module = next((Path(m) for m in SOFTHSM_MODULES if Path(m).is_file()), None)
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        pytest.fail("SoftHSM2 is not installed (libsofthsm2.so / softhsm2-util missing): "
                    "`apt-get install softhsm2` (scripts/test installs it)")
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # before the module is first loaded: it reads this once
    subprocess.run([util, "--init-token", "--free", "--label", TOKEN, "--so-pin", "27182818", "--pin", USER_PIN],
                   check=True, capture_output=True, timeout=60)
    return module


def hsm_generate(cfg: Path, pki: Path, module: Path, pin_file: Path, key_label: str) -> None:
    assert main(["pki", "hsm-generate", "--config", str(cfg), "--pki", str(pki), "--module", str(module),
                 "--token-label", TOKEN, "--key-label", key_label, "--pin-file", str(pin_file)]) == 0


# ---------------------------------------------------------------------------------------------
# Encrypted key files


def test_encrypted_keys_round_trip_and_a_federation_serves_with_them(
        planted: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys encrypted by `pki encrypt-keys` (a passphrase file for nodes, a systemd credential for the coordinator)
    serve a routed verify over mutual TLS whose answer signature checks, and no plain key is left on disk."""
    fed = build_federation(tmp_path / "fed", ["51", "44"], data=planted)
    passphrase = secret_file(tmp_path / "key-passphrase", PASSPHRASE)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret_file(credentials / "hedui-key", PASSPHRASE)
    monkeypatch.setenv(keyfile.CREDENTIALS_ENV, str(credentials))
    for cfg in fed.configs.values():
        assert main(["pki", "encrypt-keys", "--config", str(cfg), "--passphrase-file", str(passphrase)]) == 0
    assert fed.coordinator_config is not None
    assert main(["pki", "encrypt-keys", "--config", str(fed.coordinator_config), "--passphrase-credential", "hedui-key"]) == 0
    assert main(["pki", "encrypt-keys", "--pki", str(fed.pki), "--passphrase-file", str(passphrase)]) == 0

    assert plain_private_keys(tmp_path) == []
    keys = tomllib.loads(fed.configs["44"].read_text())["keys"]
    assert keys["passphrase_file"] == str(passphrase.resolve())
    assert tomllib.loads(fed.coordinator_config.read_text())["keys"]["passphrase_credential"] == "hedui-key"
    for name in ("tls_key", "sign_key", "seal_key"):
        assert keyfile.is_encrypted(Path(keys[name]))
    # Encrypting again changes nothing (already encrypted under that passphrase).
    before = Path(keys["sign_key"]).read_bytes()
    assert main(["pki", "encrypt-keys", "--config", str(fed.configs["44"])]) == 0
    assert Path(keys["sign_key"]).read_bytes() == before

    with started(fed):
        consent = fed.grant("51", [WORKER], "dibao").consent_id
        result = fed.verify("51", [WORKER], CHECK, consent_id=consent)
        answer = result.answers[0]
        assert answer.signature_valid
        signer = x509.load_der_x509_certificate(answer.signed.signature.certificate)
        assert signer == load_cert(fed.member("44").cfg.sign_cert)
        # Rotation without restart works with encrypted keys too (`pki issue` + `node rotate`).
        issue_member(fed.pki, "44", loopback=True, passphrase=PASSPHRASE.encode(),
                     ca_passphrase=keyfile.SecretSource(file=passphrase))
        assert main(["node", "rotate", "--config", str(fed.configs["44"]), "--pki", str(fed.pki)]) == 0
        assert fed.loop is not None and fed.loop.run(fed.servers["44"].check_keys())
        rotated = fed.verify("51", [WORKER], CHECK, consent_id=consent, to="44").answers[0]
        assert rotated.signature_valid
        assert x509.load_der_x509_certificate(rotated.signed.signature.certificate) == load_cert(fed.member("44").cfg.sign_cert) != signer
        assert served_tls_certificate(fed, "44") == load_cert(fed.member("44").cfg.tls_cert)  # decrypted on reload
    assert plain_private_keys(tmp_path) == []  # the TLS keys were decrypted in memory only


def test_encrypted_pkcs8_is_standard_scrypt_pbes2(tmp_path: Path) -> None:
    """A key written encrypted is PBES2/scrypt PKCS#8 that cryptography's own loader opens with the passphrase only."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "sign.key"
    keyfile.write_private_key(path, key, PASSPHRASE.encode())
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") and path.stat().st_mode & 0o777 == 0o600
    opened = serialization.load_pem_private_key(data, PASSPHRASE.encode())
    assert opened.public_key() == key.public_key()  # type: ignore[union-attr]
    raw = base64.b64decode(b"".join(data.splitlines()[1:-1]))
    assert bytes.fromhex("2a864886f70d01050d") in raw and bytes.fromhex("2b06010401da47040b") in raw  # PBES2, scrypt
    with pytest.raises(PkiError, match="at least"):
        keyfile.pem_of(key, b"short")


def test_wrong_or_missing_passphrase_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A node whose keys are encrypted refuses to start with a wrong, missing or unavailable passphrase:
    one line on stderr, exit 2, no traceback and nothing of the secret echoed."""
    pki = tmp_path / "pki"
    passphrase = secret_file(tmp_path / "pass", PASSPHRASE)
    init_pki(pki, passphrase=PASSPHRASE.encode())
    issue_member(pki, "32", passphrase=PASSPHRASE.encode(), ca_passphrase=keyfile.SecretSource(file=passphrase))
    cfg = write_node_config(tmp_path, pki, "32", coordinator="127.0.0.1:9")  # no passphrase configured

    line = one_line_error(hedui("node", "serve", "--config", cfg))
    assert "is encrypted" in line and "passphrase" in line

    wrong = secret_file(tmp_path / "wrong", "not the passphrase, but long enough")
    data = tomllib.loads(cfg.read_text())
    data["keys"]["passphrase_file"] = str(wrong)
    cfg.write_text(tomli_w.dumps(data))
    line = one_line_error(hedui("node", "serve", "--config", cfg))
    assert "wrong passphrase" in line and "not the passphrase" not in line

    data["keys"].pop("passphrase_file")
    data["keys"]["passphrase_credential"] = "hedui-key"
    cfg.write_text(tomli_w.dumps(data))
    env_before = os.environ.pop(keyfile.CREDENTIALS_ENV, None)
    try:
        line = one_line_error(hedui("node", "serve", "--config", cfg))
    finally:
        if env_before is not None:
            os.environ[keyfile.CREDENTIALS_ENV] = env_before
    assert "CREDENTIALS_DIRECTORY" in line

    # The CA key too: issuing with the wrong CA passphrase writes nothing.
    members_before = sorted(p.name for p in (pki / "members").iterdir())
    line = one_line_error(hedui("pki", "issue", "--pki", pki, "--province", "44", "--ca-passphrase-file", wrong))
    assert "wrong passphrase" in line and sorted(p.name for p in (pki / "members").iterdir()) == members_before
    line = one_line_error(hedui("pki", "encrypt-keys", "--config", cfg, "--passphrase-file", wrong))
    assert "wrong passphrase" in line
    line = one_line_error(hedui("node", "init", "--pki", pki, "--province", "32", "--listen", "127.0.0.1:0",
                                "--data-dir", tmp_path / "n2", "--config", tmp_path / "n2.toml", "--passphrase-file", wrong))
    assert "wrong passphrase" in line and not (tmp_path / "n2.toml").exists()
    short = secret_file(tmp_path / "short", "2short")
    line = one_line_error(hedui("pki", "init", "--pki", tmp_path / "pki2", "--passphrase-file", short))
    assert "at least 16" in line and not (tmp_path / "pki2").exists()


# ---------------------------------------------------------------------------------------------
# PKCS#11 (SoftHSM2)


def test_a_key_generated_in_softhsm2_signs_and_verifies_with_its_certificate(softhsm: Path, tmp_path: Path) -> None:
    """`pki hsm-generate` makes a non-extractable Ed25519 key in the token, certifies it, removes the file key;
    the member's signatures are made in the token and verify with the certificate through the normal Verifier."""
    from pkcs11 import Attribute, ObjectClass

    pki = tmp_path / "pki"
    init_pki(pki)
    issue_member(pki, "32")
    cfg = write_node_config(tmp_path, pki, "32", coordinator="127.0.0.1:9")
    old_key = Path(tomllib.loads(cfg.read_text())["keys"]["sign_key"])
    pin = secret_file(tmp_path / "pin", USER_PIN)
    hsm_generate(cfg, pki, softhsm, pin, "sign-32")

    table = tomllib.loads(cfg.read_text())
    assert "sign_key" not in table["keys"] and table["pkcs11"]["key_label"] == "sign-32"
    assert not old_key.exists() and not (pki / "members" / "32" / "sign.key").exists()
    member = Member.from_config(cfg)
    assert member.signer.matches_certificate()
    verifier = signing.Verifier(member.anchor)
    signature = member.signer.sign(signing.QUERY, b"a query body")
    assert verifier.verify(signature, signing.QUERY, b"a query body").identity.province == "32"
    batch = member.signer.sign_many([(signing.ANSWER, b"one"), (signing.ANSWER, b"two")])
    assert [verifier.verify(s, signing.ANSWER, b).algorithm for s, b in zip(batch, (b"one", b"two"), strict=True)] \
        == [signing.ED25519_BATCH] * 2
    cert = load_cert(member.cfg.sign_cert)
    cert.public_key().verify(signature.value, signing.to_be_signed(signing.QUERY, b"a query body"))  # type: ignore[union-attr]

    where = token_key.TokenKey(softhsm, TOKEN, "sign-32", keyfile.SecretSource(file=pin))
    with token_key.open_session(where) as session:
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="sign-32")
        assert private[Attribute.SENSITIVE] and not private[Attribute.EXTRACTABLE]
        assert private[Attribute.ALWAYS_SENSITIVE] and private[Attribute.NEVER_EXTRACTABLE]  # made inside

    # A second key under the same label is refused; a wrong PIN is one line, exit 2.
    with pytest.raises(PkiError, match="already holds"):
        token_key.generate(where)
    wrong_pin = secret_file(tmp_path / "wrong-pin", "00000000")
    table["pkcs11"]["pin_file"] = str(wrong_pin)
    cfg.write_text(tomli_w.dumps(table))
    line = one_line_error(hedui("node", "serve", "--config", cfg))
    assert "wrong PIN" in line and "00000000" not in line


def test_a_node_with_its_signing_key_in_the_token_answers_a_verify_whose_signature_checks(
        softhsm: Path, planted: dict[str, Path], tmp_path: Path) -> None:
    """The holder (44) signs with its SoftHSM2 key: a routed verify over mutual TLS returns an answer whose
    signature checks against the token key's certificate."""
    fed = build_federation(tmp_path / "fed", ["51", "44"], data=planted)
    pin = secret_file(tmp_path / "pin", USER_PIN)
    hsm_generate(fed.configs["44"], fed.pki, softhsm, pin, "sign-44")
    token_cert = load_cert(fed.member("44").cfg.sign_cert)
    with started(fed):
        consent = fed.grant("51", [WORKER], "dibao").consent_id
        answer = fed.verify("51", [WORKER], CHECK, consent_id=consent).answers[0]
        assert answer.signature_valid
        assert x509.load_der_x509_certificate(answer.signed.signature.certificate) == token_cert
        direct = fed.verify("51", [WORKER], CHECK, consent_id=consent, to="44").answers[0]
        assert direct.signature_valid and direct.signed.signature.certificate == answer.signed.signature.certificate


@contextlib.contextmanager
def gated_token_sign(key: token_key.Pkcs11SigningKey) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Make the token key's sign wait for the test: (entered, release); released and restored on exit."""
    entered, release = threading.Event(), threading.Event()
    original = key.sign

    def sign(data: bytes) -> bytes:
        entered.set()
        release.wait(timeout=120)  # held by the test; bounded only so a failing test cannot hang the run
        return original(data)

    key.sign = sign  # type: ignore[method-assign]
    try:
        yield entered, release
    finally:
        release.set()
        del key.sign  # type: ignore[attr-defined]


def test_a_token_sign_in_progress_does_not_block_the_event_loop(
        softhsm: Path, planted: dict[str, Path], tmp_path: Path) -> None:
    """While the holder's SoftHSM2 key is inside a sign (held by the test), coroutines and RPCs on the node's event
    loop run to completion; the answer (and a locator republished likewise) completes, signed by the token,
    once the sign is released."""
    fed = build_federation(tmp_path / "fed", ["51", "44"], data=planted)
    pin = secret_file(tmp_path / "pin", USER_PIN)
    hsm_generate(fed.configs["44"], fed.pki, softhsm, pin, "sign-44b")
    with started(fed), concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert fed.loop is not None
        node = fed.servers["44"]
        signer = node.batch_signer.signer
        key = signer._key
        assert isinstance(key, token_key.Pkcs11SigningKey) and signer.blocking
        assert not fed.member("51").signer.blocking  # a file key keeps signing inline
        consent = fed.grant("51", [WORKER], "dibao").consent_id

        async def other_work() -> int:
            await asyncio.sleep(0)
            return len(await node.link.directory(refresh=True))  # a real RPC, served on the same loop

        with gated_token_sign(key) as (entered, release):
            answer = pool.submit(fed.verify, "51", [WORKER], CHECK, consent_id=consent, to="44")
            assert entered.wait(timeout=60)  # the holder is inside the token's sign...
            assert fed.loop.run(other_work(), timeout=60) == 2  # ...and the loop still serves
            assert not answer.done() and not release.is_set()
            release.set()
            result = answer.result(timeout=60).answers[0]
        assert result.signature_valid and result.signed.signature.certificate == signer.certificate_der

        with gated_token_sign(key) as (entered, release):  # the locator publisher signs its shards off the loop too
            published = pool.submit(fed.loop.run, node.link.locators.republish())
            assert entered.wait(timeout=60)
            assert fed.loop.run(other_work(), timeout=60) == 2
            assert not published.done()
            release.set()
            assert published.result(timeout=60)
