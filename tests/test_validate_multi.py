"""Multi-contender validation: new metrics, zero-cost scores, costs, claims, several worker processes, resume, API, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import threading
import time
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

import _pg
from _validate_workers import (FULL_TRAIN, N_ARCHS, PROXY_TRAIN, RESUME_SETTINGS, SETTINGS, TinyConvNetSpace,
                               full_run, race, random_proxy)
from nasdistill.cli import main
from nasdistill.errors import ConfigError, UnknownNameError
from nasdistill.spaces import get_space
from nasdistill.training import TrainConfig, train
from nasdistill.validate import (Context, EarlyStopContender, ProxyContender, RankingValidator, ReferenceKey,
                                 ReferenceStore, ScoreKey, StoredScore, ZeroCostContender, early_stop_config,
                                 gradnorm, naswot, paired_bootstrap, paired_bootstrap_all, ranking_metrics,
                                 samples_seen, synflow, train_flops_per_sample, validate, ValidationResult)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread

postgres_server = _pg.postgres_server
postgres_url = _pg.postgres_url


# --- metrics -------------------------------------------------------------------------------------
def test_ranking_metrics_top_k_and_regret_keys_with_intervals():
    proxy = [0.9, 0.8, 0.1, 0.5, 0.3, 0.2]
    full = [0.70, 0.60, 0.95, 0.80, 0.50, 0.40]
    m = ranking_metrics(proxy, full, top_k=(2, 0.5), regret_k=(1, 2, 0.5), n_bootstrap=200, seed=0)
    # top 2 by full: #2 (0.95), #3 (0.80), which the proxy orders 0.1 < 0.5: rho = -1
    assert m["spearman_top2"] == pytest.approx(-1.0)
    # top half (3) by full: #2, #3, #0 -> proxy 0.1, 0.5, 0.9 against full 0.95, 0.80, 0.70: reversed, -1
    assert m["spearman_top50pct"] == pytest.approx(-1.0)
    assert m["regret@1"] == pytest.approx(0.25)  # the proxy's pick #0 has 0.70; best is 0.95
    assert m["regret@2"] == pytest.approx(0.25)  # picks #0, #1: best 0.70
    assert m["regret@50pct"] == pytest.approx(0.15)  # picks #0, #1, #3: best 0.80
    assert "regret@5" not in m and "regret@2pct" not in m
    for name in ("spearman", "kendall", "spearman_top2", "spearman_top50pct", "regret@1", "regret@2", "regret@50pct"):
        low, high = m[f"{name}_ci"]
        assert low <= high, name
    low, high = m["regret@1_ci"]
    assert 0 <= low <= high <= 0.95 - 0.40
    # without regret_k, regret follows top_k as before
    assert {"regret@1", "regret@2", "regret@50pct"} <= set(ranking_metrics(proxy, full, top_k=(2, 0.5), n_bootstrap=0))


def test_paired_bootstrap_prefers_the_true_ranking_over_its_reverse():
    full = np.linspace(0.5, 0.9, 12)
    res = paired_bootstrap(full, -full, full, n_resamples=300, seed=1)
    assert res["a_value"] == pytest.approx(1.0) and res["b_value"] == pytest.approx(-1.0)
    assert res["diff"] == pytest.approx(2.0)
    assert res["diff_ci"] == pytest.approx((2.0, 2.0))
    assert res["prob_a_better"] == 1.0 and res["prob_b_better"] == 0.0
    assert res["p_value"] == pytest.approx(1 / (res["n_defined"] + 1)) and res["p_value"] < 0.01
    assert res["p_value_b"] == 1.0
    flipped = paired_bootstrap(-full, full, full, n_resamples=300, seed=1)
    assert flipped["prob_a_better"] == 0.0 and flipped["p_value"] == 1.0


def test_paired_bootstrap_of_the_top_k_compares_only_the_best_architectures():
    rng = np.random.default_rng(0)
    full = np.linspace(0.1, 0.9, 40)
    # both order the bottom 30 alike (noisily); only `good` orders the best 10 as the full data does
    bottom = full[:30] + rng.normal(0, 0.05, 30)
    good = np.concatenate([bottom, full[30:]])
    bad = np.concatenate([bottom, full[30:][::-1]])
    row = paired_bootstrap(good, bad, full, statistic="spearman_top10", n_resamples=300)
    assert row["metric"] == "spearman_top10" and row["a_value"] == pytest.approx(1.0)
    assert row["b_value"] == pytest.approx(-1.0) and row["diff_ci"][0] > 0 and row["p_value"] < 0.01
    with pytest.raises(ConfigError, match="spearman_top10"):
        paired_bootstrap(good, bad, full, statistic="spearman_top7")


def test_paired_bootstrap_tells_a_close_proxy_from_a_noisy_one_and_is_seeded():
    rng = np.random.default_rng(0)
    full = rng.uniform(0.5, 0.9, 30)
    close, noisy = full + rng.normal(0, 0.02, 30), full + rng.normal(0, 0.3, 30)
    res = paired_bootstrap(close, noisy, full, n_resamples=400, seed=2)
    assert res["diff"] > 0 and res["diff_ci"][0] > 0 and res["prob_a_better"] > 0.95 and res["p_value"] < 0.05
    assert paired_bootstrap(close, noisy, full, n_resamples=400, seed=2) == res
    every = paired_bootstrap_all({"close": close, "noisy": noisy, "full": full}, full, n_resamples=400, seed=2)
    assert [(r["a"], r["b"]) for r in every] == [("close", "noisy"), ("close", "full"), ("noisy", "full")]
    assert {k: v for k, v in every[0].items() if k not in ("a", "b")} == res
    assert paired_bootstrap(close, noisy, full, statistic="kendall", n_resamples=100)["a_value"] > 0.8
    with pytest.raises(ConfigError):
        paired_bootstrap(close, noisy, full, statistic="pearson")
    assert math.isnan(paired_bootstrap(full[:2], full[:2], full[:2])["prob_a_better"])


# --- costs ---------------------------------------------------------------------------------------
class CountingNet(nn.Module):
    """A linear classifier that counts the images it is fed."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.seen = 0

    def forward(self, x):
        if self.training:
            self.seen += x.shape[0]
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("config, n", [
    (TrainConfig(epochs=3, batch_size=8), 20),  # remainder batches of 4
    (TrainConfig(steps=7, batch_size=8), 20),  # 2 epochs and 1 batch
    (TrainConfig(steps=5, batch_size=64), 20),  # batch larger than the set
    (TrainConfig(epochs=2, batch_size=5), 20),
])
def test_samples_seen_counts_what_training_feeds(digits, config, n):
    net = CountingNet()
    train(net, digits.x_train[:n], digits.y_train[:n], config)
    assert net.seen == samples_seen(config, n)


