"""Latency model for one device: a per-block lookup table (OFA's approach), built by profiling with the real runtime.

`build_table` measures every DISTINCT layer configuration that the space's archs contain -- the stem at each
(resolution, width), each stage's first block at each (resolution, input width, width, kernel, expand) and its
later blocks at each (resolution, width, kernel, expand), the head at each (resolution, last width, head width) --
each as its own small model in the runtime (onnxruntime: the static module exported to ONNX; torch: eager).
Every entry is the median of `repeats` timed runs after `warmup` runs, with the runtime's threads pinned.

Predicted latency = `scale` * (sum of the arch's entries) + `per_part_ms` * (parts - 1). Each entry was timed as
one call into the runtime, and a call's cost beyond the layers' own work (copying the input in, allocating the
output, dispatch) grows with the tensors' size, so a constant per-call overhead does not fit it; inside a whole
net, which makes one call, a part costs a share of its isolated time plus a little for the extra nodes. The two
numbers are fitted once per table (least squares, `fit_calibration`) on `calibration_archs` seeded random archs
measured end to end at build time; they also absorb what isolation gets wrong on average (an entry runs with its
own weights and input hot in cache). Measured on the tiny space, onnxruntime, 1 thread, with entries measured in
groups (below): MAPE 2.9-3.3%, Kendall tau 0.91; one per-call constant gave 6.0%, 0.81 (docs/results.md).

Isolation can also be wrong part by part: on an AVX-512 CPU, where onnxruntime runs convolutions in a blocked
channel layout, parts cost otherwise inside a net by amounts that differ from part to part (tau 0.78-0.86 with
the calibration alone). So each part also gets an in-context correction (`fit_corrections`): a ridge regression
of what the calibration archs' end-to-end times leave unexplained on their part counts (relative errors), each
correction pulled towards 0 the harder the cheaper the part, and how hard overall chosen per table by
cross-validation over the calibration archs (`choose_ridge`). With 400 calibration archs: tau 0.87-0.90, MAPE
3.2-3.6% there (against 0.81-0.83, 5.6% without, same table). A part the calibration archs never use keeps its
calibrated cost.

`predict_batch` evaluates that sum for many gene-index rows at once from per-stage lookup arrays (like
`attentive.flops.count_flops_batch`): all blocks after the first in a stage are identical, so a stage costs
`first + (depth - 1) * later`.

The table is one JSON file, rewritten atomically after every group of measured entries or archs, so an interrupted
build resumes where it stopped. `LatencyTable.load` refuses (BadFileError) a torn or foreign file, an unfinished
build, a table for another space, or one measured with another version of the runtime than the installed one.
"""
from __future__ import annotations

import io
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import scipy.optimize
import torch
import torch.nn as nn

from .environment import describe_environment
from .fileio import BadFileError, check_format, read_json_file, write_json_atomic
from .flops import count_params_batch, encode
from .layers import act_layer
from .space import Arch, SearchSpace
from .spec import BlockSpec, NetSpec, decode
from .static import ConvBnAct, MBConvBlock, MobileNetV3Head, StaticNet

FORMAT = "attentive.latency_table"
FORMAT_VERSION = 4  # 2: calibration (scale, per_part_ms) replaced the single per-call overhead_ms; 3: channel-pad
# blocks export with constant pad amounts (attentive.layers.ChannelPad), so their entries in older tables are too slow;
# 4: per-part in-context corrections
RUNTIMES = ("onnxruntime", "torch")
LATENCY_DEVICES = ("cpu", "cuda")
DEFAULT_WARMUP = 10
DEFAULT_REPEATS = 100
CALIBRATION_ARCHS = 400  # 200 gave tau 0.90, 400 0.91 on an AVX-512 CPU (docs/results.md); ~2 min for the tiny space
CORRECTION_RIDGE = 1.0  # weight of the pull of each part's correction towards 0, relative to its cost (few rows)
CORRECTION_RIDGES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 10000.0)  # choose_ridge picks one
# (10,000: the corrections practically 0; the ImageNet space's table on an AMD EPYC chose 1,000: docs/results.md)
CORRECTION_FOLDS = 5
ENTRY_GROUP = 24  # table entries measured together, taking turns (build_table)
MEASURE_ROUNDS = 10  # end-to-end measurements of many archs take turns in this many rounds (measure_latencies)
MEASURE_GROUP_PARAMS = 250e6  # parameters of the nets measured together, taking turns (~1 GB per copy of them)
CALIBRATION_SEED = 1_000_003  # not validate's default seed 0: the fit never sees the validation archs
INPUT_SEED = 0  # seeded random inputs and weights: latency does not depend on them, reproducibility does


# ---------------------------------------------------------------------------------------------------------------
# runtimes and the one timing loop


def runtime_version(runtime: str) -> str:
    """Version of the installed runtime; ValueError for an unknown runtime, RuntimeError if it is not installed."""
    if runtime == "torch":
        return torch.__version__
    if runtime == "onnxruntime":
        try:
            import onnxruntime
        except ImportError:
            raise RuntimeError("runtime 'onnxruntime' asked for, but onnxruntime is not installed "
                               "(pip install onnxruntime)") from None
        return onnxruntime.__version__
    raise ValueError(f"unknown runtime {runtime!r}; allowed: {', '.join(RUNTIMES)}")


