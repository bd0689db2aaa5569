"""Serving: the export-friendly gathered path, exported programs equal to eager, ONNX when installed."""

import pytest
import torch
from peft import get_peft_model

from mlora_peft import MultiDomainLoraConfig, MultiDomainLoraLayer
from mlora_peft.tuner.routing import current_routing
from mlora_peft.export import RoutedForExport, export_merged, export_onnx, export_routed
from mlora_peft.features import DenseFeature, SequenceFeature, SparseFeature
from mlora_peft.models import build_model
from tests.models import MODELS

IDS = torch.tensor([0, 1, 2, 2, 1, 0, 0, 2, 1, 1, 2, 0])
ZOO_SPEC = [SparseFeature("user", 30, 4), SparseFeature("item", 40, 4), DenseFeature("price"),
            SequenceFeature("history", 40, max_length=5, embedding_dim=4), SparseFeature("domain_id", 3, 4)]
ZOO = {"deepfm": {}, "dcnv2": {}, "autoint": dict(attention_layers=1, head_dim=4), "xdeepfm": dict(cin_layers=(8,))}


def _model(name: str, **kwargs):
    config = dict(domain_names=["us", "eu", "asia"], r=2, init_weights=False) | kwargs
    return get_peft_model(MODELS[name](), MultiDomainLoraConfig(**config)).eval()


def _inputs(name: str, rows: int = 12):
    return MODELS[name].example_inputs(rows, torch.Generator().manual_seed(rows))


def _routed(model, inputs, ids):
    """The eager model, routed by its hooks (the batch key for dict models, the keyword otherwise)."""
    return model({**inputs, "domain_id": ids}) if isinstance(inputs, dict) else model(inputs, domain_ids=ids)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gathered_path_equals_the_grouped_path(name, monkeypatch):
    model, x = _model(name), _inputs(name)
    grouped = _routed(model, x, IDS)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)  # the layers take the export path
    gathered = RoutedForExport(model)(x, domain_ids=IDS)
    assert current_routing() is None  # the wrapper ends its routing after the call
    torch.testing.assert_close(gathered, grouped, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exported_routed_program_reproduces_eager_at_other_batch_sizes(name):
    model = _model(name)
    program = export_routed(model, (_inputs(name),), IDS)
    for rows in (12, 5, 1):
        x, ids = _inputs(name, rows), IDS.flip(0)[:rows]
        torch.testing.assert_close(program.module()(x, domain_ids=ids), _routed(model, x, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exported_merged_program_reproduces_eager_and_leaves_the_model(name):
    model = _model(name)
    program = export_merged(model, "asia", (_inputs(name),))
    assert sum(isinstance(m, MultiDomainLoraLayer) for m in model.modules()) > 0
    assert not any(m.merged for m in model.modules() if isinstance(m, MultiDomainLoraLayer))
    x = _inputs(name, 7)
    torch.testing.assert_close(program.module()(x), _routed(model, x, torch.full((7,), 2)), rtol=1e-5, atol=1e-5)


def test_export_refuses_training_mode_and_float_ids():
    model = _model("PlainMLP")
    with pytest.raises(TypeError, match=r"domain_ids must be an int64 tensor .* got a torch.float32 tensor"):
        export_routed(model, (_inputs("PlainMLP"),), IDS.float())
    with pytest.raises(ValueError, match=r"call model.eval\(\) first"):
        export_merged(model.train(), "us", (_inputs("PlainMLP"),))


def test_onnx_export_matches_eager(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    model, x = _model("PlainMLP"), _inputs("PlainMLP")
    path = export_onnx(export_routed(model, (x,), IDS), tmp_path / "routed.onnx")
    session = onnxruntime.InferenceSession(str(path))
    feeds = dict(zip([i.name for i in session.get_inputs()], [x.numpy(), IDS.numpy()]))
    torch.testing.assert_close(torch.from_numpy(session.run(None, feeds)[0]), model(x, domain_ids=IDS),
                               rtol=1e-5, atol=1e-5)


def _zoo_batch(rows: int) -> dict:
    g = torch.Generator().manual_seed(rows)
    return {"user": torch.randint(0, 30, (rows,), generator=g), "item": torch.randint(0, 40, (rows,), generator=g),
            "price": torch.rand(rows, generator=g), "history": torch.randint(0, 40, (rows, 5), generator=g),
            "domain_id": IDS.flip(0)[:rows]}


@pytest.mark.parametrize("backbone", sorted(ZOO))
def test_zoo_backbone_exports_routed_and_merged_equal_to_eager(backbone):
    torch.manual_seed(0)
    net = build_model(backbone, ZOO_SPEC, hidden=(16, 8), dropout=0.0, **ZOO[backbone])
    model = get_peft_model(net, MultiDomainLoraConfig(num_domains=3, init_weights=False, rank_divisor=4)).eval()
    example = _zoo_batch(12)
    routed = export_routed(model, (example,), example["domain_id"])
    merged = export_merged(model, 2, (example,))
    for rows in (12, 3):
        batch = _zoo_batch(rows)
        eager = model(batch)  # routed by batch["domain_id"]
        torch.testing.assert_close(routed.module()(batch, domain_ids=batch["domain_id"]), eager, rtol=1e-5, atol=1e-5)
        only_2 = {**batch, "domain_id": torch.full((rows,), 2)}
        torch.testing.assert_close(merged.module()(only_2), model(only_2), rtol=1e-5, atol=1e-5)
