# The firmware's logic (firmware.Module) on made-up times, in MicroPython.
import unittest

import firmware
import iolink

OPEN, CLOSED = 0, 1  # electrical levels of an active-low input: 0 = contact closed = active
QUIET = {"door": 1, "mains": 0, "ups": 1, "spd": 1}  # door shut, mains present


def config(**over):
    c = {}
    for k, v in firmware.DEFAULTS.items():
        c[k] = v
    for k, v in over.items():
        c[k] = v
    return c


def frames(data):
    return list(iolink.Decoder().feed(b"".join(data)))


def status_of(frame):
    kind, seq, p = frame
    return {"kind": kind, "seq": seq, "ack": p[0], "inputs": p[1], "relays": p[2], "flags": p[3]}


class TestDebounce(unittest.TestCase):
    def test_a_bounce_shorter_than_debounce_is_ignored(self):
        m = firmware.Module(config(), QUIET, 0)
        lv = dict(QUIET)
        lv["door"] = 0
        self.assertEqual(m.scan(lv, 10), [])
        self.assertEqual(m.scan(QUIET, 20), [])  # bounced back within 30 ms
        self.assertEqual(m.scan(QUIET, 100), [])
        self.assertFalse(m.inputs["door"].state)

    def test_door_opening_sends_one_change_after_debounce(self):
        m = firmware.Module(config(), QUIET, 0)
        lv = dict(QUIET)
        lv["door"] = 0
        self.assertEqual(m.scan(lv, 10), [])
        out = m.scan(lv, 40)
        st = status_of(frames(out)[0])
        self.assertEqual(st["kind"], iolink.CHANGE)
        self.assertEqual(st["inputs"], firmware.INPUT_BITS["door"] | firmware.INPUT_BITS["mains"])
        self.assertEqual(m.scan(lv, 50), [])  # once per transition

    def test_mains_lost(self):
        m = firmware.Module(config(), QUIET, 0)
        lv = dict(QUIET)
        lv["mains"] = 1
        m.scan(lv, 0)
        st = status_of(frames(m.scan(lv, 30))[0])
        self.assertEqual(st["inputs"] & firmware.INPUT_BITS["mains"], 0)


class TestRelaysAndSafeState(unittest.TestCase):
    def test_boots_in_safe_state_lamps_fed(self):
        m = firmware.Module(config(), QUIET, 0)
        self.assertTrue(m.safe)
        self.assertEqual(m.relays, {"relay_lighting": True, "relay_aux": False})

    def test_set_relays_is_answered_with_the_new_state(self):
        m = firmware.Module(config(), QUIET, 0)
        out = m.receive(iolink.encode(iolink.SET_RELAYS, 17, b"\x03\x02"), 100)
        st = status_of(frames(out)[0])
        self.assertEqual(
            (st["kind"], st["ack"], st["relays"], st["flags"]), (iolink.STATUS, 17, 0x02, 0)
        )
        self.assertEqual(m.relays, {"relay_lighting": False, "relay_aux": True})

    def test_silent_agent_puts_relays_safe_after_the_configured_time(self):
        m = firmware.Module(config(safe_after_ms=5000), QUIET, 0)
        m.receive(iolink.encode(iolink.SET_RELAYS, 1, b"\x03\x02"), 1000)
        m.receive(iolink.encode(iolink.PING, 2), 3000)
        self.assertEqual(m.tick(7999), [])
        out = m.tick(8000)
        st = status_of(frames(out)[0])
        self.assertEqual(st["flags"] & firmware.FLAG_SAFE, firmware.FLAG_SAFE)
        self.assertEqual(m.relays, {"relay_lighting": True, "relay_aux": False})
        self.assertEqual(m.tick(9000), [])  # engaged once

    def test_corrupt_frame_is_naked_and_changes_nothing(self):
        m = firmware.Module(config(), QUIET, 0)
        bad = bytearray(iolink.encode(iolink.SET_RELAYS, 1, b"\x01\x00"))
        bad[6] ^= 0x01
        out = frames(m.receive(bytes(bad), 10))
        self.assertEqual((out[0][0], out[0][2]), (iolink.NAK, bytes((iolink.NAK_CORRUPT,))))
        self.assertTrue(m.relays["relay_lighting"])

    def test_bad_relay_mask_is_refused(self):
        m = firmware.Module(config(), QUIET, 0)
        out = frames(m.receive(iolink.encode(iolink.SET_RELAYS, 1, b"\x04\x04"), 10))
        self.assertEqual((out[0][0], out[0][2]), (iolink.NAK, bytes((iolink.NAK_BAD_PAYLOAD,))))

    def test_sequence_numbers_wrap(self):
        m = firmware.Module(config(), QUIET, 0)
        seqs = []
        for i in range(257):
            seqs.append(frames(m.receive(iolink.encode(iolink.PING, i & 0xFF), i))[0][1])
        self.assertEqual((seqs[0], seqs[255], seqs[256]), (0, 255, 0))


class TestWatchdog(unittest.TestCase):
    def test_fed_only_while_the_scan_loop_moves(self):
        feeder = firmware.Feeder(0)
        self.assertTrue(feeder.due(3))
        self.assertTrue(feeder.due(4))
        self.assertFalse(feeder.due(4))  # the scan loop hung: starve the watchdog
        self.assertFalse(feeder.due(4))
        self.assertTrue(feeder.due(5))  # moving again