def check_runtime_device(runtime: str, device: str) -> None:
    """ValueError for an unknown runtime or device name; RuntimeError when the runtime cannot run on `device` here
    (CUDA missing, or onnxruntime without its CUDA execution provider)."""
    runtime_version(runtime)
    if device not in LATENCY_DEVICES:
        raise ValueError(f"unknown latency device {device!r}; allowed: {', '.join(LATENCY_DEVICES)}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' asked for, but CUDA is not available on this machine; use cpu")
        if runtime == "onnxruntime":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise RuntimeError("onnxruntime on cuda needs the CUDAExecutionProvider (pip install "
                                   f"onnxruntime-gpu); this one has {onnxruntime.get_available_providers()}")


def default_threads() -> int:
    """CPU threads the runtime gets unless told: the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def onnx_bytes(model: nn.Module, input_shape: Sequence[int]) -> bytes:
    """`model` (eval mode, CPU) as ONNX with a dynamic batch axis, exported as `attentive.export.export_onnx`
    exports a subnet, so a block is timed in the form the deployed net takes."""
    model = model.eval().cpu()
    x = torch.zeros(*input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation of the TorchScript exporter, tracer warnings
        buf = io.BytesIO()
        torch.onnx.export(model, (x,), buf, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return buf.getvalue()


def _ort_session(model: bytes | str | Path, device: str, threads: int) -> Any:
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # no warnings about unused initializers
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    data = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(data, sess_options=opts, providers=providers)


def _median_ms(run: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None] | None = None) -> float:
    return statistics.median(_timed_runs(run, warmup, repeats, sync)) / 1e6


def _timed_runs(run: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None] | None) -> list[int]:
    """Nanoseconds of each of `repeats` runs of `run`, after `warmup` untimed ones; each run timed alone."""
    for _ in range(warmup):
        run()
    if sync is not None:
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        run()
        if sync is not None:
            sync()
        times.append(time.perf_counter_ns() - t0)
    return times


class _TorchThreads:
    """Pin torch's intra-op threads for the measurement, restore them afterwards."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> None:
        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self.previous)


def _check_measure_args(runtime: str, device: str, threads: int | None, warmup: int, repeats: int) -> int:
    check_runtime_device(runtime, device)
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    threads = default_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return threads


def _runner(model: nn.Module | bytes | str | Path, input_shape: Sequence[int], runtime: str, device: str,
            threads: int) -> tuple[Callable[[], Any], Callable[[], None] | None]:
    """(one forward pass of `model` on a seeded input, the device sync to call after it or None)."""
    g = torch.Generator().manual_seed(INPUT_SEED)
    x = torch.randn(*input_shape, generator=g)
    if runtime == "onnxruntime":
        data = onnx_bytes(model, input_shape) if isinstance(model, nn.Module) else model
        if isinstance(data, (str, Path)) and not Path(data).is_file():
            raise BadFileError(data, "no such ONNX file")
        session = _ort_session(data, device, threads)
        feed = {session.get_inputs()[0].name: x.numpy()}
        return (lambda: session.run(None, feed)), None
    if not isinstance(model, nn.Module):
        raise TypeError(f"runtime 'torch' measures a torch module, got {type(model).__name__}")
    dev = torch.device(device)
    model = model.eval().to(dev)
    x = x.to(dev)

    def run() -> Any:
        with torch.inference_mode():
            return model(x)

    return run, (torch.cuda.synchronize if dev.type == "cuda" else None)


def measure_latency(model: nn.Module | bytes | str | Path, input_shape: Sequence[int], runtime: str, device: str,
                    threads: int | None = None, warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS) -> float:
    """Median latency (ms) of one forward pass of `model` on an input of `input_shape`, in `runtime` on `device`
    with `threads` CPU threads. `model`: a torch module (exported to ONNX first for onnxruntime), or an ONNX
    file path / ONNX bytes (onnxruntime only)."""
    threads = _check_measure_args(runtime, device, threads, warmup, repeats)
    run, sync = _runner(model, input_shape, runtime, device, threads)
    with _TorchThreads(threads):
        return _median_ms(run, warmup, repeats, sync)


def measure_latencies(models: Sequence[nn.Module | bytes | str | Path], input_shapes: Sequence[Sequence[int]],
                      runtime: str, device: str, threads: int | None = None, warmup: int = DEFAULT_WARMUP,
                      repeats: int = DEFAULT_REPEATS, rounds: int = 10) -> list[float]:
    """Median latency (ms) of each model, like `measure_latency`, but the models take turns: `rounds` rounds,
    each timing every model `repeats / rounds` times. A slow spell of the machine (another process, a frequency
    change) then falls on all models alike instead of on whichever one was running: the ranking of many archs
    stays steadier on a shared machine."""
    threads = _check_measure_args(runtime, device, threads, warmup, repeats)
    if len(models) != len(input_shapes):
        raise ValueError(f"{len(models)} models but {len(input_shapes)} input shapes")
    rounds = max(1, min(rounds, repeats))
    per_round = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    runners = [_runner(m, shape, runtime, device, threads) for m, shape in zip(models, input_shapes)]
    samples: list[list[int]] = [[] for _ in runners]
    with _TorchThreads(threads):
        for run, sync in runners:
            _timed_runs(run, warmup, 0, sync)
        for count in per_round:
            for i, (run, sync) in enumerate(runners):
                samples[i].extend(_timed_runs(run, 0, count, sync))
    return [statistics.median(t) / 1e6 for t in samples]


