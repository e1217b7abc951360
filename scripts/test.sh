#!/usr/bin/env bash
# The whole test suite from a fresh clone, in one command (`make test`; extra arguments go to pytest):
#   0. redis-server, Java and Maven (scripts/system-packages.sh installs what is missing, or says how);
#   1. a virtualenv in .venv with fraudpipe and its dev tools (re-installed when pyproject.toml or features/_replay.c change);
#   2. real Kafka and Redis from scripts/services.sh, on test ports (FRAUDPIPE_TEST_KAFKA_PORT, default 19092;
#      FRAUDPIPE_TEST_REDIS_PORT, default 16379) and in their own state folder (FRAUDPIPE_SERVICES_DIR, default
#      .services/test), so they never collide with services you run for the demo — unless FRAUDPIPE_TEST_KAFKA /
#      FRAUDPIPE_TEST_REDIS already name running ones. The Redis started here asks for a password: its default
#      user's login goes into FRAUDPIPE_TEST_REDIS / FRAUD_REDIS__URL (redis://:PASSWORD@host:port/db), so every
#      client and worker the tests build from that URL logs in; the password is never printed;
#   3. pytest; then the services this script started are stopped, and its exit status is pytest's.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"

# redis-server, Java and Maven, installed with the system's package manager when missing (CI: Chromium too)
bash scripts/system-packages.sh $([[ "${CI:-}" == true ]] && echo --browser)

if [[ ! -x .venv/bin/python ]]; then
  echo "test: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.fraudpipe-installed
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" || features/_replay.c -nt "$stamp" ]]; then
  echo "test: installing fraudpipe[dev] into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi

started=()
cleanup() {
  for service in "${started[@]}"; do scripts/services.sh stop "$service" || true; done
}
trap cleanup EXIT

if [[ -z "${FRAUDPIPE_TEST_REDIS:-}" ]]; then
  # The login travels in the URL. Login variables of the caller's shell (say, a sourced users/default.env) would
  # otherwise reach the Redis servers some tests start for themselves, without a password, and be refused there.
  unset FRAUD_REDIS__USERNAME FRAUD_REDIS__PASSWORD
fi
if [[ -z "${FRAUDPIPE_TEST_KAFKA:-}" || -z "${FRAUDPIPE_TEST_REDIS:-}" ]]; then
  export FRAUDPIPE_SERVICES_DIR="${FRAUDPIPE_SERVICES_DIR:-$ROOT/.services/test}"
  export FRAUD_KAFKA__BOOTSTRAP_SERVERS="${FRAUDPIPE_TEST_KAFKA:-127.0.0.1:${FRAUDPIPE_TEST_KAFKA_PORT:-19092}}"
  export FRAUD_REDIS__URL="${FRAUDPIPE_TEST_REDIS:-redis://127.0.0.1:${FRAUDPIPE_TEST_REDIS_PORT:-16379}/0}"
  for service in kafka redis; do
    var="FRAUDPIPE_TEST_${service^^}"
    [[ -n "${!var:-}" ]] && continue
    if ! scripts/services.sh status "$service" >/dev/null; then
      started+=("$service")
    fi
    scripts/services.sh start "$service"
  done
  if [[ -z "${FRAUDPIPE_TEST_REDIS:-}" ]]; then
    login="$FRAUDPIPE_SERVICES_DIR/redis/users/default.env"
    # A Redis started by an older services.sh (still running, no users/ folder) has no password: the URL stays as is.
    password="$(sed -n 's/^FRAUD_REDIS__PASSWORD=//p' "$login" 2>/dev/null || true)"
    if [[ -n "$password" ]]; then FRAUD_REDIS__URL="redis://:$password@${FRAUD_REDIS__URL#redis://}"; fi
    unset password
  fi
  export FRAUDPIPE_TEST_KAFKA="$FRAUD_KAFKA__BOOTSTRAP_SERVERS" FRAUDPIPE_TEST_REDIS="$FRAUD_REDIS__URL"
fi

set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
exit "$status"
