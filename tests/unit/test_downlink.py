"""The downlink on its own: every command outcome gives the right Ack and audit Event.

Commands are built and signed with the reference central post's code
(`central/commander.py`, written independently of the agent from PROTOCOL.md).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.arbiter import Arbiter, DeviceWriteError
from agent.clock import FakeClock, wall_ms
from agent.commands import DEFAULT_POLICIES, CommandVerifier
from agent.downlink import MAX_REFUSALS, Downlink, Holds
from agent.events import Events
from agent.messages import MessageFactory, Severity, Topic
from agent.outbox import Outbox
from agent.points import Value
from agent.security.cose import Signer, decode_envelope
from agent.security.trust import TrustStore
from central.commander import (
    init_central_keys,
    install_trust,
    load_key,
    make_command,
    public_raw,
    sign,
    sign_trust_update,
)

GW = "cab-0001"
CMD = f"armoire/v1/{GW}/cmd"


@dataclass
class Rig:
    downlink: Downlink
    outbox: Outbox
    clock: FakeClock
    keys: dict[str, Ed25519PrivateKey]
    device_writes: list[tuple[str, Value]] = field(default_factory=list)
    fail_writes: bool = False

    def now(self) -> int:
        return wall_ms(self.clock)

    def command(self, key: str = "operator", **fields: Any) -> tuple[dict[str, Any], bytes]:
        fields.setdefault("gw", GW)
        fields.setdefault("op", "write")
        if fields["op"] in ("write", "relinquish"):
            fields.setdefault("point", "lamp-01/level")
        if fields["op"] == "write":
            fields.setdefault("value", 40)
        body = make_command(now_ms=self.now(), **fields)
        return body, sign(self.keys[key], body)

    def messages(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(acks, audit events) stored since the last call."""
        acks, audits = [], []
        for record in self.outbox.take(1000):
            body = cbor2.loads(decode_envelope(record.payload).payload)
            self.outbox.done(record)
            if record.topic.endswith("/ack"):
                acks.append(body)
            elif body.get("kind") == "audit":
                audits.append(body)
        return acks, audits


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    central = tmp_path / "central"
    init_central_keys(central)
    install_trust(central, tmp_path)
    keys = {name: load_key(central / f"{name}.key") for name in ("root", "operator", "maintenance")}
    keys["stranger"] = Ed25519PrivateKey.generate()
    clock = FakeClock(wall=1_800_000_000.0)
    outbox = Outbox.open(tmp_path / "data", clock)
    state: dict[str, Any] = {}

    async def write_device(point: str, value: Value) -> None:
        if state["rig"].fail_writes:
            raise DeviceWriteError(point, "no reply within 0.2 s")
        state["rig"].device_writes.append((point, value))

    arbiter = Arbiter(
        clock=clock, defaults={"lamp-01/level": 100, "lamp-01/on": True}, write_device=write_device
    )
    verifier = CommandVerifier(
        gw=GW,
        trust=TrustStore.load(tmp_path, gw=GW),
        seen=outbox.command_seen,
        policies=DEFAULT_POLICIES,
        skew_s=30,
        max_validity_s=3600,
        writable=lambda p: p in ("lamp-01/level", "lamp-01/on"),
        actions=("ping",),
    )

    async def ping(cmd: Any) -> Any:
        return {"pong": True}

    factory = MessageFactory(gw=GW, boot=outbox.boot, signer=Signer(keys["stranger"]))
    downlink = Downlink(
        gw=GW,
        verifier=verifier,
        arbiter=arbiter,
        outbox=outbox,
        factory=factory,
        events=Events(gw=GW, factory=factory, outbox=outbox, clock=clock),
        clock=clock,
        holds=Holds(default=600, maximum=3600, skew_s=30),
        check_value=lambda p, v: (
            None if isinstance(v, int | float) and 0 <= v <= 100 else "out of range"
        ),
        actions={"ping": ping},
        data_dir=tmp_path,
    )
    state["rig"] = Rig(downlink=downlink, outbox=outbox, clock=clock, keys=keys)
    return state["rig"]


