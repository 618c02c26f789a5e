"""Fixtures shared by every test suite (keep this file small)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sim.broker import Mosquitto, free_port

__all__ = ["free_port"]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    """A real mosquitto on 127.0.0.1 at a free port, stopped after the test."""
    async with Mosquitto(data_dir=tmp_path / "mosquitto") as started:
        yield started
