"""The README's commands and Python API stay true: every shell command names a known entry point and parses with
it (train.py resolves its config with --print-config, so config files and key=value overrides are checked), and
the Python API block runs and gives the numbers its comments state. Running the commands end to end is the job of
the demo (make demo) and of the CLI tests in test_train.py, test_search.py and test_predictors.py."""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
sys.path.insert(0, str(ROOT))


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _command_lines(block: str) -> list[str]:
    """A bash block's commands: continuations joined, comments and blank lines dropped."""
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in block.replace("\\\n", " ").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _commands() -> list[list[str]]:
    return [shlex.split(line) for block in _blocks("bash") for line in _command_lines(block)]


COMMANDS = _commands()


def _args_after(cmd: list[str], entry: str) -> list[str]:
    return cmd[cmd.index(entry) + 1:]


def test_readme_opens_with_the_two_commands():
    assert _command_lines(_blocks("bash")[0]) == ["make demo", "make test"]


def test_every_command_has_a_known_entry_point():
    known = {("make", "demo"), ("make", "test"), ("make", "bench"), ("python", "train.py"), ("torchrun",),
             ("python", "search.py"), ("python", "-m", "predictors.retrain"), ("python", "bench/probe.py"),
             ("python", "bench/ranking_gap.py"), ("python", "-m", "predictors.latency")}
    for cmd in COMMANDS:
        assert any(tuple(cmd[:len(k)]) == k for k in known), f"README command with no test: {' '.join(cmd)}"
    # the three user jobs are all shown, distributed launches included
    assert sum(c[0] == "torchrun" for c in COMMANDS) >= 2
    assert any("--nnodes" in c and "--rdzv-endpoint" in c for c in COMMANDS)


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if "train.py" in c], ids=lambda c: " ".join(c[:6]))
def test_train_commands_resolve_their_config(cmd, capsys):
    import train

    assert train.main([*_args_after(cmd, "train.py"), "--print-config"]) == 0
    assert "space:" in capsys.readouterr().out


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c[:2] == ["python", "search.py"]], ids=lambda c: " ".join(c[6:9]))
def test_search_commands_parse(cmd):
    import search

    args = search.get_args_parser().parse_args(_args_after(cmd, "search.py"))
    assert args.checkpoint and args.out


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c[:3] == ["python", "-m", "predictors.retrain"]],
                         ids=lambda c: " ".join(c[5:7]))
def test_retrain_commands_parse(cmd):
    from predictors import retrain

    args = retrain.get_args_parser().parse_args(_args_after(cmd, "predictors.retrain"))
    assert args.num_archs > 0


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c[:3] == ["python", "-m", "predictors.latency"]],
                         ids=lambda c: c[3])
def test_latency_commands_parse(cmd):
    from predictors import latency

    args = latency.get_args_parser().parse_args(_args_after(cmd, "predictors.latency"))
    assert args.command in ("build", "validate")


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c[:2] == ["python", "bench/probe.py"]], ids=lambda c: c[3])
def test_probe_commands_parse(cmd):
    sys.path.insert(0, str(ROOT / "bench"))
    import probe

    args = probe.get_args_parser().parse_args(_args_after(cmd, "bench/probe.py"))
    assert args.checkpoint


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c[:2] == ["python", "bench/ranking_gap.py"]],
                         ids=lambda c: " ".join(c[2:6]))
def test_ranking_gap_commands_parse(cmd):
    sys.path.insert(0, str(ROOT / "bench"))
    import ranking_gap

    args = ranking_gap.get_args_parser().parse_args(_args_after(cmd, "bench/ranking_gap.py"))
    assert args.checkpoint and args.num_archs >= 8
    assert ranking_gap.scratch_seed_list(args.scratch_seeds, args.seed)  # raises unless distinct integers


def test_python_api_block_runs_as_written():
    block = next(b for b in _blocks("python") if "load_space" in b)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # the README's own code, not data
    import attentive

    assert attentive.count_flops(namespace["space"], namespace["arch"]) == pytest.approx(203.39, abs=0.005)
    assert namespace["logits"].shape == (2, 1000) and namespace["flops"].shape == (100_000,)
    supernet, static = namespace["supernet"].eval(), namespace["static"].eval()
    x = torch.randn(2, 3, 192, 192, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(static(x), supernet(x))