def test_train_flops_per_sample_is_forward_plus_backward():
    # layer 1: forward + weight gradient (its input needs none); layer 2: forward + weight + input gradients
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    assert train_flops_per_sample(net, (1, 8, 8), 10) == 2 * (2 * 64 * 32) + 3 * (2 * 32 * 10)
    assert all(p.grad is None for p in net.parameters())


def test_a_seed_averaged_proxy_scores_the_mean_of_its_trainings_at_that_cost(digits):
    proxy = random_proxy(digits, 2, 0)
    ctx = Context(dataset=digits, space=TinyConvNetSpace(), seed=3, proxy_train=PROXY_TRAIN, full_train=FULL_TRAIN,
                  split="val")
    arch = TinyConvNetSpace().sample(1, seed=0)[0]
    one, three = ProxyContender(proxy), ProxyContender(proxy, repeats=3)
    assert three.name.endswith("-x3") and one.key(ctx) != three.key(ctx)
    s1, s3 = one.score(ctx, arch), three.score(ctx, arch)
    assert s3.samples == 3 * s1.samples and s3.flops == pytest.approx(3 * s1.flops)
    # the first of the three trainings is the single one; the others start elsewhere
    accs = [s1.value]
    for r in (1, 2):
        from nasdistill._seed import derive_seed

        seed = derive_seed(3, "repeat", r)
        model = ctx.build(arch, seed)
        train(model, proxy.images, proxy.labels, PROXY_TRAIN.replace(seed=seed % 2**31))
        accs.append(ctx.accuracy(model))
    assert s3.value == pytest.approx(sum(accs) / 3)
    assert len(set(accs)) > 1  # different initialisations, different scores
    # early-stopping matched to it gets as many images of the full data
    assert EarlyStopContender(three).samples(ctx) == pytest.approx(three.samples(ctx), abs=FULL_TRAIN.batch_size)
    with pytest.raises(ConfigError, match="repeats"):
        ProxyContender(proxy, repeats=0)


class _DropoutSpace(TinyConvNetSpace):
    """The tiny ConvNets with dropout before the classifier (a random operation vmap refuses)."""

    name = "convnet-tiny-dropout"

    def build(self, arch, input_shape, num_classes):
        net = super().build(arch, input_shape, num_classes)
        net.classifier = nn.Sequential(nn.Dropout(0.2), net.classifier)
        return net


def test_vectorized_repeats_score_as_the_loop_and_fall_back_where_vmap_cannot(digits):
    """ProxyContender(vectorize=True): the repeats train at once under vmap, the same score to float
    rounding under the same key; an architecture vmap cannot run (dropout: a random operation) trains
    its repeats one at a time, with a warning, and scores exactly as the loop."""
    from nasdistill.errors import NasDistillWarning

    proxy = random_proxy(digits, 2, 0)
    ctx = Context(dataset=digits, space=TinyConvNetSpace(), seed=3, proxy_train=PROXY_TRAIN, full_train=FULL_TRAIN,
                  split="val")
    loop, vmapped = ProxyContender(proxy, repeats=3), ProxyContender(proxy, repeats=3, vectorize=True)
    assert vmapped.key(ctx) == loop.key(ctx)
    arch = TinyConvNetSpace().parse_id("D2-W16-relu-instancenorm-avgpool")
    a, b = loop.score(ctx, arch), vmapped.score(ctx, arch)
    assert b.value == pytest.approx(a.value, abs=2 / len(digits.y_val)) and (b.samples, b.flops) == (a.samples, a.flops)
    dropout_ctx = dataclasses.replace(ctx, space=_DropoutSpace())
    with pytest.warns(NasDistillWarning, match="cannot be trained under vmap.*one at a time"):
        fallback = ProxyContender(proxy, repeats=2, vectorize=True).score(dropout_ctx, arch).value
    assert fallback == ProxyContender(proxy, repeats=2).score(dropout_ctx, arch).value
    with pytest.raises(ConfigError, match="vectorize"):
        ProxyContender(proxy, repeats=2, vectorize="yes")


