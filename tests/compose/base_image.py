"""The base of every image the Compose tier builds, made from Debian's packages (Docker Hub is out of reach): one
`debootstrap --variant=minbase` with everything the images need, cached as a tar and imported into the engine.

It stands in for the official Python image (PYTHON_IMAGE of Dockerfile and deploy/vllm-cpu.Dockerfile): Debian's
Python 3.11 refuses system-wide pip installs, so a venv is first on PATH and `python` and `pip` work unchanged. The
PostgreSQL stand-in (tests/compose/postgres/) is built on it too, so the images share this one layer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.compose.cache import CACHE, digest, drop_older
from tests.compose.engine import DockerError, docker, image_exists, keep_only, run

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# Python and its venv for the Python base; libnuma for vLLM's CPU kernels; ca-certificates for EXTRA_CA_CERTS
# (update-ca-certificates); PostgreSQL 15 for the stand-in.
PACKAGES = ("python3", "python3-venv", "ca-certificates", "libnuma1", "postgresql-15")
VENV = "/opt/python"
PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHANGES = (f"ENV PATH={PATH}", "ENV LANG=C.UTF-8")
# Nothing in the images reads these; the package lists and .deb files only make the layer bigger.
TRIMMED = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale")
RECIPE = json.dumps({"suite": SUITE, "packages": PACKAGES, "venv": VENV, "changes": CHANGES, "trimmed": TRIMMED})
REPOSITORY = "kodify-test/debian"
IMAGE = f"{REPOSITORY}:{SUITE}-{digest(RECIPE)}"


def base_image() -> str:
    """The base image's name: in the engine already, imported from the cached tar, or made now (about a minute)."""
    if image_exists(IMAGE):
        return IMAGE
    archive = CACHE / f"rootfs-{IMAGE.split(':')[1]}.tar"
    if not archive.exists():
        make_rootfs(archive)
        drop_older(archive, "rootfs-")
    changes = [arg for change in CHANGES for arg in ("--change", change)]
    docker("import", *changes, str(archive), IMAGE)
    keep_only(REPOSITORY, IMAGE.split(":")[1])
    return IMAGE


def make_rootfs(archive: Path) -> None:
    """debootstrap the root file system, add the venv, trim it, and write it to `archive` (whole or not at all)."""
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        raise DockerError(f"{IMAGE} is made with debootstrap, as root: install Debian's debootstrap, run as root")
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        root = Path(scratch) / "root"
        try:
            include = f"--include={','.join(PACKAGES)}"
            run(["debootstrap", "--variant=minbase", include, SUITE, str(root), MIRROR], timeout=900)
            # The package made a cluster (never started); the stand-in makes its own in the data volume.
            run(["chroot", str(root), "pg_dropcluster", "15", "main"])
            run(["chroot", str(root), "python3", "-m", "venv", VENV])
            for path in TRIMMED:
                shutil.rmtree(root / path)
                (root / path).mkdir()
            partial = archive.with_suffix(".partial")
            run(["tar", "-C", str(root), "-cf", str(partial), "."], timeout=300)
            partial.rename(archive)
        finally:
            _unmount_below(root)


def _unmount_below(root: Path) -> None:
    """Unmount what a failed debootstrap left mounted inside `root` (/proc, /sys), before the tree is removed."""
    prefix = f"{root}/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, timeout=60)
