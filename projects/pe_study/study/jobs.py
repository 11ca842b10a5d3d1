"""The study's protocol, and its trainings as independent jobs run by a pool of
single-thread worker processes (see :mod:`projects.pe_study.study`).

Every (part, encoding, seed, training protocol) is one job; each result is
saved as its own JSON file as soon as it is done, so an interrupted run resumes
where it stopped (``resume=True``) and the parts share the CPUs evenly instead
of each owning one core.
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

from .digits import (
    CANVAS,
    TRAINING_PROTOCOLS,
    digits_canvases,
    size_key,
    train_digits,
)
from .segmentation import train_seg


@dataclasses.dataclass(frozen=True)
class StudyProtocol:
    """Everything that decides the study's numbers besides the code.

    Args:
        digits_seeds (tuple[int]): Seeds of every digits training.
        seg_seeds (tuple[int]): Seeds of every segmentation training.
        digits_epochs (int): Digits training epochs.
        seg_iters (int): Segmentation training iterations (batch 4).
        seg_num_train (int): Training images of the segmentation set.
        seg_num_val (int): Validation images of the segmentation set.
        training_protocols (tuple[str]): Digits training protocols
            (:data:`~projects.pe_study.study.digits.TRAINING_PROTOCOLS`).
        quick (bool): Smoke test: tiny digits model, two segmentation sizes.
    """
    digits_seeds: Tuple[int, ...]
    seg_seeds: Tuple[int, ...]
    digits_epochs: int
    seg_iters: int
    seg_num_train: int
    seg_num_val: int
    training_protocols: Tuple[str, ...] = TRAINING_PROTOCOLS
    quick: bool = False

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


#: The protocol of the published report, fixed from single-thread timings
#: before any new encoding's numbers were seen (``report.BUDGET_NOTE``).
FULL_PROTOCOL = StudyProtocol(digits_seeds=(0, 1), seg_seeds=(0, 1, 2), digits_epochs=6,
                              seg_iters=450, seg_num_train=192, seg_num_val=64)
#: ``--quick``: a smoke test of every piece (numbers meaningless).
QUICK_PROTOCOL = StudyProtocol(digits_seeds=(0, ), seg_seeds=(0, ), digits_epochs=1,
                               seg_iters=2, seg_num_train=8, seg_num_val=4, quick=True)


#: CPU seconds of one job at one thread, as measured to size the protocol
#: (``report.BUDGET_NOTE`` says how): digits ``(per training epoch, evaluation)``,
#: segmentation ``(per iteration, runner builds + evaluation at the four sizes)``.
#: Encodings measured with others' code are keyed by the rows' names.
MEASURED_DIGITS_CPU_S: Dict[str, Tuple[float, float]] = {
    'APE': (1.27, 7.3),
    'sin-cos': (1.27, 7.3),
    'RoPE axial': (1.47, 8.6),
    'RoPE mixed': (1.64, 9.2),
    'CoPE': (2.01, 81.1),
    'PEG': (1.26, 5.8),
    'PEG+GAP': (1.05, 5.8),
    'SaPE2 query': (2.55, 12.5),
    'SaPE2 key': (2.14, 12.6),
    'SaPE2+APE': (2.37, 12.4),
    'LookHere': (1.25, 16.6),
    'RoPE normalised': (1.45, 6.9),
    'SaPE2 qrel lookup': (2.21, 10.7),
    'SaPE2 qrel distance': (2.43, 12.9),
    'SaPE2 qrel lookup+APE': (1.96, 10.9),
    'SaPE2 qrel distance+APE': (2.42, 13.9),
    'SaPE2 qrel lookup+PEG': (2.11, 11.8),
    'SaPE2 qrel distance+PEG': (2.51, 13.5),
    'none': (1.27, 6.0),
}
MEASURED_SEG_CPU_S: Dict[str, Tuple[float, float]] = {
    'APE': (0.157, 18.),
    'RoPE mixed': (0.183, 18.),
    'PEG': (0.155, 17.),
    'SaPE2 query': (0.208, 22.),
    'SaPE2+APE': (0.21, 22.),
    'LookHere': (0.17, 30.),
    'RoPE normalised': (0.18, 18.),
    'SaPE2 qrel lookup': (0.178, 20.),
    'SaPE2 qrel distance': (0.236, 22.),
    'SaPE2 qrel lookup+APE': (0.18, 20.),
    'SaPE2 qrel distance+APE': (0.236, 23.),
    'SaPE2 qrel lookup+PEG': (0.19, 21.),
    'SaPE2 qrel distance+PEG': (0.245, 22.),
    'none': (0.16, 16.),
}


def estimate_cpu_s(job: 'Job', protocol: 'StudyProtocol') -> float:
    """A job's CPU seconds from the measured costs; an encoding not measured
    costs as much as the dearest one measured (a conservative plan)."""
    if job.part == 'digits':
        table, amount = MEASURED_DIGITS_CPU_S, protocol.digits_epochs
    else:
        table, amount = MEASURED_SEG_CPU_S, protocol.seg_iters
    if job.encoding in table:
        rate, fixed = table[job.encoding]
    else:
        rate, fixed = max(table.values(), key=lambda cost: cost[0] * amount + cost[1])
    return rate * amount + fixed


def estimate_wall_s(jobs: Sequence['Job'], protocol: 'StudyProtocol', workers: int) -> float:
    """Wall time of ``jobs`` on ``workers`` processes as :func:`run_jobs` runs
    them (longest first, each to the first free worker), plus the workers' start."""
    loads = [20.] * max(1, workers)  # interpreter, torch and toolbox imports
    for cost in sorted((estimate_cpu_s(job, protocol) for job in jobs), reverse=True):
        loads[loads.index(min(loads))] += cost
    return max(loads)


