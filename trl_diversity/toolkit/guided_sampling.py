"""Sampling a guided teacher with transformers' `generate`: any guidance specification (`trl_diversity/guidance/`),
so that a teacher can be sampled and looked at before it is distilled.

`GuidedLogitsProcessor` turns the model's next-token scores into the guided ones with the same arithmetic as the
trainer's teacher (`guidance.combine`), on log-probabilities:

- each context negative keeps its own rows and key-value cache, and is run on the tokens sampled so far;
- an early-layer negative reads the conditional forward's own output after that layer (a hook on the layer), through
  the final norm and the LM head: no forward of its own;
- before the first guided position (`from M`) the scores pass unchanged, and the context negatives are not run at
  all; at position M they catch up on the tokens sampled so far in one forward.

The processor must run first on the raw scores, as transformers' own CFG processor does; `guided_generate_kwargs`
therefore moves temperature, top-k and top-p after it.
"""

from __future__ import annotations

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from trl_diversity.guidance import GuidanceSpec, check_layers, combine
from trl_diversity.guidance.readout import capture_layer_outputs, num_layers, read_out
from trl_diversity.trainer.hidden_states import cache_argument_name
from trl_diversity.trainer.logit_scale import logit_scale


class GuidedLogitsProcessor(LogitsProcessor):
    """Guided scores for one `generate` call over left-padded `prompt_width`-wide rows.

    `negative_ids[j][b]` is row `b`'s context for the `j`-th of `spec.context_negatives`. Use it as a context
    manager around the `generate` call: it hooks the layers that early-layer negatives read."""

    def __init__(self, model, spec: GuidanceSpec, negative_ids: list[list[list[int]]], prompt_width: int, pad_id: int):
        self.model, self.spec, self.prompt_width = model, spec, prompt_width
        self.weights = [n.weight for n in spec.context_negatives] + [n.weight for n in spec.layer_negatives]
        self.layers = [n.layer for n in spec.layer_negatives]
        if self.layers:
            check_layers(spec, num_layers(model), "the model")
        device = next(model.parameters()).device
        rows = [ids for branch in negative_ids for ids in branch]  # branch-major
        self.branches = len(negative_ids)
        width = max((len(r) for r in rows), default=0)
        self.ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], device=device, dtype=torch.long)
        self.mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        self.cache = None
        self.cache_argument = cache_argument_name(model)
        self.fed = 0  # generated tokens the negatives' cache holds
        self._capture = None

    def __enter__(self):
        self._capture = capture_layer_outputs(self.model, self.layers)
        self.captured, self.paused = self._capture.__enter__()
        return self

    def __exit__(self, *exc):
        self._capture.__exit__(*exc)

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width  # the generated position these scores predict
        early = {layer: self.captured[layer][-1][:, -1] for layer in self.layers}
        for layer in self.layers:
            self.captured[layer].clear()  # only the latest forward's output is needed
        if step < self.spec.start or self.spec.is_identity:
            return scores
        conditional = torch.log_softmax(scores.float(), dim=-1)
        negatives = [torch.log_softmax(n.float(), dim=-1) for n in self._context_scores(input_ids)]
        head = self.model.get_output_embeddings()
        for layer in self.layers:
            logits = head(read_out(self.model, early[layer].to(head.weight.dtype))).float() * logit_scale(self.model)
            negatives.append(torch.log_softmax(logits, dim=-1))
        return combine(conditional, negatives, self.weights).to(scores.dtype)

    def _context_scores(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Each context negative's next-token logits (`[B, V]` each), after feeding the tokens not yet fed."""
        if not self.branches:
            return []
        generated = input_ids[:, self.prompt_width :]
        if self.cache is None:  # the first guided step: the contexts, then every token sampled so far
            new = torch.cat([self.ids, generated.repeat(self.branches, 1)], dim=1)
        else:
            new = generated[:, self.fed :].repeat(self.branches, 1)
        grown = new.shape[1] - (self.ids.shape[1] if self.cache is None else 0)
        mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], grown)], dim=1)
        self.mask = mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -new.shape[1] :]
        self.paused[0] = True  # the negatives' forward is not the conditional one: its layers are not captured
        try:
            output = self.model(
                input_ids=new,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{self.cache_argument: self.cache},
            )
        finally:
            self.paused[0] = False
        self.cache = output.cache if self.cache_argument == "cache" else output.past_key_values
        self.fed = generated.shape[1]
        return list(output.logits[:, -1].chunk(self.branches))


def guided_generate_kwargs(config, processor: GuidedLogitsProcessor) -> tuple[object, dict]:
    """A copy of the generation `config` without its warpers, and the `logits_processor` argument that runs the
    guidance first and then those warpers (temperature, top-k, top-p), in transformers' order."""
    config = config.__class__.from_dict(config.to_dict())
    warpers = []
    if config.temperature is not None and config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k:
        warpers.append(TopKLogitsWarper(config.top_k))
    if config.top_p is not None and config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(config.top_p))
    config.temperature, config.top_k, config.top_p = 1.0, 0, 1.0
    config.guidance_scale = None
    return config, {"logits_processor": LogitsProcessorList([processor, *warpers])}
