"""The simulated gateway's console port: two ptys joined back to back, like a null-modem cable.

The agent opens ``DATA/dev/console`` (board/sim.toml's ``console`` role), a technician's
terminal ``DATA/dev/console-tech`` (``picocom -b 115200 DATA/dev/console-tech`` or ``screen``):
what one writes, the other reads. Nothing is buffered for a side that is not attached: like a
serial line nobody listens to, its output is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from pathlib import Path
from types import TracebackType
from typing import Self

AGENT_END = "console"
TECH_END = "console-tech"
CHUNK = 4096


class ConsolePty:
    """``async with ConsolePty(dev_dir) as pty:`` ``pty.tech_path`` is where a terminal attaches."""

    def __init__(self, dev_dir: Path) -> None:
        self.dev_dir = dev_dir
        self.agent_path = dev_dir / AGENT_END
        self.tech_path = dev_dir / TECH_END
        self._fds: list[int] = []

    async def __aenter__(self) -> Self:
        self.dev_dir.mkdir(parents=True, exist_ok=True)
        a_master, a_slave = os.openpty()
        b_master, b_slave = os.openpty()
        # The slaves stay open here: a pty whose slaves are all closed reads EIO on its master.
        self._fds = [a_master, a_slave, b_master, b_slave]
        for fd in self._fds:
            tty.setraw(fd)
        for master in (a_master, b_master):
            os.set_blocking(master, False)
        for link, slave in ((self.agent_path, a_slave), (self.tech_path, b_slave)):
            link.unlink(missing_ok=True)
            link.symlink_to(os.ttyname(slave))
        loop = asyncio.get_running_loop()
        loop.add_reader(a_master, self._copy, a_master, b_master)
        loop.add_reader(b_master, self._copy, b_master, a_master)
        return self

    @staticmethod
    def _copy(src: int, dst: int) -> None:
        try:
            data = os.read(src, CHUNK)
            os.write(dst, data)
        except OSError:
            pass  # nobody attached on the other side, or its buffer is full: dropped

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        for master in self._fds[0::2]:
            loop.remove_reader(master)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for link in (self.agent_path, self.tech_path):
            link.unlink(missing_ok=True)