async def test_downlink__done_write_acked_with_effective_value_and_audited(rig: Rig) -> None:
    """The control room would not know whether its command took effect, nor who sent it."""
    body, payload = rig.command(value=40, hold=60)
    await rig.downlink.handle(CMD, payload)
    (ack,), (audit,) = rig.messages()
    assert (ack["cmd"], ack["status"], ack["value"]) == (body["id"], "done", 40)
    assert "reason" not in ack
    assert rig.device_writes == [("lamp-01/level", 40)]
    assert audit["code"] == "cmd.done"
    assert audit["data"]["role"] == "operator"
    assert audit["data"]["kid"] == decode_envelope(payload).kid.hex()
    assert (audit["data"]["op"], audit["data"]["point"], audit["data"]["value"]) == (
        "write", "lamp-01/level", 40,
    )  # fmt: skip


def _mutate(rig: Rig, case: str) -> tuple[dict[str, Any] | None, bytes]:
    now = rig.now()
    match case:
        case "bad-request":  # schema: prio out of range (the central's builder refuses it)
            body, _ = rig.command()
            body["prio"] = 17
            return body, sign(rig.keys["operator"], body)
        case "bad-signature":
            body, payload = rig.command()
            return body, payload[:-1] + bytes([payload[-1] ^ 1])
        case "unknown-kid":
            return rig.command(key="stranger")
        case "wrong-gateway":
            return rig.command(gw="cab-9999")
        case "expired":
            body = make_command(gw=GW, op="write", point="lamp-01/level", value=1,
                                now_ms=now - 120_000, validity_s=60)  # fmt: skip
            return body, sign(rig.keys["operator"], body)
        case "not-yet-valid":
            return rig.command(nbf_ms=now + 120_000)
        case "not-authorised":
            return rig.command(prio=5)  # operators may not write above level 9
        case _:
            raise AssertionError(case)


@pytest.mark.parametrize(
    "reason",
    ["bad-request", "wrong-gateway", "expired", "not-yet-valid", "not-authorised"],
)
async def test_downlink__each_reject_reason_in_ack_and_audit(rig: Rig, reason: str) -> None:
    """A refused command would leave the operator guessing why, or leave no trace."""
    body, payload = _mutate(rig, reason)
    await rig.downlink.handle(CMD, payload)
    acks, (audit,) = rig.messages()
    assert audit["code"] == "cmd.rejected"
    assert audit["data"]["reason"] == reason
    if reason == "wrong-gateway":
        assert acks == []  # PROTOCOL.md: only a command for this gateway is acknowledged
    else:
        (ack,) = acks
        assert body is not None
        assert (ack["cmd"], ack["status"], ack["reason"]) == (body["id"], "rejected", reason)
        assert ack["msg"] == audit["data"]["detail"]  # the detail the operator can act on
        assert "value" not in ack
    assert rig.device_writes == []


@pytest.mark.parametrize("reason", ["bad-signature", "unknown-kid"])
async def test_downlink__unauthenticated_gets_no_ack_only_a_summary(rig: Rig, reason: str) -> None:
    """Anyone could make the gateway sign statements about command ids, or fill its audit log."""
    _body, payload = _mutate(rig, reason)
    summaries = asyncio.create_task(rig.downlink.run())
    await rig.downlink.handle(CMD, payload)
    assert rig.messages() == ([], [])
    await rig.clock.advance(60)
    summaries.cancel()
    acks, (summary,) = rig.messages()
    assert acks == []
    assert (summary["code"], summary["kind"]) == ("cmd.unauthenticated", "audit")
    data = summary["data"]
    assert (data["count"], data["reasons"]) == (1, {reason: 1})
    assert data["first"] == data["last"] <= rig.now()
    assert data["samples"] == [hashlib.sha256(payload).digest()[:8]]


