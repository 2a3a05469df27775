#!/usr/bin/env python3
"""Cross-check a dsq-quantized checkpoint with the compressed-tensors Python package.

Usage (on a machine with torch, safetensors and compressed-tensors installed):
    pip install torch safetensors compressed-tensors
    python3 tests/python/check_compressed_tensors.py OUT_DIR [--original BF16_DIR] [--max-modules N]
(BF16_DIR: the unquantized input with native names, e.g. `dsq convert --to bf16 MODEL BF16_DIR`.)

What it checks, and fails loudly on:
  1. config.json's quantization_config validates as compressed-tensors' QuantizationConfig, and
     every config group as a QuantizationScheme (which forbids unknown fields).
  2. Every module the config groups target (INT4 pack-quantized, FP8 block float-quantized) is
     decompressed by compressed-tensors' own compressors (PackedQuantizationCompressor /
     FloatQuantizationCompressor .decompress_weight) and by an independent numpy reading of the
     layout in shared/docs/checkpoint-formats.md §2.2/§2.3; the two must agree bit for bit.
  3. Ignored modules are stored as plain bf16 `.weight` tensors.
  4. With --dsq-dequantized DIR (dsq's own dequantization, written by `dsq convert --to bf16`):
     compressed-tensors' decompressed weights equal dsq's bit for bit.
  5. With --original: each quantized module is close to the original weights: INT4 relative
     Frobenius error < 0.2, FP8 < 0.05 (loose bounds: they catch layout bugs such as a wrong
     nibble order or transposed scales, which give errors near or above 1).
Exit status 0 only if everything passed.
"""
import argparse
import json
import os
import re
import sys

import numpy as np
import torch
from safetensors import safe_open


def load_tensors(directory):
    index_path = os.path.join(directory, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index_path))["weight_map"].values())) if os.path.exists(index_path) else [
        f for f in sorted(os.listdir(directory)) if f.endswith(".safetensors")]
    tensors = {}
    for f in files:
        with safe_open(os.path.join(directory, f), framework="pt") as h:
            for k in h.keys():
                tensors[k] = h.get_tensor(k)
    return tensors


def matches(target, name):
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name


def numpy_int4(packed, scale, shape):
    """checkpoint-formats.md §2.2: element i of a row in word i//8, bits 4*(i%8), stored q+8."""
    rows, cols = int(shape[0]), int(shape[1])
    words = packed.numpy().view(np.uint32).astype(np.uint64)
    nib = np.stack([(words >> (4 * k)) & 0xF for k in range(8)], axis=-1).reshape(rows, -1)[:, :cols]
    q = nib.astype(np.int64) - 8
    s = scale.float().numpy()
    group = cols // s.shape[1]
    prod = torch.from_numpy(q.astype(np.float32) * np.repeat(s, group, axis=1))
    return prod.to(scale.dtype)  # q * scale in the scale's dtype


def numpy_fp8_block(weight, scale):
    w = weight.float().numpy()
    s = scale.float().numpy()
    rows, cols = w.shape
    full = np.repeat(np.repeat(s, 128, axis=0), 128, axis=1)[:rows, :cols]
    return torch.from_numpy(w * full).to(scale.dtype)


