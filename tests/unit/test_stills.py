"""Camera stills: Blob parts in the outbox (cap, eviction order), and their reassembly
by the reference central post from what the agent really signs."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clock import FakeClock
from agent.events import Events
from agent.messages import BLOB_PART_MAX, MessageFactory, Severity
from agent.outbox import MsgClass, Outbox
from agent.security.cose import Signer
from agent.stills import Image, Stills, split
from central.blobs import EXPIRY_S, MAX_PARTIAL, Assembler, BlobError
from central.post import Ledger, Outcome
from drivers.device import DriverError

GW = "cab-0001"
KEY = Ed25519PrivateKey.generate()


@given(st.binary(min_size=1, max_size=5 * BLOB_PART_MAX + 7))
@settings(max_examples=60)
def test_split__parts_rebuild_the_object(data: bytes) -> None:
    """Parts are at most 48 KiB, none empty, as few as possible, and rebuild the image."""
    parts = split(data)
    assert b"".join(parts) == data
    assert all(1 <= len(p) <= BLOB_PART_MAX for p in parts)
    assert len(parts) == -(-len(data) // BLOB_PART_MAX)


def _stills(
    tmp_path: Path, *, keep: int = 3, capacity: int = 512 * 2**20
) -> tuple[Stills, Outbox, Events, MessageFactory]:
    clock = FakeClock()
    outbox = Outbox.open(tmp_path, clock, capacity_bytes=capacity)
    factory = MessageFactory(gw=GW, boot=outbox.boot, signer=Signer(KEY))
    events = Events(gw=GW, factory=factory, outbox=outbox, clock=clock)
    outbox.eviction_reporter = events.evicted

    async def no_camera(device: str) -> object:
        raise DriverError(f"{device}: no camera here", timeout=True)

    stills = Stills(
        gw=GW, factory=factory, outbox=outbox, events=events, keep=keep, snapshot=no_camera
    )
    return stills, outbox, events, factory


def _image(size: int, seed: int) -> Image:
    return Image(
        data=random.Random(seed).randbytes(size), ctype="image/jpeg", t_ms=1_700_000_000_000 + seed
    )


def _ledger(clock: FakeClock | None = None) -> tuple[Ledger, list[bytes]]:
    written: list[bytes] = []

    def sink(blob: object) -> str:
        written.append(blob.data)  # type: ignore[attr-defined]
        return "memory"

    ledger = Ledger({GW: Signer(KEY).public_raw}, clock=clock or FakeClock(), on_blob=sink)
    return ledger, written


def test_stills__central_reassembles_what_the_agent_signs(tmp_path: Path) -> None:
    """A 130 KB still goes as 3 parts of <= 48 KiB, each its own seq, the Event names its
    SHA-256, and the central post gets back the exact image."""
    stills, outbox, _, _ = _stills(tmp_path)
    image = _image(130_000, 1)
    stored = stills.store("cam-01", image, reason="tamper")
    assert len(stored.parts) == 3
    assert stored.event == stored.parts[-1] + 1
    ledger, written = _ledger()
    records = outbox.take(100)
    # Out of order, with a duplicate: what a reconnect can cause.
    for record in [*reversed(records), records[0]]:
        assert ledger.receive(record.topic, record.payload) in (Outcome.ACCEPTED, Outcome.DUPLICATE)
    assert ledger.rejections == []
    assert written == [image.data]
    [event] = ledger.events
    assert event["code"] == "camera.snapshot"
    assert event["data"]["sha256"] == hashlib.sha256(image.data).digest() == stored.sha256
    assert event["src"] == "cam-01"
    assert ledger.blobs[0]["bytes"] == 130_000
    assert {r.topic for r in records} == {f"armoire/v1/{GW}/blob", f"armoire/v1/{GW}/evt"}
    outbox.close()


def test_stills__cap_drops_the_oldest_whole_still(tmp_path: Path) -> None:
    """With room for 2 stills, a third evicts every part of the first (reported), not an alarm."""
    stills, outbox, events, _ = _stills(tmp_path, keep=2)
    events.rule_alarm(code="door.intrusion", severity=1, src="", raised=True, msg="door")
    first = stills.store("cam-01", _image(100_000, 1), reason="rule")
    stills.store("cam-01", _image(100_000, 2), reason="rule")
    assert outbox.stills() == 2
    stills.store("cam-01", _image(100_000, 3), reason="rule")
    assert outbox.stills() == 2
    seqs = {r.seq for r in outbox.take(100)}
    assert not seqs & set(first.parts)
    assert outbox.statistics()["depth"]["alarm"] == 1
    assert outbox.statistics()["evicted"]["messages"]["still"] == 3
    outbox.close()


def test_stills__full_store_evicts_stills_before_telemetry_and_alarms(tmp_path: Path) -> None:
    """At capacity the stills go first; the alarm raised meanwhile stays."""
    stills, outbox, events, _ = _stills(tmp_path, keep=50, capacity=400_000)
    for i in range(3):
        stills.store("cam-01", _image(100_000, i), reason="rule")
    events.append(MsgClass.ALARM, code="camera.tamper", severity=Severity.CRITICAL, state="raised")
    stills.store("cam-01", _image(100_000, 9), reason="rule")
    depth = outbox.statistics()["depth"]
    assert depth["alarm"] == 1
    assert outbox.statistics()["evicted"]["messages"].get("still", 0) >= 1
    assert outbox.statistics()["evicted"]["messages"].get("alarm", 0) == 0
    outbox.close()


async def test_stills__camera_failure_is_a_driver_error(tmp_path: Path) -> None:
    """A snapshot that fails says why and stores nothing."""
    stills, outbox, _, _ = _stills(tmp_path)
    with pytest.raises(DriverError, match="no camera here"):
        await stills.take("cam-09", reason="command")
    assert stills.failed == 1
    assert outbox.depth == 0
    outbox.close()


# -- the central post's assembler ------------------------------------------------


def _bodies(data: bytes, *, t: int = 5, ctype: str = "image/jpeg") -> list[dict[str, object]]:
    sha = hashlib.sha256(data).digest()
    chunks = split(data)
    return [
        {"sha256": sha, "ctype": ctype, "t": t, "part": i, "parts": len(chunks), "data": c}
        for i, c in enumerate(chunks)
    ]


@settings(max_examples=50)
@given(st.binary(min_size=1, max_size=3 * BLOB_PART_MAX), st.randoms(use_true_random=False))
def test_assembler__any_order_and_duplicates(data: bytes, rng: random.Random) -> None:
    """However parts arrive (any order, repeated), the object comes out once, intact."""
    bodies = _bodies(data)
    sequence = bodies + [rng.choice(bodies) for _ in range(3)]
    rng.shuffle(sequence)
    assembler = Assembler()
    out = [b for b in (assembler.add(GW, body, 0.0) for body in sequence) if b is not None]
    assert [b.data for b in out] == [data]
    assert assembler.held_bytes == 0


def test_assembler__digest_mismatch_refused() -> None:
    bodies = _bodies(b"x" * 60_000)
    bodies[1] = {**bodies[1], "data": b"y" * len(bodies[1]["data"])}  # type: ignore[arg-type]
    assembler = Assembler()
    assert assembler.add(GW, bodies[0], 0.0) is None
    with pytest.raises(BlobError, match="does not match its sha256"):
        assembler.add(GW, bodies[1], 0.0)


def test_assembler__partial_objects_bounded_and_expire() -> None:
    """Parts of objects that never complete cost bounded memory, and go after EXPIRY_S."""
    assembler = Assembler()
    for i in range(MAX_PARTIAL * 2):
        assembler.add(GW, _bodies(bytes([i % 256]) * 60_000, t=i)[0], float(i))
    assert assembler.in_progress == MAX_PARTIAL
    assert assembler.held_bytes == MAX_PARTIAL * BLOB_PART_MAX
    assembler.expire(MAX_PARTIAL * 2 + EXPIRY_S)
    assert assembler.in_progress == 0
    assert assembler.held_bytes == 0
    assert assembler.dropped == MAX_PARTIAL * 2


def test_assembler__contradicting_part_refused() -> None:
    bodies = _bodies(b"z" * 60_000)
    assembler = Assembler()
    assembler.add(GW, bodies[0], 0.0)
    with pytest.raises(BlobError, match="disagrees"):
        assembler.add(GW, {**bodies[1], "ctype": "image/png"}, 0.0)


def test_central__blob_schema_checked(tmp_path: Path) -> None:
    """A Blob part over 48 KiB or with a bad media type is rejected with the CDDL path."""
    _, outbox, _, factory = _stills(tmp_path)
    ledger, _ = _ledger()
    sha = hashlib.sha256(b"a").digest()
    import cbor2

    body = {"v": 1, "gw": GW, "boot": 1, "seq": 7, "t": 1, "sha256": sha, "ctype": "jpeg"}
    body.update(part=0, parts=1, data=b"a")
    payload = Signer(KEY).sign(cbor2.dumps(body))
    assert ledger.receive(f"armoire/v1/{GW}/blob", payload) is Outcome.REJECTED
    assert ledger.rejections[-1][1].startswith("schema: Blob.ctype")
    with pytest.raises(ValueError, match=r"1\.\.49152"):
        factory.blob(1, t_ms=1, sha256=sha, ctype="image/jpeg", part=0, parts=1, data=b"a" * 49153)
    outbox.close()
