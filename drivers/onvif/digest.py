"""HTTP Digest access authentication (RFC 7616), sans-IO.

A camera answers ``401`` with one or more ``WWW-Authenticate: Digest ...``
challenges; :func:`parse_challenges` reads them and :func:`authorization` builds
the ``Authorization`` header for a request. SHA-256 is preferred to MD5 when the
camera offers both (RFC 7616 §3.7: the client uses the first one it supports, in
the server's order of preference; we prefer the stronger one since cameras list
MD5 first for old clients). Only ``qop=auth`` (or none, RFC 2069) is supported:
``auth-int`` hashes the body, which no camera requires for a GET.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["Challenge", "DigestError", "authorization", "parse_challenges"]

# RFC 7616 §3.3 and §3.7: algorithm tokens, strongest first.
ALGORITHMS: Final = ("SHA-256", "SHA-256-sess", "MD5", "MD5-sess")
_HASHES: Final = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}
# A challenge is a few hundred bytes; a longer header is refused before parsing.
MAX_HEADER: Final = 4096

# auth-param = token BWS "=" BWS ( token / quoted-string )   (RFC 7235 §2.1)
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(,|$)')


class DigestError(Exception):
    """The challenge cannot be answered (malformed, or no algorithm we support)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """One ``Digest`` challenge (RFC 7616 §3.3)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: str | None = None  # "auth" when offered, else None (RFC 2069 compatibility)
    opaque: str | None = None


def parse_challenges(header: str) -> list[Challenge]:
    """The Digest challenges we can answer in a ``WWW-Authenticate`` value, best first."""
    if len(header) > MAX_HEADER:
        raise DigestError(f"WWW-Authenticate is {len(header)} characters (at most {MAX_HEADER})")
    found: list[Challenge] = []
    # Challenges start with their scheme; split before each "Digest " token.
    for part in re.split(r"(?i)(?:^|,)\s*(?=digest\s)", header):
        if not part.lower().startswith("digest "):
            continue
        params = _params(part[len("digest ") :])
        algorithm = params.get("algorithm", "MD5")
        qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
        if algorithm not in ALGORITHMS or (qops and "auth" not in qops):
            continue
        if "realm" not in params or "nonce" not in params:
            raise DigestError("Digest challenge without realm or nonce")
        found.append(
            Challenge(
                realm=params["realm"],
                nonce=params["nonce"],
                algorithm=algorithm,
                qop="auth" if qops else None,
                opaque=params.get("opaque"),
            )
        )
    if not found:
        raise DigestError(f"no Digest challenge with a supported algorithm in {header[:120]!r}")
    found.sort(key=lambda c: ALGORITHMS.index(c.algorithm))
    return found


def _params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _PARAM.match(text, pos)
        if match is None or match.end() == pos:
            raise DigestError(f"malformed Digest parameter at {text[pos : pos + 40]!r}")
        name, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[name] = value
        pos = match.end()
    return params


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization(
    challenge: Challenge,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str,
    nc: int = 1,
) -> str:
    """The ``Authorization`` header value answering ``challenge`` (RFC 7616 §3.4)."""
    base = challenge.algorithm.removesuffix("-sess")

    def h(text: str) -> str:
        return _HASHES[base](text.encode()).hexdigest()

    ha1 = h(f"{username}:{challenge.realm}:{password}")
    if challenge.algorithm.endswith("-sess"):
        ha1 = h(f"{ha1}:{challenge.nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}")
    ncv = f"{nc:08x}"
    if challenge.qop:
        response = h(f"{ha1}:{challenge.nonce}:{ncv}:{cnonce}:{challenge.qop}:{ha2}")
    else:
        response = h(f"{ha1}:{challenge.nonce}:{ha2}")
    fields = [
        f"username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"algorithm={challenge.algorithm}",
        f"response={_quote(response)}",
    ]
    if challenge.qop:
        fields += [f"qop={challenge.qop}", f"nc={ncv}", f"cnonce={_quote(cnonce)}"]
    if challenge.opaque is not None:
        fields.append(f"opaque={_quote(challenge.opaque)}")
    return "Digest " + ", ".join(fields)
