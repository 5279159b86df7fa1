# shellcheck shell=bash
# dmsguard lab environment: ports, URLs and paths shared by tests/lab/up, tests/lab/down,
# the Makefile and the tests. Source it. Every DMSGUARD_* input below can be overridden by
# setting it before sourcing; the derived values (URLs, hosts) are recomputed from them.

_dmsguard_lab_home="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Inputs (override from the environment).
export DMSGUARD_LAB_DIR="${DMSGUARD_LAB_DIR:-/tmp/dmsguard-lab}"
export DMSGUARD_PG_PORT="${DMSGUARD_PG_PORT:-55432}"
export DMSGUARD_MOTO_PORT="${DMSGUARD_MOTO_PORT:-55500}"
export DMSGUARD_PROMETHEUS_PORT="${DMSGUARD_PROMETHEUS_PORT:-59090}"
export DMSGUARD_ALERTMANAGER_PORT="${DMSGUARD_ALERTMANAGER_PORT:-59093}"
export DMSGUARD_LAB_VENV="${DMSGUARD_LAB_VENV:-$DMSGUARD_LAB_DIR/venv}"
export DMSGUARD_PG_PASSWORD="${DMSGUARD_PG_PASSWORD:-lab}"
export PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
export DMSGUARD_PROMETHEUS_BIN="${DMSGUARD_PROMETHEUS_BIN:-/usr/bin/prometheus}"
export DMSGUARD_PROMTOOL_BIN="${DMSGUARD_PROMTOOL_BIN:-/usr/bin/promtool}"
export DMSGUARD_ALERTMANAGER_BIN="${DMSGUARD_ALERTMANAGER_BIN:-/usr/bin/prometheus-alertmanager}"

# Derived values.
export DMSGUARD_PG_HOST=127.0.0.1
export DMSGUARD_PG_USER=postgres
# The lab password is part of the URLs so that every client (tokio-postgres, psql, reladiff)
# can use them as they are; it is a throwaway lab secret.
_dmsguard_pg_base="postgresql://${DMSGUARD_PG_USER}:${DMSGUARD_PG_PASSWORD}@${DMSGUARD_PG_HOST}:${DMSGUARD_PG_PORT}"
export DMSGUARD_PG_ADMIN_URL="${_dmsguard_pg_base}/postgres"
export DMSGUARD_SOURCE_URL="${_dmsguard_pg_base}/source"
export DMSGUARD_REDSHIFT_URL="${_dmsguard_pg_base}/redshift"
# TLS: the lab CA (tests/lab/up creates it) signs the PostgreSQL server's certificate.
export DMSGUARD_LAB_TLS_DIR="${DMSGUARD_LAB_DIR}/tls"
export DMSGUARD_LAB_CA="${DMSGUARD_LAB_TLS_DIR}/ca.crt"
export DMSGUARD_MOTO_URL="http://127.0.0.1:${DMSGUARD_MOTO_PORT}"
export DMSGUARD_PROMETHEUS_URL="http://127.0.0.1:${DMSGUARD_PROMETHEUS_PORT}"
export DMSGUARD_ALERTMANAGER_URL="http://127.0.0.1:${DMSGUARD_ALERTMANAGER_PORT}"
export DMSGUARD_MOTO_LAUNCHER="${_dmsguard_lab_home}/moto_launcher.py"
export DMSGUARD_MOTO_PYTHON="${DMSGUARD_LAB_VENV}/bin/python"
export DMSGUARD_RELADIFF="${DMSGUARD_LAB_VENV}/bin/reladiff"

# Fake AWS credentials for moto; never overrides real settings the caller has.
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-$AWS_REGION}"

unset _dmsguard_lab_home _dmsguard_pg_base
