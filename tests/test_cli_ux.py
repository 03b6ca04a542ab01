"""What a newcomer meets first: progress in logs, the --out rule, --json, notes instead of failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nasdistill.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent
FAST_DM = ["--method", "dm", "--iterations", "4", "--set", "batch_real=16",
           "--set", "net=D1-W32-relu-instancenorm-avgpool"]
FAST_TRAIN = ["--proxy-steps", "5", "--batch-size", "32"]
SMALL = ["--space", str(REPO / "examples" / "small_convnet.py")]  # 16/32-wide: fast full-data trainings


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    out = tmp_path_factory.mktemp("ux-proxy")
    assert main(["distill", "--data", "digits", "--ipc", "1", *FAST_DM, "--out", str(out)]) == 0
    return out / "proxy.safetensors"


@pytest.mark.slow
def test_progress_lines_reach_a_file_within_30s(tmp_path):
    """Output to a file (CI, nohup, a cluster job): structured progress lines, not silence."""
    env = {k: v for k, v in os.environ.items() if k != "NASDISTILL_PROGRESS"}
    env.update(NASDISTILL_PROGRESS_EVERY="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    log = tmp_path / "out.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "nasdistill.cli", "distill", "--data", "digits", "--ipc", "1",
                                 *FAST_DM[:2], "--iterations", "100000", "--out", str(tmp_path / "d")],
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path)
    try:
        deadline, lines = time.monotonic() + 30, []
        while time.monotonic() < deadline and len(lines) < 2:
            time.sleep(0.5)
            lines = [ln for ln in log.read_text().splitlines() if ln.startswith("progress: distilling (dm")]
    finally:
        proc.kill()
        proc.wait()
    assert len(lines) >= 2, log.read_text()
    for word in ("/100000 it", "loss=", "elapsed=", "eta="):
        assert word in lines[-1], lines[-1]


def test_progress_records_carry_fields():
    import logging

    from nasdistill.progress import Progress

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("nasdistill.progress")
    handler, old = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        bar = Progress(total=4, desc="trials", unit="trial", disable=None, every=0.05)
        assert bar.lines  # not a terminal: lines, not a bar
        bar.update(1)
        bar.set_postfix(best="0.5")
        time.sleep(0.3)
        bar.update(3)
        bar.close()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    assert records and records[-1].progress["n"] == 4 and records[-1].progress["total"] == 4
    assert "best=0.5" in records[-1].getMessage() and records[-1].getMessage().endswith("done")
    assert any(r.progress["eta_s"] is not None for r in records[:-1])
    assert Progress(total=3, disable=True).lines is False
    short = Progress(total=10, desc="distilling", unit="it", disable=None, every=60)  # interrupted at 2 of 10
    short.update(2)
    assert short.line(final=True).endswith("2/10 it 20% elapsed=0s stopped")
    short.close()


def test_every_command_states_the_out_rule_and_logging_flags(capsys):
    parser = build_parser()
    for cmd in ("distill", "search", "validate", "run", "experts", "report", "list"):
        with pytest.raises(SystemExit):
            parser.parse_args([cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--log-file" in text and "--log-level" in text, cmd
        if cmd not in ("report", "list"):
            assert "write the outputs into exactly DIR" in text, cmd
    run_help = parser.parse_args(["run", "--name", "n", "--out-root", "r"])
    assert (run_help.out, run_help.out_root) == (None, Path("r"))


def test_a_flag_the_command_does_not_take_names_that_commands_help(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--ipc", "3"]) == 2
    assert capsys.readouterr().err.strip() == (
        "nasdistill report: error: unrecognized arguments: --ipc 3; see 'nasdistill report --help'")
    assert main(["--ipc", "3"]) == 2
    assert "see 'nasdistill --help'" in capsys.readouterr().err
    # the API's name of a setting, or an underscore, gets the flag it meant (nothing runs)
    assert main(["run", "--n-archs", "4", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == ("nasdistill run: error: unrecognized arguments: --n-archs 4 "
                                               "(did you mean --archs?); see 'nasdistill run --help'")
    assert main(["validate", "--proxy", "p", "--full_epochs=2"]) == 2
    assert "(did you mean --full-epochs?)" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_distill_out_folder_is_a_proxy_path_and_report_takes_out(proxy, tmp_path, capsys):
    from nasdistill.data import load_proxy

    folder = proxy.parent  # what 'distill --out' wrote
    assert torch.equal(load_proxy(folder).images, load_proxy(proxy).images)
    out = tmp_path / "s"
    assert main(["search", "--proxy", str(folder), "--sampler", "random", "--trials", "1", "--proxy-steps", "2",
                 *SMALL, "--out", str(out), "--no-progress"]) == 0
    (out / "report.md").unlink(missing_ok=True)
    assert main(["report", "--out", str(out)]) == 0
    assert (out / "report.md").is_file() and (out / "report.html").is_file()


def test_run_out_rules():
    from nasdistill.pipeline import RunConfig

    assert RunConfig().out_dir == Path("runs") / "quickstart"
    assert RunConfig(name="a", out_root="r").out_dir == Path("r") / "a"
    assert RunConfig(name="a", out="exact").out_dir == Path("exact")


def test_run_refuses_out_and_out_root_together(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "a"), "--out-root", str(tmp_path / "b")]) == 2
    assert "--out-root" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_speedup_note_says_why_and_which_command():
    from nasdistill.pipeline import speedup_note, summary_table

    summary = {"dataset": {"name": "digits", "train": 1217}, "proxy": {"method": "dm", "ipc": 10},
               "proxy_vs_random": {"proxy_acc": .8, "proxy_acc_std": 0, "random_acc": .7, "random_acc_std": 0},
               "search": {"best_arch_id": "D1", "best_val_acc": .9, "trials": 2},
               "validation": {"spearman": .9, "spearman_ci": (.5, 1.), "kendall": .8, "n_archs": 10},
               "cost": {"proxy": {"speedup_wall": 0.9, "speedup_flops": 0.9, "wall_time_s": 1.0,
                                  "samples_per_candidate": 8000},
                        "full_data": {"wall_time_s": 0.9, "samples_per_candidate": 7302},
                        "full_train_images": 1217, "proxy_images": 100},
               "timings_s": {"total": 100}}
    note = speedup_note(summary)
    assert "0.9× in time" in note and "1,217 training images" in note and "--data mnist --data-root" in note
    assert "7,302" in note and "8,000" in note
    assert note in summary_table(summary)
    summary["cost"]["proxy"]["speedup_wall"] = 12.0
    assert "0.9× in training FLOPs" in speedup_note(summary)  # either measure being small is explained
    summary["cost"]["proxy"]["speedup_flops"] = 9.0
    assert speedup_note(summary) is None and "12.0× time, 9.0× FLOPs" in summary_table(summary)


def test_a_proxy_that_loses_to_random_says_so_and_what_to_do():
    from nasdistill.pipeline import proxy_note, summary_table

    summary = {"dataset": {"name": "digits", "train": 270}, "proxy": {"method": "dm", "ipc": 2},
               "proxy_vs_random": {"proxy_acc": .19, "proxy_acc_std": .03, "random_acc": .2, "random_acc_std": .03,
                                   "eval_seeds": 2},
               "search": {"best_arch_id": "D1", "best_val_acc": .23, "trials": 3},
               "validation": {"spearman": .9, "spearman_ci": (.8, 1.), "kendall": .9, "n_archs": 4},
               "timings_s": {"total": 27}}
    note = proxy_note(summary)
    assert note.startswith("The dm proxy did not beat a random subset of its size here (0.1900 vs 0.2000")
    assert "--iterations" in note and "--method" in note and note in summary_table(summary)
    summary["proxy_vs_random"]["proxy_acc"] = .25
    assert proxy_note(summary) is None and "did not beat" not in summary_table(summary)
    # 4 architectures: the table says how little its ρ and interval can tell; 10 say nothing more
    assert ("ρ and its interval come from only 4 architectures" in summary_table(summary)
            and "--archs" in summary_table(summary))
    summary["validation"]["n_archs"] = 10
    assert "come from only" not in summary_table(summary)
    summary["proxy"]["method"], summary["proxy_vs_random"]["proxy_acc"] = "random", .2  # random against itself
    assert proxy_note(summary) is None


def test_search_and_validate_json(proxy, tmp_path, capsys):
    assert main(["search", "--proxy", str(proxy), "--sampler", "random", "--trials", "1", *FAST_TRAIN, *SMALL,
                 "--out", str(tmp_path / "s"), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    found = json.loads(out[0])
    assert found["trials"] == 1 and found["best_arch_id"] and 0 <= found["best_value"] <= 1
    assert (tmp_path / "s" / "best_arch.json").is_file()

    assert main(["validate", "--proxy", str(proxy), *FAST_TRAIN, "--archs", "3", "--full-epochs", "1",
                 "--bootstrap", "20", *SMALL, "--out", str(tmp_path / "v"), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    val = json.loads(out[0])
    assert val["n_archs"] == 3 and val["contenders"][0]["kind"] == "proxy"
    assert "spearman" in val["contenders"][0]["metrics"] and (tmp_path / "v" / "validation.json").is_file()

    # notebook use: the objects the Python API returns read well
    from nasdistill.validate import ValidationResult

    result = ValidationResult.load(tmp_path / "v" / "validation.json")
    assert repr(result).startswith("ValidationResult(3 architectures") and "ρ" in repr(result)
    html = result._repr_html_()
    assert html.startswith("<table>") and "<th>contender</th>" in html and "full data (reference)" in html


def test_iterations_with_a_non_iterative_method_is_a_note(tmp_path, capsys):
    from nasdistill.cli import options as cli

    for method in ("herding", "kcenter"):  # what the command does with them, without distilling
        args = build_parser().parse_args(["distill", "--method", method, "--iterations", "5",
                                          "--set", "feature_epochs=1"])
        assert cli._settings(args, [method]) == {"feature_epochs": 1}
    assert cli._settings(build_parser().parse_args(["distill", "--iterations", "5"]), ["dm"]) == {"iterations": 5}
    log = tmp_path / "log" / "nasdistill.log"
    assert main(["distill", "--data", "digits", "--method", "random", "--ipc", "1", "--iterations", "5",
                 "--out", str(tmp_path / "d"), "--log-file", str(log)]) == 0
    out = capsys.readouterr().out
    assert "note: --iterations does not apply to random" in out
    assert (tmp_path / "d" / "proxy.safetensors").is_file()
    text = log.read_text()
    assert "INFO nasdistill.cli: note: --iterations" in text and "proxy:" in text


def test_unknown_settings_are_still_refused(tmp_path, capsys):
    assert main(["distill", "--data", "digits", "--method", "random", "--set", "iterations_typo=3",
                 "--out", str(tmp_path)]) == 2
    assert "iterations_typo" in capsys.readouterr().err


def test_log_level_warning_silences_messages(tmp_path, capsys):
    assert main(["distill", "--data", "digits", "--method", "random", "--ipc", "1", "--out", str(tmp_path),
                 "--log-level", "warning"]) == 0
    assert capsys.readouterr().out == ""


def test_experts_out_is_exactly_the_folder(tmp_path, capsys):
    store, out = tmp_path / "store", tmp_path / "out"
    assert main(["experts", "--data", "digits", "--num-experts", "1", "--train-epochs", "1",
                 "--net", "D1-W32-relu-instancenorm-avgpool", "--store", str(store), "--out", str(out)]) == 0
    info = json.loads((out / "experts.json").read_text())
    assert Path(info["dir"]).parent == store and info["settings"]["experts_dir"] == str(store)
    assert "nasdistill distill --method mtt" in info["command"]
    assert {p.name for p in out.iterdir()} == {"experts.json"}


def test_run_precision_reaches_the_methods_own_precision_unless_set():
    """``run --precision`` sets the distillation method's ``precision`` where it has one (dm's real-image
    path, dd's unroll...), resolved for the device; ``--set precision=`` or ``compile=true`` (fp32 only)
    keep the method's own, and a method without the setting gets none."""
    from nasdistill.cli import commands as cli

    def settings(*argv):
        return cli._run_method_settings(build_parser().parse_args(["run", *argv]))

    assert settings("--method", "dm", "--precision", "bf16") == {"precision": "bf16"}
    assert settings("--method", "dd", "--precision", "bf16") == {"precision": "bf16"}
    assert settings("--method", "dm") == {"precision": "fp32"}  # the default, left out of the key
    assert settings("--method", "dm", "--precision", "bf16", "--set", "precision=fp32") == {"precision": "fp32"}
    assert settings("--method", "dm", "--precision", "bf16", "--set", "compile=true") == {"compile": True}
    assert settings("--method", "random", "--precision", "bf16") == {}
    auto = settings("--method", "dm", "--precision", "auto")["precision"]
    from nasdistill.training import resolve_precision
    assert auto == resolve_precision("auto", "cpu")
