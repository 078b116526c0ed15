"""I/O buffers per bucket: what is allocated (device, pinned), and where each tensor's address points.

Sizing follows what a call can really move, from the manifest's shapes at the bucket's max:
inputs and outputs that cross to the host get a device slice and an equal pinned slice; tensors
that stay on the device on the hot path (the KV cache, which generation binds to its own buffers)
get no pinned copy at all, and their device slice is allocated only if a plain `run()` feeds them
itself. Outputs are sized by their own shape, so a graph that returns last-position logits
[batch, 1, vocab] gets a logits buffer that size, not [batch, sequence, vocab].

`Bindings` keeps the ownership rule: a tensor is either on the session's own buffer or bound to
memory from outside (`bind`); uploads and downloads for a call that brings host data always go
through the session's own buffer, after pointing the engine back at it, so a `run()` between two
steps of a paused generation never reads or writes the generation's cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from trtcompile.runtime.manifest import Manifest, PackageError
from trtcompile.runtime.shapes import Bucket, TensorSpec

ALIGNMENT = 256  # TensorRT wants 256-byte-aligned tensor addresses (same value as cuda.ALIGNMENT)


def align(n: int, alignment: int = ALIGNMENT) -> int:
    return (n + alignment - 1) // alignment * alignment


def layout(sizes: dict[str, int], alignment: int = ALIGNMENT) -> tuple[dict[str, int], int]:
    """Offsets of each named slice in one arena, each aligned; returns (offsets, total bytes)."""
    offsets, end = {}, 0
    for name, nbytes in sizes.items():
        offsets[name] = end
        end = align(end + max(int(nbytes), 1), alignment)
    return offsets, max(end, alignment)


def volume(shape) -> int:
    return int(np.prod(tuple(shape), dtype=np.int64))


def device_resident_tensors(manifest_data: dict) -> set[str]:
    """Tensors that never go to the host on the hot path: a causal LM's past inputs and present outputs."""
    generation = manifest_data.get("generation") or {}
    return set(generation.get("past_inputs", [])) | set(generation.get("present_outputs", []))


@dataclass(frozen=True)
class TensorBuffer:
    name: str
    is_input: bool
    dtype: np.dtype
    max_shape: tuple[int, ...]
    resident: bool  # device only: no pinned copy, device slice allocated on first host use

    @property
    def capacity(self) -> int:
        return volume(self.max_shape)

    @property
    def nbytes(self) -> int:
        return self.capacity * self.dtype.itemsize


@dataclass(frozen=True)
class BufferPlan:
    """One bucket's buffers: `staged` tensors (device + pinned arena) and `resident` ones (device only, lazy)."""

    bucket: str
    tensors: dict[str, TensorBuffer]
    staged_offsets: dict[str, int] = field(default_factory=dict)
    staged_bytes: int = 0
    resident_offsets: dict[str, int] = field(default_factory=dict)
    resident_bytes: int = 0
    # output -> the input whose memory it must share (a KV-cache update written in place)
    aliases: dict[str, str] = field(default_factory=dict)

    def offset_of(self, name: str, offsets: dict[str, int]) -> int | None:
        return offsets.get(self.aliases.get(name, name))

    @property
    def device_bytes(self) -> int:
        """Allocated at load: the staged tensors' device arena."""
        return self.staged_bytes

    @property
    def pinned_bytes(self) -> int:
        return self.staged_bytes


def max_shapes(specs: list[TensorSpec], bucket: Bucket) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape at the bucket's max; tensors with a dimension the bucket does not name are left out."""
    shapes = {}
    for spec in specs:
        try:
            shapes[spec.name] = bucket.shape_of(spec.shape, 2)
        except KeyError:
            continue  # e.g. a data-dependent output dimension
    return shapes


def plan_buffers(inputs: list[TensorSpec], outputs: list[TensorSpec], bucket: Bucket, resident: set[str],
                 engine_shapes: dict[str, tuple[int, ...]] | None = None,
                 aliases: dict[str, str] | None = None) -> BufferPlan:
    """Size every I/O tensor of one bucket; engine_shapes (the engine's own shapes at the bucket's max
    inputs, where known) win when they are larger than the manifest's. An output in `aliases`
    (ICudaEngine.get_aliased_input_tensor: TensorRT's KV-cache update writes its input in place and
    wants both bound to one address) gets no memory of its own: it shares its input's."""
    engine_shapes, aliases = engine_shapes or {}, dict(aliases or {})
    wanted = max_shapes(inputs + outputs, bucket)
    tensors = {}
    for spec, is_input in [(s, True) for s in inputs] + [(s, False) for s in outputs]:
        shape = wanted.get(spec.name)
        theirs = engine_shapes.get(spec.name)
        if theirs is not None and (shape is None or volume(theirs) > volume(shape)):
            shape = tuple(theirs)
        if shape is None:
            raise PackageError(f"{'input' if is_input else 'output'} {spec.name!r} has shape {spec.shape}, with a "
                               f"dimension bucket {bucket.name!r} gives no range for; recompile the package")
        tensors[spec.name] = TensorBuffer(spec.name, is_input, np.dtype(spec.dtype), tuple(int(d) for d in shape),
                                          spec.name in resident)
    for output, source in aliases.items():
        if source not in tensors or output not in tensors or tensors[output].nbytes > tensors[source].nbytes:
            raise PackageError(f"output {output!r} writes input {source!r} in place, but their buffers do not "
                               f"match in bucket {bucket.name!r}; recompile the package")
        if tensors[output].resident != tensors[source].resident:  # one memory: one kind of buffer
            tensors[output] = TensorBuffer(output, False, tensors[output].dtype, tensors[output].max_shape,
                                           tensors[source].resident)
    own = [n for n in tensors if n not in aliases]
    staged, total = layout({n: tensors[n].nbytes for n in own if not tensors[n].resident})
    lazy, lazy_total = layout({n: tensors[n].nbytes for n in own if tensors[n].resident})
    return BufferPlan(bucket.name, tensors, staged, total if staged else 0, lazy, lazy_total if lazy else 0, aliases)


