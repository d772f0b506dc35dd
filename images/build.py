#!/usr/bin/env python3
"""Build the operator and runtime images without Docker: a Debian root file system from Debian packages
(mmdebstrap), the project installed into a virtual environment inside it (chroot), packed as an OCI image layout
by the few lines below. No container registry is involved: packages come from Debian, wheels from PyPI.

    python images/build.py                     # both images into out/images/oci (an OCI image layout)
    python images/build.py --image operator --check

Layers: the Debian base (shared by both images, cached by its package list) and /opt/wattkeeper (the venv).
`--check` unpacks each image with umoci (so the OCI layout itself is validated, not the build directory) and runs
its entry point inside the unpacked root file system with chroot: `wattkeeper run --help` for the operator,
`wattkeeper-runtime --help` and `drain --help` for the runtime image.

Needs root (mmdebstrap's root mode, chroot), mmdebstrap and GNU tar; umoci for --check. Everything slow is cached
under $WATTKEEPER_CACHE/images: the base tarball (about 30 s to make) and the wheelhouse.

The runtime image holds `wattkeeper-runtime` (NVML exporter with grpcio for the kubelet's pod-resources API, the
preStop drain, simulator, fleet runner, load generator, launcher) but not vLLM: vLLM 0.11.1 with CUDA torch is
several GB, so GPU pods run the stock vllm/vllm-openai image (the operator's preStop needs only its python3).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VERSION = "0.1.0"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "tzdata")
# Documentation, manuals and translations are not needed in an image.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
                 "/usr/share/lintian/*")  # fmt: skip
EPOCH = 0  # file times in the app layer, for reproducible layers
VENV = "/opt/wattkeeper"


@dataclass(frozen=True)
class ImageSpec:
    name: str
    requirements: tuple[str, ...]  # what pip installs from the wheelhouse
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    user: str
    ports: tuple[int, ...]
    env: dict[str, str] = field(default_factory=dict)
    checks: tuple[tuple[str, ...], ...] = ()  # argv (after the entry point) that must exit 0 with output


COMMON_ENV = {"PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"}  # fmt: skip

IMAGES = {
    "operator": ImageSpec(
        name="operator",
        requirements=("wattkeeper",),
        entrypoint=(f"{VENV}/bin/wattkeeper",),
        cmd=("run",),
        user="65532:65532",  # non-root; the chart also runs it with a read-only root file system
        ports=(8080, 8081),
        env={**COMMON_ENV, "MPLCONFIGDIR": "/tmp/matplotlib"},
        checks=(("run", "--help"),),
    ),
    "runtime": ImageSpec(
        name="runtime",
        requirements=("wattkeeper[runtime]", "grpcio"),
        entrypoint=(f"{VENV}/bin/wattkeeper-runtime",),
        cmd=("exporter",),
        user="0:0",  # the exporter reads NVML through the NVIDIA container runtime's device nodes
        ports=(9400,),
        env=dict(COMMON_ENV),
        checks=(("--help",), ("drain", "--help"), ("exporter", "--help")),
    ),
}


def log(text: str) -> None:
    print(f"[images] {text}", file=sys.stderr, flush=True)


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, **kwargs)


def cache_dir() -> Path:
    base = Path(os.environ.get("WATTKEEPER_CACHE", Path.home() / ".cache" / "wattkeeper"))
    path = base / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def missing_tools(check: bool) -> list[str]:
    """Why this machine cannot build (empty when it can)."""
    reasons = []
    if os.geteuid() != 0:
        reasons.append("not root (mmdebstrap's root mode and chroot need it)")
    for tool in ("mmdebstrap", "tar", "chroot", *(("umoci",) if check else ())):
        if shutil.which(tool) is None:
            reasons.append(f"{tool} not found (apt-get install mmdebstrap umoci)")
    return reasons


# --- the Debian base ----------------------------------------------------------------------------------------------


def base_tarball(cache: Path) -> Path:
    """The Debian root file system as a tarball, made once per package list."""
    key = hashlib.sha256(json.dumps([SUITE, MIRROR, BASE_PACKAGES, DPKG_EXCLUDES]).encode()).hexdigest()[:16]
    target = cache / f"base-{SUITE}-{key}.tar"
    if target.exists():
        log(f"base: cached {target.name}")
        return target
    log(f"base: mmdebstrap {SUITE} with {', '.join(BASE_PACKAGES)}")
    started = time.monotonic()
    partial = target.with_suffix(".partial.tar")
    run(["mmdebstrap", "--mode=root", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
         *[f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES],
         "--aptopt=Acquire::Retries 3", SUITE, str(partial), MIRROR])  # fmt: skip
    partial.rename(target)
    log(f"base: {target.stat().st_size / 1e6:.0f} MB in {time.monotonic() - started:.0f}s")
    return target


# --- wheels -------------------------------------------------------------------------------------------------------


def wheelhouse(cache: Path, work: Path) -> Path:
    """The project's wheel (built fresh) and its dependencies' wheels (cached by pyproject.toml)."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    house = cache / f"wheels-{key}"
    project = work / "project-wheel"
    # Built from a copy of the sources: setuptools would leave build/ and *.egg-info in the checkout.
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("operator", "runtime"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(project), str(source)])
    wheel = next(project.glob("wattkeeper-*.whl"))
    marker = house / ".complete"
    if not marker.exists():
        log("wheels: downloading the dependencies from PyPI")
        house.mkdir(parents=True, exist_ok=True)
        run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(house),
             f"{wheel}[runtime]", "grpcio"])  # fmt: skip
        marker.touch()
    for old in house.glob("wattkeeper-*.whl"):
        old.unlink()
    shutil.copy2(wheel, house / wheel.name)
    return house


