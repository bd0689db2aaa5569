"""`mlora.rank_divisor_preset`: the paper's per-backbone rank divisors reach the adapters."""

import pytest

from pathlib import Path

from mlora_peft.training import build, load_config

TINY = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "tiny.yaml"
from mlora_peft.training.config import rank_divisor_of
from mlora_peft.training.presets import PAPER_RANK_DIVISORS
from mlora_peft.tuner.layer import MultiDomainLoraLayer


@pytest.mark.parametrize("preset,model,divisor", [("amazon6", "nfm", 256), ("movielens", "deepfm", 32)])
def test_a_preset_gives_each_adapted_layer_the_rank_of_the_papers_divisor(preset, model, divisor):
    cfg = load_config(TINY, ["mlora.r=null", f"mlora.rank_divisor_preset={preset}", f"model.name={model}", "data.rows=600",
                             "mlora.rank_divisor=2"])
    model_ = build.build_model(cfg, build.load_data(cfg))
    layers = [m for m in model_.modules() if isinstance(m, MultiDomainLoraLayer)]
    assert layers and PAPER_RANK_DIVISORS[preset][model] == divisor
    for layer in layers:  # mdlora_A is (D, r, in); r from the preset, not from mlora.rank_divisor=2
        assert layer.mdlora_A["default"].shape[1] == max(layer.out_features // divisor, 1)


def test_paper_follows_the_data_source_and_refuses_what_the_paper_did_not_run():
    cfg = load_config(TINY, ["mlora.r=null", "mlora.rank_divisor_preset=paper", "data.source=amazon", "model.name=dcn"])
    assert rank_divisor_of(cfg) == 128
    with pytest.raises(ValueError, match="data set of the paper"):
        load_config(TINY, ["mlora.r=null", "mlora.rank_divisor_preset=paper"])  # synthetic data
    with pytest.raises(ValueError, match="no rank divisor for model.name='dcnv2'"):
        load_config(TINY, ["mlora.r=null", "mlora.rank_divisor_preset=amazon6", "model.name=dcnv2"])
    with pytest.raises(ValueError, match="both set the rank"):
        load_config(TINY, ["mlora.rank_divisor_preset=amazon6"])
    assert load_config(TINY, ["mlora.r=null", "mlora.rank_divisor_preset=paper", "mlora.mode=none"]).mlora.mode == "none"