async def test_downlink__replay_rejected(rig: Rig) -> None:
    """A recorded command replayed by anyone on the broker would be obeyed again."""
    _body, payload = rig.command()
    await rig.downlink.handle(CMD, payload)
    await rig.downlink.handle(CMD, payload)
    acks, audits = rig.messages()
    assert [a["status"] for a in acks] == ["done", "rejected"]
    assert acks[1]["reason"] == "replay"
    assert audits[1]["data"]["reason"] == "replay"


async def test_downlink__device_error_failed_ack(rig: Rig) -> None:
    """A write to a dead device would be reported as done."""
    rig.fail_writes = True
    _body, payload = rig.command(value=10)
    await rig.downlink.handle(CMD, payload)
    (ack,), (audit,) = rig.messages()
    assert (ack["status"], ack["reason"]) == ("failed", "device-error")
    assert audit["code"] == "cmd.failed"
    assert audit["data"]["reason"] == "device-error"


async def test_downlink__value_out_of_range_is_bad_request(rig: Rig) -> None:
    """A level of 250 % would reach the lamp controller."""
    _body, payload = rig.command(value=250)
    await rig.downlink.handle(CMD, payload)
    (ack,), _ = rig.messages()
    assert (ack["status"], ack["reason"]) == ("rejected", "bad-request")
    assert rig.device_writes == []


async def test_downlink__hold_capped_and_lapses(rig: Rig) -> None:
    """An operator could switch a street off for longer than the configured maximum."""
    arbiter = rig.downlink._arbiter
    lapses = asyncio.create_task(arbiter.run())
    try:
        _body, payload = rig.command(value=0, hold=10**6)
        await rig.downlink.handle(CMD, payload)
        assert rig.device_writes == [("lamp-01/level", 0)]
        entry = arbiter.entries("lamp-01/level")[10]
        assert entry.expires == rig.clock.monotonic() + 3600
        await rig.clock.advance(3599)
        assert rig.device_writes == [("lamp-01/level", 0)]  # still held
        await rig.clock.advance(1)
        # The cap lapsed: the lamp is back at its default, and nothing holds it any more.
        assert rig.device_writes == [("lamp-01/level", 0), ("lamp-01/level", 100)]
        assert 10 not in arbiter.entries("lamp-01/level")
    finally:
        lapses.cancel()


async def test_downlink__maintenance_key_not_authorised_over_mqtt(rig: Rig) -> None:
    """A maintenance key acts through the console only (DESIGN.md, Security)."""
    _body, payload = rig.command(key="maintenance", prio=12)
    await rig.downlink.handle(CMD, payload)
    (ack,), _ = rig.messages()
    assert (ack["status"], ack["reason"]) == ("rejected", "not-authorised")


def _handled(rig: Rig, payload: bytes) -> list[dict[str, Any]]:
    """Hand ``payload`` to the downlink; assert it was refused by design, not by a crash
    that ``handle`` swallowed (it logs and counts an exception as "internal-error"), and
    accounted for: an Ack, or a count of unauthenticated input. Returns the Acks."""
    before = sum(rig.downlink.counts.values())
    asyncio.run(rig.downlink.handle(CMD, payload))
    assert "internal-error" not in rig.downlink.tallies[Topic.CMD].reasons
    assert sum(rig.downlink.counts.values()) > before
    acks, _ = rig.messages()
    assert len(acks) <= 1
    return acks


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_downlink__arbitrary_bytes_never_raise(rig: Rig, data: bytes) -> None:
    """Anyone able to publish on the broker could crash the agent with junk."""
    assert _handled(rig, data) == []  # junk is not authenticated: no Ack
    assert rig.device_writes == []


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=cbor_values)
def test_downlink__arbitrary_cbor_never_raises(rig: Rig, value: Any) -> None:
    """Well-formed CBOR of any shape, even correctly signed, must be refused, not crash."""
    assert _handled(rig, cbor2.dumps(value)) == []
    # Correctly signed by a trusted key but not a command: refused with an Ack, never applied.
    acks = _handled(rig, sign(rig.keys["operator"], {"x": value}))
    assert [a["status"] for a in acks] in ([], ["rejected"])
    assert rig.device_writes == []


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_downlink__any_flipped_bit_is_rejected(rig: Rig, position: int, bit: int) -> None:
    """A command altered in transit (or by an attacker) would be obeyed."""
    _, payload = rig.command(value=33)
    i = position % len(payload)
    mutated = payload[:i] + bytes([payload[i] ^ (1 << bit)]) + payload[i + 1 :]
    acks = _handled(rig, mutated)
    # Refused either way: an Ack that says so, or (signature broken) counted, unanswered.
    assert [a["status"] for a in acks] in ([], ["rejected"])
    assert rig.device_writes == []


