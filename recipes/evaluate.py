"""Evaluate a saved training run per domain, optionally beside another run.

    python recipes/evaluate.py runs/default                        # the run's own test split
    python recipes/evaluate.py runs/default --split validation --baseline runs/default/plain

A thin command line over `mlora_peft.training.evaluate_run`: rebuilds the model from the run's
`config.yaml`, loads its adapter (or, for a plain run, its `model.safetensors`), encodes the data
the config describes with the run's saved `data_encoder.json` (values unseen at training map to the
unknown id, as in training) and prints the per-domain table (with the gain over `--baseline`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlora_peft.evaluation import gain_table
from mlora_peft.training import evaluate_run, make_accelerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="output_dir of a training run.")
    parser.add_argument("--split", default="test", help="Which split to evaluate (default: test).")
    parser.add_argument("--baseline", type=Path, help="Another run to compare with, e.g. runs/default/plain.")
    args = parser.parse_args()
    accelerator = make_accelerator()
    report = evaluate_run(args.run_dir, args.split, accelerator)
    baseline = evaluate_run(args.baseline, args.split, accelerator) if args.baseline else None
    accelerator.print(gain_table(report, baseline, baseline_name="baseline"))
    accelerator.wait_for_everyone()
    accelerator.state.destroy_process_group()  # a gloo group left to interpreter exit can abort the process


if __name__ == "__main__":
    main()
