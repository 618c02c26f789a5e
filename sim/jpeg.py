"""A baseline JPEG still generated without an image library (ITU-T T.81).

The simulated camera needs a real JPEG whose size and content change with what
the camera "sees". Rather than pixels → DCT, it writes DCT coefficients
directly: each 8×8 block's DC term draws the scene (a gradient, the moving
bright square of a motion, near-black when the lens is covered) and a few
seeded random AC terms add texture, which is what makes a still weigh tens of
KiB like a real one. Any JPEG decoder reads the result: one grayscale
component, baseline sequential Huffman, with our own (valid, canonical) tables.
"""

from __future__ import annotations

import random
import struct

# T.81 Annex C: canonical Huffman codes from code-length counts. Twelve 4-bit codes
# cover the DC size categories 0..11; for AC, EOB, ZRL and run-0 sizes 1..10.
_DC_SYMBOLS = list(range(12))
_AC_SYMBOLS = [0x00, *range(0x01, 0x0B), 0xF0]
_CODE_LENGTH = 4


def _codes(symbols: list[int]) -> dict[int, tuple[int, int]]:
    return {symbol: (code, _CODE_LENGTH) for code, symbol in enumerate(symbols)}


_DC_CODES = _codes(_DC_SYMBOLS)
_AC_CODES = _codes(_AC_SYMBOLS)
_QUANT = 8  # every quantisation step (flat table): DC value v means a block mean of 128 + v


class _Bits:
    def __init__(self) -> None:
        self.out = bytearray()
        self._acc = 0
        self._n = 0

    def put(self, value: int, length: int) -> None:
        self._acc = (self._acc << length) | (value & ((1 << length) - 1))
        self._n += length
        while self._n >= 8:
            self._n -= 8
            byte = (self._acc >> self._n) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0x00)  # T.81 F.1.2.3: byte stuffing
        self._acc &= (1 << self._n) - 1

    def flush(self) -> bytes:
        if self._n:
            self.put((1 << (8 - self._n)) - 1, 8 - self._n)  # pad with 1-bits
        return bytes(self.out)


def _size(value: int) -> int:
    return abs(value).bit_length()


def _amplitude(value: int, size: int) -> int:
    return value if value >= 0 else value + (1 << size) - 1


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", marker, len(payload) + 2) + payload


def _dht(table_class: int, ident: int, symbols: list[int]) -> bytes:
    counts = [0] * 16
    counts[_CODE_LENGTH - 1] = len(symbols)
    return _segment(0xFFC4, bytes([table_class << 4 | ident, *counts, *symbols]))


def still(
    *,
    width: int = 640,
    height: int = 480,
    frame: int = 0,
    motion: bool = False,
    covered: bool = False,
    detail: int = 20,
    seed: int = 0,
) -> bytes:
    """A JPEG of ``width``×``height`` (multiples of 8); ``detail`` AC terms per block (0..63)."""
    if width % 8 or height % 8 or not (8 <= width <= 4096 and 8 <= height <= 4096):
        raise ValueError("width and height must be multiples of 8 in 8..4096")
    if not 0 <= detail <= 63:
        raise ValueError("detail must be in 0..63")
    rng = random.Random(seed * 1_000_003 + frame)
    cols, rows = width // 8, height // 8
    # The moving square: where it is depends on the frame.
    sq_col, sq_row = (frame * 3) % max(1, cols - 8), (frame * 2) % max(1, rows - 8)
    bits = _Bits()
    previous_dc = 0
    for row in range(rows):
        for col in range(cols):
            if covered:
                dc = -120
            else:
                dc = -60 + (100 * col) // cols + (20 * row) // rows
                if motion and sq_col <= col < sq_col + 8 and sq_row <= row < sq_row + 8:
                    dc = 110
            diff = dc - previous_dc
            previous_dc = dc
            size = _size(diff)
            bits.put(*_DC_CODES[size])
            if size:
                bits.put(_amplitude(diff, size), size)
            count = 0 if covered else detail
            for _ in range(count):
                value = rng.choice((-3, -2, -1, 1, 2, 3))
                size = _size(value)
                bits.put(*_AC_CODES[size])  # run 0, size s
                bits.put(_amplitude(value, size), size)
            if count < 63:
                bits.put(*_AC_CODES[0x00])  # EOB
    scan = bits.flush()
    header = b"".join(
        [
            b"\xff\xd8",  # SOI
            _segment(0xFFE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"),  # APP0
            _segment(0xFFDB, bytes([0x00, *([_QUANT] * 64)])),  # DQT 0, 8-bit
            _segment(0xFFC0, struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0])),
            _dht(0, 0, _DC_SYMBOLS),
            _dht(1, 0, _AC_SYMBOLS),
            _segment(0xFFDA, bytes([1, 1, 0x00, 0, 63, 0])),  # SOS: 1 comp, Ss 0, Se 63
        ]
    )
    return header + scan + b"\xff\xd9"  # EOI
