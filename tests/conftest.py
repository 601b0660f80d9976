import os

# Any accidental hub call must fail fast: nothing in the tests may need a network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models gain nothing from intra-op threads, and threads that wait on a busy core make every op slow.
torch.set_num_threads(1)

from tiny import build_tokenizer, save_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A saved tiny Llama with a word-level tokenizer and a chat template (seconds to train on CPU)."""
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()
