"""Forward + backward time of a routed multi-domain Linear, relative to a plain trainable `nn.Linear`.

For mixed batches (uniform random domain ids) with D = 2, 10, 100 domains and for a one-domain
batch, three ways to compute `W x + b + s * B_d A_d x + b_d` are timed side by side:

  routed  the library's `routed_linear`, plus `group_by_domain` once per forward (a model with
          several adapted layers computes the grouping once per batch and shares it)
  loop    a Python loop over the domains present: select their rows, low-rank matmul, index_add
          back (how PEFT serves mixed-batch LoRA inference)
  every   every domain's low-rank term for every row, then each row picks its own (STAR-style)

The baseline and the adapted layers take inputs of the same shapes, `x` requiring grad; gradients
come from `torch.autograd.grad`, so nothing accumulates between calls. After a warm-up, rounds
time each approach right after the plain Linear, and a ratio is the median over the rounds of
approach / plain, which cancels load that comes and goes (the CPU may be shared). The routed
column's quartiles over the rounds come with it: a target counts as met (or missed) only when
three rounds in four meet (or miss) it, otherwise it is "within noise".

    python -m benchmarks.bench_routing [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mlora_peft.tuner.routed_linear import group_by_domain, routed_linear

from benchmarks.timing import Spread, seconds_per_call

ROWS, FAN_IN, FAN_OUT, RANK, SCALING = 4096, 256, 128, 8, 2.0
EVERY_LIMIT_BYTES = 64 * 2**20  # "every" is skipped when its (N, D, out) intermediate is larger
SCENARIOS = [  # (label, domains, one-domain batch)
    ("mixed, D=2", 2, False), ("mixed, D=10", 10, False), ("mixed, D=100", 100, False), ("one domain", 10, True),
]
TARGETS = {"mixed, D=10": 1.5, "mixed, D=100": 2.0, "one domain": 1.3}
APPROACHES = ("routed", "loop", "every")


@dataclass
class Params:
    x: Tensor  # (N, in)
    weight: Tensor  # (out, in)
    bias: Tensor  # (out,)
    lora_A: Tensor  # (D, r, in)
    lora_B: Tensor  # (D, out, r)
    domain_bias: Tensor  # (D, out)

    def trainable(self) -> list[Tensor]:
        return [t for t in vars(self).values() if t.requires_grad]


def make_params(num_domains: int, train_base: bool) -> Params:
    def param(*shape: int, trainable: bool = True) -> Tensor:
        return (torch.randn(*shape) * 0.1).requires_grad_(trainable)

    return Params(
        x=param(ROWS, FAN_IN),
        weight=param(FAN_OUT, FAN_IN, trainable=train_base),
        bias=param(FAN_OUT, trainable=train_base),
        lora_A=param(num_domains, RANK, FAN_IN),
        lora_B=param(num_domains, FAN_OUT, RANK),
        domain_bias=param(num_domains, FAN_OUT),
    )


def routed(p: Params, ids: Tensor) -> Tensor:
    segments = group_by_domain(ids, p.lora_A.shape[0])
    return routed_linear(p.x, p.weight, p.bias, p.lora_A, p.lora_B, p.domain_bias, segments, SCALING)


def domain_loop(p: Params, ids: Tensor) -> Tensor:
    out = F.linear(p.x, p.weight, p.bias) + p.domain_bias[ids]  # (N, out)
    for d in ids.unique().tolist():
        rows = (ids == d).nonzero().squeeze(1)  # (n_d,)
        codes = p.x.index_select(0, rows) @ p.lora_A[d].t()  # (n_d, r)
        out.index_add_(0, rows, codes @ p.lora_B[d].t(), alpha=SCALING)
    return out


def every_domain(p: Params, ids: Tensor) -> Tensor:
    num_domains = p.lora_A.shape[0]
    codes = (p.x @ p.lora_A.reshape(num_domains * RANK, FAN_IN).t()).view(ROWS, num_domains, RANK)  # (N, D, r)
    low_rank = torch.einsum("ndr,dor->ndo", codes, p.lora_B)  # (N, D, out)
    picked = low_rank[torch.arange(ROWS), ids]  # (N, out)
    return F.linear(p.x, p.weight, p.bias) + SCALING * picked + p.domain_bias[ids]


def fwd_bwd(forward: Callable[[Params, Tensor], Tensor], p: Params, ids: Tensor) -> Callable[[], None]:
    grad_out = torch.randn(ROWS, FAN_OUT)
    inputs = p.trainable()
    return lambda: torch.autograd.grad(forward(p, ids), inputs, grad_out)


def plain_linear() -> Callable[[], None]:
    linear = torch.nn.Linear(FAN_IN, FAN_OUT)
    x = torch.randn(ROWS, FAN_IN, requires_grad=True)
    grad_out = torch.randn(ROWS, FAN_OUT)
    inputs = [x, *linear.parameters()]
    return lambda: torch.autograd.grad(linear(x), inputs, grad_out)


def interleaved_spreads(plain: Callable[[], None], runs: dict[str, Callable[[], None]], rounds: int, calls: int
                        ) -> tuple[float, dict[str, Spread]]:
    """Best plain seconds per call, and the spread of each run's time relative to the plain run timed just before it.

    `timing.paired_ratios` for several runs at once: each round times every run, each after its own plain run.
    """
    for run in (plain, *runs.values()):
        run(), run()  # warm up
    plain_best = float("inf")
    ratios: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            baseline = seconds_per_call(plain, calls)
            ratios[name].append(seconds_per_call(run, calls) / baseline)
            plain_best = min(plain_best, baseline)
    return plain_best, {name: Spread.of(r) for name, r in ratios.items()}


def scenario_ratios(num_domains: int, one_domain: bool, train_base: bool, rounds: int, calls: int
                    ) -> tuple[float, dict[str, Optional[Spread]]]:
    """Plain Linear milliseconds and each approach's time relative to it (None when skipped)."""
    torch.manual_seed(0)
    p = make_params(num_domains, train_base)
    ids = torch.full((ROWS,), num_domains - 1) if one_domain else torch.randint(0, num_domains, (ROWS,))
    runs = {"routed": fwd_bwd(routed, p, ids), "loop": fwd_bwd(domain_loop, p, ids)}
    every_bytes = ROWS * num_domains * FAN_OUT * p.x.element_size()
    if every_bytes <= EVERY_LIMIT_BYTES:
        runs["every"] = fwd_bwd(every_domain, p, ids)
    plain_seconds, ratios = interleaved_spreads(plain_linear(), runs, rounds, calls)
    return plain_seconds * 1e3, {name: ratios.get(name) for name in APPROACHES}


