#!/usr/bin/env bash
# Installs everything the project needs, idempotently: the Python venv (uv), the Kafka jars (Maven) and the
# FerretDB binary (Go). Downloads and builds are cached per user, so a fresh clone (CI) reuses them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/versions.sh

mkdir -p "$CACHE"

# Each step that has work to do says what and how long it took on a 2-core machine, prints a line every
# 30 s while its tools are silent (Maven, go build), and then its elapsed time. All on stderr, so
# `TOKEN=$(make token)` gets only the token even on a first run.
STEP_NAME="" STEP_START=0 SETUP_START=$SECONDS DID_WORK=0 HEARTBEAT=""
step() {  # step "what" "how long it may take"
  step_done
  STEP_NAME=$1 STEP_START=$SECONDS DID_WORK=1
  echo "setup: $1 (first time only; $2) ..." >&2
  # sleep holds no output pipe: killing the loop must not leave `make setup | tee` waiting for it.
  (while sleep 30 </dev/null >/dev/null 2>&1; do echo "setup:   ... still at it ($((SECONDS - STEP_START)) s)" >&2; done) &
  HEARTBEAT=$!
  disown "$HEARTBEAT"  # no "Terminated" notice when step_done kills it
}
step_done() {
  if [ -n "$HEARTBEAT" ]; then kill "$HEARTBEAT" 2>/dev/null || true; fi
  HEARTBEAT=""
  if [ -n "$STEP_NAME" ]; then echo "setup:   done in $((SECONDS - STEP_START)) s: $STEP_NAME" >&2; fi
  STEP_NAME=""
}
trap '[ -z "$HEARTBEAT" ] || kill "$HEARTBEAT" 2>/dev/null || true' EXIT

# --- Python: .venv from uv.lock (the uv workspace: shared/, services/*/ and the dev group) ---------
PY=${PYTHON:-python3}
stamp=".venv/.installed-$(cat uv.lock pyproject.toml shared/pyproject.toml services/*/pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  if [ ! -x "$UV" ]; then
    step "fetching uv $UV_VERSION from PyPI (~20 MB)" "a few seconds"
    # A venv of its own, so the prerequisite stays Python with its venv module (no system pip needed).
    uv_dir=${UV%/bin/uv}
    rm -rf "$uv_dir.tmp"
    "$PY" -m venv "$uv_dir.tmp"
    "$uv_dir.tmp/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
    rm -rf "$uv_dir" && mv "$uv_dir.tmp" "$uv_dir"
  fi
  step "installing Python dependencies into .venv from uv.lock (~360 MB)" "about 5-10 s, under 1 s from uv's cache"
  rm -f .venv/.installed-*
  # --locked: a pyproject changed without `uv lock` fails here, not later in CI. Packages come from uv's
  # own per-user cache (~/.cache/uv), so a fresh clone links them instead of downloading them again.
  UV_PYTHON_DOWNLOADS=never "$UV" sync --locked --quiet --python "$PY" || {
    echo "setup: uv sync failed; if uv.lock is out of date: . scripts/versions.sh && \"\$UV\" lock" >&2
    exit 1
  }
  touch "$stamp"
fi

# --- Apache Kafka (jars from Maven Central) -------------------------------------------------------
if [ ! -f "$KAFKA_HOME/lib/kafka_2.13-$KAFKA_VERSION.jar" ]; then
  step "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central (~70 MB)" "about 15 s to 1 min"
  mkdir -p "$KAFKA_HOME"
  sed "s/@KAFKA_VERSION@/$KAFKA_VERSION/; s/@LOG4J_VERSION@/$LOG4J_VERSION/g" deploy/kafka/pom.xml > "$KAFKA_HOME/pom.xml"
  (cd "$KAFKA_HOME" && mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.11.0:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory=lib.tmp && rm -rf lib && mv lib.tmp lib)
fi

# --- FerretDB (built from the Go module cache; see INFRA notes on version.txt, deploy/ferretdb) ---
if [ ! -x "$FERRETDB_BIN" ]; then
  step "building FerretDB $FERRETDB_BUILD with Go" "about 2-9 min: ~650 MB of downloads, then a compile"
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

# --- AsyncAPI 3.0.0 JSON Schema (official, from npm) for the catalogue's validation test ----------
if [ ! -f "$ASYNCAPI_SCHEMA" ]; then
  if command -v npm >/dev/null 2>&1; then
    step "fetching the AsyncAPI 3.0.0 JSON Schema (npm @asyncapi/specs $ASYNCAPI_SPECS_VERSION)" "a few seconds"
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack -q --silent "@asyncapi/specs@$ASYNCAPI_SPECS_VERSION" >/dev/null \
       && tar xzf asyncapi-specs-*.tgz package/schemas/3.0.0.json)
    echo "$ASYNCAPI_SCHEMA_SHA256  $tmp/package/schemas/3.0.0.json" | sha256sum -c --quiet
    mkdir -p "$(dirname "$ASYNCAPI_SCHEMA")" && mv "$tmp/package/schemas/3.0.0.json" "$ASYNCAPI_SCHEMA"
    rm -rf "$tmp"
  else
    echo "setup: warning: npm not found; the AsyncAPI schema test (tests/test_asyncapi_schema.py) will fail" >&2
  fi
fi

# --- Debian tools: prometheus (make run, dashboard check), docker-compose (compose validation), chromium
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
# The campaign page's browser test (tests/test_campaign_page_browser.py) drives Debian's chromium; DejaVu
# has every Vietnamese glyph for its screenshot.
command -v chromium >/dev/null 2>&1 || missing+=(chromium fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing ${missing[*]} from Debian" "about 1-3 min"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: warning: ${missing[*]} not installed (needs root apt-get); their tests will fail" >&2
  fi
fi
step_done
if [ "$DID_WORK" = 1 ]; then echo "setup: all steps done in $((SECONDS - SETUP_START)) s" >&2; fi
echo "setup: ok (Kafka $KAFKA_VERSION, FerretDB $FERRETDB_VERSION, cache $CACHE)" >&2
