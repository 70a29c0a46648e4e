#!/usr/bin/env bash
# A real single-node Kubernetes on 127.0.0.1 for tests and for trying viadk8s without a cluster:
# etcd + kube-apiserver + kube-controller-manager + kube-scheduler + containerd + a kubelet whose
# node advertises nvidia.com/gpu (no GPU behind it: pods that request one are admitted and run on CPU).
#
#   scripts/kube.sh up              start everything, print `export KUBECONFIG=...`
#   scripts/kube.sh load IMAGE      side-load a podman image into the node (skipped when already there)
#   scripts/kube.sh down            stop exactly what `up` started, remove its containers, mounts and
#                                   cgroups, restore the kernel settings the kubelet changed
#   scripts/kube.sh env             print the exports of a running cluster
#
# KUBE_BIN_DIR: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl and a static
#   `pause`, plain or .xz (default: ../shared/k8s/bin beside this repository), unpacked once into
#   $KUBE_HOME/bin. KUBE_HOME: state (default ~/.cache/viadk8s/kube). KUBE_GPUS: GPUs advertised (1).
# Needs root and Debian's etcd-server containerd runc containernetworking-plugins openssl curl xz-utils
# podman. Every port is a free one on 127.0.0.1; pods reach servers on this machine only with
# hostNetwork (the only CNI is loopback; there is no kube-proxy, so Services have no virtual IPs).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KUBE_HOME=${KUBE_HOME:-$HOME/.cache/viadk8s/kube}
KUBE_BIN_DIR=${KUBE_BIN_DIR:-$HERE/../../shared/k8s/bin}
RUN=$KUBE_HOME/run
CRI=$KUBE_HOME/cri
P=$RUN/pki
BIN=$KUBE_HOME/bin
export GOMAXPROCS=${GOMAXPROCS:-2}
#: the node's name is also its Hostname address, the one the API server dials for logs: "localhost"
#: keeps that on 127.0.0.1 (the kubelet refuses a loopback --node-ip, and listens on 127.0.0.1 only)
NODE=localhost
BINARIES="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl pause"
#: the kernel settings the kubelet may change (it sets the first and the panic ones at start)
SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"