@dataclass(frozen=True)
class BucketMemory:
    """What one bucket costs on the GPU and in pinned host memory (`trtcompile inspect`)."""

    bucket: str
    engine_file: str | None
    profile: int | None
    device_io_bytes: int  # the staged tensors' device arena, allocated at load
    pinned_bytes: int
    resident_bytes: int  # K/V device buffers, only if run() is fed the cache from the host
    context_bytes: int | None  # TensorRT's activation memory for this profile, when the build recorded it


def memory_report(manifest: Manifest) -> tuple[list[BucketMemory], dict[str, int]]:
    """Per-bucket memory, and each engine file's size (its weights, held once however many buckets share it)."""
    from trtcompile.runtime.engine_layout import EngineLayoutError, engine_layout

    resident = device_resident_tensors(manifest.data)
    try:
        slots = engine_layout(manifest) if manifest.engines else {}
    except EngineLayoutError:
        slots = {}
    rows = []
    for bucket in manifest.buckets:
        plan = plan_buffers(manifest.inputs, manifest.outputs, bucket, resident)
        slot = slots.get(bucket.name)
        context = None
        if slot is not None:
            context = next((p.get("context_memory_bytes") for p in slot.entry.get("profiles", [])
                            if p.get("bucket") == bucket.name), None)
        rows.append(BucketMemory(bucket.name, slot.file if slot else None, slot.profile if slot else None,
                                 plan.device_bytes, plan.pinned_bytes, plan.resident_bytes, context))
    weights = {e["file"]: int(e.get("bytes", 0)) for e in manifest.engines if "file" in e}
    return rows, weights


class Bindings:
    """Where each I/O tensor's address points, and which buffer a host copy may use.

    own: name -> the session's own device address (0 for a resident tensor not allocated yet).
    set_address(name, ptr): tells TensorRT (IExecutionContext.set_tensor_address).
    allocate_resident(): allocates the resident tensors' device arena once, returns name -> address.
    """

    def __init__(self, own: dict[str, int], set_address: Callable[[str, int], None],
                 allocate_resident: Callable[[], dict[str, int]] | None = None):
        self.own = dict(own)
        self._set_address = set_address
        self._allocate_resident = allocate_resident
        self.current: dict[str, int | None] = {}
        self.external: set[str] = set()
        for name, ptr in self.own.items():
            if ptr:
                self._point(name, ptr)
            else:
                self.current[name] = None  # resident: gets an address on first use

    def _point(self, name: str, ptr: int) -> None:
        if self.current.get(name) != ptr:
            self._set_address(name, ptr)
            self.current[name] = ptr

    def bind(self, name: str, ptr: int) -> None:
        """Point a tensor at device memory the caller owns (256-byte aligned); its own address (or 0) releases it."""
        if name not in self.own:
            raise KeyError(f"no I/O tensor {name!r}; this engine has {sorted(self.own)}")
        if not ptr or ptr == self.own[name]:
            self.release(name)
            return
        if ptr % ALIGNMENT:
            raise ValueError(f"address {ptr:#x} for {name!r} is not {ALIGNMENT}-byte aligned, as TensorRT requires")
        self.external.add(name)
        self._point(name, ptr)

    def release(self, name: str) -> None:
        """Back to the session's own buffer (allocated lazily for a resident tensor)."""
        self.external.discard(name)
        if self.own[name]:
            self._point(name, self.own[name])
        else:
            self.current[name] = None

    def is_external(self, name: str) -> bool:
        return name in self.external

    def _ensure_own(self, name: str) -> int:
        if not self.own[name]:
            if self._allocate_resident is None:
                raise RuntimeError(f"tensor {name!r} has no buffer of its own and none can be allocated")
            self.own.update({n: p for n, p in self._allocate_resident().items() if not self.own.get(n)})
            self._allocate_resident = None
        return self.own[name]

    def upload_target(self, name: str) -> int:
        """Where host data for `name` goes: always the session's own buffer, which the engine is pointed back at."""
        self.external.discard(name)
        ptr = self._ensure_own(name)
        self._point(name, ptr)
        return ptr

    def download_source(self, name: str) -> int:
        """Where the engine wrote `name`: the bound memory when bound elsewhere, else the own buffer."""
        ptr = self.current.get(name)
        if ptr is None:
            raise RuntimeError(f"tensor {name!r} has no address: nothing was run with it")
        return ptr

    def own_everything(self, names) -> None:
        """A call that brings its own host data (Model.run): every named tensor back on the session's buffers."""
        for name in names:
            self.external.discard(name)
            self._point(name, self._ensure_own(name))

    def ensure_addresses(self) -> None:
        """Before an enqueue: a tensor released to a not-yet-allocated own buffer gets one now."""
        for name, ptr in list(self.current.items()):
            if ptr is None:
                self._point(name, self._ensure_own(name))

    def addresses(self) -> tuple[tuple[str, int | None], ...]:
        return tuple(sorted(self.current.items()))