def decompress(compressor, data, scheme_json, qargs, qc):
    """compressed-tensors' own decompression of one module's tensors. Releases from 0.13 on
    expose a classmethod decompress(state_dict, scheme); older ones an instance method
    decompress_weight(compressed_data, quantization_args)."""
    from compressed_tensors.quantization import QuantizationScheme
    if hasattr(compressor, "decompress_weight"):
        return compressor(config=qc).decompress_weight(compressed_data=dict(data), quantization_args=qargs)
    scheme = QuantizationScheme.model_validate(scheme_json)
    return compressor.decompress(dict(data), scheme)["weight"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--original")
    ap.add_argument("--dsq-dequantized",
                    help="dsq's own dequantization of OUT_DIR (`dsq convert --to bf16 OUT_DIR DIR`): "
                         "compressed-tensors' decompressed weights must equal it bit for bit")
    ap.add_argument("--max-modules", type=int, default=0, help="check at most N modules per group (0: all)")
    args = ap.parse_args()

    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, QuantizationArgs
    try:
        from compressed_tensors.compressors import PackedQuantizationCompressor, FloatQuantizationCompressor
    except ImportError:
        from compressed_tensors.compressors.quantized_compressors import (PackedQuantizationCompressor,
                                                                          FloatQuantizationCompressor)
    import compressed_tensors
    print("compressed-tensors", getattr(compressed_tensors, "__version__", "?"), "torch", torch.__version__)

    failures = []
    cfg = json.load(open(os.path.join(args.out_dir, "config.json")))
    qc_json = cfg["quantization_config"]
    qc = QuantizationConfig.model_validate(qc_json)
    print("quantization_config: valid; format", qc.format, "groups", list(qc.config_groups))
    for name, group in qc_json["config_groups"].items():
        QuantizationScheme.model_validate(group)

    tensors = load_tensors(args.out_dir)
    original = load_tensors(args.original) if args.original else None
    dsq_dequantized = load_tensors(args.dsq_dequantized) if args.dsq_dequantized else None
    modules = sorted({k.rsplit(".", 1)[0] for k in tensors if k.endswith((".weight", ".weight_packed"))})
    counts = {}
    for module in modules:
        if any(matches(t, module) for t in qc_json.get("ignore", [])):
            group_name = None
        else:
            group_name = next((g for g, s in qc_json["config_groups"].items()
                               if any(matches(t, module) for t in s["targets"])), None)
        if group_name is None:
            w = tensors.get(module + ".weight")
            if w is not None and w.dim() == 2 and w.dtype != torch.bfloat16 and w.dtype != torch.float32:
                failures.append(f"{module}: not targeted but stored as {w.dtype}")
            continue
        if args.max_modules and counts.get(group_name, 0) >= args.max_modules:
            continue
        counts[group_name] = counts.get(group_name, 0) + 1
        scheme = qc_json["config_groups"][group_name]
        qargs = QuantizationArgs.model_validate(scheme["weights"])
        if scheme["format"] == "pack-quantized":
            data = {k: tensors[module + "." + k] for k in ("weight_packed", "weight_scale", "weight_shape")}
            ours = numpy_int4(data["weight_packed"], data["weight_scale"], data["weight_shape"])
            theirs = decompress(PackedQuantizationCompressor, data, scheme, qargs, qc)
        elif scheme["format"] == "float-quantized":
            data = {k: tensors[module + "." + k] for k in ("weight", "weight_scale")}
            if data["weight"].dtype != torch.float8_e4m3fn:
                failures.append(f"{module}: fp8 weight stored as {data['weight'].dtype}")
                continue
            ours = numpy_fp8_block(data["weight"], data["weight_scale"])
            theirs = decompress(FloatQuantizationCompressor, data, scheme, qargs, qc)
        else:
            failures.append(f"{module}: unexpected format {scheme['format']}")
            continue
        theirs = theirs.to(ours.dtype)
        if theirs.shape != ours.shape or not torch.equal(theirs, ours):
            diff = (theirs.float() - ours.float()).abs().max().item() if theirs.shape == ours.shape else "shape"
            failures.append(f"{module}: compressed-tensors and the spec reading disagree (max diff {diff})")
        if dsq_dequantized is not None:
            mine = dsq_dequantized.get(module + ".weight")
            if mine is None:
                failures.append(f"{module}: missing from dsq's dequantized checkpoint")
            elif mine.shape != theirs.shape or not torch.equal(mine.float(), theirs.float()):
                failures.append(f"{module}: compressed-tensors' decompression differs from dsq's dequantization")
            else:
                counts["equal to dsq"] = counts.get("equal to dsq", 0) + 1
        if original is not None:
            ref = original.get(module + ".weight")
            if ref is None:
                for k, v in original.items():  # HF fixture spelling: model.layers..., same leaf
                    if k.endswith(module.split("layers.", 1)[-1] + ".weight"):
                        ref = v
            if ref is not None:
                rel = ((ours.float() - ref.float()).norm() / ref.float().norm()).item()
                bound = 0.2 if scheme["format"] == "pack-quantized" else 0.05
                if not rel < bound:
                    failures.append(f"{module}: relative error {rel:.3f} vs the original (bound {bound})")
    print("modules checked per group:", counts)
    for f in failures[:50]:
        print("FAIL", f)
    print("OK" if not failures else f"{len(failures)} failures")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
