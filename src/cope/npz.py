"""Write a ``.npz`` whose arrays grow frame by frame, with memory bounded by one frame.

``np.savez`` needs every array in memory at once; a long video's residuals do not fit. Each array
is spooled to a temporary file as frames arrive, then copied into the zip member by member.
The archive appears at its final path only when complete (written to a temporary name, renamed).

The spool folder ``.cope-npz-<pid>-*`` sits next to the output and names the process that owns
it. SIGINT/SIGTERM/SIGHUP remove it (``cope.signals``); only a SIGKILL or a power cut can leave
one behind, and the next writer in that folder removes every spool whose process is gone.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

SPOOL_PREFIX = ".cope-npz-"
# The owner's pid in ".cope-npz-<pid>-…", ".tmp-<pid>-…" and "<stem>.<pid>.partial".
_OWNER = re.compile(r"(?:^\.cope-npz-|^\.tmp-|\.)(\d+)[-.]")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_orphans(directory: Path, pattern: str) -> list[Path]:
    """Remove the files and folders matching ``pattern`` whose owning process (pid in the name)
    is dead: what a SIGKILLed run left. Entries of live processes, or with no pid, are kept."""
    removed = []
    for path in Path(directory).glob(pattern):
        match = _OWNER.search(path.name)
        if match is None or int(match.group(1)) == os.getpid() or pid_alive(int(match.group(1))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def free_bytes(directory: str | os.PathLike) -> int:
    """Free space for an unprivileged writer in ``directory`` (the one place the disk is asked)."""
    return shutil.disk_usage(directory).free


def npz_bytes(arrays: dict[str, tuple[tuple[int, ...], np.dtype]], counts: dict[str, int]) -> int:
    """Size of an uncompressed archive of ``counts[name]`` items per array (headers included)."""
    total = 0
    for name, (shape, dtype) in arrays.items():
        total += counts.get(name, 0) * int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        total += 256  # .npy header + zip local/central headers
    return total


def peak_spool_bytes(arrays, counts) -> int:
    """Disk used at the worst moment of ``close``: the spool plus the largest member being copied."""
    largest = max((npz_bytes({n: a}, counts) for n, a in arrays.items()), default=0)
    return npz_bytes(arrays, counts) + largest


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
        remove_orphans(self.path.parent, f"{SPOOL_PREFIX}*")
        prefix = f"{SPOOL_PREFIX}{os.getpid()}-"
        self.spool_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=self.path.parent))
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
                (self.spool_dir / f"{name}.raw").unlink()  # peak disk: spool + one member, not 2×
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
