# Pinned versions and cache locations, sourced by every script (and read by shared.infra via env).
export KAFKA_VERSION=4.1.1
export LOG4J_VERSION=2.25.3
export FERRETDB_VERSION=v1.24.2
# Bump the suffix whenever deploy/ferretdb/*.patch changes, so cached binaries are rebuilt.
export FERRETDB_BUILD="$FERRETDB_VERSION-idindex1-notrack1-atomic1"
export CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/digital-bridge"
export KAFKA_HOME="$CACHE/kafka-$KAFKA_VERSION"
export FERRETDB_BIN="$CACHE/ferretdb-$FERRETDB_BUILD"