# --- OCI ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    digest: str  # sha256:... of the stored (compressed) bytes
    size: int
    diff_id: str = ""  # sha256:... of the uncompressed layer


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def store_layer(layout: Path, tar_path: Path, cache: Path | None = None) -> Blob:
    """gzip a layer tarball into the layout's blobs (reusing a cached compression of the same tarball)."""
    diff_id = _sha256_file(tar_path)
    cached = cache / f"layer-{diff_id[:32]}.tar.gz" if cache else None
    if cached is not None and cached.exists():
        compressed = cached
    else:
        compressed = (cached or layout / "tmp-layer.tar.gz")
        with tar_path.open("rb") as src, gzip.GzipFile(compressed, "wb", compresslevel=6, mtime=0) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    digest = _sha256_file(compressed)
    blob = layout / "blobs" / "sha256" / digest
    if not blob.exists():
        shutil.copy2(compressed, blob) if cached is not None else compressed.rename(blob)
    elif cached is None:
        compressed.unlink()
    return Blob(f"sha256:{digest}", blob.stat().st_size, f"sha256:{diff_id}")


def store_json(layout: Path, value: Any) -> Blob:
    data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return Blob(f"sha256:{digest}", len(data))


def image_config(spec: ImageSpec, layers: list[Blob]) -> dict[str, Any]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Entrypoint": list(spec.entrypoint),
            "Cmd": list(spec.cmd),
            "Env": [f"{k}={v}" for k, v in sorted(spec.env.items())],
            "User": spec.user,
            "WorkingDir": "/",
            "ExposedPorts": {f"{port}/tcp": {} for port in spec.ports},
            "Labels": {
                "org.opencontainers.image.title": f"wattkeeper-{spec.name}",
                "org.opencontainers.image.version": VERSION,
                "org.opencontainers.image.licenses": "Apache-2.0",
                "org.opencontainers.image.base.name": f"debian:{SUITE} (mmdebstrap {', '.join(BASE_PACKAGES)})",
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created_by": f"mmdebstrap --variant=minbase {SUITE}"},
                    {"created_by": f"python3 -m venv {VENV} && pip install {' '.join(spec.requirements)}"}],
    }  # fmt: skip


def write_index(layout: Path, manifests: dict[str, Blob]) -> None:
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index_path = layout / "index.json"
    existing = json.loads(index_path.read_text()).get("manifests", []) if index_path.exists() else []
    refs = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in existing if m.get("annotations")}
    for ref, blob in manifests.items():
        refs[ref] = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": blob.digest,
                     "size": blob.size, "annotations": {"org.opencontainers.image.ref.name": ref}}  # fmt: skip
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [refs[k] for k in sorted(refs)]}  # fmt: skip
    index_path.write_text(json.dumps(index, indent=2))


# --- building -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch(parent: Path) -> Iterator[Path]:
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="build-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def install_app(rootfs: Path, house: Path, spec: ImageSpec) -> None:
    """A venv inside the Debian root file system, filled from the wheelhouse (no network in the chroot)."""
    shutil.copytree(house, rootfs / "tmp" / "wheels")
    env = {"PATH": COMMON_ENV["PATH"], "HOME": "/root", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "LANG": "C.UTF-8"}
    run(["chroot", str(rootfs), "python3", "-m", "venv", VENV], env=env)
    run(["chroot", str(rootfs), f"{VENV}/bin/pip", "install", "-q", "--no-index", "--find-links", "/tmp/wheels",
         "--no-cache-dir", *spec.requirements], env=env)  # fmt: skip
    shutil.rmtree(rootfs / "tmp" / "wheels")


