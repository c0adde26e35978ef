"""Nothing lost: an output path replaces only a checkpoint trimformer wrote, and only when asked (--overwrite);
an interrupted write (an exception, or SIGKILL) leaves the previous checkpoint intact and no hidden copies behind
once the next write has run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trimformer.checkpoint import CheckpointError, load, save, save_pruned
from trimformer.io_utils import atomic_write_json
from trimformer.methods import LTPConfig, LTPPolicy
from trimformer.pruned import TokenPrunedModel
from trimformer.quant import UniformConfig, quantize_, save_packed
from trimformer.testing import make_tokenizer, tiny_bert


def run_cli(*args: object) -> subprocess.CompletedProcess:
    """The real command in a subprocess (PYTHONPATH inherited; the hub never asked)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "trimformer.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_an_existing_checkpoint_is_replaced_only_with_overwrite(tmp_path: Path) -> None:
    first, second = tiny_bert(seed=1), tiny_bert(seed=2)
    save(first, tmp_path / "ckpt")
    before = _weights(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="already holds a trimformer checkpoint; pass --overwrite"):
        save(second, tmp_path / "ckpt")
    assert all(torch.equal(before[k], v) for k, v in _weights(tmp_path / "ckpt").items())
    save(second, tmp_path / "ckpt", overwrite=True)
    assert not torch.equal(next(iter(_weights(tmp_path / "ckpt").values())), next(iter(before.values())))


def test_an_output_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="is not a folder"):
        save(tiny_bert(), tmp_path / "notes.txt" / "ckpt")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.fixture
def text_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    model = tiny_bert(num_labels=2, vocab_size=32, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    save_pruned(TokenPrunedModel(model, LTPPolicy(3, LTPConfig(final_threshold=0.05))), tmp_path / "ckpt",
                make_tokenizer())
    rows = [{"text": "good fun movie the plot", "label": "pos"}, {"text": "bad boring awful", "label": "neg"}] * 8
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    return tmp_path / "ckpt", data


def test_cli_replaces_its_own_checkpoint_only_with_overwrite(text_checkpoint, tmp_path: Path) -> None:
    ckpt, data = text_checkpoint
    args = ["quantize", ckpt, "--data", data, "--scheme", "uniform", "--abits", "0", "--limit", "4", "--out",
            tmp_path / "q"]
    assert run_cli(*args).returncode == 0
    written = (tmp_path / "q" / "trimformer.json").read_text()
    again = run_cli(*args)
    assert again.returncode == 2, again.stderr
    assert "already holds a trimformer checkpoint; pass --overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    assert (tmp_path / "q" / "trimformer.json").read_text() == written
    assert run_cli(*args, "--overwrite").returncode == 0
    assert _hidden(tmp_path) == []


def test_an_exception_mid_save_keeps_the_previous_checkpoint_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    import trimformer.checkpoint.store as store

    save(tiny_bert(seed=1), tmp_path / "ckpt")
    before = _weights(tmp_path / "ckpt")

    def half_then_fail(state, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(store, "save_file", half_then_fail)
    with pytest.raises(CheckpointError, match="disk full.*previous content of that path is unchanged"):
        save(tiny_bert(seed=2), tmp_path / "ckpt", overwrite=True)
    assert all(torch.equal(before[k], v) for k, v in _weights(tmp_path / "ckpt").items())
    assert _hidden(tmp_path) == []


_KILLED_SAVE = """
import inspect, sys, time
from pathlib import Path
import trimformer.checkpoint.store as store
from trimformer.checkpoint import save
from trimformer.testing import tiny_bert

def slow(state, filename, metadata=None):
    Path(filename).write_bytes(b"part of the weights")
    Path(sys.argv[2]).write_text("writing")
    time.sleep(120)

store.save_file = slow
save(tiny_bert(seed=2), sys.argv[1], **({"overwrite": True} if "overwrite" in inspect.signature(save).parameters
                                        else {}))
"""


def test_a_save_killed_midway_keeps_the_previous_checkpoint_and_the_next_save_cleans_up(tmp_path: Path) -> None:
    target, ready = tmp_path / "ckpt", tmp_path / "ready"
    save(tiny_bert(seed=1), target)
    before = _weights(target)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(target), str(ready)])
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert all(torch.equal(before[k], v) for k, v in _weights(target).items())  # intact, and it verifies
    assert _hidden(tmp_path)  # what the killed writer left: a hidden temporary folder
    save(tiny_bert(seed=3), target, overwrite=True)
    assert _hidden(tmp_path) == []  # the next write removed it


def test_a_swap_killed_between_its_renames_is_undone(tmp_path: Path) -> None:
    """Where the OS has no atomic exchange, the old folder is moved aside for an instant; a kill right then leaves
    it hidden, and the next write to the path puts it back before anything else."""
    from trimformer.io_utils import clean_stale_temporaries

    save(tiny_bert(seed=1), tmp_path / "ckpt")
    before = _weights(tmp_path / "ckpt")
    os.replace(tmp_path / "ckpt", tmp_path / ".ckpt.old")
    clean_stale_temporaries(tmp_path / "ckpt")
    assert _hidden(tmp_path) == []
    assert all(torch.equal(before[k], v) for k, v in _weights(tmp_path / "ckpt").items())


def test_json_reports_are_written_atomically_and_leave_nothing(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "r.json", {"v": 1})
    (tmp_path / f".r.json.{2**22 + 12345}.abc.tmp").write_text("left by a killed writer")
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "r.json", {1j: 2})
    assert json.loads((tmp_path / "r.json").read_text()) == {"v": 1}
    atomic_write_json(tmp_path / "r.json", {"v": 2})
    assert _hidden(tmp_path) == []


def test_save_packed_never_replaces_a_file_it_did_not_write(tmp_path: Path) -> None:
    model = quantize_(torch.nn.Sequential(torch.nn.Linear(4, 4)), UniformConfig(act=None))
    user = tmp_path / "train.csv"
    user.write_text("text,label\n")
    with pytest.raises(ValueError, match="was not written by save_packed"):
        save_packed(model, user)
    assert user.read_text() == "text,label\n"
    save_packed(model, tmp_path / "m.safetensors")
    save_packed(model, tmp_path / "m.safetensors")  # its own file is replaced
    assert _hidden(tmp_path) == []


def test_cli_json_report_never_replaces_a_data_file(text_checkpoint) -> None:
    ckpt, data = text_checkpoint
    rows = data.read_text()
    result = run_cli("eval", ckpt, "--data", data, "--json", data)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "is not a JSON report: trimformer never replaces it" in result.stderr and "Traceback" not in result.stderr
    assert data.read_text() == rows


def test_demo_refuses_a_users_folder_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    """In-process, with the demo itself replaced by a tripwire: a subprocess would run the whole demo on failure."""
    import trimformer.report.text_demo as text_demo
    from trimformer.cli import main

    def tripwire(*args, **kwargs):
        raise AssertionError("the demo ran in a user's folder")

    monkeypatch.setattr(text_demo, "run_demo", tripwire)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.md").write_text("my report")
    assert main(["demo", "--fast", "--out", str(tmp_path / "mine")]) == 2
    assert "is not a demo output folder" in capsys.readouterr().err
    assert (tmp_path / "mine" / "report.md").read_text() == "my report"
