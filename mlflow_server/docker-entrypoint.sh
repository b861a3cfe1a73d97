#!/bin/sh
# Starts `mlflow server` in the container: reads the database password from a docker secret into a private
# pgpass file, passes the password-free backend URI through the environment, and adds the basic-auth app
# when MLFLOW_AUTH=true. Extra arguments are appended to `mlflow server`.
set -eu

: "${POSTGRES_HOST:=postgres}"
: "${POSTGRES_PORT:=5432}"
: "${POSTGRES_USER:=mlflow}"
: "${POSTGRES_DB:=mlflow}"
: "${POSTGRES_PASSWORD_FILE:=/run/secrets/postgres_password}"
: "${MLFLOW_ARTIFACTS_DESTINATION:=/mlartifacts}"
: "${MLFLOW_WORKERS:=4}"
: "${MLFLOW_AUTH:=false}"
export POSTGRES_HOST POSTGRES_PORT POSTGRES_USER POSTGRES_DB

if [ ! -r "$POSTGRES_PASSWORD_FILE" ]; then
    echo "error: the database password secret $POSTGRES_PASSWORD_FILE is missing; run \`make server-up\` (it creates mlflow_server/secrets/)" >&2
    exit 2
fi

umask 077
private_dir="$(mktemp -d)"
# pgpass needs ':' and '\' escaped; the password never appears in an argument or an environment variable.
escaped_password="$(sed -e 's/[\\:]/\\&/g' "$POSTGRES_PASSWORD_FILE" | head -n 1)"
printf '%s:%s:*:%s:%s\n' "$POSTGRES_HOST" "$POSTGRES_PORT" "$POSTGRES_USER" "$escaped_password" > "$private_dir/pgpass"
unset escaped_password
export PGPASSFILE="$private_dir/pgpass"
export MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://${POSTGRES_USER}@${POSTGRES_HOST}:${POSTGRES_PORT}/${POSTGRES_DB}"
# The GenAI job runner is an extra long-lived process that model training does not use.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

set -- mlflow server \
    --host 0.0.0.0 \
    --port 5000 \
    --workers "$MLFLOW_WORKERS" \
    --serve-artifacts \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
    "$@"

if [ "$MLFLOW_AUTH" = "true" ]; then
    : "${MLFLOW_ADMIN_PASSWORD_FILE:=/run/secrets/mlflow_admin_password}"
    : "${MLFLOW_FLASK_SECRET_KEY_FILE:=/run/secrets/mlflow_flask_secret_key}"
    export MLFLOW_ADMIN_PASSWORD_FILE
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(head -n 1 "$MLFLOW_FLASK_SECRET_KEY_FILE")"
    export MLFLOW_FLASK_SERVER_SECRET_KEY
    export MLFLOW_AUTH_CONFIG_PATH="$private_dir/basic_auth.ini"
    # The auth app keeps users in its own database next to the tracking one; create it once, then write
    # basic_auth.ini (0600) with the admin password from its secret.
    python - "$private_dir/basic_auth.ini" <<'PYTHON'
import configparser
import os
import sys

import psycopg2

host, port, user = os.environ["POSTGRES_HOST"], os.environ["POSTGRES_PORT"], os.environ["POSTGRES_USER"]
auth_database = os.environ.get("MLFLOW_AUTH_DB", "mlflow_auth")
connection = psycopg2.connect(host=host, port=port, user=user, dbname=os.environ["POSTGRES_DB"])
connection.autocommit = True
with connection.cursor() as cursor:
    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (auth_database,))
    if cursor.fetchone() is None:
        cursor.execute(f'CREATE DATABASE "{auth_database}"')
connection.close()

with open(os.environ["MLFLOW_ADMIN_PASSWORD_FILE"]) as handle:
    # mlflow reads basic_auth.ini with %-interpolation, so a literal % is doubled.
    admin_password = handle.readline().strip().replace("%", "%%")
config = configparser.ConfigParser(interpolation=None)
config["mlflow"] = {
    "default_permission": os.environ.get("MLFLOW_AUTH_DEFAULT_PERMISSION", "READ"),
    "database_uri": f"postgresql+psycopg2://{user}@{host}:{port}/{auth_database}",
    "admin_username": os.environ.get("MLFLOW_ADMIN_USERNAME", "admin"),
    "admin_password": admin_password,
    "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
}
with open(sys.argv[1], "w") as handle:
    config.write(handle)
PYTHON
    set -- "$@" --app-name basic-auth
fi

exec "$@"
