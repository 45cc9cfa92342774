#!/usr/bin/env bash
# Builds kube-router (github.com/cloudnativelabs/kube-router/v2, the NetworkPolicy firewall of the
# test cluster) at the pinned version from kube-router-builder/go.mod into $KUBE_ROUTER_BIN,
# unless already there. Time and peak memory go to $KUBE_ROUTER_BIN/build-stats.txt.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ -x "$KUBE_ROUTER_BIN/kube-router" ] && exit 0
rm -rf "$KUBE_ROUTER_BIN.tmp"
mkdir -p "$KUBE_ROUTER_BIN.tmp" "$GOMODCACHE" "$GOCACHE"
cd "$HARNESS_DIR/kube-router-builder"
log "building kube-router $KUBE_ROUTER_VERSION (toolchain $GO_TOOLCHAIN) ..."
go mod download
v=github.com/cloudnativelabs/kube-router/v2/pkg/version
/usr/bin/time -f "kube-router elapsed=%e s maxrss=%M KiB" -o "$KUBE_ROUTER_BIN.tmp/build-stats.txt" \
  go build -trimpath -ldflags "-s -w -X $v.Version=$KUBE_ROUTER_VERSION" \
  -o "$KUBE_ROUTER_BIN.tmp/kube-router" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
cat "$KUBE_ROUTER_BIN.tmp/build-stats.txt" >&2
mv "$KUBE_ROUTER_BIN.tmp" "$KUBE_ROUTER_BIN"
log "kube-router ready in $KUBE_ROUTER_BIN"
