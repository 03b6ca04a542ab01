"""Ranking validation: metrics against hand-computed values, the reference store, and an end-to-end run on digits."""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from scipy import stats

from nasdistill.data import Proxy
from nasdistill.errors import ConfigError, ProxyError, StorageError
from nasdistill.training import TrainConfig
from nasdistill.validate import (RankingValidator, ReferenceKey, ReferenceResult, ReferenceStore, bootstrap_ci,
                                 budget_key, kendall, ranking_metrics, regret_at_k, spearman, topk_spearman)
from search_spaces.convnet import ConvNetSpace


# --- metrics -------------------------------------------------------------------------------------
def test_spearman_and_kendall_without_ties():
    # d = (-1, 1, -1, 1, 0): rho = 1 - 6*4 / (5*24) = 0.8; 2 of 10 pairs discordant: tau = 6/10.
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    assert spearman(x, y) == pytest.approx(0.8)
    assert kendall(x, y) == pytest.approx(0.6)
    assert spearman(x, x[::-1]) == pytest.approx(-1.0)


def test_spearman_and_kendall_with_ties():
    # ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): rho = 4.5 / sqrt(4.5 * 5) = 3/sqrt(10);
    # tau-b: 5 concordant, 0 discordant, 1 pair tied in x: 5 / sqrt(5 * 6).
    x, y = [1, 2, 2, 3], [1, 2, 3, 4]
    assert spearman(x, y) == pytest.approx(3 / math.sqrt(10))
    assert kendall(x, y) == pytest.approx(5 / math.sqrt(30))


def test_spearman_matches_scipy_on_random_tied_data():
    rng = np.random.default_rng(3)
    for _ in range(20):
        x, y = rng.integers(0, 5, size=12), rng.integers(0, 5, size=12)
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_undefined_correlations_are_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
        assert math.isnan(kendall([1, 2, 3], [7, 7, 7]))
        assert math.isnan(spearman([1], [2]))
        assert math.isnan(topk_spearman([3, 2, 1, 0], [0.5, 0.5, 0.1, 0.1], 2))
    with pytest.raises(ConfigError, match="differ in length"):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ConfigError, match="nan"):
        kendall([1, float("nan")], [1, 2])


