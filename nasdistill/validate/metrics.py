"""Rank-agreement metrics between a proxy's scores and full-data scores (pure NumPy/SciPy).

Every function takes two equal-length 1-D sequences, ``proxy`` and ``full``: entry ``i`` of each
is the score (higher is better, e.g. test accuracy) of architecture ``i``. Statistics that are
undefined (fewer than two architectures, or one side constant) are ``nan``, returned without
warnings, so a bootstrap resample that happens to be degenerate is simply skipped.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError

Statistic = Callable[[np.ndarray, np.ndarray], float]


def _stats():
    """``scipy.stats``, imported on first use: about a second that importing this package (which
    ``search`` and ``run`` do before any ranking is measured) need not pay."""
    from scipy import stats

    return stats


#: A bootstrap interval is reported only when at least this share of resamples define the statistic.
MIN_DEFINED_SHARE = 0.5


def _pair(proxy: Sequence[float], full: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(proxy, dtype=np.float64).reshape(-1)
    f = np.asarray(full, dtype=np.float64).reshape(-1)
    if p.shape != f.shape:
        raise ConfigError(f"proxy and full scores differ in length ({p.size} vs {f.size})",
                          "pass one proxy score and one full-data score per architecture")
    if not (np.isfinite(p).all() and np.isfinite(f).all()):
        raise ConfigError("scores contain nan or inf", "drop architectures whose training failed")
    return p, f


def _degenerate(p: np.ndarray, f: np.ndarray) -> bool:
    return p.size < 2 or np.ptp(p) == 0 or np.ptp(f) == 0


def spearman(proxy: Sequence[float], full: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of the average ranks (ties share their mean rank).

    Equal to ``scipy.stats.spearmanr(proxy, full).statistic``; nan when undefined.
    """
    p, f = _pair(proxy, full)
    if _degenerate(p, f):
        return math.nan
    rp = _stats().rankdata(p) - (p.size + 1) / 2
    rf = _stats().rankdata(f) - (f.size + 1) / 2
    return float(np.clip((rp @ rf) / math.sqrt((rp @ rp) * (rf @ rf)), -1.0, 1.0))


def kendall(proxy: Sequence[float], full: Sequence[float]) -> float:
    """Kendall's tau-b (``scipy.stats.kendalltau``, ties corrected); nan when undefined."""
    p, f = _pair(proxy, full)
    if _degenerate(p, f):
        return math.nan
    return float(_stats().kendalltau(p, f).statistic)


def check_k(k: int | float, *, minimum: int = 1) -> int | float:
    """``k`` itself if it is a count of at least ``minimum`` or a fraction in (0, 1], else ConfigError."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, float, np.integer, np.floating)):
        raise ConfigError(f"top-k must be a count or a fraction, got {k!r}", "pass e.g. 5 or 0.25")
    if isinstance(k, (float, np.floating)):
        if not 0 < k <= 1:
            raise ConfigError(f"a top-k fraction must lie in (0, 1], got {k}", "pass e.g. 0.25, or an integer count")
    elif k < minimum:
        raise ConfigError(f"top-k must be at least {minimum}, got {k}", f"pass {minimum} or more")
    return k


def resolve_k(k: int | float, n: int, *, minimum: int = 1) -> int:
    """How many of ``n`` architectures ``k`` means: a count as given, a fraction in (0, 1] of ``n``
    rounded up; then at least ``minimum`` and at most ``n``."""
    check_k(k, minimum=minimum)
    count = math.ceil(float(k) * n - 1e-9) if isinstance(k, (float, np.floating)) else int(k)
    return min(n, max(minimum, count))


def k_label(k: int | float) -> str:
    """How ``k`` appears in metric names: ``5`` -> ``"5"``, ``0.25`` -> ``"25pct"``."""
    if isinstance(k, (float, np.floating)):
        return f"{100 * float(k):g}pct"
    return str(int(k))


def _best_by_full(f: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` best full-data scores (ties: earlier index first)."""
    return np.argsort(-f, kind="stable")[:count]


def topk_spearman(proxy: Sequence[float], full: Sequence[float], k: int | float) -> float:
    """Spearman's rho over the ``k`` architectures that are best on the full data.

    ``k`` is a count (at least 2), or a fraction in (0, 1] of the architectures (rounded up, at
    least 3: a rank correlation over two architectures is always +1 or -1).
    Ties on the full-data score at the cut are broken by position (earlier first).
    """
    p, f = _pair(proxy, full)
    minimum = 3 if isinstance(k, (float, np.floating)) else 2
    top = _best_by_full(f, resolve_k(k, p.size, minimum=minimum))
    return spearman(p[top], f[top])


