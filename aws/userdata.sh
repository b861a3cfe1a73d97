#!/bin/bash
# medimg GPU host bootstrap, run once as root by cloud-init on the first boot of the instance.
# It checks the NVIDIA driver and container toolkit, fetches the project, builds the training
# image, starts the MLflow tracking server (artifacts in S3) as a systemd service, and turns on
# the idle auto-stop timer. `python -m aws up` renders it: the settings block below is filled in.
# Progress: /var/log/medimg-bootstrap.log; exit code: /var/lib/medimg/bootstrap-exit-code.
set -euo pipefail

# @@SETTINGS@@

PROJECT_DIR=/opt/medimg
LOGIN_USER=ubuntu
STATE_DIR=/var/lib/medimg
CONFIG_DIR=/etc/medimg
SERVER_DATA_DIR="$STATE_DIR/mlflow"
VENV_DIR="$PROJECT_DIR/.venv"

mkdir -p "$STATE_DIR" "$CONFIG_DIR"
exec > >(tee -a /var/log/medimg-bootstrap.log) 2>&1

log() {
  echo "[medimg $(date -u +%Y-%m-%dT%H:%M:%SZ)] $*"
}

fail() {
  log "ERROR: $*"
  exit 1
}

# The idle timer is written first and enabled on every exit path, so a bootstrap that
# fails half-way still stops the instance instead of billing GPU hours until someone looks.
install_idle_stop() {
  cat >/usr/local/sbin/medimg-idle-stop <<'MEDIMG_IDLE_STOP'
# @@IDLE_STOP_SCRIPT@@
MEDIMG_IDLE_STOP
  chmod 0755 /usr/local/sbin/medimg-idle-stop
  cat >"$CONFIG_DIR/idle-stop.env" <<EOF
IDLE_MINUTES=$IDLE_MINUTES
EOF
  cat >/etc/systemd/system/medimg-idle-stop.service <<EOF
[Unit]
Description=Stop this instance when GPU, CPU and SSH have been idle for $IDLE_MINUTES minutes

[Service]
Type=oneshot
EnvironmentFile=$CONFIG_DIR/idle-stop.env
ExecStart=/usr/local/sbin/medimg-idle-stop
EOF
  cat >/etc/systemd/system/medimg-idle-stop.timer <<'EOF'
[Unit]
Description=Check every minute whether this instance is idle

[Timer]
OnBootSec=10min
OnUnitActiveSec=1min

[Install]
WantedBy=timers.target
EOF
  systemctl daemon-reload
}

on_exit() {
  local exit_code=$?
  if [ "$IDLE_MINUTES" -gt 0 ]; then
    systemctl enable --now medimg-idle-stop.timer || log "could not enable the idle auto-stop timer"
  fi
  echo "$exit_code" >"$STATE_DIR/bootstrap-exit-code"
  if [ "$exit_code" -eq 0 ]; then
    log "bootstrap finished"
  else
    log "bootstrap FAILED with exit code $exit_code; read this log, fix, and rerun: sudo bash /var/lib/cloud/instance/user-data.txt"
  fi
}

check_gpu() {
  log "checking the NVIDIA driver and container toolkit"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader ||
    fail "nvidia-smi failed: the NVIDIA driver is not working; launch a Deep Learning AMI on a GPU instance type"
  command -v nvidia-ctk >/dev/null || fail "nvidia-ctk is missing: install the NVIDIA container toolkit"
  nvidia-ctk --version
  if ! docker info --format '{{json .Runtimes}}' | grep -q nvidia; then
    log "registering the NVIDIA runtime with Docker"
    nvidia-ctk runtime configure --runtime=docker
    systemctl restart docker
  fi
}

write_environment() {
  # Login shells (ssh, tmux) get the tracking URI and the cost settings the trainer reads.
  {
    echo "export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT"
    echo "export MEDIMG_STACK_ID=$STACK_ID"
    echo "export MEDIMG_BUCKET=$BUCKET"
    echo "export MEDIMG_ARTIFACTS_DESTINATION=$ARTIFACTS_DESTINATION"
    # Both or neither: a price always comes with the type, so the trainer never meets an unpriced type.
    if [ -n "$HOURLY_PRICE_USD" ]; then
      echo "export MEDIMG_INSTANCE_TYPE=$INSTANCE_TYPE"
      echo "export MEDIMG_HOURLY_PRICE_USD=$HOURLY_PRICE_USD"
    fi
    echo "export AWS_DEFAULT_REGION=$REGION"
  } >/etc/profile.d/medimg.sh
  chmod 0644 /etc/profile.d/medimg.sh
}

fetch_project() {
  log "fetching $GIT_URL at $GIT_REF into $PROJECT_DIR"
  install -d -o "$LOGIN_USER" -g "$LOGIN_USER" "$PROJECT_DIR"
  if [ ! -d "$PROJECT_DIR/.git" ]; then
    sudo -u "$LOGIN_USER" git clone --quiet "$GIT_URL" "$PROJECT_DIR"
  fi
  sudo -u "$LOGIN_USER" git -C "$PROJECT_DIR" checkout --quiet "$GIT_REF"
  sudo -u "$LOGIN_USER" git -C "$PROJECT_DIR" log -1 --format='commit %H %s'
}

