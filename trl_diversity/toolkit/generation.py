"""Sampling `k` completions per prompt, with or without CFG, through transformers' own `generate`.

CFG uses transformers' built-in support (`guidance_scale` with `negative_prompt_ids`, i.e.
`UnbatchedClassifierFreeGuidanceLogitsProcessor`): the unconditional branch is the same null context the trainer's
teacher uses, followed by the tokens sampled so far. That costs two forward passes per generated token instead of one.

Sampling is explicit: every setting comes from `Sampling` (through `sampling_config`), none from the checkpoint's
`generation_config.json` (a Qwen2.5-Instruct checkpoint, say, ships `repetition_penalty`, `top_k`, `top_p` and
`temperature`), which gives only its end-of-sequence tokens. A run is seeded once, `torch.manual_seed(seed)` before
its first batch of `prompts_per_batch` prompts, and its batches then draw from torch's random number generator in
order (as the toolkit always has, so a seed gives the samples it gave before resumable files existed).

`write_generations` writes a JSONL file a batch of prompts' groups at a time, and resumes an interrupted run from
what is on disk: the file grows as `<output>.partial` and becomes `<output>` once complete, so a crash never leaves a
half-written `<output>`. The `.partial` holds a header line with the settings, then for each batch its records (one
line per sample) followed by one marker line with the generator state the next batch starts from:

    {"after_batch": b, "rng_state": {"cpu": <base64 of torch.get_rng_state()>,
                                     "cuda": [<base64 of each device's state, torch.cuda.get_rng_state_all()>]}}

("cuda" only when CUDA was in use). A batch is on disk once its marker is; a resumed run keeps the whole batches,
restores the last marker's state and samples on from there, so it draws exactly what an uninterrupted run would have.
The markers are left out of `<output>`, which holds the header line and the records only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from trl_diversity.atomic import write_text_atomic
from trl_diversity.defaults import resolve_model
from trl_diversity.errors import UserError
from trl_diversity.guidance import parse_guidance
from trl_diversity.guidance.contexts import negative_context
from trl_diversity.toolkit.guided_sampling import GuidedLogitsProcessor, guided_generate_kwargs

FORMAT = "trl-diversity-generations"  # the "format" of a file's header line
# 1: no header; 2: a header line, one seed per batch of prompts; 3: a header line, one seed per run (the samples of 1)
# and, in the .partial, the generator state after each batch
FORMAT_VERSION = 3
SEEDING = (
    "torch.manual_seed(seed) once, then the batches (prompts b*P to b*P+P-1) in order; "
    "a resumed run restores the generator state recorded after its last whole batch"
)


@dataclass
class Sampling:
    """Everything that changes the samples besides the model and the prompts."""

    num_samples: int = 4
    max_new_tokens: int = 48
    guidance_scale: float = 1.0
    guidance: str | None = None  # a guidance specification (trl_diversity/guidance/spec.py), instead of guidance_scale
    null_prompt: str = ""
    chat: bool = True
    chat_template_kwargs: dict | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0  # 1: off
    seed: int | None = 0
    prompts_per_batch: int = 4

    def __post_init__(self):
        if self.guidance is not None:
            if self.guidance_scale != 1.0:
                raise UserError(
                    f"Set guidance or guidance_scale, not both (guidance={self.guidance!r}, guidance_scale="
                    f"{self.guidance_scale:g}): guidance_scale=G is guidance='{self.guidance_scale - 1:g}*null'."
                )
            parse_guidance(self.guidance)  # an invalid specification is refused before any model loads


def render_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool, chat_template_kwargs: dict | None = None
) -> list[int]:
    """Token ids of a prompt: through the chat template (as the trainer does for conversational data) or plain.

    `chat_template_kwargs` go to `apply_chat_template`, e.g. `{"enable_thinking": False}` for Qwen3."""
    if chat:
        messages = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, **(chat_template_kwargs or {})
        )
        return list(ids["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def unconditional_ids(
    tokenizer: PreTrainedTokenizerBase, null_prompt: str, chat: bool, chat_template_kwargs: dict | None = None
) -> list[int]:
    """The null context, rendered like the prompts; never empty (BOS, else EOS, as in training)."""
    ids = render_prompt(tokenizer, null_prompt, chat, chat_template_kwargs)
    if not ids:
        ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return ids


def load_generation_model(path: str, base: str | None = None, device: str | None = None):
    """A causal LM and its tokenizer from a full checkpoint, or from a LoRA adapter on its base (or `base`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(resolve_model(path))
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        base = base or json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        base_path = resolve_model(base)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), folder)
        model = model.merge_and_unload()  # plain weights: generation as fast as the base model's
        tokenizer = AutoTokenizer.from_pretrained(
            folder if (folder / "tokenizer_config.json").is_file() else base_path
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def sampling_config(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sampling: Sampling
) -> GenerationConfig:
    """The complete generation configuration of `sampling`. From the model it takes only the tokens that end a
    sequence (the tokenizer's EOS and those of its `generation_config`, e.g. an instruct model's end of turn)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = sorted({tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)} - {None})
    config = GenerationConfig(
        do_sample=True,
        num_beams=1,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        repetition_penalty=sampling.repetition_penalty,
        max_new_tokens=sampling.max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=eos_ids,
        use_cache=True,
    )
    if sampling.guidance_scale != 1.0 and sampling.guidance is None:
        config.guidance_scale = sampling.guidance_scale
    return config


def config_record(config: GenerationConfig) -> dict:
    """The settings of `config` that are set, as recorded in a generations file's header."""
    return {k: v for k, v in config.to_diff_dict().items() if k != "transformers_version"}


def generate_batches(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    sampling: Sampling,
    label: str = "model",
    first_batch: int = 0,
    progress: bool = True,
    resume_state: dict | None = None,
) -> Iterator[list[dict]]:
    """Yield each batch's records (one per completion, a prompt's `k` together), from batch `first_batch` on.

    From the first batch, the run is seeded with `torch.manual_seed(sampling.seed)` (unless the seed is None); from a
    later one, `resume_state` (the `rng_state()` taken after batch `first_batch - 1`) is restored first. While the
    generator is paused at a `yield`, torch's generator is where the next batch starts from: `rng_state()` taken
    then is what resumes the run after that batch."""
    size, k = sampling.prompts_per_batch, sampling.num_samples
    config = sampling_config(model, tokenizer, sampling)
    done = min(first_batch * size, len(prompts))
    if done < len(prompts) and first_batch > 0 and resume_state is None:
        raise ValueError(f"Resuming at batch {first_batch} needs the generator state after the batch before it.")
    bar = tqdm(total=len(prompts) * k, initial=done * k, desc=label, unit="sample", disable=not progress)
    try:
        if done < len(prompts):
            if first_batch > 0:
                restore_rng_state(resume_state)
            elif sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        for start in range(done, len(prompts), size):
            yield _sample_batch(model, tokenizer, config, prompts[start : start + size], start, sampling, label)
            bar.update(len(prompts[start : start + size]) * k)
    finally:
        bar.close()


def rng_state() -> dict:
    """torch's generator state, base64-encoded: the CPU generator's, and each CUDA device's when CUDA is in use."""
    state = {"cpu": _encode(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_encode(device_state) for device_state in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    """Set torch's generator to a state from `rng_state()`."""
    torch.set_rng_state(_decode(state["cpu"]))
    if state.get("cuda") and torch.cuda.is_available():
        cuda = [_decode(device_state) for device_state in state["cuda"]]
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def _encode(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


@torch.no_grad()
def _sample_batch(
    model, tokenizer, config: GenerationConfig, prompts: list[str], start: int, sampling: Sampling, label: str
):
    k, template = sampling.num_samples, sampling.chat_template_kwargs
    rows = [render_prompt(tokenizer, p, sampling.chat, template) for p in prompts for _ in range(k)]
    width = max(len(r) for r in rows)
    device = next(model.parameters()).device
    ids = torch.tensor([[config.pad_token_id] * (width - len(r)) + r for r in rows], device=device)  # left padding
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    started = time.perf_counter()
    if sampling.guidance is not None:
        spec = parse_guidance(sampling.guidance)
        negative_ids = [
            [
                render_prompt(tokenizer, negative_context(negative, p, sampling.null_prompt), sampling.chat, template)
                or unconditional_ids(tokenizer, sampling.null_prompt, sampling.chat, template)
                for p in prompts
                for _ in range(k)
            ]
            for negative in spec.context_negatives
        ]
        with GuidedLogitsProcessor(model, spec, negative_ids, width, config.pad_token_id) as processor:
            guided_config, extra = guided_generate_kwargs(config, processor)
            output = _generate(model, guided_config, input_ids=ids, attention_mask=mask, **extra)
        passes = spec.forward_passes_per_token()
    else:
        extra = {}
        if sampling.guidance_scale != 1.0:
            null_ids = unconditional_ids(tokenizer, sampling.null_prompt, sampling.chat, template)
            extra["negative_prompt_ids"] = torch.tensor([null_ids] * len(rows), device=device)
        output = _generate(model, config, input_ids=ids, attention_mask=mask, **extra)
        passes = 2 if sampling.guidance_scale != 1.0 else 1
    seconds = time.perf_counter() - started
    completions = [_strip(row.tolist(), set(config.eos_token_id)) for row in output[:, width:]]
    total_tokens = max(sum(len(c) for c in completions), 1)
    return [
        {
            "model": label,
            "prompt": prompts[i // k],
            "prompt_index": start + i // k,
            "sample": i % k,
            "completion": tokenizer.decode(completion_ids, skip_special_tokens=True),
            "completion_ids": completion_ids,
            "guidance_scale": sampling.guidance_scale,
            **({"guidance": sampling.guidance} if sampling.guidance is not None else {}),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "repetition_penalty": sampling.repetition_penalty,
            "max_new_tokens": sampling.max_new_tokens,
            "forward_passes_per_token": passes,
            "seconds": seconds * len(completion_ids) / total_tokens,  # the batch's time, shared out by token count
        }
        for i, completion_ids in enumerate(completions)
    ]


def generate_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    num_samples: int = 4,
    max_new_tokens: int = 48,
    guidance_scale: float = 1.0,
    null_prompt: str = "",
    chat: bool = True,
    temperature: float = 1.0,
    seed: int | None = 0,
    prompts_per_batch: int = 4,
    label: str = "model",
    progress: bool = True,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    chat_template_kwargs: dict | None = None,
) -> Iterator[dict]:
    """Yield one record per completion: prompt, sample index, completion (text and ids), settings and cost."""
    sampling = Sampling(
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        guidance_scale=guidance_scale,
        null_prompt=null_prompt,
        chat=chat,
        chat_template_kwargs=chat_template_kwargs,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        seed=seed,
        prompts_per_batch=prompts_per_batch,
    )
    for batch in generate_batches(model, tokenizer, prompts, sampling, label=label, progress=progress):
        yield from batch


# ---------------------------------------------------------------------------------------------------------------
# Generations files: a header line, then one line per completion


def generation_header(
    label: str,
    prompts: list[str],
    sampling: Sampling,
    source: dict | None = None,
    generation_config: GenerationConfig | None = None,
) -> dict:
    """The first line of a generations file: what made it. Everything but `generation_config` (derived from the
    rest and the model) must match for a run to resume."""
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": label,
        "source": source or {},
        "prompts": {"count": len(prompts), "sha1": hashlib.sha1(json.dumps(prompts).encode()).hexdigest()},
        "sampling": {**asdict(sampling), "seeding": SEEDING},
    }
    if generation_config is not None:
        header["generation_config"] = config_record(generation_config)
    return header


def is_header(line: dict) -> bool:
    return line.get("format") == FORMAT


def is_marker(line: dict) -> bool:
    """Whether a line of a `.partial` is the generator state after a batch (not a record)."""
    return "rng_state" in line and "after_batch" in line


def partial_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


def write_generations(
    path: str | Path,
    prompts: list[str],
    load_model: Callable[[], tuple],
    sampling: Sampling,
    label: str,
    source: dict | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Sample `sampling.num_samples` completions per prompt into the JSONL file `path`, resuming an interrupted run.

    The file grows as `<path>.partial`, a batch of prompts' groups at a time (flushed to disk), and becomes `path`
    (written atomically, without the `.partial`'s generator states) when complete. A run finds a `.partial` with the
    same settings and continues after its last whole batch (a torn or unfinished batch is dropped); with other
    settings it refuses, naming both. The generator state recorded after that batch is restored, so the resumed file
    is the same as an uninterrupted one, the `seconds` of each record aside. `load_model()` returns the model and
    tokenizer; it is called only when there is something to sample.
    """
    if not prompts:
        raise UserError("There are no prompts to sample: check --prompts (an empty file?) and --num_prompts.")
    path, partial = Path(path), partial_path(path)
    wanted = generation_header(label, prompts, sampling, source)
    size = sampling.prompts_per_batch
    num_batches = -(-len(prompts) // size)
    if not partial.exists() and path.is_file():
        header = _first_line(path)
        if header is not None and not _differences(header, wanted):
            log(f"{path} is complete with these settings already; delete it to sample again.")
            return path
        log(f"{path} holds other generations; sampling again, it is replaced once this run is complete.")
    done, kept, state = 0, None, None
    if partial.exists():
        header, lines, torn = _read_partial(partial)
        if header is None:
            raise UserError(f"{partial} is not a generations file; delete it and run again.")
        changed = _differences(header, wanted)
        if changed:
            raise UserError(
                f"{partial} holds an interrupted run with other settings ({'; '.join(changed)}): run again with "
                f"its settings to resume it, or delete {partial} to start over."
            )
        done, kept, state = _whole_batches(lines, sampling, len(prompts))
        if torn or len(kept) < len(lines):  # cut the unfinished batch off before appending after it
            write_text_atomic(partial, "".join(json.dumps(line) + "\n" for line in [header, *kept]))
        log(f"Resuming {partial}: {min(done * size, len(prompts))} of {len(prompts)} prompts are done.")
    if done < num_batches:
        model, tokenizer = load_model()
        if kept is None:
            header = {**wanted, "generation_config": config_record(sampling_config(model, tokenizer, sampling))}
            write_text_atomic(partial, json.dumps(header) + "\n")
        batches = generate_batches(
            model, tokenizer, prompts, sampling, label, first_batch=done, progress=progress, resume_state=state
        )
        with partial.open("a") as f, closing(batches):
            try:
                for batch in batches:
                    marker = {"after_batch": done, "rng_state": rng_state()}  # where the next batch starts from
                    f.write("".join(json.dumps(line) + "\n" for line in [*batch, marker]))
                    f.flush()
                    os.fsync(f.fileno())
                    done += 1
            except KeyboardInterrupt:
                log(
                    f"\nInterrupted: {min(done * size, len(prompts))} of {len(prompts)} prompts are in {partial}; "
                    "the same command resumes from there."
                )
                raise
    header, lines, _ = _read_partial(partial)
    write_jsonl([line for line in lines if not is_marker(line)], path, [header])
    with path.open("rb") as f:
        os.fsync(f.fileno())  # on disk before the .partial goes: a crash before then finishes the same file again
    partial.unlink()
    return path


def write_jsonl(records, path: str | Path, headers: list[dict] = ()) -> Path:
    """Write (header lines and) records to a JSONL file atomically (temporary name, then rename)."""
    return write_text_atomic(path, "".join(json.dumps(line) + "\n" for line in [*headers, *records]))


def read_generations(path: str | Path) -> tuple[list[dict], list[dict]]:
    """The header lines (none in files written before they existed) and the records of a generations file."""
    headers, records = [], []
    for line in _lines(path):
        if not is_marker(line):  # a .partial's generator states
            (headers if is_header(line) else records).append(line)
    return headers, records


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a generations file (header lines left out)."""
    return read_generations(path)[1]


def _lines(path: str | Path) -> list[dict]:
    lines = []
    with Path(path).open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                lines.append(json.loads(line))
            except ValueError:
                raise UserError(
                    f"{path}, line {number}, is not JSON (a file cut short?): pass a file written by "
                    "`trl-diversity generate`; an unfinished <output>.partial resumes with the command that wrote it."
                ) from None
    return lines


def _first_line(path: Path) -> dict | None:
    with path.open() as f:
        line = f.readline()
    try:
        first = json.loads(line)
    except ValueError:
        return None
    return first if isinstance(first, dict) and is_header(first) else None


def _read_partial(path: Path) -> tuple[dict | None, list[dict], bool]:
    """Header, the lines after it (records and generator states), and whether a torn last line (a write the crash
    cut short) was dropped."""
    text = path.read_text()
    lines = text.split("\n")
    torn = bool(lines[-1])  # every whole line ends with a newline
    parsed = []
    for line in lines[:-1]:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            torn = True
            break
    if not parsed or not is_header(parsed[0]):
        return None, [], torn
    return parsed[0], parsed[1:], torn


def _whole_batches(lines: list[dict], sampling: Sampling, num_prompts: int) -> tuple[int, list[dict], dict | None]:
    """How many leading batches are whole on disk (their records, then their generator state), their lines, and the
    generator state after the last of them."""
    size, k = sampling.prompts_per_batch, sampling.num_samples
    kept, state = [], None
    batch = 0
    while True:
        first = batch * size
        expected = (min(first + size, num_prompts) - first) * k
        rows = lines[len(kept) : len(kept) + expected + 1]
        whole = (
            expected > 0
            and len(rows) == expected + 1
            and [(r.get("prompt_index"), r.get("sample")) for r in rows[:-1]]
            == [(first + i // k, i % k) for i in range(expected)]
            and is_marker(rows[-1])
            and rows[-1]["after_batch"] == batch
        )
        if not whole:
            return batch, kept, state
        kept += rows
        state = rows[-1]["rng_state"]
        batch += 1


def _differences(have: dict, want: dict) -> list[str]:
    """'name: X there, Y here' for each setting that differs between a file's header and this run."""
    changed = []
    for key in ("version", "model", "source", "prompts"):
        if have.get(key) != want[key]:
            changed.append(f"{key}: {_short(have.get(key))} there, {_short(want[key])} here")
    there = have.get("sampling", {})
    for key, value in want["sampling"].items():
        if there.get(key) != value:
            changed.append(f"{key}: {_short(there.get(key))} there, {_short(value)} here")
    return changed


def _short(value) -> str:
    if isinstance(value, dict) and set(value) == {"count", "sha1"}:
        return f"{value['count']} prompts ({value['sha1'][:8]})"
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _generate(model, config: GenerationConfig, **inputs) -> torch.Tensor:
    """`model.generate` under `config` alone: transformers fills a config's unset fields from the model's own
    `generation_config`, so that is swapped for `config` during the call (in every wrapped model, e.g. PEFT's)."""
    owners = [m for m in model.modules() if isinstance(m.__dict__.get("generation_config"), GenerationConfig)]
    saved = [m.__dict__["generation_config"] for m in owners]
    for owner in owners:
        owner.generation_config = config
    try:
        return model.generate(generation_config=config, **inputs)
    finally:
        for owner, original in zip(owners, saved):
            owner.generation_config = original


def _as_list(value) -> list:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def _strip(ids: list[int], eos_ids: set[int]) -> list[int]:
    """Cut a sampled row at its first end-of-sequence token; `generate` pads only after one."""
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[:position]
    return ids
