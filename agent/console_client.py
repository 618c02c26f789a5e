"""``armoire console``: this terminal, raw, connected to the agent's console socket.

The agent's line editor does the echo and the editing, as on the serial port, so the local
terminal is put in raw mode (restored on exit); without a terminal (a pipe), bytes are passed
as they come. Ends when the agent closes the connection (``exit``, Ctrl-D) or on end of input.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
import tty
from collections.abc import Iterator
from pathlib import Path

CHUNK = 4096


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def attach(path: Path) -> None:
    """Pump bytes between stdin/stdout and the socket until either side ends."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    with sock, _raw(stdin):
        open_input = True
        while True:
            readable, _, _ = select.select([sock, stdin] if open_input else [sock], [], [])
            if sock in readable:
                data = sock.recv(CHUNK)
                if not data:
                    return
                os.write(stdout, data)
            if stdin in readable:
                data = os.read(stdin, CHUNK)
                if not data:
                    open_input = False  # piped input ended: read what is still answered
                    sock.shutdown(socket.SHUT_WR)
                    continue
                sock.sendall(data)
