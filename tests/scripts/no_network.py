"""Run the default path's model and embedder resolution with every network connection recorded and refused.

HF_HUB_OFFLINE is not set here: the project itself must not try to reach a hub."""

import json
import socket
import sys

attempts = []


def refuse(*args, **kwargs):
    attempts.append(repr(args[1:2] or args[:1]))
    raise OSError("network access refused by the test")


socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from trl_diversity.cli.train import parse  # noqa: E402
from trl_diversity.data import load_prompts  # noqa: E402
from trl_diversity.defaults import resolve_model  # noqa: E402
from trl_diversity.rewards.embedder import embed, load_embedder  # noqa: E402
from trl_diversity.trainer.diversity_cfg_trainer import DiversityCFGTrainer  # noqa: E402

model_path = resolve_model(None)
AutoTokenizer.from_pretrained(model_path)
AutoModelForCausalLM.from_pretrained(model_path)
embed(load_embedder(None), ["a poem about the sea"])
script_args, config, model_args = parse(["--output_dir", sys.argv[1], "--max_steps", "1"])
trainer = DiversityCFGTrainer(
    model=model_path,
    args=config,
    train_dataset=load_prompts("train", conversational=True, limit=8),
    processing_class=AutoTokenizer.from_pretrained(model_path, padding_side="left"),
)
print(json.dumps({"attempts": attempts}))
