"""Launched by test_ensemble.test_an_ensemble_under_torchrun_writes_its_records_once (2 gloo ranks on CPU)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medtrans.config import load_config
from medtrans.training.ensemble import train_ensemble

prep, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = load_config(None, overrides=[*json.loads(sys.argv[3]), "train.max_steps=4", "train.val_every=1000"])
train_ensemble(prep, out, cfg, ensemble=2, device="cpu", progress=False)
