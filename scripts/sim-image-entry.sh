#!/bin/sh
# Entry point of the Dockerfile.sim image: "demo [SECONDS]" (default), "test [PYTEST ARGS]",
# or any command.
set -eu
case "${1:-demo}" in
    demo)
        exec armoire sim --duration "${2:-30}" --data "$HOME/sim"
        ;;
    test)
        shift
        # tests/deploy installs the agent as a system service: it needs root, python3-venv
        # and systemd, which this image deliberately leaves out.
        exec pytest -q -p no:cacheprovider --ignore=tests/deploy "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
