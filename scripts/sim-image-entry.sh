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
        exec pytest -q -p no:cacheprovider "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
