"""Quality and diversity measures on sampled completions, with the embedder's cosine geometry.

- prompt adherence: cosine similarity of the prompt's and the completion's embeddings (the MuLan analogue);
- pairwise diversity: mean `1 - cos` between the completions of one prompt (the paper's diversity metric).
"""

from __future__ import annotations

import torch
from sentence_transformers import SentenceTransformer

from .diversity import pairwise_dissimilarity
from .embedder import embed


def prompt_adherence(embedder: SentenceTransformer, prompts: list[str], samples: list[list[str]]) -> torch.Tensor:
    """`[num_prompts]` mean cosine similarity between each prompt and its completions."""
    prompt_vectors = torch.nn.functional.normalize(embed(embedder, prompts), dim=-1)
    flat = [text for group in samples for text in group]
    k = len(samples[0])
    completion_vectors = torch.nn.functional.normalize(embed(embedder, flat), dim=-1).view(len(prompts), k, -1)
    return (completion_vectors @ prompt_vectors.unsqueeze(-1)).squeeze(-1).mean(-1)


def pairwise_diversity(embedder: SentenceTransformer, samples: list[list[str]]) -> torch.Tensor:
    """`[num_prompts]` mean pairwise dissimilarity among each prompt's completions."""
    k = len(samples[0])
    flat = [text for group in samples for text in group]
    dissimilarity = pairwise_dissimilarity(embed(embedder, flat), k)
    return dissimilarity.sum((-1, -2)) / (k * (k - 1))