async def test_downlink__trust_update_by_root_adds_an_admin_key(rig: Rig, tmp_path: Path) -> None:
    """The control room could not rotate keys or grant a higher role without a site visit,
    or anyone could."""
    admin = Ed25519PrivateKey.generate()
    rig.keys["admin"] = admin
    entries = [
        {"pub": public_raw(rig.keys["operator"]), "roles": ["operator"]},
        {"pub": public_raw(admin), "roles": ["admin"]},
    ]
    trust = f"armoire/v1/{GW}/trust"
    # Signed by the operator key instead of the root: refused, audited.
    forged = sign_trust_update(rig.keys["operator"], serial=5, keys=entries, now_ms=rig.now())
    await rig.downlink.handle(trust, forged)
    update = sign_trust_update(rig.keys["root"], serial=5, keys=entries, now_ms=rig.now())
    await rig.downlink.handle(trust, update)
    # Replaying an older (or the same) serial is refused.
    await rig.downlink.handle(trust, update)
    _, audits = rig.messages()
    # The forged one is unauthenticated: counted, not audited on its own.
    assert [a["code"] for a in audits] == ["trust.updated", "trust.rejected"]
    assert audits[1]["data"]["reason"] == "replay"
    rig.downlink.flush_summaries()
    _, (summary,) = rig.messages()
    assert summary["code"] == "trust.unauthenticated"
    assert summary["data"]["reasons"] == {"unknown-kid": 1}
    # The new admin key may act at a fail-safe level; the update is on disk.
    _body, payload = rig.command(key="admin", prio=3, value=0)
    await rig.downlink.handle(CMD, payload)
    (ack,), _ = rig.messages()
    assert (ack["status"], ack["value"]) == ("done", 0)
    assert TrustStore.load(tmp_path, gw=GW).serial == 5


# -- replay safety that does not trust the wall clock -----------------------------------


def _rebuilt(rig: Rig, tmp_path: Path) -> Downlink:
    """The downlink of a restarted agent: same data directory, outbox and trust store."""
    old = rig.downlink
    assert old.verifier is not None
    verifier = CommandVerifier(
        gw=GW,
        trust=old.verifier.trust,
        seen=rig.outbox.command_seen,
        policies=DEFAULT_POLICIES,
        skew_s=30,
        max_validity_s=3600,
        writable=lambda p: p in ("lamp-01/level", "lamp-01/on"),
        actions=("ping",),
        replay_floor=lambda: rig.outbox.replay_floor_ms,
    )
    factory = MessageFactory(gw=GW, boot=rig.outbox.boot, signer=Signer(rig.keys["stranger"]))
    return Downlink(
        gw=GW,
        verifier=verifier,
        arbiter=old._arbiter,
        outbox=rig.outbox,
        factory=factory,
        events=Events(gw=GW, factory=factory, outbox=rig.outbox, clock=rig.clock),
        clock=rig.clock,
        holds=Holds(default=600, maximum=3600, skew_s=30),
        check_value=lambda p, v: None,
        actions={},
        data_dir=tmp_path,
    )


