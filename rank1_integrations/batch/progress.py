"""What a run tells its user: a progress bar while it judges, a summary when it ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rank1_integrations.batch.records import PairRecord

__all__ = ["Progress", "RunSummary"]


@dataclass
class RunSummary:
    """A run in numbers. ``judged``/``forced``/``failed``/``invalid`` count every pair of the run at its end."""

    pairs: int
    from_checkpoint: int
    judged_now: int = 0
    failed_now: int = 0
    reasoning_tokens_now: int = 0
    seconds: float = 0.0
    """Judging time of this run."""
    first_judgment_after: float | None = None
    """Seconds until the first judgments came back (Ray starts its actors and engines meanwhile)."""
    judged: int = 0
    forced: int = 0
    failed: int = 0
    """Pairs without a judgment (``invalid`` of them refused as invalid input, the rest retried by the next run)."""
    invalid: int = 0

    def text(self) -> str:
        rate = self.judged_now / self.seconds if self.seconds > 0 else 0.0
        tokens = self.reasoning_tokens_now / self.seconds if self.seconds > 0 else 0.0
        share = self.forced / self.judged if self.judged else 0.0
        return (
            f"pairs: {self.pairs} ({self.judged} judged, {self.failed} failed, {self.invalid} of them invalid input); "
            f"forced answers: {self.forced} ({share:.1%} of judged)\n"
            f"this run: judged {self.judged_now}, failed {self.failed_now}, "
            f"{self.from_checkpoint} from the checkpoint; "
            f"wall time {self.seconds:.1f} s ({rate:.2f} pairs/s, {tokens:.1f} reasoning tokens/s)"
        )


class Progress:
    """A tqdm bar on stderr over the pairs still to judge: pairs/s, reasoning tokens/s, ETA."""

    def __init__(
        self, summary: RunSummary, total: int, *, enabled: bool | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.summary = summary
        self._clock = clock
        self._started = clock()
        self._bar: Any = None
        if enabled is not False:
            from tqdm.auto import tqdm  # type: ignore[import-untyped,unused-ignore]

            self._bar = tqdm(
                total=total,
                desc="rank1",
                unit="pair",
                dynamic_ncols=True,
                file=sys.stderr,
                disable=None if enabled is None else False,  # None: shown on a terminal only
            )

    def update(self, records: Sequence[PairRecord]) -> None:
        summary = self.summary
        for record in records:
            if record.judged:
                summary.judged_now += 1
            else:
                summary.failed_now += 1
            summary.reasoning_tokens_now += record.reasoning_tokens
        summary.seconds = self._clock() - self._started
        if summary.first_judgment_after is None:
            summary.first_judgment_after = summary.seconds
        if self._bar is not None:
            tokens = summary.reasoning_tokens_now / summary.seconds if summary.seconds > 0 else 0.0
            self._bar.set_postfix_str(f"{tokens:.0f} reasoning tok/s, {summary.failed_now} failed", refresh=False)
            self._bar.update(len(records))

    def close(self) -> None:
        self.summary.seconds = self._clock() - self._started
        if self._bar is not None:
            self._bar.close()
