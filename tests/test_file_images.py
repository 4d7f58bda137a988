"""Background saves copy the state into the images of its files and write each image as it lies in
memory: same bytes as a synchronous save, no staging copy."""

from __future__ import annotations

import mmap

import pytest
import torch

from chefgenius.checkpoint import tensorfile
from chefgenius.checkpoint.snapshot import TensorBuffers, take_snapshot, write_snapshot
from chefgenius.durable.files import DirectFile, replace_durably


class _Holder:
    def __init__(self, obj) -> None:  # noqa: ANN001
        self.obj = obj

    def state_dict(self):
        return self.obj.state_dict()


def _model(family: str):
    from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    return T5ForConditionalGeneration(T5Config(vocab_size=300, d_model=32, d_ff=64, d_kv=8, num_layers=2,
                                               num_heads=2, decoder_start_token_id=0))


def _trained(family: str):
    model = _model(family)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 300, (2, 12))
    out = model(input_ids=ids, labels=ids) if family == "gpt2" else model(input_ids=ids, labels=ids[:, :5].contiguous())
    out.loss.backward()
    opt.step()
    return model, opt


def _written(tmp_path, name, model, opt, buffers, monkeypatch) -> tuple[dict[str, bytes], list[bool]]:
    found: list[bool] = []
    real = tensorfile.image_holding

    def spy(layout, tensors):  # noqa: ANN001, ANN202
        image = real(layout, tensors)
        found.append(image is not None)
        return image

    monkeypatch.setattr(tensorfile, "image_holding", spy)
    snap = take_snapshot(model=model, pieces={"optimizer": _Holder(opt)}, meta={"step": 1}, buffers=buffers)
    (tmp_path / name).mkdir()
    write_snapshot(tmp_path / name, snap, model=model, tokenizer=None)
    monkeypatch.setattr(tensorfile, "image_holding", real)
    files = {p.relative_to(tmp_path / name).as_posix(): p.read_bytes()
             for p in sorted((tmp_path / name).rglob("*.safetensors"))}
    return files, found


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_a_background_save_writes_every_file_from_its_image_with_the_synchronous_bytes(tmp_path, family,
                                                                                         monkeypatch):
    """The model's file is foreseen as save_pretrained writes it (tied weights dropped by its rule,
    T5's three tied embeddings too); every file goes out from its image, byte for byte the file a
    synchronous save writes from the live tensors."""
    model, opt = _trained(family)
    sync, sync_images = _written(tmp_path, "sync", model, opt, None, monkeypatch)
    background, images = _written(tmp_path, "background", model, opt, TensorBuffers(), monkeypatch)
    assert {"model/model.safetensors", "optimizer.safetensors", "rank-00000/rng.safetensors"} <= sync.keys()
    assert background == sync
    assert len(images) == len(background) and all(images)  # every file written from its image
    assert not any(sync_images)  # a synchronous save writes the live tensors


def test_an_image_is_reused_while_its_layout_stays_and_let_go_when_it_changes(tmp_path):
    model, opt = _trained("gpt2")
    buffers = TensorBuffers()
    first = take_snapshot(model=model, pieces={"optimizer": _Holder(opt)}, meta={"step": 1}, buffers=buffers)
    again = take_snapshot(model=model, pieces={"optimizer": _Holder(opt)}, meta={"step": 2}, buffers=buffers)
    assert {k: t.data_ptr() for k, t in first.pieces["optimizer"].tensors.items()} == \
        {k: t.data_ptr() for k, t in again.pieces["optimizer"].tensors.items()}
    # Each view has a storage of its own over the image (save_pretrained finds tied weights by storage).
    ptrs = [t.untyped_storage().data_ptr() for t in again.model_state.values()]
    assert len(set(ptrs)) == len(ptrs) - 1  # only the tied embedding and output weight share one
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(3))], "lr": 0.1})
    opt.param_groups[-1]["params"][0].grad = torch.ones(3)
    opt.step()  # a new tensor in the optimizer's state: a new layout, a new image
    third = take_snapshot(model=model, pieces={"optimizer": _Holder(opt)}, meta={"step": 3}, buffers=buffers)
    assert len(third.pieces["optimizer"].tensors) > len(again.pieces["optimizer"].tensors)
    assert sum(map(len, buffers._images.values())) == 3  # model, optimizer, RNG: the optimizer's old one let go


def test_two_files_of_one_layout_in_one_snapshot_get_an_image_each():
    a, b = {"w": torch.ones(3, 4)}, {"w": torch.full((3, 4), 2.0)}
    buffers = TensorBuffers()
    for _ in range(2):  # allocated, then reused
        first, second = buffers.place([(a, None), (b, None)])
        buffers.finish()
        assert torch.equal(first["w"], a["w"]) and torch.equal(second["w"], b["w"])
        assert first["w"].data_ptr() != second["w"].data_ptr()


@pytest.mark.parametrize("sizes", [[4096 * 3 + 5], [8 << 20, 3, 4096], [4096, 4096 * 2, 1]])
def test_page_aligned_memory_goes_straight_to_the_disk_and_the_file_is_exact(tmp_path, sizes):
    """Aligned memory at an aligned file offset is written from where it lies; only what is left
    over (a tail shorter than a page, or anything after an unaligned offset) is staged."""
    import os

    if not getattr(os, "O_DIRECT", 0):
        pytest.skip("no O_DIRECT on this platform")
    g = torch.Generator().manual_seed(sum(sizes))
    blocks = []
    for n in sizes:
        m = mmap.mmap(-1, n)  # page-aligned
        m[:] = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g).numpy().tobytes()
        blocks.append(m)
    staged: list[int] = []

    def write(f) -> None:  # noqa: ANN001
        for block in blocks:
            f.write(memoryview(block))
            staged.append(f._used)

    probe = DirectFile.open(tmp_path / "probe")
    assert probe is not None, "this filesystem refused O_DIRECT: the test proves nothing here"
    probe.__exit__(None, None, None)
    replace_durably(tmp_path / "f", write, direct=True)
    assert (tmp_path / "f").read_bytes() == b"".join(bytes(b) for b in blocks)
    assert staged[0] == sizes[0] % 4096  # the first block went out from where it lies, all but its tail
