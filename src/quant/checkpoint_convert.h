// Format conversions that need no calibration:
//
//  - to native: a checkpoint (e.g. an HF BF16 fixture) written in the DeepSeek release
//    format, so the quantizer's release-format input path can be tested without the real
//    release: FP8 e4m3 with E8M0 128x128 block scales (`<m>.weight` + `<m>.scale`) for the
//    linears the release stores in FP8 (attention wq_a/wq_b/wkv/wo_a/wo_b, indexer wq_b,
//    shared experts, MTP e_proj/h_proj), MXFP4 routed experts (`<m>.weight` i8 [out, in/2],
//    low nibble = even input; `<m>.scale` E8M0 [out, in/32], scale 2^ceil(log2(absmax/6))),
//    everything else unchanged; native names; config in the release spelling with the
//    release's quantization_config and expert_dtype "fp4". Lossy, like the release itself.
//  - to bf16: every linear dequantized to BF16 (exact for FP8 / MXFP4 / INT4 inputs), native
//    names, no quantization_config: the reference a quantized input is compared against.
//  - w4a8: a compressed-tensors W4A16 checkpoint -> W4A8 (checkpoint-formats.md §4): only
//    config.json changes (INT4 groups get FP8 dynamic per-token input activations and an
//    explicit "pack-quantized" format, plus a `_w4a8_conversion` provenance key); every other
//    file is hard-linked (copied where linking is impossible), never rewritten.
#pragma once

#include <string>

namespace dsq::quant {

enum class ConvertTarget { Native, Bf16 };

void convert_checkpoint(const std::string& input_dir, const std::string& output_dir, ConvertTarget target);

void convert_w4a8(const std::string& input_dir, const std::string& output_dir);

}  // namespace dsq::quant
