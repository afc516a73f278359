#!/bin/sh
# The image's entrypoint. `llamarig run` checks before anything starts and refuses with one
# line and exit status 2: a rig that does not validate, or an API beyond loopback (the image
# listens on 0.0.0.0) without a client key. Keys: -e LLAMARIG_CLIENT_KEYS=k1,k2 and
# -e LLAMARIG_OPERATOR_KEY=k, or a mounted file named by LLAMARIG_CLIENT_KEYS_FILE /
# LLAMARIG_OPERATOR_KEY_FILE (Docker secrets). Then supervisord replaces it as PID 1.
set -eu
exec llamarig --rig "${LLAMARIG_RIG:-runtime/rig.yaml}" run "$@"