def test_topk_spearman_selects_best_by_full_score():
    proxy = [0.1, 0.9, 0.8, 0.3, 0.5, 0.2]
    full = [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    # top 3 by full: proxy ranks (1, 3, 2) vs full ranks (3, 2, 1): d = (-2, 1, 1), rho = 1 - 36/24.
    assert topk_spearman(proxy, full, 3) == pytest.approx(-0.5)
    assert topk_spearman(proxy, full, 0.5) == pytest.approx(-0.5)  # ceil(0.5 * 6) = 3
    assert topk_spearman(proxy, full, 0.4) == pytest.approx(-0.5)  # ceil(2.4) = 3
    assert topk_spearman(proxy, full, 0.1) == pytest.approx(-0.5)  # ceil(0.6) = 1, raised to 3 (two points only give ±1)
    assert topk_spearman(proxy, full, 99) == pytest.approx(spearman(proxy, full))
    assert topk_spearman(proxy, full, 1.0) == pytest.approx(spearman(proxy, full))
    for bad in (1, 0, 0.0, 1.5, -0.2, True, "5"):
        with pytest.raises(ConfigError):
            topk_spearman(proxy, full, bad)


def test_regret_at_k():
    proxy = [0.9, 0.8, 0.1, 0.5]
    full = [0.70, 0.60, 0.95, 0.80]
    assert regret_at_k(proxy, full) == pytest.approx(0.25)  # proxy picks #0 (0.70); best is 0.95
    assert regret_at_k(proxy, full, 2) == pytest.approx(0.25)
    assert regret_at_k(proxy, full, 3) == pytest.approx(0.15)  # #0, #1, #3: best 0.80
    assert regret_at_k(proxy, full, 4) == 0.0
    assert regret_at_k(proxy, full, 0.75) == pytest.approx(0.15)
    assert regret_at_k(full, full) == 0.0
    # ties on the proxy score break pessimistically: a constant proxy gets the worst pick
    assert regret_at_k([0.5, 0.5, 0.1], [0.9, 0.3, 0.2]) == pytest.approx(0.6)
    assert regret_at_k([0.5, 0.5, 0.1], [0.9, 0.3, 0.2], 2) == 0.0
    assert regret_at_k([1, 1, 1], [0.2, 0.9, 0.4]) == pytest.approx(0.7)


def _noisy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    full = rng.uniform(0.5, 0.9, size=n)
    return full + rng.normal(0, 0.08, size=n), full


def test_bootstrap_ci_is_scipys_percentile_interval_and_deterministic():
    proxy, full = _noisy(15, 0)
    ci = bootstrap_ci(spearman, proxy, full, n_resamples=300, seed=4)
    ref = stats.bootstrap((proxy, full), lambda a, b: stats.spearmanr(a, b).statistic, paired=True,
                          vectorized=False, method="percentile", n_resamples=300,
                          rng=np.random.default_rng(4)).confidence_interval
    assert ci == pytest.approx((ref.low, ref.high))
    assert bootstrap_ci(spearman, proxy, full, n_resamples=300, seed=4) == ci
    assert bootstrap_ci(spearman, proxy, full, n_resamples=300, seed=5) != ci


def test_bootstrap_ci_contains_estimate_and_shrinks_with_more_architectures():
    widths = []
    for n in (10, 40, 160):
        proxy, full = _noisy(n, 1)
        for stat in (spearman, kendall):
            low, high = bootstrap_ci(stat, proxy, full, n_resamples=400, seed=0)
            assert -1 <= low <= stat(proxy, full) <= high <= 1
        low, high = bootstrap_ci(spearman, proxy, full, n_resamples=400, seed=0)
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2] > 0


def test_bootstrap_ci_survives_undefined_resamples():
    proxy, full = [0, 0, 0, 0, 0, 0, 1.0], np.arange(7.0)  # ~1/3 of resamples are constant in proxy
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, high = bootstrap_ci(spearman, proxy, full, n_resamples=300, seed=0)
        assert np.isfinite([low, high]).all() and low <= high
        assert all(math.isnan(v) for v in bootstrap_ci(spearman, [1.0] * 6, np.arange(6.0), n_resamples=50))
        assert all(math.isnan(v) for v in bootstrap_ci(spearman, [1.0, 2.0], [1.0, 2.0], n_resamples=50))


def test_ranking_metrics_keys_and_values():
    proxy, full = _noisy(20, 2)
    m = ranking_metrics(proxy, full, top_k=(5, 0.5), n_bootstrap=200, seed=0)
    assert m["n"] == 20
    assert m["spearman"] == pytest.approx(spearman(proxy, full))
    assert m["kendall"] == pytest.approx(kendall(proxy, full))
    assert m["spearman_top5"] == pytest.approx(topk_spearman(proxy, full, 5))
    assert m["spearman_top50pct"] == pytest.approx(topk_spearman(proxy, full, 10))
    assert m["regret@1"] == pytest.approx(regret_at_k(proxy, full, 1))
    assert m["regret@5"] == pytest.approx(regret_at_k(proxy, full, 5))
    assert m["regret@50pct"] == pytest.approx(regret_at_k(proxy, full, 10))
    for name in ("spearman", "kendall", "spearman_top5", "spearman_top50pct"):
        low, high = m[f"{name}_ci"]
        assert low <= high
    no_ci = ranking_metrics(proxy, full, n_bootstrap=0)
    assert all(math.isnan(v) for v in no_ci["spearman_ci"]) and no_ci["spearman"] == m["spearman"]


# --- reference store -----------------------------------------------------------------------------
def _key(arch_id: str = "D1-W32-relu-none-none", seed: int = 0) -> ReferenceKey:
    return ReferenceKey(dataset="f" * 32, space="convnet", arch_id=arch_id, budget=budget_key(TrainConfig(epochs=2)),
                        seed=seed)


