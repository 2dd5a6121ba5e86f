#!/usr/bin/env python3
"""Independent reference for tests/formats: safetensors files assembled by hand
(struct + json, as the format's README describes it) from torch tensors, and
what a reader must find in them.

Usage: make_reference_safetensors.py OUTDIR

Writes into OUTDIR:
  reference.safetensors  F32/F16/BF16 tensors (torch's own conversions), a
                         scalar, an empty tensor, I64/BOOL/U8/F64 buffers;
                         header padded to 8 bytes, {"format": "pt"} metadata,
                         tensors in Hugging Face's order (wider dtypes first,
                         then by name), like safetensors' own writer
  unaligned.safetensors  header not padded and a 3-byte U8 tensor first, so
                         every float tensor starts at an odd file offset
  sharded/               model.safetensors.index.json and two shards
  <file>.expected        one line per tensor:
                         name<TAB>dtype<TAB>d0,d1,..<TAB>hex float32 bits...
                         (values only for F32/F16/BF16: torch's .float() of
                         the stored tensor, bit for bit)

The test (safetensors_test.cc, ReferenceFiles.*) compares the C++ reader with
these files, and the C++ writer's F16/BF16 rounding with torch's: ref.f16 and
ref.bf16 are src.f32 converted by torch (round to nearest even).
"""
import json
import os
import struct
import sys

import numpy as np
import torch

DTYPE_NAMES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def raw_bytes(t):
    """The tensor's little-endian bytes, as safetensors stores them."""
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        # numpy has no bfloat16: reinterpret the same 16 bits as int16.
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def assemble(tensors, metadata=None, pad=True, order=None):
    """The bytes of a safetensors file holding `tensors` (name -> tensor)."""
    names = order if order is not None else sorted(
        tensors, key=lambda n: (-tensors[n].element_size(), n))
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for name in names:
        b = raw_bytes(tensors[name])
        header[name] = {
            "dtype": DTYPE_NAMES[tensors[name].dtype],
            "shape": list(tensors[name].shape),
            "data_offsets": [len(data), len(data) + len(b)],
        }
        data += b
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def expected_lines(tensors):
    lines = []
    for name, t in tensors.items():
        dtype = DTYPE_NAMES[t.dtype]
        shape = ",".join(str(d) for d in t.shape)
        values = ""
        if dtype in ("F32", "F16", "BF16"):
            bits = t.float().contiguous().view(-1).numpy().view(np.uint32)
            values = " ".join("%08x" % b for b in bits)
        lines.append("%s\t%s\t%s\t%s" % (name, dtype, shape, values))
    return "\n".join(lines) + "\n"


def write(path, data, tensors):
    with open(path, "wb") as f:
        f.write(data)
    with open(path + ".expected", "w") as f:
        f.write(expected_lines(tensors))


def f32(bits):
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def rounding_cases():
    """float32 values whose F16/BF16 rounding is easy to get wrong."""
    v = [0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan"),
         65504.0, 65519.99, 65520.0, -65520.0, 1e-8, 2.0 ** -24, 2.0 ** -25,
         3 * 2.0 ** -25, 2.0 ** -14, 2.0 ** -14 - 2.0 ** -25,
         1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11,
         f32(0x7F7FFFFF), f32(0x7F7F8000), f32(0x7F7F7FFF), f32(0x00800000),
         f32(0x00000001), f32(0x80000001), f32(0x3F808000), f32(0x3F818000),
         f32(0x3F808001), f32(0x3F817FFF)]
    # Every fp16 tie in [1, 2) and its neighbours one float ulp away.
    for m in range(0, 1024, 37):
        tie = 1 + (2 * m + 1) * 2.0 ** -11
        v += [tie, np.nextafter(np.float32(tie), np.float32(2)).item(),
              np.nextafter(np.float32(tie), np.float32(0)).item()]
    return torch.tensor(v, dtype=torch.float32)


def main():
    out = sys.argv[1]
    os.makedirs(os.path.join(out, "sharded"), exist_ok=True)
    g = torch.Generator().manual_seed(20240611)
    # Random values over many binades, subnormals of fp16 included.
    spread = torch.randn(4000, generator=g) * torch.pow(
        10.0, torch.randint(-9, 8, (4000,), generator=g).float())
    src = torch.cat([rounding_cases(), spread])

    tensors = {
        "src.f32": src,
        "ref.f16": src.to(torch.float16),
        "ref.bf16": src.to(torch.bfloat16),
        "w.f32": torch.randn(3, 5, generator=g),
        "w.f16": torch.randn(4, 6, generator=g).half(),
        "w.bf16": torch.randn(2, 3, 4, generator=g).bfloat16(),
        "scalar.f32": torch.tensor(2.5),
        "empty.f16": torch.zeros(0, 3, dtype=torch.float16),
        "ids.i64": torch.arange(5, dtype=torch.int64) * 7,
        "mask.bool": torch.tensor([[True, False], [False, True]]),
        "bytes.u8": torch.arange(7, dtype=torch.uint8),
        "f64": torch.tensor([1.5, -2.25, 3.0], dtype=torch.float64),
    }
    write(os.path.join(out, "reference.safetensors"),
          assemble(tensors, metadata={"format": "pt"}), tensors)

    unaligned = {
        "odd.u8": torch.tensor([1, 2, 3], dtype=torch.uint8),
        "a.f16": torch.randn(9, generator=g).half(),
        "b.bf16": torch.randn(5, 3, generator=g).bfloat16(),
        "c.f32": torch.randn(7, generator=g),
    }
    write(os.path.join(out, "unaligned.safetensors"),
          assemble(unaligned, pad=False, order=list(unaligned)), unaligned)

    shards = [
        {"layer.0.weight": torch.randn(4, 4, generator=g),
         "layer.0.bias": torch.randn(4, generator=g).half()},
        {"layer.1.weight": torch.randn(4, 4, generator=g).bfloat16(),
         "layer.1.bias": torch.randn(4, generator=g)},
    ]
    weight_map = {}
    everything = {}
    total = 0
    for i, shard in enumerate(shards):
        name = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
        data = assemble(shard, metadata={"format": "pt"})
        with open(os.path.join(out, "sharded", name), "wb") as f:
            f.write(data)
        for t in shard:
            weight_map[t] = name
            total += shard[t].numel() * shard[t].element_size()
        everything.update(shard)
    with open(os.path.join(out, "sharded", "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(out, "sharded", "expected"), "w") as f:
        f.write(expected_lines(everything))


if __name__ == "__main__":
    main()
