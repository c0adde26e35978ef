"""The command line: help for every command, clear errors for bad input, eval/bench on a tiny checkpoint."""

import json

import pytest

from trimformer.checkpoint import save_pruned
from trimformer.cli import build_parser, main
from trimformer.methods import LTPConfig, LTPPolicy
from trimformer.pruned import TokenPrunedModel
from trimformer.testing import tiny_bert


@pytest.mark.parametrize("command", ["finetune", "prune", "eval", "bench", "quantize", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert "--" in capsys.readouterr().out


def test_unknown_dataset_is_a_clear_error(tmp_path, capsys):
    code = main(["eval", str(tmp_path / "missing"), "--data", "imdb"])
    assert code == 2
    assert "error" in capsys.readouterr().err


@pytest.fixture
def tiny_checkpoint(tmp_path, tokenizer):
    model = tiny_bert(num_labels=2, vocab_size=32, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    pruned = TokenPrunedModel(model, LTPPolicy(3, LTPConfig(final_threshold=0.05)))
    save_pruned(pruned, tmp_path / "ckpt", tokenizer)
    rows = [{"text": "good fun movie the plot", "label": "pos"}, {"text": "bad boring awful", "label": "neg"}] * 8
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    return tmp_path / "ckpt", data


def test_eval_and_bench_write_json(tiny_checkpoint, tmp_path):
    ckpt, data = tiny_checkpoint
    assert main(["eval", str(ckpt), "--data", str(data), "--eval-data", str(data), "--json",
                 str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert 0 <= result["accuracy"] <= 100 and result["num_examples"] == 16
    assert main(["bench", str(ckpt), "--data", str(data), "--batch-size", "4", "--num-samples", "8",
                 "--repeats", "1", "--json", str(tmp_path / "b.json")]) == 0
    bench = json.loads((tmp_path / "b.json").read_text())
    for key in ("method", "data", "batch_size", "dense_samples_per_s", "pruned_samples_per_s", "speedup",
                "flops_ratio", "accuracy_dense", "accuracy_pruned"):
        assert key in bench, key
    assert bench["method"] == "ltp" and bench["batch_size"] == 4
    # every execution option that changes timing is recorded, with the machine and versions
    assert set(bench["execution"]) >= {"mode", "regroup", "attention_chunk_bytes", "compact_min_padding",
                                       "fused_attention", "linear_kernel"}
    for key in ("threads", "threads_requested", "interop_threads", "max_length", "linear_kernel",
                "linear_kernel_requested", "torch", "task", "num_samples_timed", "repeats"):
        assert key in bench, key
    assert bench["machine"]["torch"] == bench["torch"] and bench["max_length"] == 64  # 128 lowered to the model's 64
    assert bench["speedup"] == pytest.approx(bench["pruned_samples_per_s"] / bench["dense_samples_per_s"])
    assert bench["regroup"] is True
    # the speed-up counts against the faster dense variant
    assert bench["dense_samples_per_s"] == max(bench["transformers_dense_samples_per_s"],
                                               bench["engine_dense_samples_per_s"])
    assert main(["bench", str(ckpt), "--data", str(data), "--batch-size", "4", "--num-samples", "8", "--repeats",
                 "1", "--no-accuracy", "--no-regroup", "--linear-kernel", "torch", "--json",
                 str(tmp_path / "b1.json")]) == 0
    second = json.loads((tmp_path / "b1.json").read_text())
    assert second["regroup"] is False and second["linear_kernel"] == "torch"


def test_empty_text_is_refused(tiny_checkpoint, tmp_path, capsys):
    ckpt, _ = tiny_checkpoint
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ngood movie,pos\n   ,neg\n")
    assert main(["eval", str(ckpt), "--data", str(bad), "--eval-data", str(bad)]) == 2
    assert "empty text" in capsys.readouterr().err


def test_quantize_writes_report_and_checkpoint_that_eval_and_bench_accept(tiny_checkpoint, tmp_path):
    ckpt, data = tiny_checkpoint
    out, report_file = tmp_path / "q", tmp_path / "q.json"
    assert main(["quantize", str(ckpt), "--data", str(data), "--eval-data", str(data), "--wbits", "4",
                 "--abits", "8", "--calib-batches", "1", "--layer-wbits", "classifier=8", "--out", str(out),
                 "--json", str(report_file)]) == 0
    report = json.loads(report_file.read_text())
    for key in ("scheme", "wbits", "abits", "model", "accuracy_fp", "accuracy_quant", "weight_mse_ratio_vs_uniform",
                "size_bytes_fp32", "size_bytes_quant"):
        assert key in report, key
    assert report["scheme"] == "pwlq" and report["wbits"] == 4 and report["method"] == "ltp"
    assert 0 < report["weight_mse_ratio_vs_uniform"] < 1  # PWLQ (+region bit) beats uniform at the same b
    assert report["size_bytes_quant"] < report["size_bytes_fp32"]  # tiny model: mostly float embeddings
    assert main(["eval", str(out), "--data", str(data), "--eval-data", str(data), "--json",
                 str(tmp_path / "e.json")]) == 0
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["accuracy"] == pytest.approx(report["accuracy_quant"])
    assert evaluated["quant_config"]["layer_wbits"] == {"classifier": 8}
    assert main(["bench", str(out), "--data", str(data), "--batch-size", "4", "--num-samples", "8",
                 "--repeats", "1", "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["quant_config"]["scheme"] == "pwlq"


def test_quantize_refuses_a_quantized_checkpoint_and_bad_layer_bits(tiny_checkpoint, tmp_path, capsys):
    ckpt, data = tiny_checkpoint
    args = ["--data", str(data), "--eval-data", str(data), "--calib-batches", "1", "--abits", "0"]
    assert main(["quantize", str(ckpt), *args, "--out", str(tmp_path / "q")]) == 0
    assert main(["quantize", str(tmp_path / "q"), *args, "--out", str(tmp_path / "q2")]) == 2
    assert "already quantized" in capsys.readouterr().err
    assert main(["quantize", str(ckpt), *args, "--layer-wbits", "classifier", "--out", str(tmp_path / "q3")]) == 2
    assert "GLOB=BITS" in capsys.readouterr().err


def _readme_cli_lines() -> list[list[str]]:
    """The ``trimformer ...`` commands of README's "Command line" block, as argument lists (continuations joined,
    comments and ``[optional]`` parts dropped)."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = text.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    block = block.replace("\\\n", " ")
    commands = []
    for line in block.splitlines():
        line = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).strip()
        if line.startswith("trimformer "):
            commands.append(shlex.split(line)[1:])
    return commands


def test_readme_cli_commands_parse():
    commands = _readme_cli_lines()
    assert len(commands) >= 10 and {c[0] for c in commands} >= {"finetune", "prune", "eval", "bench", "quantize"}
    for argv in commands:
        build_parser().parse_args(argv)  # SystemExit on any option the parser does not take


def test_methods_lists_the_registry_with_config_defaults(capsys):
    """`trimformer methods` is generated from the registry and the config dataclasses: every method, its tasks, every
    config field with its default, and the CLI flag of the fields that have one."""
    import dataclasses

    from trimformer.methods import registered_methods

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for spec in registered_methods():
        assert f"{spec.name}  [{', '.join(spec.tasks)}" in out
        for f in dataclasses.fields(spec.config_type):
            assert f"    {f.name} = " in out, (spec.name, f.name)
    assert "default_level = 0.7  (--default-level)" in out and "keep_rate = 0.7  (--keep-rate)" in out


def test_prune_help_groups_the_options_per_method(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--help"])
    out = capsys.readouterr().out
    for title in ("options of ltp:", "options of ltp / topk / asvit:", "options of sait:", "options of evit:",
                  "options of tome:", "training:"):
        assert title in out, title
    assert "(default ltp 0.5, topk 0.5, asvit 0.7)" in " ".join(out.split())


def test_help_shows_the_real_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default the model's; dinov2-s 112)" in out and "subset of N examples (default all)" in out
    assert "(default text 0.0001, vision 5e-05)" in out and "(default None)" not in out
