"""Builds the singleuser image kubemagic-singleuser:dev from the engine image, without Docker.

The engine image (tests/cluster/build-images.sh: base + dependencies + kubemagic, an OCI archive)
gets one more layer: JupyterHub's singleuser server and JupyterLab. That layer holds only what the
engine image lacks: pip resolves with the engine image's own package versions as constraints, and
every distribution the engine image already has (same name and version) is dropped from the layer.
So the layer does not depend on the kubemagic layer: it is cached by the engine image's package set
and the recipe, and a change to kubemagic/** costs only a new archive (engine blobs + the cached
layer blob + a new config and manifest), no pip run.

Run by tests/hub/build-singleuser.sh (which passes paths and versions in the environment); stdlib
only (runs with the interpreter that is copied into the image). Prints SINGLEUSER_TAR=... last.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ENGINE_TAR = Path(os.environ["ENGINE_TAR"])
OUT_DIR = Path(os.environ["SINGLEUSER_CACHE"])          # $CACHE/images/singleuser
PY = os.environ["PY"]                                    # the interpreter the image carries
PY_PREFIX = os.environ["PY_PREFIX"]
REF = os.environ.get("SINGLEUSER_REF", "docker.io/library/kubemagic-singleuser:dev")
PACKAGES = os.environ["SINGLEUSER_PACKAGES"].split()     # e.g. jupyterhub==6.1.1 jupyterlab==4.6.6
RECIPE = "singleuser-layer=3"
COMPOSE_RECIPE = "singleuser-image=2"
USER = "1000:1000"

DIST_INFO = re.compile(r"(?:^|/)site-packages/([^/]+)-([^/-]+)\.dist-info/METADATA$")


def log(msg: str) -> None:
    print(f"[hub {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def short(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ reading the engine archive
def read_archive(path: Path) -> tuple[dict, dict, dict[str, tarfile.TarInfo]]:
    """(manifest, config, members by blob digest) of a single-image OCI archive."""
    with tarfile.open(path) as t:
        members = {m.name: m for m in t.getmembers()}
        index = json.load(t.extractfile("index.json"))
        mdesc = index["manifests"][0]
        manifest = json.load(t.extractfile(blob_name(mdesc["digest"])))
        config = json.load(t.extractfile(blob_name(manifest["config"]["digest"])))
    return manifest, config, members


def blob_name(digest: str) -> str:
    algo, hexd = digest.split(":", 1)
    return f"blobs/{algo}/{hexd}"


def engine_distributions(manifest: dict) -> dict[str, str]:
    """{dist-info dir name: version} of every package in the engine image's site-packages.
    Cached per engine archive (reading the layers takes seconds)."""
    cache = OUT_DIR / f"dists-{ENGINE_TAR.name}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    dists: dict[str, str] = {}
    with tarfile.open(ENGINE_TAR) as outer:
        for layer in manifest["layers"]:
            f = outer.extractfile(blob_name(layer["digest"]))
            with tarfile.open(fileobj=f, mode="r|gz") as inner:
                for m in inner:
                    hit = DIST_INFO.search(m.name)
                    if hit:
                        dists[f"{hit.group(1)}-{hit.group(2)}"] = hit.group(2)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(dists, sort_keys=True))
    tmp.replace(cache)
    return dists


# ------------------------------------------------------------------ the jupyter layer
def build_layer(dists: dict[str, str], key: str) -> dict:
    """pip install PACKAGES into a stage dir, drop what the engine image has, tar+gzip it."""
    stage = OUT_DIR / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    constraints = OUT_DIR / "constraints.txt"
    # the engine image's versions, so the layer never shadows a package the engine has
    constraints.write_text("".join(f"{name.rsplit('-', 1)[0]}=={ver}\n" for name, ver in sorted(dists.items())
                                   if not name.lower().startswith("kubemagic-")))
    t0 = time.monotonic()
    res = subprocess.run(
        [PY, "-m", "pip", "install", "-q", "--root", str(stage), "--ignore-installed", "--no-compile",
         "--no-warn-script-location", "--no-warn-conflicts", "--disable-pip-version-check",
         "-c", str(constraints), *PACKAGES], capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"pip install of {' '.join(PACKAGES)} failed:\n{res.stdout}\n{res.stderr}")
    log(f"  (pip install {' '.join(PACKAGES)}: {time.monotonic() - t0:.0f} s)")
    pyver = "%d.%d" % sys.version_info[:2]
    site = stage / PY_PREFIX.lstrip("/") / f"lib/python{pyver}/site-packages"
    dropped = kept = 0
    for info in sorted(site.glob("*.dist-info")):
        if info.name[: -len(".dist-info")] not in dists:
            kept += 1
            continue
        # the engine image has this exact distribution: remove its files from the layer
        dropped += 1
        record = info / "RECORD"
        for line in record.read_text().splitlines() if record.is_file() else []:
            rel = line.rsplit(",", 2)[0]
            p = (site / rel).resolve()
            if p.is_file() and stage.resolve() in p.parents:
                p.unlink()
        shutil.rmtree(info, ignore_errors=True)
    for d in sorted(site.rglob("*"), key=lambda p: -len(p.parts)):  # empty package dirs
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    log(f"  ({kept} distributions in the layer, {dropped} already in the engine image)")
    subprocess.run([PY, "-m", "compileall", "-q", "-f", "-j", "0", "--invalidation-mode", "unchecked-hash",
                    str(stage / PY_PREFIX.lstrip("/"))], capture_output=True)
    # console scripts (jupyterhub-singleuser, jupyter-lab, ...) on PATH like the engine image's
    bindir = stage / PY_PREFIX.lstrip("/") / "bin"
    links = stage / "usr/local/bin"
    links.mkdir(parents=True, exist_ok=True)
    for b in sorted(bindir.iterdir()) if bindir.is_dir() else []:
        if b.is_file():
            (links / b.name).symlink_to(f"{PY_PREFIX}/bin/{b.name}")

    # a deterministic tar (sorted, root-owned, fixed mtime), gzip-compressed; the OCI digest is
    # of the compressed blob, the diff_id of the uncompressed tar
    raw = OUT_DIR / f"layer-{key}.tar"
    with tarfile.open(raw, "w", format=tarfile.PAX_FORMAT) as t:
        for p in sorted(stage.rglob("*")):
            rel = p.relative_to(stage).as_posix()
            ti = t.gettarinfo(str(p), arcname=rel)
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            ti.mtime = 0
            if ti.isreg():
                ti.mode |= 0o444
                if ti.mode & 0o100:
                    ti.mode |= 0o111
                with open(p, "rb") as f:
                    t.addfile(ti, f)
            else:
                if ti.isdir():
                    ti.mode |= 0o555
                t.addfile(ti)
    diff_id = "sha256:" + sha256_file(raw)
    gz = OUT_DIR / f"layer-{key}.tar.gz"
    with open(raw, "rb") as src, open(gz.with_suffix(".tmp"), "wb") as dst:
        with gzip.GzipFile(fileobj=dst, mode="wb", compresslevel=1, mtime=0) as z:
            shutil.copyfileobj(src, z, 1 << 20)
    gz.with_suffix(".tmp").replace(gz)
    raw.unlink()
    shutil.rmtree(stage, ignore_errors=True)
    meta = {"digest": "sha256:" + sha256_file(gz), "size": gz.stat().st_size, "diff_id": diff_id,
            "comment": f"{' '.join(PACKAGES)} (what the engine image lacks)"}
    (OUT_DIR / f"layer-{key}.json").write_text(json.dumps(meta))
    return meta


# ------------------------------------------------------------------ composing the archive
def compose(manifest: dict, config: dict, layer: dict, out: Path) -> None:
    config = json.loads(json.dumps(config))
    config["rootfs"]["diff_ids"].append(layer["diff_id"])
    config.setdefault("history", []).append({"created": "1970-01-01T00:00:00Z", "created_by": layer["comment"]})
    cc = config.setdefault("config", {})
    cc["User"] = USER                       # like jupyter/docker-stacks images: not root
    cc["WorkingDir"] = "/home/engine"
    env = [e for e in cc.get("Env", []) if not e.startswith("HOME=")]
    cc["Env"] = env + ["HOME=/home/engine"]
    cc["Cmd"] = ["jupyterhub-singleuser"]
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + hashlib.sha256(config_bytes).hexdigest(), "size": len(config_bytes)}
    new_manifest = dict(manifest)
    new_manifest["config"] = config_desc
    new_manifest["layers"] = manifest["layers"] + [{
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer["digest"],
        "size": layer["size"]}]
    manifest_bytes = json.dumps(new_manifest, separators=(",", ":")).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + hashlib.sha256(manifest_bytes).hexdigest(), "size": len(manifest_bytes),
        "annotations": {"org.opencontainers.image.ref.name": REF}}]}

    def add_bytes(t: tarfile.TarFile, name: str, data: bytes) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode = len(data), 0o644
        t.addfile(ti, io.BytesIO(data))

    tmp = out.with_suffix(".tmp")
    with tarfile.open(ENGINE_TAR) as src, tarfile.open(tmp, "w") as t:
        for d in ("blobs/", "blobs/sha256/"):
            ti = tarfile.TarInfo(d.rstrip("/"))
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            t.addfile(ti)
        for desc in manifest["layers"]:
            m = src.getmember(blob_name(desc["digest"]))
            t.addfile(m, src.extractfile(m))
        with open(OUT_DIR / f"layer-{layer['key']}.tar.gz", "rb") as f:
            ti = tarfile.TarInfo(blob_name(layer["digest"]))
            ti.size, ti.mode = layer["size"], 0o644
            t.addfile(ti, f)
        add_bytes(t, blob_name(config_desc["digest"]), config_bytes)
        add_bytes(t, blob_name(index["manifests"][0]["digest"]), manifest_bytes)
        add_bytes(t, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add_bytes(t, "index.json", json.dumps(index, separators=(",", ":")).encode())
    tmp.replace(out)


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    if not ENGINE_TAR.is_file():
        sys.exit(f"engine image archive {ENGINE_TAR} missing: run tests/cluster/up first")
    manifest, config, _ = read_archive(ENGINE_TAR)
    dists = engine_distributions(manifest)
    engine_dists = sorted(f"{k}" for k in dists if not k.lower().startswith("kubemagic-"))
    layer_key = short(RECIPE, sys.version, PY_PREFIX, *PACKAGES, *engine_dists)
    meta_file = OUT_DIR / f"layer-{layer_key}.json"
    if meta_file.is_file() and (OUT_DIR / f"layer-{layer_key}.tar.gz").is_file():
        layer = json.loads(meta_file.read_text())
    else:
        t0 = time.monotonic()
        log(f"building the singleuser layer ({' '.join(PACKAGES)}, key {layer_key})")
        layer = build_layer(dists, layer_key)
        log(f"singleuser layer built in {time.monotonic() - t0:.0f} s ({layer['size'] / 1e6:.0f} MB compressed)")
    layer["key"] = layer_key
    image_key = short(COMPOSE_RECIPE, ENGINE_TAR.name, layer_key, REF, USER)
    out = OUT_DIR / f"singleuser-{image_key}.oci.tar"
    if not out.is_file():
        t0 = time.monotonic()
        compose(manifest, config, layer, out)
        log(f"singleuser image archive written in {time.monotonic() - t0:.1f} s: {out.name}")
    # keep only the current archive and layer (older ones add up)
    for f in OUT_DIR.iterdir():
        if f.name.startswith("singleuser-") and f != out:
            f.unlink()
        elif f.name.startswith("layer-") and layer_key not in f.name:
            f.unlink()
        elif f.name.startswith("dists-") and f.name != f"dists-{ENGINE_TAR.name}.json":
            f.unlink()
    print(f"SINGLEUSER_TAR={out}")
    print(f"SINGLEUSER_KEY={image_key}")


if __name__ == "__main__":
    main()
