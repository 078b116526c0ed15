"""Which engine file and which optimization profile serve each bucket, read from the manifest.

Two layouts (`trtcompile build --engines`):

    shared (default)    one engine, one optimization profile per bucket:
                        {"file": "engines/model.plan", "profiles": [{"bucket": "prefill", "index": 0},
                                                                    {"bucket": "decode", "index": 1}], ...}
    per-bucket          one engine per bucket, each with a single profile:
                        {"file": "engines/prefill.plan", "profiles": [{"bucket": "prefill", "index": 0}], ...}

Entries written before profiles were recorded ({"bucket": "short", "file": ...}) read as one engine
whose profile 0 is that bucket. The runtime makes one execution context per (engine, profile),
so a shared engine holds its weights once however many buckets it serves.
"""

from __future__ import annotations

from dataclasses import dataclass

from trtcompile.runtime.manifest import Manifest, PackageError


class EngineLayoutError(PackageError):
    """The manifest's engine entries do not map every bucket to exactly one (engine, profile)."""


@dataclass(frozen=True)
class ProfileSlot:
    """A bucket's place in an engine: the entry (file, flags, ...) and the profile index inside it."""

    bucket: str
    entry: dict
    profile: int

    @property
    def file(self) -> str:
        return self.entry["file"]


def profiles_of(entry: dict) -> list[dict]:
    if "profiles" in entry:
        return list(entry["profiles"])
    if "bucket" in entry:  # one engine per bucket, before profiles were recorded
        return [{"bucket": entry["bucket"], "index": 0}]
    raise EngineLayoutError(f"engine entry {entry.get('file', '?')!r} names no bucket or profiles; recompile the package")


def engine_layout(manifest: Manifest) -> dict[str, ProfileSlot]:
    """bucket name -> ProfileSlot, checking that every bucket has exactly one and indices are sane."""
    buckets = [b.name for b in manifest.buckets]
    slots: dict[str, ProfileSlot] = {}
    files = [e.get("file") for e in manifest.engines]
    if len(set(files)) != len(files):
        raise EngineLayoutError(f"the manifest lists engine file(s) twice: {files}; recompile the package")
    for entry in manifest.engines:
        indices = []
        for profile in profiles_of(entry):
            bucket, index = profile.get("bucket"), profile.get("index")
            if bucket not in buckets:
                raise EngineLayoutError(f"engine {entry.get('file', '?')!r} has a profile for bucket {bucket!r}, "
                                        f"which the package does not define (buckets {buckets}); recompile the package")
            if bucket in slots:
                raise EngineLayoutError(f"bucket {bucket!r} has two engine profiles ({slots[bucket].file!r} and "
                                        f"{entry.get('file', '?')!r}); recompile the package")
            if not isinstance(index, int) or index < 0:
                raise EngineLayoutError(f"engine {entry.get('file', '?')!r} gives bucket {bucket!r} profile index "
                                        f"{index!r}; recompile the package")
            indices.append(index)
            slots[bucket] = ProfileSlot(bucket, entry, index)
        if len(set(indices)) != len(indices):
            raise EngineLayoutError(f"engine {entry.get('file', '?')!r} gives two buckets the same profile "
                                    f"({indices}); recompile the package")
    missing = [b for b in buckets if b not in slots]
    if missing:
        raise EngineLayoutError(f"package {str(manifest.root)!r} has no engine for bucket(s) {missing}; rebuild the "
                                f"engines on this machine (`trtcompile build` on the package's model.onnx)")
    return {b: slots[b] for b in buckets}


def engines_by_file(layout: dict[str, ProfileSlot]) -> dict[str, list[ProfileSlot]]:
    """Each engine file with the slots (one execution context each) it serves, in bucket order."""
    grouped: dict[str, list[ProfileSlot]] = {}
    for slot in layout.values():
        grouped.setdefault(slot.file, []).append(slot)
    return grouped