def test_budget_key_is_short_stable_and_ignores_seed():
    a = TrainConfig(epochs=5, batch_size=64)
    assert budget_key(a) == budget_key(a.replace(seed=7)) == budget_key(a.budget())
    assert budget_key(a) != budget_key(a.replace(epochs=6))
    assert budget_key(a) != budget_key(a.replace(augment="dsa"))
    assert len(budget_key(a)) == 16


def test_reference_store_put_get_idempotent_and_persistent(tmp_path):
    path = tmp_path / "sub" / "refs.db"
    store = ReferenceStore(path)
    assert store.count() == 0 and store.get(_key()) is None
    first = store.put(_key(), ReferenceResult(test_acc=0.75, val_acc=0.7, wall_time=3.5, params=123,
                                              budget=TrainConfig(epochs=2).budget()))
    assert (first.test_acc, first.val_acc, first.wall_time, first.params) == (0.75, 0.7, 3.5, 123)
    assert first.budget == TrainConfig(epochs=2).budget() and first.created
    again = store.put(_key(), ReferenceResult(test_acc=0.10, wall_time=1.0))  # first writer wins
    assert again == first and store.count() == 1
    store.put(_key(seed=1), ReferenceResult(test_acc=0.5))
    store.put(_key("D2-W32-relu-none-none"), ReferenceResult(test_acc=0.6))
    assert store.count() == 3 and store.get(_key(seed=1)).val_acc is None
    store.close()
    reopened = ReferenceStore(f"sqlite:///{path}")
    assert reopened.get(_key()) == first and reopened.count() == 3


def test_reference_store_concurrent_writers_store_one_row(tmp_path):
    stores = [ReferenceStore(tmp_path / "refs.db") for _ in range(4)]
    with ThreadPoolExecutor(8) as pool:
        stored = list(pool.map(lambda i: stores[i % 4].put(_key(), ReferenceResult(test_acc=i / 100)), range(24)))
    assert stores[0].count() == 1
    assert len({r.test_acc for r in stored}) == 1


def test_reference_store_default_lives_in_home(tmp_path, monkeypatch):
    monkeypatch.setenv("NASDISTILL_HOME", str(tmp_path / "home"))
    store = ReferenceStore()
    store.put(_key(), ReferenceResult(test_acc=0.5))
    assert (tmp_path / "home" / "references.db").is_file()


def test_reference_store_bad_urls_raise_one_line_storage_error(tmp_path):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    wrong_schema = tmp_path / "other.db"
    with sqlite3.connect(wrong_schema) as conn:
        conn.execute("CREATE TABLE reference_results (foo INTEGER)")
    cases = [corrupt, "nosuchdialect://host/db", f"sqlite:///{blocker}/refs.db", "::not a url::/x://", wrong_schema]
    for url in cases:
        with pytest.raises(StorageError) as info:
            ReferenceStore(url)
        assert "\n" not in str(info.value) and ";" in str(info.value)


# --- end-to-end on digits ---------------------------------------------------------------------
class SmallConvNetSpace(ConvNetSpace):
    """DC's ConvNet family with narrow widths, so a handful train in seconds on CPU."""

    name = "convnet-small"
    choices = {**ConvNetSpace.choices, "width": [8, 16, 32]}


N_ARCHS = 5
PROXY_TRAIN = TrainConfig(epochs=30, batch_size=256, augment="dsa")
FULL_TRAIN = TrainConfig(steps=40, batch_size=64, schedule="cosine")


