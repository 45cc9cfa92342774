#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kubectl from the
# pinned k8s.io/kubernetes release (builder/go.mod) into $K8S_BIN, unless already there.
# Per-binary time and peak memory go to $K8S_BIN/build-stats.txt.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

BINS="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl"
ok=1
for b in $BINS; do [ -x "$K8S_BIN/$b" ] || ok=0; done
[ $ok = 1 ] && exit 0

mkdir -p "$K8S_BIN.tmp" "$GOMODCACHE" "$GOCACHE"
cd "$HARNESS_DIR/builder"
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ver="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
log "downloading modules for k8s.io/kubernetes $K8S_VERSION (toolchain $GO_TOOLCHAIN)"
go mod download
for b in $BINS; do
  [ -x "$K8S_BIN.tmp/$b" ] && continue
  log "building $b ..."
  /usr/bin/time -f "$b elapsed=%e s maxrss=%M KiB" -a -o "$K8S_BIN.tmp/build-stats.txt" \
    go build -trimpath -ldflags "-s -w $ver" -o "$K8S_BIN.tmp/$b.partial" "k8s.io/kubernetes/cmd/$b"
  mv "$K8S_BIN.tmp/$b.partial" "$K8S_BIN.tmp/$b"
  tail -1 "$K8S_BIN.tmp/build-stats.txt" >&2
done
mv "$K8S_BIN.tmp" "$K8S_BIN"
log "kubernetes binaries ready in $K8S_BIN"
