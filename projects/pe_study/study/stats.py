"""Paired comparisons across seeds: what the study can and cannot decide.

Every row of the study is trained once per seed from the same initialisation of
the weights it shares with the other rows and on the same batches (see
:mod:`.segmentation`), so two rows are compared seed by seed: the differences
``d_s = a_s - b_s`` cancel what the seed does to both. The mean difference's 95%
confidence interval is ``mean(d) +- t(0.975, n-1) * sd(d) / sqrt(n)`` (Student's
t, ``n`` seeds); a comparison decides when the interval excludes 0.
"""
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

from scipy import stats as scipy_stats

#: Two-sided confidence of every interval in the report.
CONFIDENCE = 0.95


def t_quantile(dof: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student-t critical value with ``dof`` degrees of freedom."""
    return float(scipy_stats.t.ppf(0.5 + confidence / 2, dof))


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over paired seeds: ``mean``, the 95% ``half_width`` (None with
    one seed), the seeds' ``sd`` and their number ``n``."""
    mean: float
    sd: float
    n: int
    half_width: Optional[float]

    @property
    def decided(self) -> bool:
        """Whether the interval excludes 0."""
        return self.half_width is not None and abs(self.mean) > self.half_width

    @property
    def sign(self) -> str:
        """``'▲'`` (a above b), ``'▼'`` (below) or ``'~'`` (undecided)."""
        if not self.decided:
            return '~'
        return '▲' if self.mean > 0 else '▼'

    def format(self, digits: int = 1) -> str:
        """``'+2.3 ± 1.1 ▲'``; ``'+2.3 (1 seed)'`` without an interval."""
        if self.half_width is None:
            return f'{self.mean:+.{digits}f} (1 seed)'
        return f'{self.mean:+.{digits}f} ± {self.half_width:.{digits}f} {self.sign}'


def paired_difference(a: Dict[int, float], b: Dict[int, float]) -> Optional[PairedDifference]:
    """``a - b`` over the seeds both have (``{seed: value}``); None if none."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    n = len(diffs)
    mean = sum(diffs) / n
    if n == 1:
        return PairedDifference(mean, 0., 1, None)
    sd = math.sqrt(sum((d - mean)**2 for d in diffs) / (n - 1))
    return PairedDifference(mean, sd, n, t_quantile(n - 1) * sd / math.sqrt(n))


def mean_sd(values: Sequence[float]) -> str:
    """``'51.2 ± 3.4'`` (sample std over seeds); one value alone, without ±."""
    values = list(values)
    if not values:
        return 'n/a'
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f'{mean:.1f}'
    sd = math.sqrt(sum((v - mean)**2 for v in values) / (len(values) - 1))
    return f'{mean:.1f} ± {sd:.1f}'


def seeds_needed(sd: float, target: float, confidence: float = CONFIDENCE,
                 most: int = 1000) -> Optional[int]:
    """The fewest seeds whose interval half-width ``t(n-1) sd / sqrt(n)`` is at
    most ``target`` for paired differences of standard deviation ``sd`` (None
    beyond ``most``)."""
    if sd <= 0:
        return 2
    for n in range(2, most + 1):
        if t_quantile(n - 1, confidence) * sd / math.sqrt(n) <= target:
            return n
    return None
