#!/bin/sh
# The image's entrypoint: `llamarig run --preflight`. Before anything starts it refuses, with one
# line on stderr and exit status 2: a rig that does not validate; an API beyond loopback (the
# image listens on 0.0.0.0) without a client key; a run folder this user cannot write; an empty
# or missing models folder; a required model file the verifier refuses. Then it renders the rig
# into the run folder and supervisord replaces it as PID 1.
# Keys: -e LLAMARIG_CLIENT_KEYS=k1,k2 and -e LLAMARIG_OPERATOR_KEY=k, or a mounted file named by
# LLAMARIG_CLIENT_KEYS_FILE / LLAMARIG_OPERATOR_KEY_FILE (Docker secrets).
set -eu
exec llamarig --rig "${LLAMARIG_RIG:-runtime/rig.yaml}" run --preflight "$@"
