"""IDX files (the MNIST container): big-endian header, then unsigned bytes.

    magic = 0x00 0x00 0x08 ndim   (0x08 = unsigned byte), then ndim uint32 sizes, then the payload."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from aigc.errors import AigcError


def read_idx(path: Path) -> np.ndarray:
    """Read a .gz (or plain) IDX file of unsigned bytes; corrupt files raise AigcError naming the file."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise AigcError(f"{path} is corrupt or truncated ({e}); delete it and download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise AigcError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    if raw[2] != 0x08:
        raise AigcError(f"{path}: IDX type 0x{raw[2]:02x} is not supported (only unsigned bytes, 0x08)")
    ndim = raw[3]
    if not 1 <= ndim <= 4:
        raise AigcError(f"{path} is not an IDX file of images or labels: its magic number says {ndim} dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise AigcError(f"{path} is truncated (header cut short)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    n = int(np.prod(shape)) if shape else 0
    if len(raw) - header != n:
        shape_text = " x ".join(map(str, shape))
        raise AigcError(f"{path} does not hold what its header says: a {shape_text} array ({n} bytes) against "
                        f"{len(raw) - header} bytes of data (truncated, padded, or a wrong header)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as IDX (gzip if the name ends in .gz); used by tests and tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
