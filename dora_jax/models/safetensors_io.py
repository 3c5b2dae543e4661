"""Streaming safetensors reader and writer that touch one tensor at a time.

The format is an 8-byte little-endian header length, a JSON header mapping names to
`{dtype, shape, data_offsets}`, then raw row-major bytes. Reading with `readinto` into a
buffer of the tensor's size keeps peak host memory at the loaded parameters plus one
tensor, and bfloat16 needs no framework (numpy reads it through `ml_dtypes`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Callable

import ml_dtypes
import numpy as np

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class CorruptCheckpointError(ValueError):
    """A weight file is truncated, has a bad header, or disagrees with config.json."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    path: str
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: str) -> dict[str, TensorInfo]:
    """Index of every tensor in one `.safetensors` file, validated against the file size."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CorruptCheckpointError(f"{path}: file is {size} bytes, too short to be safetensors; re-download or re-save it.")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, 100 << 20):
            raise CorruptCheckpointError(f"{path}: header length {n} is impossible for a {size}-byte file; the file is corrupt.")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorruptCheckpointError(f"{path}: header is not valid JSON ({e}); the file is corrupt.") from e
    out = {}
    base = 8 + n
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta.get("dtype") not in _DTYPES:
            raise CorruptCheckpointError(f"{path}: tensor {name!r} has unsupported dtype {meta.get('dtype')!r}.")
        begin, end = meta["data_offsets"]
        dtype = np.dtype(_DTYPES[meta["dtype"]])
        shape = tuple(int(s) for s in meta["shape"])
        if end - begin != int(np.prod(shape)) * dtype.itemsize or base + end > size:
            raise CorruptCheckpointError(
                f"{path}: tensor {name!r} ({meta['dtype']} {list(shape)}) runs past the end of the file "
                f"({size} bytes); the file is truncated. Re-download or re-save the checkpoint.")
        out[name] = TensorInfo(path, dtype, shape, base + begin, end - begin)
    return out


def read_tensor(info: TensorInfo) -> np.ndarray:
    buf = np.empty(info.shape, info.dtype)
    with open(info.path, "rb") as f:
        f.seek(info.start)
        got = f.readinto(memoryview(buf.reshape(-1).view(np.uint8)))
    if got != info.nbytes:
        raise CorruptCheckpointError(f"{info.path}: could only read {got} of {info.nbytes} bytes; the file is truncated.")
    return buf


def write_files(out_dir: str, tensors: list[tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]],
                max_shard_bytes: int = 5 << 30) -> list[str]:
    """Writes `(name, shape, dtype, produce)` tensors into one or more shards plus an index, replacing any weight
    files `out_dir` held (a smaller model must not leave stale shards behind).

    `produce()` is called once per tensor right before its bytes are written, so only one
    tensor is ever materialised on the host.
    """
    for stale in os.listdir(out_dir):
        if stale.endswith(".safetensors") or stale == "model.safetensors.index.json":
            os.remove(os.path.join(out_dir, stale))
    shards: list[list] = [[]]
    shard_bytes = 0
    for t in tensors:
        nbytes = int(np.prod(t[1])) * np.dtype(t[2]).itemsize
        if shards[-1] and shard_bytes + nbytes > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(t)
        shard_bytes += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map, total = {}, 0
    for fname, shard in zip(names, shards):
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, dtype, _ in shard:
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            header[name] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        total += offset
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data section starts 8-byte aligned, as safetensors writes it
        tmp = os.path.join(out_dir, fname + ".tmp")
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name, shape, dtype, produce in shard:
                arr = np.ascontiguousarray(produce(), dtype=dtype)
                if arr.shape != tuple(shape):
                    raise ValueError(f"tensor {name}: produced shape {arr.shape}, declared {tuple(shape)}")
                f.write(memoryview(arr.reshape(-1).view(np.uint8)))
        os.replace(tmp, os.path.join(out_dir, fname))
    if len(shards) > 1:
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return names


def index_dir(model_dir: str) -> dict[str, TensorInfo]:
    """All tensors of a HF model dir: single file, sharded with an index, or bare shards."""
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        try:
            with open(index_path) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise CorruptCheckpointError(f"{index_path}: not a valid safetensors index ({e!r}).") from e
    else:
        files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    if not files:
        bins = [f for f in os.listdir(model_dir) if f.endswith((".bin", ".pt", ".pth"))]
        hint = (f" Found PyTorch pickles {bins}: re-save with `save_pretrained(dir, safe_serialization=True)`."
                if bins else "")
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights found.{hint}")
    out: dict[str, TensorInfo] = {}
    for fname in files:
        path = os.path.join(model_dir, fname)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: listed in model.safetensors.index.json but missing; the download is incomplete.")
        out.update(read_header(path))
    return out
