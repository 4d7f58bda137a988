"""One rank of the Hugging Face Trainer with DDP (accelerate, gloo), for bench/distributed_scale.py.

    torchrun --nproc-per-node 2 bench/hf_ddp_worker.py CONFIG.json OUT_DIR

Same model, data, seed and per-process batch as the chefgenius contenders (the config is theirs),
random batches (the Trainer's distributed sampler; chefgenius's contenders use random batches too),
one thread per process. Each rank writes OUT_DIR/rank{N}.json: at step 0 and every 10th step, the
time and the target tokens it has trained on.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import counting_collator, fresh_model, hf_arguments, prepared  # noqa: E402


def main() -> None:
    from transformers import Trainer, TrainerCallback

    cfg_raw, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    torch.set_num_threads(cfg_raw["training"]["num_threads"])
    cfg, data = prepared(cfg_raw)
    tok, tc = data.tokenizer(), cfg.training
    rows = [{"input_ids": x.tolist(), "labels": y.tolist()} for x, y in map(data.train.example, range(len(data.train)))]
    counted = {"tokens": 0, "last": 0}
    collator = counting_collator(tok, False, counted)

    marks: list[tuple[int, tuple[float, int]]] = []

    class Marks(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            marks.append((0, (time.perf_counter(), 0)))

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            if state.global_step % 10 == 0:
                # the loader fetches one batch ahead of the step: count what the finished steps used
                marks.append((state.global_step, (time.perf_counter(), counted["tokens"] - counted["last"])))

    args = hf_arguments(tc, out / "hf", use_cpu=True, ddp_backend="gloo")
    Trainer(model=fresh_model(cfg, tok), args=args, train_dataset=rows, data_collator=collator,
            callbacks=[Marks()]).train()
    rank = int(os.environ.get("RANK", "0"))
    (out / f"rank{rank}.json").write_text(json.dumps({"marks": marks}))


if __name__ == "__main__":
    main()