@pytest.mark.parametrize("restart", [False, True], ids=["same-run", "after-restart"])
async def test_downlink__replay_refused_after_the_wall_clock_goes_back(
    rig: Rig, tmp_path: Path, restart: bool
) -> None:
    """An RTC reset or a bad NTP step would let a recorded command be obeyed a second time."""
    t0 = rig.clock.wall()
    _body, recorded = rig.command(value=10, validity_s=60)
    await rig.downlink.handle(CMD, recorded)
    # Two hours later another command purges the first one's id (long expired by then).
    await rig.clock.advance(7200)
    await rig.downlink.handle(CMD, rig.command(value=20)[1])
    assert not rig.outbox.command_seen(_body["id"])
    rig.messages()
    if restart:
        rig.downlink = _rebuilt(rig, tmp_path)
    rig.clock.set_wall(t0 + 5)  # the clock goes back to when the recorded command was valid
    await rig.downlink.handle(CMD, recorded)
    (ack,), (audit,) = rig.messages()
    assert (ack["status"], ack["reason"]) == ("rejected", "expired")
    assert audit["data"]["reason"] == "expired"
    assert rig.device_writes == [("lamp-01/level", 10), ("lamp-01/level", 20)]


async def test_downlink__ids_kept_until_expiry_on_the_effective_time(rig: Rig) -> None:
    """A command id forgotten while the command is still valid could be replayed."""
    body, payload = rig.command(validity_s=600)
    await rig.downlink.handle(CMD, payload)
    true_now = rig.now()
    rig.clock.set_wall(rig.clock.wall() + 3000)  # a wrong step forward...
    # ...and a long-lived command from the central post (its clock right) is accepted:
    later = make_command(gw=GW, op="write", point="lamp-01/level", value=50, now_ms=true_now,
                         validity_s=3500)  # fmt: skip
    await rig.downlink.handle(CMD, sign(rig.keys["operator"], later))
    assert rig.device_writes[-1] == ("lamp-01/level", 50)
    # The first id is still remembered: the floor follows the signed iat, not the wall clock.
    assert rig.outbox.command_seen(body["id"])
    assert rig.downlink.time.floor_ms <= true_now + 30_000


async def test_downlink__commands_issued_before_an_outbox_recovery_are_refused(
    rig: Rig, tmp_path: Path
) -> None:
    """Replay ids lost with a corrupt outbox would let recorded commands be obeyed again."""
    body, recorded = rig.command(value=10, validity_s=600)
    await rig.downlink.handle(CMD, recorded)
    rig.outbox.close()
    (tmp_path / "data" / "outbox.sqlite").write_bytes(b"\x00garbage" * 500)
    await rig.clock.advance(1)
    rig.outbox = Outbox.open(tmp_path / "data", rig.clock)
    assert rig.outbox.recovery is not None
    assert not rig.outbox.command_seen(body["id"])
    rig.downlink = _rebuilt(rig, tmp_path)
    await rig.downlink.handle(CMD, recorded)
    (ack,), _ = rig.messages()
    assert (ack["status"], ack["reason"]) == ("rejected", "replay")
    assert "outbox recovered" in ack["msg"]
    # A command issued after the recovery is obeyed.
    await rig.downlink.handle(CMD, rig.command(value=30)[1])
    (ack,), _ = rig.messages()
    assert ack["status"] == "done"
    assert rig.device_writes == [("lamp-01/level", 10), ("lamp-01/level", 30)]


def test_outbox__replay_purge_uses_the_expiry_index(rig: Rig) -> None:
    """With many remembered ids, every accepted command would scan them all."""
    plan = rig.outbox._db.execute(
        "EXPLAIN QUERY PLAN DELETE FROM seen_commands WHERE until_ms < ?", (0,)
    ).fetchall()
    assert any("seen_commands_until" in str(row) for row in plan), plan


