"""Speed of MLoRA: routed layers, full training steps of every backbone, the data path, a scale run.

    python -m benchmarks.bench_speed --out runs/benchmark/speed [--quick] [--scale-rows 10000000] [--step-batch 1024]

Writes routing.json (ratios from `benchmarks/bench_routing.py`), steps.json (one Adam step of each
backbone with MLoRA over the same step without it, mixed batches, D = 2, 10, 100), data.json
(rows/s from `benchmarks/bench_data.py`'s paths) and scale.json (one epoch over synthetic rows
streamed from `stream_synthetic` with 1,000 domains, run in a child process so its peak memory is
its own). Each file holds its own note: what was measured, how, on which device.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from peft import get_peft_model
from torch import nn

import mlora_peft
from mlora_peft.tuner.config import DEFAULT_RANK_DIVISOR
from mlora_peft import models
from mlora_peft.data import StreamingBatches, make_synthetic, stream_synthetic
from mlora_peft.features import DenseFeature, SparseFeature

from benchmarks import bench_data, bench_routing
from benchmarks.timing import paired_ratio, sync

STEP_BATCH, STEP_VOCAB, STEP_DOMAINS = 1024, 10_000, (2, 10, 100)


# ---------------------------------------------------------------------------------- routed layers
def routing_ratios(quick: bool) -> dict:
    bench = bench_routing
    rounds, calls = (3, 2) if quick else (9, 3)
    rows = []
    for train_base, weights in ((True, "trainable"), (False, "frozen")):
        for label, domains, one in bench.SCENARIOS:
            plain_ms, ratios = bench.scenario_ratios(domains, one, train_base, rounds, calls)
            medians = {name: None if spread is None else spread.median for name, spread in ratios.items()}
            rows.append({"batch": label, "weights": weights, "plain_ms": plain_ms, **medians})
    note = (f"Forward + backward of one `Linear({bench.FAN_IN}, {bench.FAN_OUT})` with rank-{bench.RANK} adapters "
            f"on {bench.ROWS} rows, relative to a plain trainable `nn.Linear`; median of {rounds} paired rounds, "
            f"{torch.get_num_threads()} thread(s). routed = the library's layer; loop = a Python loop over the "
            "domains present; every = every domain's term for every row.")
    return {"note": note, "rows": rows}


# ---------------------------------------------------------------------------------- full training steps
def _step_features(num_domains: int) -> list:
    return [SparseFeature("user", STEP_VOCAB), SparseFeature("item", STEP_VOCAB), DenseFeature("price"),
            SparseFeature("domain_id", num_domains)]


def adam_step(model: nn.Module, batch: dict) -> Callable[[], None]:
    """One forward, backward and Adam update of `model` on `batch`, as a callable."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()

    def step() -> None:
        loss = loss_fn(model(batch), batch["label"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def step_ratio(name: str, num_domains: int, rounds: int, steps: int, device: str = "cpu",
               rows: int = STEP_BATCH) -> tuple[float, float]:
    """Plain step milliseconds and the median MLoRA / plain ratio over paired rounds, on batches of `rows`."""
    torch.manual_seed(0)
    features = _step_features(num_domains)
    batch = {"user": torch.randint(0, STEP_VOCAB, (rows,)), "item": torch.randint(0, STEP_VOCAB, (rows,)),
             "price": torch.rand(rows), "domain_id": torch.randint(0, num_domains, (rows,)),
             "label": (torch.rand(rows) < 0.2).float()}
    batch = {k: v.to(device) for k, v in batch.items()}
    plain = adam_step(models.build_model(name, features).to(device), batch)
    config = mlora_peft.MultiDomainLoraConfig(domain_names=[f"d{i}" for i in range(num_domains)],
                                              rank_divisor=DEFAULT_RANK_DIVISOR,
                                              train_base=True)
    adapted = adam_step(get_peft_model(models.build_model(name, features), config).to(device), batch)
    return paired_ratio(plain, adapted, rounds, steps, device)


def _where(device: str) -> str:
    if device.startswith("cuda"):
        return f"on {torch.cuda.get_device_name()}"
    return f"on the CPU, {torch.get_num_threads()} thread(s)"


def step_ratios(quick: bool, device: str = "cpu", batch: int = STEP_BATCH) -> dict:
    rounds, steps = (3, 2) if quick else (15, 10)
    rows = {}
    for name in models.list_models("backbones"):
        rows[name] = {"ratio": {}}
        for num_domains in STEP_DOMAINS:
            plain_ms, ratio = step_ratio(name, num_domains, rounds, steps, device, batch)
            rows[name]["ratio"][str(num_domains)] = ratio
            rows[name].setdefault("plain_ms", plain_ms)
    note = (f"Forward, backward and Adam update of the whole model (embeddings included) on a mixed batch of "
            f"{batch:,} rows (user and item ids with {STEP_VOCAB:,} ids each, one dense column, the domain id; "
            f"default widths), MLoRA at rank divisor {DEFAULT_RANK_DIVISOR} on the model's default placement, "
            "relative to the same "
            f"step without MLoRA; median of {rounds} paired rounds of {steps} steps, "
            f"{_where(device)}. plain ms is at D = {STEP_DOMAINS[0]}.")
    return {"device": device, "batch": batch, "note": note, "domain_counts": list(STEP_DOMAINS), "rows": rows}


# ---------------------------------------------------------------------------------- data path
def data_rates(quick: bool) -> dict:
    bench = bench_data
    rows = 100_000 if quick else 500_000
    table = bench.make_table(rows, 6)
    found = {}
    for composition in ("mixed", "per_domain", "sorted"):
        found[f"in-memory {composition}"], _ = bench.rows_per_second(
            bench.make_loader(table, batch_size=4096, composition=composition), 1)
    chunks = lambda: (table.slice(start, 1 << 18) for start in range(0, rows, 1 << 18))  # noqa: E731
    found["streaming mixed (encoded chunks)"], _ = bench.rows_per_second(StreamingBatches(chunks, batch_size=4096), 1)
    note = (f"`benchmarks/bench_data.py`'s table ({rows:,} rows, 30 sparse + 8 dense columns, 6 domains), batch 4096, "
            f"one epoch per path, {torch.get_num_threads()} thread(s).")
    return {"note": note, "rows_per_second": found}


# ---------------------------------------------------------------------------------- scale run
def scale_child(rows: int, out: Path, device: str = "cpu", num_domains: int = 1000, batch_size: int = 4096) -> None:
    """One epoch of MLoRA-MLP over `rows` streamed synthetic rows; writes timing and peak memory to `out`."""
    torch.manual_seed(0)
    fitted = make_synthetic(num_domains=num_domains, rows=50 * num_domains, imbalance=1.0, seed=0)
    stream = StreamingBatches(lambda: stream_synthetic(num_domains=num_domains, rows=rows, imbalance=1.0, seed=0,
                                                       chunk_rows=500_000),
                              batch_size=batch_size, encoder=fitted.encoder)
    features = [*fitted.feature_spec, SparseFeature("domain_id", num_domains)]
    config = mlora_peft.MultiDomainLoraConfig(domain_names=list(fitted.domain_names), rank_divisor=DEFAULT_RANK_DIVISOR,
                                              train_base=True)
    model = get_peft_model(models.build_model("mlp", features), config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    losses, seen = [], 0
    start = time.perf_counter()
    for batch in stream:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss = loss_fn(model(batch), batch["label"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
        seen += len(batch["label"])
    sync(device)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out.write_text(json.dumps({
        "num_domains": num_domains, "rows": seen, "batch_size": batch_size, "seconds": seconds,
        "rows_per_second": seen / seconds, "final_loss": torch.stack(losses[-50:]).mean().item(), "peak_rss_mib": peak,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
        "device": device,
        "note": (f"One epoch of MLoRA-MLP (joint, rank divisor {DEFAULT_RANK_DIVISOR}, {num_domains:,} domains of equal "
                 "expected size) "
                 f"over {seen:,} rows generated by `stream_synthetic` in 500,000-row chunks, encoded on the fly "
                 f"and batched by `StreamingBatches` (mixed), training {_where(device)}, one process; "
                 "seconds include generation, encoding and training; peak RSS of that process."),
    }, indent=2))


def run_speed(out_dir: Path, quick: bool, scale_rows: Optional[int] = None, device: str = "cpu",
              parts: tuple[str, ...] = ("routing", "steps", "data", "scale"), step_batch: int = STEP_BATCH) -> None:
    """The speed measurements `parts` into `out_dir`, skipping files that exist (delete one to rerun it).

    Files measured off the CPU get the device as a suffix (steps_cuda.json, scale_cuda.json); steps
    on batches of another size than `STEP_BATCH` get it too (steps_cuda_batch16384.json).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if device == "cpu" else "_" + device.split(":")[0]
    measures = {"routing": lambda: routing_ratios(quick), "steps": lambda: step_ratios(quick, device, step_batch),
                "data": lambda: data_rates(quick)}
    steps_name = "steps" + suffix + ("" if step_batch == STEP_BATCH else f"_batch{step_batch}")
    for name in [p for p in parts if p in measures]:
        path = out_dir / f"{steps_name if name == 'steps' else name}.json"
        if not path.exists():
            path.write_text(json.dumps(measures[name](), indent=2))
            print(f"speed: wrote {path}", flush=True)
    path = out_dir / f"scale{suffix}.json"
    if "scale" in parts and not path.exists():
        rows = scale_rows or (200_000 if quick else 10_000_000)
        subprocess.run([sys.executable, "-m", "benchmarks.bench_speed", "--scale-child", str(rows), "--out", str(path),
                        "--threads", str(torch.get_num_threads()), "--device", device], check=True,
                       cwd=Path(__file__).resolve().parents[1])
        print(f"speed: wrote {path}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark/speed"), help="where the JSON files go")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, a small scale run")
    parser.add_argument("--scale-rows", type=int, default=None, help="rows of the scale run (default 10M)")
    parser.add_argument("--scale-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (steps and the scale run)")
    parser.add_argument("--parts", default="routing,steps,data,scale", help="which measurements to run")
    parser.add_argument("--step-batch", type=int, default=STEP_BATCH,
                        help=f"rows per batch of the training-step ratios (the goal is judged at {STEP_BATCH})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.scale_child is not None:
        scale_child(args.scale_child, args.out, args.device)
    else:
        run_speed(args.out, args.quick, args.scale_rows, args.device, tuple(args.parts.split(",")), args.step_batch)
