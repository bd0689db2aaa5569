"""mlora-peft: MLoRA multi-domain low-rank adapters as a PEFT method.

Importing the package registers the method with PEFT, so `peft.get_peft_model`,
`PeftConfig.from_pretrained` and `PeftModel.from_pretrained` know `MultiDomainLoraConfig`.
"""

from .config import MultiDomainLoraConfig
from .hub import load_domains, load_encoder, load_json_text, push_to_hub, save_pretrained
from .layer import MultiDomainLoraLayer
from .model import MultiDomainLoraModel
from .registration import register
from .routing import checkpoint_context_fn, domain_context
from . import models  # registers the zoo's CTRConfig / CTRModel with transformers' Auto classes

register()

__version__ = "0.1.0"
__all__ = [
    "MultiDomainLoraConfig",
    "MultiDomainLoraLayer",
    "MultiDomainLoraModel",
    "checkpoint_context_fn",
    "domain_context",
    "load_domains",
    "load_encoder",
    "load_json_text",
    "push_to_hub",
    "register",
    "save_pretrained",
]
