"""The CFG teacher, in one place: which model it is and its frozen copies (`cfg_teacher.py`), its guided forward over
the conditional and unconditional contexts (`guided_forward.py`), and the check that a `teacher_model` name can
load, run before any model does (`checkpoint.py`)."""

from trl_diversity.trainer.teacher.cfg_teacher import CFGTeacher
from trl_diversity.trainer.teacher.checkpoint import teacher_model_is_missing
from trl_diversity.trainer.teacher.guided_forward import guided_teacher_hidden_states

__all__ = ["CFGTeacher", "guided_teacher_hidden_states", "teacher_model_is_missing"]
