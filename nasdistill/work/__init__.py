"""Sharing work between processes, on one machine or many: the layer search and validate both use.

* :mod:`~nasdistill.work.names`: who a worker is (``host:pid`` labels and unique worker ids);
* :mod:`~nasdistill.work.locks`: locks every process of one database or file can take (a
  PostgreSQL advisory lock, MySQL ``GET_LOCK``, a lock file), for short check-and-create steps;
* :mod:`~nasdistill.work.claims`: claims with heartbeat leases on rows of an SQL table
  (:class:`ClaimBook`), the run log, and :func:`heartbeat`, the thread that keeps a lease alive;
* :mod:`~nasdistill.work.jobs`: :func:`run_jobs`, a list of stored results computed once by
  whichever worker claims each first;
* :mod:`~nasdistill.work.launch`: :class:`ProcessGroup`, local worker processes started, watched
  and stopped the same way for every kind of job.

It sits beside ``data``, ``spaces`` and ``training``: it imports nothing from search or validate.
"""

from .claims import CLAIMS_TABLE, DEFAULT_LEASE_S, RUNS_TABLE, ClaimBook, WorkKey, heartbeat, insert_ignore
from .jobs import Job, Outcome, run_jobs, stored_outcomes
from .launch import ProcessGroup, call_command, worker_env
from .locks import file_lock, local_lock, sql_lock
from .names import worker_id, worker_label

__all__ = ["ClaimBook", "WorkKey", "heartbeat", "insert_ignore", "CLAIMS_TABLE", "RUNS_TABLE", "DEFAULT_LEASE_S",
           "Job", "Outcome", "run_jobs", "stored_outcomes", "ProcessGroup", "call_command", "worker_env", "sql_lock",
           "file_lock", "local_lock", "worker_id", "worker_label"]
