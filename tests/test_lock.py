"""The lock files hold pyproject.toml's dependencies pinned with hashes, and the image and bootstrap install from them.

Pure: pyproject.toml, the locks and the installed metadata of the locked packages are read, nothing is resolved or
fetched. Regenerating the locks is the command in their headers (docs/deployment.md, "Reproducible image")."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
RUNTIME = [Requirement(line) for line in PYPROJECT["project"]["dependencies"]]
DEV = [Requirement(line) for line in PYPROJECT["project"]["optional-dependencies"]["dev"]]
LOCKS = {"requirements.lock": RUNTIME, "requirements-dev.lock": RUNTIME + DEV}
# The image's platform (Dockerfile: python:3.11-slim-bookworm on amd64); the locks are universal, so a pin may carry
# a marker and the same package may be pinned twice (numpy, one per Python range).
TARGET: dict[str, str] = {
    "python_version": "3.11",
    "python_full_version": "3.11.13",
    "implementation_name": "cpython",
    "implementation_version": "3.11.13",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "platform_release": "",
    "platform_version": "",
    "os_name": "posix",
}


@dataclass(frozen=True)
class Pin:
    """One `name==version ; marker` entry of a lock with its hashes."""

    name: NormalizedName
    version: Version
    marker: Marker | None
    hashes: tuple[str, ...]


def parse_lock(text: str) -> list[Pin]:
    """Every entry of a pip requirements file with `--hash` options, as uv writes it."""
    joined = re.sub(r"\\\n", " ", text)
    pins = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        hashes = tuple(re.findall(r"--hash=(\S+)", line))
        requirement = Requirement(re.sub(r"\s*--hash=\S+", "", line))
        (spec,) = requirement.specifier  # exactly one specifier: a pin
        assert spec.operator == "==", f"{line!r} is not pinned with =="
        pins.append(Pin(canonicalize_name(requirement.name), Version(spec.version), requirement.marker, hashes))
    return pins


def applicable(pins: Iterable[Pin], environment: Mapping[str, str] = TARGET) -> dict[NormalizedName, Pin]:
    """The pins pip installs in `environment`, by name; two pins for one name there is an error."""
    chosen: dict[NormalizedName, Pin] = {}
    for pin in pins:
        if pin.marker is None or pin.marker.evaluate(dict(environment)):
            assert pin.name not in chosen, f"{pin.name} is pinned twice for {environment['python_full_version']}"
            chosen[pin.name] = pin
    return chosen


def unmet(requirements: Iterable[Requirement], pins: Mapping[NormalizedName, Pin], extra: str = "") -> list[str]:
    """What the pins fail to satisfy: a requirement (that applies here) missing, or pinned outside its specifier."""
    problems = []
    for requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate({**TARGET, "extra": extra}):
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement} is not in the lock")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement} is locked at {pin.version}")
    return problems


def load_pins(lock: str) -> dict[NormalizedName, Pin]:
    """The pins of a lock at the repo root that apply to the image's platform."""
    return applicable(parse_lock((REPO / lock).read_text()))


def extras_requirements(requirement: Requirement) -> list[tuple[str, Requirement]]:
    """(extra, dependency) for each extra the requirement asks for, from the installed package's metadata."""
    requires = importlib.metadata.requires(requirement.name) or []
    return [(extra, Requirement(line)) for extra in sorted(requirement.extras) for line in requires]


@pytest.mark.parametrize("lock", LOCKS)
def test_every_direct_requirement_is_pinned_within_its_specifier(lock: str) -> None:
    assert unmet(LOCKS[lock], load_pins(lock)) == []


@pytest.mark.parametrize("lock", LOCKS)
def test_the_extras_we_ask_for_are_locked(lock: str) -> None:
    # litellm[proxy] (its server) and psycopg[binary]: the extras' dependencies are in the lock too.
    pins = load_pins(lock)
    with_extras = [requirement for requirement in RUNTIME if requirement.extras]
    assert {canonicalize_name(r.name) for r in with_extras} >= {"litellm", "psycopg"}
    for requirement in with_extras:
        name = canonicalize_name(requirement.name)
        installed = Version(importlib.metadata.version(name))
        assert installed == pins[name].version, f"{name} {installed} is installed, the lock has it at {pins[name]}"
        for extra, dependency in extras_requirements(requirement):
            assert unmet([dependency], pins, extra) == [], f"{requirement.name}[{extra}]"


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_has_a_sha256_hash(lock: str) -> None:
    pins = parse_lock((REPO / lock).read_text())
    assert len(pins) > 100  # litellm[proxy] alone brings over a hundred
    assert [pin.name for pin in pins if not any(h.startswith("sha256:") for h in pin.hashes)] == []


