"""Reading tensors ahead of the merge with positioned reads, straight into device buffers.

The GPU engine's loader (``mergeline.merge.prefetch``). A tensor's stored bytes are cut into pieces
of ``PIECE_BYTES``; a pool of threads reads each piece with ``os.preadv`` (no memory mapping: mapped
pages cost a page fault each, and dropping them again costs every thread a TLB flush) into a pinned
slab of its own and copies it to the device on a stream of its own, so reads, host-to-device
transfers and the merge of earlier tensors all overlap. On the CPU a piece is read straight into the
destination tensor (no slab, no stream).

Device memory: the destination buffers of the tensors fetched ahead (the caller bounds how many
bytes it fetches ahead). Host memory: two pinned slabs per thread.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mergeline.errors import MergelineError
from mergeline.io.safetensors_io import CheckpointReader

PIECE_BYTES = 32 << 20


@dataclass
class Fetched:
    """One tensor on its way to the device: its buffer (stored dtype), and one future per piece
    (each giving the CUDA event that marks its transfer, or None on the CPU)."""

    tensor: torch.Tensor
    nbytes: int
    pieces: list[Future] = field(default_factory=list)


def _pread_into(fd: int, buffer: memoryview, offset: int, where: str) -> None:
    done = 0
    while done < len(buffer):
        n = os.preadv(fd, [buffer[done:]], offset + done)
        if n == 0:
            raise MergelineError(f"{where}: file ends before the tensor's last byte (truncated?)")
        done += n


class TensorPrefetcher:
    """``fetch`` starts reading a tensor (or some of its rows) to ``device``; ``wait`` makes the
    caller's stream wait for it and returns it. Close it (or use it as a context manager)."""

    def __init__(self, device: torch.device, threads: int, piece_bytes: int | None = None) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.piece_bytes = piece_bytes or PIECE_BYTES
        self._fds: dict[Path, int] = {}
        self._fd_lock = threading.Lock()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="mergeline-read")

    def _fd(self, path: Path) -> int:
        with self._fd_lock:
            if path not in self._fds:
                self._fds[path] = os.open(path, os.O_RDONLY)
            return self._fds[path]

    def fetch(self, reader: CheckpointReader, name: str, rows: tuple[int, int] | None = None) -> Fetched:
        if reader.computes(name):  # folded while read (model+adapter): computed on the host, then copied
            src = reader.view(name) if rows is None else reader.view(name)[rows[0]:rows[1]]
            tensor = src.to(self.device, copy=True)
            return Fetched(tensor, tensor.nbytes)
        spec = reader.spec(name)
        file, offset, nbytes = reader.byte_range(name, rows)
        shape = spec.shape if rows is None else (rows[1] - rows[0], *spec.shape[1:])
        dest = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        tensor = dest.view(spec.dtype).view(shape) if nbytes else torch.empty(shape, dtype=spec.dtype,
                                                                               device=self.device)
        ready = None
        if self.cuda:
            # The buffer may reuse memory that work already queued on this stream still reads.
            ready = torch.cuda.Event()
            ready.record()
        fd, where = self._fd(file), f"{file}: tensor {name!r}"
        fetched = Fetched(tensor, nbytes)
        for start in range(0, nbytes, self.piece_bytes):
            piece = dest[start:start + self.piece_bytes]
            fetched.pieces.append(self._pool.submit(self._read_piece, fd, offset + start, piece, ready, where))
        return fetched

    def _read_piece(self, fd: int, offset: int, dest: torch.Tensor, ready: torch.cuda.Event | None,
                    where: str) -> torch.cuda.Event | None:
        if not self.cuda:
            _pread_into(fd, memoryview(dest.numpy()), offset, where)
            return None
        local = self._local.__dict__
        if "stream" not in local:
            local["stream"] = torch.cuda.Stream(self.device)
            local["slabs"] = [torch.empty(self.piece_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
            local["events"] = [None, None]
            local["turn"] = 0
        turn = local["turn"] = 1 - local["turn"]
        if local["events"][turn] is not None:
            local["events"][turn].synchronize()  # this slab's last transfer is done: it may be refilled
        slab = local["slabs"][turn][: dest.numel()]
        _pread_into(fd, memoryview(slab.numpy()), offset, where)
        stream = local["stream"]
        with torch.cuda.stream(stream):
            stream.wait_event(ready)
            dest.copy_(slab, non_blocking=True)
            dest.record_stream(stream)
            done = torch.cuda.Event()
            done.record(stream)
        local["events"][turn] = done
        return done

    def wait(self, fetched: Fetched) -> torch.Tensor:
        """The fetched tensor, once every piece is read; on CUDA the current stream waits for the
        transfers (the host does not)."""
        for piece in fetched.pieces:
            event = piece.result()
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
        return fetched.tensor

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> TensorPrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
