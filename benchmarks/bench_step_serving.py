"""What MLoRA costs a whole model: a training step, a served request, and which routing path wins where.

Three measurements, each timed side by side with its baseline in paired rounds (the ratio of a
round is MLoRA's time over the baseline's time just before it; the median over rounds is
reported, which cancels load that comes and goes on a shared machine). Step and serving rows also
give the rounds' quartiles, and a target counts as met (or missed) only when three rounds in four
meet (or miss) it; otherwise it is "within noise":

  step     forward, backward and Adam update of DeepFM (user and item ids with 10,000 values, a
           price, the domain id; hidden [256, 128, 64], dropout 0.5) on a mixed batch, MLoRA joint
           training at the default rank divisor, against the same step of the plain model;
           D = 2, 10, 100, and a batch of one domain at D = 10; for reference, PEFT's own LoRA with
           one adapter (no domains) on the same layers and ranks. The mixed batch comes unsorted;
           the zoo model sorts it by domain inside the call (`mlora_rows_independent`), and that
           sort is part of the measured step.
  serving  one call in `torch.inference_mode()` of the eval model: one user's 256 candidates of
           one domain, 256 mixed rows, 4,096 mixed rows; D = 10 and 100. Repeated calls reuse the
           merged weights the layers keep in inference mode; the row "weights just updated" empties
           them before every call, the cost of the first request after an update.
  paths    forward + backward of one adapted layer by the masked path and the grouped path (mixed
           rows) and by the merged path (the same rows sorted by domain, as a row-independent
           model sorts them), against the plain layer, over D: where each path stops paying.

    python -m benchmarks.bench_step_serving [--quick] [--threads 1] [--only step,serving,paths] [--device cpu]
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

import mlora_peft
from mlora_peft.tuner import layer as layer_module
from mlora_peft import models
from benchmarks.bench_speed import adam_step
from benchmarks.timing import Spread, paired_ratio, paired_ratios
from mlora_peft.features import DenseFeature, SparseFeature
from mlora_peft.tuner.masked_linear import masked_linear
from mlora_peft.tuner.merged_linear import merged_linear
from mlora_peft.tuner.routed_linear import routed_linear
from mlora_peft.tuner.routing import Routing, make_routing

VOCAB = 10_000
STEP_TARGETS = {10: 1.15}
SERVING_TARGETS = {"one domain, 256 rows": 1.2, "mixed, 256 rows": 1.5, "mixed, 4,096 rows": 1.3}


# ------------------------------------------------------------------------------------------- models
def deepfm_features(num_domains: int) -> list:
    """User and item ids with 10,000 values, a price, the domain id."""
    return [SparseFeature("user", VOCAB), SparseFeature("item", VOCAB), DenseFeature("price"),
            SparseFeature("domain_id", num_domains)]


def deepfm_pair(num_domains: int, device: str) -> tuple[nn.Module, nn.Module]:
    """The plain DeepFM and an MLoRA-adapted copy of it (joint training), both on `device`."""
    features = deepfm_features(num_domains)
    torch.manual_seed(0)
    plain = models.build_model("deepfm", features).to(device)
    torch.manual_seed(0)  # the same base weights: the two models differ by the adapters only
    config = mlora_peft.MultiDomainLoraConfig(domain_names=[f"d{i}" for i in range(num_domains)], train_base=True)
    adapted = get_peft_model(models.build_model("deepfm", features), config).to(device)
    return plain, adapted


def peft_lora_like(adapted: nn.Module, num_domains: int, device: str) -> nn.Module:
    """The same DeepFM with PEFT's own LoRA (one adapter, no domains) on the layers and at the ranks that
    `adapted` uses, its base weights training too: what one plain low-rank adapter costs, for reference."""
    layers = {name.removeprefix("base_model.model."): module.rank["default"] for name, module in adapted.named_modules()
              if isinstance(module, mlora_peft.MultiDomainLoraLayer)}
    torch.manual_seed(0)
    config = LoraConfig(target_modules=list(layers), r=max(layers.values()), rank_pattern=layers, lora_dropout=0.0)
    model = get_peft_model(models.build_model("deepfm", deepfm_features(num_domains)), config).to(device)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def make_batch(rows: int, num_domains: int, device: str, one_domain: bool = False) -> dict:
    domains = torch.full((rows,), num_domains - 1) if one_domain else torch.randint(0, num_domains, (rows,))
    batch = {"user": torch.randint(0, VOCAB, (rows,)), "item": torch.randint(0, VOCAB, (rows,)),
             "price": torch.rand(rows), "domain_id": domains, "label": (torch.rand(rows) < 0.2).float()}
    return {k: v.to(device) for k, v in batch.items()}


def served(model: nn.Module, batch: dict, cold: bool = False) -> Callable[[], None]:
    """One inference-mode call; `cold` first empties the adapted layers' kept merged weights (a few
    microseconds: the layers are found once, outside the timed call)."""
    caches = [m._merged_weight_cache for m in model.modules() if isinstance(m, mlora_peft.MultiDomainLoraLayer)]

    def call() -> None:
        for cache in caches if cold else ():
            cache.clear()
        with torch.inference_mode():
            model(batch)

    return call


# ------------------------------------------------------------------------------------- measurements
def step_rows(rounds: int, calls: int, device: str, batch_rows: int) -> list[tuple[str, int, float, Spread]]:
    """(label, D, plain ms, ratio): mixed batches at D = 2, 10, 100, and a one-domain batch at D = 10
    (the `per_domain` and `sequential` compositions, the paper's second stage)."""
    rows = []
    for num_domains, one_domain in ((2, False), (10, False), (100, False), (10, True)):
        plain, adapted = deepfm_pair(num_domains, device)
        batch = make_batch(batch_rows, num_domains, device, one_domain=one_domain)
        plain_ms, ratios = paired_ratios(adam_step(plain.train(), batch), adam_step(adapted.train(), batch),
                                         rounds, calls, device)
        label = f"D = {num_domains}" + (", one domain per batch" if one_domain else "")
        rows.append((label, num_domains if not one_domain else 0, plain_ms, Spread.of(ratios)))
        if num_domains == 10 and not one_domain:
            lora = peft_lora_like(adapted, num_domains, device)
            plain_ms, ratios = paired_ratios(adam_step(plain.train(), batch), adam_step(lora.train(), batch),
                                             rounds, calls, device)
            rows.append(("PEFT's LoRA, one adapter", 0, plain_ms, Spread.of(ratios)))
    return rows


def serving_rows(rounds: int, calls: int, device: str) -> list[tuple[str, float, Spread]]:
    rows = []
    for num_domains in (10, 100):
        plain, adapted = deepfm_pair(num_domains, device)
        plain.eval(), adapted.eval()
        for label, size, one, cold in (("one domain, 256 rows", 256, True, False),
                                       ("one domain, 256 rows, weights just updated", 256, True, True),
                                       ("mixed, 256 rows", 256, False, False), ("mixed, 4,096 rows", 4096, False, False)):
            batch = make_batch(size, num_domains, device, one_domain=one)
            run = served(adapted, batch, cold=cold)
            plain_ms, ratios = paired_ratios(served(plain, batch), run, rounds, calls * 4, device)
            rows.append((f"D = {num_domains}, {label}", plain_ms, Spread.of(ratios)))
    return rows


def path_rows(rounds: int, calls: int, device: str) -> list[tuple[str, float, float, float]]:
    """One layer's forward + backward by each path, over widths and D * r (mixed rows, 1,024 of them)."""
    rows = []
    for fan_in, fan_out, rank in ((32, 256, 4), (256, 128, 2), (128, 64, 1)):
        for num_domains in (2, 10, 30, 100):
            torch.manual_seed(0)
            x = torch.randn(1024, fan_in, device=device, requires_grad=True)
            linear = nn.Linear(fan_in, fan_out).to(device)
            A = (0.1 * torch.randn(num_domains, rank, fan_in, device=device)).requires_grad_()
            B = (0.1 * torch.randn(num_domains, fan_out, rank, device=device)).requires_grad_()
            db = torch.zeros(num_domains, fan_out, device=device, requires_grad=True)
            ids = torch.randint(0, num_domains, (1024,), device=device)
            grad = torch.randn(1024, fan_out, device=device)
            inputs = [x, linear.weight, linear.bias, A, B, db]

            def plain() -> None:
                torch.autograd.grad(linear(x), inputs[:3], grad)

            def masked() -> None:
                routing = make_routing(ids, num_domains, None, x.device, 1024)
                out = masked_linear(x, linear.weight, linear.bias, A, B, db, routing.domain_ids,
                                    routing.off_domain(num_domains), 1.0)
                torch.autograd.grad(out, inputs, grad)

            def grouped() -> None:
                routing = make_routing(ids, num_domains, None, x.device, 1024)
                out = routed_linear(x, linear.weight, linear.bias, A, B, db, routing.segments(), 1.0)
                torch.autograd.grad(out, inputs, grad)

            sorted_ids = ids.sort().values

            def merged() -> None:
                routing = Routing(sorted_ids, num_domains, None, rows_sorted=True)
                out = merged_linear(x, linear.weight, linear.bias, A, B, db, routing.sorted_offsets(), sorted_ids, 1.0)
                torch.autograd.grad(out, inputs, grad)

            ratios = [paired_ratio(plain, path, rounds, calls, device)[1] for path in (masked, grouped, merged)]
            weights_per_row = num_domains * fan_in * fan_out / (1024 * (fan_in + fan_out))
            rows.append((f"{fan_in} -> {fan_out}, D = {num_domains}", num_domains * rank, weights_per_row, *ratios))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (noisier numbers)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--only", default="step,serving,paths", help="comma-separated subset to run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--step-batch", type=int, default=1024, help="rows of the training-step batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds, calls = (5, 3) if args.quick else (15, 10)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} thread(s)"
    print(f"{where}; median of {rounds} paired rounds; masked path up to D*r = {layer_module.MASKED_MAX_CODES} on CPU")
    parts = set(args.only.split(","))
    if "step" in parts:
        print(f"\nDeepFM training step (batch {args.step_batch:,}), adapted / plain")
        for label, mixed_domains, plain_ms, spread in step_rows(rounds, calls, args.device, args.step_batch):
            print(f"  {label:<30} plain {plain_ms:7.2f} ms   {spread}{spread.verdict(STEP_TARGETS.get(mixed_domains))}")
    if "serving" in parts:
        print("\nDeepFM in inference mode, MLoRA / plain")
        for label, plain_ms, spread in serving_rows(rounds, calls, args.device):
            target = SERVING_TARGETS.get(label.split(", ", 1)[1])
            print(f"  {label:<52} plain {plain_ms:6.3f} ms   {spread}{spread.verdict(target)}")
    if "paths" in parts:
        print("\nOne layer, forward + backward on 1,024 mixed rows (merged: the same rows sorted), relative to the "
              "plain layer;\nweights/rows = D*in*out / (N*(in+out))")
        print(f"  {'layer':<22}{'D*r':>6}{'weights/rows':>14}{'masked':>9}{'grouped':>9}{'merged':>9}  fastest")
        for label, codes, weights_per_row, *ratios in path_rows(rounds, calls, args.device):
            fastest = ("masked", "grouped", "merged")[ratios.index(min(ratios))]
            print(f"  {label:<22}{codes:>6}{weights_per_row:>14.2f}" + "".join(f"{r:>8.2f}x" for r in ratios)
                  + f"  {fastest}")


if __name__ == "__main__":
    main()