def test_the_dev_lock_holds_every_runtime_pin_at_the_same_version() -> None:
    runtime = parse_lock((REPO / "requirements.lock").read_text())
    dev = {(pin.name, pin.version, pin.marker) for pin in parse_lock((REPO / "requirements-dev.lock").read_text())}
    assert [pin for pin in runtime if (pin.name, pin.version, pin.marker) not in dev] == []


@pytest.mark.parametrize("lock", LOCKS)
def test_the_lock_header_and_the_docs_give_the_same_regeneration_command(lock: str) -> None:
    header = (REPO / lock).read_text().splitlines()[:2]
    assert header[0] == "# This file was autogenerated by uv via the following command:"
    command = header[1].removeprefix("#").strip()
    assert command.startswith("uv pip compile pyproject.toml ") and command.endswith(f" -o {lock}")
    assert "--generate-hashes" in command and "--python-version 3.11" in command
    assert command in (REPO / "docs" / "deployment.md").read_text()


def pip_installs(path: str) -> list[str]:
    """Every `pip install` command of a Dockerfile or shell script: comments dropped, continuation lines joined."""
    lines = [line for line in (REPO / path).read_text().splitlines() if not line.lstrip().startswith("#")]
    return re.findall(r"pip install [^&\n]*", "\n".join(lines).replace("\\\n", " "))


@pytest.mark.parametrize(
    ("path", "locked", "project"),
    [
        ("Dockerfile", "pip install --require-hashes -r /opt/kodify-proxy/requirements.lock", "--no-deps"),
        ("scripts/bootstrap.sh", "pip install -q --require-hashes -r requirements-dev.lock", "--no-deps -e ."),
    ],
)
def test_the_image_and_bootstrap_install_only_from_their_lock(path: str, locked: str, project: str) -> None:
    installs = [line.strip() for line in pip_installs(path) if "--upgrade pip" not in line]
    assert installs[0] == locked
    # After the lock, only the project itself, and without its dependencies: pip resolves nothing else.
    assert installs[1:] and all(project in line for line in installs[1:]), installs


# The checks above can fail: each kind of drift, on a made-up lock.
LOCK_TEXT = """\
# This file was autogenerated by uv via the following command:
#    uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes -o requirements.lock
httpx==0.29.0 \\
    --hash=sha256:aa
    # via kodify-proxy (pyproject.toml)
numpy==2.4.6 ; python_full_version < '3.12' \\
    --hash=sha256:bb
numpy==2.5.5 ; python_full_version >= '3.12' \\
    --hash=sha256:cc
orjson==3.13.0
"""


@pytest.mark.parametrize(
    ("requirement", "problems"),
    [
        ("httpx>=0.27,<1", []),
        ("httpx>=0.27,<0.29", ["httpx<0.29,>=0.27 is locked at 0.29.0"]),
        ("numpy>=2.5", ["numpy>=2.5 is locked at 2.4.6"]),  # the pin for 3.11, not 3.12's
        ("pyyaml>=6.0,<7", ["pyyaml<7,>=6.0 is not in the lock"]),
        ("colorama ; sys_platform == 'win32'", []),  # not installed on the image's platform
    ],
)
def test_unmet_reports_a_lock_that_breaks_pyproject(requirement: str, problems: list[str]) -> None:
    assert unmet([Requirement(requirement)], applicable(parse_lock(LOCK_TEXT))) == problems


def test_a_pin_without_a_hash_is_found() -> None:
    pins = parse_lock(LOCK_TEXT)
    assert [(pin.name, pin.hashes) for pin in pins if not pin.hashes] == [("orjson", ())]


def test_a_range_in_a_lock_is_refused() -> None:
    with pytest.raises(AssertionError, match="not pinned with =="):
        parse_lock("httpx>=0.27 \\\n    --hash=sha256:aa\n")
