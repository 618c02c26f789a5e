#!/bin/sh
# Build (and optionally run) the Dockerfile.sim image: simulator, broker, agent, tests.
#
#   scripts/build-sim-image.sh                 build localhost/armoire-sim
#   scripts/build-sim-image.sh --run           ...then run the demo (30 s) and the tests in it
#   BASE=docker.io/library/debian:bookworm-slim scripts/build-sim-image.sh
#                                               use a registry's base image where one is reachable
#
# Without BASE, the base image is made here from Debian's packages (debootstrap of
# bookworm, imported as localhost/debian:bookworm), since no public container registry is
# reachable from our machines. Needs root and the Debian packages podman, runc and
# debootstrap (installed with apt-get when missing). ENGINE=docker uses docker instead of
# podman (with a registry's BASE).
#
# podman runs here with the runc runtime and cgroupfs (crun fails on this kind of host's
# cgroups and rlimits), host networking for the build, and bounded rlimits.
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-localhost/armoire-sim}
ENGINE=${ENGINE:-podman}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
run=0
for arg in "$@"; do
    case "$arg" in
        --run) run=1 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-sim-image: unknown option $arg" >&2; exit 2 ;;
    esac
done

say() { printf '%s\n' "build-sim-image: $*" >&2; }

need() {  # need COMMAND DEBIAN-PACKAGE...
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        shift
        say "installing $* (apt-get)..."
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        say "$1 is missing: apt-get install $*"
        exit 2
    fi
}

if [ "$ENGINE" = podman ]; then
    need podman podman runc
    set -- podman --runtime runc --cgroup-manager=cgroupfs
else
    need "$ENGINE" "$ENGINE"
    set -- "$ENGINE"
fi
limits="--ulimit nofile=1024:1024 --ulimit nproc=1024:1024"

if [ -z "${BASE:-}" ]; then
    BASE=localhost/debian:bookworm
    if ! "$@" image exists "$BASE" 2>/dev/null; then
        need debootstrap debootstrap
        root=$(mktemp -d)
        say "making $BASE with debootstrap (minbase, bookworm, $MIRROR)..."
        debootstrap --variant=minbase bookworm "$root" "$MIRROR" >/dev/null
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar -C "$root" -c . | "$@" import - "$BASE" >/dev/null
        rm -rf "$root"
    fi
fi

# The context: the repository's tracked files (as a clean clone has them) under armoire/,
# and shared/ (the third-party test vectors) beside it, as CI lays them out.
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/armoire" "$ctx/shared"
(cd "$SRC" && git ls-files -z | tar --null --no-recursion -T - -cf -) | tar -xf - -C "$ctx/armoire"
if [ -d "$SRC/../shared/vectors" ]; then
    cp -r "$SRC/../shared/vectors" "$ctx/shared/vectors"
else
    say "no ../shared/vectors beside the checkout: the COSE vector tests will fail in the image"
fi
secret=""
cert=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
[ -f "$cert" ] && secret="--secret id=pip_cert,src=$cert"

start=$(date +%s)
say "building $IMAGE from $BASE..."
# shellcheck disable=SC2086 # $limits and $secret are lists of options
"$@" build --network host $limits $secret --build-arg "BASE=$BASE" \
    -f "$ctx/armoire/Dockerfile.sim" -t "$IMAGE" "$ctx"
say "built $IMAGE in $(($(date +%s) - start)) s; size: $("$@" image inspect \
    --format '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')"

if [ "$run" = 1 ]; then
    say "demo (30 s):"
    # shellcheck disable=SC2086
    "$@" run --rm --network host $limits "$IMAGE"
    say "tests:"
    # shellcheck disable=SC2086
    "$@" run --rm --network host $limits "$IMAGE" test
fi
