"""The central post's command side: central keys, trust material, signed commands.

Like :mod:`central.post`, this is written from PROTOCOL.md alone and shares no
code with the agent (only ``agent.clock``): the COSE_Sign1 signer and the
``Command`` / ``TrustUpdate`` builders below are a second, independent reading
of the wire contract, so a gateway is tested against a peer that does not
share its bugs.

Three layers:

- Pure builders: :func:`sign`, :func:`make_command`, :func:`sign_trust_update`
  (bodies and keys in, bytes out; time is an argument).
- Files: :func:`init_central_keys` makes the central key pairs and the trust
  material a gateway installs (:func:`install_trust`); :func:`write_central_config`
  tells the command-line tool where the broker and the gateways' keys are.
- MQTT: :class:`Commander` publishes signed commands and waits for the Ack,
  which the :class:`~central.post.CentralPost` receives and verifies;
  :func:`send_cli` is ``armoire-central send``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit

import aiomqtt
import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.clock import Clock, SystemClock, wall_ms

# The wire constants are defined once, in the reference receiver.
from central.post import (
    ALG_EDDSA,
    COMMAND_ID_BYTES,
    COSE_SIGN1_TAG,
    DEFAULT_MQTT_PORT,
    ED25519_PUBLIC_BYTES,
    GATEWAY_ID,
    HEADER_ALG,
    HEADER_KID,
    KEEPALIVE_S,
    KID_BYTES,
    MQTT_TIMEOUT_S,
    PROTOCOL_VERSION,
    TOPIC_ROOT,
    UINT_MAX,
    CentralPost,
    LocalProtocolError,
    load_public_pem,
)

__all__ = [
    "CENTRAL_CONFIG",
    "CENTRAL_KEYS",
    "CentralConfig",
    "Commander",
    "init_central_keys",
    "install_trust",
    "kid_of",
    "load_key",
    "make_command",
    "make_token",
    "public_raw",
    "read_central_config",
    "send_cli",
    "sign",
    "sign_trust_update",
    "token_text",
    "write_central_config",
]

# -- constants from PROTOCOL.md (the others: central.post) -------------------

SIG_CONTEXT: Final = "Signature1"  # RFC 9052 §4.4
COMMAND_OPS: Final = ("write", "relinquish", "action")
PRIO_MIN, PRIO_MAX = 1, 16  # Command "prio" => 1..16
ANY_GATEWAY: Final = "*"  # TrustUpdate "gw" => gw-id / "*"

# -- constants of the central post ------------------------------------------

CENTRAL_KEYS: Final = ("root", "operator", "maintenance")
# Roles of the command keys in the trust update (DESIGN.md, "Trust store").
KEY_ROLES: Final[Mapping[str, tuple[str, ...]]] = {
    "operator": ("operator",),
    "maintenance": ("maintenance",),
}
TRUST_ROOT: Final = "trust-root.pub"
TRUST_UPDATE: Final = "trust.cose"
CENTRAL_CONFIG: Final = "central.toml"
INSTALL_HINT: Final = "copy trust-root.pub and trust.cose into the gateway's data directory"

PRIVATE_MODE: Final = 0o600  # private keys: owner only (DESIGN.md, Security)
PUBLIC_MODE: Final = 0o644  # public keys and signed trust updates are no secret
DIR_MODE: Final = 0o700  # a directory we create holds private keys

# How long a command stays valid by default: long enough for a cellular round
# trip and a few retries, short enough that a command stuck in a queue is not
# executed minutes later than the operator meant.
DEFAULT_VALIDITY_S: Final = 60.0
MS_PER_S: Final = 1000
# MQTT 5 §3.3.2.3.3: the Message Expiry Interval is a Four Byte Integer.
MAX_EXPIRY_S: Final = 2**32 - 1
# An already-expired command still gets one second, so that a test can deliver
# it to a connected gateway and see it rejected as "expired"; a broker still
# never holds it for a gateway that is away.
MIN_EXPIRY_S: Final = 1

# `armoire-central send` exit statuses (the CLI's 0/1/2 plus "no answer").
EXIT_DONE: Final = 0
EXIT_REFUSED: Final = 1  # the gateway answered "rejected" or "failed"
EXIT_USAGE: Final = 2  # bad arguments, configuration or key files
EXIT_TIMEOUT: Final = 3  # no Ack in time, or the broker could not be reached


# -- keys ----------------------------------------------------------------------


def public_raw(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte Ed25519 public key of ``key``."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def kid_of(public: bytes) -> bytes:
    """First 8 bytes of SHA-256 over the raw public key (PROTOCOL.md, "Envelope")."""
    if len(public) != ED25519_PUBLIC_BYTES:
        raise LocalProtocolError(f"public key has {len(public)} bytes, not 32 (raw Ed25519)")
    return hashlib.sha256(public).digest()[:KID_BYTES]


def load_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path`` (PKCS#8 PEM, unencrypted)."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise LocalProtocolError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise LocalProtocolError(f"{path}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise LocalProtocolError(f"{path}: not an Ed25519 private key")
    return key


def _check_new(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.exists() or path.is_symlink():
            raise FileExistsError(
                f"{path} already exists; central keys are never overwritten "
                "(gateways trust them): use another directory, or remove the old set on purpose"
            )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start; refuse if it exists."""
    # O_EXCL: never follow a planted symlink, never truncate an existing key.
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)  # no half-written file left behind
        raise


