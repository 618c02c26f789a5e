#!/bin/sh
# The tests and the simulator start their own mosquitto on a free loopback port;
# they only need the binary. Install it when missing (root), else say how.
set -eu
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing mosquitto (apt-get)..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
    exit 0
fi
echo "mosquitto is missing: run 'sudo apt-get install mosquitto', then again" >&2
exit 2
