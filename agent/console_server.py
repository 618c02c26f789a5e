"""The console's transports: the board's ``console`` serial port and a local Unix socket.

Thin asyncio code around `agent.console.LineEditor` (bytes to lines) and
`agent.console_session.Session` (lines to answers). The serial port is kept open like the
RS-485 lines: opened when it can be, reopened when it goes away (a USB adapter pulled), errors
logged once per cause. The socket (``armoire console``) is for a shell on the gateway itself;
it is created mode 0600, so only the agent's user (and root) can attach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

import serial_asyncio_fast

from agent.board import SerialPort
from agent.console import EndOfInput, Line, LineEditor
from agent.console_session import ConsoleState, Session

if TYPE_CHECKING:
    from agent.runtime import Agent

log = logging.getLogger(__name__)

SOCKET_FILE: Final = "console.sock"  # in the data directory unless configured
SOCKET_ENV: Final = "ARMOIRE_CONSOLE_SOCKET"
SYSTEMD_SOCKET: Final = Path("/run/armoire/console.sock")  # what deploy/armoire.service sets
READ_SIZE: Final = 256
REOPEN_S: Final = 5.0
SWEEP_S: Final = 5.0  # how often idle and expired sessions are ended


def socket_path(data_dir: Path) -> Path:
    """Where the console socket is: ``$ARMOIRE_CONSOLE_SOCKET``, else DATA/console.sock."""
    configured = os.environ.get(SOCKET_ENV)
    return Path(configured) if configured else data_dir / SOCKET_FILE


# Plain ASCII for a dumb terminal: the few typographic characters the status text uses.
_ASCII: Final = str.maketrans({"—": "-", "–": "-", "…": "...", "°": " deg", "×": "x"})


def _crlf(text: str) -> bytes:
    text = text.translate(_ASCII).replace("\r\n", "\n").replace("\n", "\r\n")
    return text.encode("ascii", "replace")


class ConsoleServer:
    """Serves the console on ``serial`` (if the board has one) and on the Unix socket."""

    def __init__(
        self,
        agent: Agent,
        *,
        serial: SerialPort | None,
        socket: Path,
        restart: Callable[[], None],
        banner_note: str = "",
    ) -> None:
        self.state = ConsoleState(agent)
        self.agent = agent
        self._serial = serial
        self._socket = socket
        self._restart = restart
        self.banner_note = banner_note

    def banner(self) -> str:
        cfg = self.agent.config
        lines = [
            f"armoire gateway {cfg.gateway} - technician console. "
            "Type help; login TOKEN for maintenance."
        ]
        if self.banner_note:
            lines.append(self.banner_note)
        return "\n".join(lines)

    async def run(self) -> None:
        logging.getLogger().addHandler(self.state.ring)
        self.state.publish_session()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._sweep(), name="console.sweep")
                tg.create_task(self._serve_socket(), name="console.socket")
                if self._serial is not None:
                    tg.create_task(self._serve_serial(self._serial), name="console.serial")
        finally:
            logging.getLogger().removeHandler(self.state.ring)
            with contextlib.suppress(OSError):
                self._socket.unlink()

    async def _sweep(self) -> None:
        while True:
            await self.agent.clock.sleep(SWEEP_S)
            for session in list(self.state.sessions):
                why = session.check_end()
                if why is not None and session.on_end is not None:
                    session.on_end(why)

    async def _serve_socket(self) -> None:
        path = self._socket
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            path.unlink()  # a stale socket of an earlier run (the instance lock is ours)
        old = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self._socket_client, path=str(path))
        except OSError as exc:
            # The serial console runs on; `armoire console` says it cannot attach.
            log.error("console socket %s unavailable: %s", path, exc)
            return
        finally:
            os.umask(old)
        log.info("console on %s", path)
        async with server:
            await server.serve_forever()

    async def _socket_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            await self.converse(reader, writer, where="socket", hang_up_on_eof=True)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()

    async def _serve_serial(self, port: SerialPort) -> None:
        last_error = ""
        while True:
            try:
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=str(port.device),
                    baudrate=port.baudrate,
                    bytesize=port.bytesize,
                    parity=port.parity,
                    stopbits=port.stopbits,
                )
            except (OSError, ValueError) as exc:
                error = str(exc)
                if error != last_error:
                    log.warning("console port %s unavailable: %s", port.device, error)
                    last_error = error
                await self.agent.clock.sleep(REOPEN_S)
                continue
            last_error = ""
            log.info("console on serial port %s", port.device)
            try:
                await self.converse(reader, writer, where="serial", hang_up_on_eof=False)
            except (OSError, ConnectionError) as exc:
                log.warning("console port %s lost: %s", port.device, exc)
            finally:
                writer.close()
            await self.agent.clock.sleep(REOPEN_S / 5)

    async def converse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        where: str,
        hang_up_on_eof: bool,
    ) -> None:
        """One terminal: banner, prompt, then lines until EOF (or exit on the socket)."""
        editor = LineEditor()

        def new_session() -> Session:
            session = Session(self.state, where=where, restart=self._restart)
            session.on_end = lambda why: writer.write(
                _crlf(f"\n% session ended: {why}\n{session.prompt()}")
            )
            return session

        session = new_session()
        writer.write(_crlf(f"\n{self.banner()}\n{session.prompt()}"))
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    return
                echo, events = editor.feed(data)
                out = bytearray(echo)
                for event in events:
                    if isinstance(event, Line):
                        if event.too_long:
                            answer = "% line too long: refused (nothing was run)"
                        else:
                            answer = await session.handle(event.text)
                        if answer:
                            out += _crlf(answer + "\n")
                    elif isinstance(event, EndOfInput):
                        session.close()
                        if hang_up_on_eof:
                            writer.write(bytes(out) + b"bye\r\n")
                            return
                        session = new_session()
                        out += _crlf(f"logged out\n{self.banner()}\n")
                    if session.closed:
                        if hang_up_on_eof:
                            writer.write(bytes(out))
                            return
                        session = new_session()
                        out += _crlf(f"{self.banner()}\n")
                    out += session.prompt().encode()
                writer.write(bytes(out))
                await writer.drain()
        finally:
            session.close()
