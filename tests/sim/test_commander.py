"""The central post's command side: keys, trust material, signed commands, Acks.

Signatures are checked here with cbor2 and cryptography straight from
PROTOCOL.md, and the gateway that answers is a few lines of aiomqtt in this
file: nothing of the agent is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from hypothesis import given
from hypothesis import strategies as st

from agent.clock import FakeClock, wall_ms
from central.commander import (
    CENTRAL_CONFIG,
    Commander,
    init_central_keys,
    install_trust,
    load_key,
    make_command,
    parse_value,
    read_central_config,
    send_cli,
    sign,
    sign_trust_update,
    write_central_config,
)
from central.post import CentralPost, GatewayKey, LocalProtocolError, open_sign1
from sim.broker import Mosquitto

GW = "gw-1"
NOW_MS = 1_700_000_000_000
WAIT_S = 5.0
# Long enough to be sure nobody answers on loopback, short enough to keep the suite fast.
SILENCE_S = 0.3

# One key per role for the module: key generation is not what is under test.
OPERATOR = Ed25519PrivateKey.generate()


def raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def kid(public: bytes) -> bytes:
    return hashlib.sha256(public).digest()[:8]


def open_cose(data: bytes, public: bytes) -> dict[str, Any]:
    """Check a tagged COSE_Sign1 as PROTOCOL.md says and return its body; raise if it fails."""
    message = cbor2.loads(data)
    assert isinstance(message, cbor2.CBORTag)
    assert message.tag == 18
    protected, unprotected, payload, signature = message.value
    assert cbor2.loads(protected) == {1: -8, 4: kid(public)}
    assert unprotected == {}
    Ed25519PublicKey.from_public_bytes(public).verify(
        signature, cbor2.dumps(["Signature1", protected, b"", payload])
    )
    body: dict[str, Any] = cbor2.loads(payload)
    return body


def public_pem(path: Path) -> bytes:
    key = serialization.load_pem_public_key(path.read_bytes())
    assert isinstance(key, Ed25519PublicKey)
    return raw(key)


# -- keys and trust material -------------------------------------------------


def test_init_central_keys__files_modes_and_summary(tmp_path: Path) -> None:
    """Keys readable by others, or a summary unlike the files, would leak or mislead."""
    central = tmp_path / "central"
    summary = init_central_keys(central, clock=FakeClock())
    for name in ("root", "operator", "maintenance"):
        key_path, pub_path = central / f"{name}.key", central / f"{name}.pub"
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644
        assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
        public = public_pem(pub_path)
        assert raw(load_key(key_path)) == public
        assert summary[name] == {"kid": kid(public).hex(), "pub": public.hex()}
    assert (central / "trust-root.pub").read_bytes() == (central / "root.pub").read_bytes()
    assert summary["trust_root"] == str(central / "trust-root.pub")
    assert summary["trust"] == str(central / "trust.cose")
    assert "trust-root.pub and trust.cose" in summary["install"]
    assert json.loads(json.dumps(summary)) == summary  # printable as one JSON line


def test_init_central_keys__refuses_to_overwrite(tmp_path: Path) -> None:
    """Re-running init must never replace keys that gateways already trust."""
    init_central_keys(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(FileExistsError, match=r"root\.key already exists"):
        init_central_keys(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_init_central_keys__one_existing_file_blocks_the_whole_set(tmp_path: Path) -> None:
    """A half-made key set (new keys, old trust update) would lock operators out."""
    (tmp_path / "trust.cose").write_bytes(b"old")
    with pytest.raises(FileExistsError, match=r"trust\.cose"):
        init_central_keys(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["trust.cose"]


def test_trust_update__verifies_against_root_and_lists_roles(tmp_path: Path) -> None:
    """Gateways would refuse the trust update, or grant the wrong role to a key."""
    clock = FakeClock()
    init_central_keys(tmp_path, gw="cab-7", serial=3, clock=clock)
    root = public_pem(tmp_path / "trust-root.pub")
    body = open_cose((tmp_path / "trust.cose").read_bytes(), root)
    operator, maintenance = (public_pem(tmp_path / f"{n}.pub") for n in ("operator", "maintenance"))
    assert body == {
        "v": 1,
        "gw": "cab-7",
        "iat": wall_ms(clock),
        "serial": 3,
        "keys": [
            {"kid": kid(operator), "pub": operator, "roles": ["operator"]},
            {"kid": kid(maintenance), "pub": maintenance, "roles": ["maintenance"]},
        ],
    }
    # A wrong root must not verify it.
    with pytest.raises(InvalidSignature):
        open_cose_any_kid((tmp_path / "trust.cose").read_bytes(), raw(OPERATOR))


def open_cose_any_kid(data: bytes, public: bytes) -> None:
    message = cbor2.loads(data)
    protected, _, payload, signature = message.value
    Ed25519PublicKey.from_public_bytes(public).verify(
        signature, cbor2.dumps(["Signature1", protected, b"", payload])
    )


def test_sign_trust_update__optional_bounds_and_forged_kid() -> None:
    """Key validity windows must reach the gateway; a test must be able to forge a wrong kid."""
    root = Ed25519PrivateKey.generate()
    data = sign_trust_update(
        root,
        serial=9,
        keys=[{"pub": raw(OPERATOR), "roles": ["operator"], "nbf": 1, "exp": 2, "kid": b"x" * 8}],
        now_ms=NOW_MS,
    )
    body = open_cose(data, raw(root))
    assert body["gw"] == "*"
    assert body["keys"] == [
        {"kid": b"x" * 8, "pub": raw(OPERATOR), "roles": ["operator"], "nbf": 1, "exp": 2}
    ]
    with pytest.raises(LocalProtocolError, match="roles"):
        sign_trust_update(root, serial=1, keys=[{"pub": raw(root), "roles": []}], now_ms=NOW_MS)


def test_install_trust__copies_and_keeps_the_pinned_root(tmp_path: Path) -> None:
    """A gateway must get the trust files, and never have its pinned root swapped silently."""
    first, second, gateway = tmp_path / "c1", tmp_path / "c2", tmp_path / "gw"
    init_central_keys(first)
    init_central_keys(second, serial=2)
    install_trust(first, gateway)
    assert (gateway / "trust-root.pub").read_bytes() == (first / "root.pub").read_bytes()
    assert (gateway / "trust.cose").read_bytes() == (first / "trust.cose").read_bytes()
    assert not (gateway / "root.key").exists()
    install_trust(first, gateway)  # same root again: fine
    with pytest.raises(FileExistsError, match="another root key"):
        install_trust(second, gateway)


# -- commands ----------------------------------------------------------------


def test_make_command__write_body_matches_cddl() -> None:
    """A body off the CDDL would be rejected by every gateway as bad-request."""
    body = make_command(
        gw=GW, op="write", point="lamp-03/level", value=40, prio=10, hold=600, now_ms=NOW_MS
    )
    assert set(body) == {"v", "id", "gw", "iat", "exp", "op", "point", "value", "prio", "hold"}
    assert body["v"] == 1
    assert isinstance(body["id"], bytes)
    assert len(body["id"]) == 16
    assert (body["gw"], body["op"], body["point"], body["value"]) == (
        GW,
        "write",
        "lamp-03/level",
        40,
    )
    assert (body["prio"], body["hold"]) == (10, 600)
    assert body["iat"] == NOW_MS
    assert body["exp"] == NOW_MS + 60_000


def test_make_command__other_ops_and_options() -> None:
    """Relinquish, action, nbf and a given id must come out exactly as asked."""
    relinquish = make_command(gw=GW, op="relinquish", point="lamp-03/level", now_ms=NOW_MS)
    assert set(relinquish) == {"v", "id", "gw", "iat", "exp", "op", "point"}
    action = make_command(
        gw=GW,
        op="action",
        name="selftest",
        args={"lamp": "lamp-01"},
        now_ms=NOW_MS,
        validity_s=5,
        nbf_ms=NOW_MS + 1000,
        cmd_id=b"\x01" * 16,
    )
    assert action == {
        "v": 1,
        "id": b"\x01" * 16,
        "gw": GW,
        "iat": NOW_MS,
        "nbf": NOW_MS + 1000,
        "exp": NOW_MS + 5000,
        "op": "action",
        "name": "selftest",
        "args": {"lamp": "lamp-01"},
    }
    null_write = make_command(gw=GW, op="write", point="lamp-03/level", now_ms=NOW_MS)
    assert null_write["value"] is None  # sent as CBOR null


def test_make_command__ids_are_unique() -> None:
    """Two commands with one id: the second would be rejected as a replay."""
    ids = {make_command(gw=GW, op="action", name="x", now_ms=NOW_MS)["id"] for _ in range(1000)}
    assert len(ids) == 1000


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"op": "erase"}, "op"),
        ({"op": "write"}, "point"),
        ({"op": "relinquish", "point": "a/b", "value": 1}, "no value"),
        ({"op": "action"}, "name"),
        ({"op": "action", "name": "x", "point": "a/b"}, "no point"),
        ({"op": "write", "point": "a/b", "prio": 17}, "prio"),
        ({"op": "write", "point": "a/b", "prio": 0}, "prio"),
        ({"op": "write", "point": "a/b", "hold": -1}, "hold"),
        ({"op": "write", "point": "a/b", "cmd_id": b"short"}, "16 bytes"),
        ({"op": "write", "point": "a/b", "validity_s": 0}, "validity"),
        ({"op": "write", "point": "a/b", "gw": "Not A Gateway"}, "gateway id"),
    ],
)
def test_make_command__misuse_is_refused(kwargs: dict[str, Any], match: str) -> None:
    """A command that breaks the CDDL is caught when built, not by the gateway."""
    arguments: dict[str, Any] = {"gw": GW, "now_ms": NOW_MS} | kwargs
    with pytest.raises(LocalProtocolError, match=match):
        make_command(**arguments)


def test_sign__round_trips() -> None:
    """A signature a gateway cannot check makes every command fail as bad-signature."""
    body = make_command(gw=GW, op="write", point="lamp-03/level", value=40, now_ms=NOW_MS)
    data = sign(OPERATOR, body)
    assert open_cose(data, raw(OPERATOR)) == body
    # The reference central post's checker agrees (same profile, other code).
    payload = open_sign1(data, GatewayKey(gw="central", public=raw(OPERATOR)))
    assert cbor2.loads(payload) == body


@given(st.text())
def test_parse_value__any_text_parses(text: str) -> None:
    """Whatever an operator types is sent as some value, never a crash."""
    assert isinstance(parse_value(text), bool | int | float | str | type(None))


@given(st.integers(min_value=-(2**64), max_value=2**64 - 1))
def test_parse_value__integers_stay_integers(n: int) -> None:
    """`write lamp-03/level 40` must send the integer 40, not "40" or 40.0."""
    assert parse_value(str(n)) == n
    assert type(parse_value(str(n))) is int


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("false", False), ("null", None), ("2.5", 2.5), ("-1e3", -1000.0),
     ("on", "on"), ("nan", "nan"), ("", "")],
)  # fmt: skip
def test_parse_value__table(text: str, value: object) -> None:
    """Booleans, null and floats typed on the command line reach the gateway typed."""
    assert parse_value(text) == value
    assert type(parse_value(text)) is type(value)


def test_expiry_interval__time_left_rounded_up_at_least_one() -> None:
    """A broker keeping a command past its exp would deliver it to a returning gateway."""
    clock = FakeClock()
    commander = Commander(
        CentralPost("mqtt://127.0.0.1:1"), "mqtt://127.0.0.1:1", OPERATOR, clock=clock
    )
    now = wall_ms(clock)
    assert commander.expiry_interval(now + 60_000) == 60
    assert commander.expiry_interval(now + 60_001) == 61
    assert commander.expiry_interval(now - 5_000) == 1


def test_central_config__round_trips(tmp_path: Path) -> None:
    """The CLI must find the broker and key files the simulator wrote, whatever their paths."""
    pub = tmp_path / 'odd "dir" é' / "gateway.pub"
    write_central_config(tmp_path, broker="mqtt://127.0.0.1:1884", gateways={GW: pub})
    config = read_central_config(tmp_path)
    assert config.broker == "mqtt://127.0.0.1:1884"
    assert config.gateways == {GW: pub.resolve()}
    write_central_config(tmp_path, broker="mqtt://127.0.0.1:1885", gateways={})
    assert read_central_config(tmp_path).broker == "mqtt://127.0.0.1:1885"


# -- over a real broker ----------------------------------------------------------

Decide = Callable[[dict[str, Any]], tuple[str, str | None]]


def always_done(body: dict[str, Any]) -> tuple[str, str | None]:
    return "done", None


@dataclass
class Received:
    body: dict[str, Any]
    expiry: int | None


@dataclass
class FakeGateway:
    """A gateway in miniature: checks each command's signature and answers with a signed Ack."""

    gw: str
    commander: bytes  # raw public key the commands must be signed with
    decide: Decide = always_done
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    received: list[Received] = field(default_factory=list)
    seen: set[bytes] = field(default_factory=set)
    seq: int = 0

    async def serve(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            body = open_cose(message.payload, self.commander)
            expiry = getattr(message.properties, "MessageExpiryInterval", None)
            self.received.append(Received(body=body, expiry=expiry))
            status, reason = (
                ("rejected", "replay") if body["id"] in self.seen else self.decide(body)
            )
            self.seen.add(body["id"])
            self.seq += 1
            ack: dict[str, Any] = {
                "v": 1,
                "gw": self.gw,
                "boot": 1,
                "seq": self.seq,
                "t": body["iat"],
                "cmd": body["id"],
                "status": status,
            }
            if reason is not None:
                ack["reason"] = reason
            if status == "done" and body["op"] == "write":
                ack["value"] = body["value"]
            await client.publish(f"armoire/v1/{self.gw}/ack", sign(self.key, ack), qos=1)


@contextlib.asynccontextmanager
async def running(broker: Mosquitto, gateway: FakeGateway) -> AsyncIterator[FakeGateway]:
    """``gateway`` subscribed to its command topic and answering, for the block."""
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, identifier=gateway.gw, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(f"armoire/v1/{gateway.gw}/cmd", qos=1)
        task = asyncio.create_task(gateway.serve(client), name=f"fake-gateway[{gateway.gw}]")
        try:
            yield gateway
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_commander__send_sets_expiry_and_returns_the_ack(broker: Mosquitto) -> None:
    """Commands must carry their expiry to the broker; the operator must get the verified Ack."""
    clock = FakeClock()
    gateway = FakeGateway(gw=GW, commander=raw(OPERATOR))
    async with (
        running(broker, gateway),
        CentralPost(broker.url, {GW: raw(gateway.key)}) as central,
        Commander(central, broker.url, OPERATOR, clock=clock) as commander,
    ):
        body = make_command(
            gw=GW, op="write", point="lamp-03/level", value=40, now_ms=wall_ms(clock)
        )
        ack = await commander.send(GW, body, timeout=WAIT_S)
    assert ack["cmd"] == body["id"]
    assert (ack["status"], ack["value"], ack["gw"]) == ("done", 40, GW)
    [received] = gateway.received
    assert received.body == body
    # 60 s left at publication; mosquitto counts down in whole seconds of its own clock.
    assert received.expiry in (59, 60)


async def test_commander__resent_id_gets_its_own_answer(broker: Mosquitto) -> None:
    """A replayed command must return the gateway's replay rejection, not the earlier Ack."""
    gateway = FakeGateway(gw=GW, commander=raw(OPERATOR))
    async with (
        running(broker, gateway),
        CentralPost(broker.url, {GW: raw(gateway.key)}) as central,
        Commander(central, broker.url, OPERATOR) as commander,
    ):
        body = make_command(gw=GW, op="action", name="selftest", now_ms=wall_ms(FakeClock()))
        first = await commander.send(GW, body, timeout=WAIT_S)
        second = await commander.send(GW, body, timeout=WAIT_S)
    assert first["status"] == "done"
    assert (second["status"], second["reason"]) == ("rejected", "replay")
    assert second["seq"] == first["seq"] + 1


async def test_commander__no_answer_times_out(broker: Mosquitto) -> None:
    """An operator must be told a command went unanswered, with its id, not wait forever."""
    async with (
        CentralPost(broker.url) as central,
        Commander(central, broker.url, OPERATOR) as commander,
    ):
        body = make_command(gw="gw-silent", op="action", name="selftest", now_ms=NOW_MS)
        with pytest.raises(TimeoutError, match=body["id"].hex()):
            await commander.send("gw-silent", body, timeout=SILENCE_S)


async def test_commander__send_raw_publishes_bytes_as_given(broker: Mosquitto) -> None:
    """Tests of a gateway's defences need garbage delivered byte for byte."""
    async with (
        aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as listener,
        CentralPost(broker.url) as central,
        Commander(central, broker.url, OPERATOR) as commander,
    ):
        await listener.subscribe(f"armoire/v1/{GW}/cmd", qos=1)
        await commander.send_raw(GW, b"\xff not cbor")
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(listener.messages))
    assert message.payload == b"\xff not cbor"


