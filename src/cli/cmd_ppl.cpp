// `dsq ppl <model> <text file> [--ctx 512] [--batch N] [--device cpu|cuda] [--precision fast|f32] [--threads N]`
//
// Perplexity as tiny-brown's reference was computed (shared/docs/dsv4-architecture.md
// §7.3): paragraphs are blank-line-separated blocks stripped of surrounding whitespace,
// each encoded as BOS + tokens + EOS, all concatenated; non-overlapping windows of --ctx
// tokens, each one stateless forward (model/perplexity.h). --batch windows share a call.
// Prints a progress bar on stderr and one line
//   perplexity 86.4017  tokens 163009  windows 319  tokens/s 5123.4  (3.2 s)
// on stdout.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/device_options.h"
#include "core/read_file.h"
#include "core/error.h"
#include "core/progress.h"
#include "model/model.h"
#include "model/perplexity.h"
#include "tokenizer/paragraph_stream.h"
#include "tokenizer/tokenizer.h"

namespace dsq::cli {
namespace {

struct PplOptions {
  DeviceOptions device;
  std::string model_dir, text_file;
  int64_t ctx = 512;
  int64_t batch = 8;
};


void run_ppl(const PplOptions& opt) {
  const model::Model m = model::Model::load(opt.model_dir, make_ops(opt.device));
  const tokenizer::Tokenizer tok = tokenizer::Tokenizer::load(opt.model_dir);
  DSQ_CHECK(tok.bos_id() >= 0 && tok.eos_id() >= 0, tok.source(), ": perplexity needs BOS and EOS tokens");
  const std::vector<int64_t> ids = tokenizer::encode_paragraphs(tok, read_file(opt.text_file));
  const int64_t windows = model::perplexity_windows(int64_t(ids.size()), opt.ctx);
  DSQ_CHECK(windows > 0, opt.text_file, ": ", ids.size(), " tokens are too few for one window of ", opt.ctx);
  ProgressBar bar("ppl", windows, "win");
  const auto start = std::chrono::steady_clock::now();
  const model::PerplexityResult r =
      model::evaluate_perplexity(m, ids, opt.ctx, opt.batch, [&](int64_t done) { bar.update(done); });
  bar.finish();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("perplexity %.4f  tokens %lld  windows %lld  tokens/s %.1f  (%.1f s)\n", r.perplexity(),
              static_cast<long long>(r.scored), static_cast<long long>(r.windows),
              double(r.windows * opt.ctx) / secs, secs);
}

}  // namespace

void register_ppl(CLI::App& app, CommonOptions& common) {
  auto opt = std::make_shared<PplOptions>();
  CLI::App* cmd = app.add_subcommand("ppl", "Perplexity of a text file (non-overlapping windows)");
  cmd->add_option("model", opt->model_dir, "Model directory")->required();
  cmd->add_option("text", opt->text_file, "Text file; paragraphs separated by blank lines")->required();
  cmd->add_option("--ctx", opt->ctx, "Window length in tokens")->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--batch", opt->batch, "Windows per forward call")->check(CLI::Range(1, 1024));
  add_device_options(cmd, &opt->device);
  add_threads_option(cmd, &common);
  cmd->callback([opt, &common] {
    apply_common(common);
    run_ppl(*opt);
  });
}

}  // namespace dsq::cli
