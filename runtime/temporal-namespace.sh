#!/bin/sh
# The namespace of docker-compose.yml's Temporal, made by its temporal-namespace one-shot
# (temporalio/admin-tools) once the server answers: `default`, kept 30 days, as the rig's
# work.cluster names it. The address is resolved to an IP first, as Temporal's own compose
# samples do: the CLI's gRPC resolver also asks for an SRV record, which Docker's DNS forwards
# out, and on a host with no reachable DNS server that lookup outlasts the CLI's deadline.
set -eu
step="start"  # what failed, said in one line (the temporal CLI's own error is above it)
trap 'rc=$?; [ "$rc" = 0 ] || echo "temporal-namespace: failed (exit $rc) at: $step" >&2' EXIT
host=${TEMPORAL_ADDRESS%:*} port=${TEMPORAL_ADDRESS##*:}
until ip=$(getent hosts "$host" | awk '{print $1; exit}') && [ -n "$ip" ] \
    && temporal operator cluster health --address "$ip:$port"; do
  sleep 2
done
step="describe or create the namespace default at $ip:$port"
temporal operator namespace describe -n default --address "$ip:$port" \
  || temporal operator namespace create -n default --retention 720h --address "$ip:$port"
