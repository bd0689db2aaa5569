"""Saving, pushing and loading adapters, one folder per domain.

- `save_load`: `save_pretrained`, `push_to_hub`, `load_domains`, `load_encoder`, `load_json_text`;
- `layout`: the names of a save's files and folders;
- `reading`: which files a load fetches, each domain's folder, slices of PEFT's own layout;
- `weights`: strict reading of configs and safetensors weights, and their fit to a base model;
- `model_card`: the README written beside a save.
"""

from .layout import CARD_NAME, CONFIG_NAME, DOMAINS_DIR, WEIGHTS_NAME, domain_folder, domain_folders, domain_labels
from .save_load import load_domains, load_encoder, load_json_text, push_to_hub, save_pretrained

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "DOMAINS_DIR",
    "WEIGHTS_NAME",
    "domain_folder",
    "domain_folders",
    "domain_labels",
    "load_domains",
    "load_encoder",
    "load_json_text",
    "push_to_hub",
    "save_pretrained",
]
