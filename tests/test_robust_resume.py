"""A saved training state records the run it belongs to: a later run with another model, data set or recipe is
refused with the differences (or starts over with --restart / restart=True), never silently continued; a
finished run's state is removed; a vision prune resumes like a text one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import trimformer
from trimformer.data.text import text_collate
from trimformer.methods import TopKConfig
from trimformer.testing import make_tokenizer, synthetic_text_data, tiny_bert, tiny_vision_model
from trimformer.train.loop import TrainConfig


def run_cli(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "trimformer.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def _finetune(state_dir: Path, lr: float = 1e-3, data=None, seed: int = 0, **kw):
    model = tiny_bert(seed=seed)
    data = data if data is not None else synthetic_text_data(32)
    config = TrainConfig(batch_size=8, lr=lr, max_length=16, save_every=2)
    trimformer.finetune_dense(model, data, text_collate(make_tokenizer(), 16), config, 4, state_dir=state_dir, **kw)
    return model


@pytest.mark.parametrize("change,match", [
    ({"lr": 2e-3}, r"train\.lr: saved 0\.001, now 0\.002"),
    ({"seed": 5}, r"model_weights_sha256: saved"),
    ({"data": synthetic_text_data(32, seed=1)}, r"data\.sha256: saved"),
    ({"data": synthetic_text_data(40)}, r"data\.size: saved 32, now 40"),
])
def test_a_state_of_another_run_is_refused_with_its_differences(tmp_path: Path, change: dict, match: str) -> None:
    _finetune(tmp_path / "state")
    with pytest.raises(ValueError, match=match) as info:
        _finetune(tmp_path / "state", **change)
    assert "restart" in str(info.value)


def test_restart_discards_the_old_state_and_trains_from_the_start(tmp_path: Path) -> None:
    _finetune(tmp_path / "state", lr=1e-3)
    restarted = _finetune(tmp_path / "state", lr=2e-3, restart=True)
    fresh = _finetune(tmp_path / "fresh", lr=2e-3)
    for (name, a), b in zip(restarted.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_pruning_state_records_the_method_config(tmp_path: Path) -> None:
    data, tokenizer = synthetic_text_data(32), make_tokenizer()
    config = TrainConfig(batch_size=8, lr=1e-3, max_length=16)
    trimformer.fit(trimformer.prune(tiny_bert(), TopKConfig(target_flops=0.6, hard_steps=2)), data, config,
                   tokenizer=tokenizer, state_dir=tmp_path / "s")
    with pytest.raises(ValueError, match=r"method_config\.target_flops: saved 0\.6, now 0\.8"):
        trimformer.fit(trimformer.prune(tiny_bert(), TopKConfig(target_flops=0.8, hard_steps=2)), data, config,
                       tokenizer=tokenizer, state_dir=tmp_path / "s")


@pytest.fixture
def vision_setup(tmp_path: Path) -> Path:
    model = tiny_vision_model("vit", num_labels=2, id2label={0: "dark", 1: "bright"},
                              label2id={"dark": 0, "bright": 1})
    model.save_pretrained(tmp_path / "base")
    rng = np.random.default_rng(0)
    for label, scale in (("bright", 1.0), ("dark", 0.2)):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(6):
            np.save(tmp_path / "images" / label / f"{i}.npy", (rng.random((32, 32)) * scale).astype(np.float32))
    return tmp_path


def test_cli_vision_prune_refuses_a_stale_state_resumes_a_matching_one_and_restarts(vision_setup: Path,
                                                                                   monkeypatch) -> None:
    """A SaiT prune killed after its state was saved (simulated: the state stays, the checkpoint is removed) ..."""
    from trimformer.checkpoint import load
    from trimformer.cli import commands, main

    root = vision_setup
    out, state = root / "out", root / "out.state"
    args = ["prune", "--model", root / "base", "--task", "vision", "--data", root / "images", "--method", "sait",
            "--steps", "2", "--batch-size", "4", "--out", out, "--resume"]
    monkeypatch.setattr(commands, "discard_state", lambda path: None, raising=False)  # as if killed before it
    assert main([str(a) for a in args + ["--lr", "1e-3"]]) == 0
    first = load(out)[0].state_dict()
    assert state.is_dir()
    import shutil

    shutil.rmtree(out)
    stale = run_cli(*args, "--lr", "5e-4")  # ... is rerun with another learning rate: refused, nothing written
    assert stale.returncode == 2, stale.stderr[-2000:]
    assert "train.lr: saved 0.001, now 0.0005" in stale.stderr and "--restart" in stale.stderr
    assert "Traceback" not in stale.stderr and not out.exists()
    resumed = run_cli(*args, "--lr", "1e-3")  # ... with the same recipe: continues (here: already at its last step)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name, tensor in load(out)[0].state_dict().items():
        assert torch.equal(tensor, first[name]), name
    assert not state.exists()  # the finished run's state is gone
    shutil.rmtree(out)
    assert main([str(a) for a in args + ["--lr", "5e-4"]]) == 0  # a leftover state...
    shutil.rmtree(out)
    restarted = run_cli(*args, "--lr", "1e-3", "--restart")  # ... is discarded with --restart
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert json.loads((out / "trimformer.json").read_text())["recipe"]["train"]["lr"] == 1e-3


def test_a_state_folder_that_is_not_trimformers_is_never_touched(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")
    for target, match in ((tmp_path / "mine", "not a trimformer training-state folder"), (tmp_path / "file",
                                                                                          "is a file")):
        with pytest.raises(ValueError, match=match):
            _finetune(target, restart=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    assert (tmp_path / "file").read_text() == "keep me too"


def test_a_damaged_state_is_a_clear_error(tmp_path: Path) -> None:
    _finetune(tmp_path / "state")
    (tmp_path / "state" / "finetune" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"finetune state cannot be read .*--restart"):
        _finetune(tmp_path / "state")
