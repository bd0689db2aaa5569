"""Onboard a new domain onto a trained run: grow the vocabularies, train only what is new, ship only what is new.

    accelerate launch recipes/add_domain.py from=runs/amazon5 output_dir=runs/office data.path=PATH/office
    accelerate launch recipes/add_domain.py from=runs/ctr output_dir=runs/ctr-nl data.source=nl.csv hub.push_to_hub=team/ctr

A thin command line over `mlora_peft.training.onboard`: rebuild the run from its folder, read the
new domain's data (the run's data settings; `data.*` keys describe the new data: for an Amazon run,
`data.path` is a folder holding the new category's file), grow the encoder and the model's tables,
train only the new adapter slices and embedding rows with early stopping on the new domain's
validation AUC, print its test AUC beside the shared model's and a single-domain model's, write
`output_dir/results.json` (train.py's schema) and save `output_dir/adapter` (the run's save plus the
new `domains/<name>/` folder); `hub.push_to_hub=REPO` pushes only that folder.
"""

from __future__ import annotations

import argparse

from mlora_peft.training import onboard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+", help="from=RUN_DIR output_dir=OUT, then dotted key=value overrides.")
    args = parser.parse_args()
    given = dict(item.partition("=")[::2] for item in args.settings if item.split("=")[0] in ("from", "output_dir"))
    overrides = [item for item in args.settings if item.split("=")[0] not in ("from", "output_dir")]
    if not given.get("from") or not given.get("output_dir"):
        parser.error("pass from=RUN_DIR (a training run's output_dir) and output_dir=OUT.")
    try:
        onboard(given["from"], given["output_dir"], overrides)
    except (ValueError, FileNotFoundError) as error:  # bad settings or folders (OutputDirError too): no traceback
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
