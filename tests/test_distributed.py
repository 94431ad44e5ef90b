"""Two CPU processes with gloo: every rank samples the same archs and ends with the same parameters; the predictor
is measured across ranks and shared; train.py runs under torchrun."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "train" / "smoke.yaml"
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from attentive.config import load_config
    from attentive.data import set_loader_epoch
    from attentive.distributed import all_gather_json, broadcast_json, cleanup, init_distributed
    from attentive.trainer import Trainer
    from predictors.xgb import AccuracyPredictor

    env = init_distributed("cpu", "auto")
    try:
        assert env.backend == "gloo" and env.world_size == WORLD and env.rank == rank
        assert broadcast_json({"r": rank}, env) == {"r": 0}
        assert all_gather_json([rank] * (rank + 1), env) == [[0], [1, 1]]
        # bestup with the loss scorer: scores differ per rank (different data shards) unless they are reduced.
        cfg = load_config(SMOKE, [f"output_dir={out_dir}/run", "sampler.scorer=loss", "sampler.warmup_epochs=0",
                                  "train.num_subnets=4", "sched.warmup_epochs=0", "log.tensorboard=false"])
        t = Trainer(cfg, env, predictor_backend=AccuracyPredictor)  # fit_predictor below fits one
        set_loader_epoch(t.train_loader, 0)
        archs, first_labels = [], None
        for i, (images, labels) in enumerate(t.train_loader):
            if i == 4:
                break
            first_labels = labels.tolist() if first_labels is None else first_labels
            archs.append([a.to_json() for a in t.train_step(images, labels).archs])
        t.cfg["sampler"]["num_measure"] = 5
        t.fit_predictor(1)  # archs split over ranks, rows gathered, predictor fitted on rank 0 and shared
        record = {"archs": archs, "first_labels": first_labels, "predictor": t.predictor.to_state(),
                  "holdout": t.evaluate(archs={"max": t.max_arch})}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
        torch.save({k: v.detach().clone() for k, v in t.model.named_parameters()}, Path(out_dir, f"rank{rank}.pt"))
    finally:
        cleanup()


def test_two_gloo_ranks_stay_identical(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    rec = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    params = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert rec[0]["first_labels"] != rec[1]["first_labels"]  # each rank trained on its own shard
    assert rec[0]["archs"] == rec[1]["archs"] and len(rec[0]["archs"]) == 4
    assert len({a for step in rec[0]["archs"] for a in step[1:-1]}) > 1  # the sampler really sampled
    assert rec[0]["predictor"] == rec[1]["predictor"]
    assert rec[0]["holdout"] == rec[1]["holdout"]  # metrics reduced over ranks
    assert params[0].keys() == params[1].keys()
    assert all(torch.equal(params[0][k], params[1][k]) for k in params[0])


def test_torchrun_two_processes(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside the interpreter")
    out = tmp_path / "run"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", str(WORLD), str(ROOT / "train.py"), "--config",
           str(SMOKE), f"output_dir={out}", "sched.epochs=2", "train.max_steps_per_epoch=2",
           "checkpoint.every_steps=0", "log.tensorboard=false"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "final.json").read_text())
    assert report["world_size"] == WORLD and report["steps"] == 4
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["world_size"] == WORLD and ckpt["predictor"] is not None  # fitted after epoch 1, on both ranks
    assert proc.stderr.count("training tiny supernet") == 1  # only rank 0 logs
    start, = json.loads((out / "environment.json").read_text())["starts"]  # every rank's machine, one entry each
    assert start["world_size"] == WORLD and [m["ranks"] for m in start["machines"]] == [list(range(WORLD))]