# -- hostile input (issue 7): each attack through the real downlink -------------------------


def _hostile_envelope(rig: Rig, *, protected: Any = None, unprotected: Any = None) -> bytes:
    """A COSE_Sign1 naming the operator's kid, with attacker-chosen headers, junk signature."""
    kid_ = decode_envelope(rig.command()[1]).kid
    if protected is None:
        protected = cbor2.dumps({1: -8, 4: kid_})
    body = [protected, {} if unprotected is None else unprotected, b"\xa0", bytes(64)]
    return cbor2.dumps(cbor2.CBORTag(18, body))


def _stored(rig: Rig) -> tuple[int, int]:
    """(records, bytes of the database and its WAL): what input made the gateway write."""
    files = [rig.outbox.path, rig.outbox.path.with_name(rig.outbox.path.name + "-wal")]
    return rig.outbox.depth, sum(f.stat().st_size for f in files if f.exists())


HOSTILE = {
    # tag 35: a regular expression cbor2 compiled before any check (catastrophic backtracking)
    "regex": lambda rig: _hostile_envelope(
        rig, unprotected={33: cbor2.CBORTag(35, "^(a+)+$" * 400)}
    ),
    # Python hashes ints modulo 2**61 - 1: a header map of keys that all collide
    "hash-collision": lambda rig: _hostile_envelope(
        rig, unprotected={j * (2**61 - 1): 0 for j in range(-8, 9)} | dict.fromkeys(range(40), 0)
    ),
    "bignum-collision": lambda rig: _hostile_envelope(
        rig, unprotected={cbor2.CBORTag(2, (k * (2**61 - 1)).to_bytes(16)): 0 for k in range(99)}
    ),
    # a 4,300+ digit bignum: repr() of it raised ValueError out of the verifier
    "bignum-header": lambda rig: _hostile_envelope(
        rig, protected=cbor2.dumps({1: -8, 4: b"k" * 8, 5: cbor2.CBORTag(2, b"\x01" * 2000)})
    ),
    "one-byte": lambda rig: b"\x00",
    "empty": lambda rig: b"",
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
async def test_downlink__hostile_envelope_is_counted_never_stored_or_acked(
    rig: Rig, attack: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One keyless message could freeze the gateway, crash the verifier or fill its audit log."""
    payload = HOSTILE[attack](rig)
    before = _stored(rig)
    for _ in range(50):
        await rig.downlink.handle(CMD, payload)
    assert _stored(rig) == before  # nothing written, no Ack, no record
    tally = rig.downlink.tallies[Topic.CMD]
    assert tally.count == 50
    assert sum(tally.reasons.values()) == 50
    assert "internal-error" not in tally.reasons
    assert [r.levelname for r in caplog.records] == ["WARNING"]  # one line, no traceback
    # A genuine command is still obeyed, then one summary accounts for the junk.
    _body, ping = rig.command(op="action", name="ping")
    await rig.downlink.handle(CMD, ping)
    rig.downlink.flush_summaries()
    (ack,), (done, summary) = rig.messages()
    assert (ack["status"], done["code"]) == ("done", "cmd.done")
    assert (summary["code"], summary["data"]["count"]) == ("cmd.unauthenticated", 50)
    assert rig.device_writes == []


async def test_downlink__junk_flood_costs_one_record_per_interval(rig: Rig) -> None:
    """A flood of junk would be written to flash message by message and evict real data."""
    summaries = asyncio.create_task(rig.downlink.run())
    real = rig.outbox.append(
        rig.downlink._events.audit(code="cmd.done", severity=Severity.NOTICE, msg="real", data={})
    )
    for minute in range(3):
        before = _stored(rig)
        for i in range(2000):
            await rig.downlink.handle(CMD, i.to_bytes(4, "big") * (1 + i % 50))
        assert _stored(rig) == before  # within the interval, nothing at all is written
        await rig.clock.advance(60)
        assert rig.outbox.depth == before[0] + 1, minute  # then one summary
    summaries.cancel()
    records = rig.outbox.take(100)
    assert records[0].seq == real  # the real record is still there, first
    counts = [cbor2.loads(decode_envelope(r.payload).payload)["data"]["count"] for r in records[1:]]
    assert counts == [2000, 2000, 2000]


async def test_downlink__forged_copy_of_a_real_command_gets_no_ack(rig: Rig) -> None:
    """Anyone who read a genuine command could make the gateway sign a false refusal of it."""
    body, payload = rig.command(value=60)
    await rig.downlink.handle(CMD, payload)
    forged = payload[:-1] + bytes([payload[-1] ^ 0xFF])  # same id, junk signature
    stranger = sign(rig.keys["stranger"], body)  # same body, signed by an unknown key
    await rig.downlink.handle(CMD, forged)
    await rig.downlink.handle(CMD, stranger)
    acks, audits = rig.messages()
    assert [(a["cmd"], a["status"]) for a in acks] == [(body["id"], "done")]
    assert [a["code"] for a in audits] == ["cmd.done"]
    assert rig.downlink.tallies[Topic.CMD].reasons == {"bad-signature": 1, "unknown-kid": 1}


async def test_downlink__oversized_trust_update_is_unauthenticated_noise(rig: Rig) -> None:
    """A huge message on the trust topic would be decoded, or audited one by one."""
    trust = f"armoire/v1/{GW}/trust"
    before = _stored(rig)
    await rig.downlink.handle(trust, bytes(200 * 1024))
    await rig.downlink.handle(trust, HOSTILE["regex"](rig))
    assert _stored(rig) == before
    assert rig.downlink.tallies[Topic.TRUST].reasons == {"bad-request": 2}


async def test_downlink__replayed_genuine_command_in_a_loop_is_answered_once(rig: Rig) -> None:
    """A recorded genuine command replayed in a loop would fill the flash with refusals."""
    body, payload = rig.command(value=25)
    for _ in range(500):
        await rig.downlink.handle(CMD, payload)
    # Other refusals keep their own answer, up to the interval's budget.
    for _ in range(60):
        await rig.downlink.handle(CMD, rig.command(prio=5)[1])
    rig.downlink.flush_summaries()
    acks, audits = rig.messages()
    assert [a["status"] for a in acks[:2]] == ["done", "rejected"]
    assert acks[1]["reason"] == "replay"
    assert len(acks) == 1 + MAX_REFUSALS  # the done, then the interval's budget of refusals
    (summary,) = [a for a in audits if a["data"].get("summary")]
    assert summary["code"] == "cmd.rejected"
    assert summary["data"]["reasons"] == {
        "replay": 498,
        "not-authorised": 11 + 49 - MAX_REFUSALS + 1,
    }
    assert summary["data"]["count"] == 499 + 60 - MAX_REFUSALS
    assert body["id"] in summary["data"]["samples"]
    assert rig.device_writes == [("lamp-01/level", 25)]


async def test_downlink__replayed_trust_update_in_a_loop_is_audited_once(rig: Rig) -> None:
    """An old root-signed trust update replayed in a loop would fill the flash with audits."""
    entries = [{"pub": public_raw(rig.keys["operator"]), "roles": ["operator"]}]
    old = sign_trust_update(rig.keys["root"], serial=1, keys=entries, now_ms=rig.now())
    for _ in range(200):
        await rig.downlink.handle(f"armoire/v1/{GW}/trust", old)
    rig.downlink.flush_summaries()
    _, audits = rig.messages()
    assert [a["code"] for a in audits] == ["trust.rejected", "cmd.rejected"]
    (summary,) = [a for a in audits if a["data"].get("summary")]
    assert summary["data"]["reasons"] == {"trust:replay": 199}