def app_layer_tar(rootfs: Path, target: Path) -> None:
    """/opt/wattkeeper as a reproducible layer: sorted names, fixed times, root-owned."""
    run(["tar", "--sort=name", f"--mtime=@{EPOCH}", "--owner=0", "--group=0", "--numeric-owner", "--format=pax",
         "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime", "-C", str(rootfs), "-cf",
         str(target), VENV.lstrip("/")])  # fmt: skip


def build(names: list[str], out: Path) -> dict[str, dict[str, Any]]:
    cache = cache_dir()
    layout = out / "oci"
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    report: dict[str, dict[str, Any]] = {}
    with scratch(out / "work") as work:
        base_tar = base_tarball(cache)
        house = wheelhouse(cache, work)
        base = store_layer(layout, base_tar, cache)
        manifests: dict[str, Blob] = {}
        for name in names:
            spec = IMAGES[name]
            started = time.monotonic()
            rootfs = work / name / "rootfs"
            rootfs.mkdir(parents=True)
            run(["tar", "--numeric-owner", "-xpf", str(base_tar), "-C", str(rootfs)])
            install_app(rootfs, house, spec)
            app_tar = work / name / "app.tar"
            app_layer_tar(rootfs, app_tar)
            app = store_layer(layout, app_tar)
            config = store_json(layout, image_config(spec, [base, app]))
            manifest = store_json(layout, {
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest,
                           "size": config.size},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer.digest,
                            "size": layer.size} for layer in (base, app)],
            })  # fmt: skip
            ref = f"{name}-{VERSION}"
            manifests[ref] = manifest
            report[name] = {
                "ref": f"{layout}:{ref}",
                "manifest": manifest.digest,
                "compressed_bytes": base.size + app.size,
                "base_layer_bytes": base.size,
                "app_layer_bytes": app.size,
                "unpacked_bytes": base_tar.stat().st_size + app_tar.stat().st_size,
                "build_seconds": round(time.monotonic() - started, 1),
            }
            log(f"{name}: {report[name]['compressed_bytes'] / 1e6:.0f} MB compressed "
                f"({report[name]['unpacked_bytes'] / 1e6:.0f} MB unpacked), app layer "
                f"{app.size / 1e6:.0f} MB, {report[name]['build_seconds']}s")  # fmt: skip
        write_index(layout, manifests)
    return report


# --- checking -----------------------------------------------------------------------------------------------------


def check(name: str, out: Path) -> list[str]:
    """Unpack the image from the layout with umoci and run its entry point's checks in the root file system."""
    spec = IMAGES[name]
    layout = out / "oci"
    outputs = []
    with scratch(out / "work") as work:
        bundle = work / "bundle"
        run(["umoci", "unpack", "--image", f"{layout}:{name}-{VERSION}", str(bundle)], capture_output=True)
        index = json.loads((layout / "index.json").read_text())
        ref = next(m for m in index["manifests"]
                   if m["annotations"]["org.opencontainers.image.ref.name"] == f"{name}-{VERSION}")  # fmt: skip
        manifest = json.loads((layout / "blobs" / "sha256" / ref["digest"].split(":")[1]).read_text())
        config = json.loads((layout / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_text())
        entrypoint, env = config["config"]["Entrypoint"], config["config"]["Env"]
        uid, gid = config["config"]["User"].split(":")
        for argv in spec.checks:
            # The image's own user, environment and entry point, in its own root file system.
            command = ["chroot", f"--userspec={uid}:{gid}", str(bundle / "rootfs"), *entrypoint, *argv]
            done = subprocess.run(command, env=dict(e.split("=", 1) for e in env), capture_output=True, text=True,
                                  timeout=120, check=False)  # fmt: skip
            if done.returncode != 0 or not done.stdout.strip():
                raise RuntimeError(f"{name}: {' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
            outputs.append(f"$ {' '.join([*entrypoint, *argv])}\n{done.stdout.strip().splitlines()[0]}")
            log(f"{name}: `{' '.join([*entrypoint, *argv])}` ok")
    return outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", choices=[*IMAGES, "all"], default="all")
    parser.add_argument("--out", default=str(ROOT / "out" / "images"))
    parser.add_argument("--check", action="store_true", help="unpack with umoci and run the entry point")
    options = parser.parse_args()
    reasons = missing_tools(options.check)
    if reasons:
        print(f"cannot build images here: {'; '.join(reasons)}", file=sys.stderr)
        return 2
    names = list(IMAGES) if options.image == "all" else [options.image]
    out = Path(options.out)
    started = time.monotonic()
    report: dict[str, Any] = {"images": build(names, out)}
    if options.check:
        report["checks"] = {name: check(name, out) for name in names}
    report["total_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
