# The module-side codec, in MicroPython. Golden frames: tests/fixtures/iomodule/golden.txt,
# the same file the agent's codec is tested against.
import unittest

import iolink


def golden():
    import os

    path = os.getenv("IOMOD_GOLDEN")
    frames = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                name, hexed = line.split()
                frames[name] = bytes.fromhex(hexed)
    return frames


class TestCrc(unittest.TestCase):
    def test_check_value(self):
        self.assertEqual(iolink.crc16(b"123456789"), 0x29B1)


class TestGolden(unittest.TestCase):
    def test_encodes_the_golden_frames(self):
        g = golden()
        self.assertEqual(iolink.encode(iolink.PING, 0), g["ping_seq0"])
        self.assertEqual(
            iolink.encode(iolink.SET_RELAYS, 1, b"\x01\x01"), g["set_lighting_on_seq1"]
        )
        payload = iolink.status_payload(1, 0x0B, 0x01, 0x00, 21.5)
        self.assertEqual(iolink.encode(iolink.STATUS, 7, payload), g["status_seq7_ack1"])
        payload = iolink.status_payload(0, 0x02, 0x01, 0x01, None)
        self.assertEqual(iolink.encode(iolink.CHANGE, 255, payload), g["change_seq255_no_temp"])
        payload = iolink.status_payload(0, 0, 0, 0, -12.3)
        self.assertEqual(iolink.encode(iolink.STATUS, 3, payload), g["status_seq3_minus12_3"])
        self.assertEqual(iolink.encode(iolink.NAK, 9, b"\x01"), g["nak_corrupt_seq9"])

    def test_decodes_the_agents_frames(self):
        g = golden()
        d = iolink.Decoder()
        self.assertEqual(
            d.feed(g["ping_seq0"] + g["set_lighting_on_seq1"]),
            [(iolink.PING, 0, b""), (iolink.SET_RELAYS, 1, b"\x01\x01")],
        )


class TestDecoder(unittest.TestCase):
    def test_byte_at_a_time(self):
        d = iolink.Decoder()
        frame = iolink.encode(iolink.SET_RELAYS, 42, b"\x03\x02")
        out = []
        for b in frame:
            out += d.feed(bytes((b,)))
        self.assertEqual(out, [(iolink.SET_RELAYS, 42, b"\x03\x02")])

    def test_noise_then_frame(self):
        d = iolink.Decoder()
        self.assertEqual(
            d.feed(b"\x00\xa5\xff\xa5" + iolink.encode(iolink.PING, 5)), [(iolink.PING, 5, b"")]
        )

    def test_corrupt_frame_is_reported_and_the_next_one_decodes(self):
        d = iolink.Decoder()
        bad = bytearray(iolink.encode(iolink.PING, 1))
        bad[-1] ^= 0x01
        out = d.feed(bytes(bad) + iolink.encode(iolink.PING, 2))
        self.assertEqual(out, [("corrupt", 2), (iolink.PING, 2, b"")])
        self.assertEqual(d.corrupt, 1)

    def test_oversized_length_is_refused_without_waiting(self):
        d = iolink.Decoder()
        out = d.feed(b"\xa5\x5a\x01\x00\xff" + iolink.encode(iolink.PING, 3))
        self.assertEqual(out, [("corrupt", 2), (iolink.PING, 3, b"")])
