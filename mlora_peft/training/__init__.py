"""Training as library code: the config, building data and model, the loop, checkpoints and saved runs.

`recipes/train.py` and `recipes/evaluate.py` are thin command lines over this package:

    from mlora_peft.training import load_config, run
    run(load_config("recipes/configs/tiny.yaml", ["train.lr=3e-3", "mlora.mode=two_stage"]))

- `config`: `TrainConfig` and its sections, `load_config` (YAML + dotted overrides), `check_config`;
- `build`: `load_data`, `build_model`, `make_optimizer`, `make_accelerator`, `EmbeddingL2`;
- `loop`: `train` (one model into one folder), `run` (the recipe), stages, schedules, early stopping;
- `checkpoint`: safetensors + JSON checkpoints (no executable formats), resume with fallback;
- `run_dir`: one run per output folder; `runs`: reading a finished run back (`rebuild_model`, `evaluate_run`);
- `onboard`: a new domain onto a trained run (`recipes/add_domain.py`): grow, train only what is new, ship it;
- `diagnose`: the headroom diagnostic (`recipes/diagnose.py`): popularity, shared, per-domain fine-tuned
  and MLoRA models on one split, and whether per-domain modules have anything to gain.
"""

from .build import EmbeddingL2, build_backbone, build_model, load_data, make_accelerator, make_optimizer, model_features
from .checkpoint import (
    CheckpointError,
    TrainingState,
    complete_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
    write_json_atomic,
)
from .config import (
    DataConfig,
    HubSettings,
    MloraSettings,
    ModelConfig,
    Range,
    TrainConfig,
    TrainSettings,
    check_config,
    from_dict,
    load_config,
)
from .diagnose import HEADROOM_THRESHOLD, Diagnosis, ModelScores, diagnose, judge
from .loop import STAGES, end_epoch, next_stage, run, scheduled_lr, set_stage, train
from .run_dir import OutputDirError, check_output_dir
from .onboard import onboard, onboard_config
from .runs import evaluate_run, load_run, rebuild_model

__all__ = [
    "STAGES",
    "CheckpointError",
    "DataConfig",
    "Diagnosis",
    "HEADROOM_THRESHOLD",
    "EmbeddingL2",
    "HubSettings",
    "MloraSettings",
    "OutputDirError",
    "ModelConfig",
    "ModelScores",
    "Range",
    "TrainConfig",
    "TrainSettings",
    "TrainingState",
    "build_backbone",
    "build_model",
    "check_config",
    "check_output_dir",
    "complete_checkpoints",
    "diagnose",
    "end_epoch",
    "evaluate_run",
    "from_dict",
    "judge",
    "load_checkpoint",
    "load_config",
    "load_data",
    "load_latest_checkpoint",
    "load_run",
    "rebuild_model",
    "make_accelerator",
    "make_optimizer",
    "model_features",
    "next_stage",
    "onboard",
    "onboard_config",
    "rotate_checkpoints",
    "run",
    "save_checkpoint",
    "scheduled_lr",
    "set_stage",
    "train",
    "write_json_atomic",
]