def random_proxy(dataset, ipc: int, seed: int, *, soft: bool = False) -> Proxy:
    """A class-balanced random subset of the training split, packed like a distilled proxy."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.cat([i[torch.randperm(len(i), generator=g)[:ipc]] for i in dataset.indices_by_class()])
    labels = dataset.y_train[idx]
    if soft:
        labels = torch.full((len(idx), dataset.num_classes), 0.1 / (dataset.num_classes - 1))
        labels[torch.arange(len(idx)), dataset.y_train[idx]] = 0.9
    meta = {"method": "random", "ipc": ipc, "seed": seed, "key": f"test-random-{ipc}-{seed}",
            "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint, "num_classes": dataset.num_classes,
                        "image_shape": list(dataset.image_shape), "mean": list(dataset.mean),
                        "std": list(dataset.std), "classes": list(dataset.classes)}}
    return Proxy(dataset.x_train[idx].clone(), labels, meta)


def make_validator(store, **changes) -> RankingValidator:
    settings = dict(space=SmallConvNetSpace(), n_archs=N_ARCHS, seed=0, proxy_train=PROXY_TRAIN,
                    full_train=FULL_TRAIN, top_k=3, n_bootstrap=200, store=store)
    return RankingValidator(**{**settings, **changes})


@pytest.fixture(scope="module")
def validated(digits, tmp_path_factory):
    """Two validations of different proxies of digits against one reference store."""
    url = f"sqlite:///{tmp_path_factory.mktemp('validate')}/refs.db"
    first = make_validator(url).fit(digits, random_proxy(digits, 5, seed=0))
    second = make_validator(url).fit(digits, random_proxy(digits, 5, seed=1, soft=True))
    return first, second, url


def test_a_resumed_validation_counts_stored_results_as_done_before_it_started(validated, digits, monkeypatch):
    """Its references are stored by the first validation: the progress starts at them (``initial``)
    and advances only for what this run does, so its ETA is the remaining jobs at this run's pace.
    Before, reused results were counted as done within the first second (a resumed MNIST quick start
    said "2/20 elapsed=10s eta=1m30s" for 1.5 h of work)."""
    from nasdistill.progress import progress_bar
    from nasdistill.validate import validation

    _, _, url = validated
    bars = []

    def recording(*args, **kwargs):
        bars.append(progress_bar(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(validation, "progress_bar", recording)
    make_validator(url).fit(digits, random_proxy(digits, 5, seed=2))
    (bar,) = bars
    # the proxy's N_ARCHS scores, trained in this run, after the N_ARCHS references stored before it
    assert (bar.total, bar._initial, bar.n) == (2 * N_ARCHS, N_ARCHS, 2 * N_ARCHS)


def test_validation_records_and_metrics(validated, digits):
    first, _, url = validated
    space = SmallConvNetSpace()
    assert first.arch_ids_ == [space.arch_id(a) for a in space.sample(N_ARCHS, 0)]
    assert len(set(first.arch_ids_)) == N_ARCHS
    assert [r["arch_id"] for r in first.records_] == first.arch_ids_
    for r in first.records_:
        assert 0 <= r["proxy_acc"] <= 1 and 0 <= r["full_acc"] <= 1
        assert r["proxy_time"] > 0 and r["full_time"] > 0 and r["params"] > 0
        assert r["reference_reused"] is False
    assert first.proxy_scores_.shape == first.full_scores_.shape == (N_ARCHS,)
    m = first.metrics_
    assert m["n"] == N_ARCHS
    for name in ("spearman", "kendall", "spearman_top3", "regret@1", "regret@3"):
        assert np.isfinite(m[name]), name
    for name in ("spearman", "kendall"):
        low, high = m[f"{name}_ci"]
        assert np.isfinite([low, high]).all() and -1 <= low <= high <= 1
    assert m["spearman"] == pytest.approx(spearman(first.proxy_scores_, first.full_scores_))
    assert 0 <= m["regret@3"] <= m["regret@1"]
    assert first.n_reference_trained_ == N_ARCHS and first.n_reference_reused_ == 0
    assert ReferenceStore(url).count() == N_ARCHS
    assert first.wall_time_ > 0


def test_second_proxy_reuses_every_full_data_result(validated):
    first, second, url = validated
    assert second.n_reference_trained_ == 0 and second.n_reference_reused_ == N_ARCHS
    assert second.arch_ids_ == first.arch_ids_
    np.testing.assert_array_equal(second.full_scores_, first.full_scores_)
    assert not np.array_equal(second.proxy_scores_, first.proxy_scores_)
    assert all(r["reference_reused"] for r in second.records_)
    assert ReferenceStore(url).count() == N_ARCHS


def test_val_split_reuses_stored_val_accuracies(validated, digits):
    first, _, url = validated
    on_val = make_validator(url, split="val").fit(digits, random_proxy(digits, 5, seed=0))
    store = ReferenceStore(url)
    keys = [ReferenceKey(digits.fingerprint, "convnet-small", aid, budget_key(FULL_TRAIN), seed=0)
            for aid in first.arch_ids_]
    assert on_val.n_reference_trained_ == 0
    assert on_val.full_scores_.tolist() == [store.get(k).val_acc for k in keys]
    assert first.full_scores_.tolist() == [store.get(k).test_acc for k in keys]


def test_validation_is_deterministic(validated, digits, tmp_path):
    first, _, _ = validated
    again = make_validator(tmp_path / "fresh.db").fit(digits, random_proxy(digits, 5, seed=0))
    assert again.n_reference_trained_ == N_ARCHS
    np.testing.assert_array_equal(again.proxy_scores_, first.proxy_scores_)
    np.testing.assert_array_equal(again.full_scores_, first.full_scores_)
    assert again.metrics_ == first.metrics_


def test_validation_save_writes_json_and_csv(validated, tmp_path):
    first, _, _ = validated
    out = first.save(tmp_path / "run")
    doc = json.loads((out / "validation.json").read_text())
    assert doc["schema"] == "nasdistill.validation/2"  # the multi-contender file every report reads
    (proxy,) = [c for c in doc["contenders"] if c["kind"] == "proxy"]
    assert proxy["metrics"]["spearman"] == pytest.approx(first.metrics_["spearman"])
    assert doc["reference"]["scores"] == pytest.approx(dict(zip(first.arch_ids_, first.full_scores_.tolist())))
    assert doc["settings"]["full_train"] == FULL_TRAIN.budget()
    assert len(doc["records"]) == N_ARCHS
    rows = list(csv.DictReader((out / "validation_archs.csv").open()))
    assert [r["arch_id"] for r in rows] == first.arch_ids_
    assert "spearman" in first.summary()


def test_mismatched_proxy_is_refused_before_training(digits, tmp_path):
    proxy = random_proxy(digits, 2, seed=0)
    proxy.meta["dataset"]["fingerprint"] = "0" * 32
    store = ReferenceStore(tmp_path / "refs.db")
    with pytest.raises(ProxyError, match="fingerprint"):
        make_validator(store).fit(digits, proxy)
    assert store.count() == 0


def test_bad_settings_raise_config_error(digits, tmp_path):
    proxy = random_proxy(digits, 2, seed=0)
    store = ReferenceStore(tmp_path / "refs.db")
    for changes in ({"n_archs": 1}, {"n_archs": 2.0}, {"n_archs": True}, {"split": "train"}, {"top_k": 1},
                    {"top_k": 1.5}, {"n_bootstrap": -1}, {"n_bootstrap": True}, {"confidence": 1.0},
                    {"confidence": "0.95"}, {"confidence": float("nan")}):
        with pytest.raises(ConfigError):
            make_validator(store, **changes).fit(digits, proxy)
    with pytest.raises(ConfigError, match="not fitted"):
        make_validator(store).to_dict()
    assert store.count() == 0


def test_numpy_integer_counts_are_integers(digits, tmp_path):
    """A grid of settings built with NumPy gives np.int64 counts: they were refused as not integers."""
    import numpy as np

    validator = make_validator(ReferenceStore(tmp_path / "refs.db"), n_archs=np.int64(3), n_bootstrap=np.int64(50))
    validator.fit(digits, random_proxy(digits, 2, seed=0))
    assert len(validator.arch_ids_) == 3
