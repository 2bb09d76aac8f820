#!/usr/bin/env bash
# A real Kubernetes API server for tests/apiserver.rs: kube-apiserver 1.20 (built once per
# machine from Debian bookworm's `kubernetes` source package with Go 1.15 from bullseye) and
# etcd 3.4 (Debian's etcd-server), on 127.0.0.1 only. No controller manager, scheduler or
# kubelet: the tests play those parts themselves. The same build makes the kubelet,
# kube-controller-manager, kube-scheduler and kube-proxy that scripts/node.sh runs.
#
#   source scripts/apiserver.sh && apiserver_start   # exports KUBECONFIG (cluster-admin)
#   apiserver_stop                                   # stops both, removes their data
#
# apiserver_install (called by apiserver_start) builds into a cache directory outside the
# repository, ${SNAPSHOT_OPERATOR_K8S_CACHE:-/var/cache/snapshot-operator/k8s}: about 6 minutes
# the first time on 2 cores, a no-op after that. It needs root (apt-get) and Debian's
# archive; when it cannot build, it and apiserver_start fail (non-zero) and say why.
#
# What the tests should know about this server:
# * Kubernetes 1.20: no CEL; CRDs with x-kubernetes-validations must be *created* (the
#   server drops the unknown field), not server-side applied (which refuses it).
# * Auth: a bearer token (user "snapshot-test-admin", group system:masters) under RBAC.
# * Admission: the defaults minus ServiceAccount (no token controller runs here, so pods
#   would be refused for want of a "default" service account).
# * Nothing deletes a namespace's contents: a deleted namespace stays Terminating.

APISERVER_CACHE="${SNAPSHOT_OPERATOR_K8S_CACHE:-/var/cache/snapshot-operator/k8s}"
# Logs of the running servers, kept after apiserver_stop for a post-mortem.
APISERVER_LOG_DIR="${APISERVER_LOG_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/apiserver}"
APISERVER_K8S_VERSION="1.20.2"
# What the build makes (all from one source tree, one Go cache).
APISERVER_COMMANDS="kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy kubectl"

# Are all the binaries built?
_apiserver_built() {
  local cmd
  [ -x "$APISERVER_CACHE/bin/etcd" ] || return 1
  for cmd in $APISERVER_COMMANDS; do
    [ -x "$APISERVER_CACHE/bin/$cmd" ] || return 1
  done
}

# The build runs in its own bash process: `set -e` holds there even when the caller tests
# apiserver_install's status (inside `if` or `||`, bash ignores -e in functions).
_apiserver_build() {
  local cache="$1" bin="$1/bin" src="$1/src"
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get -y -q -o DPkg::Lock::Timeout=600)
  date

  # bookworm's source packages, and bullseye's binaries at low priority (only Go 1.15
  # comes from there: kubernetes 1.20 does not build with bookworm's Go 1.19).
  if ! grep -rqs "snapshot-operator" /etc/apt/sources.list.d/snapshot-operator-k8s.sources; then
    cat > /etc/apt/sources.list.d/snapshot-operator-k8s.sources <<'EOF'
# Added by snapshot-operator's scripts/apiserver.sh (kube-apiserver for its tests).
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  cat > /etc/apt/preferences.d/snapshot-operator-bullseye <<'EOF'
# Added by snapshot-operator's scripts/apiserver.sh: bullseye only for what is asked by name.
Package: *
Pin: release n=bullseye
Pin-Priority: 100
EOF
  "${apt[@]}" update
  # --no-upgrade: what is already installed stays as it is.
  "${apt[@]}" install --no-install-recommends --no-upgrade \
    build-essential dpkg-dev rsync curl openssl ca-certificates util-linux golang-1.15-go
  export PATH="/usr/lib/go-1.15/bin:$PATH"
  go version

  rm -rf "$src" "$bin.new"
  mkdir -p "$src" "$bin.new"
  cd "$src" || exit 1
  # etcd: the binary out of the package, not installed (its postinst would start a service).
  "${apt[@]}" download etcd-server
  dpkg-deb -x etcd-server_*.deb etcd-root
  cp etcd-root/usr/bin/etcd "$bin.new/etcd"
  "$bin.new/etcd" --version

  "${apt[@]}" source --download-only kubernetes
  dpkg-source --no-check -x kubernetes_*.dsc kubernetes
  cd kubernetes || exit 1

  export GOPATH="$cache/gopath" GOCACHE="$cache/gocache" GOFLAGS=-mod=vendor CGO_ENABLED=0
  # The source tarball lacks the generated OpenAPI definitions.
  nice make gen_openapi
  test -s pkg/generated/openapi/zz_generated.openapi.go
  # The version /version and --version report (else "v0.0.0-master+...").
  local ldflags="-s -w" v
  for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $v.gitVersion=v$APISERVER_K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=20"
    ldflags+=" -X $v.gitTreeState=clean -X $v.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  local cmd
  for cmd in $APISERVER_COMMANDS; do
    nice go build -trimpath -ldflags "$ldflags" -o "$bin.new/$cmd" "./cmd/$cmd"
    if [ "$cmd" = kubectl ]; then "$bin.new/$cmd" version --client; else "$bin.new/$cmd" --version; fi
  done

  rm -rf "$bin"
  mv "$bin.new" "$bin"
  # Only the binaries are kept.
  cd "$cache" || exit 1
  chmod -R u+w "$src" "$cache/gopath" 2>/dev/null || true
  rm -rf "$src" "$cache/gopath" "$cache/gocache"
  date
}

