"""A cohort's cases on a Ray cluster: one actor per GPU (or per CPU slot), each holding the loaded model.

Ray is an extra (``pip install abdoseg[cluster]``), imported only here. Every node must see the inputs, the
output root and the model bundle at the same paths (shared storage), and have AbdoSeg installed. Each actor is a
``work.CaseWorker``, as a local worker is, so that a case gives the same files either way; the driver keeps the
table. An actor that dies (a crash, a node lost, Ray's out-of-memory killer) fails the case it held and is
replaced. On Ctrl-C the actors are killed: the hidden staging folders of their unfinished cases are removed by
the next run that segments those cases.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from ..errors import AbdoSegError
from ..io.image_files import first_line
from ..model.bundle import ModelBundle
from ..run_case import CaseOptions
from .inputs import Case
from .work import CaseWorker, Finished, Recovered, Started, failed_row

CPU_SLOT = 4
"""CPUs per actor on a cluster without GPUs, when ``--workers`` does not say how many actors to start."""


def import_ray():
    """The ``ray`` module, or an AbdoSegError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise AbdoSegError("--ray needs Ray, which is not installed here; install it with: pip install abdoseg[cluster]") from None
    return ray


def actor_plan(nodes: list[tuple[float, float]], device: str, workers: int | None) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) for a cluster whose live nodes have ``nodes`` (CPUs, GPUs).

    With GPUs (unless ``device`` is cpu): one actor per GPU, or ``workers`` actors sharing them, each with the CPUs
    that go with a GPU on the GPU node that has the fewest. Without: ``workers`` actors (at most one per CPU), or one
    per ``CPU_SLOT`` CPUs, each with an equal share of the CPUs, no more than the largest node has.
    """
    cpus = max(1.0, sum(node[0] for node in nodes))
    gpus = sum(node[1] for node in nodes) if device != "cpu" else 0.0
    if gpus >= 1:
        count = workers or int(gpus)
        per_gpu = min(node[0] / node[1] for node in nodes if node[1] > 0)
        share = min(1.0, gpus / count)
        return count, float(max(1, int(per_gpu * share))), share
    count = min(workers, int(cpus)) if workers else max(1, int(cpus // CPU_SLOT))
    largest = max(node[0] for node in nodes) if nodes else 1.0
    return count, float(max(1, min(int(cpus // count), int(largest)))), 0.0


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[None]:
    """Connected to the Ray cluster at ``address`` ("auto": the one ``ray start`` runs on this machine, or RAY_ADDRESS;
    else HOST:PORT or ray://HOST:PORT) within the block; a connection this process made before (``ray.init``) is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise AbdoSegError(f"cannot connect to a Ray cluster at {address!r} ({first_line(error)}); start one with "
                           f"'ray start --head', or give its address (--ray HOST:PORT).") from None
    try:
        yield
    finally:
        ray.shutdown()


def run_on_ray(cases: list[Case], root: Path, bundle: ModelBundle, options: CaseOptions, workers: int | None,
               started: Started, finished: Finished, recovered: Recovered) -> None:
    """Segment ``cases`` with actors on the Ray cluster this process is connected to (``ray_session``)."""
    if not cases:
        return
    ray = import_ray()
    nodes = [(node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0)) for node in ray.nodes() if node.get("Alive")]
    count, cpus, gpus = actor_plan(nodes, options.device, workers)
    actor_options = replace(options, device="cuda" if gpus else "cpu")  # Ray shows an actor only the GPU it holds
    remote = ray.remote(CaseWorker).options(num_cpus=cpus, num_gpus=gpus)
    _dispatch(ray, lambda: remote.remote(str(bundle.path), actor_options, int(cpus)), min(count, len(cases)),
              deque(cases), root, bundle, started, finished, recovered)


def _dispatch(ray, new_actor, count: int, todo: deque, root: Path, bundle: ModelBundle, started: Started, finished: Finished,
              recovered: Recovered) -> None:
    """Give each of ``count`` actors one case at a time until ``todo`` is empty; an actor's first call checks that
    it loaded the same model file as this process."""
    from ray.exceptions import RayActorError, RayError

    pending: dict = {}  # ObjectRef -> (actor, its case, or None for the model check)
    actors = []

    def start_actor() -> None:
        actor = new_actor()
        actors.append(actor)
        pending[actor.model_sha256.remote()] = (actor, None)

    try:
        for _ in range(count):
            start_actor()
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            actor, case = pending.pop(ref)
            try:
                value = ray.get(ref)
            except RayError as error:
                if case is None:
                    raise AbdoSegError(f"a Ray worker could not load the model {bundle.path}: {_reason(error)}") from None
                dead = isinstance(error, RayActorError)
                finished(recovered(case) or failed_row(
                    case, f"the Ray worker segmenting {case.input} {'died' if dead else 'failed'} ({_reason(error)}); "
                          f"nothing was written for this case.", bundle))
                if dead:
                    start_actor()
                    continue
            else:
                if case is None and value != bundle.sha256:
                    raise AbdoSegError(f"a Ray worker read another file at {bundle.path} (SHA-256 {value[:12]}, here "
                                       f"{bundle.sha256[:12]}); the nodes must share one model bundle.")
                if case is not None:
                    finished(value)
            if todo:
                case = todo.popleft()
                started(case)
                pending[actor.run.remote(case, root)] = (actor, case)
    finally:
        for actor in actors:
            ray.kill(actor)


def _reason(error: Exception) -> str:
    """The informative line of a Ray error (its message repeats the traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if line.startswith(("abdoseg", "AbdoSegError")) or "Error:" in line]
    return (useful[-1] if useful else lines[0] if lines else type(error).__name__)[:240].rstrip(".")
