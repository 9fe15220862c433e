"""The report of a campaign: one CSV line for every recipient that was not sent, and why.

Lines are written (and flushed) as the rows finish, so a campaign that stops half-way leaves
a report of what it did. The columns are ``line, recipient, outcome, error, code, detail``:
``error`` is the error's class (``PermanentDeliveryError``, ``invalid``), ``code`` the
provider's code, ``detail`` a sentence for a person. No secret goes in: delivery errors'
details are safe to show by contract, and problems name columns, not values.
"""

from __future__ import annotations

import csv
import os
from types import TracebackType
from typing import IO, TYPE_CHECKING, Self

if TYPE_CHECKING:
    from .runner import RowResult

__all__ = ["REPORT_COLUMNS", "ReportWriter"]

REPORT_COLUMNS = ("line", "recipient", "outcome", "error", "code", "detail")


class ReportWriter:
    """Writes the rows that did not end ``sent``, ``already_sent`` or ``valid`` to a CSV file.

    :param target: a path (created or replaced) or an open text stream (left open).
    """

    def __init__(self, target: str | os.PathLike[str] | IO[str]) -> None:
        if isinstance(target, str | os.PathLike):
            self._stream: IO[str] = open(target, "w", encoding="utf-8", newline="")  # noqa: SIM115
            self._owned = True
        else:
            self._stream = target
            self._owned = False
        self._writer = csv.writer(self._stream)
        self._writer.writerow(REPORT_COLUMNS)
        self._stream.flush()
        self.written = 0
        """Rows written so far."""

    def write(self, result: RowResult) -> None:
        """Write ``result`` if its outcome is a problem (flushed at once)."""
        if result.outcome.ok:
            return
        self._writer.writerow(
            (
                result.line,
                result.recipient or "",
                result.outcome.value,
                result.error or "",
                "" if result.code is None else result.code,
                result.detail or "",
            )
        )
        self._stream.flush()
        self.written += 1

    def close(self) -> None:
        """Close the file (a stream given by the caller stays open)."""
        if self._owned:
            self._stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