apiserver_install() {
  if _apiserver_built; then
    return 0
  fi
  if ! mkdir -p "$APISERVER_CACHE"; then
    echo "apiserver: cannot create $APISERVER_CACHE (set SNAPSHOT_OPERATOR_K8S_CACHE)" >&2
    return 1
  fi
  local log="$APISERVER_CACHE/install.log"
  echo "apiserver: building Kubernetes $APISERVER_K8S_VERSION ($APISERVER_COMMANDS) and etcd into $APISERVER_CACHE (about 6 minutes on 2 cores; log: $log)"
  # One build at a time per cache directory; a waiter finds the binaries when it gets the lock.
  if ! APISERVER_K8S_VERSION="$APISERVER_K8S_VERSION" APISERVER_COMMANDS="$APISERVER_COMMANDS" \
      APISERVER_CACHE="$APISERVER_CACHE" flock "$APISERVER_CACHE/.lock" bash -c "
      $(declare -f _apiserver_build _apiserver_built)
      set -euxo pipefail
      PS4='+ \$(date +%T) '
      if _apiserver_built; then exit 0; fi
      _apiserver_build '$APISERVER_CACHE'" > "$log" 2>&1; then
    echo "apiserver: the build of kube-apiserver/etcd FAILED; the end of $log:" >&2
    tail -40 "$log" >&2
    return 1
  fi
}

# N free TCP ports on 127.0.0.1 below the ephemeral range (32768-60999).
_apiserver_free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
ports = []
while len(ports) < int(sys.argv[1]):
    p = random.randrange(20000, 32000)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
    if p not in ports:
        ports.append(p)
print(*ports)
PY
}

