"""Per-domain saves, Hub round trips through the real huggingface_hub client, strict loading, atomic saves."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import LocalEntryNotFoundError
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

import mlora_peft
import mlora_peft.hub.save_load as hub_module
from mlora_peft import MultiDomainLoraConfig, atomic
from mlora_peft.tuner.config import DEFAULT_RANK_DIVISOR
from mlora_peft.data import MultiDomainEncoder
from mlora_peft.features import features_from_json, features_to_json
from mlora_peft.models import build_model
from tests.hub_server import HubServer
from tests.models import MODELS, DictModel, PlainMLP

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["us", "eu", "asia"]


def _base(name="PlainMLP", seed=0):
    torch.manual_seed(seed)
    return MODELS[name]()


def _trained(name="PlainMLP", **kwargs):
    config = dict(domain_names=NAMES, r=2, init_weights=False) | kwargs
    return get_peft_model(_base(name), MultiDomainLoraConfig(**config)).eval()


def _inputs(name, rows=12):
    return MODELS[name].example_inputs(rows, torch.Generator().manual_seed(1))


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def hub(monkeypatch):
    """A loopback Hub server, stopped at the end of the test; name lookups of other hosts fail meanwhile."""
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise OSError(f"test_hub: refusing to resolve {host!r}; only the loopback Hub may be contacted")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    with HubServer() as server:
        yield server


@pytest.fixture
def api(hub):
    """A client for the loopback Hub. Tests always pass it: the default `HfApi()` would address huggingface.co."""
    return HfApi(endpoint=hub.url, token="hf_loopback_test_token")


# ------------------------------------------------------------------------------------ layout
def test_save_writes_peft_root_domain_folders_json_and_card(tmp_path):
    model = _trained()
    report = {"per_domain": {"us": {"rows": 120, "auc": 0.7312}, "eu": {"rows": 80, "auc": 0.70105}}}
    folder = mlora_peft.save_pretrained(model, tmp_path / "adapter", json_files={"feature_spec": {"dense": 6}},
                                        eval_report=report, repo_id="team/ctr")
    assert sorted(p.name for p in (folder / "domains").iterdir()) == sorted(NAMES)
    root = load_file(str(folder / "adapter_model.safetensors"))
    assert root["base_model.model.tower.0.mdlora_A"].shape == (3, 2, 6)
    for index, name in enumerate(NAMES):
        config = json.loads((folder / "domains" / name / "adapter_config.json").read_text())
        assert config["num_domains"] == 1 and config["domain_names"] == [name]
        tensors = load_file(str(folder / "domains" / name / "adapter_model.safetensors"))
        assert set(tensors) == set(root)
        for key, value in tensors.items():
            assert torch.equal(value, root[key][index:index + 1])
    assert json.loads((folder / "feature_spec.json").read_text()) == {"dense": 6}
    assert json.loads(mlora_peft.load_json_text(folder, "feature_spec")) == {"dense": 6}
    card = (folder / "README.md").read_text()
    assert "library_name: peft" in card and "- mlora" in card
    assert "| 0 | us | `domains/us/` | 120 | 0.7312 |" in card and "| 2 | asia | `domains/asia/` |  |  |" in card
    assert 'load_domains(base_model, "team/ctr", domains=["us"])' in card
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))


@pytest.mark.parametrize("kwargs, rule", [
    (dict(), f"max(out_features // {DEFAULT_RANK_DIVISOR}, 1) per layer (the default rank_divisor"),
    (dict(rank_divisor=4), "max(out_features // 4, 1) per layer (rank_divisor=4)"),
    (dict(r=3), "r = 3 in every layer"),
])
def test_model_card_states_the_rank_rule_and_each_layers_saved_rank(tmp_path, kwargs, rule):
    model = get_peft_model(_base(), MultiDomainLoraConfig(domain_names=NAMES, **kwargs))
    folder = mlora_peft.save_pretrained(model, tmp_path / "adapter")
    card = (folder / "README.md").read_text()
    assert rule in card and "// 16" not in card
    weights = load_file(folder / "adapter_model.safetensors")
    stacks = {key[len("base_model.model."):-len(".mdlora_A")]: (weights[key.replace("_A", "_B")].shape[1], a.shape[1])
              for key, a in weights.items() if key.endswith(".mdlora_A")}  # layer -> (out_features, saved rank)
    assert len(stacks) == 2
    for layer, (out_features, rank) in stacks.items():
        assert f"| `{layer}` | {out_features} | {rank} |" in card


def test_peft_itself_loads_the_root_and_a_domain_subfolder(tmp_path):
    model, x = _trained(), _inputs("PlainMLP")
    folder = mlora_peft.save_pretrained(model, tmp_path / "adapter")
    full = PeftModel.from_pretrained(_base(), folder)
    torch.testing.assert_close(full(x, domain_ids=[0, 1, 2] * 4), model(x, domain_ids=[0, 1, 2] * 4), rtol=0, atol=0)
    eu = PeftModel.from_pretrained(_base(), folder, subfolder="domains/eu")
    torch.testing.assert_close(eu(x), model(x, domain_ids="eu"), rtol=0, atol=1e-6)


def test_unnamed_domains_are_saved_and_loaded_as_domain_i(tmp_path):
    model = get_peft_model(_base(), MultiDomainLoraConfig(num_domains=2, r=2, init_weights=False)).eval()
    folder = mlora_peft.save_pretrained(model, tmp_path / "adapter")
    assert sorted(p.name for p in (folder / "domains").iterdir()) == ["domain_0", "domain_1"]
    loaded = mlora_peft.load_domains(_base(), folder, domains=["domain_1"])
    x = _inputs("PlainMLP")
    assert loaded.peft_config["default"].domain_names == ["domain_1"]
    torch.testing.assert_close(loaded(x, domain_ids=0), model(x, domain_ids=1), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_domain_folder_gives_the_full_models_outputs_on_that_domain(tmp_path, name):
    model, x = _trained(name), _inputs(name)
    folder = mlora_peft.save_pretrained(model, tmp_path / "adapter")
    call = (lambda m, ids: m({**x, "domain_id": ids})) if name == "DictModel" else (lambda m, ids: m(x, domain_ids=ids))
    for index, domain in enumerate(NAMES):
        one = mlora_peft.load_domains(_base(name), folder, domains=[domain])
        assert isinstance(one, PeftModel) and one.peft_config["default"].domain_names == [domain]
        assert not one.training and not any(p.requires_grad for p in one.parameters())
        torch.testing.assert_close(call(one, torch.zeros(12, dtype=torch.long)), call(model, torch.full((12,), index)),
                                   rtol=0, atol=1e-6)
    pair = mlora_peft.load_domains(_base(name), folder, domains=["asia", "us"])  # ids remapped: asia 0, us 1
    ids = torch.tensor([0, 1] * 6)
    torch.testing.assert_close(call(pair, ids), call(model, torch.tensor([2, 0] * 6)), rtol=0, atol=1e-6)


def test_merge_true_returns_the_plain_base_class(tmp_path):
    model, x = _trained("DictModel"), _inputs("DictModel")
    folder = mlora_peft.save_pretrained(model, tmp_path / "adapter")
    plain = mlora_peft.load_domains(_base("DictModel"), folder, domains=["eu"], merge=True)
    assert type(plain) is DictModel and not hasattr(plain, "peft_config")
    torch.testing.assert_close(plain(x), model({**x, "domain_id": torch.ones(12, dtype=torch.long)}), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"merge=True folds exactly one domain"):
        mlora_peft.load_domains(_base("DictModel"), folder, domains=["eu", "us"], merge=True)


def test_a_jointly_trained_base_is_stored_once_at_the_root(tmp_path):
    """Issue 20: each domain folder used to carry the whole shared base (2.29 MB a domain on Amazon)."""
    model, x = _trained(train_base=True), _inputs("PlainMLP")
    with torch.no_grad():
        for param in model.get_base_model().parameters():
            param.add_(0.01)  # joint training moved the base
    folder = mlora_peft.save_pretrained(model, tmp_path / "adapter")
    root = load_file(str(folder / "adapter_model.safetensors"))
    assert any("mdlora_" not in key for key in root)  # the base, once
    for name in NAMES:
        assert all("mdlora_" in key for key in load_file(str(folder / "domains" / name / "adapter_model.safetensors")))
    one = mlora_peft.load_domains(_base(), folder, domains=["asia"])  # reads the base from the root
    torch.testing.assert_close(one(x), model(x, domain_ids=2), rtol=0, atol=1e-6)


def test_save_of_named_domains_writes_only_their_folders(tmp_path):
    folder = mlora_peft.save_pretrained(_trained(), tmp_path / "adapter")
    files = _snapshot(folder)
    model = mlora_peft.load_domains(_base(), folder, is_trainable=True)
    model.add_domains(["new"])
    mlora_peft.save_pretrained(model, folder, domains=["new"])
    assert {k: v for k, v in _snapshot(folder).items() if not k.startswith("domains/new/")} == files
    assert sorted(p.name for p in (folder / "domains" / "new").iterdir()) == ["adapter_config.json",
                                                                              "adapter_model.safetensors"]
    with pytest.raises(ValueError, match=r"holds no adapter_config.json; save the whole adapter first"):
        mlora_peft.save_pretrained(model, tmp_path / "empty", domains=["new"])


# ------------------------------------------------------------------------------------ new domain
def test_freeze_domains_except_keeps_other_domains_bit_identical_on_mixed_batches(tmp_path):
    folder = mlora_peft.save_pretrained(_trained(), tmp_path / "adapter")
    model = mlora_peft.load_domains(_base(), folder, is_trainable=True)
    model.add_domains(["new"])
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    freeze = model.freeze_domains_except(["new"])
    stacks = {n: p.detach().clone() for n, p in model.named_parameters() if "mdlora" in n}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(stacks)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.0)
    x = _inputs("PlainMLP")
    for _ in range(3):  # every batch mixes all four domains
        optimizer.zero_grad()
        model(x, domain_ids=[0, 1, 2, 3] * 3).square().mean().backward()
        optimizer.step()
    for name, before in stacks.items():
        after = model.get_parameter(name)
        assert torch.equal(after[:3], before[:3]), name
        assert not torch.equal(after[3], before[3]), name
    freeze.remove()
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_freeze_domains_except_refuses_unknown_or_bare_names():
    model = _trained()
    with pytest.raises(ValueError, match=r"pass a non-empty list, e.g. \['new'\]"):
        model.freeze_domains_except("eu")
    with pytest.raises(ValueError, match=r"Unknown domain 'mars'"):
        model.freeze_domains_except(["mars"])


# ------------------------------------------------------------------------------------ refusals
@pytest.fixture
def saved(tmp_path):
    return mlora_peft.save_pretrained(_trained(), tmp_path / "adapter")


def _edit_config(path: Path, **changes):
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, **changes}))


def test_missing_domain_or_folder_is_refused(saved):
    with pytest.raises(ValueError, match=r"Domain 'mars' is not in .* saved domains are \['asia', 'eu', 'us'\]"):
        mlora_peft.load_domains(_base(), saved, domains=["mars"])
    with pytest.raises(ValueError, match=r"is not a saved adapter folder"):
        mlora_peft.load_domains(_base(), saved / "nowhere")


def test_swapped_domain_folders_are_refused(saved):
    domains = saved / "domains"
    (domains / "us").rename(domains / "tmp")
    (domains / "eu").rename(domains / "us")
    (domains / "tmp").rename(domains / "eu")
    with pytest.raises(ValueError, match=r"domains/us/adapter_config.json names domain\(s\) \['eu'\], not 'us': "
                                         r"the folder domains/us/ was renamed or swapped"):
        mlora_peft.load_domains(_base(), saved, domains=["us"])


@pytest.mark.parametrize("name", ["PlainMLP", "DictModel"])
def test_a_save_by_peft_itself_loads_named_domains_from_the_root_stacks(tmp_path, name):
    model, x = _trained(name), _inputs(name)
    call = (lambda m, ids: m({**x, "domain_id": ids})) if name == "DictModel" else (lambda m, ids: m(x, domain_ids=ids))
    model.save_pretrained(tmp_path / "peft")  # PEFT's own method: root files only, no domains/ folders
    assert not (tmp_path / "peft" / "domains").exists()
    pair = mlora_peft.load_domains(_base(name), tmp_path / "peft", domains=["asia", "us"])
    assert pair.peft_config["default"].domain_names == ["asia", "us"]
    assert all(p.shape[0] == 2 for n, p in pair.named_parameters() if "mdlora_" in n)
    torch.testing.assert_close(call(pair, torch.tensor([0, 1] * 6)), call(model, torch.tensor([2, 0] * 6)),
                               rtol=0, atol=1e-6)
    merged = mlora_peft.load_domains(_base(name), tmp_path / "peft", domains=["eu"], merge=True)
    torch.testing.assert_close(merged(x) if name != "DictModel" else merged(dict(x)),
                               call(model, torch.full((12,), 1)), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"\['mars'\] are not in .*without domains/ folders.*holds \['us', 'eu', 'asia'\]"):
        mlora_peft.load_domains(_base(name), tmp_path / "peft", domains=["mars"])


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_or_truncated_weights_are_refused(saved, damage):
    path = saved / "domains" / "eu" / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40] if damage == "truncate" else b"\x00" * 8 + data[8:])
    with pytest.raises(ValueError, match=r"domains/eu/adapter_model.safetensors is not a readable safetensors file"):
        mlora_peft.load_domains(_base(), saved, domains=["eu"])


def test_other_peft_type_and_unknown_fields_are_refused(saved):
    config = saved / "domains" / "us" / "adapter_config.json"
    _edit_config(config, surprise=1)
    with pytest.raises(ValueError, match=r"fields this mlora_peft version does not know: \['surprise'\]"):
        mlora_peft.load_domains(_base(), saved, domains=["us"])
    _edit_config(saved / "adapter_config.json", peft_type="LORA")
    with pytest.raises(ValueError, match=r"peft_type='LORA'; mlora_peft loads MLoRA adapters"):
        mlora_peft.load_domains(_base(), saved)


def test_mismatched_base_model_or_rank_is_refused_before_loading(saved):
    base = PlainMLP(hidden=(12, 8))
    with pytest.raises(ValueError, match=r"does not fit this base model .*tower.0.mdlora_B: saved \(1, 16, 2\), "
                                         r"this model needs \(1, 12, 2\)"):
        mlora_peft.load_domains(base, saved, domains=["us"])
    assert not any("mdlora" in n for n, _ in base.named_parameters())  # refused before injecting
    _edit_config(saved / "domains" / "us" / "adapter_config.json", r=3)
    with pytest.raises(ValueError, match=r"this model needs \(1, 3, 6\) \(rank 3, 1 domains\)"):
        mlora_peft.load_domains(_base(), saved, domains=["us"])


def test_domains_from_different_adapters_are_refused(saved, tmp_path):
    other = mlora_peft.save_pretrained(_trained(r=4), tmp_path / "other")
    (saved / "domains" / "mix").mkdir()
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        (saved / "domains" / "mix" / file).write_bytes((other / "domains" / "eu" / file).read_bytes())
    _edit_config(saved / "domains" / "mix" / "adapter_config.json", domain_names=["mix"])
    with pytest.raises(ValueError, match=r"Domain 'mix' differs from domain 'us' in config fields \['r'\]"):
        mlora_peft.load_domains(_base(), saved, domains=["us", "mix"])


# ------------------------------------------------------------------------------------ atomic saves
@pytest.mark.parametrize("function, failing_call", [("save_file", 3), ("replace", 2)])
def test_failure_mid_save_leaves_the_previous_save_intact(saved, monkeypatch, function, failing_call):
    """Fail the third file write, or the rename that swaps the new save in."""
    before = _snapshot(saved)
    model = _trained()
    with torch.no_grad():
        model.get_base_model().tower[0].mdlora_B["default"].add_(1.0)
    owner = hub_module if function == "save_file" else atomic.os
    real, calls = getattr(owner, function), []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == failing_call:
            raise OSError("disk full (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, function, failing)
    with pytest.raises(OSError, match="injected"):
        mlora_peft.save_pretrained(model, saved)
    monkeypatch.undo()
    assert _snapshot(saved) == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["adapter"]  # no staging folder left behind
    mlora_peft.load_domains(_base(), saved, domains=["eu"])


def test_save_refuses_to_replace_a_folder_with_other_files(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"holds other files \(\['checkpoint.pt'\]\)"):
        mlora_peft.save_pretrained(_trained(), tmp_path / "run")


# ------------------------------------------------------------------------------------ Hub
def test_push_then_fetch_one_domain_at_a_revision_requests_only_its_files(hub, api, tmp_path):
    model, x = _trained(), _inputs("PlainMLP")
    mlora_peft.push_to_hub(model, "team/ctr", revision="v1", private=True, api=api)
    files = [f.path for f in api.list_repo_tree("team/ctr", revision="v1", recursive=True) if hasattr(f, "size")]
    assert "domains/eu/adapter_model.safetensors" in files and "README.md" in files
    assert api.list_repo_files("team/ctr") == [".gitattributes"]  # main untouched
    hub.requests.clear()
    one = mlora_peft.load_domains(_base(), "team/ctr", domains=["eu"], revision="v1", api=api, cache_dir=tmp_path)
    resolved = [p for _, p in hub.requests if "/resolve/" in p]
    assert resolved and all("/domains/eu/" in p for p in resolved), hub.requests
    assert sorted(hub.downloads()) == ["domains/eu/adapter_config.json", "domains/eu/adapter_model.safetensors"]
    torch.testing.assert_close(one(x), model(x, domain_ids=1), rtol=0, atol=1e-6)


def test_push_of_named_domains_commits_only_their_folders(hub, api):
    model = _trained()
    mlora_peft.push_to_hub(model, "team/ctr", domains=["asia"], api=api)
    assert api.list_repo_files("team/ctr") == [
        ".gitattributes", "domains/asia/adapter_config.json", "domains/asia/adapter_model.safetensors"]
    assert len([p for _, p in hub.requests if p.endswith("/commit/main")]) == 1
    with pytest.raises(ValueError, match=r"unknown \['mars'\]; this adapter's domains are"):
        mlora_peft.push_to_hub(model, "team/ctr", domains=["mars"], api=api)


def test_full_push_then_load_every_domain_and_a_json_file(hub, api, tmp_path):
    model, x = _trained(), _inputs("PlainMLP")
    mlora_peft.push_to_hub(model, "team/ctr", api=api, json_files={"feature_spec": '[{"type": "DenseFeature"}]'})
    hub.requests.clear()
    text = mlora_peft.load_json_text("team/ctr", "feature_spec", api=api, cache_dir=tmp_path)
    assert json.loads(text) == [{"type": "DenseFeature"}]
    assert hub.downloads() == ["feature_spec.json"]
    full = mlora_peft.load_domains(_base(), "team/ctr", api=api, cache_dir=tmp_path)
    ids = torch.tensor([0, 1, 2] * 4)
    torch.testing.assert_close(full(x, domain_ids=ids), model(x, domain_ids=ids), rtol=0, atol=0)
    assert sorted(hub.downloads()[1:]) == ["adapter_config.json", "adapter_model.safetensors"]


def test_zoo_model_with_feature_spec_and_encoder_round_trips_through_the_hub(hub, api, tmp_path):
    """The serving side rebuilds the backbone from the pushed feature spec, encodes raw rows with the pushed encoder."""
    train = pd.DataFrame({"user": [3, 5, 5, 7, 9, 3], "price": [1.0, 2.0, 3.0, 4.0, 2.5, 1.5],
                          "country": ["fr", "de", "fr", "it", "de", "it"], "click": [0, 1, 1, 0, 1, 0]})
    encoder = MultiDomainEncoder.fit(train, label="click", domain="country", sparse=["user"], dense=["price"])
    spec = encoder.feature_spec(embedding_dim=4)
    torch.manual_seed(0)
    net = build_model("deepfm", spec, hidden=(16, 8), dropout=0.0)
    model = get_peft_model(net, MultiDomainLoraConfig(domain_names=list(encoder.domain_names), r=2,
                                                      init_weights=False)).eval()
    folder = tmp_path / "adapter"
    folder.mkdir()
    encoder.save(folder)  # written before the adapter: the save keeps it
    mlora_peft.save_pretrained(model, folder, json_files={"feature_spec": features_to_json(spec)})
    assert MultiDomainEncoder.load(folder) == encoder
    mlora_peft.push_to_hub(model, "team/deepfm", api=api, json_files={"feature_spec": features_to_json(spec),
                                                                        "data_encoder": encoder})
    hub.requests.clear()
    served_spec = features_from_json(mlora_peft.load_json_text("team/deepfm", "feature_spec", api=api,
                                                               cache_dir=tmp_path / "cache"))
    served_encoder = MultiDomainEncoder.from_json(mlora_peft.load_json_text("team/deepfm", "data_encoder", api=api,
                                                                            cache_dir=tmp_path / "cache"))
    torch.manual_seed(0)
    served = mlora_peft.load_domains(build_model("deepfm", served_spec, hidden=(16, 8), dropout=0.0), "team/deepfm",
                                     domains=["it"], merge=True, api=api, cache_dir=tmp_path / "cache")
    assert sorted(hub.downloads()) == ["data_encoder.json", "domains/it/adapter_config.json",
                                       "domains/it/adapter_model.safetensors", "feature_spec.json"]
    rows = [{"user": 5, "price": 2.0, "country": "it"}, {"user": 9, "price": 3.5, "country": "it"}]
    batch = served_encoder.encode(rows)
    torch.testing.assert_close(served(batch), model(batch), rtol=0, atol=1e-6)


def test_missing_domain_on_the_hub_is_refused_naming_the_pushed_ones(api, tmp_path):
    mlora_peft.push_to_hub(_trained(), "team/ctr", api=api)
    with pytest.raises(ValueError, match=r"'mars' is not in team/ctr \(the saved domains are \['asia', 'eu', 'us'\]"):
        mlora_peft.load_domains(_base(), "team/ctr", domains=["mars"], api=api, cache_dir=tmp_path)


def test_a_repo_pushed_by_peft_itself_loads_one_domain(api, tmp_path):
    model, x = _trained(), _inputs("PlainMLP")
    model.save_pretrained(tmp_path / "peft")  # the files PEFT's own push_to_hub uploads
    api.create_repo("team/peft-only")
    api.upload_folder(folder_path=tmp_path / "peft", repo_id="team/peft-only")
    one = mlora_peft.load_domains(_base(), "team/peft-only", domains=["eu"], api=api, cache_dir=tmp_path / "cache")
    torch.testing.assert_close(one(x, domain_ids=0), model(x, domain_ids="eu"), rtol=0, atol=1e-6)


def test_offline_mode_loads_from_the_cache_without_a_server(hub, api, monkeypatch, tmp_path):
    model, x = _trained(), _inputs("PlainMLP")
    mlora_peft.push_to_hub(model, "team/ctr", api=api)
    online = mlora_peft.load_domains(_base(), "team/ctr", domains=["us"], api=api, cache_dir=tmp_path)(x)
    hub.__exit__(None, None, None)  # the server is gone
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    requests_before = len(hub.requests)
    offline = mlora_peft.load_domains(_base(), "team/ctr", domains=["us"], api=api, cache_dir=tmp_path)(x)
    torch.testing.assert_close(offline, online, rtol=0, atol=0)
    assert len(hub.requests) == requests_before
    with pytest.raises(LocalEntryNotFoundError, match=r"incomplete.*domains/eu"):
        mlora_peft.load_domains(_base(), "team/ctr", domains=["eu"], api=api, cache_dir=tmp_path)


OFFLINE_PROCESS = """
import sys, torch, mlora_peft
from safetensors.torch import save_file
from tests.models import PlainMLP
torch.manual_seed(0)
model = mlora_peft.load_domains(PlainMLP(), "team/ctr", domains=["us"], cache_dir=sys.argv[1])
save_file({"out": model(torch.ones(4, 6))}, sys.argv[2])
"""


def test_hf_hub_offline_env_in_a_fresh_process(hub, api, tmp_path):
    model = _trained()
    mlora_peft.push_to_hub(model, "team/ctr", api=api)
    mlora_peft.load_domains(_base(), "team/ctr", domains=["us"], api=api, cache_dir=tmp_path / "cache")
    hub.__exit__(None, None, None)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": hub.url}
    subprocess.run([sys.executable, "-c", OFFLINE_PROCESS, str(tmp_path / "cache"), str(tmp_path / "out.st")],
                   check=True, cwd=ROOT, env=env)
    torch.testing.assert_close(load_file(str(tmp_path / "out.st"))["out"], model(torch.ones(4, 6), domain_ids=0))


def test_domain_names_that_are_not_folder_names_save_and_load_by_name(tmp_path):
    """MovieLens age groups ('<18', '56+') and occupations ('K-12 student') name domains too."""
    names = ["<18", "K-12 student", "56+"]
    model = get_peft_model(_base(), MultiDomainLoraConfig(domain_names=names, r=2, init_weights=False))
    model.eval()
    folder = mlora_peft.save_pretrained(model, tmp_path / "save")
    assert sorted(p.name for p in (folder / "domains").iterdir()) == ["56_", "K-12_student", "d_18"]
    one = mlora_peft.load_domains(_base(), folder, domains=["56+"])
    assert one.peft_config["default"].domain_names == ["56+"]
    x = torch.randn(5, 6)
    torch.testing.assert_close(one(x, domain_ids=0), model(x, domain_ids="56+"), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"Domains \['a b', 'a_b'\] would share the folder\(s\) \['a_b'\]"):
        mlora_peft.save_pretrained(get_peft_model(PlainMLP(), MultiDomainLoraConfig(domain_names=["a b", "a_b"])),
                                   tmp_path / "clash")