def _write_replace(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically: readers see the old file or the new one, whole."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    _write_new(tmp, data, mode)
    try:
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def init_central_keys(
    directory: Path, *, gw: str = ANY_GATEWAY, serial: int = 1, clock: Clock | None = None
) -> dict[str, Any]:
    """Create the central key pairs and the trust material gateways install.

    Writes ``root``, ``operator`` and ``maintenance`` as ``DIR/<name>.key``
    (PKCS#8 PEM, mode 0600) and ``DIR/<name>.pub`` (SubjectPublicKeyInfo PEM),
    then ``DIR/trust-root.pub`` (a copy of ``root.pub``, the key a gateway
    pins) and ``DIR/trust.cose`` (a TrustUpdate signed by the root key, for
    ``gw`` with ``serial``, listing the operator key with the ``operator``
    role and the maintenance key with the ``maintenance`` role). Every file is
    created with ``O_EXCL``: if any is already there, nothing is written and
    ``FileExistsError`` says which. ``clock`` gives the trust update's ``iat``.

    Returns a JSON-able summary: ``{"root": {"kid", "pub"}, "operator": {...},
    "maintenance": {...}, "trust_root": path, "trust": path, "install": hint}``
    with kids and raw public keys as hex.
    """
    if gw != ANY_GATEWAY and not GATEWAY_ID.fullmatch(gw):
        raise LocalProtocolError(f"gateway id {gw!r} is not [a-z0-9-]{{1,64}} or '*'")
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    trust_root, trust = directory / TRUST_ROOT, directory / TRUST_UPDATE
    pairs = {name: (directory / f"{name}.key", directory / f"{name}.pub") for name in CENTRAL_KEYS}
    _check_new([path for pair in pairs.values() for path in pair] + [trust_root, trust])

    keys = {name: Ed25519PrivateKey.generate() for name in CENTRAL_KEYS}
    trust_update = sign_trust_update(
        keys["root"],
        serial=serial,
        keys=[
            {"pub": public_raw(keys[name]), "roles": list(KEY_ROLES[name])} for name in KEY_ROLES
        ],
        gw=gw,
        now_ms=wall_ms(clock or SystemClock()),
    )
    root_pem = (
        keys["root"].public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    files: list[tuple[Path, bytes, int]] = []
    for name, (key_path, pub_path) in pairs.items():
        key = keys[name]
        private_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        files += [(key_path, private_pem, PRIVATE_MODE), (pub_path, public_pem, PUBLIC_MODE)]
    files += [(trust_root, root_pem, PUBLIC_MODE), (trust, trust_update, PUBLIC_MODE)]

    written: list[Path] = []
    try:
        for path, data, mode in files:
            _write_new(path, data, mode)
            written.append(path)
    except BaseException:
        # Keep the set whole: a trust update naming keys that were not kept is useless.
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise

    summary: dict[str, Any] = {
        name: {"kid": kid_of(public_raw(key)).hex(), "pub": public_raw(key).hex()}
        for name, key in keys.items()
    }
    summary |= {"trust_root": str(trust_root), "trust": str(trust), "install": INSTALL_HINT}
    return summary


def install_trust(central_dir: Path, gateway_data_dir: Path) -> None:
    """Copy ``trust-root.pub`` and ``trust.cose`` from ``central_dir`` to a gateway.

    ``trust.cose`` is replaced (atomically): a newer trust update supersedes
    the old. A different ``trust-root.pub`` already there raises
    ``FileExistsError``: a gateway's pinned root is never swapped silently.
    """
    root_src, trust_src = central_dir / TRUST_ROOT, central_dir / TRUST_UPDATE
    root_pem, trust_data = root_src.read_bytes(), trust_src.read_bytes()
    gateway_data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    root_dst = gateway_data_dir / TRUST_ROOT
    if root_dst.exists() or root_dst.is_symlink():
        if root_dst.is_symlink() or root_dst.read_bytes() != root_pem:
            raise FileExistsError(
                f"{root_dst} pins another root key; remove it on purpose to re-pin the gateway"
            )
    else:
        _write_new(root_dst, root_pem, PUBLIC_MODE)
    _write_replace(gateway_data_dir / TRUST_UPDATE, trust_data, PUBLIC_MODE)


# -- COSE_Sign1 and bodies (PROTOCOL.md, "Envelope" and "Bodies") -------------


def sign(key: Ed25519PrivateKey, body: Mapping[str, Any]) -> bytes:
    """``body`` as a tagged COSE_Sign1 signed by ``key`` (PROTOCOL.md, "Envelope").

    Protected header ``{1: -8, 4: kid}``, empty unprotected header, Ed25519
    signature over ``["Signature1", protected, h'', payload]``.
    """
    protected = cbor2.dumps({HEADER_ALG: ALG_EDDSA, HEADER_KID: kid_of(public_raw(key))})
    payload = cbor2.dumps(dict(body))
    signature = key.sign(cbor2.dumps([SIG_CONTEXT, protected, b"", payload]))
    return bytes(cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, signature])))


