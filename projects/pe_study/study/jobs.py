"""The study's protocol, and its trainings as independent jobs run by a pool of
single-thread worker processes.

Every (row, seed) is one job; each result is saved as its own JSON file as soon
as it is done, so an interrupted run resumes where it stopped (``resume=True``),
and the workers share the CPUs evenly.
"""
import dataclasses
import json
import multiprocessing
import os
import os.path as osp
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .segmentation import mean_iou, shared_init_checkpoint, train_seg


@dataclasses.dataclass(frozen=True)
class StudyProtocol:
    """Everything that decides the study's numbers besides the code.

    Args:
        seeds (tuple[int]): Seeds of every row (paired: see :mod:`.segmentation`).
        seg_iters (int): Training iterations (batch 8).
        seg_num_train (int): Training images.
        seg_num_resized (int): 1x validation images of the resized evaluation.
        seg_num_probe (int): Validation images of the translation and attention
            measurements.
        quick (bool): Smoke test: few images and evaluations.
    """
    seeds: Tuple[int, ...]
    seg_iters: int
    seg_num_train: int
    seg_num_resized: int
    seg_num_probe: int
    quick: bool = False

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


#: The protocol of the published report (``report.PROTOCOL_NOTE`` says how it was fixed).
FULL_PROTOCOL = StudyProtocol(seeds=(0, 1, 2, 3, 4), seg_iters=1500, seg_num_train=1000,
                              seg_num_resized=50, seg_num_probe=50)
#: ``--quick``: a smoke test of every piece (numbers meaningless).
QUICK_PROTOCOL = StudyProtocol(seeds=(0, ), seg_iters=2, seg_num_train=8, seg_num_resized=2,
                               seg_num_probe=2, quick=True)

#: CPU seconds of one job at one thread, measured by the baselines' calibration run
#: (``projects/pe_study/README.md``, "Calibration"; load average 3-6 on the 2 cores):
#: per training iteration, and everything else (runner build, evaluations, probes).
#: The planner's estimates; a row not measured costs as much as the dearest one.
MEASURED_CPU_S: Dict[str, Tuple[float, float]] = {
    'PEG': (0.085, 13.),
    'APE': (0.083, 14.),
    'RoPE mixed': (0.102, 17.),
    'RoPE normalised': (0.096, 15.),
    'none': (0.082, 14.),
}


def estimate_cpu_s(job: 'Job', protocol: StudyProtocol) -> float:
    """A job's CPU seconds from the measured costs."""
    rate, fixed = MEASURED_CPU_S.get(
        job.row, max(MEASURED_CPU_S.values(), key=lambda c: c[0] * protocol.seg_iters + c[1]))
    return rate * protocol.seg_iters + fixed


def estimate_wall_s(jobs: Sequence['Job'], protocol: StudyProtocol, workers: int) -> float:
    """Wall time of ``jobs`` on ``workers`` processes, from the measured costs."""
    return schedule_wall_s([estimate_cpu_s(job, protocol) for job in jobs], workers)


def schedule_wall_s(costs: Sequence[float], workers: int) -> float:
    """Wall time of jobs of these CPU seconds on ``workers`` single-thread
    processes as :func:`run_jobs` runs them (longest first, each to the first
    free worker), plus the workers' start."""
    loads = [20.] * max(1, workers)  # interpreter, torch and toolbox imports
    for cost in sorted(costs, reverse=True):
        loads[loads.index(min(loads))] += cost
    return max(loads)


@dataclasses.dataclass(frozen=True)
class Job:
    """One training and its measurements."""
    row: str
    seed: int

    @property
    def key(self) -> str:
        """A file-name-safe name, unique within a study."""
        slug = self.row.replace(' ', '_').replace('+', 'p').replace(',', '').replace('=', '')
        return f'seg_{slug}_s{self.seed}'


def plan_jobs(protocol: StudyProtocol, rows: Sequence[str]) -> List[Job]:
    """Seed by seed, every row."""
    return [Job(row, seed) for seed in protocol.seeds for row in rows]


def prepare_inits(protocol: StudyProtocol, work_dir: str) -> Dict[int, str]:
    """The shared initial weights of every seed (made here, before the workers
    start, so that no two of them write one file)."""
    return {seed: shared_init_checkpoint(seed, osp.join(work_dir, 'init', f'seed{seed}.pth'))
            for seed in protocol.seeds}


