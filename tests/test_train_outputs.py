"""What a run writes and what it refuses up front: the out folder checked before any work, a full disk
during a checkpoint save reported in one line with the last good checkpoint kept (issue 11, item 7),
``curves.png``, per-process batch 1 with BatchNorm (``--freeze-bn``), ``--augment none`` (issue 16)."""

from __future__ import annotations

import errno
import os
import re
import tempfile
import types

import cv2
import numpy as np
import pytest
import torch
from train_helpers import NaNImages, metrics_lines, options, synthetic

from assd.data import SSDAugmentation, parse_data_spec, resize_normalize
from assd.data.transforms import normalize_boxes
from assd.errors import UserError
from assd.models.checkpoint import atomic_torch_save, load_checkpoint
from assd.train import train
from assd.train.inputs import with_augment

# Our atomic writes' temp files: .NAME.<pid>-<random>.tmp (assd.paths.temp_file_beside).
OUR_TEMP = re.compile(r"^\.(last\.pt|best\.pt|metrics\.jsonl|curves\.png)\.\d+-[A-Za-z0-9_]+\.tmp$")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _DiskFullAfter:
    """A file object with room for ``room`` bytes that then fails the way a full disk does."""

    def __init__(self, handle, room: int):
        self.handle, self.room, self.written = handle, room, 0

    def write(self, data) -> int:
        if self.written + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def test_disk_full_during_a_checkpoint_save_is_one_line_and_keeps_the_last_good_one(tmp_path, monkeypatch):
    real_save = torch.save

    def save_on_a_disk_that_fills_at_epoch_2(obj, handle, *args, **kwargs):
        return real_save(obj, _DiskFullAfter(handle, 4096) if obj.get("epoch") == 2 else handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_a_disk_that_fills_at_epoch_2)
    out = tmp_path / "run"
    with pytest.raises(UserError) as info:
        train(options(out, data=synthetic(4)))
    message = str(info.value)
    assert f"{out / 'last.pt'}: cannot write (ENOSPC: No space left on device)" in message
    assert "still holds epoch 1/2, step 2: --resume continues from there" in message and "\n" not in message
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert not [path for path in out.iterdir() if OUR_TEMP.match(path.name)]
    monkeypatch.undo()  # space freed
    assert train(options(out, model=None, data=synthetic(4), resume=True)).finished


def test_atomic_save_into_a_read_only_folder_is_one_line_and_changes_nothing(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    torch.save({"x": 0}, target)  # a checkpoint: replacing it with another is allowed (assd.paths' kind rule)
    previous = target.read_bytes()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(UserError, match=r"model.pt: cannot write \(EROFS: Read-only file system\).*the previous file, if any, is unchanged"):
        atomic_torch_save({"x": 1}, target)
    assert target.read_bytes() == previous


def test_out_folder_under_a_file_is_refused_before_the_data_is_read(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"file/run \(--out\): cannot write \(ENOTDIR: .*file is a file"):
        train(options(tmp_path / "file" / "run", data="voc:/no/such/data"))


@pytest.mark.parametrize("fault,message", [("permissions", "EACCES: Permission denied"),
                                           ("read-only", "EROFS: Read-only file system")])
def test_unwritable_out_folder_is_refused_before_the_data_is_read(tmp_path, monkeypatch, fault, message):
    if fault == "permissions":
        monkeypatch.setattr(os, "access", lambda path, mode: False)
    else:
        monkeypatch.setattr(os, "statvfs", lambda path: types.SimpleNamespace(f_flag=os.ST_RDONLY))
    expected = f"{tmp_path / 'run'} (--out): cannot write ({message})"
    with pytest.raises(UserError, match=re.escape(expected)):
        train(options(tmp_path / "run", data="voc:/no/such/data"))
    assert not (tmp_path / "run").exists()


def test_curves_png_is_drawn_after_every_epoch(tmp_path):
    out = tmp_path / "run"
    train(options(out, epochs=1, data=synthetic(4), val_data=synthetic(2, train_mode=False, start=50)))
    first = (out / "curves.png").read_bytes()
    train(options(out, model=None, data=synthetic(4), resume=True, epochs=2))
    second = (out / "curves.png").read_bytes()
    assert first != second
    image = cv2.imdecode(np.frombuffer(second, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (360, 1200, 3) and image.std() > 10  # three panels drawn, not a blank canvas
    assert [line["type"] for line in metrics_lines(out)] == ["schedule", "epoch", "val", "schedule", "epoch", "val"]


def test_batch_size_1_with_batchnorm_is_refused_with_the_ways_out(tmp_path):
    with pytest.raises(UserError, match=r"--batch-size 1: tiny-test has BatchNorm layers.*--batch-size 2 or more, "
                                        r"--sync-bn across several GPU processes.*--freeze-bn"):
        train(options(tmp_path / "run", batch_size=1))
    assert not (tmp_path / "run").exists()


def test_freeze_bn_trains_one_image_per_step_and_keeps_the_statistics(tmp_path):
    result = train(options(tmp_path / "run", batch_size=1, freeze_bn=True, max_steps=2))
    assert result.global_step == 2 and all(np.isfinite(result.step_losses))
    state = load_checkpoint(result.last_checkpoint).state_dict()
    means = [value for key, value in state.items() if key.endswith("running_mean")]
    variances = [value for key, value in state.items() if key.endswith("running_var")]
    assert means and all(torch.equal(m, torch.zeros_like(m)) for m in means)  # never updated
    assert all(torch.equal(v, torch.ones_like(v)) for v in variances)


def _check_plain_samples(dataset, indices) -> None:
    plain = with_augment(dataset, "none")
    for index in indices:
        image, target = plain[index]
        pixels = torch.from_numpy(dataset.load_image(index)).permute(2, 0, 1)
        boxes, labels = dataset.annotation(index).training_objects()
        height, width = pixels.shape[-2:]
        assert torch.equal(image, resize_normalize(pixels, dataset.input_size, dataset.mean, dataset.std))
        assert torch.equal(target["boxes"], normalize_boxes(torch.from_numpy(boxes), width, height))
        assert torch.equal(target["labels"], torch.from_numpy(labels).long())
    assert isinstance(dataset.transform, SSDAugmentation)  # the caller's dataset keeps its augmentation


def test_augment_none_serves_exactly_the_resized_image_and_boxes():
    _check_plain_samples(synthetic(4), range(4))


def test_augment_none_on_real_photos(voc_mini_root):
    _check_plain_samples(parse_data_spec(f"voc:{voc_mini_root}", train=True, input_size=64), range(3))


def test_augment_none_is_recorded_and_needs_an_assd_dataset(tmp_path):
    result = train(options(tmp_path / "run", augment="none", max_steps=1))
    assert torch.load(result.last_checkpoint, weights_only=True)["options"]["augment"] == "none"
    with pytest.raises(UserError, match="--augment none: dataset nan is not an assd DetectionDataset"):
        train(options(tmp_path / "other", augment="none", data=NaNImages()))
