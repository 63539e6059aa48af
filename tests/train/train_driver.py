"""Runs one training from the command line (used by the kill/resume and multi-process tests).

python tests/train/train_driver.py DATASET STUDENT OUT [max_steps] [save_every] [lora|full]
"""

import json
import sys

from apprentice.train.config import LoraConfig, TrainConfig
from apprentice.train.sft import train_adapter

if __name__ == "__main__":
    dataset, student, out = sys.argv[1:4]
    max_steps = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    save_every = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    full = len(sys.argv) > 6 and sys.argv[6] == "full"
    result = train_adapter(
        dataset,
        student,
        out,
        lora=LoraConfig(r=8, alpha=16),
        train=TrainConfig(
            max_steps=max_steps,
            save_every=save_every,
            batch_size=8,
            learning_rate=1e-3,
            logging_steps=1,
            full_finetune=full,
            seed=3,
        ),
        progress=False,
    )
    print(
        "RESULT",
        json.dumps({"steps": result.metrics["steps"], "world": result.metrics["num_processes"]}),
    )