def run_job(job: Job, protocol: StudyProtocol, paths: Dict[str, str]) -> dict:
    """Train and measure one job (in this process, one thread).

    Args:
        job (Job): What to run.
        protocol (StudyProtocol): Iterations, image counts, quick.
        paths (dict): ``work_dir`` (runner folders), ``data`` (the study set),
            ``init`` (a JSON object: seed -> shared initial weights).
    """
    torch.set_num_threads(1)
    inits = json.loads(paths['init'])
    return train_seg(job.row, job.seed, protocol, osp.join(paths['work_dir'], 'seg'),
                     paths['data'], inits.get(str(job.seed)))


def _single_thread_worker() -> None:
    torch.set_num_threads(1)


def run_jobs(jobs: Sequence[Job], protocol: StudyProtocol, paths: Dict[str, str],
             results_dir: str, workers: int = 2, resume: bool = False,
             log: Callable[[str], None] = print) -> Tuple[List[dict], List[str], int]:
    """Run ``jobs`` with ``workers`` single-thread processes (``workers=1``: in
    this process), saving each result as ``<results_dir>/<job.key>.json``.

    With ``resume``, a job whose saved result was made under the same protocol
    is not run again. Jobs start longest first (:func:`estimate_cpu_s`), so
    that the workers finish together.

    Returns:
        tuple[list[dict], list[str], int]: The results in ``jobs`` order
        (finished jobs only), one line per failed job, and how many results
        were reused instead of run.
    """
    os.makedirs(results_dir, exist_ok=True)
    settings = json.loads(json.dumps(protocol.as_dict()))  # as saved: lists, not tuples
    results: Dict[Job, dict] = {}
    todo = []
    for job in jobs:
        saved = _load(osp.join(results_dir, f'{job.key}.json')) if resume else None
        if saved is not None and saved.get('protocol') == settings:
            results[job] = saved['result']
        else:
            todo.append(job)
    todo.sort(key=lambda job: -estimate_cpu_s(job, protocol))  # stable: plan order on ties
    if len(todo) < len(jobs):
        log(f'resuming: {len(jobs) - len(todo)} of {len(jobs)} jobs already done')
    failures, start = [], time.time()

    def finish(job: Job, result: Optional[dict], error: Optional[BaseException]) -> None:
        if error is not None:
            failures.append(f'{job.key}: {type(error).__name__}: {error}')
            log(f'[{len(results) + len(failures)}/{len(jobs)}] {job.key} FAILED: {error}')
            return
        results[job] = result
        _dump(dict(protocol=settings, result=result), osp.join(results_dir, f'{job.key}.json'))
        miou = [mean_iou(result, 'pad', s) for s in (1.0, 2.0, 3.0)]
        shown = ' / '.join('-' if v is None else f'{v:.1f}' for v in miou)
        log(f'[{len(results) + len(failures)}/{len(jobs)}] {job.key}: mIoU {shown} at '
            f'1x / 2x / 3x padded ({result["total_s"]:.0f} s, '
            f'{(time.time() - start) / 60:.1f} min elapsed)')

    if workers <= 1:
        for job in todo:
            try:
                finish(job, run_job(job, protocol, paths), None)
            except Exception as error:  # noqa: BLE001 - reported, the other jobs go on
                finish(job, None, error)
    else:
        # spawn: fresh interpreters, no torch / MMEngine state copied from here.
        context = multiprocessing.get_context('spawn')
        with ProcessPoolExecutor(workers, mp_context=context,
                                 initializer=_single_thread_worker) as pool:
            futures = {pool.submit(run_job, job, protocol, paths): job for job in todo}
            for future in as_completed(futures):
                error = future.exception()
                finish(futures[future], None if error else future.result(), error)
    reused = len(jobs) - len(todo)
    return [results[job] for job in jobs if job in results], failures, reused


def _load(path: str) -> Optional[dict]:
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def _dump(obj, path: str) -> None:
    with open(path + '.tmp', 'w') as file:
        json.dump(obj, file, indent=1)
    os.replace(path + '.tmp', path)
