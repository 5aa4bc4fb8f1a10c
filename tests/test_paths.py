"""``assd.paths`` and the atomic writes on top of it: outputs never land on inputs, unwritable outputs are
refused before the work, late filesystem faults are one line, and our stale temp files are cleaned
(issue 11). Disk-full and read-only faults are simulated in-process here (monkeypatched writes);
tests/test_hostile_inputs.py makes them real with a tmpfs and a read-only bind mount."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assd.errors import UserError, short_reason
from assd.paths import (
    LEGACY_TEMP_AGE_S,
    check_outputs,
    clean_stale_temp_dirs,
    clean_stale_temp_files,
    temp_dir,
    write_error,
    writing,
)
from assd.utils import atomic_write_bytes, atomic_write_json


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_output_onto_an_input_is_refused_also_through_a_symlink(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    link = tmp_path / "report.json"
    link.symlink_to(model)
    with pytest.raises(UserError, match=r"report.json \(--json\): is an input of this command"):
        check_outputs([model], files={"--json": link})
    with pytest.raises(UserError, match="is an input of this command"):
        check_outputs([str(model)], files={"-o": tmp_path / "." / "model.onnx"})
    check_outputs([model], files={"--json": tmp_path / "other.json"})  # fine


def test_two_options_on_one_file_and_an_input_folder_as_output_folder_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"r.txt \(--markdown\): is also the output of --csv"):
        check_outputs([], files={"--csv": tmp_path / "r.txt", "--markdown": tmp_path / "r.txt"})
    photos = tmp_path / "photos"
    photos.mkdir()
    with pytest.raises(UserError, match="is an input folder of this command"):
        check_outputs([photos], folders={"--out": (photos, ["a.jpg"])})
    (photos / "a.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match=r"a.jpg \(--out\): is an input of this command;"):
        check_outputs([photos / "a.jpg"], folders={"--out": (photos, ["a.jpg"])})


def test_an_output_inside_an_input_folder_is_refused(tmp_path):
    """A data root stands for every file below it: ``eval --data voc:ROOT --json ROOT/.../x.xml`` used to
    replace an annotation file."""
    root = tmp_path / "VOCdevkit"
    annotation = root / "VOC2007" / "Annotations" / "000001.xml"
    annotation.parent.mkdir(parents=True)
    annotation.write_text("<annotation/>")
    for files, folders in [({"--json": annotation}, None), ({"--json": root / "VOC2007" / "new.json"}, None),
                           (None, {"--out": (root / "runs", [])}), (None, {"--out": (tmp_path, ["VOCdevkit/x"])})]:
        with pytest.raises(UserError, match=r"is inside the input folder .*VOCdevkit of this command"):
            check_outputs([str(root)], files=files, folders=folders)
    assert annotation.read_text() == "<annotation/>"
    check_outputs([str(root)], files={"--json": tmp_path / "results.json"})  # beside the root: fine


def test_many_atomic_writes_into_one_folder_list_it_once(tmp_path, monkeypatch):
    import assd.paths

    listed = []
    real_listdir = os.listdir
    monkeypatch.setattr(assd.paths.os, "listdir", lambda folder: listed.append(folder) or real_listdir(folder))
    for index in range(20):
        atomic_write_bytes(tmp_path / f"{index}.jpg", b"x")
    assert len(listed) == 1 and len(list(tmp_path.iterdir())) == 20


def test_unwritable_outputs_are_refused_before_the_work(tmp_path, monkeypatch):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(UserError, match=r"ENOTDIR.*file.txt is a file, not a folder"):
        check_outputs([], files={"--json": afile / "deeper" / "r.json"})
    with pytest.raises(UserError, match="EISDIR"):
        check_outputs([], files={"--json": tmp_path})
    with pytest.raises(UserError, match="ENOTDIR.*it is a file, not a folder"):
        check_outputs([], folders={"--out": (afile, [])})
    check_outputs([], files={"--json": tmp_path / "new" / "folders" / "r.json"})  # creatable: fine
    assert not (tmp_path / "new").exists()  # and nothing created by the check
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root ignores chmod: simulate it
    with pytest.raises(UserError, match="EACCES.*no permission"):
        check_outputs([], files={"--json": tmp_path / "r.json"})


@pytest.mark.parametrize("code, hint", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only"),
                                        (errno.EACCES, "no permission"), (errno.ENOTDIR, "is a file")])
def test_late_write_faults_are_one_line_and_leave_no_temp_file(tmp_path, monkeypatch, code, hint):
    target = tmp_path / "out.json"
    target.write_text("old\n")

    def failing_replace(source, destination):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(UserError) as error:
        atomic_write_json(target, {"new": True})
    message = str(error.value)
    assert message.startswith(f"{target}: cannot write ({errno.errorcode[code]}") and hint in message
    assert "\n" not in message
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_torch_disk_full_message_becomes_enospc(tmp_path, monkeypatch):
    monkeypatch.setattr("assd.paths._free_bytes", lambda folder: 0)
    error = write_error(tmp_path / "last.pt", RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0"))
    assert "ENOSPC" in str(error) and "the disk is full" in str(error)
    assert write_error(tmp_path / "x", ValueError("not a filesystem error")) is None
    with pytest.raises(UserError, match="ENOSPC"), writing(tmp_path / "last.pt"):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    with pytest.raises(RuntimeError, match="something else"), writing(tmp_path / "x"):
        raise RuntimeError("something else")


def test_stale_temp_files_of_dead_processes_are_cleaned_and_live_ones_kept(tmp_path):
    target = tmp_path / "model.onnx"
    stale = tmp_path / f".model.onnx.{dead_pid()}-abc123.tmp"
    alive = tmp_path / f".model.onnx.{os.getpid()}-def456.tmp"
    legacy_old, legacy_new = tmp_path / ".model.onnx.k3j4h5.tmp", tmp_path / ".model.onnx.zz99yy.tmp"
    other = tmp_path / ".other.onnx.123-abc.tmp"
    user_file = tmp_path / ".model.onnx.notes.txt"
    for path in (stale, alive, legacy_old, legacy_new, other, user_file):
        path.write_bytes(b"partial")
    past = time.time() - LEGACY_TEMP_AGE_S - 10
    os.utime(legacy_old, (past, past))
    assert sorted(clean_stale_temp_files(target)) == sorted([stale, legacy_old])
    atomic_write_bytes(target, b"model")  # the next write of the same file cleans too
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [target.name, alive.name, legacy_new.name, other.name, user_file.name])


def test_temp_dirs_have_one_prefix_and_stale_ones_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    stale = tmp_path / f"assd-export-{dead_pid()}-abcd1234"
    stale.mkdir()
    (stale / "fp32.onnx").write_bytes(b"x")
    foreign = tmp_path / "assd-notes"
    foreign.mkdir()
    with temp_dir("export") as folder:
        assert folder.name.startswith(f"assd-export-{os.getpid()}-") and folder.is_dir()
        assert not stale.exists() and foreign.exists()
    assert not folder.exists()
    assert clean_stale_temp_dirs(tmp_path) == []


def test_short_reason_keeps_whole_words():
    long = "Load model failed: " + " ".join(["word"] * 100)
    reason = short_reason(RuntimeError(long + "\nsecond line"), limit=60)
    assert reason.endswith("...") and len(reason) <= 63 and reason[:-3].endswith("word")
    assert short_reason(RuntimeError("\n  first line  \nsecond")) == "first line"
    assert short_reason(RuntimeError("")) == "RuntimeError"


KILLED_MID_WRITE = """
import os, signal, sys
from assd.paths import temp_dir, temp_file_beside
fd, name = temp_file_beside(sys.argv[1])
os.write(fd, b"half a model")
with temp_dir("export") as folder:
    (folder / "fp32.onnx").write_bytes(b"half a graph")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_leftovers_of_a_kill_9_are_removed_by_the_next_run(tmp_path, monkeypatch):
    target, scratch = tmp_path / "model.onnx", tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(target)], env=env, check=False)
    assert killed.returncode == -9
    assert len(list(tmp_path.glob(".model.onnx.*.tmp"))) == 1 and len(list(scratch.glob("assd-export-*"))) == 1
    atomic_write_bytes(target, b"whole model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "tmp"]
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    with temp_dir("export"):
        assert next(p.name for p in scratch.iterdir()).startswith(f"assd-export-{os.getpid()}-")
    assert list(scratch.iterdir()) == []
