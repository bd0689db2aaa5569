"""`MultiDomainLoraConfig`: the settings of an MLoRA adapter, each documented once in its help."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from peft import PeftConfig

class _PeftTypeName(str):
    """Our key in PEFT's registries: a plain string (PEFT's `PeftType` enum is closed) that also has
    the enum's `.value`, which PEFT's messages read (e.g. `get_peft_model(..., mixed=True)`)."""

    @property
    def value(self) -> str:
        return str(self)


PEFT_TYPE = _PeftTypeName("MULTI_DOMAIN_LORA")
DEFAULT_RANK_DIVISOR = 64
"""Ranks 4, 2, 1 for widths 256, 128, 64: under 6% of a zoo backbone's dense parameters per domain, and on
validation as good as 16 on the benchmark's ML-100K splits, Amazon-6 and the synthetic main job."""


@dataclass
class MultiDomainLoraConfig(PeftConfig):
    """Configuration of a multi-domain low-rank adapter (MLoRA, Yang et al., RecSys 2024).

    Every targeted linear layer computes `h = W x + b + scaling * B_d A_d dropout(x) + b_d` for a
    sample of domain `d`. The help text of each field is the reference documentation.

    Example:
        >>> from mlora_peft import MultiDomainLoraConfig
        >>> config = MultiDomainLoraConfig(domain_names=["female", "male"], rank_divisor=8)
        >>> config.num_domains, config.domain_index("male")
        (2, 1)
    """

    num_domains: Optional[int] = field(
        default=None,
        metadata={
            "help": "Number of domains D; each targeted layer holds D adapters. May be left out when "
            "`domain_names` is given (it then equals len(domain_names))."
        },
    )
    domain_names: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Names of the domains in index order; they fix D and the name -> index map, so "
            "batches may route by name. Stored in adapter_config.json."
        },
    )
    r: Optional[int] = field(
        default=None,
        metadata={
            "help": "Fixed rank of every adapter. Leave None to derive each layer's rank from its "
            "width with `rank_divisor`."
        },
    )
    rank_divisor: Optional[int] = field(
        default=None,
        metadata={
            "help": "The paper's temperature coefficient alpha: a layer with `out_features` outputs "
            f"gets rank max(out_features // rank_divisor, 1). Used when `r` is None; "
            f"defaults to {DEFAULT_RANK_DIVISOR} when neither is given."
        },
    )
    lora_alpha: Optional[float] = field(
        default=None,
        metadata={
            "help": "Scale of the low-rank term is lora_alpha / r. None keeps the scale at 1.0, as in "
            "the paper."
        },
    )
    domain_bias: bool = field(
        default=True,
        metadata={"help": "Add the paper's per-domain bias b_d to each targeted layer's output."},
    )
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout probability applied to the adapter's input (not to W x)."},
    )
    init_weights: Union[bool, Literal["gaussian"]] = field(
        default=True,
        metadata={
            "help": "True: A Kaiming-uniform, B and b_d zero, so a fresh adapter leaves outputs "
            "unchanged. 'gaussian': A ~ N(0, 1/r), B and b_d zero. False: B and b_d random too "
            "(for tests only: outputs change at once)."
        },
    )
    train_base: bool = field(
        default=False,
        metadata={
            "help": "False: the base model is frozen and only adapters train (PEFT's default, the "
            "paper's second stage). True: joint training, base and adapters train together (the "
            "paper's main regime); save_pretrained then also stores the base weights."
        },
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Modules to adapt: a list of names (suffix match), a regex (full match) or "
            "'all-linear'. None: the model's own `mlora_target_modules` attribute when it has one, "
            "otherwise every nn.Linear except output heads with out_features == 1."
        },
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Modules never adapted: a list of names (suffix match) or a regex."},
    )
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Modules (not adapted) that are trained and saved with the adapter."},
    )
    domain_key: str = field(
        default="domain_id",
        metadata={
            "help": "Key of the per-sample domain ids when the model's first argument is a dict "
            "(the key is left in the batch)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        self._check_domains()
        self._check_ranks()
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout={self.lora_dropout} must lie in [0, 1).")
        if self.init_weights not in (True, False, "gaussian"):
            raise ValueError(f"init_weights={self.init_weights!r}: use True, False or 'gaussian'.")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if not self.domain_key:
            raise ValueError("domain_key must be a non-empty string, e.g. 'domain_id'.")

    def _check_domains(self) -> None:
        if self.domain_names is not None:
            names = check_domain_names(self.domain_names, "domain_names")
            if self.num_domains is not None and self.num_domains != len(names):
                raise ValueError(
                    f"num_domains={self.num_domains} disagrees with the {len(names)} domain_names; "
                    "drop num_domains or make them agree."
                )
            self.domain_names = names
            self.num_domains = len(names)
        if self.num_domains is None:
            raise ValueError("Give num_domains=D (an int >= 1) or domain_names=[...] to MultiDomainLoraConfig.")
        if isinstance(self.num_domains, bool) or not isinstance(self.num_domains, int) or self.num_domains < 1:
            raise ValueError(f"num_domains={self.num_domains!r} must be an int >= 1.")

    def _check_ranks(self) -> None:
        for name in ("r", "rank_divisor"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be an int >= 1 (or None).")
        if self.r is not None and self.rank_divisor is not None:
            raise ValueError(
                f"Both r={self.r} and rank_divisor={self.rank_divisor} are set; give only one "
                "(a fixed rank or a rank derived from each layer's width)."
            )
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha={self.lora_alpha} must be > 0, or None for a scale of 1.0.")

    def rank_for(self, out_features: int) -> int:
        """The adapter rank of a layer with `out_features` outputs."""
        if self.r is not None:
            return self.r
        return max(out_features // (self.rank_divisor or DEFAULT_RANK_DIVISOR), 1)

    def scaling_for(self, rank: int) -> float:
        """The factor multiplying `B_d A_d x` in a layer of rank `rank`."""
        return 1.0 if self.lora_alpha is None else self.lora_alpha / rank

    def check_new_domains(self, names: Sequence[str]) -> list[str]:
        """Names for `add_domains`, checked as `domain_names` is (see `check_domain_names`) and not already used."""
        return check_domain_names(names, "add_domains", used=self.domain_names or ())

    def domain_index(self, name: str) -> int:
        """The index of domain `name`; raises `ValueError` naming the known domains."""
        if self.domain_names is None:
            raise ValueError(
                f"Domain name {name!r} given, but this adapter has no domain_names; pass integer ids "
                "or build the config with domain_names=[...]."
            )
        try:
            return self.domain_names.index(name)
        except ValueError:
            raise ValueError(f"Unknown domain {name!r}; known domains: {self.domain_names}.") from None


def check_domain_names(names: Sequence[str], argument: str, used: Sequence[str] = ()) -> list[str]:
    """Domain names as a list, refusing a bare string, empty or non-string names, duplicates and names in `used`.

    The config's `domain_names` and `add_domains` share this check, so both accept the same names.

    Args:
        names: the names given.
        argument: how the caller spells the argument in messages, e.g. `"domain_names"` or `"add_domains"`.
        used: names the adapter already has.

    Returns:
        The names as a new list.

    Raises:
        TypeError: a string (it would split into one-letter domains) or another non-sequence.
        ValueError: no names, a name that is not a non-empty string, a duplicate, or a name in `used`.

    Example:
        >>> check_domain_names(("fr", "de"), "domain_names")
        ['fr', 'de']
    """
    call = f"{argument}(" if argument == "add_domains" else f"{argument}="
    close = ")" if argument == "add_domains" else ""
    if isinstance(names, (str, bytes)):
        raise TypeError(
            f"{call}{names!r}{close} is a string, which would split into one-letter domains; pass a list of "
            f"names, e.g. {call}[{names!r}]{close}."
        )
    if not isinstance(names, Sequence):
        raise TypeError(f"{call}{names!r}{close} must be a list of domain names, e.g. {call}['fr', 'de']{close}.")
    names = list(names)
    bad = [n for n in names if not (isinstance(n, str) and n)]
    if not names or bad:
        example = [str(n) for n in names if n != ""] or ["new"]
        raise ValueError(
            f"{call}{names!r}{close} must be a non-empty list of non-empty strings"
            f"{f'; {bad[:5]!r} are not' if bad else ''}. Name each domain with a string, e.g. {call}{example!r}{close}."
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{call}{names!r}{close} holds duplicates {duplicates}; give each domain one unique name.")
    clash = sorted(set(names) & set(used))
    if clash:
        raise ValueError(
            f"{call}{names!r}{close}: {clash} are already domains of this adapter ({list(used)}); give new names."
        )
    return names
