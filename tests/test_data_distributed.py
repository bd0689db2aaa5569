"""Two accelerate processes (CPU, gloo): each composition covers every training row once per epoch, and
evaluation through `gather_for_metrics` returns every row once, for the in-memory and streaming paths.

Run by pytest (it launches this file with `accelerate launch`); the `__main__` block is the worker.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

COMPOSITIONS = ("mixed", "per_domain", "sorted")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_see_every_row_once(tmp_path):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), __file__, str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["processes"] == 2
    for composition in COMPOSITIONS:
        for epoch in report["train"][composition]:
            assert epoch["rows_once"], (composition, epoch)
            assert epoch["batches_per_process"][0] == epoch["batches_per_process"][1]
            assert epoch["composition_ok"]
    assert report["eval_in_memory_once"] and report["eval_streaming_once"]


def _worker(out_dir: Path) -> None:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    from mlora_peft.data import StreamingBatches, make_loader, make_synthetic

    accelerator = Accelerator(cpu=True)
    data = make_synthetic(num_domains=3, rows=2500, imbalance=1.7, seed=0)
    train = data.splits["train"].add_column("row", list(range(data.splits["train"].num_rows)))
    validation = data.splits["validation"].add_column("row", list(range(data.splits["validation"].num_rows)))
    report = {"processes": accelerator.num_processes, "train": {}}
    for composition in COMPOSITIONS:
        loader = accelerator.prepare(make_loader(train, batch_size=64, composition=composition, seed=1))
        epochs = []
        for _ in range(2):
            rows, ok, batches = [], True, 0
            for batch in loader:
                domains = batch["domain_id"]
                ok &= domains.unique().numel() == 1 if composition == "per_domain" else True
                ok &= bool((domains[1:] >= domains[:-1]).all()) if composition == "sorted" else True
                rows += batch["row"].tolist()
                batches += 1
            all_rows = gather_object(rows)
            epochs.append({"rows_once": sorted(all_rows) == list(range(train.num_rows)),
                           "batches_per_process": gather_object([batches]), "composition_ok": all(gather_object([ok]))})
        report["train"][composition] = epochs

    eval_loader = accelerator.prepare(make_loader(validation, batch_size=50, shuffle=False))
    gathered = torch.cat([accelerator.gather_for_metrics(b["row"]) for b in eval_loader])
    report["eval_in_memory_once"] = sorted(gathered.tolist()) == list(range(validation.num_rows))

    chunks = lambda: (validation.with_format("arrow")[start: start + 300]  # noqa: E731
                      for start in range(0, validation.num_rows, 300))
    stream = torch.utils.data.DataLoader(StreamingBatches(chunks, batch_size=64, shuffle=False), batch_size=None)
    gathered = torch.cat([accelerator.gather_for_metrics(b["row"]) for b in accelerator.prepare(stream)])
    report["eval_streaming_once"] = sorted(gathered.tolist()) == list(range(validation.num_rows))
    if accelerator.is_main_process:
        (out_dir / "report.json").write_text(json.dumps(report))
    accelerator.end_training()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
