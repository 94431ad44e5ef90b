"""torch.distributed for supernet training: process group from torchrun's environment, one gradient all-reduce
per sandwich step, metric reductions, and JSON (not pickle) object exchange.

Why not DistributedDataParallel: a sandwich step runs n subnets, each touching a different subset of the
parameters. DDP would all-reduce after every backward (n times per step) unless n - 1 of them run under
`no_sync()`, and it needs `find_unused_parameters=True`, which walks the autograd graph after every forward.
Here gradients simply accumulate over the n subnets locally, then `all_reduce_gradients` averages them once, in
a few flat buckets (parameters that no subnet used carry zero gradients, exactly what DDP would send), so every
rank applies the same update. The result equals DDP's; the communication is one reduction per step, as DDP with
no_sync achieves at best, without its per-forward bookkeeping. The averaged losses ride along in the first
bucket, so a non-finite loss on any rank stops every rank at the same step.
"""
from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist

BUCKET_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: rank 0 writes files and shows progress."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


DEVICES = ("auto", "cpu", "cuda", "cuda:N")  # the device names resolve_device accepts (N: a GPU index)


def is_device_name(name: Any) -> bool:
    """Whether `resolve_device` accepts `name`: its format only, CUDA is not probed (the config checks with it)."""
    return isinstance(name, str) and (name in ("auto", "cpu", "cuda") or
                                      (name.startswith("cuda:") and name[5:].isdigit()))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The one parser of a device name: 'auto' (cuda when available) | 'cpu' | 'cuda' (this process's local rank)
    | 'cuda:N'. Raises ValueError naming the value and what is allowed; RuntimeError when CUDA is asked for but
    missing."""
    if not is_device_name(name):
        raise ValueError(f"unknown device {name!r}; allowed: {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but CUDA is not available on this machine; use cpu or auto")
    return torch.device("cuda", local_rank if name == "cuda" else int(name[5:]))


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str = "auto", backend: str = "auto", timeout_s: float = 1800) -> DistEnv:
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1), else a single-process env.

    Backend 'auto' is nccl on CUDA and gloo on CPU. Each process uses GPU `LOCAL_RANK`.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistEnv(device=resolve_device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local_rank)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError("dist_backend=nccl needs device=cuda; use gloo on cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout_s)}
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active(env: DistEnv | None) -> bool:
    return env is not None and env.distributed and dist.is_initialized()


def barrier(env: DistEnv | None) -> None:
    if _active(env):
        dist.barrier()


def _buckets(tensors: Sequence[torch.Tensor], bucket_bytes: int) -> list[list[int]]:
    """Indices of consecutive tensors grouped by (dtype, device) into buckets of about `bucket_bytes`."""
    groups: list[list[int]] = []
    size = 0
    for i, t in enumerate(tensors):
        nbytes = t.numel() * t.element_size()
        if (not groups or size + nbytes > bucket_bytes or tensors[groups[-1][-1]].dtype != t.dtype
                or tensors[groups[-1][-1]].device != t.device):
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += nbytes
    return groups


@torch.no_grad()
def all_reduce_gradients(params: Iterable[torch.nn.Parameter], env: DistEnv | None,
                         extra: torch.Tensor | None = None, bucket_bytes: int = BUCKET_BYTES) -> torch.Tensor | None:
    """Average the gradients of `params` over all ranks, in place, in flat buckets (all launched, then waited
    on, so buckets overlap each other). Parameters without a gradient get a zero one first. `extra` (a 1-d
    float tensor, e.g. the step's losses) is averaged in the same first bucket; returns its average."""
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not _active(env):
        return extra
    grads = [p.grad for p in params]
    pending = []
    for b, idx in enumerate(_buckets(grads, bucket_bytes)):
        parts = [grads[i].reshape(-1) for i in idx]
        if b == 0 and extra is not None:
            parts.append(extra.to(grads[idx[0]].device, grads[idx[0]].dtype).reshape(-1))
        flat = torch.cat(parts)
        pending.append((idx, flat, dist.all_reduce(flat, async_op=True)))
    reduced_extra = extra
    for b, (idx, flat, work) in enumerate(pending):
        work.wait()
        flat.div_(env.world_size)
        offset = 0
        for i in idx:
            n = grads[i].numel()
            grads[i].copy_(flat[offset:offset + n].view_as(grads[i]))
            offset += n
        if b == 0 and extra is not None:
            reduced_extra = flat[offset:].to(extra.device, extra.dtype)
    return reduced_extra


def all_reduce_sum(values: Sequence[float] | torch.Tensor, env: DistEnv | None) -> torch.Tensor:
    """Sum a small vector over ranks (float64 on the process device); returns it on the CPU."""
    t = torch.as_tensor(values, dtype=torch.float64)
    if _active(env):
        t = t.to(env.device)
        dist.all_reduce(t)
    return t.cpu()


def all_reduce_mean(values: Sequence[float] | torch.Tensor, env: DistEnv | None) -> torch.Tensor:
    t = all_reduce_sum(values, env)
    return t / env.world_size if _active(env) else t


def _bytes_tensor(data: bytes, device: torch.device) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if data else torch.zeros(0, dtype=torch.uint8, device=device)


def broadcast_json(obj: Any, env: DistEnv | None, src: int = 0) -> Any:
    """Rank `src`'s JSON-able `obj` on every rank (sent as UTF-8 JSON bytes, never pickled)."""
    if not _active(env):
        return obj
    payload = json.dumps(obj).encode() if env.rank == src else b""
    length = torch.tensor([len(payload)], dtype=torch.int64, device=env.device)
    dist.broadcast(length, src)
    buf = _bytes_tensor(payload, env.device) if env.rank == src else torch.empty(int(length), dtype=torch.uint8, device=env.device)
    dist.broadcast(buf, src)
    return json.loads(buf.cpu().numpy().tobytes().decode()) if env.rank != src else obj


def all_gather_json(obj: Any, env: DistEnv | None) -> list[Any]:
    """Every rank's JSON-able `obj`, in rank order, on every rank."""
    if not _active(env):
        return [obj]
    payload = json.dumps(obj).encode()
    length = torch.tensor([len(payload)], dtype=torch.int64, device=env.device)
    lengths = [torch.zeros_like(length) for _ in range(env.world_size)]
    dist.all_gather(lengths, length)
    size = int(max(int(n) for n in lengths))
    buf = torch.zeros(size, dtype=torch.uint8, device=env.device)
    buf[:len(payload)] = _bytes_tensor(payload, env.device)
    bufs = [torch.zeros_like(buf) for _ in range(env.world_size)]
    dist.all_gather(bufs, buf)
    return [json.loads(b[:int(n)].cpu().numpy().tobytes().decode()) for b, n in zip(bufs, lengths)]


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, env: DistEnv | None, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers to every rank (start of training: identical replicas)."""
    if not _active(env):
        return
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_contiguous():
            dist.broadcast(t.data, src)
        else:  # e.g. channels_last weights: collectives want dense row-major storage
            tmp = t.data.contiguous()
            dist.broadcast(tmp, src)
            t.data.copy_(tmp)