def test_a_draw_trains_from_its_own_seeds_and_keeps_draw_zeros_scores(digits):
    from nasdistill._seed import derive_seed

    proxy = random_proxy(digits, 2, 0)
    ctx = Context(dataset=digits, space=TinyConvNetSpace(), seed=3, proxy_train=PROXY_TRAIN, full_train=FULL_TRAIN,
                  split="val")
    arch = TinyConvNetSpace().sample(1, seed=0)[0]
    zero, one, two = (ProxyContender(proxy, draw=d) for d in (0, 1, 2))
    assert zero.key(ctx) == ProxyContender(proxy).key(ctx)  # stored draw-0 scores keep their keys
    assert len({zero.key(ctx), one.key(ctx), two.key(ctx)}) == 3
    s0, s1 = zero.score(ctx, arch), one.score(ctx, arch)
    assert s0.value == ProxyContender(proxy).score(ctx, arch).value and s1.samples == s0.samples
    seed = derive_seed(3, "draw", 1, "repeat", 0)  # draw 1's one training: its own init and batch order
    model = ctx.build(arch, seed)
    train(model, proxy.images, proxy.labels, PROXY_TRAIN.replace(seed=seed % 2**31))
    assert s1.value == pytest.approx(ctx.accuracy(model))
    assert len({s0.value, s1.value, two.score(ctx, arch).value}) > 1
    # early-stopping takes the matched proxy's draw unless told, and keys it the same way
    assert EarlyStopContender(one).draw == 1 and EarlyStopContender(one, draw=0).draw == 0
    assert EarlyStopContender(zero).key(ctx) != EarlyStopContender(one).key(ctx)
    early = EarlyStopContender(one)
    model = ctx.build(arch, seed)
    train(model, digits.x_train, digits.y_train, early.config(ctx).replace(seed=seed % 2**31))
    assert early.score(ctx, arch).value == pytest.approx(ctx.accuracy(model))
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="draw"):
            ProxyContender(proxy, draw=bad)


def test_early_stop_budget_matches_the_proxys(digits):
    proxy = ProxyContender(random_proxy(digits, 2, 0))
    ctx = Context(dataset=digits, space=TinyConvNetSpace(), seed=3, proxy_train=PROXY_TRAIN, full_train=FULL_TRAIN)
    by_samples, by_steps = EarlyStopContender(proxy), EarlyStopContender(proxy, match="steps")
    assert proxy.samples(ctx) == 32 * 20
    cfg = by_samples.config(ctx)
    assert (cfg.steps, cfg.batch_size, cfg.schedule, cfg.seed) == (5, 128, "cosine", 3)
    assert by_samples.samples(ctx) == proxy.samples(ctx)  # 5 x 128 = 640 images, as on the proxy
    assert by_steps.config(ctx).steps == PROXY_TRAIN.total_steps(20) == 32
    assert by_steps.samples(ctx) == 3 * 1217 + 2 * 128  # 10 batches an epoch, the tenth of 65 images
    # not divisible: within half a full-data batch
    odd = early_stop_config(TrainConfig(epochs=7, batch_size=256), 30, FULL_TRAIN, len(digits.y_train))
    assert abs(samples_seen(odd, len(digits.y_train)) - 210) <= 64
    with pytest.raises(ConfigError, match="early-stop"):
        EarlyStopContender(proxy, match="wall")


# --- zero-cost scores ------------------------------------------------------------------------------
def _two_layers(norm: nn.Module | None = None) -> nn.Sequential:
    first, second = nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
        second.weight.copy_(torch.tensor([[-1.0, 2.0]]))
    return nn.Sequential(first, *([norm] if norm is not None else []), nn.ReLU(), second)


