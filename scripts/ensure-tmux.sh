#!/bin/sh
# The live-view test draws the simulator's view in a detached tmux pane of a known
# size (80x24) and reads it back; it only needs the binary. Install it when missing
# (root), else say how (the test is then skipped, saying why).
set -eu
if command -v tmux >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing tmux (apt-get)..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux >/dev/null
    exit 0
fi
echo "tmux is missing (the live-view test needs it): run 'sudo apt-get install tmux'" >&2
exit 0