def _uint(value: object, what: str) -> int:
    # `type(...) is int`: a bool is an int in Python, but not a CBOR uint.
    if type(value) is not int or not 0 <= value <= UINT_MAX:
        raise LocalProtocolError(f"{what} must be a uint, got {value!r}")
    return value


def make_command(
    *,
    gw: str,
    op: str,
    point: str | None = None,
    value: Any = None,
    prio: int | None = None,
    hold: int | None = None,
    name: str | None = None,
    args: Mapping[str, Any] | None = None,
    now_ms: int,
    validity_s: float = DEFAULT_VALIDITY_S,
    nbf_ms: int | None = None,
    cmd_id: bytes | None = None,
) -> dict[str, Any]:
    """A ``Command`` body (PROTOCOL.md, CDDL), checked as it is built.

    ``iat`` is ``now_ms``, ``exp`` is ``now_ms + validity_s``; ``id`` is 16
    random bytes unless ``cmd_id`` is given. ``write`` needs ``point`` and
    takes ``value`` (``None`` is sent as CBOR null); ``relinquish`` needs
    ``point``; ``action`` needs ``name``. A misuse raises
    :class:`~central.post.LocalProtocolError`; to send a body that breaks the
    CDDL on purpose, build the dict by hand and :func:`sign` it.
    """
    if not GATEWAY_ID.fullmatch(gw):
        raise LocalProtocolError(f"gateway id {gw!r} is not [a-z0-9-]{{1,64}}")
    if op not in COMMAND_OPS:
        raise LocalProtocolError(f"op {op!r} is not one of {', '.join(COMMAND_OPS)}")
    _uint(now_ms, "now_ms")
    if not (math.isfinite(validity_s) and validity_s > 0):
        raise LocalProtocolError(f"validity_s must be a positive number, got {validity_s}")
    if cmd_id is None:
        cmd_id = secrets.token_bytes(COMMAND_ID_BYTES)
    elif len(cmd_id) != COMMAND_ID_BYTES:
        raise LocalProtocolError(f"cmd_id must be {COMMAND_ID_BYTES} bytes, got {len(cmd_id)}")
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": bytes(cmd_id), "gw": gw, "iat": now_ms}
    if nbf_ms is not None:
        body["nbf"] = _uint(nbf_ms, "nbf_ms")
    body["exp"] = now_ms + round(validity_s * MS_PER_S)
    body["op"] = op
    match op:
        case "write" | "relinquish":
            if not isinstance(point, str) or not point:
                raise LocalProtocolError(f"{op} needs a point ('device/point')")
            if name is not None:
                raise LocalProtocolError(f"{op} takes no name (that is for action)")
            body["point"] = point
            if op == "write":
                body["value"] = value
            elif value is not None:
                raise LocalProtocolError("relinquish takes no value")
        case "action":
            if not isinstance(name, str) or not name:
                raise LocalProtocolError("action needs a name, e.g. 'selftest'")
            if point is not None or value is not None:
                raise LocalProtocolError("action takes no point or value (use args)")
    if prio is not None:
        if type(prio) is not int or not PRIO_MIN <= prio <= PRIO_MAX:
            raise LocalProtocolError(f"prio must be {PRIO_MIN}..{PRIO_MAX}, got {prio!r}")
        body["prio"] = prio
    if hold is not None:
        body["hold"] = _uint(hold, "hold")
    if name is not None:
        body["name"] = name
    if args is not None:
        if not all(isinstance(key, str) for key in args):
            raise LocalProtocolError("args keys must be strings")
        body["args"] = dict(args)
    return body


