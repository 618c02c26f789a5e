#!/usr/bin/env python3
"""Fetch the micropython-lib packages the I/O module firmware uses into board/iomodule/lib.

pip cannot install the registry's ``micropython-*`` packages (their source archives
have no setup.py), so this script asks PyPI's JSON API (``/pypi/NAME/json``) for
each pinned version's source archive, checks its SHA-256 against the pin below, and
unpacks its ``.py`` files into the lib folder. The folder is gitignored: nothing
downloaded is committed, and the firmware never fetches anything at run time
(``MICROPYPATH=.frozen:lib``). Run by ``make test``/``make iomodule-lib``; a second run
with the same pins does nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path
from typing import Final

# name -> (version, sha256 of the sdist). Bump both together, from the JSON API's digests.
PINS: Final = {
    "micropython-logging": (
        "0.5.2",
        "4fe714775fa6cafc2466bac7fe28485c13610470d3ea2bddac956bcd89b4453d",
    ),
    "micropython-unittest": (
        "0.4",
        "83b4a65c44b2f6382bc3dd8fbbe002b5679dbfc3744b99eaa59802e6fd14cf67",
    ),
}
INDEX: Final = "https://pypi.org/pypi"
LIB: Final = Path(__file__).resolve().parent.parent / "board" / "iomodule" / "lib"
STAMP: Final = LIB / ".pins.json"
MAX_ARCHIVE: Final = 4 << 20  # archives are a few KiB, the JSON ~100 KiB; refuse the absurd


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (https, pinned)
        data: bytes = response.read(MAX_ARCHIVE + 1)
    if len(data) > MAX_ARCHIVE:
        raise SystemExit(f"{url}: larger than {MAX_ARCHIVE} bytes")
    return data


def sdist_url(name: str, version: str) -> tuple[str, str]:
    meta = json.loads(fetch(f"{INDEX}/{name}/json"))
    for entry in meta["releases"].get(version, []):
        if entry["packagetype"] == "sdist":
            return entry["url"], entry["digests"]["sha256"]
    raise SystemExit(f"{name} {version}: no source archive on the index")


def install(name: str, version: str, sha256: str) -> list[str]:
    url, listed = sdist_url(name, version)
    if listed != sha256:
        raise SystemExit(f"{name} {version}: the index lists sha256 {listed}, pinned {sha256}")
    data = fetch(url)
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise SystemExit(f"{name} {version}: downloaded sha256 {got}, pinned {sha256}")
    written = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member in archive.getmembers():
            parts = Path(member.name).parts
            # <name>-<version>/<module>.py or <name>-<version>/<package>/...py; no setup.py
            if not member.isfile() or not member.name.endswith(".py") or len(parts) < 2:
                continue
            relative = Path(*parts[1:])
            if relative.name in ("setup.py", "sdist_upip.py") or ".." in relative.parts:
                continue
            target = LIB / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())
            written.append(str(relative))
    return written


def main() -> int:
    if STAMP.is_file() and json.loads(STAMP.read_text()) == PINS:
        return 0
    LIB.mkdir(parents=True, exist_ok=True)
    for name, (version, sha256) in PINS.items():
        files = install(name, version, sha256)
        print(f"{name} {version}: {', '.join(files)}", file=sys.stderr)
    STAMP.write_text(json.dumps(PINS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
