#!/usr/bin/env bash
# Local real services for machines without Docker: Apache Kafka (single-node KRaft, from its Maven Central jars)
# and Redis (Debian's redis-server), both on loopback.
#
#   scripts/services.sh start|stop|status|restart [kafka|redis|all] [--sasl]
#
# Ports come from the same variables as fraudpipe's settings (environment first, then ./.env):
#   FRAUD_KAFKA__BOOTSTRAP_SERVERS  (default 127.0.0.1:9092; the KRaft controller listens on port+1)
#   FRAUD_REDIS__URL                (default redis://127.0.0.1:6379/0)
# State (jars, data, logs, PID files) lives under FRAUDPIPE_SERVICES_DIR (default ./.services, git-ignored), so
# two copies with different ports and folders run side by side. `start` is idempotent; `stop` signals only the
# PIDs recorded in its own PID files.
#
# --sasl (or FRAUDPIPE_KAFKA_SASL=1) starts the broker with SASL/SCRAM-SHA-512 and ACLs instead of PLAINTEXT; a
# state folder formatted that way always starts that way (see "Kafka with SASL/SCRAM and ACLs" below).
#
# Redis always asks for a password: the default user's (everything) and the `worker` ACL user's (its key prefix and
# the commands a worker sends), each in $STATE_DIR/redis/users/<name>.env (mode 600) for clients to load:
# `set -a; . .services/redis/users/default.env; set +a` (see "Redis with passwords and the worker's ACL user").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${FRAUDPIPE_SERVICES_DIR:-$ROOT/.services}"
# shellcheck source=scripts/versions.env
source "$ROOT/scripts/versions.env"

say() { printf '%s\n' "$*"; }
die() { printf 'services: %s\n' "$*" >&2; exit 1; }

setting() {  # setting NAME DEFAULT: environment, then ./.env, then DEFAULT
  local name="$1" default="$2" value=""
  if [[ -n "${!name:-}" ]]; then value="${!name}"
  elif [[ -f "$ROOT/.env" ]]; then value="$(sed -n "s/^${name}=//p" "$ROOT/.env" | tail -n1)"
  fi
  printf '%s' "${value:-$default}"
}

BOOTSTRAP="$(setting FRAUD_KAFKA__BOOTSTRAP_SERVERS 127.0.0.1:9092)"
BOOTSTRAP="${BOOTSTRAP%%,*}"
KAFKA_HOST="${BOOTSTRAP%:*}"
KAFKA_PORT="${BOOTSTRAP##*:}"
CONTROLLER_PORT=$((KAFKA_PORT + 1))
REDIS_URL="$(setting FRAUD_REDIS__URL redis://127.0.0.1:6379/0)"
REDIS_HOSTPORT="${REDIS_URL#*://}"; REDIS_HOSTPORT="${REDIS_HOSTPORT%%/*}"
REDIS_USERINFO=""  # user:password of a login in the URL
if [[ "$REDIS_HOSTPORT" == *@* ]]; then REDIS_USERINFO="${REDIS_HOSTPORT%@*}"; REDIS_HOSTPORT="${REDIS_HOSTPORT##*@}"; fi
REDIS_HOST="${REDIS_HOSTPORT%:*}"
REDIS_PORT="${REDIS_HOSTPORT##*:}"
[[ "$REDIS_PORT" == "$REDIS_HOSTPORT" ]] && REDIS_PORT=6379

KAFKA_DIR="$STATE_DIR/kafka"
REDIS_DIR="$STATE_DIR/redis"
SASL_DIR="$KAFKA_DIR/sasl"
REDIS_USERS="$REDIS_DIR/users"
case "${FRAUDPIPE_KAFKA_SASL:-0}" in 1 | true | yes) KAFKA_SASL=1 ;; *) KAFKA_SASL=0 ;; esac
# The broker's jars are shared by every state folder of this checkout (resolved once per version).
KAFKA_LIB="${FRAUDPIPE_KAFKA_LIB:-$ROOT/.services/kafka-lib-$KAFKA_VERSION}"

