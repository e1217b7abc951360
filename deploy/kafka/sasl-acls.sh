#!/usr/bin/env bash
# docker-compose.sasl.yml's `acls` job: the WRITE grants `fraudpipe topics grant` cannot express (it grants what a
# worker's agents need), made as admin with kafka-acls.sh.
#
#   sasl-acls.sh PRINCIPAL=TOPIC[,TOPIC...] ...     e.g. User:replayer=transactions.v1,labels.v1
#
# WRITE implies DESCRIBE, and an idempotent producer needs nothing more (Kafka >= 3.0). Granting an ACL that exists
# changes nothing, so the job runs on every `up`. Broker: FRAUDPIPE_KAFKA_BOOTSTRAP (default kafka:9092); admin's
# password: FRAUDPIPE_KAFKA_SASL_PASSWORD_ADMIN, written only to a temporary file (mode 600), never an argument.
set -euo pipefail

die() { printf 'sasl-acls: %s\n' "$*" >&2; exit 1; }

[[ $# -gt 0 ]] || die "usage: sasl-acls.sh PRINCIPAL=TOPIC[,TOPIC...] ..."
password="${FRAUDPIPE_KAFKA_SASL_PASSWORD_ADMIN:-}"
[[ "$password" =~ ^[[:alnum:]_.~-]{8,128}$ ]] || die "FRAUDPIPE_KAFKA_SASL_PASSWORD_ADMIN must be 8-128 of [A-Za-z0-9_.~-]"

config="$(mktemp)"  # mode 600
trap 'rm -f "$config"' EXIT
cat >"$config" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$password";
EOF

for grant in "$@"; do
  principal="${grant%%=*}"
  [[ "$principal" =~ ^User:[a-z][a-z0-9_-]*$ && "$grant" == *=?* ]] || die "'$grant' is not PRINCIPAL=TOPIC[,TOPIC...]"
  IFS=, read -ra topics <<<"${grant#*=}"
  topic_args=()
  for topic in "${topics[@]}"; do topic_args+=(--topic "$topic"); done
  /opt/kafka/bin/kafka-acls.sh --bootstrap-server "${FRAUDPIPE_KAFKA_BOOTSTRAP:-kafka:9092}" --command-config "$config" \
    --add --allow-principal "$principal" --allow-host '*' --operation Write "${topic_args[@]}"
done
