"""Reports: what ``validate``/``search``/``run`` leave in a folder becomes ``report.md``, a self-contained
``report.html`` and PNG figures, with the numbers of the run's own files; bad folders fail in one line."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from nasdistill.cli import main
from nasdistill.report import load_run, write_report

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread

# the narrow space of examples/ (depth <= 3, width <= 32): the report's content, not the networks, is tested
SMALL_SPACE = str(Path(__file__).resolve().parent.parent / "examples" / "small_convnet.py")
FAST_TRAIN = ["--proxy-steps", "10", "--batch-size", "64", "--no-progress", "--space", SMALL_SPACE]


@pytest.fixture(scope="module")
def validated(tmp_path_factory) -> Path:
    """A proxy (dm, digits, 2 ipc), searched (3 trials) and validated (5 architectures, with a random
    subset and the zero-cost baseline as further contenders) in one folder."""
    out = tmp_path_factory.mktemp("run")
    assert main(["distill", "--data", "digits", "--method", "dm", "--ipc", "2", "--iterations", "8",
                 "--set", "batch_real=16", "--set", "net=D1-W32-relu-instancenorm-avgpool", "--out", str(out),
                 "--no-progress"]) == 0
    assert main(["search", "--proxy", str(out / "proxy.safetensors"), "--sampler", "random", "--trials", "3",
                 *FAST_TRAIN, "--out", str(out)]) == 0
    assert main(["validate", "--proxy", str(out / "proxy.safetensors"), *FAST_TRAIN, "--archs", "5",
                 "--baseline", "zero-cost", "--full-epochs", "1", "--bootstrap", "100", "--out", str(out)]) == 0
    return out


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_validate_writes_a_report_with_the_runs_own_numbers(validated):
    files = {p.name for p in validated.iterdir()}
    assert {"report.md", "report.html", "report_scatter.png", "report_spearman.png", "report_history.png"} <= files
    for name in ("report_scatter.png", "report_spearman.png", "report_history.png"):
        w, h = _png(validated / name)
        assert w >= 300 and h >= 200, name

    validation = json.loads((validated / "validation.json").read_text())
    md = (validated / "report.md").read_text()
    # every contender's Spearman, as validation.json has it, appears in the contenders table
    for c in validation["contenders"]:
        rho = c["metrics"]["spearman"]
        row = next(line for line in md.splitlines() if line.startswith(f"| {c['name']} |"))
        assert f"{rho:.3f}" in row, (c["name"], rho, row)
    # the search: the best architecture of best_arch.json, and every trial of trials.csv in the history
    best = json.loads((validated / "best_arch.json").read_text())
    assert best["arch_id"] in md
    with (validated / "trials.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3
    assert len(load_run(validated).trials) == 3


def test_the_html_report_is_self_contained(validated):
    html = (validated / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    srcs = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(srcs) >= 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in html and "https://" not in html
    # the markdown links the figures beside it, and each one exists
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (validated / "report.md").read_text()):
        assert (validated / link).is_file(), link


def test_nasdistill_report_regenerates_and_drops_stale_figures(validated, tmp_path, capsys):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(validated, folder)
    (folder / "report_scatter.png").unlink()
    (folder / "report_obsolete.png").write_bytes(b"old")
    (folder / "validation.json").unlink()  # only the search is left
    assert main(["report", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "html:" in out and "md:" in out
    assert (folder / "report_history.png").is_file()
    assert not (folder / "report_obsolete.png").exists() and not (folder / "report_scatter.png").exists()
    assert "no validation.json" in (folder / "report.md").read_text()


def test_an_unreadable_piece_is_noted_not_fatal(validated, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(validated, folder)
    (folder / "best_arch.json").write_text("{not json")
    paths = write_report(folder)
    md = paths["md"].read_text()
    assert "best_arch.json could not be read" in md
    assert "Spearman" in md  # the rest is still there


def test_an_undefined_spearman_is_explained_in_the_report(validated, tmp_path):
    """References all at chance (too short a full-data budget) left '–' in the ρ column and nothing
    else; the report says why, as the command line does."""
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(validated, folder)
    v = json.loads((folder / "validation.json").read_text())
    assert "Spearman is undefined" not in write_report(folder)["md"].read_text()
    v["reference"]["scores"] = {a: 0.1 for a in v["reference"]["scores"]}
    for c in v["contenders"]:
        c["metrics"]["spearman"] = None  # as written for nan
    (folder / "validation.json").write_text(json.dumps(v))
    md = write_report(folder)["md"].read_text()
    name = v["contenders"][0]["name"]
    assert (f"*{name}: Spearman is undefined: all 5 full-data references score the same (0.1000, chance); train "
            "them longer (--full-epochs)") in md


def test_the_runs_notes_are_in_its_report(tmp_path):
    """The console's notes below a run's summary (a proxy that lost to a random subset, a small
    speed-up) were missing from report.md/.html, the files people look at later."""
    summary = {"name": "n", "dataset": {"name": "digits", "train": 270, "val": 30, "test": 100},
               "proxy": {"method": "dm", "ipc": 2},
               "proxy_vs_random": {"arch_id": "D1", "proxy_acc": .19, "proxy_acc_std": .03, "random_acc": .2,
                                   "random_acc_std": .03, "eval_seeds": 2},
               "cost": {"proxy": {"speedup_wall": 0.9, "speedup_flops": 0.9, "samples_per_candidate": 8000},
                        "full_data": {"samples_per_candidate": 7302}, "full_train_images": 1217}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    paths = write_report(tmp_path)
    md, html = paths["md"].read_text(), paths["html"].read_text()
    for text in (md, html):
        assert "The dm proxy did not beat a random subset of its size here (0.1900 vs 0.2000" in text
        assert "Why the speed-up is small" in text
    summary["proxy_vs_random"]["proxy_acc"] = .3
    del summary["cost"]["full_train_images"]  # a field an older summary lacks: that note is left out, not fatal
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    md = write_report(tmp_path)["md"].read_text()
    assert "did not beat" not in md and "Why the speed-up is small" not in md and "0.3000" in md


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "missing", "no run folder at"),
    (lambda d: d, "holds nothing to report"),
])
def test_bad_folders_fail_in_one_line_and_write_nothing(make, needle, tmp_path, capsys):
    folder = make(tmp_path)
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nasdistill: error: ") and needle in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())
