"""Key files: the gateway's Ed25519 identity (DESIGN.md, Security) and other key pairs.

A key pair lives in the data directory as ``<stem>.key`` (PKCS#8 PEM, unencrypted, mode 0600)
and ``<stem>.pub`` (SubjectPublicKeyInfo PEM). The gateway's is ``gateway.key``/``gateway.pub``;
central keys (``root``, ``operator``, ``maintenance``) are made the same way by `write_keypair`.
An existing identity is never overwritten, and a private key file that group or others can
access is refused, as OpenSSH does.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from agent.security.cose import kid_of

GATEWAY_STEM: Final = "gateway"
GATEWAY_KEY: Final = "gateway.key"
GATEWAY_PUB: Final = "gateway.pub"

PRIVATE_SUFFIX: Final = ".key"
PUBLIC_SUFFIX: Final = ".pub"
PRIVATE_MODE: Final = 0o600  # owner read/write only (DESIGN.md, Security: "file mode 0600")
PUBLIC_MODE: Final = 0o644  # a public key is no secret
DIR_MODE: Final = 0o700  # a data directory we create holds secrets: owner only
# A PEM Ed25519 key is about 120 bytes; anything near this limit is not a key file.
MAX_KEY_FILE_SIZE: Final = 64 * 1024
_STEM_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_PEM_BEGIN: Final = b"-----BEGIN "


class KeyFileError(Exception):
    """A key file is missing, unreadable, malformed, of the wrong type or unsafe.

    ``path`` is the file concerned; ``reason`` says what is wrong and, when there is one, the fix.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(path, reason)  # both in args, so the error pickles
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class KeyExistsError(KeyFileError):
    """A key pair already exists where a new one was to be written (identities are kept)."""


def _check_stem(stem: str) -> None:
    if not _STEM_RE.fullmatch(stem):
        raise ValueError(f"key name {stem!r} must match {_STEM_RE.pattern} (no path separators)")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (never chmod later); refuse if it exists."""
    try:
        # O_EXCL: never follow a planted symlink, never truncate an existing key.
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode)
    except FileExistsError as exc:
        raise KeyExistsError(path, "already exists; an existing key is never replaced") from exc
    except OSError as exc:
        raise KeyFileError(path, f"cannot create: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        path.unlink(missing_ok=True)  # no half-written key left behind
        if isinstance(exc, OSError):
            raise KeyFileError(path, f"cannot write: {exc.strerror}") from exc
        raise


def write_keypair(data_dir: Path, stem: str) -> Ed25519PrivateKey:
    """Create a new Ed25519 key pair as ``<stem>.key`` and ``<stem>.pub`` in ``data_dir``.

    ``data_dir`` is created (mode 0700) if missing. Raises `KeyExistsError` if either file is
    already there: a key pair is an identity that others trust, never silently replaced.
    """
    _check_stem(stem)
    try:
        data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(data_dir, f"cannot create the data directory: {exc.strerror}") from exc
    key_path = data_dir / f"{stem}{PRIVATE_SUFFIX}"
    pub_path = data_dir / f"{stem}{PUBLIC_SUFFIX}"
    for path in (key_path, pub_path):
        if path.exists() or path.is_symlink():
            raise KeyExistsError(path, "already exists; an existing key is never replaced")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    _write_new(key_path, private_pem, PRIVATE_MODE)
    try:
        _write_new(pub_path, public_pem, PUBLIC_MODE)
    except BaseException:
        # Keep the pair whole: a private key without its published half is not an identity.
        with contextlib.suppress(OSError):
            key_path.unlink()
        raise
    _fsync_dir(data_dir)
    return key


def init_gateway_keys(data_dir: Path) -> Ed25519PrivateKey:
    """Provision the gateway identity (`armoire keys init`): ``gateway.key`` + ``gateway.pub``."""
    return write_keypair(data_dir, GATEWAY_STEM)


def _read_key_file(path: Path, *, private: bool) -> bytes:
    try:
        # O_NONBLOCK: a FIFO planted as a key file must not hang the agent in open().
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        hint = " (create it with `armoire keys init`)" if path.name == GATEWAY_KEY else ""
        raise KeyFileError(path, f"no such file{hint}") from exc
    except OSError as exc:
        raise KeyFileError(path, f"cannot open: {exc.strerror}") from exc
    st = os.fstat(fd)  # the mode of the file actually opened, not of a name
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise KeyFileError(path, "not a regular file")
    with os.fdopen(fd, "rb") as f:
        if private and st.st_mode & 0o077:
            raise KeyFileError(
                path,
                f"private key is accessible by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); refusing to use it: run `chmod 600 {path}`",
            )
        try:
            data = f.read(MAX_KEY_FILE_SIZE + 1)
        except OSError as exc:
            raise KeyFileError(path, f"cannot read: {exc.strerror}") from exc
    if len(data) > MAX_KEY_FILE_SIZE:
        raise KeyFileError(path, f"larger than {MAX_KEY_FILE_SIZE} bytes: not a key file")
    if _PEM_BEGIN not in data:
        raise KeyFileError(path, "not a PEM file (no '-----BEGIN' line)")
    return data


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an unencrypted PEM Ed25519 private key, refusing a file group/others can access."""
    data = _read_key_file(path, private=True)
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography's signal for "encrypted, and no password given"
        raise KeyFileError(
            path, "private key is encrypted; Armoire expects it unencrypted"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(path, f"not a valid PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(path, f"holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load a SubjectPublicKeyInfo PEM Ed25519 public key."""
    data = _read_key_file(path, private=False)
    try:
        key = load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(path, f"not a valid PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(path, f"holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def public_raw(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key (RFC 8032 §5.1.5) of a key pair or public key."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_summary(gw: str, data_dir: Path) -> dict[str, str]:
    """What `armoire keys show` prints: ``{"gw": gw, "kid": hex, "pub": hex}``.

    Derived from ``gateway.key`` (the identity itself); if ``gateway.pub`` is there it must
    match, since that is the file an operator copies into the central post.
    """
    raw = public_raw(load_private_key(data_dir / GATEWAY_KEY))
    pub_path = data_dir / GATEWAY_PUB
    if pub_path.exists() and public_raw(load_public_key(pub_path)) != raw:
        raise KeyFileError(pub_path, f"does not match {GATEWAY_KEY}; do not publish it")
    return {"gw": gw, "kid": kid_of(raw).hex(), "pub": raw.hex()}
