"""Executors of a grid: one function called once per combination, in this process (``local``) or as
one Ray task each on a Ray cluster (``ray``). Must not train, score or choose: the per-combination
function and the tables come from :mod:`covidxr.grid`; Ray is imported only by the Ray executor.

Both executors call the same function with the same plain, picklable arguments (a configuration as a
dict, absolute paths), collect one :class:`Outcome` per combination (a result dict or an error) and
print one line per finished run with the running count ``k/N done, M running, F failed``. A run
that fails for a reason of its own (an exception) is reported and the others go on; a Ray worker that
dies (killed, out of memory, node lost) makes Ray retry its task (``max_retries``), and the retry
continues the run from its checkpoint, as a rerun of the grid would.

Before any run starts, the Ray executor connects (or starts a local instance), checks that some node
has the CPUs and GPUs one run asks for, and runs a tiny probe task on every node that reads a file
the driver wrote into the grid folder and writes into it, the data and the cache folder: a folder
that is not on a filesystem every node sees is refused, naming the node.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import sys
import uuid
import warnings
from pathlib import Path

__all__ = ["EXECUTORS", "Outcome", "check_executor", "limit_threads", "probe_paths", "run_jobs", "run_threads"]

#: The executors ``--executor`` accepts.
EXECUTORS = ("local", "ray")
#: How to install Ray when it is missing.
RAY_INSTALL = 'pip install "ray>=2.40,<3"'
#: The probe file the Ray executor writes into the grid folder.
PROBE_FILE = ".covidxr-probe"
#: Environment variables a Ray task gets from the driver (so every worker runs the driver's backend).
FORWARDED_ENV = ("KERAS_BACKEND",)


@dataclasses.dataclass
class Outcome:
    """One combination's end: ``result`` (the per-combination function's dict) or ``error`` (one line)."""

    label: str
    result: dict | None = None
    error: str | None = None


def check_executor(executor="local", *, ray_address=None, cpus_per_run=None, gpus_per_run=None,
                   max_retries=3) -> dict:
    """The executor options, checked (values only; nothing is started).

    Args:
        executor: ``"local"`` (every run in this process, one after the other) or ``"ray"``.
        ray_address: Ray only: None (start a local Ray instance, or use the one this process is
            connected to), ``"auto"`` or ``HOST:PORT`` (``ray://HOST:PORT``) of a running cluster.
        cpus_per_run: CPUs per run (Ray: the task's ``num_cpus``, default 1); on both executors
            also the threads a run uses (None: the libraries' defaults, locally).
        gpus_per_run: GPUs per run (Ray: ``num_gpus``, fractions share a GPU; default 0).
        max_retries: Ray: how often a task whose worker died is started again.

    Returns:
        The options as a dict (the grid's record keeps them; a resumed grid may change them).

    Raises:
        ValueError: An unknown executor, Ray options with the local executor, a bad number, Ray
            not installed, or a ``HOST:PORT`` nobody answers at.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"Unknown executor. Expected one of {list(EXECUTORS)}. Received: executor={executor!r}")
    if executor == "local" and (ray_address is not None or gpus_per_run):
        raise ValueError("Expected --ray-address and --gpus-per-run only with --executor ray. "
                         f"Received: executor='local', ray_address={ray_address!r}, gpus_per_run={gpus_per_run!r}")
    for name, value, zero in (("cpus_per_run", cpus_per_run, False), ("gpus_per_run", gpus_per_run, True)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0 or (value == 0 and not zero)):
            raise ValueError(f"Expected {name} to be a number {'>= 0' if zero else '> 0'}. "
                             f"Received: {name}={value!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"Expected max_retries to be an integer >= 0. Received: max_retries={max_retries!r}")
    if executor == "ray":
        _import_ray()
        if ray_address not in (None, "auto"):
            _check_reachable(ray_address)
    return {"executor": executor, "ray_address": ray_address, "cpus_per_run": cpus_per_run,
            "gpus_per_run": gpus_per_run, "max_retries": int(max_retries)}


def _split_address(address) -> tuple[str, int]:
    text = str(address).removeprefix("ray://")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Expected --ray-address 'auto' or HOST:PORT (e.g. 10.0.0.1:6379). "
                         f"Received: ray_address={address!r}")
    return host, int(port)


def run_threads(options: dict):
    """The CPU threads one run uses: ``cpus_per_run``; unset, 1 on Ray (a task's one CPU), else None."""
    if options["cpus_per_run"] is not None:
        return options["cpus_per_run"]
    return 1 if options["executor"] == "ray" else None


def limit_threads(threads) -> None:
    """Use ``threads`` CPU threads in this process (None: leave the defaults).

    Sets ``OMP_NUM_THREADS`` (as Ray does for a task) and, on the TensorFlow backend, its intra-
    and inter-op thread pools; where TensorFlow has started already it keeps its pools and one
    warning says so.
    """
    if threads is None:
        return
    n = max(1, int(math.ceil(threads)))
    os.environ["OMP_NUM_THREADS"] = str(n)
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow" or "tensorflow" not in sys.modules:
        return  # TensorFlow is imported with Keras; JAX sizes its pools itself
    import tensorflow as tf

    threading = tf.config.threading
    if threading.get_intra_op_parallelism_threads() == n and threading.get_inter_op_parallelism_threads() == n:
        return
    try:
        threading.set_intra_op_parallelism_threads(n)
        threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:
        warnings.warn(f"TensorFlow has started already in this process and keeps its thread pools; "
                      f"--cpus-per-run {threads} sets them in a new process only", stacklevel=2)


def run_jobs(function, jobs, *, labels, options, out, writable=(), readable=(), progress=True,
             on_result=None) -> list[Outcome]:
    """Call ``function(**job)`` for every job; return one :class:`Outcome` per job, in order.

    Args:
        function: The per-combination function (a module-level function: Ray pickles it by name).
        jobs: Its keyword arguments per combination (plain, picklable values).
        labels: One label per job for the progress lines.
        options: :func:`check_executor`'s dict.
        out: The grid folder (absolute).
        writable, readable: Other paths every worker must write (runs, cache) or read (data); the
            Ray executor probes them on every node.
        progress: Print one line per finished run and the running count.
        on_result: Called in this process with ``(index, outcome)`` as each run ends.

    A job whose result says ``"how": "held"`` (another process holds its combination, see
    :func:`covidxr.grid.run_combination`) is asked again after all the others, with ``wait=True``.

    Raises:
        ValueError: Ray missing, unreachable or too small for one run, or a folder its workers
            cannot see or write (before any run starts).
    """
    jobs, labels = list(jobs), list(labels)
    counter = _Counter(len(jobs), progress=progress)
    paths = {"writable": [str(out), *map(str, writable)], "readable": list(map(str, readable))}
    outcomes = _run_pass(function, jobs, labels, options=options, out=out, paths=paths, counter=counter,
                         on_result=on_result)
    held = [i for i, o in enumerate(outcomes) if o.result is not None and o.result.get("how") == "held"]
    if held:  # combinations another process trains: wait for them now, then keep what it made
        again = _run_pass(function, [{**jobs[i], "wait": True} for i in held], [labels[i] for i in held],
                          options=options, out=out, paths=paths, counter=counter,
                          on_result=on_result and (lambda k, outcome: on_result(held[k], outcome)))
        for i, outcome in zip(held, again):
            outcomes[i] = outcome
    return outcomes


def _run_pass(function, jobs, labels, *, options, out, paths, counter, on_result) -> list[Outcome]:
    """One pass of :func:`run_jobs` over ``jobs``."""
    if options["executor"] == "ray":
        return _run_ray(function, jobs, labels, options=options, out=Path(out), counter=counter, on_result=on_result,
                        paths=paths)
    outcomes = []
    for index, (job, label) in enumerate(zip(jobs, labels)):
        try:
            outcome = Outcome(label, result=function(**job))
        except Exception as err:  # noqa: BLE001 - a run's own failure is reported; the others go on
            outcome = Outcome(label, error=_one_line(err))
        outcomes.append(outcome)
        counter.finished(outcome, running=0)
        if on_result:
            on_result(index, outcome)
    return outcomes


class _Counter:
    """The progress lines: one per finished run, with ``k/N done, M running, F failed``."""

    def __init__(self, total, *, progress):
        self.total, self.progress, self.done, self.failed = total, progress, 0, 0

    def finished(self, outcome: Outcome, *, running: int) -> None:
        if outcome.result is not None and outcome.result.get("how") == "held":
            if self.progress:
                print(f"{outcome.label}: held by another process ({outcome.result.get('holder')}); "
                      "coming back to it after the others", flush=True)
            return
        if outcome.error is None:
            self.done += 1
        else:
            self.failed += 1
        if not self.progress:
            return
        count = f"{self.done}/{self.total} done, {running} running, {self.failed} failed"
        if outcome.error is not None:
            print(f"{outcome.label}: FAILED: {outcome.error} ({count})", flush=True)
            return
        result = outcome.result
        auc = result.get("val_auc")
        what = {"kept": "done before, kept", "continued": "continued in", "trained": "trained in"}[result["how"]]
        seconds = "" if result["how"] == "kept" else f" {result['seconds']:.1f} s,"
        auc_text = "n/a" if auc is None else f"{auc:.3f}"
        print(f"{outcome.label}: {what}{seconds} val AUC {auc_text} -> {Path(result['run']).name} ({count})",
              flush=True)


def _one_line(err: BaseException, limit=500) -> str:
    text = " ".join(str(err).split()) or "(no message)"
    text = f"{type(err).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- Ray

def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise ValueError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}. "
                         f"Received: executor='ray'") from err
    return ray


def _check_reachable(address) -> None:
    host, port = _split_address(address)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as err:
        raise ValueError(f"Could not reach the Ray cluster at {address} ({err}); start its head with "
                         f"`ray start --head` or give the address it printed. Received: ray_address={address!r}"
                         ) from err


def _connect(ray, address) -> bool:
    """Connect to Ray; True when this call started the connection (and must end it). A process
    connected already (a notebook, the tests) keeps its connection when no address is given."""
    if ray.is_initialized():
        if address is not None:
            raise ValueError("Expected no --ray-address: this process is connected to a Ray cluster already "
                             f"and runs the grid there. Received: ray_address={address!r}")
        return False
    try:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError) as err:
        raise ValueError(f"Could not connect to a Ray cluster ({' '.join(str(err).split())}); start one with "
                         f"`ray start --head`, or leave out --ray-address for a local instance. "
                         f"Received: ray_address={address!r}") from err
    return True