def test_synflow_by_hand():
    # |W| = [[1,2],[3,4]], |V| = [1,2], input ones: h = (3, 7), R = 17; sum |V dR/dV| = 1*3 + 2*7 = 17 and
    # sum |W dR/dW| = sum_ij W_ij V_i = 3*1 + 7*2 = 17, so SynFlow = 34. Normalisation layers are removed.
    x = torch.randn(5, 2)
    assert synflow(_two_layers(), x, torch.zeros(5, dtype=torch.long)) == pytest.approx(34.0)
    net = _two_layers(nn.BatchNorm1d(2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert synflow(net, x, torch.zeros(5, dtype=torch.long)) == pytest.approx(34.0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the model is untouched


def test_naswot_by_hand():
    # identity layer then ReLU: codes are (x > 0); with codes (1,0), (0,1), (1,1) over 2 units,
    # K = 2 - Hamming = [[2,0,1],[0,2,1],[1,1,2]], det K = 4.
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(2))
    net = nn.Sequential(layer, nn.ReLU(inplace=True), nn.Linear(2, 3))
    x = torch.tensor([[1.0, -1.0], [-2.0, 3.0], [0.5, 0.5]])
    assert naswot(net, x, torch.zeros(3, dtype=torch.long)) == pytest.approx(math.log(4.0))
    # a sigmoid's code is its pre-activation's sign, so swapping the activation changes nothing
    net[1] = nn.Sigmoid()
    assert naswot(net, x, torch.zeros(3, dtype=torch.long)) == pytest.approx(math.log(4.0))
    with pytest.raises(ConfigError, match="activation"):
        naswot(nn.Sequential(nn.Linear(2, 3)), x, torch.zeros(3, dtype=torch.long))


def test_gradnorm_sums_weight_gradient_norms(digits):
    net = TinyConvNetSpace().build_seeded({"depth": 2, "width": 8, "act": "relu", "norm": "batchnorm",
                                           "pool": "avgpool"}, digits.image_shape, 10, 0)
    x, y = digits.x_train[:32], digits.y_train[:32]
    copy = TinyConvNetSpace().build_seeded({"depth": 2, "width": 8, "act": "relu", "norm": "batchnorm",
                                            "pool": "avgpool"}, digits.image_shape, 10, 0)
    nn.functional.cross_entropy(copy(x), y).backward()
    weights = [m.weight.grad for m in copy.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weights) == 3
    assert gradnorm(net, x, y) == pytest.approx(sum(float(g.norm()) for g in weights), rel=1e-6)
    assert all(p.grad is None for p in net.parameters())


def test_zero_cost_contenders_on_digits(digits):
    space = TinyConvNetSpace()
    archs = space.sample(5, 0)
    fresh = lambda: Context(dataset=digits, space=space, seed=0, proxy_train=PROXY_TRAIN,  # noqa: E731
                            full_train=FULL_TRAIN, zero_cost_batch=64)
    ctx, again = fresh(), fresh()
    assert torch.equal(ctx.real_batch()[0], again.real_batch()[0]) and len(ctx.real_batch()[1]) == 64
    for name in ("synflow", "naswot", "gradnorm"):
        c = ZeroCostContender(name)
        scores = [c.score(ctx, a) for a in archs]
        values = [s.value for s in scores]
        assert all(math.isfinite(v) for v in values), name
        assert values == [c.score(again, a).value for a in archs], name  # deterministic for a seed
        assert len(set(values)) == len(archs), name  # architectures are told apart
        assert all(s.flops > 0 and s.wall_time > 0 for s in scores), name
        if name == "synflow":
            assert min(values) > 0
    # NASWOT's kernel counts units: at init, a wider ReLU net has the larger log-determinant
    widths = [ZeroCostContender("naswot").score(ctx, {"depth": 2, "width": w, "act": "relu", "norm": "batchnorm",
                                                      "pool": "avgpool"}).value for w in (4, 8, 16)]
    assert widths[0] < widths[1] < widths[2]
    with pytest.raises(UnknownNameError, match="zero-cost score"):
        ZeroCostContender("snip")


# --- claims ----------------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/claims.db"
    return request.getfixturevalue("postgres_url")


def test_claims_are_exclusive_expire_and_end_with_the_stored_result(store_url):
    store = ReferenceStore(store_url)
    key = ScoreKey("f" * 32, "convnet-tiny", "D1-W4-relu-none-none", "c" * 16, 0)
    assert store.claim(key, "w1", lease_s=60) and not store.claim(key, "w2", lease_s=60)
    assert store.claim(key, "w1", lease_s=60)  # its own claim
    assert store.renew(key, "w1") and not store.renew(key, "w2")
    store.release(key, "w2")  # not w2's to release
    assert [c["worker"] for c in store.claims()] == ["w1"]
    time.sleep(0.05)
    assert store.claim(key, "w2", lease_s=0.01)  # w1's heartbeat is older than the lease: abandoned
    assert not store.renew(key, "w1")
    first = store.put_score(key, StoredScore(0.5, wall_time=2.0, samples=10, flops=1e6), worker="w2", started=1.0)
    assert store.claims() == []
    again = store.put_score(key, StoredScore(0.9), worker="w1")  # a late duplicate does not replace it
    assert again == first and first.value == 0.5 and first.samples == 10
    runs = store.runs(key)
    assert [(r["worker"], r["stored"], r["task"]) for r in runs] == [("w2", True, key.task), ("w1", False, key.task)]
    assert runs[0]["started"] == 1.0 and runs[0]["finished"] > 1.0
    ref = ReferenceKey("f" * 32, "convnet-tiny", "D1-W4-relu-none-none", "b" * 16, 0)
    assert store.claim(ref, "w1") and store.claims()[0]["task"] == ref.task  # a reference is another task
    store.release(ref, "w1")
    assert store.claims() == []


def test_a_dead_workers_claim_is_taken_over_after_its_lease_and_the_wait_is_said(tmp_path):
    from nasdistill.work.jobs import Job, run_jobs

    store = ReferenceStore(f"sqlite:///{tmp_path}/dead.db")
    key = ScoreKey("f" * 32, "convnet-tiny", "D1-W4-relu-none-none", "c" * 16, 0)
    assert store.claim(key, "dead", lease_s=1.0)  # a worker that claimed the job and died: no heartbeat after this
    said: list[str] = []
    job = Job(key=key, lookup=lambda: store.get_score(key), compute=lambda: StoredScore(0.7),
              save=lambda r, w, t: store.put_score(key, r, worker=w, started=t), label="one")
    t0 = time.monotonic()
    (outcome,) = run_jobs([job], store, worker="alive", lease_s=1.0, poll_s=0.1, log=said.append)
    waited = time.monotonic() - t0
    assert outcome.computed and outcome.result.value == 0.7  # taken over and computed by the live worker
    assert 1.0 <= waited < 5.0  # promptly: once the dead claim's heartbeat is a lease old
    assert len(said) == 1 and "waiting for 1 result(s)" in said[0] and "1 s old" in said[0]  # said once, with how long
    assert [r["worker"] for r in store.runs(key) if r["stored"]] == ["alive"]


def test_stored_outcomes_are_looked_up_once_and_not_reported_again(tmp_path):
    """A validation counts the results stored before it (its progress starts at them): one look per
    job, which ``run_jobs`` then takes as known instead of looking again or reporting them as done."""
    from nasdistill.work.jobs import Job, run_jobs, stored_outcomes

    store = ReferenceStore(f"sqlite:///{tmp_path}/known.db")
    keys = [ScoreKey("f" * 32, "convnet-tiny", f"D1-W{w}-relu-none-none", "c" * 16, 0) for w in (4, 8)]
    store.put_score(keys[0], StoredScore(0.4), worker="earlier", started=1.0)
    looks: list[int] = []

    def job(i: int) -> Job:
        def lookup():
            looks.append(i)
            return store.get_score(keys[i])
        return Job(key=keys[i], lookup=lookup, compute=lambda: StoredScore(0.8),
                   save=lambda r, w, t: store.put_score(keys[i], r, worker=w, started=t))

    jobs = [job(0), job(1)]
    known = stored_outcomes(jobs)
    assert list(known) == [0] and known[0].result.value == 0.4 and not known[0].computed
    done: list[str] = []
    outcomes = run_jobs(jobs, store, worker="me", known=known, on_done=lambda j, o: done.append(j.key.arch_id))
    assert [o.result.value for o in outcomes] == [0.4, 0.8] and [o.computed for o in outcomes] == [False, True]
    assert done == [keys[1].arch_id]  # only the job done in this call
    assert looks.count(0) == 1  # the stored one: looked up once, by stored_outcomes


def test_one_claim_wins_among_concurrent_workers(store_url):
    stores = [ReferenceStore(store_url) for _ in range(4)]
    key = ReferenceKey("f" * 32, "convnet-tiny", "D2-W8-relu-none-none", "b" * 16, 0)
    start, wins = threading.Barrier(8), []

    def attempt(i: int) -> None:
        start.wait()
        if stores[i % 4].claim(key, f"w{i}", lease_s=60):
            wins.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and stores[0].claims()[0]["worker"] == f"w{wins[0]}"


# --- the validate() API ----------------------------------------------------------------------------
CONTENDERS = ["random-ipc2", "random-ipc4", "early-stop[random-ipc2]", "early-stop[random-ipc4]", "synflow", "naswot",
              "gradnorm"]


@pytest.fixture(scope="module")
def api(digits, tmp_path_factory):
    """Two proxies with both baselines, then the first proxy again with early-stop, on one store."""
    url = f"sqlite:///{tmp_path_factory.mktemp('api')}/store.db"
    proxies = [random_proxy(digits, 2, 0), random_proxy(digits, 4, 0)]
    first = validate(proxies, data=digits, baselines=["early-stop", "zero-cost"], store=url, **SETTINGS)
    second = validate(proxies[0], data=digits, baselines=["early-stop"], store=url, **SETTINGS)  # one proxy, bare
    return first, second, url, proxies


def test_validate_returns_one_row_per_contender(api):
    first, *_ = api
    assert first.names == CONTENDERS
    frame = first.to_frame()
    assert list(frame["name"]) == CONTENDERS and len(frame) == 7
    for col in ("spearman", "spearman_ci_low", "spearman_ci_high", "spearman_top3", "spearman_top50pct", "kendall",
                "regret@1", "regret@3", "regret@1_ci_low", "wall_time_s", "flops_per_candidate",
                "samples_per_candidate", "speedup_wall", "speedup_flops", "n_computed", "n_reused"):
        assert col in frame.columns, col
    assert list(frame["kind"]) == ["proxy"] * 2 + ["early-stop"] * 2 + ["zero-cost"] * 3


def test_validate_metrics_costs_and_reference(api, digits):
    first, *_ = api
    space = TinyConvNetSpace()
    assert first.arch_ids == [space.arch_id(a) for a in space.sample(N_ARCHS, 0)]
    full = first.reference["scores"]
    assert first.reference["n_trained"] == N_ARCHS and all(0 <= a <= 1 for a in full)
    for c in first.contenders:
        again = ranking_metrics(c.scores, full, top_k=(3, 0.5), regret_k=(1, 3), n_bootstrap=100, seed=0)
        np.testing.assert_equal(c.metrics, again, err_msg=c.name)
        assert c.n_computed == N_ARCHS and c.n_reused == 0 and c.n_nonfinite == 0
        assert c.cost["wall_time_s"] == pytest.approx(np.mean(c.wall_times))
        assert c.cost["speedup_flops"] == pytest.approx(first.reference["cost"]["flops_per_candidate"]
                                                        / c.cost["flops_per_candidate"])
    per_sample = np.array([a["train_flops_per_sample"] for a in first.archs])
    ref_samples = first.reference["cost"]["samples_per_candidate"]
    assert ref_samples == len(digits.y_train)
    assert first.reference["cost"]["flops_per_candidate"] == pytest.approx(per_sample.mean() * ref_samples)
    proxy, early = first["random-ipc2"], first["early-stop[random-ipc2]"]
    # the early-stop baseline costs what the proxy costs: the same images, hence the same training FLOPs
    assert proxy.samples == early.samples == 640
    np.testing.assert_allclose(early.flops, proxy.flops)
    assert first["random-ipc4"].samples == 32 * 40
    assert first["synflow"].samples is None and (first["synflow"].flops > 0).all()
    assert first["synflow"].cost["speedup_flops"] > proxy.cost["speedup_flops"] > 1


def test_an_undefined_spearman_says_why_and_what_to_change(api):
    """nan printed alone left a user guessing: references all at chance (too short a full-data
    budget) or a contender whose scores are all equal or not finite each get their line."""
    first, *_ = api
    assert first.why_undefined() is None  # defined here
    c = first.primary
    n = len(c.scores)
    undefined = {**c.metrics, "spearman": math.nan}

    def with_(scores=None, full=None):
        mine = dataclasses.replace(c, metrics=undefined, scores=c.scores if scores is None else np.asarray(scores))
        ref = first.reference if full is None else {**first.reference, "scores": np.asarray(full)}
        return dataclasses.replace(first, contenders=[mine, *first.contenders[1:]], reference=ref)

    assert with_(full=[0.1] * n).why_undefined() == (
        f"Spearman is undefined: all {n} full-data references score the same (0.1000, chance); train them "
        "longer (--full-epochs) or sample more architectures (--archs)")
    assert with_(scores=[0.5] * n).why_undefined().startswith(
        f"Spearman is undefined: all {n} {c.name} scores are the same (0.5000); train longer on the proxy")
    assert "1 of" in with_(scores=[0.5] + [math.nan] * (n - 1)).why_undefined()
    assert first.why_undefined("synflow") is None  # any contender by name


def test_validate_pairwise_tests(api):
    first, *_ = api
    assert len(first.pairwise) == 7 * 6 // 2
    row = first.pair("random-ipc2", "naswot")
    back = first.pair("naswot", "random-ipc2")
    assert row["diff"] == pytest.approx(-back["diff"])
    np.testing.assert_equal((row["p_value"], row["prob_a_better"]), (back["p_value_b"], back["prob_b_better"]))
    assert row["a_value"] == pytest.approx(first["random-ipc2"].metrics["spearman"])
    assert 0 <= row["prob_a_better"] <= 1 and row["n_defined"] > 0


def test_second_validation_reuses_references_and_proxy_scores(api, digits, tmp_path):
    first, second, url, proxies = api
    assert second.names == ["random-ipc2", "early-stop"]
    assert second.reference["n_trained"] == 0 and second.reference["n_reused"] == N_ARCHS
    np.testing.assert_array_equal(second.reference["scores"], first.reference["scores"])
    for name, before in (("random-ipc2", "random-ipc2"), ("early-stop", "early-stop[random-ipc2]")):
        assert second[name].n_reused == N_ARCHS and second[name].n_computed == 0
        np.testing.assert_array_equal(second[name].scores, first[before].scores)
        np.testing.assert_array_equal(second[name].wall_times, first[before].wall_times)  # the original cost
    # the single-proxy validator shares the store and trains the same networks the same way
    legacy = RankingValidator(space=TinyConvNetSpace(), n_archs=N_ARCHS, seed=0, proxy_train=PROXY_TRAIN,
                              full_train=FULL_TRAIN, top_k=3, n_bootstrap=0, store=url).fit(digits, proxies[0])
    assert legacy.n_reference_trained_ == 0
    np.testing.assert_array_equal(legacy.full_scores_, first.reference["scores"])
    np.testing.assert_array_equal(legacy.proxy_scores_, first["random-ipc2"].scores)
    saved = legacy.save(tmp_path / "legacy")  # the files reports read, not a schema of its own
    assert json.loads((saved / "validation.json").read_text())["schema"] == "nasdistill.validation/2"
    from nasdistill.report import load_run

    assert load_run(saved) is not None


def test_validate_save_and_table(api, tmp_path):
    first, *_ = api
    out = first.save(tmp_path / "run")
    doc = json.loads((out / "validation.json").read_text())
    assert doc["schema"] == "nasdistill.validation/2"
    assert [c["name"] for c in doc["contenders"]] == CONTENDERS
    assert doc["contenders"][0]["metrics"]["spearman"] == pytest.approx(first.primary.metrics["spearman"])
    assert set(doc["reference"]["scores"]) == set(first.arch_ids) and len(doc["records"]) == N_ARCHS
    assert doc["settings"]["full_train"] == FULL_TRAIN.budget() and doc["settings"]["top_k"] == [3, 0.5]
    assert len(doc["pairwise"]) == 21 and doc["archs"][0]["params"] > 0
    assert len((out / "validation.csv").read_text().strip().splitlines()) == 1 + 7
    assert len((out / "validation_archs.csv").read_text().strip().splitlines()) == 1 + N_ARCHS
    table = first.table()
    assert all(f"| {name} |" in table for name in CONTENDERS) and "full data (reference)" in table
    assert "Spearman" in first.summary()

    # read back: the same document, table and frame; another schema is refused in one line
    again = ValidationResult.load(out)
    assert json.dumps(again.to_dict(), sort_keys=True, default=str) == json.dumps(doc, sort_keys=True, default=str)
    assert again.table() == table
    import pandas as pd  # the JSON rounds times and costs: equal to a few digits
    pd.testing.assert_frame_equal(again.to_frame(), first.to_frame(), check_exact=False, rtol=1e-3, check_like=True)
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something/1"}))
    with pytest.raises(ConfigError, match="not a nasdistill.validation/2"):
        ValidationResult.load(tmp_path / "other.json")


def test_validate_refuses_bad_settings_before_training(digits, tmp_path):
    store = ReferenceStore(tmp_path / "refs.db")
    proxy = random_proxy(digits, 2, 0)
    bad = [({"n_archs": 1}, ConfigError), ({"top_k": (1,)}, ConfigError), ({"pairwise_metric": "r2"}, ConfigError),
           ({"workers": 0}, ConfigError), ({"lease_s": 0}, ConfigError), ({"bogus": 1}, ConfigError),
           ({"baselines": ["early-stop:wall"]}, ConfigError), ({"baselines": ["nope"]}, UnknownNameError),
           ({"archs": [1, 2]}, ConfigError)]  # was a TypeError ('int' object is not iterable)
    for changes, error in bad:
        settings = {**SETTINGS, "store": store, **changes}
        with pytest.raises(error):
            validate([proxy], data=digits, **settings)
    with pytest.raises(ConfigError, match="no proxy"):
        validate([], data=digits, baselines=["early-stop"], **{**SETTINGS, "store": store})
    assert store.count() == 0 and store.runs() == []


def test_explicit_archs_may_be_given_by_id(digits, tmp_path):
    """``archs=["D1-W32-relu-none-none", ...]`` was a ValueError from ``dict(id)``; ids are what reports,
    tables and the CLI show, so they are taken as the dicts they name."""
    ids = ["D1-W32-relu-none-none", "D2-W32-relu-none-none", "D1-W64-relu-none-none"]
    train = TrainConfig(steps=2, batch_size=32)
    proxy = random_proxy(digits, 1, 0)
    common = dict(data=digits, space="convnet", proxy_train=train, full_train=train, n_bootstrap=10,
                  store=ReferenceStore(tmp_path / "refs.db"), progress=False)
    by_id = validate([proxy], archs=ids, **common)
    space = get_space("convnet")
    by_dict = validate([proxy], archs=[space.parse_id(a) for a in ids], **common)
    assert [a["arch_id"] for a in by_id.archs] == ids
    assert np.array_equal(by_id.contenders[0].scores, by_dict.contenders[0].scores)


# --- several worker processes ------------------------------------------------------------------------
def _spawn():
    return multiprocessing.get_context("spawn")


def _per_task(runs: list[dict]) -> Counter:
    return Counter((r["arch_id"], r["task"]) for r in runs)


@pytest.mark.slow
def test_two_worker_processes_compute_each_result_once(digits, tmp_path):
    url = f"sqlite:///{tmp_path}/shared.db"
    proxies = [random_proxy(digits, 3, 1)]
    ReferenceStore(url).close()
    mp = _spawn()
    barrier = mp.Barrier(2)
    procs = [mp.Process(target=race, args=(url, barrier, digits, proxies, 30.0)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    store = ReferenceStore(url)
    runs = store.runs()
    counts = _per_task(runs)
    assert len(counts) == 2 * N_ARCHS and set(counts.values()) == {1}  # references + proxy scores, once each
    assert all(r["stored"] for r in runs) and store.claims() == []
    assert len({r["worker"] for r in runs}) == 2  # both workers took a share
    result = validate(proxies, data=digits, store=url, **SETTINGS)
    assert result.reference["n_trained"] == 0 and result.primary.n_reused == N_ARCHS
    assert len(store.runs()) == len(runs)


def test_with_helpers_this_process_trains_on_its_share_of_the_cores(digits, tmp_path):
    """workers=2: the helper gets cpu_count // 2 threads, and so does this process while they share the
    cores (it kept all of its threads: on 2 cores, 2 + 1 OpenMP threads made each training ~3x slower)."""
    import os

    from _validate_workers import ThreadsContender

    from nasdistill.work.launch import threads_per_worker

    url = f"sqlite:///{tmp_path}/threads.db"
    before = torch.get_num_threads()
    torch.set_num_threads((os.cpu_count() or 1) + 1)  # more than any share, so a process that kept them shows
    try:
        result = validate([ThreadsContender()], data=digits, store=url, lease_s=5.0, poll_s=0.2, workers=2,
                          **SETTINGS)
        assert torch.get_num_threads() == (os.cpu_count() or 1) + 1  # restored after
    finally:
        torch.set_num_threads(before)
    threads = {int(v) for v in result.primary.scores}  # this process scores first, so some are its own
    assert threads == {threads_per_worker(2)}


@pytest.mark.slow
def test_killed_validation_resumes_without_redoing_finished_work(digits, tmp_path):
    url = f"sqlite:///{tmp_path}/resume.db"
    proxies = [random_proxy(digits, 3, 2)]
    store = ReferenceStore(url)
    proc = _spawn().Process(target=full_run, args=(url, digits, proxies, 2.0))
    proc.start()
    deadline = time.time() + 300
    while len(store.runs()) < 3 and time.time() < deadline and proc.is_alive():
        time.sleep(0.05)
    proc.kill()
    proc.join()
    orphans = [(c["arch_id"], c["task"]) for c in store.claims()]  # what it was computing when killed
    before = {(r["arch_id"], r["task"]): r["worker"] for r in store.runs()}
    assert 3 <= len(before) < 2 * N_ARCHS, "the validation was not stopped mid-way"
    assert all(f":{proc.pid}:" in w for w in before.values())
    result = validate(proxies, data=digits, store=url, lease_s=2.0, poll_s=0.2, workers=2, **RESUME_SETTINGS)
    runs = store.runs()
    counts = _per_task(runs)
    assert len(counts) == 2 * N_ARCHS and set(counts.values()) == {1}  # nothing trained twice
    after = {(r["arch_id"], r["task"]): r["worker"] for r in runs}
    assert all(after[k] == w for k, w in before.items())  # finished work kept, not redone
    assert all(f":{proc.pid}:" not in after[k] for k in orphans)  # abandoned claims were taken over
    done_refs = sum(task.startswith("ref:") for _, task in before)
    assert result.reference["n_reused"] >= done_refs
    assert result.reference["n_trained"] + result.reference["n_reused"] == N_ARCHS
    assert store.claims() == []
    assert result.primary.metrics["n"] == N_ARCHS and -1 <= result.primary.metrics["spearman"] <= 1


# --- CLI -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_validates_several_proxies_with_baselines(digits, tmp_path, capsys):
    space_file = tmp_path / "tiny_space.py"
    space_file.write_text("from _validate_workers import TinyConvNetSpace\nspace = TinyConvNetSpace()\n")
    paths = []
    for ipc in (2, 4):
        paths += ["--proxy", str(random_proxy(digits, ipc, 0).save(tmp_path / f"p{ipc}" / "proxy.safetensors"))]
    out = tmp_path / "out"
    args = ["validate", *paths, "--data", "digits", "--space", str(space_file), "--archs", "4", "--proxy-epochs", "8",
            "--augment", "none", "--full-epochs", "1", "--bootstrap", "50", "--top-k", "3,0.5",
            "--reference-store", str(tmp_path / "refs.db"), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--baseline", "early-stop", "--baseline", "zero-cost:naswot"]) == 0
    text = capsys.readouterr().out
    names = ["random-ipc2", "random-ipc4", "early-stop[random-ipc2]", "early-stop[random-ipc4]", "naswot"]
    assert all(f"| {n} |" in text for n in names) and "Spearman" in text
    doc = json.loads((out / "validation.json").read_text())
    assert [c["name"] for c in doc["contenders"]] == names and len(doc["records"]) == 4
    assert "spearman_top3" in doc["contenders"][0]["metrics"] and "regret@5" in doc["contenders"][0]["metrics"]
    assert main([*args, "--baseline", "zero-cost:nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown zero-cost score 'nope'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_prefetched_references_are_the_validations_own(digits, tmp_path):
    """prefetch_references trains, in a background process, exactly the full-data references the
    validation with the same settings needs (no proxy needed yet); the validation then reads every
    one from the store, with the figures a validation that trains them itself gets."""
    from nasdistill.validate import prefetch_references

    settings = dict(space="convnet", n_archs=3, seed=5, proxy_train=PROXY_TRAIN,
                    full_train=TrainConfig(epochs=1, batch_size=128), n_bootstrap=0)
    store = f"sqlite:///{tmp_path / 'refs.db'}"
    group = prefetch_references(digits, store=store, **settings)
    try:
        group.wait(poll=0.2, timeout=300)
        assert group.failures() == [], group.last_line(0)
    finally:
        group.close()
    proxy = random_proxy(digits, 2, 0)
    fetched = validate(proxy, data=digits, store=store, **settings)
    assert fetched.reference["n_reused"] == 3 and fetched.reference["n_trained"] == 0
    own = validate(proxy, data=digits, store=f"sqlite:///{tmp_path / 'own.db'}", **settings)
    assert own.reference["n_trained"] == 3
    assert np.array_equal(fetched.reference["scores"], own.reference["scores"])
    assert np.array_equal(fetched.primary.scores, own.primary.scores)
    with pytest.raises(ConfigError, match="in-memory"):
        prefetch_references(digits, store="sqlite:///:memory:", **settings)
