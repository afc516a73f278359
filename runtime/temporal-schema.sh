#!/bin/sh
# The PostgreSQL schemas of docker-compose.yml's Temporal, run by its temporal-schema one-shot
# (temporalio/admin-tools) before the server starts; the steps of Temporal's own compose samples.
# At each start, as temporalio/auto-setup ran the same steps (under set -e) at each of its starts:
# on a set-up database they change nothing, and update-schema applies the versions a newer server
# brings.
set -eu
sql() { temporal-sql-tool --plugin postgres12 --ep temporal-db -u temporal -p 5432 "$@"; }
for db in temporal visibility; do
  name=$([ "$db" = temporal ] && echo temporal || echo temporal_visibility)
  sql --db "$name" create
  sql --db "$name" setup-schema -v 0.0
  sql --db "$name" update-schema -d "/etc/temporal/schema/postgresql/v12/$db/versioned"
done
echo "temporal-schema: the temporal and temporal_visibility schemas are up to date"
