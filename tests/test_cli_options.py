"""Option validation of the command line: a bad value is refused where it is parsed, and an option that does not
apply to the chosen task or method is an error instead of being ignored. Values checked at parse time run the real
command in a subprocess (it stops before importing torch, so each takes a fraction of a second); the options that
need the model's task or the method run in a subprocess for one case of each kind, and in process for the rest
(the same ``main``, without paying the import of torch and transformers once per case)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trimformer.checkpoint import save_pruned
from trimformer.cli import main
from trimformer.methods import LTPConfig, LTPPolicy
from trimformer.pruned import TokenPrunedModel
from trimformer.testing import make_tokenizer, tiny_bert, tiny_vision_model


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m trimformer.cli ARGS`` with this process's PYTHONPATH."""
    return subprocess.run([sys.executable, "-m", "trimformer.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A dense text model folder, a pruned text checkpoint, a dense vision model folder, an image folder and a
    JSONL file."""
    root = tmp_path_factory.mktemp("cli_options")
    names = {"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
    text = tiny_bert(num_labels=2, vocab_size=32, **names)
    text.save_pretrained(root / "text")
    make_tokenizer().save_pretrained(root / "text")
    save_pruned(TokenPrunedModel(text, LTPPolicy(3, LTPConfig(final_threshold=0.05))), root / "ltp", make_tokenizer())
    tiny_vision_model("dinov2", num_labels=2).save_pretrained(root / "vision")
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / "images" / label).mkdir(parents=True)
        for i in range(4):
            np.save(root / "images" / label / f"{i}.npy", rng.random((32, 32)).astype(np.float32))
    rows = [{"text": "good fun movie", "label": "pos"}, {"text": "bad boring awful", "label": "neg"}] * 4
    (root / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return {"root": root, "text": root / "text", "ltp": root / "ltp", "vision": root / "vision",
            "images": root / "images", "data": root / "data.jsonl"}


# ---- values refused by argparse (subprocess each: exit 2, the option named, nothing run)

PARSE_CASES = [
    (["eval", "CKPT", "--limit", "0"], "argument --limit: expected a count >= 1, got '0'"),
    (["quantize", "CKPT", "--out", "OUT", "--limit", "0"], "argument --limit: expected a count >= 1"),
    (["bench", "CKPT", "--num-samples", "0"], "argument --num-samples: expected a count >= 1"),
    (["bench", "CKPT", "--repeats", "0"], "argument --repeats: expected a count >= 1"),
    (["bench", "CKPT", "--threads", "0"], "argument --threads: expected a count >= 1"),
    (["eval", "CKPT", "--batch-size", "-5"], "argument --batch-size: expected a count >= 1, got '-5'"),
    (["finetune", "--out", "OUT", "--epochs", "-1"], "argument --epochs: expected a number > 0, got '-1'"),
    (["eval", "CKPT", "--max-length", "0"], "argument --max-length: expected a count >= 1"),
    (["prune", "--model", "M", "--out", "OUT", "--target-flops", "nan"],
     "argument --target-flops: expected a finite number, got 'nan'"),
    (["eval", "CKPT", "--level", "inf"], "argument --level: expected a finite number, got 'inf'"),
    (["eval", "CKPT", "--level", "1.2"], "argument --level: expected a fraction in (0, 1], got '1.2'"),
    (["demo", "--target-flops", "0"], "argument --target-flops: expected a fraction in (0, 1], got '0'"),
    (["finetune", "--out", "OUT", "--lr", "nan"], "argument --lr: expected a finite number"),
    (["quantize", "CKPT", "--out", "OUT", "--calib-batches", "0"], "argument --calib-batches: expected a count >= 1"),
]


@pytest.mark.parametrize("argv,message", PARSE_CASES, ids=[" ".join(c[0][::2][:1] + c[0][-2:]) for c in PARSE_CASES])
def test_bad_values_are_refused_where_parsed(argv, message, tmp_path):
    result = run_cli(*argv, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# prune's method options come from the method registry, whose import (torch) costs seconds: in process
PRUNE_PARSE_CASES = [
    (["--steps", "0"], "argument --steps: expected a count >= 1"),
    (["--target-flops", "-1"], "argument --target-flops: expected a fraction in [0, 1], got '-1'"),
    (["--target-flops", "1.5"], "argument --target-flops: expected a fraction in [0, 1], got '1.5'"),
    (["--keep-rate", "0"], "argument --keep-rate: expected a fraction in (0, 1], got '0'"),
    (["--keep-rate", "nan"], "argument --keep-rate: expected a finite number, got 'nan'"),
    (["--default-level", "2"], "argument --default-level: expected a fraction in (0, 1], got '2'"),
    (["--temperature", "0"], "argument --temperature: expected a number > 0, got '0'"),
    (["--r", "-1"], "argument --r: expected an integer >= 0, got '-1'"),
    (["--hard-steps", "1.5"], "argument --hard-steps: expected an integer, got '1.5'"),
    (["--lr", "-1"], "argument --lr: expected a number > 0, got '-1'"),
]


@pytest.mark.parametrize("argv,message", PRUNE_PARSE_CASES, ids=[" ".join(c[0]) for c in PRUNE_PARSE_CASES])
def test_bad_method_values_are_refused_where_parsed(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--model", "M", "--out", "OUT", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_json_must_be_a_file_in_an_existing_folder(tmp_path):
    result = run_cli("eval", "CKPT", "--json", str(tmp_path))
    assert result.returncode == 2 and f"argument --json: {tmp_path} is a folder" in result.stderr
    result = run_cli("bench", "CKPT", "--json", str(tmp_path / "missing" / "b.json"))
    assert result.returncode == 2 and "argument --json: the folder of" in result.stderr
    assert "does not exist" in result.stderr


# ---- options that do not apply to the task or the method

def _refused(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_method_option_of_another_method_is_refused_in_a_subprocess(models, tmp_path):
    result = run_cli("prune", "--model", str(models["text"]), "--method", "ltp", "--keep-rate", "0.5",
                     "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert "--keep-rate does not apply to --method ltp (it is an option of evit)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_text_only_option_with_a_vision_model_is_refused(models, capsys):
    _refused(capsys, ["eval", str(models["vision"]), "--data", str(models["images"]), "--max-length", "64"],
             "--max-length does not apply to vision models")


def test_data_of_the_other_task_is_refused_in_a_subprocess(models):
    result = run_cli("eval", str(models["vision"]), "--data", "rotten_tomatoes")
    assert result.returncode == 2, result.stderr
    assert "--data rotten_tomatoes is text data" in result.stderr and "fashion_mnist" in result.stderr


def test_task_that_contradicts_the_model_is_refused(models, tmp_path, capsys):
    _refused(capsys, ["finetune", "--model", str(models["text"]), "--task", "vision", "--out", str(tmp_path / "o")],
             "holds a text model (its config: bert); drop --task vision")


@pytest.mark.parametrize("method,option,value,users", [
    ("evit", "--target-flops", "0.5", "ltp, topk, asvit"),
    ("tome", "--target-flops", "0.5", "ltp, topk, asvit"),
    ("tome", "--keep-rate", "0.5", "evit"),
    ("sait", "--r", "4", "tome"),
    ("asvit", "--default-level", "0.5", "sait"),
])
def test_vision_method_options_apply_to_their_methods_only(models, tmp_path, capsys, method, option, value, users):
    _refused(capsys, ["prune", "--model", str(models["vision"]), "--method", method, option, value, "--out",
                      str(tmp_path / "o")],
             f"{option} does not apply to --method {method} (it is an option of {users})")
    assert not (tmp_path / "o").exists()


def test_sait_options_with_a_text_model_are_refused(models, tmp_path, capsys):
    _refused(capsys, ["prune", "--model", str(models["text"]), "--sait-policy", "mass", "--out", str(tmp_path / "o")],
             "--sait-policy does not apply to --method ltp (it is an option of sait)")


def test_lambda_needs_target_flops_zero(models, tmp_path, capsys):
    _refused(capsys, ["prune", "--model", str(models["text"]), "--lambda", "0.2", "--out", str(tmp_path / "o")],
             "--lambda is used only with --target-flops 0")
    _refused(capsys, ["prune", "--model", str(models["vision"]), "--method", "asvit", "--target-flops", "0",
                      "--out", str(tmp_path / "o")], "--target-flops 0 (no FLOPs target) applies to ltp and topk only")


@pytest.mark.parametrize("option,value", [("--lr", "1e-3"), ("--batch-size", "8"), ("--seed", "3"),
                                          ("--train-subset", "10"), ("--resume", None)])
def test_training_options_with_a_training_free_method_are_refused(models, tmp_path, capsys, option, value):
    _refused(capsys, ["prune", "--model", str(models["vision"]), "--method", "tome", option,
                      *([value] if value else []), "--out", str(tmp_path / "o")],
             f"{option} does not apply to --method tome, which is training free")


def test_options_of_the_other_task_are_refused(models, tmp_path, capsys):
    _refused(capsys, ["finetune", "--model", str(models["text"]), "--resolution", "16", "--out", str(tmp_path / "o")],
             "--resolution does not apply to text models")
    _refused(capsys, ["prune", "--model", str(models["vision"]), "--method", "sait", "--max-length", "64",
                      "--out", str(tmp_path / "o")], "--max-length does not apply to vision models")
    _refused(capsys, ["prune", "--model", str(models["text"]), "--data", "fashion_mnist", "--out",
                      str(tmp_path / "o")], "--data fashion_mnist is vision data")


def test_demo_target_flops_is_a_text_option(tmp_path, capsys):
    _refused(capsys, ["demo", "--task", "vision", "--target-flops", "0.3", "--out", str(tmp_path / "o")],
             "--target-flops does not apply to the vision demo")


def test_accuracy_limit_needs_the_accuracy(models, capsys):
    _refused(capsys, ["bench", str(models["ltp"]), "--data", str(models["data"]), "--no-accuracy",
                      "--accuracy-limit", "4"], "--accuracy-limit does not apply with --no-accuracy")


def test_level_needs_a_sait_checkpoint(models, capsys):
    _refused(capsys, ["eval", str(models["ltp"]), "--data", str(models["data"]), "--level", "0.5"],
             "--level applies to SaiT checkpoints only; this one is ltp")


def test_resolution_must_fit_the_model(models, tmp_path, capsys):
    _refused(capsys, ["finetune", "--model", str(models["vision"]), "--data", str(models["images"]), "--resolution",
                      "20", "--out", str(tmp_path / "o")],
             "--resolution 20 is not a multiple of the model's 8 px patch")
    vit = tmp_path / "vit"
    tiny_vision_model("vit", num_labels=2).save_pretrained(vit)
    _refused(capsys, ["finetune", "--model", str(vit), "--data", str(models["images"]), "--resolution", "16",
                      "--out", str(tmp_path / "o")], "a vit model runs at its config's 32 px only")


def test_options_equal_to_their_default_still_count_as_given(models, tmp_path, capsys):
    """The default value, given explicitly to a method it does not apply to, is refused too (a sentinel, not a
    comparison with the default)."""
    _refused(capsys, ["prune", "--model", str(models["vision"]), "--method", "tome", "--keep-rate", "0.7", "--out",
                      str(tmp_path / "o")], "--keep-rate does not apply to --method tome")


@pytest.mark.parametrize("name", ["runs/ng/dense", "./dense", "{tmp}/missing"])
def test_a_local_path_that_does_not_exist_is_refused_at_once(name, tmp_path, capsys, monkeypatch):
    """Not a minute of hub retries ending in 'check your internet connection': the path is named."""
    monkeypatch.chdir(tmp_path)  # relative names must not exist: a checkout may hold a real runs/ng/dense
    name = name.format(tmp=tmp_path)
    _refused(capsys, ["eval", name], f"model folder {name} not found")
    _refused(capsys, ["prune", "--model", name, "--out", str(tmp_path / "o")], f"model folder {name} not found")


def test_an_org_slash_name_stays_a_hub_name(tmp_path, monkeypatch):
    from trimformer.cli.inputs import check_local_path

    monkeypatch.chdir(tmp_path)
    check_local_path("google/vit-base-patch16-224")  # no folder 'google' here: a hub name, left to the hub
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="runs/dense not found"):
        check_local_path("runs/dense")


def test_max_length_beyond_the_models_positions(models, capsys):
    """A given --max-length longer than the model's position embeddings is refused (it was an index error deep in
    the forward on long texts); the default is lowered to what the model holds."""
    _refused(capsys, ["eval", str(models["ltp"]), "--data", str(models["data"]), "--max-length", "100"],
             "--max-length 100 is longer than the model's 64 positions")
    assert main(["eval", str(models["ltp"]), "--data", str(models["data"]), "--limit", "4"]) == 0
