"""``medseg segment --engine ray``: segment thousands of volumes on a Ray cluster (or a local Ray), resumably.

Each worker is a Ray actor that loads the model once and segments cases with ``segment.segment_case``, two at
a time so that reading, preparing, resampling and writing one overlaps the network's work on the other.
``OUT/manifest.csv`` records every case as it finishes (input, outputs, status, seconds, error, the outputs' and
the model's SHA-256, the worker's peak memory); a second run skips the cases whose outputs that model already
wrote. A case whose input cannot be read fails alone; a worker process that dies (killed, out of memory) is
restarted by Ray and its cases run again, their outputs written atomically under their final names once.

Inputs, outputs and the model file are read and written by the workers themselves, so on a cluster of several
machines they must lie on a file system that every node mounts at the same path.
"""

from __future__ import annotations

import csv
import hashlib
import io
import resource
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline.errors import InputError, MedsegError
from pipeline.files import file_digest, write_text
from pipeline.inference.segment import Source, check_format, find_sources, open_model, output_paths, segment_case
from pipeline.networks.model import load_model

MANIFEST = "manifest.csv"
# worker_peak_mib: the peak resident memory of the worker process that ran the case, up to its end
COLUMNS = ("input", "output", "status", "seconds", "error", "output_sha256", "model_sha256", "tta", "worker_peak_mib")
FINISHED = ("done", "skipped")
CASES_PER_WORKER = 2  # in flight per worker: one in the network while the other is read, resampled or written
TASK_RETRIES = 2  # a case whose worker died this many times more (it may be what kills it) is failed
MANIFEST_INTERVAL_S = 1.0  # the manifest is rewritten whole: at most this often while cases finish


@dataclass(frozen=True)
class Options:
    """What each case writes (as for ``medseg segment``)."""

    output_format: str = "nifti"
    tta: bool = False
    probabilities: bool = False


@dataclass(frozen=True)
class Cluster:
    """Where the workers run: ``address`` None starts a Ray on this machine, ``auto`` or ``ray://host:port``
    joins a running cluster; each of the ``workers`` has its CPU threads and (a share of) GPUs."""

    address: str | None = None
    workers: int = 2
    threads_per_worker: int = 1
    gpus_per_worker: float = 0


@dataclass
class Summary:
    """What a run did: counts by status, and the failed inputs with their reasons."""

    done: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    manifest: Path = Path(MANIFEST)


def model_digest(path: Path) -> str:
    """SHA-256 of a model file, or of a bundle folder's files (names and contents): what decides whether
    outputs already written came from the model of this run."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{item.relative_to(path)}\0{file_digest(item)}\n".encode())
    return digest.hexdigest()


def read_manifest(out_dir: Path) -> dict[tuple[str, str], dict[str, str]]:
    """The rows of an earlier run, by (input, output)."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return {}
    with open(path, newline="") as stream:
        return {(row["input"], row["output"]): row for row in csv.DictReader(stream)}


def write_manifest(out_dir: Path, rows: dict[tuple[str, str], dict[str, str]]) -> None:
    """Atomically, whole: a reader (or a run killed now) sees the previous manifest or this one."""
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows.values())
    write_text(Path(out_dir) / MANIFEST, text.getvalue())


def _names(paths: list[Path], out_dir: Path) -> str:
    return ";".join(str(Path(p).relative_to(out_dir)) for p in paths)


def is_finished(row: dict[str, str] | None, out_dir: Path, model_sha256: str | None, tta: bool = False) -> bool:
    """An earlier row whose outputs all exist (written atomically, so an existing file is whole), made with the
    same test-time augmentation (a manifest from before it was recorded: not), and by this model unless
    ``model_sha256`` is None (keep the outputs of any model)."""
    if row is None or row["status"] not in FINISHED or row.get("tta") != str(tta).lower():
        return False
    if model_sha256 is not None and row["model_sha256"] != model_sha256:
        return False
    return all((Path(out_dir) / name).is_file() for name in row["output"].split(";"))


