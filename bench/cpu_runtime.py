"""CPU training step time under the process settings of `attentive.cpu_runtime`, side by side:

* defaults     - glibc's malloc settings and oneDNN's 1,024-entry primitive cache
* malloc       - `keep_freed_memory()` only
* malloc+cache - `keep_freed_memory()` and `enlarge_primitive_cache()` (what train.py does)
* malloc+cache NCHW - the same with `channels_last: false` (train.py's `auto` turns channels-last on for the
  CPU: measured ~2x faster on an AMD EPYC; this row checks that choice on the CPU at hand)

Both are process-wide, so each measurement is a child process running the trainer's own `train_step` (tiny
space, 28 px synthetic images, batch 128, 3 subnets per step, a new uniform middle subnet every step: the
Fashion-MNIST demo's step shape). Children take turns for `--rounds` rounds, so machine noise hits all alike;
the median step of each setting and its ratio to the defaults are printed. Steps after the first `--warmup` are
timed: the primitive cache only thrashes once the run has met more shapes than it holds.

    python bench/cpu_runtime.py [--rounds 3] [--steps 60] [--warmup 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


SETTINGS = ("defaults", "malloc", "malloc+cache", "malloc+cache NCHW")


def child(setting: str, steps: int, warmup: int, threads: int) -> list[float]:
    from attentive.cpu_runtime import PRIMITIVE_CACHE_ENV, enlarge_primitive_cache, keep_freed_memory

    if setting != "defaults" and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() is not available here (needs Linux with glibc)")
    if setting.startswith("malloc+cache") and not enlarge_primitive_cache():
        raise SystemExit(f"{PRIMITIVE_CACHE_ENV} is already set in the environment: unset it to compare")
    from _experiment_utils import demo_step_updates
    from attentive.config import load_config
    from attentive.data import set_loader_epoch
    from attentive.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, updates=demo_step_updates(tmp, threads, steps + warmup,
                                                          channels_last=not setting.endswith("NCHW")))
        trainer = Trainer(cfg)
        set_loader_epoch(trainer.train_loader, 0)
        times = []
        for i, (images, labels) in zip(range(steps + warmup), trainer.train_loader):
            start = time.perf_counter()
            trainer.train_step(images, labels)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60, help="timed steps per child")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first, per child")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.warmup, args.threads)))
        return
    from attentive.cpu_runtime import PRIMITIVE_CACHE_ENV

    if PRIMITIVE_CACHE_ENV in os.environ:
        p.error(f"unset {PRIMITIVE_CACHE_ENV} first: the children must start from oneDNN's default")
    from attentive.environment import describe_environment, environment_summary

    print(f"machine: {environment_summary(describe_environment(threads=args.threads))}")
    times: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for r in range(args.rounds):
        for setting in times:
            out = subprocess.run([sys.executable, __file__, "--child", setting, "--steps", str(args.steps),
                                  "--warmup", str(args.warmup), "--threads", str(args.threads)],
                                 check=True, capture_output=True, text=True).stdout
            times[setting] += json.loads(out.strip().splitlines()[-1])
            print(f"round {r + 1}/{args.rounds} {setting:17s} median step {statistics.median(times[setting]):.3f} s",
                  flush=True)
    base = statistics.median(times["defaults"])
    print(f"\nsandwich step (tiny space, batch 128, 3 subnets, {args.threads} threads), median of "
          f"{len(times['defaults'])} steps each:")
    for setting, values in times.items():
        median = statistics.median(values)
        print(f"  {setting:17s}  {median:.3f} s  {median / base:.3f}x of defaults")


if __name__ == "__main__":
    main()
