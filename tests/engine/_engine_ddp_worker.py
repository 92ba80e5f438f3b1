"""Run by test_engine_ddp.py under torchrun: train the toy task and record what each rank read.

Usage: python -m torch.distributed.run --nproc_per_node 2 _engine_ddp_worker.py OUT SEEN_DIR CONFIG
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _engine_toy import ToyEvents, ToyTask, toy_collate  # noqa: E402

from detfm.engine import TrainConfig, load_config, train  # noqa: E402


def main() -> None:
    out, seen_dir, config = sys.argv[1:4]
    torch.set_num_threads(1)
    task = ToyTask()
    train(task, ToyEvents(24), toy_collate, load_config(TrainConfig, config), out)
    Path(seen_dir, f"seen_{os.environ['RANK']}.json").write_text(json.dumps(task.seen))


if __name__ == "__main__":
    main()