# PROTOCOL.md, "Maintenance token (console)".
MAINTENANCE_ROLE: Final = "maintenance"
# A token opens the console of one cabinet for one visit: a working night at most.
MAX_TOKEN_TTL_S: Final = 24 * 3600.0


def make_token(*, gw: str, sub: str, now_ms: int, ttl_s: float) -> dict[str, Any]:
    """A maintenance ``Token`` body (PROTOCOL.md): technician ``sub`` on gateway ``gw``,
    valid from ``now_ms`` for ``ttl_s`` seconds (at most a day)."""
    if not GATEWAY_ID.fullmatch(gw):
        raise LocalProtocolError(f"gateway id {gw!r} is not [a-z0-9-]{{1,64}}")
    if not sub or len(sub) > 64 or not sub.isprintable():
        raise LocalProtocolError(f"technician id {sub!r} must be 1 to 64 printable characters")
    if not (math.isfinite(ttl_s) and 0 < ttl_s <= MAX_TOKEN_TTL_S):
        raise LocalProtocolError(f"ttl must be 1 s to {MAX_TOKEN_TTL_S:.0f} s, got {ttl_s:g}")
    return {
        "v": PROTOCOL_VERSION,
        "gw": gw,
        "sub": sub,
        "iat": _uint(now_ms, "iat"),
        "exp": now_ms + round(ttl_s * MS_PER_S),
        "role": MAINTENANCE_ROLE,
    }


def token_text(key: Ed25519PrivateKey, body: Mapping[str, Any]) -> str:
    """The signed token as one line of base64url without padding, to paste on the console."""
    return base64.urlsafe_b64encode(sign(key, body)).rstrip(b"=").decode("ascii")


