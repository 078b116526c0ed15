"""Reading an engine plan in chunks for TensorRT, hashing it on the way.

`Runtime.deserialize_cuda_engine(IStreamReaderV2)` pulls the plan in pieces, so a multi-GB plan
is never held whole in host memory. The sha256 the manifest records is computed from the same
reads: bytes are hashed while they extend the hashed prefix in order; whatever TensorRT seeks
over (or never reads) is hashed from the file at the end, so the digest is the whole file's
whatever the access pattern.

A version-compatible plan carries host code that TensorRT runs while deserializing, so such a
plan is hashed before it is handed over (`sha256_of` in manifest.py, streamed), not after.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 64 << 20  # at most this much host memory per read


class HashingPlanReader:
    """A plan file read front to back (or with seeks), with a running sha256 of the whole file."""

    def __init__(self, path: str | Path, chunk: int = CHUNK):
        self.path, self.chunk = Path(path), chunk
        self.file = open(self.path, "rb")
        self.size = os.fstat(self.file.fileno()).st_size
        self._digest = hashlib.sha256()
        self.hashed = 0  # bytes [0, hashed) are in the digest
        self.bytes_read = 0

    def read(self, num_bytes: int) -> bytes:
        start = self.file.tell()
        data = self.file.read(max(0, min(int(num_bytes), self.chunk)))
        self.bytes_read += len(data)
        if start <= self.hashed < start + len(data):
            self._digest.update(memoryview(data)[self.hashed - start:])
            self.hashed = start + len(data)
        return data

    def seek(self, offset: int, whence: int) -> bool:
        """whence: os.SEEK_SET, os.SEEK_CUR or os.SEEK_END."""
        try:
            self.file.seek(int(offset), whence)
        except (OSError, ValueError):
            return False
        return True

    def hexdigest(self) -> str:
        """The whole file's sha256 (reads whatever was not read in order)."""
        if self.hashed < self.size:
            position = self.file.tell()
            self.file.seek(self.hashed)
            for block in iter(lambda: self.file.read(1 << 20), b""):
                self._digest.update(block)
            self.hashed = self.size
            self.file.seek(position)
        return self._digest.hexdigest()

    def close(self) -> None:
        self.file.close()


def stream_reader(trt, reader: HashingPlanReader):
    """An IStreamReaderV2 over `reader` (its base class needs the CUDA driver, so only on a GPU machine)."""
    whence = {trt.SeekPosition.SET: os.SEEK_SET, trt.SeekPosition.CUR: os.SEEK_CUR, trt.SeekPosition.END: os.SEEK_END}

    class PlanStream(trt.IStreamReaderV2):
        def __init__(self):
            trt.IStreamReaderV2.__init__(self)

        def read(self, num_bytes, stream):  # TensorRT copies the returned buffer where it wants it
            return reader.read(num_bytes)

        def seek(self, offset, where):
            return reader.seek(offset, whence[where])

    return PlanStream()
