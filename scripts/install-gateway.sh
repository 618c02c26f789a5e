#!/bin/sh
# Install (or uninstall) the Armoire agent on a Debian-based gateway as a systemd service.
#
#   sudo scripts/install-gateway.sh                 install or upgrade from this checkout
#   sudo scripts/install-gateway.sh --uninstall     remove the program, keep config and data
#   sudo scripts/install-gateway.sh --uninstall --purge   also remove config, data and user
#
# What goes where:
#   /opt/armoire/venv                      the agent in its own Python virtual environment
#   /opt/armoire/README.md                 the documentation the unit points to
#   /etc/systemd/system/armoire.service    the service (Type=notify, watchdog, sandboxed)
#   /usr/lib/sysusers.d/armoire.conf       the system user "armoire" (groups dialout, armoire)
#   /etc/udev/rules.d/60-armoire.rules     GPIO chips and watchdog for group armoire
#   /etc/armoire/agent.toml                the configuration: written once, NEVER overwritten
#   /etc/armoire/agent.toml.example        the commented example, refreshed on every run
#   /var/lib/armoire/                      state: outbox, gateway key (created once), trust store
#
# Running it again changes nothing unless this checkout changed. An existing
# configuration or key is never touched. DESTDIR=/some/root stages everything under
# that root instead (for packaging and the tests); it then starts and reloads nothing.
# Environment: PYTHON (default python3), DESTDIR, PIP_* (e.g. PIP_FIND_LINKS for an
# offline wheel folder).
set -eu

PREFIX=/opt/armoire
CONF_DIR=/etc/armoire
STATE_DIR=/var/lib/armoire
UNIT=/etc/systemd/system/armoire.service
SYSUSERS=/usr/lib/sysusers.d/armoire.conf
UDEV_RULES=/etc/udev/rules.d/60-armoire.rules
USER_NAME=armoire

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${DESTDIR:-}
PYTHON=${PYTHON:-python3}

say() { printf '%s\n' "install-gateway: $*"; }
die() { printf '%s\n' "install-gateway: $*" >&2; exit 2; }

uninstall=0
purge=0
for arg in "$@"; do
    case "$arg" in
        --uninstall) uninstall=1 ;;
        --purge) purge=1 ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $arg (see --help)" ;;
    esac
done
[ "$purge" = 1 ] && [ "$uninstall" = 0 ] && die "--purge goes with --uninstall"
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo), or set DESTDIR to stage the files under another root"
fi

live() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

# --- uninstall --------------------------------------------------------------------------
if [ "$uninstall" = 1 ]; then
    if live; then
        systemctl disable --now armoire.service 2>/dev/null || true
    fi
    rm -f "$ROOT$UNIT" "$ROOT$SYSUSERS" "$ROOT$UDEV_RULES"
    rm -rf "$ROOT$PREFIX"
    if [ "$purge" = 1 ]; then
        rm -rf "$ROOT$CONF_DIR" "$ROOT$STATE_DIR"
        if [ -z "$ROOT" ] && getent passwd "$USER_NAME" >/dev/null; then
            userdel "$USER_NAME" 2>/dev/null || true
            getent group "$USER_NAME" >/dev/null && groupdel "$USER_NAME" 2>/dev/null || true
        fi
        say "removed the agent, its configuration, its data and its user"
    else
        say "removed the agent; kept $CONF_DIR and $STATE_DIR (--purge removes them)"
    fi
    if live; then
        systemctl daemon-reload
    fi
    exit 0
fi

# --- install ----------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (apt-get install python3)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$PYTHON is older than 3.11"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null ||
    die "$PYTHON cannot make virtual environments (apt-get install python3-venv)"

# Files of ours: replaced only when their content changed (install -C keeps the mtime).
put() {  # put MODE SOURCE TARGET
    install -d -m 0755 "$(dirname "$ROOT$3")"
    install -C -m "$1" "$2" "$ROOT$3"
}
put 0644 "$SRC/deploy/armoire.service" "$UNIT"
put 0644 "$SRC/deploy/armoire.sysusers" "$SYSUSERS"
put 0644 "$SRC/deploy/60-armoire.rules" "$UDEV_RULES"

