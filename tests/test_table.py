"""The reference table: computed through the results store, saved as data, reused by validations."""

from __future__ import annotations

import json

import pytest

from nasdistill.cli import main
from nasdistill.data import load_dataset
from nasdistill.distill import get_method
from nasdistill.errors import ConfigError, DatasetError
from nasdistill.spaces import get_space
from nasdistill.training import TrainConfig
from nasdistill.validate import ReferenceStore, ReferenceTable, reference_jobs

ARCHS = ["D1-W32-relu-instancenorm-avgpool", "D2-W32-relu-batchnorm-maxpool", "D1-W32-sigmoid-none-none",
         "D2-W32-leakyrelu-groupnorm-avgpool"]
TRAIN = TrainConfig(epochs=2, batch_size=64, schedule="cosine")


@pytest.fixture(scope="module")
def table(digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("table")
    space = get_space("convnet")
    archs = [space.parse_id(a) for a in ARCHS]
    store = ReferenceStore(folder / "refs.db")
    for seed in (0, 1):
        outcomes = reference_jobs(store, digits, archs, TRAIN, seed)
        assert all(o.computed for o in outcomes)
    again = reference_jobs(store, digits, archs, TRAIN, 0)  # resumes: nothing trained twice
    assert not any(o.computed for o in again)
    t = ReferenceTable.from_store(store, digits, archs, TRAIN, [0, 1], sample={"how": "by hand"})
    path = t.save(folder / "digits.json")
    return path


@pytest.mark.slow
def test_table_round_trip_ceiling_and_report(table, tmp_path):
    t = ReferenceTable.load(table)
    assert t.arch_ids == ARCHS and t.complete() and t.seeds == [0, 1]
    acc0, acc1 = t.accuracies(0), t.accuracies(1)
    assert ((acc0 > 0.05) & (acc0 <= 1)).all() and not (acc0 == acc1).all()
    c = t.ceiling(n_bootstrap=50)
    assert c["n"] == 4 and -1 <= c["spearman"] <= 1
    assert "ceiling (seed 0 vs 1, 4 archs)" in t.summary()
    t.write_report(tmp_path / "rep")
    assert (tmp_path / "rep" / "report.md").read_text().count("| D") == 4 and (tmp_path / "rep" / "seeds.png").is_file()


def test_validate_against_the_table_trains_nothing_on_full_data(table, digits, tmp_path):
    proxy = get_method("random", ipc=2).fit(digits, progress=False).to_proxy()
    proxy_path = proxy.save(tmp_path / "proxy")
    out = tmp_path / "val"
    assert main(["validate", "--proxy", str(proxy_path), "--data", "digits", "--reference", str(table),
                 "--proxy-steps", "5", "--bootstrap", "20", "--top-k", "3", "--reference-store",
                 str(tmp_path / "fresh.db"), "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "validation.json").read_text())
    assert [a["arch_id"] for a in result["archs"]] == ARCHS
    assert result["reference"]["n_trained"] == 0
    t = ReferenceTable.load(table)
    assert [result["reference"]["scores"][a] for a in ARCHS] == pytest.approx(list(t.accuracies(0)))


def test_bad_tables_and_mismatches_give_one_line(table, digits, tmp_path, capsys):
    t = ReferenceTable.load(table)
    with pytest.raises(DatasetError, match="computed on digits"):
        t.check_dataset(load_dataset("digits", seed=5))
    bad = tmp_path / "bad.json"
    for text, match in [("{", "cannot read"), (json.dumps({"format": "x"}), "not a reference table"),
                        (json.dumps({**t.to_dict(), "rows": [{"arch_id": 1}]}), "malformed")]:
        bad.write_text(text)
        with pytest.raises(DatasetError, match=match):
            ReferenceTable.load(bad)
    proxy_path = get_method("random", ipc=2).fit(digits, progress=False).to_proxy().save(tmp_path / "p")
    for extra, match in [(["--full-epochs", "3"], "differs from the reference table"),
                         (["--space", "nb201"], "ranks architectures of 'convnet'")]:
        capsys.readouterr()
        assert main(["validate", "--proxy", str(proxy_path), "--data", "digits", "--reference", str(table),
                     "--no-progress", "--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
    with pytest.raises(ConfigError, match="both archs and a reference"):
        from nasdistill.validate import validate
        validate([], data=digits, baselines=["zero-cost"], reference=table, archs=t.archs)
