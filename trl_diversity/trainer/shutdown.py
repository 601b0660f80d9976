"""Ending a multi-process run so that every rank exits with status 0.

A gloo worker thread frees a finished collective's tensors under the process group's work lock, and freeing a tensor
that Python once owned takes the GIL. If the main thread reaches interpreter finalisation first, the worker cannot get
the GIL, its thread is unwound, and the rank dies with "terminate called without an active exception" (SIGABRT) after
a successful run (pytorch/pytorch#190489). `destroy_process_group` alone does not help: the wrapped model still holds
the group, so its threads live on into finalisation.
"""

from __future__ import annotations


def end_distributed_run(accelerator) -> None:
    """Drain the process group's workers, then tear it down. Call on every rank, after its last collective.

    A barrier enqueues one more collective, which waits for the work lock, so it returns only after the workers have
    freed every earlier collective's tensors; it releases the GIL meanwhile, which is what they wait for."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
