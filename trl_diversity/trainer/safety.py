"""Callbacks that keep a run's work safe: skip non-finite steps, and checkpoint on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class NonFiniteStepGuard(TrainerCallback):
    """Skip an optimizer step whose gradients hold a NaN or an infinity; stop after `patience` in a row.

    Skipping drops the gradients (`grad = None`), so torch optimizers leave those parameters and their moments
    untouched: the weights stay finite. A run of non-finite steps raises instead of going on to save a model that
    learned nothing, or a corrupted one. The fraction of skipped steps is logged as `nonfinite_steps_skipped`.
    """

    def __init__(self, trainer, patience: int, log_metric: bool = True):
        self.trainer = trainer
        self.patience = patience
        self.log_metric = log_metric  # off when the trainer must log exactly what GRPO logs (the method off)
        self.consecutive = 0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.trainer.is_deepspeed_enabled:
            return  # DeepSpeed detects overflows and skips steps itself
        # Each process checks its own gradients (its shard under FSDP), then they agree.
        grads = [_local(p.grad) for p in self.trainer.model.parameters() if p.requires_grad and p.grad is not None]
        finite = torch.stack([g.isfinite().all() for g in grads]).all() if grads else torch.tensor(True)
        # Every process must take the same decision, or their weights would drift apart.
        finite = bool(self.trainer.accelerator.reduce(finite.float().to(self.trainer.accelerator.device), "min"))
        if self.log_metric:
            self.trainer._metrics["train"]["nonfinite_steps_skipped"].append(0.0 if finite else 1.0)
        if finite:
            self.consecutive = 0
            return
        self.consecutive += 1
        for param in self.trainer.model.parameters():
            param.grad = None
        logger.warning(f"Step {state.global_step + 1}: non-finite gradients, optimizer step skipped.")
        if self.consecutive >= self.patience:
            raise FloatingPointError(
                f"{self.consecutive} optimizer steps in a row had non-finite gradients; training stopped without "
                "saving. Lower the learning rate, raise max_grad_norm clipping, check the reward functions for "
                "NaN/inf, or resume from the last checkpoint."
            )


class SignalCheckpoint(TrainerCallback):
    """On SIGINT or SIGTERM, finish the current step, save a checkpoint and stop (resume continues from it)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, trainer):
        self.trainer = trainer
        self.received: int | None = None
        self._previous = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for number in self.SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)

    def _handle(self, number, frame):
        if self.received is not None:  # a second signal: stop at once
            self._restore()
            signal.raise_signal(number)
            return
        self.received = number
        logger.warning(f"Received {signal.Signals(number).name}: saving a checkpoint after this step, then stopping.")

    def on_step_end(self, args, state, control, **kwargs):
        stop = torch.tensor(float(self.received is not None), device=self.trainer.accelerator.device)
        if self.trainer.accelerator.num_processes > 1:  # a signal seen by one process stops them all together
            stop = self.trainer.accelerator.reduce(stop, "max")
        if stop.item() > 0:
            control.should_save = True
            control.should_training_stop = True
            self.trainer.interrupted = True

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()

    def _restore(self):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class ResumeNotice(TrainerCallback):
    """Say which checkpoint a resumed run continues from: the Trainer restores it silently, and a user who passed
    `--resume_from_checkpoint true` should see that it found one (and which)."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0 and state.is_world_process_zero:
            print(f"Resuming from checkpoint-{state.global_step} (step {state.global_step} of {state.max_steps}).")
