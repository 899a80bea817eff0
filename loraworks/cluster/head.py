"""The head's side of the cluster: start or join Ray, deploy the generator, send jobs.

`Cluster.generate` has `generate`'s signature, so the server's queue runs it unchanged: the
request is resolved into a job here (records, defaults, seed), sent to the deployment with its
stack as the multiplexed id, its steps relayed to `progress`, and the images it returns saved
and recorded in the gallery here, by the head alone; a replica lost mid-job (its process or
node died) means the job runs again, once, on another replica: the same seed draws the same
pixels, and since only the head saves, nothing is doubled.

Ray is imported when a `Cluster` is made; without the `cluster` extra that is `RayMissing`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from loraworks.cluster.errors import ClusterError, RayMissing
from loraworks.cluster.jobs import Job, JobResult, JobStep, resolve_job
from loraworks.cluster.worker import ReplicaStats, WorkerSettings
from loraworks.generation.api import GenerateResult
from loraworks.generation.errors import GenerationCancelled, GenerationError
from loraworks.generation.events import CancelFlag, ProgressCallback
from loraworks.generation.request import GenerateRequest
from loraworks.models import ModelManager

COUNTS = ("jobs_waiting_for_replica", "jobs_running", "jobs_retried", "replicas_lost")
log = logging.getLogger("loraworks.cluster")


def import_ray() -> tuple[Any, Any]:
    """`ray` and `ray.serve`, or `RayMissing` naming the extra."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise RayMissing(str(exc)) from None
    return ray, serve


@dataclass(frozen=True)
class ClusterOptions:
    """`loraworks serve --cluster …` (docs/cluster.md)."""

    address: str | None = None  # None: start a local Ray cluster in this process
    app: str = "loraworks"  # the Serve application: one per head on a shared Ray cluster
    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas instead of `replicas`
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    affinity: bool = True  # False: no multiplexed id (the benchmark's baseline)

    @property
    def threads(self) -> int:
        """Torch threads per replica: its CPUs, at least one."""
        return max(1, math.ceil(self.cpus_per_replica))

    @property
    def most_replicas(self) -> int:
        return self.autoscale[1] if self.autoscale else self.replicas


