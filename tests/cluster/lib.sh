# shellcheck shell=bash
# Common settings for tests/cluster/{up,down,build-*.sh}. Sourced, never run.

HARNESS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$HARNESS_DIR/../.." && pwd)

# ---- pinned versions -------------------------------------------------------------------------
K8S_VERSION=v1.31.0          # k8s.io/kubernetes (staging modules v0.31.0), see builder/go.mod
ETCD_VERSION=v3.5.17         # go.etcd.io/etcd/*/v3 (client/v2 v2.305.17), see etcd-builder/go.mod
KUBE_ROUTER_VERSION=v2.1.0   # github.com/cloudnativelabs/kube-router/v2, see kube-router-builder/go.mod
GO_TOOLCHAIN=go1.24.9        # GOTOOLCHAIN used for all builds (fetched through the module proxy)
# The engine image gets a copy of the host's interpreter (same path, same minor version): the
# base prefix of `python3` on PATH (a .venv's base is its pyenv interpreter), else this default.
PY_PREFIX=${KUBEMAGIC_ENGINE_PYTHON_PREFIX:-$(python3 -c 'import sys; print(sys.base_prefix)' 2>/dev/null || true)}
case "$PY_PREFIX" in ""|/usr|/usr/local) PY_PREFIX=/root/.pyenv/versions/3.11.7 ;; esac

# ---- locations -------------------------------------------------------------------------------
CACHE=${KUBEMAGIC_CLUSTER_CACHE:-/var/cache/kubemagic-cluster}
STATE=${KUBEMAGIC_CLUSTER_STATE:-/var/lib/kubemagic-cluster}
RUN=${KUBEMAGIC_CLUSTER_RUN:-/run/kubemagic-cluster}
LOGS=$STATE/logs
PIDS=$STATE/pids
PKI=$STATE/pki

BRIDGE=kmbr0
HOST_IP=10.88.0.1
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1   # the `kubernetes` Service
API_PORT=6443
NODE_NAME=kubemagic-node
IMAGE=kubemagic-engine:dev
IMAGE_REF=docker.io/library/kubemagic-engine:dev
PAUSE_REF=docker.io/library/kubemagic-pause:1
IPT_COMMENT=kubemagic-cluster

CONTAINERD_SOCK=$RUN/containerd/containerd.sock
CMDS=$STATE/cmd            # each component's command line, NUL-separated (tests/cluster/restart)

# Extra nodes (tests/cluster/node): node K (2..254) is 10.88.255.K on the bridge, its pods get
# 10.89.K.0/24; node 1's pods never get 10.88.255.x. POD_NET covers the pods of every node.
NODES=$STATE/nodes
POD_NET=10.88.0.0/15
NODE1_RANGE_END=10.88.254.254
NODE_CGROUP=kubemagic-nodes  # cgroupRoot of extra node NAME: /kubemagic-nodes/NAME

# Go: caches under the one cache dir, pinned toolchain.
export PATH=$PATH:/usr/local/go/bin
export GOMODCACHE=$CACHE/go/mod
export GOCACHE=$CACHE/go/build
export GOPATH=$CACHE/go/path
export GOTOOLCHAIN=$GO_TOOLCHAIN
export GOFLAGS=-mod=readonly
# These module versions are served by the proxy but missing from its checksum-db mirror; their
# hashes are pinned by the committed go.sum files instead.
export GONOSUMDB=k8s.io/cluster-bootstrap,k8s.io/dynamic-resource-allocation,k8s.io/kube-aggregator,k8s.io/pod-security-admission
export CGO_ENABLED=0

K8S_BIN=$CACHE/bin/k8s-$K8S_VERSION-$GO_TOOLCHAIN
ETCD_BIN=$CACHE/bin/etcd-$ETCD_VERSION-$GO_TOOLCHAIN
KUBE_ROUTER_BIN=$CACHE/bin/kube-router-$KUBE_ROUTER_VERSION-$GO_TOOLCHAIN
KUBECTL=$K8S_BIN/kubectl

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# hash of files/strings given on stdin
hash_stdin() { sha256sum | cut -c1-16; }

# alive = some thread of it still runs. Not alive: gone, or a zombie (our daemons are reaped by
# init, which may take a while) whose threads have all exited: when a multi-threaded process is
# SIGKILLed its main thread may be a zombie while the others still exit, holding its files and
# ports (a restarted etcd then found its port in use).
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ] && return 0
  [ "$(find "/proc/$1/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)" -gt 1 ]
}
pid_alive() { local p; p=$(cat "$PIDS/$1.pid" 2>/dev/null) && [ -n "$p" ] && alive "$p"; }