def _fresh_module(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module with seeded weights without touching the global RNG state of the caller."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INPUT_SEED)
        return build().eval()


# ---------------------------------------------------------------------------------------------------------------
# the distinct configurations of a space


def block_key(b: BlockSpec) -> str:
    """Everything that decides a block's cost (not its position in the net)."""
    return (f"block:in={b.in_chs},mid={b.mid_chs},out={b.out_chs},k={b.kernel_size},s={b.stride},se={b.se_chs},"
            f"expand={int(b.expand)},act={b.activation},shortcut={b.shortcut},size={b.in_size}")


def stem_key(spec: NetSpec) -> str:
    return (f"stem:in={spec.in_chans},out={spec.stem_chs},s={spec.stem_stride},act={spec.stem_activation},"
            f"size={spec.resolution}")


def head_key(spec: NetSpec) -> str:
    return (f"head:in={spec.head_in_chs},mid={spec.head_mid_chs},out={spec.head_out_chs},"
            f"classes={spec.num_classes},act={spec.head_activation},size={spec.head_in_size}")


@dataclass(frozen=True)
class Part:
    """One measurable piece of a net: its table key, how to build it, and its input shape at batch 1."""

    key: str
    build: Callable[[], nn.Module]
    input_chw: tuple[int, int, int]


def _block_part(b: BlockSpec) -> Part:
    return Part(block_key(b), lambda: MBConvBlock(b), (b.in_chs, b.in_size, b.in_size))


def _stem_part(spec: NetSpec) -> Part:
    return Part(stem_key(spec), lambda: ConvBnAct.fresh(spec.in_chans, spec.stem_chs, 3, spec.stem_stride,
                                                        act_layer(spec.stem_activation)),
                (spec.in_chans, spec.resolution, spec.resolution))


def _head_part(spec: NetSpec) -> Part:
    return Part(head_key(spec), lambda: MobileNetV3Head.fresh(spec.head_in_chs, spec.head_mid_chs, spec.head_out_chs,
                                                              spec.num_classes, act_layer(spec.head_activation)),
                (spec.head_in_chs, spec.head_in_size, spec.head_in_size))


class _Layout:
    """Gene-index positions and the per-stage index grids of a space: which table key each lookup cell holds."""

    def __init__(self, space: SearchSpace, num_classes: int | None) -> None:
        self.space = space
        self.num_classes = num_classes
        n = space.num_stages
        self.w_off, self.d_off = 1, 1 + n + 2
        self.k_off, self.e_off = self.d_off + n, self.d_off + 2 * n
        c = space.choices()
        self.widths = c["width"]
        self.depths = [np.array(o, dtype=np.int64) for o in c["depth"]]
        base = space.max_arch()  # max depth everywhere: every stage that can have later blocks has them
        self.stem: dict[tuple[int, ...], Part] = {}
        self.head: dict[tuple[int, ...], Part] = {}
        self.first: list[dict[tuple[int, ...], Part]] = [{} for _ in range(n)]
        self.later: list[dict[tuple[int, ...], Part]] = [{} for _ in range(n)]
        for ri, r in enumerate(space.resolutions):
            for wi, w in enumerate(self.widths[0]):
                spec = self._decode(base, r, {0: w}, s=None)
                self.stem[ri, wi] = _stem_part(spec)
            for li, wl in enumerate(self.widths[n]):
                for hi, wh in enumerate(self.widths[n + 1]):
                    spec = self._decode(base, r, {n: wl, n + 1: wh}, s=None)
                    self.head[ri, li, hi] = _head_part(spec)
            for s, st in enumerate(space.stages):
                for pi, wp in enumerate(self.widths[s]):
                    for wi, w in enumerate(self.widths[s + 1]):
                        for ki, k in enumerate(st.kernel_sizes):
                            for ei, e in enumerate(st.expand_ratios):
                                spec = self._decode(base, r, {s: wp, s + 1: w}, s=s, kernel=k, expand=e)
                                blocks = [b for b in spec.blocks if b.stage == s]
                                self.first[s][ri, pi, wi, ki, ei] = _block_part(blocks[0])
                                if len(blocks) > 1 and pi == 0:  # later blocks do not depend on the input width
                                    self.later[s][ri, wi, ki, ei] = _block_part(blocks[1])

    def _decode(self, base: Arch, resolution: int, widths: dict[int, int], s: int | None, kernel: int = 0,
                expand: float = 0) -> NetSpec:
        width = list(base.width)
        for i, w in widths.items():
            width[i] = w
        kernels, expands = list(base.kernel_size), list(base.expand_ratio)
        if s is not None:
            kernels[s], expands[s] = kernel, expand
        arch = Arch(resolution=resolution, width=tuple(width), depth=base.depth, kernel_size=tuple(kernels),
                    expand_ratio=tuple(expands))
        return decode(self.space, arch, self.num_classes)

    def parts(self) -> list[Part]:
        """The distinct parts, each once, in a fixed order (stem, stages, head)."""
        seen: dict[str, Part] = {}
        for grid in [self.stem, *[g for s in range(self.space.num_stages) for g in (self.first[s], self.later[s])],
                     self.head]:
            for part in grid.values():
                seen.setdefault(part.key, part)
        return list(seen.values())


def table_keys(space: SearchSpace, num_classes: int | None = None) -> list[str]:
    """Keys of the distinct configurations a table for `space` holds, in build order."""
    return [p.key for p in _Layout(space, num_classes).parts()]


# ---------------------------------------------------------------------------------------------------------------
# the table


class LatencyTable:
    """A measured latency table for one (space, runtime, device, batch, threads); predicts milliseconds."""

    def __init__(self, data: dict[str, Any], space: SearchSpace, path: Path | None = None) -> None:
        self.data = data
        self.space = space
        self.path = path
        self.space_hash: str = data["space_hash"]
        self.runtime: str = data["runtime"]
        self.runtime_version: str = data["runtime_version"]
        self.device: str = data["device"]
        self.batch: int = data["batch"]
        self.threads: int = data["threads"]
        self.num_classes: int = data["num_classes"]
        self.scale: float = data["scale"]  # fitted calibration (fit_calibration): whole-net share of the entries
        self.per_part_ms: float = data["per_part_ms"]
        self.meta: dict[str, Any] = data["meta"]
        self.entries: dict[str, float] = data["entries"]  # isolated, as measured
        self.corrections: dict[str, float] = data["corrections"]  # in context (fit_corrections); absent: 0
        self._arrays = self._lookup_arrays()

    def calibrated_cost(self, key: str) -> float:
        """A part's cost inside a net from the calibration alone (scale and per-part cost), before its correction."""
        return self.scale * self.entries[key] + self.per_part_ms

    def part_cost(self, key: str) -> float:
        """A part's cost inside a net: its calibrated cost plus its in-context correction. An arch's predicted
        latency is the sum over its parts less one `per_part_ms` (the call the whole net makes)."""
        return self.calibrated_cost(key) + self.corrections.get(key, 0.0)

    # ---- files -------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, space: SearchSpace, batch: int | None = None) -> "LatencyTable":
        """The table in `path`, checked against `space`, the installed runtime and (if given) `batch`;
        BadFileError naming the file and what differs otherwise."""
        path = Path(path)
        data = read_json_file(path, "latency table")
        _check_table(path, data, space, batch)
        if not data.get("complete"):
            missing = len(table_keys(space, data["num_classes"])) - len(data["entries"])
            missing_cal = data["calibration_archs"] - len(data["calibration"])
            raise BadFileError(path, f"unfinished latency table ({missing} entries and {missing_cal} calibration "
                                     f"archs not measured yet); rerun `python -m predictors.latency build` with "
                                     f"the same options to finish it")
        return cls(data, space, path)

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.data)

    # ---- prediction --------------------------------------------------------------------------------------------
    def _lookup_arrays(self) -> dict[str, Any]:
        layout = _Layout(self.space, self.num_classes)
        missing = sorted({p.key for p in layout.parts()} - set(self.entries))
        if missing:
            raise BadFileError(self.path or "<table>", f"{len(missing)} entries missing, e.g. {missing[0]}")

        def grid(cells: dict[tuple[int, ...], Part], shape: tuple[int, ...]) -> np.ndarray:
            out = np.zeros(shape, dtype=np.float64)  # cells never used (no later block) stay 0; depth-1 = 0 there
            for ix, part in cells.items():
                out[ix] = self.part_cost(part.key)
            return out

        sp, n = self.space, self.space.num_stages
        nr, w = len(sp.resolutions), [len(o) for o in layout.widths]
        first, later = [], []
        for s, st in enumerate(sp.stages):
            nk, ne = len(st.kernel_sizes), len(st.expand_ratios)
            first.append(grid(layout.first[s], (nr, w[s], w[s + 1], nk, ne)))
            later.append(grid(layout.later[s], (nr, w[s + 1], nk, ne)))
        return {"layout": layout, "stem": grid(layout.stem, (nr, w[0])), "head": grid(layout.head, (nr, w[n], w[n + 1])),
                "first": first, "later": later}

    def predict_batch(self, archs: np.ndarray | Sequence[Arch | dict]) -> np.ndarray:
        """Predicted latency (ms, float64) of many archs: a gene-index array (n, num_genes) from
        `space.sample_indices` / `attentive.flops.encode` (the fast path), or a list of Arch/dicts."""
        if isinstance(archs, np.ndarray):
            idx = archs.astype(np.int64, copy=False)
        else:
            idx = encode(self.space, archs)
        if idx.ndim != 2 or idx.shape[1] != len(self.space.gene_sizes()):
            raise ValueError(f"expected a gene-index array of shape (n, {len(self.space.gene_sizes())}), "
                             f"got {idx.shape}")
        a = self._arrays
        lay: _Layout = a["layout"]
        n = self.space.num_stages
        r = idx[:, 0]
        w = [idx[:, lay.w_off + i] for i in range(n + 2)]
        total = a["stem"][r, w[0]] + a["head"][r, w[n], w[n + 1]]
        for s in range(n):
            k, e = idx[:, lay.k_off + s], idx[:, lay.e_off + s]
            depth = lay.depths[s][idx[:, lay.d_off + s]]
            total = total + a["first"][s][r, w[s], w[s + 1], k, e] + (depth - 1) * a["later"][s][r, w[s + 1], k, e]
        return total - self.per_part_ms

    def predict(self, arch: Arch | dict) -> float:
        """Predicted latency (ms) of one arch."""
        arch = Arch.from_dict(arch) if isinstance(arch, dict) else arch
        return float(self.predict_batch(np.array([self.space.arch_to_indices(arch)], dtype=np.int64))[0])

    def predict_parts(self, arch: Arch | dict) -> list[tuple[str, float]]:
        """The (key, ms) isolated entries of `arch`'s parts, in net order (walks the decoded spec)."""
        arch = Arch.from_dict(arch) if isinstance(arch, dict) else arch
        return [(k, self.entries[k]) for k in part_keys(self.space, arch, self.num_classes)]


