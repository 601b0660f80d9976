"""trl-diversity: diversity-rewarded CFG distillation as a drop-in TRL trainer."""

from .config import DiversityCFGConfig
from .divergence import chunked_token_divergence, token_divergence
from .diversity import diversity_advantages, group_diversity_rewards, leave_one_out_baselines
from .guidance import guided_log_probs
from .trainer import DiversityCFGTrainer

__version__ = "0.1.0"

__all__ = [
    "DiversityCFGConfig",
    "DiversityCFGTrainer",
    "chunked_token_divergence",
    "diversity_advantages",
    "group_diversity_rewards",
    "guided_log_probs",
    "leave_one_out_baselines",
    "token_divergence",
]