def print_table(title: str, rows: dict[str, tuple[float, dict[str, Optional[Spread]]]]) -> None:
    print(f"\n{title}")
    print(f"{'batch':<14}{'plain ms':>9}" + "".join(f"{name:>9}" for name in APPROACHES) + "   routed quartiles")
    for label, (plain_ms, ratios) in rows.items():
        cells = "".join(f"{'skipped' if r is None else f'{r.median:.2f}x':>9}" for r in ratios.values())
        routed = ratios["routed"]
        print(f"{label:<14}{plain_ms:>9.2f}{cells}   {routed.low:.2f}-{routed.high:.2f}{routed.verdict(TARGETS.get(label))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (noisier numbers)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds, calls = (4, 2) if args.quick else (15, 3)
    print(f"batch {ROWS}, {FAN_IN} -> {FAN_OUT}, r = {RANK}, {args.threads} threads; forward + backward time "
          f"relative to a plain trainable nn.Linear (median of {rounds} paired rounds of {calls} calls)")
    print("routed includes group_by_domain once per forward; a multi-layer model shares it across layers")
    print(f"every is skipped when its (N, D, out) intermediate exceeds {EVERY_LIMIT_BYTES // 2**20} MiB")
    for train_base, title in ((True, "base weight trainable (joint training)"), (False, "base weight frozen")):
        rows = {label: scenario_ratios(d, one, train_base, rounds, calls) for label, d, one in SCENARIOS}
        print_table(title, rows)


if __name__ == "__main__":
    main()