def _check_table(path: Path, data: Any, space: SearchSpace, batch: int | None) -> None:
    check_format(data, path, FORMAT, FORMAT_VERSION, "a latency table")
    needed = {"space_hash", "space_name", "runtime", "runtime_version", "device", "batch", "threads", "num_classes",
              "scale", "per_part_ms", "meta", "entries", "corrections", "complete", "warmup", "repeats",
              "calibration_archs", "calibration"}
    missing = sorted(needed - set(data))
    if missing:
        raise BadFileError(path, f"latency table lacks the keys {missing}")
    if data["space_hash"] != space.hash:
        raise BadFileError(path, f"latency table for another space ({data['space_name']!r}, hash "
                                 f"{data['space_hash']}); this space is {space.name!r}, hash {space.hash}")
    if data["runtime"] not in RUNTIMES:
        raise BadFileError(path, f"unknown runtime {data['runtime']!r}; allowed: {', '.join(RUNTIMES)}")
    try:
        installed = runtime_version(data["runtime"])
    except RuntimeError as e:
        raise BadFileError(path, f"measured with {data['runtime']} {data['runtime_version']}: {e}") from None
    if data["runtime_version"] != installed:
        raise BadFileError(path, f"measured with {data['runtime']} {data['runtime_version']}, but {data['runtime']} "
                                 f"{installed} is installed; latencies differ between versions: rebuild the table")
    if batch is not None and data["batch"] != batch:
        raise BadFileError(path, f"latency table measured at batch {data['batch']}, batch {batch} asked for")
    entries = data["entries"]
    if not isinstance(entries, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in entries.values()):
        raise BadFileError(path, "latency table entries must map keys to non-negative milliseconds")
    corrections = data["corrections"]
    if not isinstance(corrections, dict) or not all(isinstance(v, (int, float)) for v in corrections.values()) \
            or not set(corrections) <= set(entries):
        raise BadFileError(path, "latency table corrections must map keys of its entries to milliseconds")


