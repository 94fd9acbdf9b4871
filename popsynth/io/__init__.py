"""IO at the edge: every file popsynth reads or writes goes through this package.

Modules, by responsibility:

* :mod:`popsynth.io.files`: the one atomic writer (:func:`atomic_write`), JSON output, the
  output-folder check and the run lock.
* :mod:`popsynth.io.ecsv`: the one ECSV reader with unit checks and conversion
  (:func:`read_ecsv` -> :class:`EcsvTable`) and the ECSV writer (:func:`write_ecsv`).
* :mod:`popsynth.io.cache`: the one cache-key builder (:func:`cache_key`), content digests
  and :func:`cached`, the wrapper that keeps a builder's result on disk.
* :mod:`popsynth.io.checkpoint`: run checkpoints (atomic save, safe structurally checked load).
* :mod:`popsynth.io.xlf`: XLF cubes (HDF5 export, A19 .npy layout, loader and interpolator).
* :mod:`popsynth.io.outputs`: the files of a run's output folder and the model CXB table.

Physics modules never import h5py or astropy's table readers; they receive loaded records.
Every name below stays importable as ``from popsynth.io import X``.
"""

from __future__ import annotations

from .cache import arrays_sha256, cache_file, cache_key, cached, file_sha256
from .checkpoint import CHECKPOINT_FORMAT, checkpoint_file, load_checkpoint, save_checkpoint
from .ecsv import EcsvTable, read_ecsv, write_ecsv
from .files import LOCK_NAME, RunLock, atomic_write, check_output_folder, current_umask, write_json
from .outputs import RUN_FILES, run_files, write_cxb_table
from .xlf import XLF_CUBES, XLFCube, a19_resample, export_xlf_hdf5, load_xlf, write_a19_layout

__all__ = [
    "CHECKPOINT_FORMAT", "EcsvTable", "LOCK_NAME", "RUN_FILES", "RunLock", "XLFCube",
    "XLF_CUBES", "a19_resample", "arrays_sha256", "atomic_write", "cache_file", "cache_key", "cached", "check_output_folder",
    "checkpoint_file", "current_umask", "export_xlf_hdf5", "file_sha256", "load_checkpoint", "load_xlf",
    "read_ecsv", "run_files", "save_checkpoint", "write_a19_layout", "write_cxb_table", "write_ecsv",
    "write_json",
]
