"""Quality and diversity measures of sampled completions, per prompt (combined per model in `evaluation.py`,
which computes the two embedding metrics, adherence and pairwise dissimilarity, from one batch of embeddings).

Quality:
- prompt adherence: cosine similarity of the prompt's and the completion's embeddings (the MuLan analogue);
- fluency: per-token negative log-likelihood of the completion under the unguided base model (lower is better;
  high guidance scales copy the prompt and stop being fluent).

Diversity among one prompt's samples:
- pairwise dissimilarity: mean `1 - cos` between embeddings (the paper's metric, and the training reward);
- Vendi score: `exp` of the entropy of the eigenvalues of `K / n`, `K` the cosine-similarity matrix; the effective
  number of distinct samples, from 1 (all alike) to `n` (orthogonal);
- distinct-n: unique n-grams over all n-grams of the samples (lexical, no embedder);
- self-BLEU: mean BLEU of each sample against the others as references (lexical; lower is more diverse).
"""

from __future__ import annotations

import numpy as np
import torch

from trl_diversity.rewards.diversity import pairwise_dissimilarity


def vendi_score(embeddings: torch.Tensor) -> float:
    """Vendi score of `[n, D]` embeddings with the cosine-similarity kernel."""
    unit = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    eigenvalues = torch.linalg.eigvalsh(unit @ unit.T / unit.shape[0]).clamp(min=0)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(torch.exp(-(eigenvalues * eigenvalues.log()).sum()))


def _words(text: str) -> list[str]:
    return text.lower().split()


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams divided by all n-grams, over the whole group of texts (0 when there are none)."""
    grams = [tuple(words[i : i + n]) for words in map(_words, texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: list[str]) -> float:
    """Mean sentence BLEU (sacrebleu, 0-100) of each text against all the others as references."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)
    scores = [bleu.sentence_score(text, texts[:i] + texts[i + 1 :]).score for i, text in enumerate(texts)]
    return float(np.mean(scores))


@torch.no_grad()
def completion_nll(model, prompt_ids: list[int], completion_ids: list[int]) -> float:
    """Mean per-token negative log-likelihood of `completion_ids` after `prompt_ids` (nan for an empty completion)."""
    if not completion_ids:
        return float("nan")
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + completion_ids], device=device)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return float(torch.nn.functional.cross_entropy(logits, ids[0, len(prompt_ids) :]))


@torch.no_grad()
def mean_pooled_states(model, token_ids: list[list[int]], batch_size: int = 32) -> torch.Tensor:
    """`[N, H]` float32: each text's last hidden states under `model`, averaged over its tokens; NaN rows for empty
    texts, which have no states to pool.

    The text is encoded alone, without its prompt, so that the shared prompt does not pull samples together."""
    device = next(model.parameters()).device
    pooled = torch.full((len(token_ids), model.config.hidden_size), float("nan"))
    nonempty = [index for index, ids in enumerate(token_ids) if ids]
    for start in range(0, len(nonempty), batch_size):
        rows = nonempty[start : start + batch_size]
        width = max(len(token_ids[row]) for row in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
        for position, row in enumerate(rows):
            ids[position, : len(token_ids[row])] = torch.tensor(token_ids[row], dtype=torch.long)
            mask[position, : len(token_ids[row])] = True
        states = model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states[-1]
        states = states.float().masked_fill(~mask.unsqueeze(-1), 0.0)
        pooled[rows] = (states.sum(1) / mask.sum(1, keepdim=True)).cpu()
    return pooled


def mean_pairwise_dissimilarity(vectors: torch.Tensor, group_size: int) -> list[float]:
    """Per group of `group_size` consecutive rows: the mean `1 - cos` over the pairs of rows that are not NaN (NaN
    where fewer than two are), so that an empty sample is left out rather than counted as maximally different."""
    dissimilarity = pairwise_dissimilarity(vectors.nan_to_num(0.0), group_size)
    valid = ~vectors.isnan().any(-1).view(-1, group_size)
    pairs = valid.unsqueeze(1) & valid.unsqueeze(2) & ~torch.eye(group_size, dtype=torch.bool)
    counts = pairs.sum((-1, -2))
    means = (dissimilarity * pairs).sum((-1, -2)) / counts.clamp(min=1)
    return torch.where(counts > 0, means, torch.nan).tolist()


def bootstrap_ci(values, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap confidence interval of per-prompt values (NaNs dropped)."""
    from scipy.stats import bootstrap

    data = np.asarray([v for v in values if v == v], dtype=float)
    if len(data) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(data) == 1 or np.allclose(data, data[0]):
        return float(data.mean()), float(data.mean()), float(data.mean())
    result = bootstrap(
        (data,),
        np.mean,
        confidence_level=confidence,
        n_resamples=resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(data.mean()), float(result.confidence_interval.low), float(result.confidence_interval.high)
