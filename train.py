"""Train a weight-sharing supernet with the sandwich rule and AttentiveNAS sampling.

    python train.py --config configs/train/fashion_mnist.yaml [key=value ...]
    torchrun --nproc_per_node 8 train.py --config configs/train/imagenet_attentivenas.yaml data.root=/data/imagenet
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id RUN \\
        train.py --config configs/train/imagenet_attentivenas.yaml data.root=/data/imagenet

The YAML file supplies the defaults, `key=value` overrides them (dotted keys for nested ones: optim.lr=0.2);
an unknown key is an error listing the valid ones. The resolved config is saved as <output_dir>/config.yaml.
Exit status: 0 done, 2 usage/config/checkpoint error (a checkpoint that does not load or belongs to another run,
named), 3 non-finite loss (the last good checkpoint is kept). The training itself is
`attentive.trainer.run_training`; this file wires in the XGBoost accuracy predictor (`attentive` never imports
`predictors`).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from attentive.config import ConfigError, describe_keys, dump_config, load_config

EXIT_USAGE = 2
EXIT_NON_FINITE = 3


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="attentive supernet training (sandwich rule, in-place distillation, AttentiveNAS sampling)",
        add_help=add_help, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=describe_keys())
    parser.add_argument("-c", "--config", default=None, help="YAML file of defaults, e.g. configs/train/fashion_mnist.yaml")
    parser.add_argument("--resume", default=None, help="'auto' (newest good checkpoint in output_dir) or a checkpoint "
                        "path; same as resume=...")
    parser.add_argument("--output-dir", default=None, help="same as output_dir=...")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.2")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides.append(f"output_dir={args.output_dir}")
    if args.resume is not None:
        overrides.append(f"resume={args.resume}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0

    from attentive.fileio import BadFileError
    from attentive.trainer import NonFiniteLossError, run_training
    from predictors.xgb import AccuracyPredictor

    try:
        run_training(cfg, predictor_backend=AccuracyPredictor)
    except BadFileError as e:  # a checkpoint that does not load or belongs to another run: named in `e`
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return EXIT_NON_FINITE
    return 0


if __name__ == "__main__":
    sys.exit(main())