# ---------------------------------------------------------------------------------------------------------------
# building


def _settings(space: SearchSpace, runtime: str, device: str, batch: int, threads: int, warmup: int, repeats: int,
              num_classes: int, calibration_archs: int) -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "space_name": space.name, "space_hash": space.hash,
            "runtime": runtime, "runtime_version": runtime_version(runtime), "device": device, "batch": batch,
            "threads": threads, "num_classes": num_classes, "warmup": warmup, "repeats": repeats,
            "calibration_archs": calibration_archs}


# A rerun resumes a partial table only if it would measure the same way.
RESUME_KEYS = ("space_hash", "runtime", "runtime_version", "device", "batch", "threads", "num_classes", "warmup",
               "repeats", "calibration_archs")


def build_table(space: SearchSpace, runtime: str, device: str, batch: int, out_path: str | Path,
                threads: int | None = None, warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS,
                progress: bool = True, num_classes: int | None = None,
                calibration_archs: int = CALIBRATION_ARCHS,
                on_entry: Callable[[str, float], None] | None = None) -> LatencyTable:
    """Measure every distinct part of `space`'s nets, then `calibration_archs` seeded random archs end to end to
    fit the calibration (scale, per-part cost), and write the table to `out_path` (JSON, rewritten atomically after
    each group of entries, each group of calibration archs and the fit). A partial table from an interrupted build with the same
    settings is resumed: what it holds is kept and only the rest is measured; one with other settings is refused
    (BadFileError).

    `on_entry(key, ms)` is called after each saved entry, and once with key 'calibration' after the calibration
    archs (measured in groups, taking turns within each: `measure_archs`).
    """
    from tqdm import tqdm

    check_runtime_device(runtime, device)
    if batch < 1 or repeats < 1 or warmup < 0 or calibration_archs < 0:
        raise ValueError(f"batch and repeats must be >= 1, warmup and calibration_archs >= 0; got batch={batch}, "
                         f"repeats={repeats}, warmup={warmup}, calibration_archs={calibration_archs}")
    threads = default_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    num_classes = space.num_classes if num_classes is None else num_classes
    out_path = Path(out_path)
    settings = _settings(space, runtime, device, batch, threads, warmup, repeats, num_classes, calibration_archs)
    parts = _Layout(space, num_classes).parts()

    data = dict(settings, space=space.to_dict(), meta=describe_environment(device, threads), complete=False,
                scale=None, per_part_ms=None, entries={}, corrections={}, calibration=[])
    if out_path.exists():
        old = read_json_file(out_path, "latency table")
        try:
            check_format(old, out_path, FORMAT, FORMAT_VERSION, "a latency table")
        except BadFileError as e:
            raise BadFileError(out_path, f"exists, {e.reason}; refusing to overwrite it") from None
        differ = {k: (old.get(k), settings[k]) for k in RESUME_KEYS if old.get(k) != settings[k]}
        if differ:
            said = ", ".join(f"{k} {a!r} (asked for {b!r})" for k, (a, b) in differ.items())
            raise BadFileError(out_path, f"a latency table with other settings: {said}; remove it or choose "
                                         f"another --out")
        data["entries"] = dict(old.get("entries") or {})
        data["calibration"] = list(old.get("calibration") or [])

    def save() -> None:
        write_json_atomic(out_path, data)

    # Entries are measured in groups that take turns (measure_latencies): a hiccup of the machine a few ms long
    # then spoils one round of many entries, not every run of one (measured on the shared 2-core VM: timed one
    # after another, about one entry in ten came out 1.3-2x too slow). The file is saved after each group.
    todo = [p for p in parts if p.key not in data["entries"]]
    with tqdm(total=len(todo), desc=f"latency table ({runtime}, {device}, batch {batch})", unit="entry",
              disable=not progress or not todo, dynamic_ncols=True) as bar:
        for start in range(0, len(todo), ENTRY_GROUP):
            group = todo[start:start + ENTRY_GROUP]
            times = measure_latencies([_fresh_module(p.build) for p in group], [(batch, *p.input_chw) for p in group],
                                      runtime, device, threads, warmup, repeats, rounds=MEASURE_ROUNDS)
            for part, ms in zip(group, times):
                data["entries"][part.key] = ms
            save()
            for part, ms in zip(group, times):
                if on_entry is not None:
                    on_entry(part.key, ms)
            bar.update(len(group))

    # Calibration: the entries' plain sum counts one runtime call per part, the net makes one call in all.
    uncalibrated = LatencyTable(dict(data, scale=1.0, per_part_ms=0.0), space, out_path)
    idx = space.sample_indices(np.random.Generator(np.random.PCG64(CALIBRATION_SEED)), calibration_archs)
    sums, counts = uncalibrated.predict_batch(idx), part_counts(space, idx)
    archs = [space.arch_from_indices(i) for i in idx]
    rows = data["calibration"]  # an interrupted build's: the first of the same seeded archs, kept where they match
    kept = 0
    while kept < min(len(rows), len(archs)) and rows[kept]["arch"] == archs[kept].to_dict():
        kept += 1
    rows = data["calibration"] = rows[:kept]
    measure_calibration = kept < len(archs)
    with tqdm(total=len(archs) - kept, desc="latency table: archs end to end", unit="arch",
              disable=not progress or not measure_calibration, dynamic_ncols=True) as bar:

        def save_group(group: list[int], times: list[float]) -> None:  # saved group by group, like the entries
            for i, ms in zip(group, times):
                j = kept + i
                rows.append({"arch": archs[j].to_dict(), "parts": int(counts[j]), "sum_ms": float(sums[j]),
                             "measured_ms": ms})
            save()
            bar.update(len(group))

        measure_archs(uncalibrated, archs[kept:], on_group=save_group)
    data["scale"], data["per_part_ms"] = fit_calibration(data["calibration"])
    calibrated = LatencyTable(data, space, out_path)
    ridge, scores = choose_ridge(calibrated, data["calibration"])
    data["corrections"] = fit_corrections(calibrated, data["calibration"], ridge)
    data["correction_ridge"] = ridge
    data["correction_cv_mape_pct"] = {str(r): m for r, m in scores.items()}  # JSON keys are strings
    data["complete"] = True
    save()
    if measure_calibration and on_entry is not None:
        on_entry("calibration", data["per_part_ms"])
    return LatencyTable(data, space, out_path)


