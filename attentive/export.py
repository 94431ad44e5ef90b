"""Export one subnet as a deployable directory, and load it back without the supernet.

An export directory holds:

* ``model.pth`` -- the static subnet's ``state_dict`` (``torch.load(weights_only=True)``), BN statistics
  recalibrated on training images;
* ``arch.json`` -- the arch in the AttentiveNAS dict layout (feed it back to ``search.py --export-arch``);
* ``space.json`` -- the search space as a dict, so that `load_subnet` needs no YAML lookup;
* ``metrics.json`` -- analytic and fvcore MFLOPs, params, held-out and test top-1 measured on the exported model
  itself, the budget, space name and hash, the ONNX check, the machine and library versions measured on
  (`attentive.environment`);
* ``flops_table.txt`` -- fvcore's per-layer FLOPs table;
* ``model.onnx`` -- the same net in ONNX (input: images at the arch resolution, dynamic batch), its logits
  checked against PyTorch with onnxruntime (max abs difference <= 1e-4) when onnxruntime is installed.

FLOPs convention: conv and linear multiply-adds only, as in the papers and `attentive.flops`; fvcore's count
restricted to those ops equals the analytic count. fvcore's default count (which adds BatchNorm and pooling) is
recorded too, as ``fvcore_mflops_all_ops``.

The directory is written to a temporary sibling and renamed into place, so it is either complete or absent.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn as nn

from .calibration import calibrate_bn
from .checkpoint import check_state_dict
from .environment import describe_environment
from .fileio import (BadFileError, atomic_directory, check_format, check_output_dir, load_torch_file, read_json_file,
                     write_json_atomic, write_text_atomic)
from .evaluate import accuracy
from .flops import count_flops, count_params
from .space import Arch, SearchSpace, space_from_dict
from .static import StaticNet

FORMAT = "attentive.subnet"
FORMAT_VERSION = 1
MODEL_FILE, ARCH_FILE, SPACE_FILE = "model.pth", "arch.json", "space.json"
METRICS_FILE, FLOPS_TABLE_FILE, ONNX_FILE = "metrics.json", "flops_table.txt", "model.onnx"
ONNX_TOLERANCE = 1e-4


def _mac_handles() -> dict[str, Any]:
    """fvcore's handles for the multiply-add ops of the papers' FLOPs convention, and no others."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import uses the deprecated torch.jit.script
        from fvcore.nn import jit_handles as h

    return {"aten::_convolution": h.conv_flop_jit, "aten::linear": h.linear_flop_jit, "aten::addmm": h.addmm_flop_jit,
            "aten::mm": h.matmul_flop_jit, "aten::matmul": h.matmul_flop_jit, "aten::bmm": h.bmm_flop_jit,
            "aten::einsum": h.einsum_flop_jit}


# ---------------------------------------------------------------------------------------------------------------
# FLOPs and ONNX


def _leaf_depth(model: nn.Module) -> int:
    return max((name.count(".") + 1 for name, m in model.named_modules() if name and not list(m.children())),
               default=1)


def fvcore_flops(model: nn.Module, resolution: int, in_chans: int = 3) -> tuple[float, float, str]:
    """(conv+linear MFLOPs, fvcore default-ops MFLOPs, per-layer table of conv+linear FLOPs) for one image."""
    model = model.eval()
    x = torch.zeros(1, in_chans, resolution, resolution, device=next(model.parameters()).device)
    with warnings.catch_warnings():
        # fvcore's import uses the deprecated torch.jit.script; tracing warns about the resize branch (not taken)
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis, flop_count_table
        from fvcore.nn.jit_analysis import JitModelAnalysis

        full = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        # Only the multiply-add handles: fvcore's defaults also count BatchNorm, pooling and resizing.
        macs = JitModelAnalysis(model, x).set_op_handle(**_mac_handles())
        macs.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        table = flop_count_table(macs, max_depth=_leaf_depth(model))
        return macs.total() / 1e6, full.total() / 1e6, table


