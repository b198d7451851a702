#!/usr/bin/env bash
# Installs everything the project needs, idempotently: the Python venv, the Kafka jars (Maven) and the
# FerretDB binary (Go). Downloads and builds are cached per user, so a fresh clone (CI) reuses them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/versions.sh

mkdir -p "$CACHE"

# --- Python ---------------------------------------------------------------------------------------
PY=${PYTHON:-python3}
stamp=".venv/.installed-$(cat requirements.txt shared/pyproject.toml services/*/pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python dependencies into .venv"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps -e shared -e services/registry -e services/visits \
      -e services/training -e services/metrics
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# --- Apache Kafka (jars from Maven Central) -------------------------------------------------------
if [ ! -f "$KAFKA_HOME/lib/kafka_2.13-$KAFKA_VERSION.jar" ]; then
  echo "setup: fetching Apache Kafka $KAFKA_VERSION jars with Maven"
  mkdir -p "$KAFKA_HOME"
  sed "s/@KAFKA_VERSION@/$KAFKA_VERSION/; s/@LOG4J_VERSION@/$LOG4J_VERSION/g" deploy/kafka/pom.xml > "$KAFKA_HOME/pom.xml"
  (cd "$KAFKA_HOME" && mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.11.0:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory=lib.tmp && rm -rf lib && mv lib.tmp lib)
fi

# --- FerretDB (built from the Go module cache; see INFRA notes on version.txt, deploy/ferretdb) ---
if [ ! -x "$FERRETDB_BIN" ]; then
  echo "setup: building FerretDB $FERRETDB_BUILD with Go"
  dir=$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" \
        | "$PY" -c 'import json,sys;print(json.load(sys.stdin)["Dir"])')
  src="$CACHE/ferretdb-src-$FERRETDB_VERSION"
  rm -rf "$src" && cp -r "$dir" "$src" && chmod -R u+w "$src"
  echo "$FERRETDB_VERSION" > "$src/build/version/version.txt"
  # Upstream bug fixes we depend on; each patch says why in its own comments.
  for p in deploy/ferretdb/*.patch; do patch -s -p1 -d "$src" < "$p"; done
  (cd "$src" && CGO_ENABLED=0 go build -o "$FERRETDB_BIN.tmp" ./cmd/ferretdb)
  mv "$FERRETDB_BIN.tmp" "$FERRETDB_BIN"
  rm -rf "$src"
fi

# --- Debian tools used by tests: prometheus (dashboard check), docker-compose (compose validation) -
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]} from Debian"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: warning: ${missing[*]} not installed (needs root apt-get); their tests will fail" >&2
  fi
fi
echo "setup: ok (Kafka $KAFKA_VERSION, FerretDB $FERRETDB_VERSION, cache $CACHE)" >&2
