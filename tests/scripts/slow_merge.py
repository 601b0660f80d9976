"""A merge that pauses after every shard it writes, so a test can kill it midway."""

import sys
import time

import safetensors.torch

import trl_diversity.toolkit.merging as merging

real_save = safetensors.torch.save_file


def save_then_pause(*args, **kwargs):
    real_save(*args, **kwargs)
    print("shard written", flush=True)
    time.sleep(0.5)


merging.save_file = save_then_pause
model_a, model_b, output = sys.argv[1:4]
merging.lerp_merge(model_a, model_b, 0.5, output, overwrite=True)
print("merge done", flush=True)
