"""The console's line protocol, sans-IO: bytes from a dumb terminal in, lines and echo out.

A serial terminal at 115200 8N1 (picocom, screen) sends each key as typed and shows only what
comes back, so the gateway echoes. `LineEditor.feed` takes whatever bytes arrived and returns
the echo to send back and the events: a complete `Line`, `Interrupt` (Ctrl-C: the line is
dropped), `EndOfInput` (Ctrl-D on an empty line). Editing: backspace (BS or DEL), Ctrl-U (kill
the line), CR, LF or CRLF end a line. Escape sequences (arrow keys) and other control bytes are
swallowed, bytes that are not printable ASCII are ignored: no command needs them, and a line
noise burst must not become a command.

A line longer than `MAX_LINE` is refused whole when it ends (`Line.too_long`), never cut into a
command. Secrets are not echoed: once a line starts with ``login `` the characters after it
come back as nothing, so a token never shows on the screen or in a terminal log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

MAX_LINE: Final = 1024  # a maintenance token is ~300 characters
SECRET_PREFIXES: Final = ("login ",)

BS, DEL, CTRL_C, CTRL_D, CTRL_U, ESC = 0x08, 0x7F, 0x03, 0x04, 0x15, 0x1B
CR, LF = 0x0D, 0x0A
ERASE: Final = b"\b \b"


@dataclass(frozen=True, slots=True)
class Line:
    """A complete line (without its end), or ``too_long`` when it went past `MAX_LINE`."""

    text: str
    too_long: bool = False


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Ctrl-C: the line being typed was dropped."""


@dataclass(frozen=True, slots=True)
class EndOfInput:
    """Ctrl-D on an empty line: the technician is done."""


Event: TypeAlias = Line | Interrupt | EndOfInput


class LineEditor:
    """Turns keystrokes into lines (module docstring). Memory is bounded by `MAX_LINE`."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._max = max_line
        self._buf = bytearray()
        self._overflow = False
        self._after_cr = False
        self._escape = 0  # 0: none; 1: after ESC; 2: inside "ESC [" (until a final byte)

    @property
    def pending(self) -> str:
        """The line typed so far."""
        return self._buf.decode("ascii")

    def _secret(self) -> bool:
        return any(self._buf.startswith(p.encode()) for p in SECRET_PREFIXES)

    def feed(self, data: bytes) -> tuple[bytes, list[Event]]:
        """Process received bytes: what to echo, and the events they complete."""
        echo = bytearray()
        events: list[Event] = []
        for byte in data:
            after_cr, self._after_cr = self._after_cr, False
            if self._escape:
                # ESC x, or ESC [ params final (final byte 0x40..0x7E): swallowed whole.
                if self._escape == 1:
                    self._escape = 2 if byte in (ord("["), ord("O")) else 0
                elif 0x40 <= byte <= 0x7E:
                    self._escape = 0
                continue
            if byte in (CR, LF):
                if byte == LF and after_cr:
                    continue  # the LF of a CRLF
                self._after_cr = byte == CR
                echo += b"\r\n"
                events.append(Line(self._buf.decode("ascii"), too_long=self._overflow))
                self._buf.clear()
                self._overflow = False
            elif byte in (BS, DEL):
                if self._buf:
                    secret = self._secret()
                    self._buf.pop()
                    if not secret or not self._secret():
                        echo += ERASE
            elif byte == CTRL_C:
                echo += b"^C\r\n"
                self._buf.clear()
                self._overflow = False
                events.append(Interrupt())
            elif byte == CTRL_D:
                if not self._buf and not self._overflow:
                    events.append(EndOfInput())
            elif byte == CTRL_U:
                if not self._secret():
                    echo += ERASE * len(self._buf)
                self._buf.clear()
                self._overflow = False
            elif byte == ESC:
                self._escape = 1
            elif 0x20 <= byte < 0x7F:
                if self._overflow or len(self._buf) >= self._max:
                    self._overflow = True
                    continue
                secret = self._secret()
                self._buf.append(byte)
                if not secret:
                    echo.append(byte)
            # Anything else (other control bytes, 8-bit noise) is ignored.
        return bytes(echo), events
