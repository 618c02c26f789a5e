"""The one CBOR decoder for bytes nobody has authenticated yet (RFC 8949), sans-IO.

Every untrusted decode goes through `loads`: COSE envelopes and their protected headers, command
bodies, trust updates, maintenance tokens. It accepts only what the protocol uses:

- unsigned and negative integers (major types 0/1: at most 64 bits, never a bignum);
- byte strings, text strings (valid UTF-8), definite-length arrays and maps;
- ``false``, ``true``, ``null`` and floats (half, single, double);
- one tag at the top, and only when the caller asks for it (the COSE_Sign1 tag 18): no semantic
  tag is ever interpreted (no regex, bignum, decimal, date, shared value, set...);
- map keys: text and byte strings, and integers when the caller allows them (COSE labels);
  duplicate keys are refused.

Indefinite lengths, ``undefined``, other simple values and the reserved header values are
refused: no sender of ours produces them.

Worst-case cost: every item consumes at least one input byte, and a declared length or count is
compared with the bytes that remain *before* anything is allocated (a 9-byte header claiming a
4 GiB string fails at once). Strings are copied once. So decoding N bytes does O(N) work and
builds O(N) objects; `Decoder.work` counts the units (one per item started, plus the bytes
copied out of the input), at most ``2 * N`` (tests/unit/test_cbor_strict.py checks it with
hypothesis). Map keys are hashed: text and bytes with Python's keyed SipHash, and an
integer-keyed map holds at most `MAX_INT_KEYED_ENTRIES` entries, so crafted integer hash
collisions cost a constant per entry.
Nesting is bounded by ``max_depth`` (recursion depth with it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

# A map with integer keys (a COSE header) holds at most this many entries. Python hashes an int
# to itself, so colliding keys are easy to craft; a small bound caps what they can cost.
MAX_INT_KEYED_ENTRIES: Final = 32

_HALF: Final = struct.Struct(">e")
_SINGLE: Final = struct.Struct(">f")
_DOUBLE: Final = struct.Struct(">d")


class CborError(ValueError):
    """The bytes are not one item of the CBOR subset accepted here; the message says why."""


@dataclass(frozen=True, slots=True)
class Tagged:
    """A tagged item at the top level (only when the caller allowed a top tag)."""

    tag: int
    value: Any


class Decoder:
    """Decodes one buffer; ``work`` counts the units of work done (see the module docstring)."""

    __slots__ = ("_data", "_end", "_int_keys", "_max_depth", "_pos", "work")

    def __init__(self, data: bytes, *, max_depth: int, int_keys: bool) -> None:
        self._data = data
        self._pos = 0
        self._end = len(data)
        self._max_depth = max_depth
        self._int_keys = int_keys
        self.work = 0

    def decode(self, *, top_tag: bool) -> Any:
        """Exactly one item, no trailing bytes; with ``top_tag`` one outer tag is allowed."""
        if self._end and self._data[0] >> 5 == 6 and top_tag:
            self.work += 1
            tag = self._head_argument(self._data[0] & 0x1F, what="tag")
            item: Any = Tagged(tag, self._item(0))
        else:
            item = self._item(0)
        trailing = self._end - self._pos
        if trailing:
            raise CborError(f"{trailing} trailing bytes after the CBOR item")
        return item

    # -- internals --------------------------------------------------------

    def _take(self, n: int) -> bytes:
        if n > self._end - self._pos:
            raise CborError(
                f"at byte {self._pos}: {n} bytes announced, {self._end - self._pos} remain"
            )
        start = self._pos
        self._pos += n
        self.work += n
        return self._data[start : self._pos]

    def _head_argument(self, info: int, *, what: str) -> int:
        """Consume an initial byte (already peeked) and its argument; returns the argument."""
        self._pos += 1
        if info < 24:
            return info
        if info <= 27:
            return int.from_bytes(self._take(1 << (info - 24)), "big")
        if info == 31:
            raise CborError(f"at byte {self._pos - 1}: indefinite-length {what} not accepted")
        raise CborError(f"at byte {self._pos - 1}: reserved additional information {info}")

    def _count(self, n: int, per_item: int, what: str) -> int:
        # Each element needs at least one byte: refuse a count the input cannot hold before
        # allocating anything for it.
        if n * per_item > self._end - self._pos:
            raise CborError(
                f"at byte {self._pos}: {what} of {n} announced, "
                f"{self._end - self._pos} bytes remain"
            )
        return n

    def _item(self, depth: int) -> Any:
        if self._pos >= self._end:
            raise CborError(f"at byte {self._pos}: input ends inside an item")
        self.work += 1
        initial = self._data[self._pos]
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            return self._simple(info)
        arg = self._head_argument(info, what=_MAJOR_NAMES[major])
        match major:
            case 0:
                return arg
            case 1:
                return -1 - arg
            case 2:
                return self._take(arg)
            case 3:
                raw = self._take(arg)
                try:
                    return raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise CborError(f"at byte {self._pos - arg}: text is not UTF-8") from exc
            case 4:
                depth = self._deeper(depth)
                return [self._item(depth) for _ in range(self._count(arg, 1, "array"))]
            case 5:
                return self._map(self._count(arg, 2, "map"), self._deeper(depth))
            case _:  # 6: a tag below the top level, or not allowed at all
                raise CborError(f"at byte {self._pos - 1}: CBOR tag {arg} not accepted")

    def _deeper(self, depth: int) -> int:
        if depth >= self._max_depth:
            raise CborError(f"at byte {self._pos}: nested deeper than {self._max_depth} levels")
        return depth + 1

    def _map(self, n: int, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        int_keyed = False
        for _ in range(n):
            at = self._pos
            key = self._item(depth)
            if type(key) is int:
                if not self._int_keys:
                    raise CborError(f"at byte {at}: integer map key not accepted here")
                int_keyed = True
            elif type(key) is not str and type(key) is not bytes:
                raise CborError(f"at byte {at}: map key must be a text or byte string")
            if int_keyed and len(result) >= MAX_INT_KEYED_ENTRIES:
                raise CborError(
                    f"at byte {at}: more than {MAX_INT_KEYED_ENTRIES} entries in an "
                    "integer-keyed map"
                )
            if key in result:
                raise CborError(f"at byte {at}: duplicate map key")
            result[key] = self._item(depth)
        return result

    def _simple(self, info: int) -> Any:
        at = self._pos
        self._pos += 1
        match info:
            case 20:
                return False
            case 21:
                return True
            case 22:
                return None
            case 25:
                return _HALF.unpack(self._take(2))[0]
            case 26:
                return _SINGLE.unpack(self._take(4))[0]
            case 27:
                return _DOUBLE.unpack(self._take(8))[0]
            case 31:
                raise CborError(f"at byte {at}: unexpected break code")
            case _:
                raise CborError(f"at byte {at}: simple value {info} not accepted")


_MAJOR_NAMES: Final = ("uint", "nint", "bstr", "tstr", "array", "map", "tag", "simple")


def loads(
    data: bytes, *, max_size: int, max_depth: int, int_keys: bool = False, top_tag: bool = False
) -> Any:
    """Decode exactly one item of the accepted subset; raises `CborError` on anything else.

    ``max_size`` bounds the input; ``max_depth`` the nesting of arrays and maps; ``int_keys``
    allows integer map keys (COSE header labels); ``top_tag`` allows one tag around the whole
    item, returned as `Tagged` (the caller checks its number). Maps come back as ``dict``,
    arrays as ``list``.
    """
    if len(data) > max_size:
        raise CborError(f"{len(data)} bytes, more than the {max_size} accepted")
    return Decoder(data, max_depth=max_depth, int_keys=int_keys).decode(top_tag=top_tag)
