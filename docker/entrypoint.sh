#!/bin/sh
# SageMaker starts a training container as `docker run IMAGE train` and an endpoint as `docker run IMAGE serve`
# (spec §4). Map both onto openic; anything else runs as given (`docker run IMAGE openic --help`, `... bash`).
# exec, so openic is PID 1 and gets SageMaker's SIGTERM itself.
set -e

ML_ROOT="${OPENIC_ML_ROOT:-/opt/ml}"  # moves /opt/ml, as `openic serve` reads it too; SageMaker never sets it

if [ "$#" -eq 0 ]; then
    echo "usage: docker run IMAGE train|serve [openic options] | COMMAND [ARGS...]" >&2
    exit 2
fi
echo "Docker entrypoint called with argument(s): $*" >&2

case "$1" in
    train)
        shift
        exec openic train --sagemaker --ml-root "$ML_ROOT" "$@"
        ;;
    serve)
        shift
        # all interfaces: SageMaker reaches the container from outside it, on port 8080
        exec openic serve --host 0.0.0.0 --port 8080 "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
