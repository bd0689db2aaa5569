"""Small models of three shapes that the tuner must handle, shared by tests and subprocesses."""

from __future__ import annotations

import torch
from torch import nn


class PlainMLP(nn.Module):
    """x -> Linear -> ReLU -> Linear -> ReLU -> Linear(1)."""

    def __init__(self, fan_in: int = 6, hidden: tuple[int, ...] = (16, 8)) -> None:
        super().__init__()
        widths = (fan_in, *hidden)
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.tower = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(x)).squeeze(-1)

    @staticmethod
    def example_inputs(rows: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(rows, 6, generator=generator)


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inner = nn.Sequential(nn.Linear(width, width * 2), nn.Tanh(), nn.Linear(width * 2, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(self.norm(x))


class NestedModel(nn.Module):
    """Embedding, layer norm, residual blocks and a sequence axis: Linear layers nested among other parts."""

    def __init__(self, vocab: int = 20, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList([Block(width), Block(width)])
        self.proj = nn.Linear(width, width)  # applied to (N, L, width)
        self.head = nn.Linear(width, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)  # (N, L, width)
        for block in self.blocks:
            h = block(h)
        h = torch.relu(self.proj(h)).mean(1)  # (N, width)
        return self.head(h).squeeze(-1)

    @staticmethod
    def example_inputs(rows: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(0, 20, (rows, 5), generator=generator)


class DictModel(nn.Module):
    """A CTR-style model whose forward takes a batch dict (and ignores the domain id)."""

    def __init__(self, users: int = 30, items: int = 40, dim: int = 4) -> None:
        super().__init__()
        self.user = nn.Embedding(users, dim)
        self.item = nn.Embedding(items, dim)
        self.deep = nn.Sequential(nn.Linear(2 * dim + 1, 12), nn.ReLU(), nn.Linear(12, 6), nn.ReLU())
        self.out = nn.Linear(6, 1)

    def forward(self, batch: dict) -> torch.Tensor:
        h = torch.cat([self.user(batch["user"]), self.item(batch["item"]), batch["price"].unsqueeze(-1)], -1)
        return self.out(self.deep(h)).squeeze(-1)

    @staticmethod
    def example_inputs(rows: int, generator: torch.Generator | None = None) -> dict:
        return {
            "user": torch.randint(0, 30, (rows,), generator=generator),
            "item": torch.randint(0, 40, (rows,), generator=generator),
            "price": torch.rand(rows, generator=generator),
        }


MODELS = {cls.__name__: cls for cls in (PlainMLP, NestedModel, DictModel)}


ZOO_DOMAINS = 3


def zoo_deepfm_pair() -> tuple[nn.Module, nn.Module]:
    """A small zoo DeepFM (user, item, price, domain id; hidden [16, 8], no dropout) and an MLoRA copy of
    it with the same base weights, random adapters (`init_weights=False`) and a training base."""
    from peft import get_peft_model

    from mlora_peft import MultiDomainLoraConfig, models
    from mlora_peft.features import DenseFeature, SparseFeature

    features = [SparseFeature("user", 50), SparseFeature("item", 40), DenseFeature("price"),
                SparseFeature("domain_id", ZOO_DOMAINS)]
    torch.manual_seed(0)
    plain = models.build_model("deepfm", features, hidden=[16, 8], dropout=0.0)
    torch.manual_seed(0)
    config = MultiDomainLoraConfig(num_domains=ZOO_DOMAINS, r=2, init_weights=False, train_base=True)
    return plain, get_peft_model(models.build_model("deepfm", features, hidden=[16, 8], dropout=0.0), config)


def zoo_batch(rows: int, domain: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch for `zoo_deepfm_pair`: random ids, prices and domains, or every row of `domain`."""
    generator = torch.Generator().manual_seed(seed)
    batch = {"user": torch.randint(0, 50, (rows,), generator=generator),
             "item": torch.randint(0, 40, (rows,), generator=generator),
             "price": torch.rand(rows, generator=generator),
             "domain_id": torch.randint(0, ZOO_DOMAINS, (rows,), generator=generator)}
    if domain is not None:
        batch["domain_id"] = torch.full((rows,), domain)
    return batch