def sign_trust_update(
    root: Ed25519PrivateKey,
    *,
    serial: int,
    keys: Sequence[Mapping[str, Any]],
    gw: str = ANY_GATEWAY,
    now_ms: int,
) -> bytes:
    """A ``TrustUpdate`` (PROTOCOL.md, CDDL) signed by the ``root`` key.

    Each entry of ``keys`` has ``pub`` (raw 32 bytes) and ``roles`` (non-empty
    list of strings), optionally ``nbf`` / ``exp`` (ms) and ``kid`` (8 bytes;
    computed from ``pub`` when absent, taken as given otherwise, so a test can
    forge a wrong one).
    """
    if gw != ANY_GATEWAY and not GATEWAY_ID.fullmatch(gw):
        raise LocalProtocolError(f"gateway id {gw!r} is not [a-z0-9-]{{1,64}} or '*'")
    entries = []
    for index, entry in enumerate(keys):
        where = f"keys[{index}]"
        unknown = set(entry) - {"kid", "pub", "roles", "nbf", "exp"}
        if unknown:
            raise LocalProtocolError(f"{where}: unknown fields {sorted(unknown)}")
        pub = entry.get("pub")
        if not isinstance(pub, bytes) or len(pub) != ED25519_PUBLIC_BYTES:
            raise LocalProtocolError(f"{where}.pub must be the raw 32-byte public key")
        kid = entry.get("kid", kid_of(pub))
        if not isinstance(kid, bytes) or len(kid) != KID_BYTES:
            raise LocalProtocolError(f"{where}.kid must be {KID_BYTES} bytes")
        roles = entry.get("roles")
        if not isinstance(roles, list | tuple) or not roles:
            raise LocalProtocolError(f"{where}.roles must be a non-empty list of strings")
        if not all(isinstance(role, str) for role in roles):
            raise LocalProtocolError(f"{where}.roles must be a non-empty list of strings")
        item: dict[str, Any] = {"kid": kid, "pub": pub, "roles": list(roles)}
        for bound in ("nbf", "exp"):
            if bound in entry:
                item[bound] = _uint(entry[bound], f"{where}.{bound}")
        entries.append(item)
    body = {
        "v": PROTOCOL_VERSION,
        "gw": gw,
        "iat": _uint(now_ms, "now_ms"),
        "serial": _uint(serial, "serial"),
        "keys": entries,
    }
    return sign(root, body)


# -- the MQTT side -------------------------------------------------------------


def _parse_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise LocalProtocolError(f"broker URL {url!r} is not mqtt://HOST[:PORT]")
    return parts.hostname, parts.port or DEFAULT_MQTT_PORT


def command_topic(gw: str) -> str:
    """``armoire/v1/{gw}/cmd`` (PROTOCOL.md, "Transport")."""
    return f"{TOPIC_ROOT}/{gw}/cmd"