@pytest.fixture
def central_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "central"
    init_central_keys(directory)
    return directory


def gateway_pub(tmp_path: Path, gateway: FakeGateway) -> Path:
    path = tmp_path / f"{gateway.gw}.pub"
    path.write_bytes(
        gateway.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


async def test_send_cli__write_done_prints_the_ack(
    broker: Mosquitto, central_dir: Path, tmp_path: Path
) -> None:
    """`armoire-central send ... write lamp-03/level 40` must reach the gateway typed, say done."""
    operator = load_key(central_dir / "operator.key")
    gateway = FakeGateway(gw=GW, commander=raw(operator))
    write_central_config(
        central_dir, broker=broker.url, gateways={GW: gateway_pub(tmp_path, gateway)}
    )
    async with running(broker, gateway):
        status, result = await send_cli(
            central_dir, GW, "write", "lamp-03/level", "40", prio=10, hold=600, timeout=WAIT_S
        )
    assert status == 0, result
    [received] = gateway.received
    assert (received.body["value"], received.body["prio"], received.body["hold"]) == (40, 10, 600)
    assert result["cmd"] == received.body["id"].hex()
    assert (result["status"], result["value"]) == ("done", 40)
    assert json.loads(json.dumps(result)) == result


async def test_send_cli__rejected_is_exit_1_and_silence_exit_3(
    broker: Mosquitto, central_dir: Path, tmp_path: Path
) -> None:
    """Scripts must tell a refused command from one nobody answered."""
    operator = load_key(central_dir / "operator.key")
    gateway = FakeGateway(
        gw=GW, commander=raw(operator), decide=lambda body: ("rejected", "not-authorised")
    )
    silent = FakeGateway(gw="gw-2", commander=raw(operator))
    pubs = {GW: gateway_pub(tmp_path, gateway), "gw-2": gateway_pub(tmp_path, silent)}
    write_central_config(central_dir, broker=broker.url, gateways=pubs)
    async with running(broker, gateway):
        status, result = await send_cli(
            central_dir, GW, "relinquish", "lamp-03/level", None, prio=None, hold=None,
            timeout=WAIT_S,
        )  # fmt: skip
        assert (status, result["status"], result["reason"]) == (1, "rejected", "not-authorised")
        status, result = await send_cli(
            central_dir, "gw-2", "action", "selftest", None, prio=None, hold=None,
            timeout=SILENCE_S,
        )  # fmt: skip
    assert status == 3
    assert "no Ack" in result["error"]
    assert "stays deliverable until" in result["error"]
    assert "stats" not in result["error"]
    assert len(result["cmd"]) == 32


async def test_send_cli__ttl_sets_validity_and_broker_expiry(
    broker: Mosquitto, central_dir: Path, tmp_path: Path
) -> None:
    """A command would stay deliverable a fixed 60 s whatever the operator wants, and a
    timeout would not say that the gateway may still apply it later, nor until when."""
    operator = load_key(central_dir / "operator.key")
    silent = FakeGateway(gw=GW, commander=raw(operator))
    write_central_config(
        central_dir, broker=broker.url, gateways={GW: gateway_pub(tmp_path, silent)}
    )
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as listener:
        await listener.subscribe(f"armoire/v1/{GW}/cmd", qos=1)
        status, result = await send_cli(
            central_dir, GW, "action", "selftest", None, prio=None, hold=None,
            timeout=SILENCE_S, ttl=600,
        )  # fmt: skip
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(listener.messages))
    assert status == 3
    body = open_cose(bytes(message.payload), raw(operator))  # type: ignore[arg-type]
    assert body["exp"] - body["iat"] == 600_000
    assert message.properties is not None
    assert message.properties.MessageExpiryInterval in (599, 600)
    assert result["exp"] == body["exp"]
    local_exp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(body["exp"] / 1000))
    assert f"stays deliverable until its expiry, {local_exp}" in result["error"]
    assert f"within {SILENCE_S:g} s" in result["error"]