for host in "$KAFKA_HOST" "$REDIS_HOST"; do
  [[ "$host" == 127.0.0.1 || "$host" == localhost ]] || die "local services bind to loopback only; got host '$host'"
done

# --- process helpers ---------------------------------------------------------------------------------------

pid_of() {  # pid_of NAME: the recorded PID if that process is alive and is ours
  local file="$STATE_DIR/$1.pid" pid
  [[ -f "$file" ]] || return 1
  pid="$(cat "$file")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  case "$1" in
    # The broker carries -Dfraudpipe.state=<dir> on its command line.
    kafka) tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-Dfraudpipe.state=$STATE_DIR " || return 1 ;;
    # redis-server rewrites its process title, but works inside its --dir.
    redis) [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$REDIS_DIR" ]] || return 1 ;;
  esac
  printf '%s' "$pid"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop_pid() {  # stop_pid NAME SECONDS: TERM, wait, then KILL — only the PID from our own file
  local name="$1" grace="$2" pid
  if ! pid="$(pid_of "$name")"; then
    rm -f "$STATE_DIR/$name.pid"; say "$name: not running"; return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq $((grace * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name: still running after ${grace}s, killing pid $pid"; kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$STATE_DIR/$name.pid"
  say "$name: stopped (pid $pid)"
}

# --- Kafka -------------------------------------------------------------------------------------------------

kafka_jars() {
  [[ -f "$KAFKA_LIB/.complete" ]] && return 0
  command -v java >/dev/null || die "java not found: run scripts/system-packages.sh (installs a JDK >= 17, Maven and redis-server)"
  command -v mvn >/dev/null || die "mvn not found: run scripts/system-packages.sh (installs Maven, a JDK and redis-server)"
  say "kafka: resolving Apache Kafka $KAFKA_VERSION jars from Maven Central (first start only)"
  local staging
  mkdir -p "$(dirname "$KAFKA_LIB")"
  staging="$(mktemp -d "$KAFKA_LIB.XXXXXX")"
  mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DoutputDirectory="$staging" >"$STATE_DIR/mvn.log" 2>&1 \
    || { tail -n 20 "$STATE_DIR/mvn.log" >&2; rm -rf "$staging"; die "kafka: could not resolve the jars (log: $STATE_DIR/mvn.log)"; }
  touch "$staging/.complete"
  mv -T "$staging" "$KAFKA_LIB" 2>/dev/null || rm -rf "$staging"  # another start may have won the race
}

kafka_config() {
  local listener=PLAINTEXT controller=PLAINTEXT
  if [[ "$KAFKA_SASL" == 1 ]]; then listener=SASL_PLAINTEXT controller=SASL_PLAINTEXT; fi
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by scripts/services.sh on each start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=$listener://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=$listener://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=$listener
listener.security.protocol.map=$listener:$listener,CONTROLLER:$controller
log.dirs=$KAFKA_DIR/data
num.partitions=6
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  if [[ "$KAFKA_SASL" == 1 ]]; then kafka_sasl_config >>"$KAFKA_DIR/server.properties"; fi
}

# --- Kafka with SASL/SCRAM and ACLs (--sasl) ---------------------------------------------------------------
# Clients authenticate with SCRAM-SHA-512 on the broker port. The KRaft controller port takes SASL/PLAIN from the
# broker itself (SCRAM credentials live in the metadata log the controller serves, so they cannot guard it).
# StandardAuthorizer with allow.everyone.if.no.acl.found=false: a principal may do only what an ACL grants it;
# `admin` is the super user and the broker's own identity. Users are created when the storage is formatted
# (kafka-storage format --add-scram): FRAUDPIPE_KAFKA_SASL_USERS (default "admin worker replayer labeler"), each
# with the password in FRAUDPIPE_KAFKA_SASL_PASSWORD_<NAME> or a random one. Each user's client settings are
# written to $SASL_DIR/<name>.env (mode 600): `set -a; . .services/kafka/sasl/worker.env; set +a`.
# No ACL is created here: grant them as admin (confluent-kafka AdminClient.create_acls, or kafka-acls.sh).

sasl_value() {  # sasl_value USER: that user's password, from its .env file
  sed -n 's/^FRAUD_KAFKA__SASL_PASSWORD=//p' "$SASL_DIR/$1.env"
}

SCRAM_ARGS=()
kafka_sasl_users() {  # write $SASL_DIR/<name>.env for each user; collect the format tool's --add-scram arguments
  local names=() name var password salted
  local -A seen=()
  read -ra names <<<"admin $(printf '%s' "${FRAUDPIPE_KAFKA_SASL_USERS:-worker replayer labeler}" | tr ',' ' ')"
  rm -rf "$SASL_DIR"  # users are made only by a format, so a folder being formatted has none yet
  mkdir -p "$SASL_DIR"
  for name in "${names[@]}"; do
    if [[ -n "${seen[$name]:-}" ]]; then continue; fi
    seen[$name]=1
    [[ "$name" =~ ^[a-z][a-z0-9_-]{0,63}$ ]] || die "kafka: SASL user name '$name' must match [a-z][a-z0-9_-]*"
    var="FRAUDPIPE_KAFKA_SASL_PASSWORD_$(printf '%s' "${name^^}" | tr '-' '_')"
    password="${!var:-$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')}"
    [[ "$password" =~ ^[[:alnum:]_.~-]{8,128}$ ]] || die "kafka: $var must be 8-128 of [A-Za-z0-9_.~-]"
    cat >"$SASL_DIR/$name.env" <<EOF
# Written by scripts/services.sh when the broker's storage was formatted: $name's SCRAM credentials.
FRAUD_KAFKA__SECURITY_PROTOCOL=SASL_PLAINTEXT
FRAUD_KAFKA__SASL_MECHANISM=SCRAM-SHA-512
FRAUD_KAFKA__SASL_USERNAME=$name
FRAUD_KAFKA__SASL_PASSWORD=$password
EOF
    # The salted form (RFC 5802, 4096 iterations): the password itself never appears on a command line.
    salted="$(printf '%s' "$password" | python3 -c 'import base64, hashlib, os, sys
salt = os.urandom(16)
key = hashlib.pbkdf2_hmac("sha512", sys.stdin.read().encode(), salt, 4096)
print(f"salt=\"{base64.b64encode(salt).decode()}\",saltedpassword=\"{base64.b64encode(key).decode()}\"")')"
    SCRAM_ARGS+=(--add-scram "SCRAM-SHA-512=[name=$name,iterations=4096,$salted]")
  done
}

kafka_sasl_config() {
  local password
  password="$(sasl_value admin)"
  cat <<EOF
# SASL/SCRAM-SHA-512 for clients, SASL/PLAIN between the broker and its controller; ACLs (--sasl).
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_plaintext.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.controller.sasl.enabled.mechanisms=PLAIN
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
sasl.mechanism.controller.protocol=PLAIN
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$password";
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$password" user_admin="$password";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin
EOF
}

kafka_start() {
  local pid mode=""
  if [[ -f "$KAFKA_DIR/data/meta.properties" ]]; then  # a formatted folder keeps the mode it was formatted in
    if [[ -f "$SASL_DIR/admin.env" ]]; then KAFKA_SASL=1
    elif [[ "$KAFKA_SASL" == 1 ]]; then
      die "kafka: $KAFKA_DIR was formatted without SASL; use another FRAUDPIPE_SERVICES_DIR for --sasl"
    fi
  fi
  if [[ "$KAFKA_SASL" == 1 ]]; then mode=", SASL_PLAINTEXT SCRAM-SHA-512 with ACLs, users in $SASL_DIR"; umask 077; fi
  if pid="$(pid_of kafka)"; then say "kafka: already running (pid $pid, 127.0.0.1:$KAFKA_PORT$mode)"; return 0; fi
  for port in "$KAFKA_PORT" "$CONTROLLER_PORT"; do
    port_busy "$port" && die "kafka: port $port is in use by another process; set FRAUD_KAFKA__BOOTSTRAP_SERVERS"
  done
  kafka_jars
  mkdir -p "$KAFKA_DIR/data"
  if [[ "$KAFKA_SASL" == 1 && ! -f "$KAFKA_DIR/data/meta.properties" ]]; then kafka_sasl_users; fi
  kafka_config
  local java_cmd=(java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true "-Dfraudpipe.state=$STATE_DIR"
    "-Dlog4j2.configurationFile=$ROOT/scripts/kafka/log4j2.properties" -cp "$KAFKA_LIB/*")
  if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
    local cluster_id=-
    # A cluster id in URL-safe base64 begins with '-' once in 64: the format tool would read it as an option (CI
    # failed so). Kafka's own Uuid.randomUuid() draws again in that case; so does this.
    while [[ "$cluster_id" == -* ]]; do
      cluster_id="$(python3 -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')"
    done
    "${java_cmd[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" "${SCRAM_ARGS[@]}" \
      >"$KAFKA_DIR/format.log" 2>&1 || { cat "$KAFKA_DIR/format.log" >&2; die "kafka: storage format failed"; }
  fi
  : >"$KAFKA_DIR/server.log"
  setsid nohup "${java_cmd[@]}" kafka.Kafka "$KAFKA_DIR/server.properties" >>"$KAFKA_DIR/server.log" 2>&1 </dev/null 9>&- &
  echo $! >"$STATE_DIR/kafka.pid"
  for _ in $(seq 900); do
    if grep -q "Kafka Server started" "$KAFKA_DIR/server.log" 2>/dev/null && port_busy "$KAFKA_PORT"; then
      say "kafka: started $KAFKA_VERSION (pid $(cat "$STATE_DIR/kafka.pid"), 127.0.0.1:$KAFKA_PORT$mode)"; return 0
    fi
    kill -0 "$(cat "$STATE_DIR/kafka.pid")" 2>/dev/null \
      || { sleep 0.3; tail -n 30 "$KAFKA_DIR/server.log" >&2; rm -f "$STATE_DIR/kafka.pid"; die "kafka: exited during start"; }
    sleep 0.1
  done
  tail -n 30 "$KAFKA_DIR/server.log" >&2
  stop_pid kafka 10
  die "kafka: not ready after 90s (log: $KAFKA_DIR/server.log)"
}

# --- Redis with passwords and the worker's ACL user -------------------------------------------------------
# Two users, written to $REDIS_DIR/redis.conf (mode 600) as SHA-256 hashes: that file, never the command line (which
# `ps` shows), configures them, and the passwords themselves are only in $REDIS_USERS/<name>.env (mode 600):
#   default  everything (the tests, the demo, `fraudpipe serve`, the CLI's maintenance commands);
#   worker   the keys under FRAUD_REDIS__KEY_PREFIX (default fp:v4:) and the alert stream FRAUD_SINKS__REDIS_STREAM_KEY
#            (default fp:alerts), no pub/sub channel, and only REDIS_WORKER_COMMANDS. Redis checks key patterns
#            inside scripts too, so the feature store's script is confined like any other call.
# A user's password is the login fraudpipe's settings name for it (the password in FRAUD_REDIS__URL, else
# FRAUD_REDIS__PASSWORD, for FRAUD_REDIS__USERNAME or default), else the one its .env file kept from the last start,
# else a random one. Both files are rewritten on each start: a changed prefix or password applies at the next start.

# Every command a worker sends: the feature store (MULTI / EXEC around EVALSHA and MGET, SCRIPT LOAD when the script
# is not cached; APPEND, STRLEN, EXPIRE, HMGET, HSET, GET, SET and PTTL inside it), the decision memory's scripts
# (TIME, HGET, HSETNX and EXPIREAT inside them), the erasure list (HGETALL), the Redis-stream sink (SET NX markers,
# XADD, DEL), health checks (PING).
# tests/reliability/test_redis_acl.py (the feature store's script) and test_security.py (a real worker) read it here.
REDIS_WORKER_COMMANDS="ping get set mget del hgetall xadd evalsha script|load multi exec append strlen expire pttl hmget hset hget hsetnx expireat time"

redis_value() {  # redis_value USER: that user's password, from its .env file (nothing if there is none)
  if [[ -f "$REDIS_USERS/$1.env" ]]; then sed -n 's/^FRAUD_REDIS__PASSWORD=//p' "$REDIS_USERS/$1.env"; fi
}

redis_login() {  # redis_login USER: the password fraudpipe's settings log USER in with (nothing if none)
  local user password
  if [[ "$REDIS_USERINFO" == *:* ]]; then  # redis://[user]:password@host:port/db: a login in the URL wins
    user="${REDIS_USERINFO%%:*}" password="${REDIS_USERINFO#*:}"
  else
    user="$(setting FRAUD_REDIS__USERNAME "")" password="$(setting FRAUD_REDIS__PASSWORD "")"
  fi
  if [[ "${user:-default}" == "$1" ]]; then printf '%s' "$password"; fi
}

redis_users() {  # write $REDIS_USERS/<name>.env for default and worker; prints nothing (the passwords stay in files)
  local name password origin
  mkdir -p "$REDIS_USERS"
  chmod 700 "$REDIS_USERS"
  for name in default worker; do
    password="$(redis_login "$name")" origin="FRAUD_REDIS__URL / FRAUD_REDIS__PASSWORD"
    [[ -n "$password" ]] || password="$(redis_value "$name")" origin="$REDIS_USERS/$name.env"
    [[ -n "$password" ]] || password="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
    # The characters Kafka's passwords may have: they go into URLs and .env files unquoted.
    [[ "$password" =~ ^[[:alnum:]_.~-]{8,128}$ ]] || die "redis: $name's password (from $origin) must be 8-128 of [A-Za-z0-9_.~-]"
    # Each file names its user: loading default.env after worker.env must not leave USERNAME=worker behind.
    (umask 077; printf '%s\n' \
      "# Written by scripts/services.sh at each Redis start: the $name user's login (set -a; . this file; set +a)." \
      "FRAUD_REDIS__USERNAME=$name" "FRAUD_REDIS__PASSWORD=$password" >"$REDIS_USERS/$name.env")
    chmod 600 "$REDIS_USERS/$name.env"  # a file kept from an older start keeps its mode otherwise
  done
}

redis_hash() {  # redis_hash USER: the SHA-256 of that user's password, as an ACL rule takes it (#<hex>)
  redis_value "$1" | tr -d '\n' | sha256sum | cut -d' ' -f1
}

redis_config() {
  local prefix stream value commands=""
  prefix="$(setting FRAUD_REDIS__KEY_PREFIX fp:v4:)"
  stream="$(setting FRAUD_SINKS__REDIS_STREAM_KEY fp:alerts)"
  for value in "$prefix" "$stream"; do  # a glob character would widen the worker's keys beyond its own
    [[ "$value" =~ ^[A-Za-z0-9:_.-]+$ ]] || die "redis: key prefix or stream key '$value' must be of [A-Za-z0-9:_.-]"
  done
  for value in $REDIS_WORKER_COMMANDS; do commands+=" +$value"; done
  (umask 077; cat >"$REDIS_DIR/redis.conf" <<EOF
# Written by scripts/services.sh on each start; edit the script, not this file. The passwords are in users/*.env.
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize no
dir "$REDIS_DIR"
logfile "$REDIS_DIR/redis.log"
appendonly yes
appendfsync everysec
save ""
user default reset on #$(redis_hash default) ~* &* +@all
user worker reset on #$(redis_hash worker) ~$prefix* ~$stream resetchannels -@all$commands
EOF
  )
  chmod 600 "$REDIS_DIR/redis.conf"
}

redis_ping() {  # redis_ping USER: PONG once USER logs in (the password goes through the environment, not argv)
  REDISCLI_AUTH="$(redis_value "$1")" redis-cli --no-auth-warning --user "$1" -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null
}

redis_start() {
  local pid
  if pid="$(pid_of redis)"; then say "redis: already running (pid $pid, 127.0.0.1:$REDIS_PORT, logins in $REDIS_USERS)"; return 0; fi
  command -v redis-server >/dev/null \
    || die "redis-server not found: run scripts/system-packages.sh (installs redis-server, a JDK and Maven)"
  port_busy "$REDIS_PORT" && die "redis: port $REDIS_PORT is in use by another process; set FRAUD_REDIS__URL"
  mkdir -p "$REDIS_DIR"
  redis_users
  redis_config
  setsid nohup redis-server "$REDIS_DIR/redis.conf" </dev/null >/dev/null 2>&1 9>&- &
  echo $! >"$STATE_DIR/redis.pid"
  for _ in $(seq 100); do
    if [[ "$(redis_ping default)" == PONG && "$(redis_ping worker)" == PONG ]]; then
      say "redis: started $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') (pid $(cat "$STATE_DIR/redis.pid"), 127.0.0.1:$REDIS_PORT, logins in $REDIS_USERS)"
      return 0
    fi
    # Liveness by the PID just started: redis-server enters its dir only while loading its configuration.
    kill -0 "$(cat "$STATE_DIR/redis.pid")" 2>/dev/null \
      || { sleep 0.3; tail -n 20 "$REDIS_DIR/redis.log" >&2; rm -f "$STATE_DIR/redis.pid"; die "redis: exited during start"; }
    sleep 0.1
  done
  stop_pid redis 5
  die "redis: not answering PING after 10s (log: $REDIS_DIR/redis.log)"
}

# --- commands ----------------------------------------------------------------------------------------------

status_of() {
  local pid port
  case "$1" in kafka) port="$KAFKA_PORT" ;; redis) port="$REDIS_PORT, logins in $REDIS_USERS" ;; esac
  if pid="$(pid_of "$1")"; then say "$1: running (pid $pid, 127.0.0.1:$port)"; return 0; fi
  say "$1: stopped"; return 3
}

main() {
  local args=() arg
  for arg in "$@"; do
    if [[ "$arg" == --sasl ]]; then KAFKA_SASL=1; else args+=("$arg"); fi
  done
  set -- "${args[@]}"
  local command="${1:-}" target="${2:-all}" services
  case "$target" in
    all) services=(kafka redis) ;;
    kafka | redis) services=("$target") ;;
    *) die "unknown service '$target' (kafka, redis or all)" ;;
  esac
  mkdir -p "$STATE_DIR"
  exec 9>"$STATE_DIR/.lock"
  flock -w 120 9 || die "another services.sh holds $STATE_DIR/.lock"
  case "$command" in
    start) for s in "${services[@]}"; do "${s}_start"; done ;;
    stop) for s in "${services[@]}"; do case "$s" in kafka) stop_pid kafka 30 ;; redis) stop_pid redis 10 ;; esac; done ;;
    restart) main stop "$target"; main start "$target" ;;
    status) local rc=0; for s in "${services[@]}"; do status_of "$s" || rc=3; done; return "$rc" ;;
    *) die "usage: scripts/services.sh start|stop|status|restart [kafka|redis|all] [--sasl]" ;;
  esac
}

main "$@"
