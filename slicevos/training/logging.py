"""Run logs: TensorBoard event files and ``metrics.csv`` (one row per logged step).

Only rank 0 logs; the other ranks get a disabled logger whose calls do nothing. New metric names
may appear at any step (validation metrics, say): the CSV header grows and earlier rows leave
the new columns empty. The CSV is rewritten atomically on every call, so it is always complete
and readable while training runs.
"""

from __future__ import annotations

import csv
import io
from os import PathLike
from pathlib import Path

from slicevos.io.atomic import atomic_write_bytes

STEP = "step"


class MetricsLogger:
    """Scalars to TensorBoard (``out_dir/tensorboard``) and to ``out_dir/metrics.csv``.

    ``start_step``: when resuming from a checkpoint taken after ``start_step`` iterations, rows
    and events of later steps (written after that checkpoint) are dropped: they are logged again.
    """

    def __init__(self, out_dir: str | PathLike, enabled: bool = True, start_step: int = 0) -> None:
        self.enabled = enabled
        self.csv_path = Path(out_dir) / "metrics.csv"
        self._rows: list[dict[str, str]] = []
        self._columns: list[str] = [STEP]
        self._writer = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(Path(out_dir) / "tensorboard"),
                                     purge_step=start_step + 1 if start_step > 0 else None)
        if self.csv_path.is_file() and start_step > 0:
            self._load_rows(up_to_step=start_step)

    def _load_rows(self, up_to_step: int) -> None:
        with self.csv_path.open(newline="") as f:
            reader = csv.DictReader(f)
            self._columns = list(reader.fieldnames or [STEP])
            self._rows = [row for row in reader if int(row[STEP]) <= up_to_step]

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Record ``scalars`` at ``step``; a second call at the same step fills the same row."""
        if not self.enabled:
            return
        for key, value in scalars.items():
            self._writer.add_scalar(key, value, step)
        if not self._rows or int(self._rows[-1][STEP]) != step:
            self._rows.append({STEP: str(step)})
        self._rows[-1].update({k: f"{float(v):.8g}" for k, v in scalars.items()})
        self._columns += [k for k in scalars if k not in self._columns]
        self._write_csv()

    def _write_csv(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self._columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        atomic_write_bytes(self.csv_path, buf.getvalue().encode())

    @property
    def tensorboard(self):
        """The ``SummaryWriter`` for images, histograms... (None on ranks other than 0)."""
        return self._writer

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
