"""The value types of environment variables: booleans as the guide writes them, empty meaning unset, and the
values the vLLM container's entrypoint turns into flags (ADDITIONAL_ARGS, NVIDIA_VISIBLE_DEVICES, …), and what
KODIFY_WORKERS=auto counts."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, PlainValidator, SecretStr

TRUE_WORDS = frozenset({"true", "1", "yes", "on", "y"})  # any case
_FALSE = {"false", "0", "no", "off", "n", ""}


def _parse_bool(value: Any) -> Any:
    """Booleans the way the guide's ENV files write them: true/True/1/yes, and an empty value is off."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in TRUE_WORDS:
            return True
        if lowered in _FALSE:
            return False
    return value


def empty_to_default(default: str) -> Any:
    """An empty ENV-file value (`AUTH_TYPE=`) means the default, as if the line were absent."""
    return lambda value: default if isinstance(value, str) and not value.strip() else value


def _empty_to_none(value: Any) -> Any:
    """An ENV-file line `NAME=` means "not set", as docker compose passes it."""
    return None if isinstance(value, str) and not value.strip() else value


def parse_workers(value: Any) -> Literal["auto"] | int:
    """KODIFY_WORKERS: `auto` (any case; empty means auto too) or a whole number 1-512."""
    text = str(value).strip().lower()
    if text in {"", "auto"}:
        return "auto"
    if not text.isdigit() or not 1 <= int(text) <= 512:
        raise ValueError("not auto or a whole number 1-512")
    return int(text)


Flag = Annotated[bool, BeforeValidator(_parse_bool)]
# `auto` (the CPUs this process may use) or how many server processes to run
WorkerCount = Annotated[Literal["auto"] | int, PlainValidator(parse_workers)]
OptStr = Annotated[str | None, BeforeValidator(_empty_to_none)]
OptSecret = Annotated[SecretStr | None, BeforeValidator(_empty_to_none)]

# --- Model server (deployment issue, docs/deployment.md): values the vLLM container's entrypoint turns into flags ---

_GPU_ID = re.compile(r"\d+|GPU-[0-9A-Fa-f-]+|MIG-[0-9A-Za-z/-]+")
_ALLOC_CONF = re.compile(r"\w+:[^,:\s]+(,\w+:[^,:\s]+)*")
_PARALLEL_FLAGS = {"--tensor-parallel-size": 0, "-tp": 0, "--pipeline-parallel-size": 1, "-pp": 1}


def vllm_extra_args(raw: str) -> list[str]:
    """ADDITIONAL_ARGS split as the entrypoint splits it; the guide's `--flag = value` is joined to `--flag=value`."""
    if any(char in raw for char in "'\"\\$`"):
        raise ValueError("quotes, backslashes, $ and ` are not supported: flags and values can't contain spaces")
    args = re.sub(r" *= *", "=", raw.strip()).split()
    if args and not args[0].startswith("-"):
        raise ValueError(f"it must start with a flag such as --tensor-parallel-size, not {args[0]!r}")
    return args


def gpus_needed(args: list[str]) -> int:
    """tensor-parallel-size x pipeline-parallel-size named in vLLM arguments (1 each when absent)."""
    sizes = [1, 1]
    for index, arg in enumerate(args):
        flag, equals, value = arg.partition("=")
        slot = _PARALLEL_FLAGS.get(flag.replace("_", "-"))
        if slot is None:
            continue
        value = value if equals else (args[index + 1] if index + 1 < len(args) else "")
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{flag} needs a whole number >= 1, got {value!r}")
        sizes[slot] = int(value)
    return sizes[0] * sizes[1]


def visible_device_count(raw: str) -> int | None:
    """How many GPUs NVIDIA_VISIBLE_DEVICES lists; None for `all`, 0 for NVIDIA's `none` and `void`."""
    if raw.strip().lower() == "all":
        return None
    if raw.strip().lower() in ("none", "void"):
        return 0
    ids = [part.strip() for part in raw.split(",")]
    if not all(_GPU_ID.fullmatch(part) for part in ids):
        raise ValueError("list GPU indices or UUIDs separated by commas (e.g. 0,1), or write all")
    return len(ids)


def _valid_extra_args(value: str | None) -> str | None:
    if value is not None:
        gpus_needed(vllm_extra_args(value))
    return value


def _valid_devices(value: str | None) -> str | None:
    if value is not None:
        visible_device_count(value)
    return value


def _valid_alloc_conf(value: str | None) -> str | None:
    if value is not None and not _ALLOC_CONF.fullmatch(value.strip()):
        raise ValueError("expected KEY:VALUE pairs separated by commas")
    return value


OptFloat = Annotated[float | None, BeforeValidator(_empty_to_none)]
OptInt = Annotated[int | None, BeforeValidator(_empty_to_none)]
VllmDtype = Annotated[
    Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None, BeforeValidator(_empty_to_none)
]
VllmArgs = Annotated[str | None, BeforeValidator(_empty_to_none), AfterValidator(_valid_extra_args)]
GpuList = Annotated[str | None, BeforeValidator(_empty_to_none), AfterValidator(_valid_devices)]
AllocConf = Annotated[str | None, BeforeValidator(_empty_to_none), AfterValidator(_valid_alloc_conf)]
ZeroOne = Annotated[Literal["0", "1"] | None, BeforeValidator(_empty_to_none)]
MultiprocMethod = Annotated[Literal["spawn", "fork"] | None, BeforeValidator(_empty_to_none)]


# --- KODIFY_WORKERS=auto ---


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask, bounded by a cgroup CPU quota (containers) if one is set."""
    count = len(os.sched_getaffinity(0))
    quota = _cgroup_quota()
    return max(1, min(count, math.ceil(quota))) if quota is not None else count


def _cgroup_quota() -> float | None:
    """CPUs allowed by the cgroup (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`); None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def resolve_workers(setting: Literal["auto"] | int) -> int:
    """KODIFY_WORKERS (or --workers) as a number of processes."""
    return available_cpus() if setting == "auto" else setting