class Cluster:
    def __init__(self, manager: ModelManager, options: ClusterOptions):
        self._ray, self._serve = import_ray()
        self.manager, self.options = manager, options
        self.settings = manager.config.cluster
        self._lock = threading.Lock()
        self._stats: dict[str, ReplicaStats] = {}
        #: jobs_waiting_for_replica, jobs_running (now); jobs_retried, replicas_lost (so far)
        self._counts: Counter[str] = Counter()
        self._busy: Counter[str] = Counter()  # replica id -> jobs streaming from it now
        self._started_ray = False
        self.handle: Any = None

    @property
    def concurrency(self) -> int:
        """How many jobs the head keeps sent: about half of what the replicas hold, so Ray's
        router has room to send a job where its stack is patched (a replica takes up to
        `max_ongoing_requests`) instead of to the one slot that just freed; with two replicas
        neither idles while the other has room (docs/cluster.md, "Affinity")."""
        per_replica = (self.settings.max_ongoing_requests + 1) // 2
        return self.options.most_replicas * per_replica

    # --- life ------------------------------------------------------------------------------

    def start(self) -> None:
        """Join (or start) Ray and deploy the generator without waiting for its replicas: a
        job waits for one (`[cluster] ready_timeout_s`), the server starts at once."""
        from loraworks.cluster.deployment import Generator

        ray, serve = self._ray, self._serve
        o = self.options
        if not ray.is_initialized():
            local = (
                {}
                if o.address
                else {"num_cpus": max(1, round(o.most_replicas * o.cpus_per_replica))}
            )
            ray.init(
                address=o.address,
                namespace="loraworks",
                include_dashboard=False,
                logging_level=logging.WARNING,
                **local,
            )
            self._started_ray = True
        serve.start(proxy_location="Disabled")
        scale: dict[str, Any] = (
            {"autoscaling_config": {"min_replicas": o.autoscale[0], "max_replicas": o.autoscale[1]}}
            if o.autoscale
            else {"num_replicas": o.replicas}
        )
        app = Generator.options(
            max_ongoing_requests=self.settings.max_ongoing_requests,
            ray_actor_options={"num_cpus": o.cpus_per_replica, "num_gpus": o.gpus_per_replica},
            **scale,
        ).bind(
            WorkerSettings(
                self.manager.config.model_copy(update={"cluster": self.settings}),
                self.manager.paths.cache,
                o.threads,
            ),
            self.settings.max_ongoing_requests,
        )
        [self.handle] = serve.run_many(
            [serve.api.RunTarget(app, name=o.app, route_prefix=None)],
            wait_for_ingress_deployment_creation=False,
            wait_for_applications_running=False,
        )

    def shutdown(self) -> None:
        """Remove the deployment; stop Ray when this process started it."""
        try:
            if self.handle is not None:
                self._serve.delete(self.options.app)
        finally:
            if self._started_ray:
                self._ray.shutdown()

    # --- jobs ------------------------------------------------------------------------------

    def generate(
        self,
        request: GenerateRequest,
        *,
        manager: ModelManager,
        progress: ProgressCallback | None = None,
        cancel: CancelFlag | None = None,
    ) -> GenerateResult:
        """`generate` on the cluster: same arguments, same result, the same pixels."""
        result = self.run(resolve_job(request, manager), progress, cancel or threading.Event())
        out = GenerateResult([], result.warnings, {})
        for item in result.images:
            out.keep(manager, item.image, item.recipe)
        return out

    def run(self, job: Job, progress: ProgressCallback | None, cancel: CancelFlag) -> JobResult:
        """`job` on some replica; once more on another when the first one is lost."""
        for attempt in (1, 2):
            self._wait_ready(cancel)
            replica: list[str] = []
            try:
                return self._attempt(job, progress, cancel, replica)
            except self._ray.exceptions.RayActorError as exc:
                with self._lock:
                    self._counts["replicas_lost"] += 1
                    for lost in replica:
                        self._stats.pop(lost, None)
                if attempt == 2:
                    raise ClusterError(
                        f"the replica running this job was lost twice ({type(exc).__name__}); "
                        "see `ray status` and the replicas' logs"
                    ) from None
                log.warning("replica %s lost mid-job; running the job again", replica)
                with self._lock:
                    self._counts["jobs_retried"] += 1
        raise AssertionError("unreachable")

    def _attempt(
        self, job: Job, progress: ProgressCallback | None, cancel: CancelFlag, replica: list[str]
    ) -> JobResult:
        options: dict[str, Any] = {"stream": True}
        if self.options.affinity:
            options["multiplexed_model_id"] = job.stack_id
        response = self.handle.options(**options).run.remote(job)
        done = threading.Event()

        def watch() -> None:  # cancel reaches the replica as a cancelled request
            while not done.wait(0.1):
                if cancel.is_set():
                    response.cancel()
                    return

        threading.Thread(target=watch, name="loraworks-cluster-cancel", daemon=True).start()
        with self._counting("jobs_running"):
            try:
                for item in response:
                    if not isinstance(item, JobStep):
                        return self._finish(item)
                    if not replica:
                        replica.append(item.replica)
                        self._busy[item.replica] += 1
                    if progress is not None:
                        progress(item.event)
            except self._serve.exceptions.RequestCancelledError:
                raise GenerationCancelled("generation cancelled") from None
            finally:
                done.set()
                with self._lock:
                    self._busy.subtract(replica)
        raise ClusterError("the replica ended the job without a result")

    def _finish(self, item: Any) -> JobResult:
        from loraworks.cluster.deployment import JobFailed

        if isinstance(item, JobFailed):
            self._record(item.stats)
            if item.kind == "cancelled":
                raise GenerationCancelled(item.message)
            raise GenerationError(item.message)
        result, stats = item
        self._record(stats)
        return result

    def _record(self, stats: ReplicaStats) -> None:
        with self._lock:
            self._stats[stats.id] = stats

    def _ready_replicas(self) -> int:
        from loraworks.cluster.deployment import DEPLOYMENT

        app = self._serve.status().applications.get(self.options.app)
        deployment = app.deployments.get(DEPLOYMENT) if app else None
        return deployment.replica_states.get("RUNNING", 0) if deployment else 0

    def _wait_ready(self, cancel: CancelFlag) -> None:
        """Return once a replica runs; `ClusterError` after `[cluster] ready_timeout_s`."""
        timeout = self.settings.ready_timeout_s
        deadline = time.monotonic() + timeout
        with self._counting("jobs_waiting_for_replica"):
            while self._ready_replicas() == 0:
                if cancel.is_set():
                    raise GenerationCancelled("generation cancelled")
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"no generation replica became ready within {timeout:g} s ([cluster] "
                        "ready_timeout_s in config.toml); GET /api/cluster and `ray status` show "
                        "what the cluster has (a GPU per replica asked for but none free?)"
                    )
                time.sleep(0.25)

    @contextmanager
    def _counting(self, what: str) -> Iterator[None]:
        with self._lock:
            self._counts[what] += 1
        try:
            yield
        finally:
            with self._lock:
                self._counts[what] -= 1

    # --- GET /api/cluster ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The cluster as the head knows it: each replica as of its last job."""
        try:
            ready = self._ready_replicas()
        except Exception as exc:  # the Serve controller unreachable: say so, keep serving
            log.warning("cannot read the Serve status: %s", exc)
            ready = None
        o = self.options
        with self._lock:
            replicas = [asdict(s) for s in sorted(self._stats.values(), key=lambda s: s.id)]
            return {
                "address": o.address or "local",
                "affinity": o.affinity,
                "replicas_ready": ready,
                "replicas_wanted": list(o.autoscale) if o.autoscale else o.replicas,
                **{key: self._counts[key] for key in COUNTS},
                "replicas_busy": sorted(key for key, n in self._busy.items() if n > 0),
                "replicas": replicas,
            }
