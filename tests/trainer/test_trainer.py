import pytest
import torch
from peft import LoraConfig
from tiny_training import logged, make_trainer, next_token_logits
from transformers import AutoModelForCausalLM
from trl import GRPOTrainer

from trl_diversity import diversity_advantages, guided_log_probs
from trl_diversity.trainer.divergence import token_divergence


@pytest.mark.parametrize("conversational", [True, False])
def test_full_finetune_trains_every_parameter(tiny_checkpoint, tmp_path, conversational):
    trainer = make_trainer(tiny_checkpoint, tmp_path, conversational=conversational)
    assert isinstance(trainer, GRPOTrainer)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    losses = logged(trainer, "loss")
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    for name, param in trainer.model.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} did not change"
    # Counted first: an `all` over a metric that stopped being logged would pass vacuously.
    divergences, diversities = logged(trainer, "distill/divergence"), logged(trainer, "diversity/pairwise")
    assert len(divergences) == len(diversities) == 3
    assert all(d > 0 for d in divergences)
    assert all(0 <= d <= 2 for d in diversities)
    # The teacher is a frozen copy: training the student must not move it.
    teacher = trainer.accelerator.unwrap_model(trainer.teacher)
    initial = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    for (name, p), q in zip(teacher.named_parameters(), initial.parameters()):
        assert torch.equal(p, q), f"teacher parameter {name} moved"


def test_lora_trains_the_adapter_only_and_makes_no_teacher_copy(tiny_checkpoint, tmp_path):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(tiny_checkpoint, tmp_path, peft_config=lora)
    assert trainer.teacher is None and trainer.ref_model is None  # teacher = base model with the adapter disabled
    params = dict(trainer.model.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    trainer.train()
    losses = logged(trainer, "loss")
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    for name, param in trainer.model.named_parameters():
        changed = not torch.equal(param, before[name])
        if "lora_" in name:
            assert changed, f"adapter weight {name} did not change"
        else:
            assert not changed, f"base weight {name} changed"


def test_distillation_alone_lowers_the_divergence_to_the_cfg_teacher(tiny_checkpoint, tmp_path):
    trainer = make_trainer(
        tiny_checkpoint, tmp_path, prompts=4, diversity_coef=0.0, max_steps=40, learning_rate=1e-2, guidance_scale=3.0
    )
    trainer.train()
    divergence = logged(trainer, "distill/divergence")
    first, last = sum(divergence[:5]) / 5, sum(divergence[-5:]) / 5
    assert last < 0.6 * first, f"divergence went from {first:.4f} to {last:.4f}"


def test_distillation_loss_equals_a_naive_full_logits_computation(tiny_checkpoint, tmp_path):
    # Two prompts of different lengths (left padding), two samples each; bnpo = mean over all completion tokens.
    trainer = make_trainer(
        tiny_checkpoint,
        tmp_path,
        per_device_train_batch_size=4,
        num_generations=2,
        diversity_coef=0.0,
        loss_type="bnpo",
        guidance_scale=2.5,
        distill_divergence="reverse_kl",
    )
    dataset = trainer.train_dataset
    batch = [dataset[0], dataset[0], dataset[5], dataset[5]]
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); this test calls the hooks directly
    output = trainer._generate_and_score_completions(batch)
    assert torch.equal(output["advantages"], torch.zeros(4))  # no reward beyond distillation here
    loss = trainer._compute_loss(trainer.model, output)

    model, teacher = trainer.model, trainer.accelerator.unwrap_model(trainer.teacher)
    null = torch.tensor(trainer.cfg_teacher.unconditional_ids(conversational=True))
    total, count = 0.0, 0
    with torch.no_grad():
        for row in range(4):
            prompt = output["prompt_ids"][row][output["prompt_mask"][row].bool()]
            completion = output["completion_ids"][row][output["completion_mask"][row].bool()]
            teacher_log_probs = guided_log_probs(
                next_token_logits(teacher, prompt, completion), next_token_logits(teacher, null, completion), 2.5
            )
            student_logits = next_token_logits(model, prompt, completion)
            per_token = token_divergence(student_logits, teacher_log_probs, kind="reverse_kl")
            total, count = total + per_token.sum().item(), count + len(completion)
    assert loss.item() == pytest.approx(total / count, rel=1e-3)
    assert trainer._metrics["train"]["distill/divergence"][-1] == pytest.approx(total / count, rel=1e-3)


