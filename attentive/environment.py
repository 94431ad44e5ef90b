"""What a run's numbers depend on beyond its config and seed: the machine and the library versions.

A training run repeats bit for bit only where these are the same. oneDNN picks its convolution kernels by the
CPU's instruction set and splits its sums by the thread count, so the last digits of a gradient, and from there
the whole trajectory, change with the CPU type or `num_threads`; another torch, numpy or xgboost (the predictor
that picks the subnets) can change them as well. The trainer records this beside every run
(`environment.json`, one entry per start or resume, see `record_start`) and says what changed when a run is
resumed elsewhere; the latency tables keep it as their `meta` (`describe_environment`).
"""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from .fileio import check_format, read_json_file, write_json_atomic

ENVIRONMENT_NAME = "environment.json"
FORMAT, FORMAT_VERSION = "attentive-environment", 1
# Versions recorded; a package that is not installed is recorded as None.
PACKAGES = ("torch", "torchvision", "numpy", "timm", "xgboost", "scikit-learn", "onnxruntime")
# CPU flags that decide which oneDNN / ATen kernels run.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
# What can change a run's numbers (the rest, such as the OS and the date, is recorded for the reader only).
NUMERIC_KEYS = ("cpu", "cpu_id", "cpu_flags", "cpu_capability", "onednn", "threads", "gpu", "cuda", "packages")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (Linux); empty elsewhere."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block ends at the first blank line
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _onednn_version() -> str | None:
    match = re.search(r"(?:oneDNN|MKL-DNN) v([\w.]+)", torch.__config__.show())
    return match.group(1) if match else None


def _package_version(name: str) -> str | None:
    if name == "torch":
        return torch.__version__  # with its build tag (+cpu, +cu130): the wheels differ
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_environment(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """The machine and libraries this process computes with: CPU model, family/model/stepping/microcode, the
    instruction-set flags oneDNN dispatches on, torch's CPU capability, oneDNN's version, intra-op `threads`
    (default: torch's current setting), the GPU and CUDA on a `cuda` device, package versions, OS, Python, date."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    env: dict[str, Any] = {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_id": "/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping", "microcode")),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn": _onednn_version(),
        "threads": torch.get_num_threads() if threads is None else threads,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "cuda": torch.version.cuda if device == "cuda" else None,
        "packages": {name: _package_version(name) for name in PACKAGES},
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    # Kept at the top level, where latency tables have always had them.
    env["torch"], env["onnxruntime"] = torch.__version__, env["packages"]["onnxruntime"]
    return env


def environment_summary(env: dict[str, Any] | None = None) -> str:
    """One line for a benchmark's output: "AMD EPYC (25/17/1/0x1000065), AVX512, 2 threads, torch 2.14.1,
    oneDNN 3.12.0" (and the GPU where there is one); `env` defaults to this process's `describe_environment()`."""
    env = describe_environment() if env is None else env
    gpu = f", {env['gpu']} (CUDA {env['cuda']})" if env.get("gpu") else ""
    return (f"{env['cpu']} ({env['cpu_id']}), {env['cpu_capability']}, {env['threads']} threads, "
            f"torch {env['packages']['torch']}, oneDNN {env['onednn']}{gpu}")


def environment_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two `describe_environment` records in a way that can change numbers, one
    "key: before -> after" line each (package versions one line per package); empty when nothing does."""
    changes = []
    for key in NUMERIC_KEYS:
        old, new = before.get(key), after.get(key)
        if key == "packages":
            old, new = old or {}, new or {}
            changes += [f"{name}: {old.get(name)} -> {new.get(name)}" for name in sorted(set(old) | set(new))
                        if old.get(name) != new.get(name)]
        elif old != new:
            changes.append(f"{key}: {old} -> {new}")
    return changes


def group_by_machine(per_rank: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ranks' environments, one entry per distinct environment (the date aside) with the ranks that share it."""
    groups: list[dict[str, Any]] = []
    for rank, env in enumerate(per_rank):
        env = {k: v for k, v in env.items() if k != "date"}
        for group in groups:
            if {k: v for k, v in group.items() if k != "ranks"} == env:
                group["ranks"].append(rank)
                break
        else:
            groups.append({"ranks": [rank], **env})
    return groups


def record_start(run_dir: str | Path, per_rank: Sequence[dict[str, Any]], step: int, resumed: bool) -> list[str]:
    """Record this start (global `step`, every rank's environment) in `run_dir/environment.json`, written
    atomically: a new record for a fresh run, appended to the run's record when `resumed`. Returns what changed
    since the previous start (`environment_changes`, prefixed with the ranks where the run is spread over several
    machines); empty on a fresh run or a same-machine resume. A damaged or foreign record is a `BadFileError`
    naming it; a resumed run without one (recorded before this file existed) starts one."""
    path = Path(run_dir) / ENVIRONMENT_NAME
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "starts": []}
    if resumed and path.exists():
        record = check_format(read_json_file(path, "environment record"), path, FORMAT, FORMAT_VERSION,
                              "an environment record")
    machines = group_by_machine(per_rank)
    changes: list[str] = []
    if record["starts"]:
        previous = record["starts"][-1]["machines"]
        if [m["ranks"] for m in previous] != [m["ranks"] for m in machines]:
            changes.append(f"machines: {len(previous)} distinct over {sum(len(m['ranks']) for m in previous)} ranks "
                           f"-> {len(machines)} over {len(per_rank)}")
        for old, new in zip(previous, machines):
            prefix = f"ranks {new['ranks']}: " if len(machines) > 1 else ""
            changes += [prefix + change for change in environment_changes(old, new)]
    record["starts"].append({"step": step, "world_size": len(per_rank),
                             "date": per_rank[0].get("date") if per_rank else None, "machines": machines})
    write_json_atomic(path, record)
    return changes
