#!/bin/sh
# The PostgreSQL schemas of docker-compose.yml's Temporal, run by its temporal-schema one-shot
# (temporalio/admin-tools) before the server starts; the steps of Temporal's own compose samples.
# At each start, and safe to: `create` ignores a database that exists, `setup-schema -v 0.0` keeps
# a version above 0.0, and `update-schema` applies only the versions a newer server brings (read in
# Temporal's sql tool: sqlplugin/postgresql/admin.go, tools/common/schema/setuptask.go).
set -eu
step="start"  # what failed, said in one line (temporal-sql-tool's own error is above it)
trap 'rc=$?; [ "$rc" = 0 ] || echo "temporal-schema: failed (exit $rc) at: $step" >&2' EXIT
sql() { step="temporal-sql-tool $*"; temporal-sql-tool --plugin postgres12 --ep temporal-db -u temporal -p 5432 "$@"; }
for db in temporal visibility; do
  name=$([ "$db" = temporal ] && echo temporal || echo temporal_visibility)
  sql --db "$name" create
  sql --db "$name" setup-schema -v 0.0
  sql --db "$name" update-schema -d "/etc/temporal/schema/postgresql/v12/$db/versioned"
done
echo "temporal-schema: the temporal and temporal_visibility schemas are up to date"
