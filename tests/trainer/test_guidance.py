import pytest
import torch
from transformers.generation.logits_process import UnbatchedClassifierFreeGuidanceLogitsProcessor
from transformers.modeling_outputs import CausalLMOutput

from trl_diversity import guided_log_probs
from trl_diversity.trainer.guidance import guide


class _FixedLogits(torch.nn.Module):
    """Stands in for the model that transformers' CFG processor runs on the unconditional context."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, **kwargs):
        return CausalLMOutput(logits=self.logits.unsqueeze(1))


@pytest.mark.parametrize("scale", [1.0, 1.5, 3.0, 0.5])
def test_guided_log_probs_match_transformers_cfg_processor(scale):
    torch.manual_seed(0)
    cond, uncond = torch.randn(3, 50) * 3, torch.randn(3, 50) * 3
    processor = UnbatchedClassifierFreeGuidanceLogitsProcessor(scale, _FixedLogits(uncond), use_cache=False)
    # The processor returns unnormalised scores; the distribution is their softmax.
    reference = torch.log_softmax(processor(torch.zeros(3, 1, dtype=torch.long), cond.clone()), dim=-1)
    torch.testing.assert_close(guided_log_probs(cond, uncond, scale), reference, atol=1e-5, rtol=1e-5)


def test_log_probs_and_logits_give_the_same_guided_distribution():
    cond, uncond = torch.randn(4, 20), torch.randn(4, 20)
    from_logits = guided_log_probs(cond, uncond, 2.0)
    from_log_probs = guided_log_probs(cond.log_softmax(-1), uncond.log_softmax(-1), 2.0)
    torch.testing.assert_close(from_logits, from_log_probs, atol=1e-5, rtol=1e-5)


def test_guiding_hidden_states_equals_guiding_logits_through_a_linear_head():
    torch.manual_seed(1)
    head = torch.nn.Linear(16, 40)
    h_cond, h_uncond = torch.randn(5, 16), torch.randn(5, 16)
    through_hidden = torch.log_softmax(head(guide(h_cond, h_uncond, 3.0)), dim=-1)
    through_logits = guided_log_probs(head(h_cond), head(h_uncond), 3.0)
    torch.testing.assert_close(through_hidden, through_logits, atol=1e-5, rtol=1e-5)
