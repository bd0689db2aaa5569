"""Evaluate a saved training run per domain, optionally beside another run.

    python recipes/evaluate.py runs/default                        # the run's own test split
    python recipes/evaluate.py runs/default --split validation --baseline runs/default/plain

Rebuilds the model from the run's `config.yaml`, loads its adapter (or, for a plain run, its
`model.safetensors`), evaluates it on the data the config describes and prints the per-domain
table (with the gain over `--baseline` when given).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import yaml
from accelerate import Accelerator
from peft import PeftModel
from safetensors.torch import load_file
from torch import nn

from mlora_peft.evaluation import evaluate, gain_table
from mlora_peft.data import MultiDomainData
from train import TrainConfig, _build, build_model, load_data, make_accelerator


def load_run(run_dir: Path) -> tuple[TrainConfig, nn.Module, MultiDomainData]:
    """The config, the trained model and the data of a saved run."""
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: pass the output_dir of a finished training run.")
    cfg = _build(TrainConfig, yaml.safe_load(config_path.read_text()), "")
    data = load_data(cfg)
    if cfg.mlora.mode == "none":
        model = build_model(cfg, data)
        model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    else:
        plain_cfg = dataclasses.replace(cfg, mlora=dataclasses.replace(cfg.mlora, mode="none"))
        model = PeftModel.from_pretrained(build_model(plain_cfg, data), run_dir / "adapter")
    return cfg, model, data


def evaluate_run(run_dir: Path, split: str, accelerator: Accelerator) -> dict:
    cfg, model, data = load_run(run_dir)
    if split not in data.splits:
        raise ValueError(f"split={split!r} is not in the run's data; choose one of {sorted(data.splits)}.")
    loader = data.loader(split, batch_size=max(cfg.train.batch_size // accelerator.num_processes, 1),
                         num_processes=accelerator.num_processes)
    model = accelerator.prepare_model(model, evaluation_mode=True)  # no DDP wrapper: nothing here trains
    loader = accelerator.prepare_data_loader(loader)
    return evaluate(model, loader, accelerator, list(data.domain_names))


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