@dataclasses.dataclass(frozen=True)
class Job:
    """One training and its measurements."""
    part: str  # 'digits' or 'seg'
    encoding: str
    seed: int
    training: str = 'centred'  # digits training protocol

    @property
    def key(self) -> str:
        """A file-name-safe name, unique within a study."""
        slug = self.encoding.replace(' ', '_').replace('+', 'p')
        return f'{self.part}_{self.training}_{slug}_s{self.seed}'


def plan_jobs(protocol: StudyProtocol, digits_encodings: Sequence[str],
              seg_encodings: Sequence[str]) -> List[Job]:
    """Segmentation jobs first (they are the longest, so the pool ends evenly),
    seed by seed; then digits, seed by seed."""
    jobs = [Job('seg', name, seed) for seed in protocol.seg_seeds for name in seg_encodings]
    jobs += [Job('digits', name, seed, training) for seed in protocol.digits_seeds
             for training in protocol.training_protocols for name in digits_encodings]
    return jobs


def run_job(job: Job, protocol: StudyProtocol, paths: Dict[str, str]) -> dict:
    """Train and measure one job (in this process, one thread).

    Args:
        job (Job): What to run.
        protocol (StudyProtocol): Epochs / iterations / quick.
        paths (dict): ``root`` (repository), ``work_dir`` (segmentation runner
            folders) and ``seg_data`` (the segmentation set's folder).
    """
    torch.set_num_threads(1)
    if job.part == 'digits':
        return train_digits(job.encoding, job.seed, protocol.digits_epochs, protocol.quick,
                            digits_canvases(), job.training)
    if job.part == 'seg':
        return train_seg(job.encoding, job.seed, protocol.seg_iters,
                         osp.join(paths['work_dir'], 'seg'), protocol.quick, paths['root'],
                         paths['seg_data'])
    raise ValueError(f'job part {job.part!r} is not digits or seg.')


def _single_thread_worker() -> None:
    torch.set_num_threads(1)


def run_jobs(jobs: Sequence[Job], protocol: StudyProtocol, paths: Dict[str, str],
             results_dir: str, workers: int = 2, resume: bool = False,
             log: Callable[[str], None] = print) -> Tuple[List[dict], List[str]]:
    """Run ``jobs`` with ``workers`` single-thread processes (``workers=1``: in
    this process), saving each result as ``<results_dir>/<job.key>.json``.

    With ``resume``, a job whose saved result was made under the same protocol
    is not run again.

    Jobs start longest first (:func:`estimate_cpu_s`), so that the workers
    finish together.

    Returns:
        tuple[list[dict], list[str]]: The results in ``jobs`` order (finished
        jobs only) and one line per failed job.
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
        _dump(dict(protocol=settings, result=result),
              osp.join(results_dir, f'{job.key}.json'))
        log(f'[{len(results) + len(failures)}/{len(jobs)}] {job.key}: '
            f'{_summary(job, result)} ({result["total_s"]:.0f} s, '
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
    return [results[job] for job in jobs if job in results], failures


def _summary(job: Job, result: dict) -> str:
    if job.part == 'digits':
        native = size_key((CANVAS, CANVAS))
        return f'top-1 {result["acc"][native]:.1f} at {native}'
    miou = [f'{row["value"]:.1f}' for row in result['sweep'] if row['metric'] == 'mIoU']
    return f'mIoU {" / ".join(miou)} at 1x..'


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