def regret_at_k(proxy: Sequence[float], full: Sequence[float], k: int | float = 1) -> float:
    """Best full-data score overall minus the best full-data score among the proxy's top-``k`` picks.

    Zero when the proxy's top ``k`` contain the truly best architecture. Ties on the proxy score
    are broken pessimistically (worse full-data score first), so a proxy that scores everything
    alike does not get lucky.
    """
    p, f = _pair(proxy, full)
    if p.size == 0:
        return math.nan
    order = np.lexsort((f, -p))  # proxy descending, then full ascending
    picks = order[: resolve_k(k, p.size, minimum=1)]
    return float(f.max() - f[picks].max())


def _rng_kwarg() -> str:
    return "rng" if "rng" in inspect.signature(_stats().bootstrap).parameters else "random_state"


def bootstrap_ci(statistic: Statistic, proxy: Sequence[float], full: Sequence[float], *, n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(proxy, full)`` resampling architectures in pairs.

    Uses ``scipy.stats.bootstrap(paired=True, method='percentile')`` seeded with ``seed``. Resamples
    where the statistic is undefined (nan, e.g. all scores equal) are left out; when fewer than
    :data:`MIN_DEFINED_SHARE` of them are defined, or the data has under three architectures, the
    interval is ``(nan, nan)``.
    """
    p, f = _pair(proxy, full)
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie in (0, 1), got {confidence}", "pass e.g. 0.95")
    if n_resamples < 1 or p.size < 3:
        return math.nan, math.nan
    with warnings.catch_warnings():  # scipy warns about the nan resamples dropped below
        warnings.simplefilter("ignore")
        res = _stats().bootstrap((p, f), statistic, n_resamples=int(n_resamples), vectorized=False, paired=True,
                              confidence_level=confidence, method="percentile",
                              **{_rng_kwarg(): np.random.default_rng(seed)})
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    dist = dist[np.isfinite(dist)]
    if dist.size < MIN_DEFINED_SHARE * n_resamples:
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    low, high = np.percentile(dist, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def ranking_metrics(proxy: Sequence[float], full: Sequence[float], *, top_k: Sequence[int | float] = (5,),
                    regret_k: Sequence[int | float] | None = None, n_bootstrap: int = 1000, seed: int = 0,
                    confidence: float = 0.95) -> dict:
    """All agreement metrics with bootstrap intervals, as one flat dict.

    Keys: ``n``, ``confidence``, ``n_bootstrap``; ``spearman``, ``kendall``, ``spearman_top{k}`` per
    ``k`` in ``top_k`` and ``regret@{k}`` per ``k`` in ``regret_k`` (default: 1 and every ``top_k``),
    each with a ``*_ci`` (low, high) pair. Fractions appear as ``spearman_top25pct`` /
    ``regret@25pct``. ``n_bootstrap=0`` skips the intervals (nan pairs).
    """
    p, f = _pair(proxy, full)
    top_k = tuple(top_k)
    if regret_k is None:
        regret_k = (1, *[k for k in top_k if k != 1])
    out: dict = {"n": int(p.size), "confidence": confidence, "n_bootstrap": int(n_bootstrap)}
    stats_: dict[str, Statistic] = {"spearman": spearman, "kendall": kendall}
    for k in top_k:
        check_k(k, minimum=2)
        stats_[f"spearman_top{k_label(k)}"] = lambda a, b, k=k: topk_spearman(a, b, k)
    for k in regret_k:
        check_k(k, minimum=1)
        stats_[f"regret@{k_label(k)}"] = lambda a, b, k=k: regret_at_k(a, b, k)
    for name, fn in stats_.items():  # one seed for all: every statistic sees the same resamples
        out[name] = fn(p, f)
        out[f"{name}_ci"] = bootstrap_ci(fn, p, f, n_resamples=n_bootstrap, confidence=confidence, seed=seed)
    return out


def _top(k: int) -> Statistic:
    def spearman_top(proxy, full):
        return topk_spearman(proxy, full, k)

    spearman_top.__name__ = f"spearman_top{k}"
    return spearman_top


#: Statistics :func:`paired_bootstrap` can compare, by name: Spearman and Kendall over all
#: architectures, and Spearman over the best 5, 10 or 20 by full-data score (the figure of merit of
#: a NAS proxy; on a resample, the best k of the resampled architectures).
PAIRED_STATISTICS: dict[str, Statistic] = {"spearman": spearman, "kendall": kendall,
                                           **{f"spearman_top{k}": _top(k) for k in (5, 10, 20)}}


def _statistic(statistic: str | Statistic) -> Statistic:
    if not isinstance(statistic, str):
        return statistic
    if statistic not in PAIRED_STATISTICS:
        raise ConfigError(f"unknown statistic {statistic!r} for the paired bootstrap",
                          f"use one of {', '.join(PAIRED_STATISTICS)}")
    return PAIRED_STATISTICS[statistic]


def paired_bootstrap(a: Sequence[float], b: Sequence[float], full: Sequence[float], *,
                     statistic: str | Statistic = "spearman", n_resamples: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> dict:
    """Does contender ``a`` rank architectures better than contender ``b``? A paired bootstrap test.

    Architectures are resampled with replacement, jointly for ``a``, ``b`` and ``full`` (the same
    indices for all three, seeded with ``seed``); on each resample ``d = stat(a, full) - stat(b, full)``.
    Resamples where either statistic is undefined are left out.

    Returns ``metric``, ``a_value``, ``b_value`` and ``diff`` (on the data), ``diff_ci`` (percentile interval of
    ``d``), ``prob_a_better`` / ``prob_b_better`` (share of resamples with ``d > 0`` / ``d < 0``),
    ``p_value`` (one-sided, for "a is no better than b": ``(#{d <= 0} + 1) / (m + 1)`` over the ``m``
    defined resamples), ``p_value_b`` (the same for "b is no better than a"), ``n_resamples`` and
    ``n_defined``. Interval and probabilities are nan when fewer than :data:`MIN_DEFINED_SHARE`
    of the resamples are defined or there are under three architectures.
    """
    row = paired_bootstrap_all({"a": a, "b": b}, full, statistic=statistic, n_resamples=n_resamples,
                               confidence=confidence, seed=seed)[0]
    return {k: v for k, v in row.items() if k not in ("a", "b")}


def paired_bootstrap_all(scores: dict[str, Sequence[float]], full: Sequence[float], *,
                         statistic: str | Statistic = "spearman", n_resamples: int = 1000, confidence: float = 0.95,
                         seed: int = 0) -> list[dict]:
    """:func:`paired_bootstrap` for every pair of ``scores`` (name -> scores), in insertion order.

    All pairs share one set of resamples, so each contender's statistic is computed once per
    resample. Each dict also holds ``a`` and ``b`` (the names) and ``metric``.
    """
    fn = _statistic(statistic)
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie in (0, 1), got {confidence}", "pass e.g. 0.95")
    arrays = {name: _pair(s, full) for name, s in scores.items()}
    names = list(arrays)
    f = np.asarray(full, dtype=np.float64).reshape(-1)
    dists: dict[str, np.ndarray] = {}
    if n_resamples >= 1 and f.size >= 3:
        idx = np.random.default_rng(seed).integers(0, f.size, size=(int(n_resamples), f.size))
        dists = {name: np.array([fn(p[i], f[i]) for i in idx]) for name, (p, _) in arrays.items()}
    alpha = (1 - confidence) / 2
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            va, vb = fn(*arrays[a]), fn(*arrays[b])
            row = {"a": a, "b": b, "metric": statistic if isinstance(statistic, str) else fn.__name__,
                   "a_value": va, "b_value": vb, "diff": va - vb, "diff_ci": (math.nan, math.nan),
                   "prob_a_better": math.nan, "prob_b_better": math.nan, "p_value": math.nan, "p_value_b": math.nan,
                   "n_resamples": int(n_resamples), "n_defined": 0}
            if dists:
                d = dists[a] - dists[b]
                d = d[np.isfinite(d)]
                row["n_defined"] = int(d.size)
                if d.size >= MIN_DEFINED_SHARE * n_resamples:
                    row["diff_ci"] = tuple(float(v) for v in np.percentile(d, [100 * alpha, 100 * (1 - alpha)]))
                    row["prob_a_better"] = float(np.mean(d > 0))
                    row["prob_b_better"] = float(np.mean(d < 0))
                    row["p_value"] = float((np.sum(d <= 0) + 1) / (d.size + 1))
                    row["p_value_b"] = float((np.sum(d >= 0) + 1) / (d.size + 1))
            out.append(row)
    return out


__all__ = ["spearman", "kendall", "topk_spearman", "regret_at_k", "bootstrap_ci", "ranking_metrics", "check_k",
           "resolve_k", "k_label", "MIN_DEFINED_SHARE", "paired_bootstrap", "paired_bootstrap_all", "PAIRED_STATISTICS"]