# In $1: a CA, a serving certificate for the names and addresses $2 (subjectAltName syntax)
# signed by it (rustls refuses a self-signed CA as the server's own certificate), the
# service-account signing key, and a token file with a line per "user,group" that follows
# (the token random). Run in its own bash process (see _apiserver_build).
_apiserver_certs() {
  cd "$1" || exit 1
  local sans="$2" user
  shift 2
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 365 \
    -subj "/CN=snapshot-operator-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  openssl req -new "${ec[@]}" -keyout serving.key -out serving.csr -subj "/CN=kube-apiserver"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectAltName=$sans" > serving.ext
  openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
    -extfile serving.ext -out serving.crt
  openssl genrsa -out sa.key 2048
  openssl rsa -in sa.key -pubout -out sa.pub
  : > tokens.csv
  for user in "$@"; do
    echo "$(openssl rand -hex 24),${user%%,*},${user%%,*},\"${user#*,}\"" >> tokens.csv
  done
  chmod 600 ./*.key tokens.csv
}

apiserver_start() {
  apiserver_install || return 1
  local tool
  for tool in curl openssl python3 base64; do
    if ! command -v "$tool" > /dev/null; then
      echo "apiserver: $tool is missing (apt-get install $tool)" >&2
      return 1
    fi
  done
  local bin="$APISERVER_CACHE/bin" ports etcd_port peer_port api_port
  ports="$(_apiserver_free_ports 3)" || return 1
  read -r etcd_port peer_port api_port <<< "$ports"
  APISERVER_DIR="$(mktemp -d "${TMPDIR:-/tmp}/snapshot-operator-apiserver.XXXXXX")" || return 1
  mkdir -p "$APISERVER_LOG_DIR" "$APISERVER_DIR/pki" || return 1
  echo "$APISERVER_DIR" > "$APISERVER_LOG_DIR/run-dir"
  local pki="$APISERVER_DIR/pki"
  local sans="IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1"
  if ! bash -c "$(declare -f _apiserver_certs); set -euo pipefail; _apiserver_certs '$pki' '$sans' 'snapshot-test-admin,system:masters'" \
      > "$APISERVER_LOG_DIR/certs.log" 2>&1; then
    echo "apiserver: generating certificates failed:" >&2
    tail -20 "$APISERVER_LOG_DIR/certs.log" >&2
    return 1
  fi

  "$bin/etcd" --name=test --data-dir="$APISERVER_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="test=http://127.0.0.1:$peer_port" --log-level=warn --logger=zap \
    > "$APISERVER_LOG_DIR/etcd.log" 2>&1 &
  APISERVER_ETCD_PID=$!
  echo "$APISERVER_ETCD_PID" > "$APISERVER_DIR/etcd.pid"
  if ! _apiserver_wait "etcd" "$APISERVER_ETCD_PID" "$APISERVER_LOG_DIR/etcd.log" \
      curl -sf "http://127.0.0.1:$etcd_port/health"; then
    apiserver_stop
    return 1
  fi

  "$bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" --insecure-port=0 \
    --tls-cert-file="$pki/serving.crt" --tls-private-key-file="$pki/serving.key" \
    --client-ca-file="$pki/ca.crt" --token-auth-file="$pki/tokens.csv" \
    --authorization-mode=RBAC --anonymous-auth=false \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --endpoint-reconciler-type=none \
    --disable-admission-plugins=ServiceAccount \
    --cert-dir="$APISERVER_DIR/certs" --profiling=false --v=1 \
    > "$APISERVER_LOG_DIR/kube-apiserver.log" 2>&1 &
  APISERVER_PID=$!
  echo "$APISERVER_PID" > "$APISERVER_DIR/kube-apiserver.pid"

  APISERVER_URL="https://127.0.0.1:$api_port"
  APISERVER_TOKEN="$(cut -d, -f1 "$pki/tokens.csv")"
  APISERVER_CA="$pki/ca.crt"
  cat > "$APISERVER_DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(base64 -w0 < "$pki/ca.crt")
users:
- name: admin
  user:
    token: $APISERVER_TOKEN
contexts:
- name: test
  context:
    cluster: test
    user: admin
current-context: test
EOF
  if ! _apiserver_wait "kube-apiserver" "$APISERVER_PID" "$APISERVER_LOG_DIR/kube-apiserver.log" \
      curl -sf --cacert "$APISERVER_CA" -H "Authorization: Bearer $APISERVER_TOKEN" "$APISERVER_URL/readyz"; then
    apiserver_stop
    return 1
  fi
  export KUBECONFIG="$APISERVER_DIR/kubeconfig" APISERVER_URL APISERVER_TOKEN APISERVER_CA
  echo "kube-apiserver $APISERVER_K8S_VERSION on $APISERVER_URL (pid $APISERVER_PID), etcd on 127.0.0.1:$etcd_port (pid $APISERVER_ETCD_PID); KUBECONFIG=$KUBECONFIG"
}

# Waits up to 60 s until the probe command succeeds while the process lives.
_apiserver_wait() {
  local what="$1" pid="$2" log="$3"
  shift 3
  for _ in $(seq 1 240); do
    if "$@" > /dev/null 2>&1; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "apiserver: $what exited; the end of $log:" >&2
      tail -30 "$log" >&2
      return 1
    fi
    sleep 0.25
  done
  echo "apiserver: $what did not become ready in 60 s; the end of $log:" >&2
  tail -30 "$log" >&2
  return 1
}

# Stops a process by PID: TERM, then KILL after 15 s; waits until it is gone.
_apiserver_kill() {
  local pid="$1"
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

apiserver_stop() {
  # From another shell than the one that started them: the PIDs recorded in the run directory.
  local dir="${APISERVER_DIR:-}"
  if [ -z "$dir" ] && [ -f "$APISERVER_LOG_DIR/run-dir" ]; then
    dir="$(cat "$APISERVER_LOG_DIR/run-dir")"
  fi
  if [ -n "$dir" ] && [ -d "$dir" ]; then
    _apiserver_kill "${APISERVER_PID:-$(cat "$dir/kube-apiserver.pid" 2>/dev/null)}"
    _apiserver_kill "${APISERVER_ETCD_PID:-$(cat "$dir/etcd.pid" 2>/dev/null)}"
    rm -rf "$dir"
  fi
  rm -f "$APISERVER_LOG_DIR/run-dir"
  if [ -n "$dir" ] && [ "${KUBECONFIG:-}" = "$dir/kubeconfig" ]; then
    unset KUBECONFIG
  fi
  unset APISERVER_PID APISERVER_ETCD_PID APISERVER_DIR
}