ids() {  # uid:gid of the user, read from the (staged) root's passwd file
    awk -F: -v u="$USER_NAME" '$1 == u { print $3 ":" $4 }' "$ROOT/etc/passwd" 2>/dev/null
}
in_dialout() {
    awk -F: -v u="$USER_NAME" '$1 == "dialout" { n = split($4, m, ","); for (i = 1; i <= n; i++)
        if (m[i] == u) found = 1 } END { exit !found }' "$ROOT/etc/group" 2>/dev/null
}
# The system user, the way Debian's own packages declare theirs; left alone once it exists
# (sysusers would still take its lock in /etc on every run).
if [ -z "$(ids)" ] || ! in_dialout; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        if [ -n "$ROOT" ]; then
            systemd-sysusers --root="$ROOT" armoire.conf
        else
            systemd-sysusers armoire.conf
        fi
    elif [ -z "$ROOT" ]; then
        getent passwd "$USER_NAME" >/dev/null ||
            useradd --system --home-dir "$STATE_DIR" --no-create-home \
                --shell /usr/sbin/nologin --user-group "$USER_NAME"
        usermod -a -G dialout "$USER_NAME"
    fi
fi
owner=$(ids)
[ -n "$owner" ] || die "user $USER_NAME was not created (no systemd-sysusers or useradd?)"

# The program: a venv of its own, rebuilt only when this checkout's sources changed.
stamp="$ROOT$PREFIX/.installed"
digest=$(cd "$SRC" && find agent drivers board setup.cfg pyproject.toml \
    \( -name '*.py' -o -name '*.toml' -o -name '*.cfg' \) -type f | LC_ALL=C sort |
    xargs sha256sum | sha256sum | cut -c1-64)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    say "installing the agent into $PREFIX/venv..."
    install -d -m 0755 "$ROOT$PREFIX"
    [ -x "$ROOT$PREFIX/venv/bin/python" ] || "$PYTHON" -m venv "$ROOT$PREFIX/venv"
    # A private copy of the sources, so the build never writes into the checkout.
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    (cd "$SRC" && tar -cf - agent drivers board setup.cfg pyproject.toml README.md) |
        tar -xf - -C "$build"
    "$ROOT$PREFIX/venv/bin/pip" install --quiet --disable-pip-version-check \
        --no-warn-script-location "$build"
    printf '%s\n' "$digest" >"$stamp"
else
    say "agent in $PREFIX/venv is up to date"
fi
put 0644 "$SRC/README.md" "$PREFIX/README.md"

# Configuration: the example is ours and refreshed; agent.toml is the city's, never touched.
# Group armoire may write the folder: `config apply` on the console swaps agent.toml
# (agent/config_apply.py: agent.toml.previous, .pending and .rolledback beside it).
install -d -m 0775 "$ROOT$CONF_DIR"
chown "0:${owner#*:}" "$ROOT$CONF_DIR"
put 0644 "$SRC/deploy/agent.toml.example" "$CONF_DIR/agent.toml.example"
if [ ! -e "$ROOT$CONF_DIR/agent.toml" ]; then
    install -m 0640 "$SRC/deploy/agent.toml.example" "$ROOT$CONF_DIR/agent.toml"
    chown "0:${owner#*:}" "$ROOT$CONF_DIR/agent.toml"
    say "wrote $CONF_DIR/agent.toml from the example: edit it (gateway id, site, broker)"
fi

# State: the gateway's identity is created once and kept for the gateway's life.
if [ ! -d "$ROOT$STATE_DIR" ]; then
    install -d -m 0700 "$ROOT$STATE_DIR"
    chown "$owner" "$ROOT$STATE_DIR"
fi
if [ ! -e "$ROOT$STATE_DIR/gateway.key" ]; then
    "$ROOT$PREFIX/venv/bin/armoire" keys init --data "$ROOT$STATE_DIR" >/dev/null
    chown "$owner" "$ROOT$STATE_DIR/gateway.key" "$ROOT$STATE_DIR/gateway.pub"
    say "created the gateway key pair in $STATE_DIR (armoire keys show to read it)"
fi

if live; then
    systemctl daemon-reload
    command -v udevadm >/dev/null 2>&1 && udevadm control --reload && udevadm trigger \
        --subsystem-match=gpio --subsystem-match=watchdog --subsystem-match=misc || true
    say "installed. Next: edit $CONF_DIR/agent.toml, copy trust-root.pub and trust.cose"
    say "into $STATE_DIR, check with: $PREFIX/venv/bin/armoire check --config $CONF_DIR/agent.toml"
    say "then start it: systemctl enable --now armoire"
else
    say "installed under ${ROOT:-/} (nothing started)"
fi