@pytest.mark.parametrize("ttl", [0, -5, float("nan")])
async def test_send_cli__bad_ttl_is_exit_2(central_dir: Path, ttl: float) -> None:
    """A zero or negative validity would send a command that can never be applied."""
    write_central_config(central_dir, broker="mqtt://127.0.0.1:1", gateways={GW: central_dir / "x"})
    (central_dir / "x").write_bytes((central_dir / "root.pub").read_bytes())
    status, result = await send_cli(
        central_dir, GW, "action", "selftest", None, prio=None, hold=None, timeout=SILENCE_S,
        ttl=ttl,
    )  # fmt: skip
    assert status == 2
    assert "--ttl" in result["error"]


@pytest.mark.parametrize(
    ("gw", "op", "target", "value", "match"),
    [
        ("gw-9", "write", "lamp-03/level", "40", "not in"),
        (GW, "write", "lamp-03/level", None, "needs a value"),
        (GW, "write", "lamp-03.level", "40", "DEVICE/POINT"),
        (GW, "reboot", None, None, "unknown operation"),
        (GW, "action", None, None, "needs a name"),
    ],
)
async def test_send_cli__usage_errors_are_exit_2(
    central_dir: Path, gw: str, op: str, target: str | None, value: str | None, match: str
) -> None:
    """A typo must be reported before anything is signed or sent (no broker is running here)."""
    write_central_config(central_dir, broker="mqtt://127.0.0.1:1", gateways={GW: central_dir / "x"})
    (central_dir / "x").write_bytes((central_dir / "root.pub").read_bytes())
    status, result = await send_cli(
        central_dir, gw, op, target, value, prio=None, hold=None, timeout=SILENCE_S
    )
    assert status == 2
    assert match in result["error"]


async def test_send_cli__missing_config_is_exit_2(tmp_path: Path) -> None:
    """Without central.toml the operator must be told what writes it."""
    status, result = await send_cli(
        tmp_path, GW, "action", "selftest", None, prio=None, hold=None, timeout=SILENCE_S
    )
    assert status == 2
    assert CENTRAL_CONFIG in result["error"]
