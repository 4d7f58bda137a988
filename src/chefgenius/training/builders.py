"""Builders of a run's parts that belong to no single module: data for every rank, run metadata."""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable
from typing import Any

import torch
import transformers

from chefgenius.config import Config
from chefgenius.data import title_words
from chefgenius.data.prepared import PreparedDataset, prepare_dataset
from chefgenius.data.sources import DataError
from chefgenius.data.tokenization import default_cache_dir, tokenizer_digest
from chefgenius.data.tokenizer import load_tokenizer
from chefgenius.models.builders import model_family
from chefgenius.runtime import distributed
from chefgenius.training.train_state import TrainState


def versions() -> dict[str, str]:
    return {"chefgenius": importlib.metadata.version("chefgenius"), "torch": str(torch.__version__),
            "transformers": str(transformers.__version__),
            "python": sys.version.split()[0]}


def build_data(cfg: Config, ckpt: Any, *, is_seq2seq: bool, rank: int, log: Callable[..., None]
               ) -> tuple[PreparedDataset, Any]:
    """The prepared dataset and the tokenizer: the checkpoint's, the pretrained model's, or (from
    scratch) the one prepared with the data. Rank 0 prepares (or finds) the dataset; the others then
    map it."""
    mc = cfg.model
    given = (load_tokenizer(ckpt.tokenizer_dir) if ckpt is not None else
             None if mc.from_scratch else load_tokenizer(mc.name_or_path))
    if rank != 0:
        distributed.barrier()
    data = prepare_dataset(cfg.data, is_seq2seq=is_seq2seq, tokenizer=given,
                           vocab_size=mc.vocab_size if mc.from_scratch else None,
                           cache_dir=default_cache_dir(cfg.data.cache_dir), log=log,
                           progress=cfg.logging.progress_bar and rank == 0)
    if rank == 0:
        distributed.barrier()
    _check_ranks_agree(data, given)
    rep = data.report
    dropped = ", ".join(f"{reason}: {n}" for reason, n in rep.dropped.most_common())
    log(f"data: read {rep.num_read}, kept {rep.num_kept}, dropped {rep.num_dropped}"
        + (f" ({dropped})" if dropped else "") + "; details in data_report.json")
    if given is not None and title_words.of(given) is None:  # a pretrained tokenizer learns this data's titles
        title_words.attach(given, data.title_words())
    return data, given if given is not None else data.tokenizer()


def _check_ranks_agree(data: PreparedDataset, given: Any) -> None:
    """Every rank trains on the same data with the same tokenizer, or none starts.

    Nodes with caches of their own each prepare the dataset (and, from scratch, train the tokenizer);
    a difference (other data files, another library version) would silently train a nonsense model.
    """
    if distributed.world_size() <= 1:
        return
    tok = tokenizer_digest(given if given is not None else data.tokenizer())
    mine = [data.train_fingerprint, data.val_fingerprint, tok]
    seen = distributed.all_gather_json(mine)
    odd = [r for r, theirs in enumerate(seen) if theirs != seen[0]]
    if odd:
        other = seen[odd[0]]
        raise DataError(f"rank(s) {odd} prepared other data or another tokenizer than rank 0 (train "
                        f"{other[0][:12]} vs {seen[0][0][:12]}, tokenizer {other[2]} vs {seen[0][2]}); "
                        "give every node the same data files and software versions, or one shared data.cache_dir")


def run_meta(cfg: Config, data: PreparedDataset, model: torch.nn.Module, *, is_seq2seq: bool, world_size: int,
             grad_accum: int, global_batch: int) -> dict[str, Any]:
    """What every checkpoint records about the run besides its state (resume checks read it)."""
    return {"config": cfg.to_dict(), "versions": versions(), "train_fingerprint": data.train_fingerprint,
            "val_fingerprint": data.val_fingerprint, "split_seed": cfg.data.split_seed, "is_seq2seq": is_seq2seq,
            "model_family": model_family(model), "world_size": world_size, "grad_accum": grad_accum,
            "global_batch": global_batch, "num_threads": torch.get_num_threads()}


def run_notes(cfg: Config, num_val: int, total_steps: int) -> list[str]:
    """Settings that are legal but probably not what the user meant, said at start."""
    notes = []
    if cfg.evaluation.max_batches is None and num_val > 20 * 1000:
        notes.append(f"note: every evaluation covers all {num_val} validation recipes; set evaluation.max_batches "
                     "to cap it")
    if cfg.training.warmup_steps >= total_steps:
        notes.append(f"note: training.warmup_steps={cfg.training.warmup_steps} covers the whole run of "
                     f"{total_steps} steps; the learning rate never reaches its peak")
    return notes


def final_summary(state: TrainState, data: PreparedDataset) -> dict[str, Any]:
    """``final/summary.yaml``: how the run ended."""
    return {"step": state.step, "best_val_loss": state.best_val_loss, "best_step": state.best_step,
            "stopped_early": state.stopped_early, "train_fingerprint": data.train_fingerprint,
            "versions": versions()}
