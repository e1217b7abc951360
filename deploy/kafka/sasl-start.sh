#!/usr/bin/env bash
# The broker of docker-compose.sasl.yml: on first start, formats its storage with the SCRAM-SHA-512 users; then
# runs the apache/kafka image's own start (/etc/kafka/docker/run), which writes server.properties from the KAFKA_*
# variables, finds the storage already formatted (as on any restart) and starts the broker.
#
# Why a script: the image formats the storage itself but passes nothing like `kafka-storage.sh format --add-scram`,
# and the broker's own identity (admin, on the inter-broker listener) must exist as a SCRAM user before it starts.
#
# Users: admin plus FRAUDPIPE_KAFKA_SASL_USERS (space-separated); user NAME's password in
# FRAUDPIPE_KAFKA_SASL_PASSWORD_<NAME> (8-128 of [A-Za-z0-9_.~-], as scripts/services.sh). No password appears
# on a command line: the format tool reads its --add-scram arguments from a file ("@file", one argument a line),
# deleted after. Users are made by the first format only: a password changed later does not reach the broker
# (change it as admin with kafka-configs.sh --alter, or start over with a fresh volume).
#
# Also writes admin's client settings to /tmp/fraudpipe/admin.properties (mode 600) for the health check.
set -euo pipefail

KAFKA_BIN=/opt/kafka/bin
IMAGE_START=/etc/kafka/docker/run
ADMIN_CONFIG=/tmp/fraudpipe/admin.properties

die() { printf 'sasl-start: %s\n' "$*" >&2; exit 1; }

password_of() {  # password_of NAME: FRAUDPIPE_KAFKA_SASL_PASSWORD_<NAME>, checked
  local var="FRAUDPIPE_KAFKA_SASL_PASSWORD_${1^^}"
  var="${var//-/_}"
  [[ "${!var:-}" =~ ^[[:alnum:]_.~-]{8,128}$ ]] || die "$var must be 8-128 of [A-Za-z0-9_.~-]"
  printf '%s' "${!var}"
}

server_properties() {  # the KAFKA_* variables as server properties, by the image's rule (see the image's docs)
  local name key
  while IFS= read -r name; do
    case "$name" in  # the image's start-script settings, not broker properties
      KAFKA_VERSION | KAFKA_OPTS | KAFKA_*_OPTS | KAFKA_HEAP_OPT | KAFKA_JMX_* | KAFKA_LOG4J_* | KAFKA_TOOLS_LOG4J_*)
        continue ;;
    esac
    key="${name#KAFKA_}"
    key="${key,,}"
    key="${key//_/.}"
    key="${key//.../-}"
    key="${key//../_}"
    printf '%s=%s\n' "$key" "${!name}"
  done < <(compgen -e KAFKA_)
}

read -ra users <<<"admin ${FRAUDPIPE_KAFKA_SASL_USERS:-}"
declare -A passwords=()
for user in "${users[@]}"; do
  [[ "$user" =~ ^[a-z][a-z0-9_-]{0,63}$ ]] || die "user name '$user' must match [a-z][a-z0-9_-]*"
  passwords[$user]="$(password_of "$user")"
done

log_dir="${KAFKA_LOG_DIRS:?KAFKA_LOG_DIRS must be set}"
log_dir="${log_dir%%,*}"
if [[ ! -f "$log_dir/meta.properties" ]]; then
  work="$(mktemp -d)"  # mode 700
  trap 'rm -rf "$work"' EXIT
  server_properties >"$work/server.properties"
  for user in "${!passwords[@]}"; do
    printf -- '--add-scram\nSCRAM-SHA-512=[name=%s,password=%s]\n' "$user" "${passwords[$user]}"
  done >"$work/scram.args"
  echo "sasl-start: formatting $log_dir with SCRAM-SHA-512 users: ${!passwords[*]}"
  "$KAFKA_BIN/kafka-storage.sh" format --cluster-id "${CLUSTER_ID:?CLUSTER_ID must be set}" \
    --config "$work/server.properties" "@$work/scram.args"
  rm -rf "$work"
  trap - EXIT
fi

mkdir -p "$(dirname "$ADMIN_CONFIG")"
(
  umask 077
  cat >"$ADMIN_CONFIG" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${passwords[admin]}";
EOF
)

exec "$IMAGE_START" "$@"