class SegmentWorker:
    """One Ray actor: the model loaded once, then any number of cases (``segment``), two at a time."""

    def __init__(self, model_path: str, out_dir: str, options: Options, threads: int):
        import SimpleITK as sitk
        import torch

        # the worker's CPUs for the network and for ITK's resampling alike (ITK would take every core of the node)
        torch.set_num_threads(threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        self.model, self.out_dir, self.options = open_model(model_path), Path(out_dir), options
        self.network_lock = threading.Lock()

    def segment(self, source: Source) -> dict[str, str]:
        """The case's status, seconds, error and output digests; any error becomes a failed case naming the
        input, so that one bad file (or a library's unexpected exception on it) never stops the run."""
        start = time.perf_counter()
        try:
            options = self.options
            written = segment_case(
                source,
                self.out_dir,
                self.model,
                options.output_format,
                options.tta,
                options.probabilities,
                self.network_lock,
            )
            status, error, digests = "done", "", ";".join(file_digest(p) for p in written)
        except Exception as err:  # noqa: BLE001 (isolation is the point; the reason goes into the manifest)
            reason = str(err) if isinstance(err, MedsegError) else f"{err.__class__.__name__}: {err}"
            status, error, digests = "failed", _naming(source, reason), ""
        seconds = f"{time.perf_counter() - start:.2f}"
        return {"status": status, "seconds": seconds, "error": error, "output_sha256": digests, **_peak_memory()}


def _peak_memory() -> dict[str, str]:
    """What sizes a worker: Linux reports the high-water mark in KiB, macOS in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return {"worker_peak_mib": f"{peak:.0f}"}


def _naming(source: Source, reason: str) -> str:
    return reason if str(source.path) in reason else f"{source.path}: {reason}"


def _start_ray(cluster: Cluster):
    """Join the cluster at its address, or start a Ray on this machine with room for the workers asked for."""
    try:
        import ray
    except ImportError:
        raise InputError('--engine ray needs Ray: pip install -e ".[cluster]"') from None
    if cluster.address is None:
        # "local": a Ray of its own even where RAY_ADDRESS or an earlier `ray start` names a cluster; only paths
        # and manifest rows travel through its object store, so a small one will do
        cpus = cluster.workers * cluster.threads_per_worker
        ray.init(address="local", num_cpus=cpus, object_store_memory=200 * 2**20, include_dashboard=False)
    else:
        try:
            ray.init(address=cluster.address)
        except ConnectionError as err:
            raise InputError(f"--address {cluster.address}: no Ray cluster there ({err})") from None
    return ray


def _check_resources(ray, cluster: Cluster, workers: int) -> None:
    """Refuse workers that the cluster cannot hold: Ray would wait for them forever."""
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    if cpus < workers * cluster.threads_per_worker or gpus < workers * cluster.gpus_per_worker:
        raise InputError(
            f"{workers} workers of {cluster.threads_per_worker} CPUs and {cluster.gpus_per_worker:g} GPUs each"
            f" do not fit in the Ray cluster's {cpus:g} CPUs and {gpus:g} GPUs (ask for fewer: --workers)"
        )


def _run_cases(
    ray, todo: list[Source], worker_args: tuple, cluster: Cluster, workers: int
) -> Iterator[tuple[Source, dict]]:
    """Yield (source, result) as cases finish. Each worker has up to CASES_PER_WORKER cases in flight; a case
    whose worker process died past its retries comes back failed, and the others go on."""
    actor = ray.remote(SegmentWorker).options(
        num_cpus=cluster.threads_per_worker,
        num_gpus=cluster.gpus_per_worker,
        max_concurrency=CASES_PER_WORKER,
        max_restarts=-1,  # a dead worker always comes back; TASK_RETRIES bounds what one case may cost
        max_task_retries=TASK_RETRIES,
    )
    pool = [actor.remote(*worker_args) for _ in range(workers)]
    queue, pending = deque(todo), {}

    def submit(worker) -> None:
        if queue:
            source = queue.popleft()
            pending[worker.segment.remote(source)] = (worker, source)

    for worker in pool:
        for _ in range(CASES_PER_WORKER):
            submit(worker)
    while pending:  # the actors end when their handles go, with this generator
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        worker, source = pending.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as err:
            reason = f"its worker died {TASK_RETRIES + 1} times ({err.__class__.__name__})"
            result = {"status": "failed", "seconds": "", "error": _naming(source, reason), "output_sha256": ""}
        submit(worker)
        yield source, result


def _remove_partial_files(out_dir: Path) -> None:
    """A worker killed while writing leaves its temporary file (``files.atomic_path``); its case ran again."""
    for partial in Path(out_dir).rglob(".partial-*"):
        partial.unlink(missing_ok=True)


def segment_bulk(
    inputs: list[Path],
    out_dir: Path,
    model_path: Path | str,
    series: str | None = None,
    options: Options = Options(),
    cluster: Cluster = Cluster(),
    keep_other_models: bool = False,
) -> Summary:
    """Segment every input not yet finished (``is_finished``) on Ray workers, recording each case in
    OUT/manifest.csv. ``keep_other_models``: outputs that an earlier run wrote with another model count as
    finished (by default a changed model re-runs every case); outputs made with another TTA setting never do."""
    # absolute: workers start in folders of their own, and a resumed run may start in another
    out_dir = Path(out_dir).absolute()
    sources = find_sources([Path(path).absolute() for path in inputs], series)
    check_format(sources, options.output_format)
    model_path = Path(model_path).absolute()
    load_model(model_path)  # a model that cannot be loaded stops the run here, not in every worker
    model_sha256 = model_digest(model_path)
    outputs = {
        s: _names(output_paths(s, out_dir, options.output_format, options.probabilities), out_dir) for s in sources
    }
    rows = read_manifest(out_dir)
    summary, todo = Summary(manifest=out_dir / MANIFEST), []
    for source in sources:
        earlier = rows.get((str(source.path), outputs[source]))
        if is_finished(earlier, out_dir, None if keep_other_models else model_sha256, options.tta):
            rows[(str(source.path), outputs[source])] = {**earlier, "status": "skipped"}
            summary.skipped += 1
        else:
            todo.append(source)
    write_manifest(out_dir, rows)
    if not todo:
        return summary
    ray = _start_ray(cluster)
    try:
        workers = min(cluster.workers, len(todo))
        _check_resources(ray, cluster, workers)
        worker_args = (str(model_path), str(out_dir), options, cluster.threads_per_worker)
        results = _run_cases(ray, todo, worker_args, cluster, workers)
        with tqdm(total=len(sources), initial=summary.skipped, desc="segmenting", unit="case") as bar:
            last_write, start = time.monotonic(), time.monotonic()
            for source, result in results:
                row = {"input": str(source.path), "output": outputs[source], **result}
                row.update(model_sha256=model_sha256, tta=str(options.tta).lower())
                rows[(row["input"], row["output"])] = row
                _count(summary, row)
                bar.update()
                minutes = (time.monotonic() - start) / 60
                bar.set_postfix(failed=len(summary.failures), per_minute=f"{(bar.n - bar.initial) / minutes:.1f}")
                if time.monotonic() - last_write >= MANIFEST_INTERVAL_S:
                    write_manifest(out_dir, rows)
                    last_write = time.monotonic()
    finally:
        write_manifest(out_dir, rows)
        ray.shutdown()
    _remove_partial_files(out_dir)
    return summary


def _count(summary: Summary, row: dict[str, str]) -> None:
    if row["status"] == "done":
        summary.done += 1
    else:
        summary.failures.append((row["input"], row["error"]))
