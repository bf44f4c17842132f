"""Reading annotation CSVs with errors that name the file and line."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from vidattn.datasets import DatasetError


def read_rows(path: Path, headers: Sequence[Sequence[str]]
              ) -> Iterator[tuple[int, list[str], list[str]]]:
    """Rows of a CSV whose first line is one of ``headers``.

    Yields (line number, header, stripped cells) for every non-blank row.  A header not in
    ``headers`` or a row with the wrong number of fields raises DatasetError at file:line.
    Read as utf-8-sig: spreadsheet exports start with a byte-order mark.
    """
    allowed = [list(h) for h in headers]
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header not in allowed:
            wanted = " or ".join(",".join(h) for h in allowed)
            raise DatasetError(path, f"header must be {wanted}, got "
                               f"{','.join(header) or 'nothing'}", line=1)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DatasetError(path, f"expected {len(header)} fields, got {len(row)}",
                                   line=reader.line_num)
            yield reader.line_num, header, [c.strip() for c in row]
