# Pinned versions and cache locations, sourced by every script (and read by shared.infra via env).
export KAFKA_VERSION=4.1.1
export LOG4J_VERSION=2.25.3
export FERRETDB_VERSION=v1.24.2
# Bump the suffix whenever deploy/ferretdb/*.patch changes, so cached binaries are rebuilt.
export FERRETDB_BUILD="$FERRETDB_VERSION-idindex1-notrack1-atomic3-walreset1-idin1-updtx1-sjson3-uniqidx1-delid2-updstmt3-pullcond1"
export CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/digital-bridge"
# uv installs .venv from uv.lock (scripts/setup.sh fetches this version from PyPI; the Dockerfiles pin it too).
export UV_VERSION=0.13.9
export UV="$CACHE/uv-$UV_VERSION/bin/uv"
export KAFKA_HOME="$CACHE/kafka-$KAFKA_VERSION"
export FERRETDB_BIN="$CACHE/ferretdb-$FERRETDB_BUILD"
# The official AsyncAPI JSON Schemas (npm @asyncapi/specs); tests validate docs/events/asyncapi.yaml against 3.0.0.
export ASYNCAPI_SPECS_VERSION=6.11.1
export ASYNCAPI_SCHEMA_SHA256=d4571a420e6ffb7fcc7066c95a6db1202f299a3c51daa103d0706bf30f95e626
export ASYNCAPI_SCHEMA="$CACHE/asyncapi-specs-$ASYNCAPI_SPECS_VERSION/3.0.0.json"
