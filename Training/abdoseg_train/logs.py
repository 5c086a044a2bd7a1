"""Training logs: one CSV row per epoch, and TensorBoard scalars."""

from __future__ import annotations

import csv
from pathlib import Path

LOG_FILE = "log.csv"
"""The per-epoch table a training run writes into its work folder."""


class TrainingLog:
    """Writes ``log.csv`` and TensorBoard event files into ``folder``.

    Each record is a flat dict: epoch, loss, learning rate, seconds, and (after a validation)
    dice/<organ>, hd95/<organ>, mean_dice.
    """

    COLUMNS_FIRST = ("epoch", "loss", "learning_rate", "seconds")

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter  # the train extra (fit checks that it is installed)

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.folder / LOG_FILE
        self.writer = SummaryWriter(log_dir=str(self.folder / "tensorboard"))
        self.rows: list[dict] = []

    def add(self, record: dict) -> None:
        self.rows.append(record)
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()
        self._write_csv()

    def _write_csv(self) -> None:
        columns = list(self.COLUMNS_FIRST)
        for row in self.rows:
            columns += [key for key in row if key not in columns]
        with open(self.csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self) -> None:
        self.writer.close()
