"""`CFGTeacher`: the frozen starting point of the policy, and its CFG-guided predictions.

One object owns everything about the teacher:

- which model it is, chosen once at construction (`_set_up`): `teacher_model` when given; otherwise the initial
  policy, as cheaply as it can be had (the policy itself with its LoRA adapter off, TRL's frozen reference when that
  is the initial policy, a copy of an in-memory policy, or the checkpoint reloaded);
- the frozen copies that keep it the initial policy while the student trains: a user adapter's frozen copy, and the
  initial LM head when LoRA trains the head too;
- the null context, rendered like the prompts;
- the guided forward (`hidden_states`), over the conditional and unconditional contexts (`guided_forward.py`), and
  the head (`head`, `logit_scale`) that turns its hidden states into CFG logits.

It reads the policy from the trainer at call time: under LoRA the teacher *is* the policy's base, and the trainer
may re-wrap its model (DDP, DeepSpeed) after the teacher is built.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from accelerate.utils import is_peft_model

from trl_diversity.guidance import check_layers, resolve_guidance
from trl_diversity.guidance.contexts import negative_context
from trl_diversity.guidance.readout import num_layers
from trl_diversity.trainer.divergence import head_rows
from trl_diversity.trainer.hidden_states import language_model
from trl_diversity.trainer.logit_scale import logit_scale, text_config
from trl_diversity.trainer.teacher.guided_forward import guided_hidden_states
from trl_diversity.trainer.teacher_quality import sampled_token_mask
from trl_diversity.trainer.trl_internals import (
    create_model_from_path,
    disable_dropout_in_model,
    disable_gradient_checkpointing,
    get_config_model_id,
    prepare_deepspeed,
    prepare_fsdp,
    use_adapter,
)

# The frozen copy of a user-supplied adapter: the teacher is the initial policy, which TRL's convention calls "ref".
TEACHER_ADAPTER = "ref"


class CFGTeacher:
    """The CFG teacher of one trainer (built only when `distill_coef > 0`).

    Attributes:
        model: a separate frozen model (prepared like TRL's reference model), or None when the teacher is the
            policy with its adapter off (LoRA).
        adapter: with a user-supplied PEFT model, the name of the frozen copy of its initial adapter, else None.
        frozen_head: with LoRA and a trainable LM head, a frozen copy of the initial head, else None.
    """

    def __init__(self, trainer, initial_policy: torch.nn.Module | None, user_adapter_model: bool):
        self._trainer = trainer
        self.model: torch.nn.Module | None = None
        self.adapter: str | None = None
        self.frozen_head: torch.nn.Linear | None = None
        self._null_ids: dict[bool, list[int]] = {}
        # The guidance the teacher applies: `guidance`, else plain CFG at `guidance_scale` against the null context.
        self.spec = resolve_guidance(trainer.args.guidance, trainer.args.guidance_scale)
        self._set_up(initial_policy, user_adapter_model)
        if self.spec.layer_negatives:
            owner = self._trainer.model if self.model is None else self.model
            check_layers(self.spec, num_layers(owner), "the teacher")

    # ----------------------------------------------------------------------------------------------------------------
    # Which model is the teacher

    def _set_up(self, initial_policy, user_adapter_model: bool) -> None:
        trainer, args = self._trainer, self._trainer.args
        if args.teacher_model is not None:
            teacher = create_model_from_path(args.teacher_model, **self._init_kwargs())
            self._check_vocabulary(teacher, args.teacher_model)
        elif is_peft_model(trainer.model):
            if user_adapter_model:
                self.adapter = self._freeze_adapter_copy()
            check_no_softcapping(trainer.model)
            self.frozen_head = self._freeze_trainable_head()
            return  # the base model with the adapter disabled is the teacher: no second copy of the weights
        elif initial_policy is not None:
            # An in-memory policy is its own starting point. TRL's reference is no substitute: TRL reloads it from
            # `config._name_or_path`, the checkpoint on disk, which differs from a policy changed in memory (a merged
            # SFT adapter, resized embeddings, edited weights).
            teacher = initial_policy
        elif trainer.ref_model is not None and not args.sync_ref_model:
            # Loaded from the same path as the policy, the trainer's frozen reference is the initial policy already.
            # Not under `sync_ref_model`: the trainer then mixes the policy into its reference, and the teacher would
            # drift toward the student.
            check_no_softcapping(trainer.ref_model)
            self.model = trainer.ref_model
            return
        else:
            teacher = create_model_from_path(get_config_model_id(trainer.model.config), **self._init_kwargs())
        check_no_softcapping(teacher)
        teacher.eval().requires_grad_(False)
        if args.disable_dropout:
            disable_dropout_in_model(teacher)
        # Prepared like the trainer's reference model, so it is sharded the same way under DeepSpeed ZeRO-3 and FSDP.
        if trainer.is_deepspeed_enabled:
            self.model = prepare_deepspeed(teacher, trainer.accelerator)
        elif trainer.is_fsdp_enabled:
            self.model = prepare_fsdp(teacher, trainer.accelerator)
        else:
            self.model = trainer.accelerator.prepare_model(teacher, evaluation_mode=True)

    def _init_kwargs(self) -> dict:
        args = self._trainer.args
        kwargs = dict(args.model_init_kwargs or {})
        if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
            kwargs["device_map"] = None
        kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        kwargs.setdefault("dtype", self._trainer.model.dtype)
        return kwargs

    def _check_vocabulary(self, teacher, name: str) -> None:
        # Under ZeRO-3 both heads are already partitioned here: `head_rows` reads their full size, not 0.
        student_rows = head_rows(language_model(self._trainer.model).get_output_embeddings().weight)
        teacher_rows = head_rows(teacher.get_output_embeddings().weight)
        mismatch = student_rows != teacher_rows
        detail = f"the student's LM head has {student_rows} rows, the teacher's {teacher_rows}"
        try:
            from transformers import AutoTokenizer

            teacher_vocab = AutoTokenizer.from_pretrained(name).get_vocab()
        except (OSError, ValueError):
            teacher_vocab = None  # a checkpoint without a tokenizer: only the head sizes can be compared
        if teacher_vocab is not None and teacher_vocab != self._trainer._tokenizer.get_vocab():
            mismatch = True
            detail = "their tokenizers map tokens to different ids"
        if mismatch:
            raise ValueError(
                f"teacher_model {name!r} does not share the student's vocabulary ({detail}). CFG distillation compares "
                "next-token distributions id by id: use a teacher from the same model family and tokenizer."
            )

    # ----------------------------------------------------------------------------------------------------------------
    # Frozen copies

    def _freeze_adapter_copy(self) -> str:
        """The initial policy is base + the user's adapter: keep a frozen copy of that adapter as the teacher.

        TRL names the frozen copy of the initial adapter "ref" (GRPO makes one when `beta != 0`, RLOO always); the
        teacher is that same initial policy, so it is the same adapter under the same name, shared when TRL made it.
        """
        unwrapped = self._trainer.accelerator.unwrap_model(self._trainer.model)
        if TEACHER_ADAPTER not in unwrapped.peft_config:
            unwrapped.add_adapter(TEACHER_ADAPTER, unwrapped.peft_config["default"])
            for name, param in unwrapped.named_parameters():
                if f".{TEACHER_ADAPTER}." in name:
                    param.data.copy_(unwrapped.get_parameter(name.replace(f".{TEACHER_ADAPTER}.", ".default.")).data)
            unwrapped.set_adapter("default")
        for name, param in unwrapped.named_parameters():
            if f".{TEACHER_ADAPTER}." in name:
                param.requires_grad_(False)
        return TEACHER_ADAPTER

    def _freeze_trainable_head(self) -> torch.nn.Linear | None:
        """With LoRA, the teacher is the model with its adapter off; a head trained alongside the adapter
        (`modules_to_save=["lm_head"]`) would still move under it. Keep a frozen copy of the initial head then."""
        head = language_model(self._trainer.accelerator.unwrap_model(self._trainer.model)).get_output_embeddings()
        if not any(parameter.requires_grad for parameter in head.parameters()):
            return None
        weight, bias = head.weight, getattr(head, "bias", None)
        if hasattr(weight, "ds_shape") or hasattr(weight, "full_tensor"):
            raise ValueError(
                "LoRA with a trainable LM head (modules_to_save or trainable tied embeddings) under DeepSpeed ZeRO-3 "
                "or FSDP: the CFG teacher needs a frozen copy of the initial head, which a sharded head cannot give. "
                "Leave lm_head out of modules_to_save, or train on one device or with ZeRO-2."
            )
        frozen = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
        frozen = frozen.to(weight.dtype).requires_grad_(False)
        frozen.weight.copy_(weight.detach())
        if bias is not None:
            frozen.bias.copy_(bias.detach())
        return frozen

    # ----------------------------------------------------------------------------------------------------------------
    # The null context and the guided forward

    def unconditional_ids(self, conversational: bool) -> list[int]:
        """The null context, rendered like the prompts; never empty (falls back to BOS, else EOS)."""
        if conversational not in self._null_ids:
            self._null_ids[conversational] = self._tokenize(self._trainer.args.unconditional_prompt, conversational)
        return self._null_ids[conversational]

    def negative_ids(self, prompts: list | None, conversational: bool, rows: int) -> list[list[list[int]]]:
        """The context ids of every row for each context negative of the spec (`[negative][row]`).

        The null context and fixed texts are the same for every row; a per-prompt negative is rendered from each
        row's prompt (`prompts`, one per row, as the trainer's inputs hold them), as the prompts are rendered."""
        contexts = []
        null_prompt = self._trainer.args.unconditional_prompt
        for negative in self.spec.context_negatives:
            if negative.text is None:
                contexts.append([self.unconditional_ids(conversational)] * rows)
                continue
            if negative.per_prompt and prompts is None:
                raise ValueError(f"The guidance {self.spec} has a per-prompt negative: pass the rows' prompts.")
            rendered = {}
            row_ids = []
            for prompt in prompts if negative.per_prompt else [""] * rows:
                context = negative_context(negative, prompt, null_prompt)
                key = repr(context)
                if key not in rendered:
                    rendered[key] = self._tokenize(context, conversational)
                row_ids.append(rendered[key])
            contexts.append(row_ids)
        return contexts

    def _tokenize(self, context, conversational: bool) -> list[int]:
        """A context's ids, rendered as the trainer renders its prompts; never empty (BOS, else EOS)."""
        trainer = self._trainer
        if conversational:
            messages = context if isinstance(context, list) else [{"role": "user", "content": context}]
            ids = trainer._tokenize_prompts([messages])[0][0]
        else:
            ids = trainer.processing_class(text=[context])["input_ids"][0]
        ids = [int(i) for i in ids]
        if not ids:
            fallback = trainer._tokenizer.bos_token_id
            ids = [fallback if fallback is not None else trainer._tokenizer.eos_token_id]
        return ids

    def hidden_states(self, output: dict, conversational: bool, prompts: list | None = None) -> torch.Tensor:
        """The guided hidden states `[B, C, H]` at the completion positions of a generation batch (`output` holds the
        trainer's `prompt_ids`, `prompt_mask`, `completion_ids` and `completion_mask`; `prompts` the rows' prompts,
        needed by a per-prompt negative)."""
        trainer, args = self._trainer, self._trainer.args
        batch_size = args.per_device_train_batch_size if trainer.model.training else args.per_device_eval_batch_size
        arguments = dict(
            prompt_ids=output["prompt_ids"],
            prompt_mask=output["prompt_mask"],
            completion_ids=output["completion_ids"],
            # The teacher reads every token the student sampled, also those of a completion that TRL masked whole
            # (a truncated one, under `mask_truncated_completions`): the quality term scores it on them.
            completion_mask=sampled_token_mask(
                output["completion_ids"], output["completion_mask"], trainer._tokenizer.pad_token_id
            ),
            spec=self.spec,
            negative_ids=self.negative_ids(prompts, conversational, len(output["prompt_ids"])),
            pad_id=trainer._tokenizer.pad_token_id,
            batch_size=batch_size,
        )
        with torch.no_grad(), trainer.accelerator.autocast():
            if self.model is not None:
                return guided_hidden_states(self.model, **arguments)
            unwrapped = trainer.accelerator.unwrap_model(trainer.model)
            with (
                disable_gradient_checkpointing(trainer.model, args.gradient_checkpointing_kwargs),
                use_adapter(unwrapped, adapter_name=self.adapter),
                _in_eval_mode(trainer.model),  # the teacher is frozen: no dropout, as for the separate teacher
            ):
                return guided_hidden_states(trainer.model, **arguments)

    def head(self) -> torch.nn.Module:
        """The LM head that projects the guided hidden states to CFG logits."""
        if self.frozen_head is not None:
            return self.frozen_head
        owner = self._trainer.model if self.model is None else self.model
        return language_model(self._trainer.accelerator.unwrap_model(owner)).get_output_embeddings()

    def logit_scale(self) -> float:
        """The scale the teacher's model applies to its logits (1 for most families)."""
        return logit_scale(self._trainer.model if self.model is None else self.model)


@contextmanager
def _in_eval_mode(model: torch.nn.Module):
    """Run the block with `model` in eval mode (dropout off), then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def check_no_softcapping(model) -> None:
    if getattr(text_config(model), "final_logit_softcapping", None):
        raise ValueError(
            "The teacher applies final-logit soft-capping, so CFG cannot be computed on its hidden states (the "
            "capping is not linear). Use a model without `final_logit_softcapping` or set distill_coef=0."
        )
