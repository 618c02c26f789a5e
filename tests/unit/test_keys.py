"""Key files: provisioning the gateway identity, loading keys, refusing unsafe or foreign files."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from agent.security.cose import Signer, decode_envelope, verify
from agent.security.keys import (
    GATEWAY_KEY,
    GATEWAY_PUB,
    KeyExistsError,
    KeyFileError,
    init_gateway_keys,
    key_summary,
    load_private_key,
    load_public_key,
    public_raw,
    write_keypair,
)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Run with umask 0, so any mode we observe is the one the code asked for."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.mark.usefixtures("permissive_umask")
def test_init_gateway_keys__modes_even_with_permissive_umask(tmp_path: Path) -> None:
    """The gateway's private key could be readable by other users of the gateway."""
    data_dir = tmp_path / "var" / "armoire"
    init_gateway_keys(data_dir)
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / GATEWAY_KEY) == 0o600
    assert _mode(data_dir / GATEWAY_PUB) == 0o644


def test_init_gateway_keys__existing_dir_mode_untouched(tmp_path: Path) -> None:
    """Provisioning would change the permissions of a directory the installer set up."""
    tmp_path.chmod(0o750)
    init_gateway_keys(tmp_path)
    assert _mode(tmp_path) == 0o750


def test_init_gateway_keys__pem_formats_load_with_cryptography(tmp_path: Path) -> None:
    """Other tools (openssl, the central post) could not read the key files we write."""
    key = init_gateway_keys(tmp_path)
    private_pem = (tmp_path / GATEWAY_KEY).read_bytes()
    public_pem = (tmp_path / GATEWAY_PUB).read_bytes()
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")  # SubjectPublicKeyInfo
    loaded_private = load_pem_private_key(private_pem, password=None)
    loaded_public = load_pem_public_key(public_pem)
    assert isinstance(loaded_private, Ed25519PrivateKey)
    assert isinstance(loaded_public, Ed25519PublicKey)
    assert public_raw(loaded_private) == public_raw(key) == public_raw(loaded_public)


def test_init_gateway_keys__refuses_to_overwrite(tmp_path: Path) -> None:
    """Re-running provisioning would silently replace the gateway's identity."""
    init_gateway_keys(tmp_path)
    before = (tmp_path / GATEWAY_KEY).read_bytes(), (tmp_path / GATEWAY_PUB).read_bytes()
    with pytest.raises(KeyExistsError) as info:
        init_gateway_keys(tmp_path)
    assert info.value.path == tmp_path / GATEWAY_KEY
    after = (tmp_path / GATEWAY_KEY).read_bytes(), (tmp_path / GATEWAY_PUB).read_bytes()
    assert after == before


def test_init_gateway_keys__refuses_when_only_the_public_half_exists(tmp_path: Path) -> None:
    """A new key could be created beside a public key already registered at the central post."""
    (tmp_path / GATEWAY_PUB).write_bytes(b"published\n")
    with pytest.raises(KeyExistsError):
        init_gateway_keys(tmp_path)
    assert not (tmp_path / GATEWAY_KEY).exists()
    assert (tmp_path / GATEWAY_PUB).read_bytes() == b"published\n"


def test_init_gateway_keys__refuses_a_planted_symlink(tmp_path: Path) -> None:
    """A symlink planted as gateway.key could make provisioning write the key elsewhere."""
    target = tmp_path / "elsewhere"
    (tmp_path / GATEWAY_KEY).symlink_to(target)
    with pytest.raises(KeyExistsError):
        init_gateway_keys(tmp_path)
    assert not target.exists()


def test_init_gateway_keys__round_trip_through_files(tmp_path: Path) -> None:
    """A reloaded key would not sign envelopes that its published half verifies."""
    init_gateway_keys(tmp_path)
    signer = Signer(load_private_key(tmp_path / GATEWAY_KEY))
    verify(decode_envelope(signer.sign(b"x")), load_public_key(tmp_path / GATEWAY_PUB))


def test_write_keypair__central_keys(tmp_path: Path) -> None:
    """Root, operator and maintenance keys could not be made like the gateway's."""
    keys = {stem: write_keypair(tmp_path, stem) for stem in ("root", "operator", "maintenance")}
    for stem, key in keys.items():
        assert public_raw(load_private_key(tmp_path / f"{stem}.key")) == public_raw(key)
        assert public_raw(load_public_key(tmp_path / f"{stem}.pub")) == public_raw(key)
    assert len({public_raw(k) for k in keys.values()}) == 3


