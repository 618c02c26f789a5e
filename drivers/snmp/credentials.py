"""SNMP credentials and request bounds, apart from pysnmp (configuration reads them).

Secrets are fields whose ``repr`` is hidden, so no log line, error or traceback shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

Auth = Literal["sha", "sha256", "sha512"]
Priv = Literal["aes", "none"]
AUTHS: Final[tuple[Auth, ...]] = ("sha", "sha256", "sha512")
PRIVS: Final[tuple[Priv, ...]] = ("aes", "none")
# USM derives keys from passphrases of at least 8 octets (RFC 3414 §11.2).
MIN_PASSPHRASE: Final = 8
# Bounds of the per-request timeout and retries: a controller is on the cabinet LAN, so
# an answer takes milliseconds; 10 s x 5 tries would already hide a dead unit for a minute.
MAX_TIMEOUT: Final = 10.0
MAX_RETRIES: Final = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class Community:
    """SNMPv2c: the community string (a password in clear on the wire; LAN use only)."""

    community: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Usm:
    """SNMPv3 USM: authPriv with ``priv = "aes"`` (AES-128 CFB, RFC 3826), else authNoPriv."""

    user: str
    auth_key: str = field(repr=False)
    priv_key: str = field(repr=False, default="")
    auth: Auth = "sha"
    priv: Priv = "aes"

    def __post_init__(self) -> None:
        if not self.user:
            raise ValueError("user: empty")
        if self.auth not in AUTHS or self.priv not in PRIVS:
            raise ValueError(f"auth one of {AUTHS}, priv one of {PRIVS}")
        if len(self.auth_key) < MIN_PASSPHRASE:
            raise ValueError(f"auth_key: at least {MIN_PASSPHRASE} characters (RFC 3414 §11.2)")
        if self.priv != "none" and len(self.priv_key) < MIN_PASSPHRASE:
            raise ValueError(f"priv_key: at least {MIN_PASSPHRASE} characters (RFC 3414 §11.2)")


Credentials = Community | Usm