die() { echo "kube.sh: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ctr_() { ctr -a "$CRI/containerd.sock" -n k8s.io "$@"; }

unpack() {
  mkdir -p "$BIN"
  for n in $BINARIES; do
    [ -x "$BIN/$n" ] && continue
    if [ -x "$KUBE_BIN_DIR/$n" ]; then cp "$KUBE_BIN_DIR/$n" "$BIN/$n.part"
    elif [ -f "$KUBE_BIN_DIR/$n.xz" ]; then xz -dc "$KUBE_BIN_DIR/$n.xz" > "$BIN/$n.part"
    else die "no $n in KUBE_BIN_DIR=$KUBE_BIN_DIR (Kubernetes v1.30+ binaries, plain or .xz; see README 'A cluster on this machine')"
    fi
    chmod +x "$BIN/$n.part" && mv "$BIN/$n.part" "$BIN/$n"
  done
}

start() { # name cmd...: a new session, so `down` stops it and all it started by PID
  local n=$1; shift
  setsid nohup "$@" > "$RUN/logs/$n.log" 2>&1 < /dev/null 9>&- &  # 9: the `up` lock stays with `up`
  echo $! > "$RUN/pids/$n.pid"
}

wait_for() { # what seconds pidname cmd...
  local what=$1 seconds=$2 pidname=$3; shift 3
  for _ in $(seq $((seconds * 2))); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$RUN/pids/$pidname.pid")" 2>/dev/null || { tail -20 "$RUN/logs/$pidname.log" >&2; die "$pidname exited"; }
    sleep 0.5
  done
  tail -20 "$RUN/logs/$pidname.log" >&2; die "$what not ready after $seconds s"
}

certificates() {
  key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }
  key "$P/ca.key"
  openssl req -x509 -new -key "$P/ca.key" -subj "/CN=viadk8s-lab-ca" -days 30 -out "$P/ca.crt" 2>/dev/null
  sign() { # name subject extensions
    key "$P/$1.key"
    openssl req -new -key "$P/$1.key" -subj "$2" -out "$P/$1.csr" 2>/dev/null
    printf '%s\n' "$3" > "$P/$1.ext"
    openssl x509 -req -in "$P/$1.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial -days 30 \
      -extfile "$P/$1.ext" -out "$P/$1.crt" 2>/dev/null
  }
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  sign apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  sign admin "/O=system:masters/CN=viadk8s-admin" "$client"
  sign kcm "/CN=system:kube-controller-manager" "$client"
  sign scheduler "/CN=system:kube-scheduler" "$client"
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  sign kubelet "/O=system:nodes/CN=system:node:$NODE" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth,serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost"
  openssl genrsa -out "$P/sa.key" 2048 2>/dev/null
  openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
  chmod 600 "$P"/*.key
  for user in admin kcm scheduler kubelet; do
    cat > "$RUN/$user.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$P/ca.crt"}
users:
- name: $user
  user: {client-certificate: "$P/$user.crt", client-key: "$P/$user.key"}
contexts:
- name: lab
  context: {cluster: lab, user: $user, namespace: default}
current-context: lab
EOF
  done
}

control_plane() {
  start etcd etcd --name lab --data-dir "$RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "lab=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new
  wait_for etcd 30 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health"
  start kube-apiserver "$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" --endpoint-reconciler-type=none \
    --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" --client-ca-file="$P/ca.crt" \
    --kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$P/ca.crt" --kubelet-preferred-address-types=Hostname \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --authorization-mode=Node,RBAC --profiling=false --v=1
  wait_for kube-apiserver 120 kube-apiserver \
    curl -sf --cacert "$P/ca.crt" --cert "$P/admin.crt" --key "$P/admin.key" "https://127.0.0.1:$API_PORT/readyz"
  start kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$RUN/kcm.kubeconfig" \
    --authentication-kubeconfig="$RUN/kcm.kubeconfig" --authorization-kubeconfig="$RUN/kcm.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --service-account-private-key-file="$P/sa.key" \
    --root-ca-file="$P/ca.crt" --use-service-account-credentials=true \
    --node-monitor-grace-period=1h --leader-elect=false --profiling=false --v=1
  start kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$RUN/scheduler.kubeconfig" \
    --authentication-kubeconfig="$RUN/scheduler.kubeconfig" --authorization-kubeconfig="$RUN/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --leader-elect=false --profiling=false --v=1
  wait_for kube-controller-manager 60 kube-controller-manager curl -skf "https://127.0.0.1:$KCM_PORT/healthz"
  wait_for kube-scheduler 60 kube-scheduler curl -skf "https://127.0.0.1:$SCHED_PORT/healthz"
}

pause_image() { # the sandbox image, built once from the static pause binary with buildah
  local ref=registry.k8s.io/pause:3.10 archive=$KUBE_HOME/pause.oci.tar
  ctr_ images check "name==$ref" 2>/dev/null | grep -q complete && return 0
  if [ ! -f "$archive" ]; then
    local box; box=$(buildah from scratch)
    buildah copy "$box" "$BIN/pause" /pause >/dev/null
    buildah config --entrypoint '["/pause"]' "$box"
    buildah commit --quiet "$box" "$ref" >/dev/null
    buildah rm "$box" >/dev/null
    podman save --quiet --format oci-archive -o "$archive.part" "$ref" && mv "$archive.part" "$archive"
  fi
  ctr_ images import "$archive" >/dev/null
}

node() {
  grep -q " $KUBE_HOME/" /proc/mounts && die "mounts left under $KUBE_HOME: run scripts/kube.sh down first"
  rm -rf "$CRI/state" "$KUBE_HOME/kubelet"   # containerd's images (root) are kept: loading is the slow part
  mkdir -p "$CRI/cni-bin" "$CRI/cni-conf" "$KUBE_HOME/kubelet/root" "$KUBE_HOME/kubelet/pod-logs"
  containerd config default 2>/dev/null | sed \
    -e "s#^root = .*#root = \"$CRI/root\"#" -e "s#^state = .*#state = \"$CRI/state\"#" \
    -e "/^\[grpc\]/,/^\[/ s#^  address = .*#  address = \"$CRI/containerd.sock\"#" \
    -e "/^\[ttrpc\]/,/^\[/ s#^  address = .*#  address = \"$CRI/containerd-ttrpc.sock\"#" \
    -e "s#bin_dir = \"/opt/cni/bin\"#bin_dir = \"$CRI/cni-bin\"#" \
    -e "s#conf_dir = \"/etc/cni/net.d\"#conf_dir = \"$CRI/cni-conf\"#" \
    -e 's#sandbox_image = .*#sandbox_image = "registry.k8s.io/pause:3.10"#' \
    -e 's#restrict_oom_score_adj = false#restrict_oom_score_adj = true#' > "$CRI/config.toml"
  ln -sf /usr/lib/cni/loopback "$CRI/cni-bin/loopback"
  echo '{"cniVersion":"1.0.0","name":"lab-lo","plugins":[{"type":"loopback"}]}' > "$CRI/cni-conf/99-loopback.conflist"
  start containerd containerd --config "$CRI/config.toml"
  wait_for containerd 20 containerd ctr -a "$CRI/containerd.sock" version
  pause_image
  cat > "$RUN/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
protectKernelDefaults: false
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $P/kubelet.crt
tlsPrivateKeyFile: $P/kubelet.key
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: $P/ca.crt}}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$CRI/containerd.sock
imageServiceEndpoint: unix://$CRI/containerd.sock
podLogsDir: $KUBE_HOME/kubelet/pod-logs
resolvConf: /etc/resolv.conf
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: 200Mi, nodefs.available: 2%, imagefs.available: 2%}
EOF
  # what the kubelet is about to change, for `down` (written before it starts, so every exit path restores it)
  for s in $SYSCTLS; do echo "$s=$(sysctl -n "$s")"; done > "$RUN/sysctl-before.txt"
  start kubelet nice -n 10 "$BIN/kubelet" --config="$RUN/kubelet-config.yaml" --kubeconfig="$RUN/kubelet.kubeconfig" \
    --root-dir="$KUBE_HOME/kubelet/root" --hostname-override=$NODE --v=1
  local kubectl="$BIN/kubectl --kubeconfig $RUN/admin.kubeconfig"
  wait_for "node $NODE" 120 kubelet sh -c \
    "[ \"\$($kubectl get node $NODE -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}')\" = True ]"
  $kubectl patch node $NODE --subresource=status --type=json \
    -p "[{\"op\":\"add\",\"path\":\"/status/capacity/nvidia.com~1gpu\",\"value\":\"${KUBE_GPUS:-1}\"}]" >/dev/null
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (containerd, the kubelet's cgroups and mounts)"
  for tool in etcd containerd runc openssl curl xz buildah podman; do
    command -v "$tool" >/dev/null || die "$tool is missing: apt-get install etcd-server containerd runc containernetworking-plugins openssl curl xz-utils podman buildah"
  done
  [ -x /usr/lib/cni/loopback ] || die "/usr/lib/cni/loopback is missing: apt-get install containernetworking-plugins"
  mkdir -p "$KUBE_HOME"
  exec 9>"$KUBE_HOME/.up.lock"  # two `up`s on one KUBE_HOME at once: the second stops here, touching nothing
  flock -n 9 || die "another scripts/kube.sh up is starting a cluster in $KUBE_HOME"
  if ls "$RUN"/pids/*.pid >/dev/null 2>&1; then
    for f in "$RUN"/pids/*.pid; do kill -0 "$(cat "$f")" 2>/dev/null && die "already running ($f): scripts/kube.sh down"; done
  fi
  [ -f "$RUN/sysctl-before.txt" ] && die "a previous cluster was not torn down (its saved kernel settings are in $RUN): scripts/kube.sh down"
  unpack
  trap 'echo "kube.sh: up failed, tearing down" >&2; down' EXIT
  trap 'exit 130' INT TERM
  rm -rf "$RUN"; mkdir -p "$RUN"/{pki,pids,logs,etcd}; chmod 700 "$RUN/etcd"
  API_PORT=$(free_port) ETCD_PORT=$(free_port) ETCD_PEER_PORT=$(free_port) KCM_PORT=$(free_port)
  SCHED_PORT=$(free_port) KUBELET_PORT=$(free_port) KUBELET_HEALTHZ_PORT=$(free_port)
  echo "API_PORT=$API_PORT" > "$RUN/ports.env"
  certificates
  control_plane
  node
  trap - EXIT INT TERM
  env_
}

env_() {
  [ -f "$RUN/admin.kubeconfig" ] || die "no cluster in $KUBE_HOME: scripts/kube.sh up"
  echo "export KUBECONFIG=$RUN/admin.kubeconfig PATH=$BIN:\$PATH"
}

load() { # IMAGE: from podman's storage into the node's containerd, unless that exact image is there
  local image=${1:?usage: scripts/kube.sh load IMAGE} id stamp archive
  id=$(podman image inspect --format '{{.Id}}' "$image") || die "no image $image in podman: make image-local"
  stamp=$KUBE_HOME/loaded/$(echo "$image" | tr '/:' '__')
  if [ "$(cat "$stamp" 2>/dev/null)" = "$id" ] && ctr_ images check "name==$image" | grep -q complete; then
    echo "image $image already on the node"; return 0
  fi
  mkdir -p "$KUBE_HOME/loaded"
  archive=$(mktemp -p "$KUBE_HOME" image.XXXXXX.tar)
  # the archive names the image (org.opencontainers.image.ref.name); layers the node has are not unpacked again
  if ! { podman save --quiet --format oci-archive -o "$archive" "$image" && ctr_ images import "$archive" >/dev/null; }; then
    rm -f "$archive"; die "loading $image into the node failed"
  fi
  rm -f "$archive"
  echo "$id" > "$stamp"
  echo "image $image loaded"
}

stop() { # name: by PID file, TERM then KILL
  local f=$RUN/pids/$1.pid pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null
  fi
  rm -f "$f"
}

down() {
  stop kubelet
  if [ -f "$RUN/pids/containerd.pid" ] && kill -0 "$(cat "$RUN/pids/containerd.pid")" 2>/dev/null; then
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    sleep 1
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true; done
    for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
  fi
  stop containerd
  for pid in $(pgrep -f "containerd-shim.*$CRI/" || true); do kill -KILL "$pid" 2>/dev/null || true; done
  for n in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$n"; done
  { awk '{print $2}' /proc/mounts | grep "^$KUBE_HOME/" || true; } | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice /sys/fs/cgroup/kubepods /sys/fs/cgroup/kubepods.slice; do
    if [ -d "$d" ]; then find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
  done
  if [ -f "$RUN/sysctl-before.txt" ]; then
    while read -r kv; do sysctl -q -w "$kv" || echo "kube.sh: could not restore $kv" >&2; done < "$RUN/sysctl-before.txt"
    rm -f "$RUN/sysctl-before.txt"
  fi
  return 0
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  load) load "${2:-}" ;;
  env) env_ ;;
  *) echo "usage: scripts/kube.sh up|down|load IMAGE|env" >&2; exit 2 ;;
esac
