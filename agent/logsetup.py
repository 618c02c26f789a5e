"""Where the agent's log lines go, and in which form.

On a terminal or in a file, a line carries its own timestamp and level. Under systemd,
stderr is a stream to the journal, which stamps every line itself and files it by
priority: there a line is ``<N>logger: message``, ``N`` being the syslog priority that
sd-daemon(3) reads from such a prefix, and no timestamp of ours (the journal would show
two). systemd says that stderr is connected to the journal by setting ``JOURNAL_STREAM``
to the stream's ``device:inode`` (systemd.exec(5), "Environment variables in spawned
processes"); comparing it with stderr's own ``fstat`` tells a redirected stderr from a
journal one.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Final, TextIO

# Levels accepted by --log-level and the configuration's [log] level.
LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_LEVEL: Final = "INFO"

# sd-daemon(3) / syslog(3) priorities for Python's levels.
_PRIORITY: Final = {
    logging.DEBUG: 7,  # LOG_DEBUG
    logging.INFO: 6,  # LOG_INFO
    logging.WARNING: 4,  # LOG_WARNING
    logging.ERROR: 3,  # LOG_ERR
    logging.CRITICAL: 2,  # LOG_CRIT
}

PLAIN_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_OURS: Final = "_armoire_handler"  # marks the handler configure() installed


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a Python log level (custom levels round to the next one up)."""
    for level in sorted(_PRIORITY):
        if levelno <= level:
            return _PRIORITY[level]
    return _PRIORITY[logging.CRITICAL]


class JournalFormatter(logging.Formatter):
    """``<N>logger: message``; every line of a multi-line record (a traceback) keeps the
    prefix, so the journal files all of it at the record's priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        text = f"{record.name}: {super().format(record)}"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def stream_is_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal stream systemd named in ``JOURNAL_STREAM``."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False  # not a real file (pytest's capture, io.StringIO)
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def configure(level: str = DEFAULT_LEVEL, *, stream: TextIO | None = None) -> None:
    """Send the root logger's records to ``stream`` (stderr), in the journal's form if
    stderr is the journal, at ``level``. Replaces the handler an earlier call installed
    (not others', e.g. a test runner's), so it can be called again once the configuration
    names a level."""
    out = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        JournalFormatter() if stream_is_journal(out) else logging.Formatter(PLAIN_FORMAT)
    )
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _OURS, False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
