#!/usr/bin/env bash
# docker-compose init step: create every topic listed in deploy/kafka/topics.yaml (idempotent).
#
# The YAML is the single catalogue (shared.topics reads it too); this parses its flat layout with awk
# because the apache/kafka image has no Python. tests/test_compose.py runs this with DRY_RUN=1 and
# checks the commands against shared.topics.load_topics(), so the two readings cannot drift apart.
set -euo pipefail

TOPICS_FILE=${TOPICS_FILE:-/deploy/kafka/topics.yaml}
BOOTSTRAP=${BOOTSTRAP:-kafka:9092}
KAFKA_TOPICS=${KAFKA_TOPICS:-/opt/kafka/bin/kafka-topics.sh}
TOPIC_PREFIX=${TOPIC_PREFIX:-}
DRY_RUN=${DRY_RUN:-0}

# One line per topic: "<name> <partitions> <replication factor> [--config k=v ...]".
topic_lines() {
  awk '
    function flush() { if (name != "") print name, parts, rf, cfg; name = "" }
    /^[ \t]*#/ || /^[ \t]*$/ { next }
    /^defaults:/ { section = "defaults"; next }
    /^topics:/ { section = "topics"; next }
    section == "defaults" && $1 == "partitions:" { dparts = $2 }
    section == "defaults" && $1 == "replication_factor:" { drf = $2 }
    section == "topics" && $1 == "-" && $2 == "name:" {
      flush(); name = $3; gsub(/["\047]/, "", name)
      parts = (dparts == "" ? 6 : dparts); rf = (drf == "" ? 1 : drf); cfg = ""
    }
    section == "topics" && $1 == "partitions:" { parts = $2 }
    section == "topics" && $1 == "replication_factor:" { rf = $2 }
    section == "topics" && $1 == "config:" {
      s = $0
      sub(/^[^{]*[{]/, "", s); sub(/[}].*$/, "", s)
      gsub(/["\047 \t]/, "", s)
      n = split(s, kv, ",")
      for (i = 1; i <= n; i++) { if (kv[i] != "") { sub(/:/, "=", kv[i]); cfg = cfg " --config " kv[i] } }
    }
    END { flush() }
  ' "$TOPICS_FILE"
}

run() {
  if [ "$DRY_RUN" = "1" ]; then echo "$*"; else "$@"; fi
}

if [ "$DRY_RUN" != "1" ]; then
  for attempt in $(seq 1 60); do
    "$KAFKA_TOPICS" --bootstrap-server "$BOOTSTRAP" --list >/dev/null 2>&1 && break
    echo "create-topics: waiting for Kafka at $BOOTSTRAP ($attempt)"
    sleep 2
  done
fi

topic_lines | while read -r name parts rf cfg; do
  # shellcheck disable=SC2086 # $cfg is a list of "--config k=v" words
  run "$KAFKA_TOPICS" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$TOPIC_PREFIX$name" --partitions "$parts" --replication-factor "$rf" $cfg
done
[ "$DRY_RUN" = "1" ] || "$KAFKA_TOPICS" --bootstrap-server "$BOOTSTRAP" --list
echo "create-topics: done"
