"""Serving on a CPU, measured fairly: a CFG-distilled model in vLLM against its base with CFG in `transformers`, and
the quality-diversity dial served per request as LoRA adapters of one vLLM engine.

Runs in the vLLM environment (`bash scripts/setup_vllm.sh`), from the repository root, on a quiet machine:

    .venv-vllm/bin/python -m benchmarks.serving                    # everything below, resumable (~25 min, 2 cores)
    .venv-vllm/bin/python -m benchmarks.serving --part reconcile   # where the 4.3x and 11.2x figures part
    .venv-vllm/bin/python -m benchmarks.serving --part settled     # the settled figure: 3 repeats, quality alongside
    .venv-vllm/bin/python -m benchmarks.serving --part dial        # the dial served per request, against merged models
    .venv-vllm/bin/python -m benchmarks.serving --part report      # only rewrite the reports from the cache

Every measurement runs in a fresh process (`--worker`), one at a time, and is cached in
`benchmarks/results/serving_cache.json` the moment it finishes, keyed by its settings: an interrupted run resumes where
it stopped, and `--redo KEY_SUBSTRING` measures again what matches. Before each measurement the script waits while
another heavy job named in `--wait_for` runs, and records the load average around it.

The settled method (`serving.md`): each engine in a fresh process of its own, at its own best thread count and batch
shape (both chosen from measured candidates in `serving_reconciliation.md`), the same prompts (20 short open
questions), `k` = 8 samples each, 48 new tokens with the length forced (`ignore_eos` + `min_tokens` in vLLM,
`min_new_tokens` in transformers: equal work, independent of the weights), vLLM's prefix caching on, one warm-up call
first, tokens/s = generated tokens / wall time of the timed call(s); three repeats, alternating engines. Speed does
not depend on the weights, so the base model's architecture in vLLM stands for a distilled model's speed. Adherence
and diversity alongside come from separate samples with natural stops (the length forced would append text after
the answer): the base unguided and with CFG 3 (transformers); a distilled model's adherence is in docs/results.

Writes `benchmarks/results/serving_reconciliation.md`, `serving.{md,json}` and `serving_dial.{md,json}`.
"""
