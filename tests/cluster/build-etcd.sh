#!/usr/bin/env bash
# Builds the etcd server binary (go.etcd.io/etcd/server/v3 main package) at the pinned v3.5 tag
# from etcd-builder/go.mod into $ETCD_BIN, unless already there.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ -x "$ETCD_BIN/etcd" ] && exit 0
mkdir -p "$ETCD_BIN.tmp" "$GOMODCACHE" "$GOCACHE"
cd "$HARNESS_DIR/etcd-builder"
log "building etcd $ETCD_VERSION (toolchain $GO_TOOLCHAIN) ..."
go mod download
/usr/bin/time -f "etcd elapsed=%e s maxrss=%M KiB" -o "$ETCD_BIN.tmp/build-stats.txt" \
  go build -trimpath -ldflags "-s -w" -o "$ETCD_BIN.tmp/etcd" go.etcd.io/etcd/server/v3
cat "$ETCD_BIN.tmp/build-stats.txt" >&2
mv "$ETCD_BIN.tmp" "$ETCD_BIN"
log "etcd ready in $ETCD_BIN"