@pytest.mark.parametrize("stem", ["", "../gateway", "a/b", "Gateway", ".hidden"])
def test_write_keypair__rejects_unsafe_names(tmp_path: Path, stem: str) -> None:
    """A key name could write outside the data directory."""
    with pytest.raises(ValueError, match="key name"):
        write_keypair(tmp_path / "data", stem)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644, 0o660])
def test_load_private_key__rejects_group_or_other_access(tmp_path: Path, mode: int) -> None:
    """The agent would keep using a private key that other users can read."""
    init_gateway_keys(tmp_path)
    path = tmp_path / GATEWAY_KEY
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_private_key(path)
    assert f"chmod 600 {path}" in str(info.value)
    assert f"{mode:04o}" in info.value.reason


def test_load_private_key__accepts_owner_read_only(tmp_path: Path) -> None:
    """A key made read-only by the installer (0400) would be refused."""
    key = init_gateway_keys(tmp_path)
    (tmp_path / GATEWAY_KEY).chmod(0o400)
    assert public_raw(load_private_key(tmp_path / GATEWAY_KEY)) == public_raw(key)


def test_load_private_key__missing_file(tmp_path: Path) -> None:
    """A gateway that was never provisioned would fail with an obscure traceback."""
    with pytest.raises(KeyFileError, match=r"no such file.*armoire keys init"):
        load_private_key(tmp_path / GATEWAY_KEY)


def test_load_private_key__not_pem(tmp_path: Path) -> None:
    """A corrupted key file would not be reported as such."""
    path = _write(tmp_path / GATEWAY_KEY, b"\x00\x01 garbage")
    with pytest.raises(KeyFileError, match="not a PEM file"):
        load_private_key(path)
    _write(path, b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFileError, match="not a valid PEM private key"):
        load_private_key(path)


def test_load_private_key__not_ed25519(tmp_path: Path) -> None:
    """A key of another algorithm would be used to sign envelopes."""
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path = _write(tmp_path / GATEWAY_KEY, pem)
    with pytest.raises(KeyFileError, match="not an Ed25519 private key"):
        load_private_key(path)


def test_load_private_key__encrypted(tmp_path: Path) -> None:
    """An encrypted key would be reported as garbage instead of as encrypted."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw"))
    path = _write(tmp_path / GATEWAY_KEY, pem)
    with pytest.raises(KeyFileError, match="encrypted"):
        load_private_key(path)


def test_load_private_key__directory(tmp_path: Path) -> None:
    """A directory in place of the key file would crash the agent with an obscure error."""
    path = tmp_path / GATEWAY_KEY
    path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_private_key(path)


def test_load_public_key__errors(tmp_path: Path) -> None:
    """A wrong public key file would be trusted, or reported without saying why."""
    with pytest.raises(KeyFileError, match="no such file"):
        load_public_key(tmp_path / "root.pub")
    path = _write(tmp_path / "root.pub", b"hello", 0o644)
    with pytest.raises(KeyFileError, match="not a PEM file"):
        load_public_key(path)
    init_gateway_keys(tmp_path / "gw")
    private_pem = (tmp_path / "gw" / GATEWAY_KEY).read_bytes()
    _write(path, private_pem, 0o644)
    with pytest.raises(KeyFileError, match="not a valid PEM public key"):
        load_public_key(path)
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    _write(path, ec_pub.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo), 0o644)
    with pytest.raises(KeyFileError, match="not an Ed25519 public key"):
        load_public_key(path)


def test_public_raw__private_and_public_agree() -> None:
    """A kid computed from a private key would differ from the one from its public key."""
    key = Ed25519PrivateKey.generate()
    raw = public_raw(key)
    assert len(raw) == 32
    assert raw == public_raw(key.public_key())


def test_key_summary__kid_is_sha256_prefix(tmp_path: Path) -> None:
    """`armoire keys show` would print a kid the central post does not compute."""
    key = init_gateway_keys(tmp_path)
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    summary = key_summary("cab-0042", tmp_path)
    assert summary == {
        "gw": "cab-0042",
        "kid": hashlib.sha256(raw).digest()[:8].hex(),
        "pub": raw.hex(),
    }
    assert bytes.fromhex(summary["kid"]) == Signer(key).kid


def test_key_summary__mismatched_public_file(tmp_path: Path) -> None:
    """An operator could register a gateway.pub that does not belong to the gateway's key."""
    init_gateway_keys(tmp_path)
    other = Ed25519PrivateKey.generate().public_key()
    pub = tmp_path / GATEWAY_PUB
    _write(pub, other.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo), 0o644)
    with pytest.raises(KeyFileError, match="does not match"):
        key_summary("cab-0042", tmp_path)
