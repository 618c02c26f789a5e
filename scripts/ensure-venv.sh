#!/bin/sh
# Create the virtualenv; on Debian, venv support is a separate package (python3-venv).
set -eu
python="$1"
venv="$2"
[ -x "$venv/bin/python" ] && exit 0
if "$python" -m venv "$venv" 2>/dev/null; then
    exit 0
fi
rm -rf "$venv"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing python3-venv (apt-get)..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    "$python" -m venv "$venv"
    exit 0
fi
echo "cannot create a virtualenv with $python: run 'sudo apt-get install python3-venv', then again" >&2
exit 2