def _check_resources(ray, *, cpus, gpus) -> list:
    """The alive nodes; refuse runs that ask for more CPUs or GPUs than any node has."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    for name, asked in (("CPU", cpus), ("GPU", gpus)):
        most = max((n["Resources"].get(name, 0.0) for n in nodes), default=0.0)
        if asked and asked > most:
            option = f"--{name.lower()}s-per-run"
            raise ValueError(f"Expected {option} at most the {name}s of one Ray node (the most any of the "
                             f"{len(nodes)} node(s) has: {most:g}). Received: {option.lstrip('-').replace('-', '_')}"
                             f"={asked!r}")
    return nodes


def probe_paths(*, probe, token, writable=(), readable=()) -> list[str]:
    """On a worker: what is wrong with the grid folder's probe file and the paths (empty: nothing).

    Args:
        probe: The probe file the driver wrote (absolute).
        token: Its content.
        writable: Folders the worker must be able to write (made when missing).
        readable: Files or folders the worker must see.
    """
    problems = []
    try:
        seen = Path(probe).read_text()
    except OSError:
        seen = None
    if seen != token:
        problems.append(f"does not see the driver's grid folder {str(Path(probe).parent)!r} (the probe file the "
                        f"driver wrote there is {'missing' if seen is None else 'another one'})")
    problems += [f"does not see {str(p)!r}" for p in readable if not os.path.exists(p)]
    for folder in writable:
        test = Path(folder) / f".covidxr-write-test-{uuid.uuid4().hex[:8]}"
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            test.write_text("ok")
            test.unlink()
        except OSError as err:
            problems.append(f"cannot write {str(folder)!r} ({type(err).__name__}: {err.strerror or err})")
    return problems


def _probe_nodes(ray, nodes, *, out: Path, paths: dict) -> None:
    """Run :func:`probe_paths` once on every node; refuse the folders when a node cannot use them."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    probe = out / PROBE_FILE
    probe.write_text(token)
    remote = ray.remote(probe_paths)
    refs = [(n["NodeManagerAddress"], remote.options(
        num_cpus=0, runtime_env=_runtime_env(),
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
        probe=str(probe), token=token, **paths)) for n in nodes]
    problems = []
    try:
        for node, ref in refs:
            try:
                problems += [f"node {node} {p}" for p in ray.get(ref, timeout=300)]
            except ray.exceptions.RayError as err:  # no worker could start there, or it timed out
                problems.append(f"node {node} did not answer the probe ({_ray_error(ray, err)})")
    finally:
        probe.unlink(missing_ok=True)
    if problems:
        raise ValueError(f"Expected the grid folder, the data and the cache on a filesystem every Ray node sees "
                         f"and can write (a shared filesystem: NFS, Lustre ...); {'; '.join(problems)}. "
                         f"Received: out={str(out)!r}")


