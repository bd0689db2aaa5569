"""mlora-peft: MLoRA multi-domain low-rank adapters as a PEFT method.

Importing the package registers the method with PEFT, so `peft.get_peft_model`,
`PeftConfig.from_pretrained` and `PeftModel.from_pretrained` know `MultiDomainLoraConfig`.

Layout: `tuner/` (the PEFT method: config, layer, model, routing), `hub/` (saving, pushing and
loading per domain), `models/` (the CTR zoo), `data/` (loading and batching), `training/` (the
training library under `recipes/`), `export` (serving), `metrics`, `evaluation`,
`trainer_utils`, `growth` (onboarding a new domain), `features`, `atomic` (safe writes).
"""

from .tuner import (
    MultiDomainLoraConfig,
    MultiDomainLoraLayer,
    MultiDomainLoraModel,
    checkpoint_context_fn,
    clear_merged_weights,
    domain_context,
    register,
)
from .hub import load_domains, load_encoder, load_json_text, push_to_hub, save_pretrained
from . import models  # registers the zoo's CTRConfig / CTRModel with transformers' Auto classes

register()

__version__ = "0.1.0"
__all__ = [
    "MultiDomainLoraConfig",
    "MultiDomainLoraLayer",
    "MultiDomainLoraModel",
    "checkpoint_context_fn",
    "clear_merged_weights",
    "domain_context",
    "load_domains",
    "load_encoder",
    "load_json_text",
    "push_to_hub",
    "register",
    "save_pretrained",
]
