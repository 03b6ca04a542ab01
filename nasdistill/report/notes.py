"""The notes a run's summary and its report add below the figures: why the speed-up is small, what to
do when the proxy did not beat a random subset, how little a ranking of few architectures tells
(:func:`speedup_note`, :func:`proxy_note`, :func:`archs_note`)."""

from __future__ import annotations


#: Below this speed-up (full-data training time over proxy training time, per candidate) the summary says why.
SMALL_SPEEDUP = 2.0


def speedup_note(summary: dict) -> str | None:
    """What the run's speed-up is measured against and, when it is small, why and which command shows one
    (None for a summary without cost figures, or with a speed-up of :data:`SMALL_SPEEDUP` or more)."""
    cost = summary.get("cost")
    if not cost:
        return None
    proxy, full = cost["proxy"], cost["full_data"]
    wall, flops = proxy.get("speedup_wall"), proxy.get("speedup_flops")
    known = [x for x in (wall, flops) if x is not None and x == x]
    if not known or min(known) >= SMALL_SPEEDUP:
        return None
    seen_p, seen_f = proxy.get("samples_per_candidate"), full.get("samples_per_candidate")
    seen = (f" (a full-data training sees {seen_f:,} images, a proxy training {seen_p:,})"
            if seen_p and seen_f else "")
    return (f"Why the speed-up is small ({_x(wall)} in time, {_x(flops)} in training FLOPs): it is one candidate's "
            f"full-data training over its proxy training, and {summary['dataset']['name']} has only "
            f"{cost['full_train_images']:,} training images, so the full-data budget costs about what the proxy's "
            f"does{seen}. A proxy pays off when the full set is large: `nasdistill run --data mnist --data-root DIR "
            "--train-per-class 1000` (10,000 images), or the whole of MNIST on a GPU, shows it; "
            "benchmarks/fidelity.py measures it.")


def proxy_note(summary: dict) -> str | None:
    """What to do when the proxy did not beat a random subset of its size on the default architecture
    (the test of a distillation method working); None when it did."""
    c = summary.get("proxy_vs_random")
    if not c or c["proxy_acc"] > c["random_acc"]:
        return None
    method = summary["proxy"]["method"]
    if method == "random":
        return None
    return (f"The {method} proxy did not beat a random subset of its size here ({c['proxy_acc']:.4f} vs "
            f"{c['random_acc']:.4f} test accuracy on the default architecture, {c.get('eval_seeds', 2)} trainings "
            "each): its images teach no more than real ones picked at random. Distil longer (--iterations, or "
            "--budget paper) or with another --method before trusting it; what the search needs is its ranking "
            "of architectures, measured above by Spearman ρ against full-data training.")


#: Below this many validated architectures the summary says how little the ranking figures can tell.
FEW_ARCHS = 10


def archs_note(summary: dict) -> str | None:
    """What a Spearman ρ over fewer than :data:`FEW_ARCHS` architectures can tell (None from that many on)."""
    v = summary.get("validation")
    n = (v or {}).get("n_archs")
    if not n or n >= FEW_ARCHS:
        return None
    return (f"ρ and its interval come from only {n} architectures: a few swapped pairs move them far, and the "
            f"bootstrap resamples {n} points. Validate {FEW_ARCHS} or more (--archs) before trusting the ranking.")


def _x(v) -> str:
    return "?" if v is None or v != v else f"{v:.1f}×"


__all__ = ["SMALL_SPEEDUP", "FEW_ARCHS", "archs_note", "proxy_note", "speedup_note"]