class Commander:
    """Signs and publishes commands, waits for their Ack (verified by the central post).

    ::

        async with CentralPost(url, keys) as central, Commander(central, url, key) as cmd:
            ack = await cmd.send("gw-1", make_command(gw="gw-1", op="write", ...))

    The Ack is whatever ``central`` received and verified; an Ack the central
    post rejects (bad signature, unknown gateway) counts as no Ack at all.
    The MQTT client does not reconnect: a lost broker fails the next send.
    """

    def __init__(
        self,
        central: CentralPost,
        broker_url: str,
        key: Ed25519PrivateKey,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._central = central
        self._host, self._port = _parse_url(broker_url)
        self._key = key
        self._clock: Clock = clock or SystemClock()
        self.client_id = f"commander-{secrets.token_hex(4)}"
        self._client: aiomqtt.Client | None = None

    async def __aenter__(self) -> Self:
        client = aiomqtt.Client(
            self._host,
            self._port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            keepalive=KEEPALIVE_S,
            timeout=MQTT_TIMEOUT_S,
        )
        await client.__aenter__()
        self._client = client
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.__aexit__(exc_type, exc, tb)

    def _connected(self) -> aiomqtt.Client:
        if self._client is None:
            raise LocalProtocolError("the commander is not connected (use `async with`)")
        return self._client

    def expiry_interval(self, exp_ms: int) -> int:
        """The MQTT Message Expiry Interval for a command expiring at ``exp_ms``, seconds.

        The time left before ``exp``, rounded up (PROTOCOL.md, "Transport"), at
        least :data:`MIN_EXPIRY_S`.
        """
        left_ms = exp_ms - wall_ms(self._clock)
        return min(max(math.ceil(left_ms / MS_PER_S), MIN_EXPIRY_S), MAX_EXPIRY_S)

    # A timeout argument rather than a caller's scope, so that the error can
    # say which command went unanswered.
    async def send(
        self,
        gw: str,
        body: Mapping[str, Any],
        *,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Sign ``body``, publish it on ``armoire/v1/{gw}/cmd`` and return its Ack body.

        QoS 1, with the Message Expiry Interval set to the time left before
        ``body["exp"]``. Waits for a verified Ack from ``gw`` whose ``cmd`` is
        ``body["id"]`` and that arrived after this call began (so a resent id
        gets its own answer, e.g. ``rejected``/``replay``). ``TimeoutError`` if
        none arrives within ``timeout`` seconds.
        """
        client = self._connected()
        cmd_id, exp = body.get("id"), body.get("exp")
        if not isinstance(cmd_id, bytes):
            raise LocalProtocolError("body has no bytes 'id' to match the Ack with")
        if type(exp) is not int:
            raise LocalProtocolError("body has no integer 'exp' to set the message expiry from")
        payload = sign(self._key, body)
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.MessageExpiryInterval = self.expiry_interval(exp)
        # Acks are appended in arrival order: only those after this point answer us.
        first = len(self._central.acks)

        def answer(central: CentralPost) -> dict[str, Any] | None:
            for ack in central.acks[first:]:
                if ack["cmd"] == cmd_id and ack["gw"] == gw:
                    return ack
            return None

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                await client.publish(command_topic(gw), payload, qos=1, properties=properties)
            await self._central.wait_for(
                lambda c: answer(c) is not None, max(deadline - loop.time(), 0.0)
            )
        except TimeoutError as exc:
            raise TimeoutError(
                f"no Ack for command {cmd_id.hex()} from {gw} within {timeout:g} s"
            ) from exc
        ack = answer(self._central)
        assert ack is not None  # wait_for returned, so the predicate held
        return ack

    async def send_raw(self, gw: str, payload: bytes) -> None:
        """Publish arbitrary ``payload`` on ``gw``'s command topic (QoS 1), for tests."""
        await self._connected().publish(command_topic(gw), payload, qos=1)


# -- the command-line side -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CentralConfig:
    """``central.toml``: the broker and, by gateway id, the gateway's public key file."""

    broker: str
    gateways: Mapping[str, Path]

    def __post_init__(self) -> None:
        _parse_url(self.broker)
        for gw in self.gateways:
            if not GATEWAY_ID.fullmatch(gw):
                raise LocalProtocolError(f"gateway id {gw!r} is not [a-z0-9-]{{1,64}}")


def _toml_string(text: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
    return json.dumps(text)


def write_central_config(directory: Path, *, broker: str, gateways: Mapping[str, Path]) -> None:
    """Write ``DIR/central.toml`` (replacing it): where the broker and gateway keys are."""
    config = CentralConfig(broker=broker, gateways=dict(gateways))
    lines = [
        "# Written by `armoire sim`: where `armoire-central send` finds the broker",
        "# and each gateway's public key (to verify its Acks).",
        f"broker = {_toml_string(config.broker)}",
        "",
        "[gateways]",
        *(
            f"{_toml_string(gw)} = {_toml_string(str(path.resolve()))}"
            for gw, path in config.gateways.items()
        ),
    ]
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _write_replace(directory / CENTRAL_CONFIG, ("\n".join(lines) + "\n").encode(), PUBLIC_MODE)


def read_central_config(directory: Path) -> CentralConfig:
    """``DIR/central.toml``, validated; relative key paths are taken from ``DIR``."""
    path = directory / CENTRAL_CONFIG
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LocalProtocolError(
            f"{path}: cannot read: {exc.strerror or exc} (`armoire sim --data DIR` writes it)"
        ) from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LocalProtocolError(f"{path}: {exc}") from exc
    unknown = set(raw) - {"broker", "gateways"}
    if unknown:
        raise LocalProtocolError(f"{path}: unknown keys {sorted(unknown)}")
    broker, gateways = raw.get("broker"), raw.get("gateways", {})
    if not isinstance(broker, str):
        raise LocalProtocolError(f'{path}: broker: expected "mqtt://HOST:PORT"')
    if not isinstance(gateways, dict) or not all(isinstance(v, str) for v in gateways.values()):
        raise LocalProtocolError(f'{path}: gateways: expected a table of "gw-id" = "key.pub"')
    try:
        return CentralConfig(
            broker=broker, gateways={gw: directory / pub for gw, pub in gateways.items()}
        )
    except LocalProtocolError as exc:
        raise LocalProtocolError(f"{path}: {exc}") from exc


_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?")


def parse_value(text: str) -> Any:
    """A command value typed on the command line: int, float, true/false, null, else the text."""
    match text:
        case "true":
            return True
        case "false":
            return False
        case "null":
            return None
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def jsonable(value: Any) -> Any:
    """``value`` with bytes as hex and every map key a string, ready for ``json.dumps``."""
    match value:
        case bytes() | bytearray():
            return bytes(value).hex()
        case Mapping():
            return {str(jsonable(k)): jsonable(v) for k, v in value.items()}
        case list() | tuple():
            return [jsonable(v) for v in value]
        case float() if not math.isfinite(value):
            return str(value)
        case None | bool() | int() | float() | str():
            return value
        case _:
            return repr(value)  # e.g. an unknown CBOR tag: shown, never dropped


def _cli_command(
    gw: str,
    op: str,
    target: str | None,
    value: str | None,
    prio: int | None,
    hold: int | None,
    validity_s: float = DEFAULT_VALIDITY_S,
) -> dict[str, Any]:
    """The Command body for ``armoire-central send``, or LocalProtocolError with a usage hint."""
    now = wall_ms(SystemClock())
    match op:
        case "write" | "relinquish":
            if target is None or target.count("/") != 1 or "" in target.split("/"):
                raise LocalProtocolError(f"{op} needs a point as DEVICE/POINT, e.g. lamp-03/level")
            if op == "write" and value is None:
                raise LocalProtocolError("write needs a value, e.g. `write lamp-03/level 40`")
            if op == "relinquish" and value is not None:
                raise LocalProtocolError("relinquish takes no value")
            parsed = parse_value(value) if value is not None else None
            return make_command(
                gw=gw,
                op=op,
                point=target,
                value=parsed,
                prio=prio,
                hold=hold,
                now_ms=now,
                validity_s=validity_s,
            )
        case "action":
            if not target:
                raise LocalProtocolError("action needs a name, e.g. `action selftest`")
            # `action snapshot cam-01`: the one argument an action takes is its device.
            if value is not None and target != "snapshot":
                raise LocalProtocolError("action takes no value (only `action snapshot DEVICE`)")
            return make_command(
                gw=gw,
                op=op,
                name=target,
                args={"device": value} if value is not None else None,
                prio=prio,
                hold=hold,
                now_ms=now,
                validity_s=validity_s,
            )
        case _:
            raise LocalProtocolError(f"unknown operation {op!r}; use write, relinquish or action")


async def send_cli(
    directory: Path,
    gw: str,
    op: str,
    target: str | None,
    value: str | None,
    *,
    prio: int | None,
    hold: int | None,
    timeout: float,  # noqa: ASYNC109 -- a CLI option, passed down
    key_name: str = "operator",
    ttl: float | None = None,
) -> tuple[int, dict[str, Any]]:
    """What ``armoire-central send --data DIR --gw ID OP TARGET [VALUE]`` does.

    ``write lamp-03/level 40 [--prio 10] [--hold 600]``, ``relinquish
    lamp-03/level``, ``action selftest``, ``action snapshot [CAMERA]``. Reads
    ``DIR/central.toml``, signs with ``DIR/<key_name>.key``, verifies the Ack with the
    gateway's key.
    ``value`` is parsed by :func:`parse_value`. ``ttl``: how long the command
    stays valid, in seconds (its ``exp``; the broker's Message Expiry follows),
    :data:`DEFAULT_VALIDITY_S` if None.

    Returns ``(exit_status, result)``: the Ack as JSON-able data (``cmd`` as
    hex) with 0 for ``done`` and 1 for ``rejected``/``failed``;
    ``{"error": ...}`` with 2 for bad arguments, configuration or keys, and
    with 3 when no Ack came within ``timeout`` seconds or the broker could not
    be reached. A timeout's error says until when the command may still be
    applied (its ``exp``, also given as ``exp`` in ms and ``exp_utc``).
    """
    try:
        config = read_central_config(directory)
        if gw not in config.gateways:
            known = ", ".join(config.gateways) or "none"
            raise LocalProtocolError(
                f"gateway {gw!r} is not in {directory / CENTRAL_CONFIG} (known: {known})"
            )
        gateway_key = load_public_pem(config.gateways[gw])
        key = load_key(directory / f"{key_name}.key")
        if prio is not None and not PRIO_MIN <= prio <= PRIO_MAX:
            raise LocalProtocolError(f"--prio must be {PRIO_MIN}..{PRIO_MAX}, got {prio}")
        if hold is not None and hold < 0:
            raise LocalProtocolError(f"--hold must be >= 0 seconds, got {hold}")
        if ttl is not None and not (math.isfinite(ttl) and ttl > 0):
            raise LocalProtocolError(f"--ttl must be a positive number of seconds, got {ttl:g}")
        validity = DEFAULT_VALIDITY_S if ttl is None else ttl
        body = _cli_command(gw, op, target, value, prio, hold, validity)
    except LocalProtocolError as exc:
        return EXIT_USAGE, {"error": str(exc)}
    cmd = body["id"].hex()
    exp_ms: int = body["exp"]
    exp_text = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(exp_ms / MS_PER_S))
    exp_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp_ms / MS_PER_S))
    pending = (
        f"the command stays deliverable until its expiry, {exp_text}: "
        f"if {gw} comes online before then it may still apply it"
    )
    try:
        async with (
            CentralPost(config.broker, {gw: gateway_key}, connect_timeout=timeout) as central,
            Commander(central, config.broker, key) as commander,
        ):
            ack = await commander.send(gw, body, timeout=timeout)
    except TimeoutError as exc:
        return EXIT_TIMEOUT, {
            "error": f"{exc}; {pending}",
            "cmd": cmd,
            "exp": exp_ms,
            "exp_utc": exp_utc,
        }
    except aiomqtt.MqttError as exc:
        # Whether the publish left before the connection failed is unknown.
        return EXIT_TIMEOUT, {
            "error": f"broker {config.broker}: {exc}; if it was published, {pending}",
            "cmd": cmd,
            "exp": exp_ms,
            "exp_utc": exp_utc,
        }
    status = EXIT_DONE if ack["status"] == "done" else EXIT_REFUSED
    return status, jsonable(ack)
