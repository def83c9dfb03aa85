"""A run's row files, ``metrics.csv`` and ``scalars.csv``: appended to while training, cut back on resume.

Every checkpoint records how many data rows of each file were written before it
was saved (``metrics_rows``, and the ``csv`` tracker's state). A resume keeps
exactly those rows and drops the rest, which it does again and logs again; so
each row is in a file once, whichever checkpoint the resume starts from:
``last``, a step checkpoint saved just before the validation of its step, an
older checkpoint when newer ones fail their checksum, or the state taken at the
start of an interrupted validation. A row count, not a step, marks the point: a
validation's rows and its step's training rows share one step number.

A file cut short is repaired, never appended to as it is: a last line without
its newline (a write stopped by kill -9 or a full disk) is dropped, with a
warning. A file holding fewer rows than the checkpoint covers (emptied, cut)
gets one warning saying how many are lost; new rows are appended after the rest.
"""

import csv
import io
import logging
import os

from base.run.folder import RunDirError, cannot_write_error
from base.runtime.atomic_files import atomic_write

log = logging.getLogger(__name__)


def resume_rows(path, covered, keep_row, header_ok, lineterminator):
    """Cut the CSV file ``path`` back to the data rows a checkpoint covers; repair a cut last line.

    Args:
        path: the file; a missing one counts as empty.
        covered: how many data rows (after the header) the checkpoint covers,
            or ``None`` for a checkpoint that does not say (written by an older
            version): then the rows for which ``keep_row`` is true stay.
        keep_row: ``keep_row({column: str}) -> bool``; may raise ``ValueError`` for a malformed row.
        header_ok: ``header_ok([column, ...]) -> bool``, whether a first line is this file's header.
        lineterminator: the file's line ending, used when it is rewritten.

    The file is rewritten atomically, and only when something is dropped.

    Returns:
        ``(header, rows)``: the header (list of str; ``None`` when the file is
        missing or empty) and the number of data rows kept (int).

    Raises:
        RunDirError: the file cannot be read or rewritten, is not CSV text, its
            first line is not its header, or a row is malformed; one line naming
            it (the file is left as it was).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:  # e.g. a folder in its place, or the run folder deleted
        if not isinstance(exc, FileNotFoundError) or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise cannot_write_error(path, exc, "read") from None
        data = b""
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        log.warning(
            "%s: dropped its last line %r, cut short (no newline at its end)",
            path,
            data[cut : cut + 60].decode("utf-8", "replace"),
        )
    try:
        lines = [line for line in csv.reader(io.StringIO(data[:cut].decode("utf-8"), newline="")) if line]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise RunDirError(f"{path} is not CSV text ({exc}): move it away to continue without its rows") from None
    header, rows = (lines[0], lines[1:]) if lines else (None, [])
    if header is not None and not header_ok(header):
        raise RunDirError(
            f"{path}: its first line {','.join(header)[:60]!r} is not its header: restore the file "
            f"or move it away to continue without its rows"
        )
    if covered is None:
        try:
            kept = [row for row in rows if keep_row(dict(zip(header, row)))]
        except ValueError as exc:
            raise RunDirError(
                f"{path}: a malformed row ({exc}): restore the file or move it away to continue without its rows"
            ) from None
    else:
        kept = rows[:covered]
        if len(rows) < covered:
            log.warning(
                "%s holds %d of the %d rows the checkpoint covers (emptied or cut short?): %d are lost; "
                "new rows go after the rest",
                path,
                len(rows),
                covered,
                covered - len(rows),
            )
    if cut < len(data) or len(kept) != len(rows):
        text = io.StringIO(newline="")
        csv.writer(text, lineterminator=lineterminator).writerows([header, *kept] if header else [])
        try:
            atomic_write(path, lambda f: f.write(text.getvalue().encode("utf-8")))
        except OSError as exc:
            raise cannot_write_error(path, exc, "rewrite") from exc
    return header, len(kept)


def step_of(row):
    """The ``step`` of a row ``{column: str}`` (int); ``ValueError`` naming it when it is not a number."""
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        raise ValueError(f"step {row.get('step')!r} is not a number") from None


class MetricsCSV:
    """Append-only ``metrics.csv``, one row per validation; the header is fixed by the first row written.

    Keys that a later row lacks are left empty; keys it adds are dropped with
    the header unchanged, so the file always parses as one table. :attr:`rows`
    counts its data rows (saved in checkpoints). A file already there (a
    resumed run's) is read by :meth:`resume`, called before the first write.
    """

    def __init__(self, path):
        self.path, self.fields, self.rows = path, None, 0

    def resume(self, covered, validated_at):
        """Keep the ``covered`` rows of the checkpoint a resume starts from; repair a cut last line.

        ``covered`` ``None`` (a checkpoint that does not count rows): keep the
        rows of validations up to its ``validated_at`` step (int; -1 for none),
        the ones its state has taken in. See :func:`resume_rows`.

        Raises:
            RunDirError: the file cannot be read, repaired or rewritten; names it.
        """
        self.fields, self.rows = resume_rows(
            self.path, covered, lambda row: step_of(row) <= validated_at, lambda header: "step" in header, "\r\n"
        )

    def write(self, row):
        """Append ``row`` (``{column: value}``), with the header first if the file is new.

        Raises:
            RunDirError: the file cannot be appended to (disk full, the run folder deleted); names it.
        """
        new = self.fields is None
        try:
            with open(self.path, "a", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=list(row) if new else self.fields, extrasaction="ignore")
                if new:
                    writer.writeheader()
                writer.writerow(row)
        except OSError as exc:
            raise cannot_write_error(self.path, exc) from exc
        if new:  # only once the header is on disk: a failed first write must write it next time
            self.fields = list(row)
        self.rows += 1
