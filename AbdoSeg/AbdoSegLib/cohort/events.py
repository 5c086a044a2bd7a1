"""What a cohort run tells while it runs: one progress bar for the whole cohort, or one JSON line per case event.

JSON lines (``--progress json``, stdout) are objects with ``event`` ("started", "done", "failed", "skipped", and
"finished" last), ``case``, ``input``, ``message``, ``seconds`` and the counts so far: ``done``, ``failed``,
``skipped``, ``remaining`` (cases not finished yet). The bar (stderr) counts the cases to segment and shows the
time left; failures and skipped series are also told as ``note:`` lines on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from ..progress import JsonLines
from .inputs import Case
from .table import DONE, FAILED, SKIPPED, Row


class CohortEvents:
    """Reports the events of ``total`` cases, of which ``to_run`` are segmented; ``mode``: bar, json or none."""

    def __init__(self, mode: str, total: int, to_run: int):
        self.mode = mode
        self.counts = {DONE: 0, FAILED: 0, SKIPPED: 0}
        self.total = total
        self.lines = JsonLines(sys.stdout) if mode == "json" else None
        self.bar = None
        if mode == "bar" and to_run:
            self.bar = tqdm(total=to_run, unit="case", file=sys.stderr, dynamic_ncols=True,
                            bar_format="cohort {bar} {n_fmt}/{total_fmt} cases [{elapsed}, {remaining} left]{postfix}")
            self._postfix()
            self.bar.refresh()

    @property
    def remaining(self) -> int:
        return self.total - sum(self.counts.values())

    def started(self, case: Case) -> None:
        self._line({"event": "started", "case": case.case_id, "input": str(case.input)})

    def finished(self, row: Row, ran: bool) -> None:
        """A case's row is final; ``ran``: it was segmented (or tried) in this run, and so counts on the bar."""
        self.counts[row.status] += 1
        self._line({"event": row.status, "case": row.case, "input": row.input, "message": row.message,
                    "seconds": None if row.seconds is None else round(row.seconds, 2)})
        if row.status == FAILED:
            self.note(f"case {row.case} failed: {row.message}")
        if self.bar is not None and ran:
            self._postfix()
            self.bar.update(1)

    def close(self, table: Path) -> str:
        """End the bar and report the counts (and the cases not run, after Ctrl-C); returns the last line, printed
        on stdout unless in json mode."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        done, failed, skipped = (self.counts[status] for status in (DONE, FAILED, SKIPPED))
        not_run = f", {self.remaining} not run" if self.remaining else ""
        line = f"{self.total} cases: {done} done, {failed} failed, {skipped} skipped{not_run}; table {table}"
        self._line({"event": "finished", "message": line, "table": str(table)})
        if self.mode != "json":
            print(line, flush=True)
        return line

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"done {self.counts[DONE]}, failed {self.counts[FAILED]}, remaining {self.remaining}", refresh=False)

    def note(self, text: str) -> None:
        """``note: text`` on stderr (not in json mode, where the events say it), above the bar."""
        if self.mode != "json":
            (self.bar.write if self.bar is not None else print)(f"note: {text}", file=sys.stderr)

    def _line(self, event: dict) -> None:
        if self.lines is None:
            return
        event.update({"done": self.counts[DONE], "failed": self.counts[FAILED], "skipped": self.counts[SKIPPED], "remaining": self.remaining})
        self.lines.write(event)
