"""Progress lines for long work (training, sampling): done/total, rate, elapsed, ETA.

Built on tqdm. On a terminal it is one live bar; when the output is not a
terminal (CI logs, `nohup ... > log`) it writes one plain line per update,
with the same figures, so logs stay readable.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

from tqdm import tqdm

BAR_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}"


class Progress:
    """Progress of `total` units of work, reported through `log` (plain lines) or a tqdm bar.

    `update(n, status)` adds n done units and shows `status` (e.g. the loss);
    `write(text)` prints a line without breaking the bar; `close()` ends it.
    `initial` units were done before (a resumed job): the rate counts only
    this process's work. `unit` is shown after the rate ("crystal-steps/s");
    `unit_scale` writes large counts with k/M suffixes.
    """

    def __init__(self, total: int, desc: str, unit: str = "it", log: Callable[[str], None] = print,
                 initial: int = 0, unit_scale: bool = False):
        self.total, self.desc, self.unit, self.log = total, desc, " " + unit, log
        self.unit_scale = unit_scale
        self.done, self.initial, self.start = initial, initial, time.perf_counter()
        self.terminal = log is print and sys.stdout.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=self.unit, unit_scale=unit_scale,
                        bar_format=None if self.terminal else BAR_FORMAT,
                        disable=not self.terminal, dynamic_ncols=True)

    def update(self, n: int, status: str = "") -> None:
        self.done += n
        if self.terminal:
            self.bar.set_postfix_str(status, refresh=False)
            self.bar.update(n)
            return
        line = tqdm.format_meter(self.done, self.total, time.perf_counter() - self.start,
                                 prefix=self.desc, unit=self.unit, unit_scale=self.unit_scale,
                                 bar_format=BAR_FORMAT, postfix=status or None,
                                 initial=self.initial)
        self.log(line)

    def write(self, text: str) -> None:
        (self.bar.write if self.terminal else self.log)(text)

    def close(self) -> None:
        self.bar.close()


def format_duration(seconds: float) -> str:
    """`1h02m`, `3m07s`: a compact duration for summaries."""
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
