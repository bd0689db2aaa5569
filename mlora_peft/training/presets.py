"""The official MLoRA code's rank divisors, per data set and backbone (`mlora.rank_divisor_preset`).

Read from the `lora_reduce` of each `config/<data set>/<backbone>_mlora.json` of the paper's code
(github.com/gaohaining/MLoRA, rank `max(width // lora_reduce, 1)`); `mlp` is its plain `mlora` model.
"""

from __future__ import annotations

PAPER_RANK_DIVISORS: dict[str, dict[str, int]] = {
    "amazon6": {"mlp": 16, "wdl": 16, "nfm": 256, "deepfm": 16, "dcn": 128, "xdeepfm": 16, "autoint": 16,
                "fibinet": 16, "pnn": 16},
    "movielens": {"mlp": 16, "wdl": 16, "nfm": 4, "deepfm": 32, "dcn": 16, "xdeepfm": 32, "autoint": 4,
                  "fibinet": 32, "pnn": 16},
    "taobao10": {"mlp": 256, "wdl": 16, "nfm": 16, "deepfm": 256, "dcn": 16, "xdeepfm": 16, "autoint": 16,
                 "fibinet": 256, "pnn": 16},
}
"""Data set -> backbone -> the rank divisor the paper's configs use."""

PRESET_OF_SOURCE = {"amazon": "amazon6", "movielens": "movielens", "taobao": "taobao10"}
"""`rank_divisor_preset=paper`: the paper's data set that each `data.source` stands for."""

PRESETS = ("none", "paper", *PAPER_RANK_DIVISORS)
"""The values `mlora.rank_divisor_preset` takes."""


def preset_rank_divisor(preset: str, model: str, source: str) -> int | None:
    """The paper's rank divisor for `model` under `preset`, or None for preset "none".

    Example:
        >>> preset_rank_divisor("paper", "dcn", "amazon"), preset_rank_divisor("movielens", "nfm", "csv")
        (128, 4)
        >>> preset_rank_divisor("none", "mlp", "amazon") is None
        True

    Raises:
        ValueError: an unknown preset, "paper" with a source the paper did not use, or a backbone the paper
            did not configure.
    """
    if preset == "none":
        return None
    if preset not in PRESETS:
        raise ValueError(f"mlora.rank_divisor_preset={preset!r} is unknown; use one of {list(PRESETS)}.")
    if preset == "paper":
        if source not in PRESET_OF_SOURCE:
            raise ValueError(f"mlora.rank_divisor_preset=paper needs a data set of the paper (data.source "
                             f"{sorted(PRESET_OF_SOURCE)}), not {source!r}; name one of "
                             f"{list(PAPER_RANK_DIVISORS)} instead, or set mlora.rank_divisor.")
        preset = PRESET_OF_SOURCE[source]
    divisors = PAPER_RANK_DIVISORS[preset]
    if model not in divisors:
        raise ValueError(f"The paper configures no rank divisor for model.name={model!r} on {preset} (it has "
                         f"{sorted(divisors)}); set mlora.rank_divisor instead of mlora.rank_divisor_preset.")
    return divisors[model]