build_image() {
  # `make image` is the project's one way to build docker/Dockerfile, tagged as docker/MLproject names it.
  local image
  image=$(sed -n 's/^ *image: *//p' "$PROJECT_DIR/docker/MLproject")
  log "building $image with make image (docker build -f docker/Dockerfile)"
  usermod -aG docker "$LOGIN_USER"
  sudo -u "$LOGIN_USER" -g docker make -C "$PROJECT_DIR" image
  # Running nvidia-smi inside the image proves the toolkit hands the GPU to containers.
  docker run --rm --gpus all --entrypoint nvidia-smi "$image" -L ||
    fail "the training image cannot see the GPU: check the NVIDIA container toolkit (nvidia-ctk) setup"
  echo "export MEDIMG_IMAGE=$image" >>/etc/profile.d/medimg.sh
}

install_project_environment() {
  log "installing Python 3.11, PostgreSQL and the project's .venv (make setup)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q software-properties-common make
  if ! apt-cache show python3.11-venv >/dev/null 2>&1; then
    add-apt-repository -y ppa:deadsnakes/ppa
    apt-get update -q
  fi
  apt-get install -y -q python3.11 python3.11-venv postgresql
  # The tracking database belongs to the launcher, not to the distribution's default cluster.
  systemctl disable --now postgresql || true
  # The same pinned requirements as everywhere else; the venv also runs `mlflow run docker`.
  sudo -u "$LOGIN_USER" make -C "$PROJECT_DIR" setup PYTHON=python3.11
}

write_database_environment() {
  # With RDS the tracking store is the managed database. The password stays in Secrets
  # Manager and in a root-only file; it never appears in user data or on a command line.
  : >"$CONFIG_DIR/mlflow-database.env"
  chmod 0600 "$CONFIG_DIR/mlflow-database.env"
  if [ -z "$DB_SECRET_ID" ]; then
    return
  fi
  log "waiting for the database endpoint in secret $DB_SECRET_ID"
  local attempt uri=""
  for attempt in $(seq 1 90); do
    # boto3 from the project's venv reads the secret with the instance role (no AWS CLI needed).
    uri=$("$VENV_DIR/bin/python" - "$REGION" "$DB_SECRET_ID" <<'PY'
import json
import sys
import urllib.parse

import boto3

region, secret_id = sys.argv[1], sys.argv[2]
secret = json.loads(boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=secret_id)["SecretString"])
if secret.get("host"):
    quote = urllib.parse.quote
    print(
        f"postgresql+psycopg2://{quote(secret['username'], safe='')}:{quote(secret['password'], safe='')}"
        f"@{secret['host']}:{secret['port']}/{secret['dbname']}"
    )
PY
    ) || true
    if [ -n "$uri" ]; then
      break
    fi
    log "database not ready yet (attempt $attempt of 90)"
    sleep 20
  done
  [ -n "$uri" ] || fail "secret $DB_SECRET_ID never received the database host; is the RDS instance available?"
  echo "MLFLOW_BACKEND_STORE_URI=$uri" >"$CONFIG_DIR/mlflow-database.env"
}

start_tracking_server() {
  log "starting the MLflow tracking server on 127.0.0.1:$MLFLOW_PORT with artifacts in $ARTIFACTS_DESTINATION"
  install -d -o "$LOGIN_USER" -g "$LOGIN_USER" "$SERVER_DATA_DIR"
  local service_lines
  if [ -z "$DB_SECRET_ID" ]; then
    # The project's launcher runs a private PostgreSQL in SERVER_DATA_DIR and `mlflow server`, both
    # detached; they stay in this unit's cgroup, and stopping the unit stops them through the launcher.
    service_lines="Type=oneshot
RemainAfterExit=yes
TimeoutStartSec=600
ExecStart=$VENV_DIR/bin/python -m mlflow_server up --data-dir $SERVER_DATA_DIR --port $MLFLOW_PORT --artifacts-destination $ARTIFACTS_DESTINATION
ExecStop=$VENV_DIR/bin/python -m mlflow_server down --data-dir $SERVER_DATA_DIR"
  else
    # With RDS there is no local database: `mlflow server` reads MLFLOW_BACKEND_STORE_URI from the root-only file.
    service_lines="Type=simple
Environment=MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
ExecStart=$VENV_DIR/bin/mlflow server --host 127.0.0.1 --port $MLFLOW_PORT --workers 2 --serve-artifacts --artifacts-destination $ARTIFACTS_DESTINATION
Restart=on-failure
RestartSec=10"
  fi
  cat >/etc/systemd/system/medimg-mlflow.service <<EOF
[Unit]
Description=medimg MLflow tracking server (artifacts in $ARTIFACTS_DESTINATION)
After=network-online.target
Wants=network-online.target

[Service]
User=$LOGIN_USER
WorkingDirectory=$PROJECT_DIR
Environment=AWS_DEFAULT_REGION=$REGION
EnvironmentFile=$CONFIG_DIR/mlflow-database.env
$service_lines

[Install]
WantedBy=multi-user.target
EOF
  systemctl daemon-reload
  systemctl enable --now medimg-mlflow.service
  local attempt
  for attempt in $(seq 1 60); do
    if curl -fsS "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null; then
      log "tracking server is up (check $attempt)"
      return
    fi
    sleep 5
  done
  fail "the tracking server did not answer on port $MLFLOW_PORT; see journalctl -u medimg-mlflow"
}

trap on_exit EXIT
log "bootstrap of stack $STACK_ID on $INSTANCE_TYPE in $REGION"
install_idle_stop
write_environment
check_gpu
fetch_project
install_project_environment
write_database_environment
start_tracking_server
build_image
