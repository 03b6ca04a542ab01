"""``nasdistill dashboard RUN_DIR``: the run's search study in optuna-dashboard.

A search's study is a plain Optuna study (default storage ``sqlite:///RUN_DIR/study.db``), so
optuna-dashboard shows its live history as it does for any study; this only finds the storage and
serves it on a local address. The same as ``optuna-dashboard sqlite:///RUN_DIR/study.db --host
127.0.0.1 --port 8080``. optuna-dashboard is an extra: ``pip install "nasdistill[dashboard]"``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def study_storage(run_dir: str | os.PathLike, storage: str | None = None) -> str:
    """The storage URL of the study of ``run_dir``: ``storage`` when given, else its ``study.db``."""
    if storage:
        return storage
    path = Path(run_dir) / "study.db"
    if not path.is_file():
        raise ConfigError(f"no study.db in {run_dir}",
                          "pass the folder a search or run wrote, or the study's --storage URL")
    return f"sqlite:///{path.resolve()}"


def command_line(run_dir: str | os.PathLike, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 storage: str | None = None) -> str:
    """The equivalent ``optuna-dashboard`` command line."""
    return f"optuna-dashboard {study_storage(run_dir, storage)} --host {host} --port {port}"


def serve(run_dir: str | os.PathLike, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          storage: str | None = None, log=None) -> None:
    """Serve the study of ``run_dir`` with optuna-dashboard at ``http://host:port/`` until interrupted."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"--port must be a port number from 1 to 65535, got {port!r}", "pass e.g. --port 8080")
    url = study_storage(run_dir, storage)
    try:
        import optuna_dashboard
    except ImportError as e:
        raise ConfigError("the dashboard needs optuna-dashboard", 'pip install "nasdistill[dashboard]"') from e
    report = Path(run_dir) / "report.html"
    if log:
        log(f"dashboard: http://{host}:{port}/ serving {url} (Ctrl-C stops it)"
            + (f"; validation report: {report.resolve()}" if report.is_file() else ""))
    try:
        optuna_dashboard.run_server(url, host=host, port=port)
    except OSError as e:
        raise ConfigError(f"cannot serve on {host}:{port} ({e.strerror or e})", "pass another --port") from None
