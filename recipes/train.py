"""Train a CTR model with MLoRA and report per-domain AUC.

    accelerate launch recipes/train.py                                   # recipes/configs/default.yaml
    accelerate launch recipes/train.py --config recipes/configs/tiny.yaml train.lr=3e-3 mlora.mode=two_stage

A thin command line over `mlora_peft.training`: read the config, train, report. What happens:
config, Accelerator, data, model, optimiser, prepare, resume, loop with early stopping on
per-domain validation AUC, per-domain test report, save. Modes: `joint` (backbone and adapters
from scratch, the paper's main regime), `two_stage` (the shared backbone on all domains first,
then only the adapters with a fresh optimiser state, A randomly initialised) and `none` (the plain
backbone). `train.checkpoint_every=N` saves the full state every N steps as safetensors + JSON;
`train.resume=true` continues from the newest complete checkpoint exactly. A folder holding another
run is refused: pass `train.resume=true` to continue it or `overwrite=true` to start it again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlora_peft.training import OutputDirError, load_config, run

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config file.")
    parser.add_argument("overrides", nargs="*", help="Dotted key=value overrides, e.g. train.lr=3e-4.")
    args = parser.parse_args()
    try:
        cfg = load_config(args.config, args.overrides)  # checked before any data is read
    except ValueError as error:
        parser.error(str(error))
    try:
        run(cfg)
    except OutputDirError as error:  # a folder holding another run: say what to do, no traceback
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
