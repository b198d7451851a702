#!/usr/bin/env bash
# Build the Kafka Streams peer's shaded jar (bench/peer/target/streams-peer.jar) with Maven.
# Jars come from Maven Central into Maven's own cache (~/.m2); kafka-streams is the broker's version
# (scripts/versions.sh). Skips the build when the jar is newer than the sources. Called by the
# bench's peer part (bench/peer_part.py), never by `make setup`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=../../scripts/versions.sh
source "$here/../../scripts/versions.sh"
jar="$here/target/streams-peer.jar"
stamp="$here/target/.kafka-version"
if [[ -f "$jar" && -f "$stamp" && "$(cat "$stamp")" == "$KAFKA_VERSION" ]] \
  && [[ -z "$(find "$here/pom.xml" "$here/src" -newer "$jar" -type f -print -quit)" ]]; then
  echo "peer: $jar is up to date"
  exit 0
fi
command -v mvn >/dev/null || { echo "peer: mvn not found (apt-get install maven)" >&2; exit 1; }
echo "peer: building with kafka-streams $KAFKA_VERSION"
mvn -B -q -f "$here/pom.xml" -Dkafka.version="$KAFKA_VERSION" package
echo "$KAFKA_VERSION" > "$stamp"
echo "peer: built $jar"
