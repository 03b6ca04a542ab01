"""The command line, end to end on real data, and its handling of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nasdistill.cli import build_parser, main

FAST_DM = ["--method", "dm", "--iterations", "8", "--set", "batch_real=16",
           "--set", "net=D1-W32-relu-instancenorm-avgpool"]
FAST_TRAIN = ["--proxy-steps", "10", "--batch-size", "64"]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def digits_proxy(tmp_path_factory):
    out = tmp_path_factory.mktemp("proxy")
    assert main(["distill", "--data", "digits", "--ipc", "2", *FAST_DM, "--out", str(out), "--no-progress"]) == 0
    return out / "proxy.safetensors"


@pytest.mark.slow
def test_every_command_documents_its_flags(capsys):
    parser = build_parser()
    for cmd in ("distill", "search", "validate", "run", "list"):
        with pytest.raises(SystemExit) as e:
            parser.parse_args([cmd, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        if cmd != "list":
            for flag in ("--seed", "--device", "--out"):
                assert flag in text, (cmd, flag)
    for module in ("nasdistill.cli", "nasdistill"):  # python -m nasdistill works as the command does
        done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.startswith("nasdistill "), (module, done.stderr)


def test_top_level_help_and_version_import_no_torch():
    """``nasdistill --help`` took ~4 s, 3 of them importing torch for flags it does not show: the parser
    now builds only the named command's flags."""
    code = ("import sys\nfrom nasdistill.cli import main\n"
            "for argv in (['--help'], ['--version'], [], ['bogus']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "False", done.stderr
    assert "distill   condense a dataset into a proxy artifact" in done.stdout
    assert "invalid choice: 'bogus'" in done.stderr


@pytest.mark.parametrize("argv", [
    ["distill", "--data", "digits", "--method", "dsa", "--set", "batch_real=8", "--seed", "3"],
    ["run", "--trials", "4", "--precision", "bf16", "--out", "o"],
    ["validate", "--proxy", "p.safetensors", "--proxy", "q", "--baseline", "early-stop", "--full-epochs", "2"],
    ["list", "methods"],
])
def test_the_named_commands_parser_parses_as_the_whole_one(argv):
    from nasdistill.cli.parser import command_in, parse

    assert vars(parse(build_parser(command_in(argv)), argv)) == vars(parse(build_parser(), argv))


def test_distill_writes_artifact_and_reuses_it(digits_proxy, capsys):
    out = digits_proxy.parent
    assert {"proxy.safetensors", "proxy.json", "proxy.png"} <= _files(out)
    meta = json.loads((out / "proxy.json").read_text())
    assert meta["method"] == "dm" and meta["ipc"] == 2 and meta["settings"]["iterations"] == 8
    assert main(["distill", "--data", "digits", "--ipc", "2", *FAST_DM, "--out", str(out)]) == 0
    assert "reusing stored proxy" in capsys.readouterr().out


def test_search_continues_the_study(digits_proxy, tmp_path):
    args = ["search", "--proxy", str(digits_proxy), "--sampler", "random", *FAST_TRAIN, "--out", str(tmp_path),
            "--study-name", "s1"]
    assert main([*args, "--trials", "2"]) == 0
    assert main([*args, "--trials", "3"]) == 0
    rows = (tmp_path / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3
    best = json.loads((tmp_path / "best_arch.json").read_text())
    assert best["arch_id"] in {r.split(",")[3] for r in rows[1:]}


@pytest.mark.slow
def test_validate_reports_spearman(digits_proxy, tmp_path, capsys):
    assert main(["validate", "--proxy", str(digits_proxy), *FAST_TRAIN, "--archs", "4", "--full-epochs", "1",
                 "--bootstrap", "100", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "validation.json").read_text())
    assert "Spearman" in capsys.readouterr().out
    assert len(result["records"]) == 4


@pytest.mark.slow
def test_run_end_to_end(cwd, capsys):
    code = main(["run", "--name", "e2e", "--ipc", "2", *FAST_DM, *FAST_TRAIN, "--trials", "3", "--archs", "4",
                 "--full-epochs", "1", "--eval-seeds", "1", "--bootstrap", "100"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Spearman" in out and "random subset" in out
    run_dir = cwd / "runs" / "e2e"
    assert {"proxy.safetensors", "proxy.png", "study.db", "best_arch.json", "trials.csv", "validation.json",
            "summary.json", "summary.md"} <= _files(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["search"]["trials"] == 3
    assert 0 <= summary["proxy_vs_random"]["proxy_acc"] <= 1


@pytest.mark.parametrize("argv, needle", [
    (["distill", "--data", "minst"], "unknown dataset 'minst'"),
    (["distill", "--data", "digits", "--method", "nope"], "unknown distillation method 'nope'"),
    (["distill", "--data", "digits", "--ipc", "100000"], "use --ipc"),
    (["distill", "--data", "mnist", "--data-root", "{tmp}/empty"], "--download"),
    (["distill", "--data", "digits", "--set", "bogus"], "KEY=VALUE"),
    (["distill", "--data", "digits", "--set", "lr_img_typo=1"], "no setting"),
    (["search", "--proxy", "{tmp}/missing.safetensors"], "no proxy file"),
    (["search", "--proxy", "{corrupt}"], "not a valid proxy"),
    (["search", "--proxy", "{proxy}", "--space", "nospace"], "unknown search space"),
    (["search", "--proxy", "{proxy}", "--storage", "postgresql://nobody@127.0.0.1:1/x"], "storage"),
    (["search", "--proxy", "{proxy}", "--val-per-class", "3"], "fingerprint"),
    (["distill", "--data", "digits", "--device", "cuda:7"] if not __import__("torch").cuda.is_available()
     else ["distill", "--data", "digits", "--device", "tpu"], "device"),
])
def test_bad_input_is_one_line_nonzero_and_writes_nothing(argv, needle, digits_proxy, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    subs = {"{tmp}": str(tmp_path), "{proxy}": str(digits_proxy), "{corrupt}": str(corrupt)}
    argv = [subs.get(a, a.replace("{tmp}", str(tmp_path))) for a in argv]
    out = tmp_path / "out"
    before = _files(digits_proxy.parent)
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not [f for f in out.rglob("*") if f.is_file()], "a failed command left files behind"
    assert _files(digits_proxy.parent) == before


def test_cli_and_python_api_share_their_defaults():
    """One default for each budget and size, so a request made either way finds the same stored results."""
    from nasdistill.cli import options as cli
    from nasdistill.defaults import DEFAULT_FULL_TRAIN, DEFAULT_PROXY_TRAIN
    from nasdistill.pipeline import RunConfig
    from nasdistill.target import FidelitySearch
    from nasdistill.validate import RankingValidator, Validation, budget_key

    parser = build_parser()
    api = Validation()
    proxy_train, full_train = api.budgets()
    args = parser.parse_args(["validate", "--proxy", "p.safetensors"])
    assert budget_key(cli._full_config(args)) == budget_key(full_train) == budget_key(DEFAULT_FULL_TRAIN)
    assert budget_key(cli._train_config(args)) == budget_key(proxy_train) == budget_key(DEFAULT_PROXY_TRAIN)
    assert (args.archs, tuple(args.top_k), args.bootstrap, args.space) == \
        (api.n_archs, tuple(api.top_k), api.n_bootstrap, api.space)
    legacy = RankingValidator().validation().budgets()
    assert [budget_key(c) for c in legacy] == [budget_key(proxy_train), budget_key(full_train)]

    for argv in (["search", "--proxy", "p.safetensors"], ["distill", "--data", "digits"]):
        args = parser.parse_args(argv)
        assert budget_key(cli._full_config(args)) == budget_key(DEFAULT_FULL_TRAIN), argv
        assert budget_key(cli._train_config(args)) == budget_key(DEFAULT_PROXY_TRAIN), argv
    target = FidelitySearch(target=0.5, methods=["dm"], ipcs=[1])
    assert (target.n_archs, target.n_bootstrap, target.space) == (api.n_archs, api.n_bootstrap, api.space)

    args, config = parser.parse_args(["run"]), RunConfig()
    assert budget_key(cli._full_config(args)) == budget_key(config.full_train)
    assert budget_key(cli._train_config(args)) == budget_key(config.proxy_train)
    assert (args.archs, args.trials, args.bootstrap) == (config.n_archs, config.n_trials, config.n_bootstrap)
    args = parser.parse_args(["run", "--proxy-epochs", "3", "--full-epochs", "2"])
    assert cli._train_config(args) == config.proxy_train.replace(epochs=3)
    assert cli._full_config(args) == config.full_train.replace(epochs=2)


@pytest.mark.slow
def test_references_stored_by_the_cli_are_reused_by_the_python_api(digits_proxy, tmp_path):
    from nasdistill.api import DataSpec, load_proxy, validate
    from nasdistill.defaults import DEFAULT_FULL_TRAIN, DEFAULT_PROXY_TRAIN

    store = f"sqlite:///{tmp_path / 'refs.db'}"
    proxy = load_proxy(digits_proxy)
    data = DataSpec.from_proxy(proxy).load()
    small = dict(n_archs=3, proxy_train=DEFAULT_PROXY_TRAIN.replace(steps=10, batch_size=64),
                 full_train=DEFAULT_FULL_TRAIN.replace(epochs=1), n_bootstrap=50, store=store)
    flags = [*FAST_TRAIN, "--archs", "3", "--full-epochs", "1", "--bootstrap", "50", "--reference-store", store,
             "--no-progress"]

    # the CLI first, then the Python API: nothing is trained again
    assert main(["validate", "--proxy", str(digits_proxy), *flags, "--out", str(tmp_path / "cli")]) == 0
    assert json.loads((tmp_path / "cli" / "validation.json").read_text())["reference"]["n_trained"] == 3
    result = validate([proxy], data=data, **small)
    assert result.reference["n_trained"] == 0 and result.reference["n_reused"] == 3
    assert result.primary.n_computed == 0

    # and the other way round (another seed: another sample)
    first = validate([proxy], data=data, seed=1, **small)
    assert first.reference["n_trained"] == 3
    assert main(["validate", "--proxy", str(digits_proxy), *flags, "--seed", "1", "--out", str(tmp_path / "cli1")]) == 0
    again = json.loads((tmp_path / "cli1" / "validation.json").read_text())
    assert again["reference"]["n_trained"] == 0 and again["reference"]["n_reused"] == 3


@pytest.mark.slow
def test_validate_with_seed_averaged_proxy_scores(digits_proxy, tmp_path):
    assert main(["validate", "--proxy", str(digits_proxy), *FAST_TRAIN, "--archs", "3", "--full-epochs", "1",
                 "--bootstrap", "50", "--proxy-repeats", "2", "--baseline", "early-stop", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "validation.json").read_text())
    text = json.dumps(result)
    assert "-x2" in text and '"repeats": 2' in text
    # the same repeats trained at once under vmap (a fresh store, so they are trained, not reused): the same scores
    assert main(["validate", "--proxy", str(digits_proxy), *FAST_TRAIN, "--archs", "3", "--full-epochs", "1",
                 "--bootstrap", "50", "--proxy-repeats", "2", "--vectorize-repeats", "--reference-store",
                 f"sqlite:///{tmp_path / 'fresh.db'}", "--out", str(tmp_path / "vmap")]) == 0
    import csv

    rows = [list(csv.DictReader((tmp_path / d / "validation_archs.csv").open())) for d in (".", "vmap")]
    assert [r["arch_id"] for r in rows[0]] == [r["arch_id"] for r in rows[1]] and len(rows[0]) == 3
    for loop, vmapped in zip(*rows):
        assert float(vmapped["score:dm-ipc2-x2"]) == pytest.approx(float(loop["score:dm-ipc2-x2"]), abs=0.01)


@pytest.mark.slow
def test_proxy_schedule_flag_reaches_the_candidates_training(digits_proxy, tmp_path, capsys):
    flags = ["--proxy", str(digits_proxy), *FAST_TRAIN, "--archs", "3", "--full-epochs", "1", "--bootstrap", "50"]
    assert main(["validate", *flags, "--schedule", "cosine", "--lr", "0.03", "--out", str(tmp_path / "c")]) == 0
    train = json.loads((tmp_path / "c" / "validation.json").read_text())["contenders"][0]["description"]["train"]
    assert train["schedule"] == "cosine" and train["lr"] == 0.03
    assert main(["validate", *flags, "--out", str(tmp_path / "s")]) == 0  # DC's step schedule unless told
    assert json.loads((tmp_path / "s" / "validation.json").read_text())["contenders"][0]["description"]["train"]["schedule"] == "step"
    capsys.readouterr()
    assert main(["validate", *flags, "--schedule", "linear", "--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err
    assert "--schedule" in err and "cosine" in err and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_precision_flag_reaches_proxy_and_full_trainings(digits_proxy, tmp_path, capsys):
    """``--precision bf16`` trains every candidate (proxy and full data) in bf16; ``auto`` is resolved
    for the device before anything is keyed (never stored as "auto"); a bad value exits non-zero."""
    from nasdistill.training import resolve_precision

    # the narrow space of examples/: bf16 is emulated (10x+ slower) on CPUs without AMX/AVX512-BF16
    small = str(Path(__file__).resolve().parent.parent / "examples" / "small_convnet.py")
    flags = ["--proxy", str(digits_proxy), *FAST_TRAIN, "--archs", "3", "--full-epochs", "1", "--bootstrap", "50",
             "--device", "cpu", "--space", small]
    for value, expect in {"bf16": "bf16", "auto": resolve_precision("auto", "cpu"), "fp32": "fp32"}.items():
        assert main(["validate", *flags, "--precision", value, "--out", str(tmp_path / value)]) == 0
        v = json.loads((tmp_path / value / "validation.json").read_text())
        # fp32 is left out of a description (the keys stored before the option stay valid)
        assert v["contenders"][0]["description"]["train"].get("precision", "fp32") == expect
        assert v["settings"]["full_train"].get("precision", "fp32") == expect
    capsys.readouterr()
    assert main(["validate", *flags, "--precision", "fp16", "--out", str(tmp_path / "x")]) != 0
    assert "--precision" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_run_workers_share_the_validation_with_the_same_results(tmp_path, monkeypatch):
    """``run --workers 2`` (the validation's trainings shared between two processes) and ``run
    --prefetch`` (the references trained in a background process during distillation and search):
    the validated ranking is the one-process run's, figure for figure (seeded trainings, whichever
    process runs them)."""
    args = ["run", "--ipc", "2", *FAST_DM, *FAST_TRAIN, "--trials", "2", "--archs", "4", "--full-epochs", "1",
            "--eval-seeds", "1", "--bootstrap", "50", "--sampler", "random", "--no-progress"]
    results = {}
    for arm, extra in {"one": ["--workers", "1"], "two": ["--workers", "2"], "prefetch": ["--prefetch"]}.items():
        monkeypatch.setenv("NASDISTILL_HOME", str(tmp_path / f"home-{arm}"))  # nothing reused between them
        assert main([*args, *extra, "--out", str(tmp_path / arm)]) == 0
        results[arm] = json.loads((tmp_path / arm / "validation.json").read_text())
    summary = json.loads((tmp_path / "prefetch" / "summary.json").read_text())
    assert summary["cost"]["references_in_background"] is True
    key = lambda r: r["arch_id"]  # noqa: E731
    one = sorted(results["one"]["records"], key=key)
    for arm in ("two", "prefetch"):
        other = sorted(results[arm]["records"], key=key)
        assert [r["arch_id"] for r in one] == [r["arch_id"] for r in other]
        for a, b in zip(one, other):
            assert a["full_acc"] == pytest.approx(b["full_acc"]) and a["scores"] == pytest.approx(b["scores"]), arm
