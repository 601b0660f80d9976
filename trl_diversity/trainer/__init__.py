"""The training method: `DiversityCFGConfig`, `DiversityCFGTrainer` and the pure math they use (CFG guidance,
token divergences, GRPO-style loss reduction), the frozen CFG teacher, and the trainer's safety callbacks."""

from trl_diversity.trainer.diversity_cfg_config import DiversityCFGConfig
from trl_diversity.trainer.diversity_cfg_trainer import DiversityCFGTrainer

__all__ = ["DiversityCFGConfig", "DiversityCFGTrainer"]