def _runtime_env() -> dict:
    return {"env_vars": {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}


def _capacity(ray, *, cpus, gpus) -> int:
    """How many runs the cluster can hold at once (for the running count)."""
    resources = ray.cluster_resources()
    slots = [resources.get("CPU", 0) / cpus] if cpus else []
    slots += [resources.get("GPU", 0) / gpus] if gpus else []
    return max(1, int(min(slots))) if slots else 1


def _ray_error(ray, err) -> str:
    cause = getattr(err, "cause", None) if isinstance(err, ray.exceptions.RayTaskError) else None
    if cause is not None:
        return _one_line(cause)
    return _one_line(err)


def _run_ray(function, jobs, labels, *, options, out, paths, counter, on_result) -> list[Outcome]:
    ray = _import_ray()
    cpus = options["cpus_per_run"] if options["cpus_per_run"] is not None else 1
    gpus = options["gpus_per_run"] or 0
    started = _connect(ray, options["ray_address"])
    try:
        nodes = _check_resources(ray, cpus=cpus, gpus=gpus)
        _probe_nodes(ray, nodes, out=out, paths=paths)
        remote = ray.remote(function).options(num_cpus=cpus, num_gpus=gpus, max_retries=options["max_retries"],
                                              retry_exceptions=False, runtime_env=_runtime_env())
        refs = {remote.remote(**job): index for index, job in enumerate(jobs)}
        capacity = _capacity(ray, cpus=cpus, gpus=gpus)
        outcomes: list[Outcome | None] = [None] * len(jobs)
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            index = refs[ready[0]]
            try:
                outcome = Outcome(labels[index], result=ray.get(ready[0]))
            except ray.exceptions.RayError as err:  # its own exception, or its worker died too often
                outcome = Outcome(labels[index], error=_ray_error(ray, err))
            outcomes[index] = outcome
            counter.finished(outcome, running=min(len(pending), capacity))
            if on_result:
                on_result(index, outcome)
        return outcomes
    finally:
        if started:
            ray.shutdown()

