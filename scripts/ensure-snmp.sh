#!/bin/sh
# The simulated signal controller's answers are cross-checked with net-snmp's own
# client (snmpget/snmpwalk), so that the simulator is not only checked by our driver.
# It only needs the binaries (Debian package "snmp"). Install them when missing (root),
# else say how (the cross-check test is then skipped, saying why).
set -eu
if command -v snmpget >/dev/null 2>&1 && command -v snmpwalk >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing net-snmp's tools (apt-get install snmp)..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq snmp >/dev/null
    exit 0
fi
echo "snmpget is missing (the SNMP cross-check test needs it): run 'sudo apt-get install snmp'" >&2
exit 0
