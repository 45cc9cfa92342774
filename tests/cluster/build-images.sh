#!/usr/bin/env bash
# Builds the two images the cluster needs, without Docker or a registry, as OCI archives:
#   pause   docker.io/library/kubemagic-pause:1       a static C program (the CRI sandbox image)
#   engine  docker.io/library/kubemagic-engine:dev    Debian bookworm (debootstrap minbase) + a copy of
#           the host's Python ($PY_PREFIX, same path) + this repo's package and its dependencies
# The engine image has three layers, each cached in one OCI layout under $CACHE/images/oci:
#   base-<k>   rootfs + interpreter     key: the recipe below
#   deps-<k>   dependencies + numpy     key: base key + pyproject.toml
#   engine-<k> the kubemagic package    key: deps key + kubemagic/** + pyproject.toml
# so a change to the package's source costs seconds. Prints "PAUSE_TAR=..." and "ENGINE_TAR=..."
# on stdout (the caller imports them with `ctr images import`).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

IMG=$CACHE/images
LAYOUT=$IMG/oci
PY=$PY_PREFIX/bin/python3
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
SITE=$PY_PREFIX/lib/python$PYVER/site-packages
mkdir -p "$IMG"
[ -d "$LAYOUT" ] || umoci init --layout "$LAYOUT"

# (no grep -q after a pipe: with pipefail its early exit can fail the writer with SIGPIPE)
has_tag() { umoci ls --layout "$LAYOUT" 2>/dev/null | grep -x "$1" >/dev/null; }
# compile every .py under $1 to .pyc that is trusted without stat'ing the source (image is immutable)
compile_tree() { "$PY" -m compileall -q -f -j 0 --invalidation-mode unchecked-hash "$@" >/dev/null 2>&1 || true; }
# console scripts a layer installs (ipengine, kubemagic, ...) go on PATH via /usr/local/bin
link_scripts() {
  mkdir -p "$1/usr/local/bin"
  for b in "$1$PY_PREFIX"/bin/*; do
    [ -f "$b" ] && ln -sf "$PY_PREFIX/bin/${b##*/}" "$1/usr/local/bin/${b##*/}"
  done
  return 0
}
timed() { local t0=$SECONDS; "$@"; log "  ($1 ${2:-}: $((SECONDS - t0)) s)"; }

# ---------------------------------------------------------------- pause image
PAUSE_KEY=$( { echo oci-archive; cat "$HARNESS_DIR/images/pause.c"; } | hash_stdin)
PAUSE_TAR=$IMG/pause-$PAUSE_KEY.oci.tar
if [ ! -s "$PAUSE_TAR" ]; then
  log "building pause image"
  d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
  mkdir -p "$d/root"
  gcc -static -Os -o "$d/root/pause" "$HARNESS_DIR/images/pause.c"
  strip "$d/root/pause"
  umoci new --image "$LAYOUT:pause-$PAUSE_KEY"
  umoci insert --image "$LAYOUT:pause-$PAUSE_KEY" --history.comment pause "$d/root/pause" /pause
  umoci config --image "$LAYOUT:pause-$PAUSE_KEY" --no-history --config.entrypoint /pause \
    --config.user 65535:65535 --architecture amd64 --os linux
  skopeo copy -q "oci:$LAYOUT:pause-$PAUSE_KEY" "oci-archive:$PAUSE_TAR.tmp:$PAUSE_REF"
  mv "$PAUSE_TAR.tmp" "$PAUSE_TAR"
  rm -rf "$d"; trap - EXIT
fi

