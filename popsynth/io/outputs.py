"""Run outputs: the files a run writes in its output folder, and the model CXB table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .ecsv import write_ecsv

__all__ = ["RUN_FILES", "run_files", "write_cxb_table"]


def write_cxb_table(path: Path, columns: dict[str, np.ndarray], meta: dict) -> None:
    """Model CXB table as ECSV (atomically): energy (keV) and intensity columns
    (keV2 cm-2 s-1 keV-1 sr-1), all float64 [n], header ``meta``."""
    units = {name: "keV" if name == "energy" else "keV2 / (cm2 s keV sr)" for name in columns}
    write_ecsv(path, columns={k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}, units=units, meta=meta)


#: The files a run writes in its output folder: {summary key: file name}.
RUN_FILES = {"checkpoint": "checkpoint.pt", "xlf_hdf5": "xlf_best.h5", "xlf_a19_npy": "xlf_best_a19.npy",
             "cxb_table": "cxb_model.ecsv", "summary": "summary.json"}


def run_files(out) -> dict:
    """Paths of a run's output files (see :data:`RUN_FILES`) in the folder ``out``, as strings."""
    return {k: str(Path(out) / v) for k, v in RUN_FILES.items()}
