"""Is there domain-specific headroom for MLoRA? Fit four models on one split and print a verdict.

    python recipes/diagnose.py data.source=synthetic data.domain_effect=0
    python recipes/diagnose.py --config recipes/configs/movielens_gender.yaml data.domain=occupation
    python recipes/diagnose.py data.source=clicks.parquet data.label=click data.domain=country

The same config file and dotted key=value overrides as recipes/train.py (results go to
runs/diagnose unless output_dir=... is given). A thin command line over
`mlora_peft.training.diagnose`, which fits on one split:

  popularity           each row scored by the training click rate of one id (no training)
  shared               the plain backbone on all domains
  per_domain_finetune  the shared model fine-tuned on each domain alone: what a per-domain module
                       could reach at most
  mlora                MLoRA as the config's mlora section says (mode none is read as joint)

Every choice (the popularity id, each model's epochs, each domain's fine-tuning epochs) is made on
validation; the verdict is read on test. Headroom = test WAUC of per_domain_finetune minus shared;
the verdict is "headroom" when it exceeds --threshold (default below) and is
consistent: the domains where fine-tuning lowers test AUC hold under half of the test rows.
Otherwise: "no headroom", and MLoRA is not expected to help. Writes diagnosis.json (popularity,
shared, per_domain_finetune, mlora, headroom, verdict, ...), diagnosis.png, and the shared/ and
mlora/ training runs into output_dir.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlora_peft.training import HEADROOM_THRESHOLD, OutputDirError, diagnose, load_config

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config file.")
    parser.add_argument("--threshold", type=float, default=HEADROOM_THRESHOLD,
                        help=f"test WAUC gain of per-domain fine-tuning over the shared model that counts as "
                             f"headroom (default {HEADROOM_THRESHOLD:g})")
    parser.add_argument("overrides", nargs="*", help="Dotted key=value overrides, e.g. data.domain=age.")
    args = parser.parse_args()
    try:
        cfg = load_config(args.config, ["output_dir=runs/diagnose", *args.overrides])  # checked before any data
    except ValueError as error:
        parser.error(str(error))
    try:
        diagnosis = diagnose(cfg, threshold=args.threshold)
    except OutputDirError as error:  # a folder holding another run: say what to do, no traceback
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(f"\nTest AUC per domain ({diagnosis.seconds:.0f} s):\n{diagnosis.table()}")
    print(f"\n{diagnosis.verdict}")
    print(f"\nSaved {Path(cfg.output_dir) / 'diagnosis.json'} and {Path(cfg.output_dir) / 'diagnosis.png'}")


if __name__ == "__main__":
    main()
