"""Evaluate generation records (see `generation.generate_records`) per model, with bootstrap CIs over prompts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch

from trl_diversity.errors import UserError
from trl_diversity.importing import IMPORT_PATH, import_callable
from trl_diversity.rewards.diversity import pairwise_dissimilarity
from trl_diversity.rewards.embedder import embed
from trl_diversity.rewards.measures import is_blank
from trl_diversity.rewards.partition import distinct_k
from trl_diversity.toolkit.generation import render_prompt
from trl_diversity.toolkit.metrics import (
    bootstrap_ci,
    completion_nll,
    distinct_n,
    mean_pairwise_dissimilarity,
    mean_pooled_states,
    self_bleu,
    vendi_score,
)

# name -> (better, description); the order of the report's columns
METRICS = {
    "adherence": ("higher", "prompt adherence: embedding cosine of prompt and completion"),
    "fluency_nll": ("lower", "per-token NLL under the unguided base model"),
    "reward": ("higher", "user reward model or function"),
    "pairwise_diversity": ("higher", "mean pairwise 1 - cos between a prompt's samples"),
    "base_lm_diversity": (
        "higher",
        "the same in a second embedding space: the unguided base model's mean-pooled last hidden states",
    ),
    "vendi": ("higher", "Vendi score (effective number of distinct samples)"),
    "distinct_1": ("higher", "unique unigrams / unigrams"),
    "distinct_2": ("higher", "unique bigrams / bigrams"),
    "self_bleu": ("lower", "mean BLEU of each sample against the others"),
    "partitions": (
        "higher",
        "equivalence classes among a prompt's k samples (NoveltyBench's distinct_k, unigram rule)",
    ),
}


LOAD_NOTE = (
    "Tokens / s is the wall-clock speed of the run that sampled each model, under whatever else the machine was "
    "doing then: compare it only between models sampled side by side. Forward passes / token is the load-free cost."
)


def row_labels(sources: dict[str, list[str]]) -> dict[tuple[str, str], str]:
    """The row of each (source, model label), `sources` mapping a source's name (a file's: see `trl_diversity.cli.commands.source_names`) to the
    model labels it holds: the model label itself, or, when another source holds that label too, the label followed
    by the source's name (`default (seed1.jsonl)`). Samples of one model made with other settings (a seed, a
    temperature) are then never pooled into one row."""
    holders: dict[str, list[str]] = defaultdict(list)
    for name, labels in sources.items():
        for label in dict.fromkeys(labels):
            holders[label].append(name)
    return {
        (name, label): label if len(holders[label]) == 1 else f"{label} ({name})"
        for name, labels in sources.items()
        for label in labels
    }


def group_records(records: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """model label -> prompt -> its records, in first-seen order."""
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        grouped[record["model"]][record["prompt"]].append(record)
    return grouped


def align_records(records: list[dict], shared_prompts_only: bool = False, truncate_k: bool = False) -> list[dict]:
    """The records to compare: every model on the same prompts (in the first model's order) with the same number
    of samples per prompt, `k`. Models sampled on other prompts are refused unless `shared_prompts_only` (then only
    the prompts all share are kept), other `k` unless `truncate_k` (then the first `k` samples of each prompt, `k`
    the fewest any has): most metrics, the partition count and Vendi first, grow with `k` and with the prompts."""
    grouped = group_records(records)
    if not grouped:
        return records
    labels = list(grouped)
    shared = [p for p in grouped[labels[0]] if all(p in grouped[label] for label in labels)]
    if any(len(grouped[label]) != len(shared) for label in labels):
        counts = ", ".join(f"{label!r} {len(grouped[label])}" for label in labels)
        if not shared:
            raise UserError(f"The models share no prompt (prompts: {counts}); sample them on the same --prompts.")
        if not shared_prompts_only:
            raise UserError(
                f"The models were sampled on different prompts ({counts}; {len(shared)} shared): sample them on the "
                f"same --prompts and --num_prompts, or pass --shared_prompts_only to compare on the shared ones."
            )
    sizes = {label: sorted({len(grouped[label][p]) for p in shared}) for label in labels}
    k = min(size for label_sizes in sizes.values() for size in label_sizes)
    if any(label_sizes != [k] for label_sizes in sizes.values()) and not truncate_k:
        counts = ", ".join(
            f"{label!r} {'-'.join(map(str, (s[0], s[-1]) if len(s) > 1 else s))}" for label, s in sizes.items()
        )
        raise UserError(
            f"The models have different numbers of samples per prompt (k: {counts}): sample them with the same "
            f"--num_samples, or pass --truncate_k to use the first {k} samples of each prompt."
        )
    return [
        record
        for label in labels
        for prompt in shared
        for record in sorted(grouped[label][prompt], key=lambda r: r.get("sample", 0))[:k]
    ]


def per_prompt_metrics(
    by_prompt: dict[str, list[dict]],
    embedder,
    fluency: tuple | None = None,
    reward: Callable | None = None,
    chat: bool = True,
    chat_template_kwargs: dict | None = None,
) -> dict[str, list[float]]:
    """Every metric for each prompt of one model. `fluency` is `(base_model, tokenizer)` or None; the base model
    also gives the second embedding space (`base_lm_diversity`), a judge that no training reward uses. `chat` and
    `chat_template_kwargs` render the prompts for the fluency model, as they were rendered for sampling."""
    prompts = list(by_prompt)
    samples = [[r["completion"] for r in by_prompt[p]] for p in prompts]
    k = min(len(s) for s in samples)
    if k < 2:
        raise ValueError("Diversity needs at least 2 samples per prompt; generate with num_samples >= 2.")
    samples = [s[:k] for s in samples]
    flat = [text for group in samples for text in group]
    completion_vectors = torch.nn.functional.normalize(embed(embedder, flat), dim=-1).view(len(prompts), k, -1)
    prompt_vectors = torch.nn.functional.normalize(embed(embedder, prompts), dim=-1)
    dissimilarity = pairwise_dissimilarity(completion_vectors.reshape(len(flat), -1), k)
    # A blank completion adds no diversity, as in the training reward (rewards/measures.py): its pairs count 0.
    said = torch.tensor([not is_blank(text) for text in flat]).view(len(prompts), k)
    dissimilarity = dissimilarity * (said.unsqueeze(1) & said.unsqueeze(2))
    metrics = {
        "adherence": (completion_vectors @ prompt_vectors.unsqueeze(-1)).squeeze(-1).mean(-1).tolist(),
        "pairwise_diversity": (dissimilarity.sum((-1, -2)) / (k * (k - 1))).tolist(),
        "vendi": [vendi_score(v) for v in completion_vectors],
        "distinct_1": [distinct_n(s, 1) for s in samples],
        "distinct_2": [distinct_n(s, 2) for s in samples],
        "self_bleu": [self_bleu(s) for s in samples],
        "partitions": [float(distinct_k(s)) for s in samples],
    }
    if fluency is not None:
        model, tokenizer = fluency
        metrics["fluency_nll"] = [
            _nanmean(
                completion_nll(model, render_prompt(tokenizer, p, chat, chat_template_kwargs), r["completion_ids"])
                for r in by_prompt[p][:k]
            )
            for p in prompts
        ]
        states = mean_pooled_states(model, [r["completion_ids"] for p in prompts for r in by_prompt[p][:k]])
        metrics["base_lm_diversity"] = mean_pairwise_dissimilarity(states, k)
    if reward is not None:
        scores = reward(prompts=[p for p in prompts for _ in range(k)], completions=flat)
        metrics["reward"] = torch.tensor(scores, dtype=torch.float64).view(len(prompts), k).mean(-1).tolist()
    return metrics


def summarize(
    records: list[dict],
    embedder,
    fluency=None,
    reward=None,
    chat: bool = True,
    chat_template_kwargs: dict | None = None,
    headers: dict[str, dict] | None = None,
    shared_prompts_only: bool = False,
    truncate_k: bool = False,
) -> dict[str, dict]:
    """Per model: each metric's mean and 95% bootstrap CI over prompts, and the generation cost.

    The models must share their prompts and `k` (see `align_records`). `headers` maps a model label to its
    generations file's header: its settings are recorded as the entry's `generation`, and its prompt rendering
    (`chat`, `chat_template_kwargs`) replaces the arguments' for the fluency model."""
    records = align_records(records, shared_prompts_only, truncate_k)
    summary = {}
    for label, by_prompt in group_records(records).items():
        header = (headers or {}).get(label)
        rendering = header["sampling"] if header else {"chat": chat, "chat_template_kwargs": chat_template_kwargs}
        metrics = per_prompt_metrics(
            by_prompt, embedder, fluency, reward, rendering["chat"], rendering.get("chat_template_kwargs")
        )
        rows = [r for rs in by_prompt.values() for r in rs]
        tokens = sum(len(r.get("completion_ids", [])) for r in rows)
        seconds = sum(r.get("seconds", 0.0) for r in rows)
        summary[label] = {
            "metrics": {
                name: dict(zip(("mean", "low", "high"), bootstrap_ci(values))) for name, values in metrics.items()
            },
            "per_prompt": metrics,
            "num_prompts": len(by_prompt),
            "samples_per_prompt": min(len(rs) for rs in by_prompt.values()),
            "guidance_scale": rows[0].get("guidance_scale"),
            "forward_passes_per_token": max(r.get("forward_passes_per_token", 1) for r in rows),
            "tokens_per_second": tokens / seconds if seconds > 0 else None,
        }
        if header is not None:
            summary[label]["generation"] = {k: v for k, v in header.items() if k not in ("format", "version")}
    return summary


def markdown_table(summary: dict[str, dict]) -> str:
    names = [m for m in METRICS if any(m in s["metrics"] for s in summary.values())]
    header = ["model", *(f"{m} ({'↑' if METRICS[m][0] == 'higher' else '↓'})" for m in names)]
    header += ["forward passes / token", "tokens / s (load-dependent)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, entry in summary.items():
        cells = [label]
        for name in names:
            m = entry["metrics"].get(name)
            cells.append("" if m is None else f"{m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}]")
        speed = entry["tokens_per_second"]
        cells += [str(entry["forward_passes_per_token"]), "" if speed is None else f"{speed:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Means over prompts with 95% bootstrap confidence intervals in brackets.")
    lines.append(LOAD_NOTE)
    return "\n".join(lines)


def load_reward(spec: str) -> Callable:
    """`module:function` (called like a GRPO reward function) or a sequence-classification reward model."""
    if IMPORT_PATH.match(spec):
        return import_callable(spec, "--reward", "reward function")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(spec, num_labels=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(spec)

    @torch.no_grad()
    def reward_model(prompts, completions, **kwargs):
        texts = [f"{p}\n{c}" for p, c in zip(prompts, completions)]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
        return model(**inputs).logits[:, 0].tolist()

    return reward_model


def _nanmean(values) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")
