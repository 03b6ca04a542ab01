"""Experiment tracking callbacks: what a step produced, sent to a tracker (MLflow) as it finishes.

:class:`Callback` is the protocol: ``on_distill(proxy)``, ``on_search(search)``,
``on_validate(result)``, ``on_run(summary)`` (each optional); :func:`nasdistill.pipeline.run`
takes ``callbacks=[...]`` and the ``nasdistill`` command builds one from ``--mlflow URI``.

:class:`MLflowTracker` logs to any MLflow tracking URI; a local one needs no server, e.g.
``sqlite:///runs/mlflow.db`` (then ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``).
Each ``on_*`` call is one MLflow run in the experiment: the distillation's settings and loss curve
(``loss`` per iteration), the search's trials (``trial_value`` per trial number, the best
architecture as parameters), the validation's metrics per contender (``<contender>.spearman``...).
MLflow is an extra: ``pip install "nasdistill[mlflow]"``.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError


class Callback:
    """Called as each pipeline step finishes; every method is optional (these do nothing)."""

    def on_distill(self, proxy) -> None:
        """A proxy was distilled or reused (:class:`~nasdistill.data.Proxy`)."""

    def on_search(self, search) -> None:
        """A search finished (a fitted :class:`~nasdistill.search.SearchBackend`)."""

    def on_validate(self, result) -> None:
        """A validation finished (:class:`~nasdistill.validate.ValidationResult`)."""

    def on_run(self, summary: dict) -> None:
        """``nasdistill run`` finished (its ``summary.json`` content)."""


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _flat(prefix: str, d: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(f"{key}.", v))
        else:
            out[key] = v
    return out


class MLflowTracker(Callback):
    """Log each step to MLflow at ``tracking_uri`` (a local ``sqlite:///FILE`` needs no server), in
    ``experiment``; ``run_ids_`` lists the MLflow runs made."""

    def __init__(self, tracking_uri: str, experiment: str = "nasdistill", tags: dict | None = None):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ConfigError("--mlflow needs MLflow", 'pip install "nasdistill[mlflow]"') from e
        self.tracking_uri, self.experiment, self.tags = tracking_uri, experiment, dict(tags or {})
        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_ids_: list[str] = []

    def _run(self, name: str, params: dict, metrics: dict[str, float], curves: dict[str, list] = (),
             tags: dict | None = None) -> str:
        from mlflow.entities import Metric, Param

        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={**self.tags, **(tags or {}), "nasdistill.step": name.split(" ")[0]})
        rid = run.info.run_id
        ts = run.info.start_time
        entries = [Metric(k, v, ts, 0) for k, v in metrics.items() if _number(v) is not None]
        for key, values in dict(curves).items():
            entries += [Metric(key, float(v), ts, i) for i, v in enumerate(values) if _number(v) is not None]
        param_list = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(param_list), 100):  # MLflow's batch limits
            self.client.log_batch(rid, params=param_list[i:i + 100])
        for i in range(0, len(entries), 900):
            self.client.log_batch(rid, metrics=entries[i:i + 900])
        self.client.set_terminated(rid)
        self.run_ids_.append(rid)
        return rid

    def on_distill(self, proxy) -> None:
        meta = proxy.meta
        params = {"method": meta.get("method"), "ipc": meta.get("ipc"), "seed": meta.get("seed"),
                  "dataset": meta.get("dataset", {}).get("name"), **_flat("setting.", meta.get("settings", {}))}
        self._run(f"distill {meta.get('method')} ipc {meta.get('ipc')}", params,
                  {"wall_time_s": meta.get("wall_time_s"), "final_loss": meta.get("final_loss")},
                  {"loss": meta.get("loss_history") or []}, tags={"proxy.key": meta.get("key")})

    def on_search(self, search) -> None:
        result = search.result_
        done = sorted((t for t in result.trials if t.get("state") == "COMPLETE"), key=lambda t: t["number"])
        best = result.best or {}
        params = {"backend": search.name, "study": result.study_name, "n_trials": len(result.trials),
                  **_flat("best.", dict(best.get("arch") or {})), "best.arch_id": best.get("arch_id")}
        self._run(f"search {result.study_name}", params, {"best_value": best.get("value")},
                  {"trial_value": [t["value"] for t in done]})

    def on_validate(self, result) -> None:
        metrics: dict[str, float] = {}
        for c in result.contenders:
            for k, v in {**c.metrics, **c.cost}.items():
                if isinstance(v, (list, tuple)):
                    if len(v) == 2:
                        metrics[f"{c.name}.{k}_low"], metrics[f"{c.name}.{k}_high"] = v
                else:
                    metrics[f"{c.name}.{k}"] = v
        metrics = {k.replace("@", "_at_").replace("[", "_").replace("]", ""): v for k, v in metrics.items()}
        self._run("validate", {"n_archs": len(result.archs), "space": result.settings.get("space"),
                               "contenders": ",".join(result.names)}, metrics)

    def on_run(self, summary: dict) -> None:
        v, s = summary.get("validation", {}), summary.get("search", {})
        cost = (summary.get("cost") or {}).get("proxy", {})
        self._run(f"run {summary.get('name')}", {"dataset": summary.get("dataset", {}).get("name"),
                                                 "best_arch_id": s.get("best_arch_id")},
                  {"spearman": v.get("spearman"), "kendall": v.get("kendall"), "best_val_acc": s.get("best_val_acc"),
                   "speedup_wall": cost.get("speedup_wall"),
                   "proxy_acc": summary.get("proxy_vs_random", {}).get("proxy_acc"),
                   "random_acc": summary.get("proxy_vs_random", {}).get("random_acc"),
                   "total_time_s": summary.get("timings_s", {}).get("total")})
