// `dsq convert w4a8 <in> <out>`: a W4A16 compressed-tensors checkpoint -> W4A8 (config only).
// `dsq convert --to native|bf16 <in> <out>`: write a checkpoint in the DeepSeek release
// format (FP8/E8M0 dense linears, MXFP4 experts), or dequantized to BF16.
// See quant/checkpoint_convert.h.
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "quant/checkpoint_convert.h"

namespace dsq::cli {

void register_convert(CLI::App& app, CommonOptions& common) {
  struct Args {
    std::string to;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "convert", "Convert a checkpoint: `convert w4a8 IN OUT`, or `convert --to native|bf16 IN OUT`");
  cmd->add_option("--to", args->to, "Target format: native (DeepSeek release: FP8 + MXFP4) or bf16")
      ->check(CLI::IsMember({"native", "bf16"}));
  auto positional = std::make_shared<std::vector<std::string>>();
  cmd->add_option("arguments", *positional, "w4a8 IN OUT | IN OUT (with --to)")->required();
  add_threads_option(cmd, &common);
  cmd->callback([args, positional, &common] {
    apply_common(common);
    const std::vector<std::string>& p = *positional;
    if (!p.empty() && p[0] == "w4a8") {
      DSQ_CHECK(p.size() == 3 && args->to.empty(), "convert w4a8: usage: dsq convert w4a8 IN OUT");
      quant::convert_w4a8(p[1], p[2]);
      std::printf("wrote %s (W4A8: config.json changed, weights hard-linked)\n", p[2].c_str());
      return;
    }
    DSQ_CHECK(!args->to.empty() && p.size() == 2,
              "convert: usage: dsq convert w4a8 IN OUT, or dsq convert --to native|bf16 IN OUT");
    quant::convert_checkpoint(p[0], p[1], args->to == "native" ? quant::ConvertTarget::Native
                                                               : quant::ConvertTarget::Bf16);
    std::printf("wrote %s (%s)\n", p[1].c_str(), args->to.c_str());
  });
}

}  // namespace dsq::cli
