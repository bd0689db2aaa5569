"""One run per output folder: refusing a folder that holds another run, and the run's `log.jsonl`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from accelerate import Accelerator

from .checkpoint import CHECKPOINTS, TrainingState

class OutputDirError(ValueError):
    """`output_dir` cannot take this run: it holds another run, or files that are not a run's."""


RUN_MARKERS = ("config.yaml", "log.jsonl", "results.json", CHECKPOINTS)
"""Files and folders that show a folder holds a training run (what `overwrite=true` may clear)."""


def check_output_dir(out_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Decide what to do with `out_dir` before a run starts; returns whether it must be cleared first.

    Args:
        out_dir: the run's folder.
        resume: `train.resume`: continue the run the folder holds.
        overwrite: `overwrite`: delete the run the folder holds and start again.

    Returns:
        True when `overwrite` asks to clear a folder holding a run.

    Raises:
        OutputDirError: (a `ValueError`) the folder holds another run's files (and neither choice was made), or it holds files
            that are not a training run's (which `overwrite` does not delete).

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> check_output_dir(folder, resume=False, overwrite=False)
        False
        >>> _ = (folder / "log.jsonl").write_text("{}")
        >>> check_output_dir(folder, resume=False, overwrite=True)
        True
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"output_dir {out_dir} is a file; choose a folder.")
    entries = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if not entries or resume:
        return False
    if not any(name in RUN_MARKERS for name in entries):
        raise OutputDirError(f"output_dir {out_dir} is not empty and holds no training run ({entries[:5]}); choose a "
                         "new or empty folder (overwrite=true clears only folders holding a run).")
    if overwrite:
        return True
    raise OutputDirError(f"output_dir {out_dir} holds another run's files ({entries[:5]}). Pass train.resume=true to "
                     "continue that run from its newest checkpoint, or overwrite=true to delete its files and "
                     "start again, or choose another output_dir.")


def prepare_output_dir(accelerator: Accelerator, out_dir: Path, resume: bool, overwrite: bool) -> None:
    """`check_output_dir` on every process, then the main process clears (if asked) and creates the folder."""
    clear = check_output_dir(out_dir, resume, overwrite)
    accelerator.wait_for_everyone()  # every process has checked before anything changes
    if accelerator.is_main_process:
        if clear:
            for entry in Path(out_dir).iterdir():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()


class LogFile:
    """The run's `log.jsonl`: one record per epoch, also sent to the trackers.

    On a resume the records written after the checkpoint (by the interrupted run) are dropped, so
    the file holds each epoch once.
    """

    def __init__(self, path: Path, accelerator: Accelerator, keep: int = 0) -> None:
        self.path, self.accelerator = Path(path), accelerator
        if accelerator.is_main_process:
            lines = self.path.read_text().splitlines(keepends=True)[:keep] if self.path.exists() else []
            self.path.write_text("".join(lines))
        accelerator.wait_for_everyone()

    def write(self, state: TrainingState, stage: str, loss: Optional[float], lr: float, report: dict) -> dict:
        """Append the epoch's record (and count it in `state.logged_epochs`); returns the record."""
        record = {"stage": stage, "epoch": state.epoch, "step": state.global_step, "train/loss": loss,
                  "train/lr": lr, "eval/wauc": report["wauc"], "eval/mean_auc": report["mean_auc"],
                  "eval/logloss": report["logloss"]}
        for name, row in report["per_domain"].items():
            record[f"eval/{name}/auc"], record[f"eval/{name}/logloss"] = row["auc"], row["logloss"]
        self.accelerator.log({k: v for k, v in record.items() if isinstance(v, float)}, step=state.global_step)
        if self.accelerator.is_main_process:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        state.logged_epochs += 1
        return record
