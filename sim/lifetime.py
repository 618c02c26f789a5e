"""Children that do not outlive the process that started them.

A test run killed with SIGKILL (a CI timeout, a developer's Ctrl-\\) runs no teardown:
its brokers, simulators and agents would live on, holding ports and reopening the
symlinked ptys of later runs' simulators. ``setpriv --pdeathsig`` (util-linux) sets the
child's parent-death signal and then execs the command, so the kernel stops it when its
parent goes, however the parent went.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from functools import cache


@cache
def _setpriv() -> str | None:
    return shutil.which("setpriv")


def tied_to_parent(argv: Sequence[str], signal: str = "TERM") -> list[str]:
    """``argv``, run so that it receives ``signal`` when its parent dies (where setpriv exists)."""
    setpriv = _setpriv()
    return [*argv] if setpriv is None else [setpriv, "--pdeathsig", signal, *argv]