def fit_calibration(rows: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """Least-squares (scale, per_part_ms), both >= 0, in `measured = scale * sum + per_part_ms * (parts - 1)` over
    calibration rows. Without rows (1, 0): OFA's plain sum; with one row, or rows that cannot separate the two
    terms (all with the same part count and sum ratio), the scale alone. Non-negative because a few noisy rows
    can otherwise fit a negative term that predicts negative latencies for archs outside their range."""
    if not rows:
        return 1.0, 0.0
    sums = np.array([r["sum_ms"] for r in rows], dtype=np.float64)
    extra = np.array([r["parts"] - 1 for r in rows], dtype=np.float64)
    measured = np.array([r["measured_ms"] for r in rows], dtype=np.float64)
    design = np.stack([sums, extra], axis=1)
    if np.linalg.matrix_rank(design) < 2:
        return float(sums @ measured / (sums @ sums)), 0.0
    (scale, per_part), _ = scipy.optimize.nnls(design, measured)
    return float(scale), float(per_part)


@dataclass
class _CorrectionSystem:
    """What the calibration rows leave unexplained, per row, as a linear system in the per-part corrections."""

    keys: list[str]
    counts: np.ndarray  # (rows, keys): how often each part occurs in each row's arch
    residual: np.ndarray  # measured - predicted from the calibrated costs alone
    measured: np.ndarray
    penalty: np.ndarray  # per key, for ridge 1: (mean cost / cost_k)^2

    @classmethod
    def from_rows(cls, table: "LatencyTable", rows: Sequence[dict[str, Any]]) -> "_CorrectionSystem":
        keys_per_row = [part_keys(table.space, Arch.from_dict(r["arch"]), table.num_classes) for r in rows]
        keys = sorted({k for ks in keys_per_row for k in ks})
        column = {k: i for i, k in enumerate(keys)}
        counts = np.zeros((len(rows), len(keys)))
        for i, ks in enumerate(keys_per_row):
            for k in ks:
                counts[i, column[k]] += 1
        cost = np.array([table.calibrated_cost(k) for k in keys])
        measured = np.array([r["measured_ms"] for r in rows], dtype=np.float64)
        typical = max(float(np.mean(np.abs(cost))), 1e-9)
        return cls(keys, counts, measured - (counts @ cost - table.per_part_ms), measured,
                   (typical / np.maximum(np.abs(cost), 1e-3 * typical)) ** 2)

    def solve(self, ridge: float, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Corrections from `rows` of the system: weighted ridge, each row weighted by 1 / measured^2 (relative
        errors, what MAPE scores; normalized to mean 1 so that `ridge` keeps its scale)."""
        counts, residual, measured = self.counts[rows], self.residual[rows], self.measured[rows]
        weight = 1.0 / np.maximum(measured, 1e-12) ** 2
        weight /= weight.mean()
        return np.linalg.solve(counts.T @ (counts * weight[:, None]) + np.diag(ridge * self.penalty),
                               counts.T @ (weight * residual))

    def mape_pct(self, corrections: np.ndarray, rows: np.ndarray | slice = slice(None)) -> float:
        error = self.residual[rows] - self.counts[rows] @ corrections
        return float(100.0 * np.mean(np.abs(error) / self.measured[rows]))


def cross_validate_ridge(table: "LatencyTable", rows: Sequence[dict[str, Any]],
                         ridges: Sequence[float] = CORRECTION_RIDGES,
                         folds: int = CORRECTION_FOLDS) -> dict[float, float]:
    """The MAPE (%) that corrections fitted with each ridge give on the calibration rows they were not fitted on:
    `folds`-fold cross-validation, rows dealt to folds by a seeded permutation (the calibration's scale and per-part
    cost stay those fitted on all rows: two numbers against the corrections' hundreds). Needs at least 2 rows per
    fold."""
    if folds < 2 or len(rows) < 2 * folds:
        raise ValueError(f"cross-validation needs folds >= 2 and at least 2 rows per fold; got {folds} folds, "
                         f"{len(rows)} rows")
    system = _CorrectionSystem.from_rows(table, rows)
    fold = np.empty(len(rows), dtype=np.int64)
    fold[np.random.Generator(np.random.PCG64(CALIBRATION_SEED)).permutation(len(rows))] = \
        np.arange(len(rows)) % folds
    scores = {}
    for ridge in ridges:
        errors = [system.mape_pct(system.solve(ridge, fold != f), fold == f) * np.sum(fold == f)
                  for f in range(folds)]
        scores[float(ridge)] = float(np.sum(errors) / len(rows))
    return scores


def choose_ridge(table: "LatencyTable", rows: Sequence[dict[str, Any]]) -> tuple[float, dict[float, float]]:
    """The ridge of `CORRECTION_RIDGES` with the lowest cross-validated MAPE (`cross_validate_ridge`) and the
    scores; `CORRECTION_RIDGE` (and no scores) with too few rows to cross-validate. How hard the corrections are
    pulled to 0 depends on the machine: where end-to-end times repeat well the data carry more per-part detail
    than where they scatter (docs/results.md: 1 vs 2 threads on a shared VM)."""
    if len(rows) < 2 * CORRECTION_FOLDS:
        return CORRECTION_RIDGE, {}
    scores = cross_validate_ridge(table, rows)
    return min(scores, key=lambda r: (scores[r], -r)), scores  # a tie goes to the stronger pull


def fit_corrections(table: "LatencyTable", rows: Sequence[dict[str, Any]],
                    ridge: float = CORRECTION_RIDGE) -> dict[str, float]:
    """Per-part in-context corrections (ms) for the parts the calibration `rows` use: the ridge solution of
    `counts @ corrections = measured - predicted` (each row's arch; the prediction from the calibrated costs
    alone, whatever corrections `table` holds, which the result replaces), each row weighted by 1 / measured^2
    (relative errors), where part k's correction is penalized by `ridge * (mean cost / cost_k)^2`: a cheap part
    is not allowed a large correction, and with few rows every correction stays near 0. `build_table` takes the
    ridge from `choose_ridge`."""
    if not rows:
        return {}
    system = _CorrectionSystem.from_rows(table, rows)
    return {k: float(c) for k, c in zip(system.keys, system.solve(ridge))}


def part_keys(space: SearchSpace, arch: Arch, num_classes: int | None = None) -> list[str]:
    """The table keys of `arch`'s parts, in net order: stem, every block, head."""
    spec = decode(space, arch, num_classes)
    return [stem_key(spec), *[block_key(b) for b in spec.blocks], head_key(spec)]


def part_counts(space: SearchSpace, idx: np.ndarray) -> np.ndarray:
    """Parts (stem + blocks + head) of each arch of a gene-index array: one runtime call each in the table."""
    n = space.num_stages
    d_off = 1 + n + 2
    depths = [np.array(o, dtype=np.int64) for o in space.choices()["depth"]]
    return 2 + sum(depths[s][idx[:, d_off + s]] for s in range(n))


# ---------------------------------------------------------------------------------------------------------------
# validation


def static_net(space: SearchSpace, arch: Arch, num_classes: int | None = None) -> StaticNet:
    """A fresh static net of `arch` with seeded weights (the global RNG is left alone)."""
    return _fresh_module(lambda: StaticNet.from_arch(space, arch, num_classes))  # type: ignore[return-value]


def param_groups(params: Sequence[float], max_params: float) -> list[list[int]]:
    """Consecutive runs of indices whose `params` sum to at most `max_params` (an item over it alone)."""
    groups: list[list[int]] = []
    total = 0.0
    for i, p in enumerate(params):
        if not groups or total + p > max_params:
            groups.append([])
            total = 0.0
        groups[-1].append(i)
        total += p
    return groups


def measure_archs(table: LatencyTable, archs: Sequence[Arch], warmup: int | None = None,
                  repeats: int | None = None, rounds: int = MEASURE_ROUNDS,
                  on_group: Callable[[list[int], list[float]], None] | None = None) -> list[float]:
    """End-to-end latency (ms) of each arch's static net, measured as `table` was built (runtime, device, batch,
    threads; warm-up and repeats unless given), the archs taking turns (`measure_latencies`) in groups of at most
    `MEASURE_GROUP_PARAMS` parameters, whose nets and runtime sessions alone are held in memory at a time (the tiny
    space's 400 calibration archs are one group; the ImageNet space's, 6.1 G parameters, took 23 GB at once).
    `on_group(indices into archs, their ms)` is called after each group."""
    params = count_params_batch(table.space, list(archs), table.num_classes) * 1e6 if len(archs) else []
    times: list[float] = []
    for group in param_groups(params, MEASURE_GROUP_PARAMS):
        nets = [static_net(table.space, archs[i], table.num_classes) for i in group]
        shapes = [(table.batch, table.space.in_chans, archs[i].resolution, archs[i].resolution) for i in group]
        group_times = measure_latencies(nets, shapes, table.runtime, table.device, table.threads,
                                        table.data["warmup"] if warmup is None else warmup,
                                        table.data["repeats"] if repeats is None else repeats, rounds)
        times += group_times
        if on_group is not None:
            on_group(group, group_times)
    return times


def validate_table(table: LatencyTable, space: SearchSpace, num_archs: int, seed: int, out_dir: str | Path,
                   warmup: int | None = None, repeats: int | None = None,
                   rounds: int = MEASURE_ROUNDS) -> dict[str, Any]:
    """Measure `num_archs` seeded random archs end to end (`measure_archs`) and compare with the table's
    predictions. Writes OUT_DIR/latency_validation.json (rows + summary) and OUT_DIR/latency_validation.png
    (predicted vs measured); returns the summary: mape_pct, kendall tau, the largest error, paths."""
    from .metrics import kendall_tau

    if space.hash != table.space_hash:
        raise ValueError(f"table is for space hash {table.space_hash}, validating on {space.name!r} ({space.hash})")
    if num_archs < 2:
        raise ValueError(f"num_archs must be >= 2 (Kendall tau needs pairs), got {num_archs}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    idx = space.sample_indices(np.random.Generator(np.random.PCG64(seed)), num_archs)
    predicted = table.predict_batch(idx)
    archs = [space.arch_from_indices(i) for i in idx]
    rows = []
    for arch, pred, ms in zip(archs, predicted.tolist(), measure_archs(table, archs, warmup, repeats, rounds)):
        rows.append({"arch": arch.to_dict(), "predicted_ms": pred, "measured_ms": ms,
                     "error_pct": 100.0 * (pred - ms) / ms})
    measured = np.array([r["measured_ms"] for r in rows])
    err = np.array([r["error_pct"] for r in rows])
    worst = int(np.argmax(np.abs(err)))
    summary = {"num_archs": num_archs, "seed": seed, "mape_pct": float(np.mean(np.abs(err))),
               "kendall_tau": kendall_tau(predicted, measured)["tau"],
               "largest_error_pct": float(err[worst]), "largest_error_arch": rows[worst]["arch"],
               "largest_error_ms": float(predicted[worst] - measured[worst]),
               "mean_error_pct": float(np.mean(err)),
               "runtime": table.runtime, "device": table.device, "batch": table.batch, "threads": table.threads,
               "table": str(table.path) if table.path else None}
    json_path, plot_path = out_dir / "latency_validation.json", out_dir / "latency_validation.png"
    summary.update(json=str(json_path), plot=str(plot_path))
    write_json_atomic(json_path, {"summary": summary, "meta": describe_environment(table.device, table.threads),
                                  "rows": rows})
    _plot(predicted, measured, summary, plot_path)
    return summary


def _plot(predicted: np.ndarray, measured: np.ndarray, summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fileio import write_bytes_atomic

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(measured, predicted, s=14)
    lo, hi = float(min(measured.min(), predicted.min())), float(max(measured.max(), predicted.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="predicted = measured")
    tau = summary["kendall_tau"]
    ax.set_title(f"{summary['runtime']} {summary['device']}, batch {summary['batch']}, {summary['threads']} threads\n"
                 f"MAPE {summary['mape_pct']:.2f}%, tau {tau if tau is None else round(tau, 3)}, "
                 f"largest error {summary['largest_error_pct']:+.1f}%", fontsize=9)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def iter_parts(space: SearchSpace, num_classes: int | None = None) -> Iterator[Part]:
    """The distinct parts of `space` in build order (for tools that profile them another way)."""
    yield from _Layout(space, num_classes).parts()
