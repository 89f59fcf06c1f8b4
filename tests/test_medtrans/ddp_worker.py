"""Launched by test_training.test_ddp_two_ranks_identical through torchrun (2 gloo ranks on CPU).

Each rank trains a few GAN steps with DistributedDataParallel and saves its own generator weights.
"""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medtrans.config import load_config
from medtrans.training import trainer

instances = []


class RecordingGenerator(trainer.Generator):
    """The trainer's generator, remembered so that each rank can save what it ended with."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        instances.append(self)


trainer.Generator = RecordingGenerator
prep, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = load_config(None, overrides=[*json.loads(sys.argv[3]), "train.gan_weight=1", "train.max_steps=6", "train.val_every=1000"])
trainer.train(prep, out, cfg, device="cpu", seed=int(os.environ.get("SEED", "0")), progress=False)
torch.save(instances[0].state_dict(), out.parent / f"rank{os.environ['RANK']}.pt")