# One script at a time changes the cluster: up, down, node and restart hold $STATE.lock (fd 9)
# while they run. The scripts they call (down --stale from up; node from up and down) see
# KUBEMAGIC_CLUSTER_LOCKED=1 and do not wait for the lock their caller holds.
cluster_lock() {
  [ "${KUBEMAGIC_CLUSTER_LOCKED:-}" = 1 ] && return 0
  mkdir -p "$(dirname "$STATE")"
  exec 9>"$STATE.lock"
  flock -n 9 || { log "waiting for another tests/cluster/up, down, node or restart to finish"; flock 9; }
  export KUBEMAGIC_CLUSTER_LOCKED=1
}

# Starts a component detached in its own session (pid file and log under $STATE) and records its
# command line in $CMDS/NAME, so tests/cluster/restart can start it again exactly as it was.
start() {  # name command...
  local name=$1; shift
  mkdir -p "$CMDS" "$LOGS" "$PIDS"
  printf '%s\0' "$@" > "$CMDS/$name"
  : > "$LOGS/$name.log"
  launch "$name" "$@"
}
launch() {  # name command... ; like start, but appends to the log and records nothing
  local name=$1; shift
  KUBEMAGIC_CLUSTER_LOCKED='' setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 9>&- &  # not the lock
  echo $! > "$PIDS/$name.pid"
}

# Pods may talk to the host and to each other only: drop whatever they send beyond the pod
# networks of all nodes (POD_NET) and whatever comes from outside into them. In mangle FORWARD,
# which runs before the filter table: kube-router keeps its jump at the top of filter FORWARD and
# ACCEPTs there what passes the NetworkPolicies, so DROP rules behind it would never see that
# traffic. Also replaces the rules of a cluster started by an older up (filter table, or node 1's
# /16 only).
ensure_isolation_rules() {
  local rule table net
  for rule in "-s $POD_NET ! -d $POD_NET" "! -s $POD_NET -d $POD_NET"; do
    # shellcheck disable=SC2086
    iptables -w -t mangle -C FORWARD $rule -m comment --comment "$IPT_COMMENT" -j DROP 2>/dev/null ||
      iptables -w -t mangle -I FORWARD 1 $rule -m comment --comment "$IPT_COMMENT" -j DROP
  done
  for table in filter mangle; do
    for net in "$POD_CIDR" "$POD_NET"; do
      [ "$table/$net" = "mangle/$POD_NET" ] && continue
      for rule in "-s $net ! -d $net" "! -s $net -d $net"; do
        # shellcheck disable=SC2086
        while iptables -w -t $table -D FORWARD $rule -m comment --comment "$IPT_COMMENT" -j DROP 2>/dev/null; do :; done
      done
    done
  done
}

case "$STATE" in /*/*) ;; *) die "KUBEMAGIC_CLUSTER_STATE must be an absolute path below / (got '$STATE')" ;; esac
case "$RUN" in /*/*) ;; *) die "KUBEMAGIC_CLUSTER_RUN must be an absolute path below / (got '$RUN')" ;; esac

# Removes what kube-router's firewall put into the host; call it after kube-router stopped (its own
# `--cleanup-config` is reported to crash with a nil pointer in v2.1.0): the jumps to its chains from
# INPUT/FORWARD/OUTPUT, its filter-table chains (KUBE-ROUTER-*, KUBE-POD-FW-*, KUBE-NWPLCY-*), then
# its ipsets (KUBE-SRC-*, KUBE-DST-*, TMP-* of its atomic swaps; inet6: variants).
kube_router_cleanup() {
  local re='(KUBE-ROUTER-|KUBE-POD-FW-|KUBE-NWPLCY-)' chains chain rule s
  if command -v iptables >/dev/null; then
    chains=$(iptables -w -t filter -S 2>/dev/null | awk '/^-N / {print $2}' | grep -E "^$re")
    for chain in $chains; do  # jumps from other chains (theirs are flushed below)
      iptables -w -t filter -S 2>/dev/null | grep -E -- "-j $chain( |$)" | grep -vE "^-A $re" | sed 's/^-A /-D /' |
        while read -r rule; do eval "iptables -w -t filter $rule"; done
    done
    for chain in $chains; do iptables -w -t filter -F "$chain" 2>/dev/null; done
    for chain in $chains; do iptables -w -t filter -X "$chain" 2>/dev/null || log "could not remove iptables chain $chain"; done
  fi
  if command -v ipset >/dev/null; then
    for s in $(ipset list -n 2>/dev/null | grep -E '^(inet6:)?(KUBE-SRC-|KUBE-DST-|TMP-)'); do
      ipset destroy "$s" 2>/dev/null || log "could not destroy ipset $s"
    done
  fi
}
