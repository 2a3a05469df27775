// `dsq quantize <model> -o <dir> --recipe <preset|file> [--calib <file> --num-samples N
//  --seq-len L] [--resume] [--shared-experts] [--all-experts] [--propagate unquantized] ...`
//
// Runs the sequential quantizer (quant/quantizer.h) and prints the summary table. Presets:
// w4a16-fp8 (GPTQ INT4 routed experts, FP8 block attention; needs --calib) and w4a16-rtn.
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "core/progress.h"
#include "quant/quantizer.h"

namespace dsq::cli {

void register_quantize(CLI::App& app, CommonOptions& common) {
  struct Args {
    std::string model, output, recipe = "w4a16-fp8", calib, propagate = "quantized", fallback = "all-tokens";
    int64_t num_samples = 128, seq_len = 512, min_expert_tokens = -1, batch_tokens = 8192;
    bool resume = false, shared_experts = false, all_experts = false, quiet = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("quantize", "Quantize a checkpoint into a compressed-tensors checkpoint");
  cmd->add_option("model", args->model, "Input model directory (HF layout or DeepSeek release format)")->required();
  cmd->add_option("-o,--output", args->output, "Output directory (new, or an interrupted run with --resume)")
      ->required();
  cmd->add_option("--recipe", args->recipe, "Preset (w4a16-fp8, w4a16-rtn) or a .json/.yaml recipe file")
      ->capture_default_str();
  cmd->add_option("--calib", args->calib, "Calibration text file, or .jsonl of chat messages (GPTQ recipes)");
  cmd->add_option("--num-samples", args->num_samples, "Calibration samples")->capture_default_str()->check(
      CLI::PositiveNumber);
  cmd->add_option("--seq-len", args->seq_len, "Tokens per calibration sample")->capture_default_str()->check(
      CLI::Range(int64_t(2), int64_t(1) << 20));
  cmd->add_flag("--resume", args->resume, "Continue an interrupted run in the output directory");
  cmd->add_flag("--shared-experts", args->shared_experts, "Also quantize the shared experts to INT4");
  cmd->add_flag("--all-experts", args->all_experts,
                "Calibrate every routed expert on every token (one gate/up Hessian per layer)");
  cmd->add_option("--propagate", args->propagate,
                  "Next layer's calibration inputs from the quantized (default) or unquantized layer")
      ->check(CLI::IsMember({"quantized", "unquantized"}))
      ->capture_default_str();
  cmd->add_option("--min-expert-tokens", args->min_expert_tokens,
                  "Experts routed fewer tokens fall back (default: the hidden size)");
  cmd->add_option("--expert-fallback", args->fallback, "Fallback for such experts")
      ->check(CLI::IsMember({"all-tokens", "rtn"}))
      ->capture_default_str();
  cmd->add_option("--batch-tokens", args->batch_tokens, "Tokens per calibration forward batch")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--quiet", args->quiet, "No per-module lines");
  add_threads_option(cmd, &common);
  cmd->callback([args, &common] {
    apply_common(common);
    quant::QuantizeOptions o;
    o.model_dir = args->model;
    o.output_dir = args->output;
    o.recipe = quant::Recipe::load(args->recipe);
    if (args->shared_experts) o.recipe.quantize_shared_experts();
    o.calib_path = args->calib;
    o.num_samples = args->num_samples;
    o.seq_len = args->seq_len;
    o.propagate_quantized = args->propagate == "quantized";
    o.all_experts = args->all_experts;
    o.min_expert_tokens = args->min_expert_tokens;
    o.expert_fallback = args->fallback == "rtn" ? quant::ExpertFallback::Rtn : quant::ExpertFallback::AllTokens;
    o.resume = args->resume;
    o.batch_tokens = args->batch_tokens;
    o.log_modules = !args->quiet;
    const quant::QuantizeResult r = quant::quantize_model(o);
    std::printf("%s", quant::format_summary(r.modules).c_str());
    std::printf("wrote %s (recipe %s) in %s\n", o.output_dir.c_str(), o.recipe.name.c_str(),
                format_duration(r.seconds).c_str());
  });
}

}  // namespace dsq::cli
