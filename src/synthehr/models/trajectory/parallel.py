"""Sampling in several processes, one CPU thread each.

A sampling step is bound by reading the KV cache (one small matmul per row, head and layer), which one
core does at its own memory bandwidth; torch's intra-op threads barely help on such small matmuls, but
separate processes each stream their own cache.  The prompts are cut into tasks of `task_size`
consecutive prompts; every record draws from its own random stream, keyed by the run's seed and its
index in the run (sampler.record_uniforms), so the records do not depend on the number of workers or the
task size.  Few large tasks beat many small ones: each task ends with a tail in which its batch drains
and the per-step cost is spread over fewer and fewer rows.  Workers load the model from a saved folder
(safetensors + JSON, the same verified loader as `TrajectoryGenerator.load`), and send back token arrays
only; the caller receives the records in prompt order, one task at a time, so a stream to disk keeps
its bounded memory.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence

import numpy as np

from synthehr.models.trajectory.sampler import SampleStats

_WORKER_GEN = None  # the model each worker process loads once


def _init_worker(model_dir: str) -> None:
    import torch

    from synthehr.models.trajectory.generator import TrajectoryGenerator

    global _WORKER_GEN
    torch.set_num_threads(1)
    _WORKER_GEN = TrajectoryGenerator.load(model_dir)
    _WORKER_GEN.hyperparameters["threads"] = 1


def _run_task(job: tuple) -> tuple[int, list[np.ndarray], SampleStats]:
    task, prompts, ids, seed, kwargs = job
    out = _WORKER_GEN.sample_tokens(list(prompts), seed=seed, workers=1, record_ids=ids, **kwargs)
    return task, out, _WORKER_GEN.last_sample_stats_


def sample_in_processes(gen, prompts: Sequence[np.ndarray], *, workers: int, seed: int, task_size: int,
                        on_record: Callable[[int, np.ndarray], None], stats: SampleStats,
                        record_ids: np.ndarray | None = None, **kwargs) -> None:
    """Sample every prompt with `gen` in `workers` processes; `on_record(index, tokens)` gets each record,
    in prompt order.  `stats` receives the summed counts and the wall time of the whole run.  Prompt i
    draws from the random stream (seed, record_ids[i]) (default i)."""
    n = len(prompts)
    record_ids = np.arange(n, dtype=np.int64) if record_ids is None else np.asarray(record_ids, np.int64)
    starts = list(range(0, n, task_size))
    t0 = time.perf_counter()
    stats.processes = min(workers, len(starts))
    with tempfile.TemporaryDirectory(prefix="synthehr-traj-workers-") as tmp:
        gen.save(tmp)
        jobs = ((t, prompts[a:a + task_size], record_ids[a:a + task_size], seed, kwargs) for t, a in enumerate(starts))
        ctx = mp.get_context("spawn")  # no fork of a process that holds torch threads
        with ProcessPoolExecutor(max_workers=stats.processes, mp_context=ctx,
                                 initializer=_init_worker, initargs=(tmp,)) as pool:
            for task, records, task_stats in pool.map(_run_task, jobs):
                for j, seq in enumerate(records):
                    on_record(starts[task] + j, seq)
                stats.add(task_stats)
    stats.seconds += time.perf_counter() - t0
