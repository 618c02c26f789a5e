# The I/O module's serial link, module side (MicroPython; README "Cabinet I/O module").
#
# Frame:  A5 5A | type | seq | len | payload | crc16 big-endian (CRC-16/CCITT-FALSE over
# type..payload). The agent's decoder is drivers/iomodule/codec.py, written separately;
# tests/fixtures/iomodule/golden.txt pins both to the same bytes. No I/O here.

SYNC = b"\xa5\x5a"
PING = 0x01
SET_RELAYS = 0x02
STATUS = 0x81
CHANGE = 0x82
NAK = 0x83
NAK_CORRUPT = 1
NAK_UNKNOWN_TYPE = 2
NAK_BAD_PAYLOAD = 3
MAX_PAYLOAD = 32
HEADER = 5
NO_TEMPERATURE = -0x8000


def crc16(data):
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def encode(kind, seq, payload=b""):
    body = bytes((kind, seq & 0xFF, len(payload))) + bytes(payload)
    crc = crc16(body)
    return SYNC + body + bytes((crc >> 8, crc & 0xFF))


def status_payload(ack, inputs, relays, flags, temperature):
    if temperature is None:
        raw = NO_TEMPERATURE
    else:
        raw = max(-0x7FFF, min(0x7FFF, int(round(temperature * 10))))
    raw &= 0xFFFF
    return bytes((ack & 0xFF, inputs & 0xFF, relays & 0xFF, flags & 0xFF, raw >> 8, raw & 0xFF))


class Decoder:
    """Bytes in; frames out as (kind, seq, payload) tuples, or ("corrupt", nbytes)."""

    def __init__(self):
        self._buf = b""  # MicroPython's bytearray has no slice deletion: re-slice bytes
        self.frames = 0
        self.corrupt = 0

    def feed(self, data):
        buf = self._buf + bytes(data)
        out = []
        while True:
            start = buf.find(SYNC)
            if start < 0:
                buf = buf[-1:] if buf[-1:] == SYNC[:1] else b""
                break
            if start:
                buf = buf[start:]
            if len(buf) < HEADER:
                break
            length = buf[4]
            if length > MAX_PAYLOAD:
                buf = buf[2:]
                self.corrupt += 1
                out.append(("corrupt", 2))
                continue
            end = HEADER + length + 2
            if len(buf) < end:
                break
            if crc16(buf[2 : HEADER + length]) != (buf[end - 2] << 8) | buf[end - 1]:
                buf = buf[2:]
                self.corrupt += 1
                out.append(("corrupt", 2))
                continue
            out.append((buf[2], buf[3], buf[HEADER : HEADER + length]))
            self.frames += 1
            buf = buf[end:]
        self._buf = buf
        return out
