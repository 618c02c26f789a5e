"""Log lines as the journal wants them under systemd, and as a person wants them elsewhere."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import logsetup


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _journal_env(path: Path) -> dict[str, str]:
    st = os.stat(path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.DEBUG, 7),
        (logging.INFO, 6),
        (logging.WARNING, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
        (logging.INFO + 5, 4),  # a custom level rounds to the next one up
    ],
)
def test_syslog_priority__per_level(level: int, priority: int) -> None:
    """journalctl -p warning shows warnings and worse, not the agent's routine lines."""
    assert logsetup.syslog_priority(level) == priority


def test_configure__journal_stream_gets_priority_prefixes_without_timestamps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under systemd each line carries its priority and no second timestamp; a traceback's
    lines all keep the record's priority."""
    path = tmp_path / "journal"
    with path.open("w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", _journal_env(path)["JOURNAL_STREAM"])
        logsetup.configure("INFO", stream=stream)
        logging.getLogger("agent.uplink").warning("uplink lost: %s", "timeout")
        logging.getLogger("agent.x").debug("not shown at INFO")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("agent.supervisor").exception("task failed")
    lines = path.read_text().splitlines()
    assert lines[0] == "<4>agent.uplink: uplink lost: timeout"
    assert lines[1] == "<3>agent.supervisor: task failed"
    assert len(lines) > 3
    assert all(line.startswith("<3>") for line in lines[1:])
    assert lines[-1] == "<3>ValueError: boom"


def test_configure__plain_stream_keeps_timestamps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stderr redirected to a file (JOURNAL_STREAM inherited but naming another stream)
    gets the ordinary timestamped format."""
    other = tmp_path / "other"
    other.write_text("")
    monkeypatch.setenv("JOURNAL_STREAM", _journal_env(other)["JOURNAL_STREAM"])
    path = tmp_path / "log"
    with path.open("w") as stream:
        logsetup.configure("WARNING", stream=stream)
        logging.getLogger("agent.uplink").warning("uplink lost")
    line = path.read_text().strip()
    assert not line.startswith("<")
    assert line.endswith("WARNING agent.uplink: uplink lost")
    assert line[:4].isdigit()  # the date comes first


@pytest.mark.parametrize("value", ["", "12", "a:b", ":5", "12:"])
def test_stream_is_journal__refuses_malformed_variable(value: str, tmp_path: Path) -> None:
    """A garbled JOURNAL_STREAM never makes the agent drop its timestamps."""
    with (tmp_path / "f").open("w") as stream:
        assert not logsetup.stream_is_journal(stream, {"JOURNAL_STREAM": value})
