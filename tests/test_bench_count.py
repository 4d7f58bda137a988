"""The throughput benchmark counts every contender's tokens exactly: the same window of steps, the tokens
of the very batches those steps trained on (issue 46: the HF Trainer's count missed one batch, because
accelerate's loader collates one batch ahead except after the last)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import throughput as tp  # noqa: E402  (bench/ is a folder of scripts, not a package)

pytest.importorskip("accelerate", reason="the HF Trainer contender needs accelerate (the dev extra)")

STEPS = tp.WARM + 4  # timed steps WARM+1 .. STEPS-1: the first and the last window step both count


@pytest.fixture(scope="module")
def expected():
    """Target tokens of chefgenius's batches for the timed steps, from its own sampler, counted here."""
    raw = tp.raw_config("gpt2", "tiny", STEPS, True)
    cfg, data = tp.prepared(raw)
    from chefgenius.data.loader import collate

    tok = data.tokenizer()
    per_batch = [tp.target_tokens(collate([data.train.example(i) for i in b], tok.pad_token_id)["labels"], False)
                 for b in tp.chefgenius_batches(cfg, data)]
    assert len(set(per_batch)) > 1  # batches differ in size: an off-by-one batch would show
    return raw, per_batch, sum(per_batch[tp.WARM:STEPS - 1])


def test_the_bare_loop_counts_the_window_exactly(expected):
    raw, _, want = expected
    window = tp.run_bare(raw)
    assert window.tokens == want and window.seconds > 0


def test_chefgenius_counts_the_window_exactly(expected, tmp_path):
    raw, _, want = expected
    assert tp.run_chefgenius(raw, tmp_path).tokens == want


def test_the_hf_trainer_on_identical_batches_counts_the_window_exactly(expected, tmp_path):
    raw, _, want = expected
    window = tp.run_hf(raw, tmp_path, True, same_batches=True)
    assert window.tokens == want  # the totals at two marks gave want - per_batch[WARM + 1] before the fix


def test_the_collator_records_batches_in_order():
    counted: dict = {"tokens": 0, "last": 0}
    collate = tp.counting_collator(type("Tok", (), {"pad_token_id": 0})(), False, counted)
    for n in (3, 5, 2):
        collate([{"input_ids": [1] * (n + 1), "labels": [-100] + [1] * n}])
    assert counted["batches"] == [3, 5, 2] and counted["tokens"] == 10