# ---------------------------------------------------------------- engine: base layer
DEBS=libssl3,libffi8,zlib1g,libbz2-1.0,liblzma5,libsqlite3-0,libreadline8,libncursesw6,libexpat1,libuuid1,libnsl2,libtirpc3,ca-certificates,procps,netbase,tini
BASE_RECIPE="bookworm minbase $DEBS python=$PY_PREFIX $("$PY" -VV) recipe=3"
BASE_KEY=$(echo "$BASE_RECIPE" | hash_stdin)
if ! has_tag "base-$BASE_KEY"; then
  log "building engine base layer (debootstrap bookworm minbase + $PY_PREFIX) - a few minutes"
  t0=$SECONDS
  R=$IMG/rootfs-$BASE_KEY
  if [ ! -f "$R/.debootstrap-done" ]; then
    rm -rf "$R"; mkdir -p "$R"
    debootstrap --variant=minbase --include="$DEBS" bookworm "$R" http://deb.debian.org/debian \
      > "$IMG/debootstrap.log" 2>&1 || { tail -30 "$IMG/debootstrap.log" >&2; die "debootstrap failed"; }
    touch "$R/.debootstrap-done"
  fi
  # trim what a container never needs
  rm -rf "$R"/var/cache/apt/* "$R"/var/lib/apt/lists/* "$R"/usr/share/doc/* "$R"/usr/share/man/* \
         "$R"/usr/share/info/* "$R"/usr/share/locale/* "$R"/var/log/* "$R"/.debootstrap-done
  # the interpreter, at the same path (its ELF rpath and scripts' shebangs point there)
  mkdir -p "$R$PY_PREFIX"
  tar -C "$PY_PREFIX" -cf - --exclude="lib/python$PYVER/site-packages/*" \
      --exclude="lib/python$PYVER/test" --exclude="lib/python$PYVER/idlelib" \
      --exclude="lib/python$PYVER/tkinter" --exclude="lib/python$PYVER/turtledemo" \
      --exclude="lib/python$PYVER/lib-dynload/_tkinter*" --exclude='__pycache__' \
      --exclude="lib/python$PYVER/config-*" --exclude='*.a' \
      bin/python3 bin/python "bin/python$PYVER" lib/libpython3.so "lib/libpython$PYVER.so" \
      "lib/libpython$PYVER.so.1.0" "lib/python$PYVER" | tar -C "$R$PY_PREFIX" -xf -
  mkdir -p "$R$SITE"
  chmod 755 "$R/root" "$R/root/.pyenv" "$R/root/.pyenv/versions"
  compile_tree "$R$PY_PREFIX/lib/python$PYVER"
  for b in python python3 "python$PYVER"; do ln -sf "$PY_PREFIX/bin/$b" "$R/usr/local/bin/$b"; done
  # user engine (uid 1000) for pods that run as non-root
  grep -q '^engine:' "$R/etc/passwd" || {
    echo 'engine:x:1000:1000:kubemagic engine:/home/engine:/bin/sh' >> "$R/etc/passwd"
    echo 'engine:x:1000:' >> "$R/etc/group"
    echo 'engine:!:19000::::::' >> "$R/etc/shadow"; }
  mkdir -p "$R/home/engine"; chown 1000:1000 "$R/home/engine"; chmod 1777 "$R/tmp"
  echo 'nameserver 127.0.0.1' > "$R/etc/resolv.conf"
  chroot "$R" "$PY_PREFIX/bin/python3" -c 'import ssl, ctypes, sqlite3, lzma, bz2, zlib, readline, uuid, json' \
    || die "the copied interpreter does not run in the base rootfs"
  # build under a work tag, name it only when complete (an interrupted build must not look done)
  umoci rm --image "$LAYOUT:work-base" 2>/dev/null || true
  umoci new --image "$LAYOUT:work-base"
  timed umoci insert --image "$LAYOUT:work-base" --history.comment "debootstrap bookworm + $PY_PREFIX" "$R" /
  umoci tag --image "$LAYOUT:work-base" "base-$BASE_KEY"
  umoci rm --image "$LAYOUT:work-base"
  rm -rf "$R"
  log "base layer built in $((SECONDS - t0)) s"
fi

# ---------------------------------------------------------------- engine: dependency layer
# keyed by the dependency list of pyproject.toml, not the whole file: other edits cost no rebuild
DEPS_LIST=$("$PY" -c '
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(list(p.get("dependencies", [])) + ["numpy", "pip"]))' "$REPO_DIR/pyproject.toml") \
  || die "cannot read the dependencies from pyproject.toml"
DEPS_KEY=$( { echo "$BASE_KEY deps=2"; echo "$DEPS_LIST"; } | hash_stdin)
if ! has_tag "deps-$DEPS_KEY"; then
  log "building engine dependency layer (pyproject.toml dependencies + numpy)"
  t0=$SECONDS
  S=$IMG/deps-stage; rm -rf "$S"; mkdir -p "$S"
  echo "$DEPS_LIST" > "$IMG/requirements.txt"
  "$PY" -m pip install -q --root "$S" --ignore-installed --no-warn-script-location --no-warn-conflicts \
    --no-compile -r "$IMG/requirements.txt" || die "pip install of the engine dependencies failed"
  compile_tree "$S$PY_PREFIX"
  link_scripts "$S"
  chmod -R a+rX "$S"
  umoci tag --image "$LAYOUT:base-$BASE_KEY" work-deps
  timed umoci insert --image "$LAYOUT:work-deps" --history.comment "dependencies of $(tr '\n' ' ' < "$IMG/requirements.txt")" "$S" /
  umoci tag --image "$LAYOUT:work-deps" "deps-$DEPS_KEY"
  umoci rm --image "$LAYOUT:work-deps"
  rm -rf "$S"
  log "dependency layer built in $((SECONDS - t0)) s"
fi

# ---------------------------------------------------------------- engine: project layer
project_files() {
  cd "$REPO_DIR"
  find kubemagic -type f ! -path '*/__pycache__/*' ! -name '*.pyc' 2>/dev/null | LC_ALL=C sort
  for f in pyproject.toml README.md LICENSE LICENSE.txt setup.cfg setup.py MANIFEST.in; do [ -f "$f" ] && echo "$f"; done
  return 0
}
ENGINE_KEY=$( { echo "$DEPS_KEY engine=3"; (cd "$REPO_DIR" && project_files | tr '\n' '\0' | xargs -0 sha256sum); } | hash_stdin)
ENGINE_TAR=$IMG/engine-$ENGINE_KEY.oci.tar
if [ ! -s "$ENGINE_TAR" ]; then
  t0=$SECONDS
  log "building engine project layer (kubemagic package, key $ENGINE_KEY)"
  W=$IMG/engine-src; S=$IMG/engine-stage; rm -rf "$W" "$S"; mkdir -p "$W" "$S"
  (cd "$REPO_DIR" && project_files | tar -cf - -T -) | tar -C "$W" -xf -
  [ -f "$W/README.md" ] || echo "kubemagic" > "$W/README.md"
  # build the wheel in a cached venv holding [build-system].requires (no per-build isolation env),
  # then install it for the image's interpreter path
  BREQ=$("$PY" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb")).get("build-system", {}).get("requires", ["setuptools", "wheel"])))' "$W/pyproject.toml")
  BENV=$IMG/buildenv-$(echo "$BREQ $("$PY" -VV)" | hash_stdin)
  if [ ! -x "$BENV/.ok" ]; then
    rm -rf "$BENV"; "$PY" -m venv "$BENV"
    echo "$BREQ" > "$BENV/requirements.txt"
    "$BENV/bin/python" -m pip install -q -r "$BENV/requirements.txt" > "$IMG/engine-pip.log" 2>&1 \
      || { cat "$IMG/engine-pip.log" >&2; die "installing the build requirements failed"; }
    touch "$BENV/.ok"; chmod +x "$BENV/.ok"
  fi
  { "$BENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$W/dist" "$W" &&
    "$PY" -m pip install -q --root "$S" --ignore-installed --no-deps --no-warn-script-location \
      --no-compile "$W"/dist/*.whl; } > "$IMG/engine-pip.log" 2>&1 \
    || { cat "$IMG/engine-pip.log" >&2; die "building/installing the repo's wheel failed"; }
  compile_tree "$S$PY_PREFIX"
  link_scripts "$S"
  chmod -R a+rX "$S"
  umoci tag --image "$LAYOUT:deps-$DEPS_KEY" "engine-$ENGINE_KEY"
  umoci insert --image "$LAYOUT:engine-$ENGINE_KEY" --history.comment "kubemagic from $REPO_DIR" "$S" /
  umoci config --image "$LAYOUT:engine-$ENGINE_KEY" --no-history \
    --config.env "PATH=/usr/local/bin:$PY_PREFIX/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --config.env PYTHONUNBUFFERED=1 --config.cmd python --config.workingdir /home/engine \
    --architecture amd64 --os linux
  skopeo copy -q "oci:$LAYOUT:engine-$ENGINE_KEY" "oci-archive:$ENGINE_TAR.tmp:$IMAGE_REF"
  mv "$ENGINE_TAR.tmp" "$ENGINE_TAR"
  rm -rf "$W" "$S"
  # keep only the current tags and archives (layers of older project versions are tiny, but add up)
  for t in $(umoci ls --layout "$LAYOUT"); do
    case $t in base-$BASE_KEY|deps-$DEPS_KEY|engine-$ENGINE_KEY|pause-$PAUSE_KEY) ;; *) umoci rm --image "$LAYOUT:$t" ;; esac
  done
  umoci gc --layout "$LAYOUT"
  for f in "$IMG"/engine-*.tar "$IMG"/pause-*.tar "$IMG"/buildenv-*; do
    [ "$f" = "$BENV" ] && continue
    case $f in "$ENGINE_TAR"|"$PAUSE_TAR") ;; *) rm -rf "$f" ;; esac
  done
  log "engine image built in $((SECONDS - t0)) s"
fi
echo "PAUSE_TAR=$PAUSE_TAR"
echo "ENGINE_TAR=$ENGINE_TAR"
echo "ENGINE_KEY=$ENGINE_KEY"
