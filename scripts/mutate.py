"""Mutation testing of the safety core (``make mutate``; not part of ``make test``).

For each module below, mutmut changes the code one small edit at a time (``>`` to ``>=``,
``+ 1`` to ``+ 2``, a call dropped, a constant changed...) and runs the tests that cover the
edited function; a mutant no test notices "survives". Each module runs in its own scratch
copy of the project (``.mutmut/NAME``) with only the tests that exercise it, so one module
takes minutes, not hours, and runs niced: other work on the machine keeps its CPU.

    .venv/bin/python scripts/mutate.py                # every module
    .venv/bin/python scripts/mutate.py outbox codec   # some of them
    make mutate ARGS="--children 2 outbox"

It prints, per module, the kill rate and the surviving mutants (``mutmut show NAME`` in
``.mutmut/NAME`` prints one as a diff), then one JSON line with every module's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = Path(sys.executable).parent / "mutmut"

# module name -> (file to mutate, tests that exercise it). The subsets are chosen so that a
# module's run takes minutes: the unit tests of the module and of its direct users, plus for
# the uplink its component tests against a real mosquitto.
MODULES: dict[str, tuple[str, list[str]]] = {
    "commands": (
        "agent/commands.py",
        ["tests/unit/test_commands.py", "tests/unit/test_downlink.py"],
    ),
    "arbiter": (
        "agent/arbiter.py",
        ["tests/unit/test_arbiter.py", "tests/unit/test_downlink.py"],
    ),
    "outbox": ("agent/outbox.py", ["tests/unit/test_outbox.py"]),
    "reporter": ("agent/reporter.py", ["tests/unit/test_reporter.py"]),
    "uplink": (
        "agent/uplink.py",
        ["tests/unit/test_uplink_logging.py", "tests/integration/test_uplink_faults.py"],
    ),
    "codec": ("drivers/modbus/codec.py", ["tests/unit/test_modbus_codec.py"]),
}

# What a scratch copy needs to import the code and run the tests.
COPY = ["agent", "drivers", "sim", "central", "board", "tests", "pyproject.toml", "ruff.toml"]


def scratch(name: str, path: str, tests: list[str]) -> Path:
    """A fresh copy of the project whose setup.cfg tells mutmut what to mutate and test."""
    work = ROOT / ".mutmut" / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for item in COPY:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, work / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, work / item)
    selection = "\n".join(f"    {t}" for t in tests)
    setup = (ROOT / "setup.cfg").read_text()
    setup += (
        "\n[mutmut]\n"
        f"source_paths =\n    {path.split('/')[0]}\n"
        f"only_mutate =\n    {path}\n"
        f"pytest_add_cli_args_test_selection =\n{selection}\n"
        # Flaky-looking failures of an unmutated run would make every mutant "killed".
        "pytest_add_cli_args =\n    -p\n    no:cacheprovider\n    -x\n    -q\n"
    )
    (work / "setup.cfg").write_text(setup)
    return work


def mutmut(work: Path, *args: str, timeout: float | None = None) -> str:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        ["nice", "-n", "10", str(MUTMUT), *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.stdout + done.stderr


def results(work: Path) -> dict[str, str]:
    """Every mutant's name and status (killed, survived, timeout, no tests...)."""
    out = mutmut(work, "results", "--all", "true")
    found: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            found[name] = status.strip()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=", ".join(MODULES))
    parser.add_argument("--children", type=int, default=1, help="mutants run in parallel")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per module")
    args = parser.parse_args()
    unknown = sorted(set(args.modules) - set(MODULES))
    if unknown:
        parser.error(f"unknown module {', '.join(unknown)}; one of {', '.join(MODULES)}")
    figures: dict[str, dict[str, object]] = {}
    for name in args.modules or list(MODULES):
        path, tests = MODULES[name]
        work = scratch(name, path, tests)
        started = time.monotonic()
        print(f"== {name}: mutating {path} against {' '.join(tests)}", flush=True)
        try:
            log = mutmut(work, "run", "--max-children", str(args.children), timeout=args.timeout)
        except subprocess.TimeoutExpired:
            log = f"stopped after {args.timeout:.0f} s; figures are for the mutants run"
        (work / "run.log").write_text(log)
        statuses = results(work)
        counts = Counter(statuses.values())
        ran = sum(n for s, n in counts.items() if s not in ("not checked", "skipped"))
        killed = sum(n for s, n in counts.items() if s in ("killed", "timeout", "segfault"))
        survivors = sorted(m for m, s in statuses.items() if s == "survived")
        rate = killed / ran if ran else 0.0
        figures[name] = {
            "mutants": len(statuses),
            "killed": killed,
            "ran": ran,
            "kill_rate": round(rate, 3),
            "statuses": dict(counts),
            "seconds": round(time.monotonic() - started),
        }
        print(
            f"{name}: {killed}/{ran} killed ({rate:.0%}), {dict(counts)}, "
            f"{time.monotonic() - started:.0f} s",
            flush=True,
        )
        if not statuses:
            print(log[-3000:])
        for mutant in survivors:
            print(f"  survived: {mutant}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