def export_onnx(model: nn.Module, path: Path, resolution: int, in_chans: int = 3, seed: int = 0) -> dict[str, Any]:
    """Write `model` as ONNX (dynamic batch) and, if onnxruntime is installed, compare its logits with PyTorch's
    on seeded random images. Raises RuntimeError if they differ by more than `ONNX_TOLERANCE`."""
    model = model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, in_chans, resolution, resolution, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation of the TorchScript exporter, tracer warnings
        buf = io.BytesIO()
        torch.onnx.export(model.cpu(), (x,), buf, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    model.to(device)
    data = buf.getvalue()
    with open(path, "wb") as f:
        f.write(data)
    info: dict[str, Any] = {"file": path.name, "input": [-1, in_chans, resolution, resolution],
                            "checked_with_onnxruntime": False}
    try:
        import onnxruntime
    except ImportError:
        info["note"] = "onnxruntime not installed: ONNX logits not checked"
        return info
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    onnx_logits = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with torch.no_grad():
        torch_logits = model(x.to(device)).cpu()
    diff = float((onnx_logits - torch_logits).abs().max())
    if not diff <= ONNX_TOLERANCE:
        raise RuntimeError(f"ONNX export of {path} differs from PyTorch by {diff:.3g} (> {ONNX_TOLERANCE})")
    info.update(checked_with_onnxruntime=True, max_abs_diff=diff, tolerance=ONNX_TOLERANCE,
                onnxruntime_version=onnxruntime.__version__)
    return info


# ---------------------------------------------------------------------------------------------------------------
# Export and load


def export_subnet(
    out_dir: str | Path,
    supernet: nn.Module,
    arch: Arch | dict,
    calib_batches: Iterable,
    *,
    holdout_loader: Iterable | None = None,
    test_loader: Iterable | None = None,
    budget: float | None = None,
    device: torch.device | str = "cpu",
    onnx: bool = True,
    force: bool = False,
    channels_last: bool = False,
    extra: dict[str, Any] | None = None,
    after_export: Callable[[nn.Module, Path | None], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Extract `arch` from `supernet`, recalibrate its BN statistics on `calib_batches` (training images),
    measure it, and write the export directory `out_dir`. Returns the metrics written to metrics.json.

    Refuses (ValueError) an arch whose MFLOPs exceed `budget`, before any work. Held-out and test top-1 are
    measured on the exported net itself when their loaders are given. `channels_last` only changes the memory
    format of the images (faster on CPU). `extra` is merged into the metrics. `after_export(net, onnx_file)` is
    called once the weights and the ONNX file (None without ONNX) are written, before metrics.json: what it returns
    is merged into the metrics (search.py measures the exported model's latency with it).
    """
    space: SearchSpace = supernet.space
    arch = Arch.from_dict(arch) if isinstance(arch, dict) else arch
    space.validate(arch)
    num_classes = int(getattr(supernet, "num_classes", space.num_classes))
    mflops = count_flops(space, arch, num_classes)
    if budget is not None and mflops > budget:
        raise ValueError(f"arch has {mflops:.4g} MFLOPs, over the budget of {budget:g} MFLOPs; "
                         f"choose an arch with at most {budget:g} MFLOPs or raise the budget")
    out_dir = check_output_dir(out_dir, force)

    net = supernet.extract(arch).to(device)
    num_calib = calibrate_bn(net, calib_batches, device, channels_last)
    net.eval()
    metrics: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "space_name": space.name,
        "space_hash": space.hash,
        "num_classes": num_classes,
        "arch": arch.to_dict(),
        "resolution": arch.resolution,
        "budget_mflops": budget,
        "mflops": mflops,
        "mparams": count_params(space, arch, num_classes),
        "mparams_counted": sum(p.numel() for p in net.parameters()) / 1e6,
        "bn_calibration_images": num_calib,
        "holdout_top1": None if holdout_loader is None else accuracy(net, holdout_loader, device, channels_last),
        "test_top1": None if test_loader is None else accuracy(net, test_loader, device, channels_last),
        "torch_version": torch.__version__,
        "environment": describe_environment(torch.device(device).type),  # what these top-1 figures were measured on
    }
    metrics["fvcore_mflops"], metrics["fvcore_mflops_all_ops"], table = fvcore_flops(net, arch.resolution,
                                                                                      space.in_chans)
    metrics["under_budget"] = None if budget is None else bool(mflops <= budget and metrics["fvcore_mflops"] <= budget)
    metrics.update(extra or {})

    with atomic_directory(out_dir, force) as tmp:
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        torch.save(state, tmp / MODEL_FILE)
        write_json_atomic(tmp / ARCH_FILE, arch.to_dict())
        write_json_atomic(tmp / SPACE_FILE, space.to_dict())
        write_text_atomic(tmp / FLOPS_TABLE_FILE,
                          f"# fvcore per-layer FLOPs (conv + linear multiply-adds), input 1x{space.in_chans}x"
                          f"{arch.resolution}x{arch.resolution}\n{table}\n")
        metrics["onnx"] = export_onnx(net, tmp / ONNX_FILE, arch.resolution, space.in_chans) if onnx else None
        if after_export is not None:
            metrics.update(after_export(net, tmp / ONNX_FILE if onnx else None))
        write_json_atomic(tmp / METRICS_FILE, metrics)
    return metrics


def load_subnet(directory: str | Path, map_location: str | torch.device = "cpu") -> StaticNet:
    """Rebuild an exported subnet from its directory alone (space.json + arch.json + model.pth), in eval mode;
    the net's `arch` and `space` say what it is.

    Raises `BadFileError` naming the file for a truncated, foreign or tampered export: a missing or unreadable
    file, another format or version, files that disagree (space hash, arch, class count), or weights that do not
    fit the arch.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BadFileError(directory, "no such export directory (written by search.py or export_subnet)")
    metrics_path, space_path, arch_path = directory / METRICS_FILE, directory / SPACE_FILE, directory / ARCH_FILE
    metrics = read_json_file(metrics_path, "export metrics file")
    check_format(metrics, metrics_path, FORMAT, FORMAT_VERSION, "an attentive subnet export")
    num_classes = metrics.get("num_classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise BadFileError(metrics_path, f"num_classes must be a positive integer, got {num_classes!r}")
    space_dict = read_json_file(space_path, "search space file")
    try:
        space = space_from_dict(space_dict, where="space")
    except ValueError as e:
        raise BadFileError(space_path, str(e)) from None
    if space.hash != metrics.get("space_hash"):
        raise BadFileError(space_path, f"its space hashes to {space.hash} but {METRICS_FILE} records "
                                       f"{metrics.get('space_hash')}: the directory was modified or mixed")
    arch_dict = read_json_file(arch_path, "arch file")
    try:
        arch = space.validate(Arch.from_dict(arch_dict))
    except ValueError as e:
        raise BadFileError(arch_path, str(e)) from None
    if metrics.get("arch") != arch.to_dict():
        raise BadFileError(arch_path, f"the arch differs from the one {METRICS_FILE} records: the directory was "
                                      f"modified or mixed")
    model_path = directory / MODEL_FILE
    state = load_torch_file(model_path, map_location, "subnet weights file")
    with torch.device("meta"):  # no initialization that the loaded weights would overwrite
        net = StaticNet.from_arch(space, arch, num_classes=num_classes)
    check_state_dict(model_path, net.state_dict(), state)
    net = net.to_empty(device=map_location)
    net.load_state_dict(state)
    return net.eval()
