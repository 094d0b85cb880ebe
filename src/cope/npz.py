"""Write a ``.npz`` whose arrays grow frame by frame, with memory bounded by one frame.

``np.savez`` needs every array in memory at once; a long video's residuals do not fit. Each array
is spooled to a temporary file as frames arrive, then copied into the zip member by member.
The archive appears at its final path only when complete (written to a temporary name, renamed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np


class NpzStreamWriter:
    """Declare arrays as (item shape, dtype); ``append`` one item at a time; ``close`` commits."""

    def __init__(
        self,
        path: str | os.PathLike,
        arrays: dict[str, tuple[tuple[int, ...], np.dtype]],
        compresslevel: int | None = None,  # 0–9: deflate the members; None: store them
    ):
        self.path = Path(path)
        self.compresslevel = compresslevel
        self.spec = {name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype) in arrays.items()}
        self.spool_dir = Path(tempfile.mkdtemp(prefix=".cope-npz-", dir=self.path.parent))
        self.files = {name: open(self.spool_dir / f"{name}.raw", "wb") for name in self.spec}
        self.counts = dict.fromkeys(self.spec, 0)

    def append(self, name: str, item) -> None:
        shape, dtype = self.spec[name]
        array = np.asarray(item, dtype=dtype)  # tobytes() below writes C order
        if array.shape != shape:
            raise ValueError(f"{name}: item shape {array.shape} != declared {shape}")
        self.files[name].write(array.tobytes())
        self.counts[name] += 1

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        tmp = self.spool_dir / "archive.npz"
        method = zipfile.ZIP_STORED if self.compresslevel is None else zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(tmp, "w", method, compresslevel=self.compresslevel, allowZip64=True) as archive:
            for name, (shape, dtype) in self.spec.items():
                header = {
                    "descr": np.lib.format.dtype_to_descr(dtype),
                    "fortran_order": False,
                    "shape": (self.counts[name], *shape),
                }
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_2_0(member, header)
                    with open(self.spool_dir / f"{name}.raw", "rb") as raw:
                        shutil.copyfileobj(raw, member, 1 << 22)
        os.replace(tmp, self.path)
        shutil.rmtree(self.spool_dir, ignore_errors=True)

    def abort(self) -> None:
        for f in self.files.values():
            f.close()
        shutil.rmtree(self.spool_dir, ignore_errors=True)

    def __enter__(self) -> NpzStreamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