def test_diversity_advantage_is_the_unnormalised_weighted_leave_one_out_advantage(tiny_checkpoint, tmp_path):
    trainer = make_trainer(tiny_checkpoint, tmp_path, distill_coef=0.0, diversity_coef=7.0)
    trainer.model.train()
    batch = [trainer.train_dataset[i // 4] for i in range(8)]
    output = trainer._generate_and_score_completions(batch)
    rewards = trainer._latest_diversity_rewards
    torch.testing.assert_close(output["advantages"], 7.0 * diversity_advantages(rewards, 4))
    assert "teacher_hidden_states" not in output  # distill_coef=0: no teacher forward at all


def test_extra_reward_functions_keep_working(tiny_checkpoint, tmp_path):
    def brevity(completions, **kwargs):
        return [-len(str(c)) / 100 for c in completions]

    trainer = make_trainer(tiny_checkpoint, tmp_path, reward_funcs=[brevity], reward_weights=[2.0], max_steps=2)
    trainer.train()
    assert logged(trainer, "rewards/brevity/mean") and logged(trainer, "diversity/reward/mean")
    assert trainer.args.reward_weights == [2.0]  # the user's config is left as it was
    assert trainer.reward_weights.tolist() == [2.0]  # GRPO's reward lists hold what the user passed, nothing more
    assert trainer.reward_funcs == [brevity] and trainer.reward_func_names == ["brevity"]


def test_in_memory_model_gets_a_frozen_teacher_copy(tiny_checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    trainer = make_trainer(tiny_checkpoint, tmp_path, model=model, max_steps=2)
    teacher = trainer.accelerator.unwrap_model(trainer.teacher)
    assert teacher is not trainer.model
    trainer.train()
    assert not torch.equal(teacher.lm_head.weight, trainer.model.lm_head.weight)


def test_nothing_to_train_on_is_a_clear_error(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="Nothing to train on"):
        make_trainer(tiny_checkpoint, tmp_path, distill_coef=0.0, diversity_coef=0.0)


def test_teacher_with_another_vocabulary_is_rejected(tiny_checkpoint, tmp_path):
    from tiny import build_model, build_tokenizer

    other = tmp_path / "other"
    tokenizer = build_tokenizer(extra_words=("zyzzyva", "quokka"))
    build_model(len(tokenizer)).save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(ValueError, match="does not share the student's vocabulary"):
        make_trainer(tiny_checkpoint, tmp_path, teacher_model=str(other))


def test_teacher_vocabulary_check_reads_the_full_size_of_zero3_partitioned_heads(tiny_checkpoint, tmp_path):
    """ZeRO-3 loads every model partitioned: its heads are empty placeholders whose real shape is `ds_shape`."""
    from tiny import build_model

    from trl_diversity.trainer.hidden_states import language_model

    trainer = make_trainer(tiny_checkpoint, tmp_path)
    student_head = language_model(trainer.model).get_output_embeddings()
    rows = student_head.weight.shape[0]
    teacher = build_model(rows + 2)
    for head in (student_head, teacher.get_output_embeddings()):
        placeholder = torch.nn.Parameter(torch.empty(0))
        placeholder.ds_shape = head.weight.shape
        head.weight = placeholder
    with pytest.raises(ValueError, match=f"has {rows} rows, the teacher's {rows + 2}"):
        trainer.cfg_teacher._check_vocabulary(teacher, str(tmp_path / "a checkpoint without a tokenizer"))


def test_missing_teacher_path_is_rejected_before_loading_anything(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        make_trainer(tiny_checkpoint, tmp_path, teacher_model=str(tmp_path / "nowhere"))


def test_separate_teacher_checkpoint_is_used(tiny_checkpoint, tmp_path):
    from tiny import save_tiny_checkpoint

    teacher_path = save_tiny_checkpoint(tmp_path / "teacher", seed=1)
    trainer = make_trainer(tiny_checkpoint, tmp_path, teacher_model=str(teacher_path), max_steps=1)
    teacher = trainer.accelerator.unwrap_model(trainer.teacher)
    reference = AutoModelForCausalLM.from_pretrained(teacher_path)
    assert torch.equal(teacher.lm_head.weight, reference.lm_head.weight)
    trainer.train()


def test_teacher_hidden_states_do_not_depend_on_the_row_chunking(tiny_checkpoint):
    from trl_diversity.trainer.teacher import guided_teacher_hidden_states

    teacher = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    prompt_ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12], [0, 13, 14, 15, 16]])
    prompt_mask = (prompt_ids != 0).long()
    completion_ids = torch.tensor([[20, 21, 22], [23, 24, 0], [25, 0, 0]])
    completion_mask = (completion_ids != 0).long()
    arguments = (teacher, prompt_ids, prompt_mask, completion_ids, completion_mask, [2, 3], 2.0, 0)
    together = guided_teacher_hidden_states(*arguments)
    one_by_one = guided_teacher_hidden_states(*arguments, batch_size=1)
    assert together.shape == (3, 3, teacher.config.hidden_size)
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-5)
