// `dsq generate <model> --prompt TEXT [--max-tokens N --temperature T --top-p P
//                --top-k K --seed S --device cpu|cuda --precision fast|f32 --threads N]`
//
// Encodes the prompt as BOS + encode(TEXT), prefills it in one call and then decodes one
// token per step through the decoding state, streaming the continuation to stdout as
// whole UTF-8 characters (IncrementalDetokenizer). Stops at EOS or after --max-tokens.
// Temperature 0 is greedy; otherwise sampling is reproducible for a given --seed
// (model/sampler.h). A summary (tokens, tokens/s) goes to stderr.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/device_options.h"
#include "core/error.h"
#include "model/model.h"
#include "model/sampler.h"
#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace dsq::cli {
namespace {

struct GenerateOptions {
  DeviceOptions device;
  std::string model_dir, prompt;
  int64_t max_tokens = 128;
  model::SamplingParams sampling;
};

void emit(const std::string& text) {
  if (text.empty()) return;
  DSQ_CHECK(std::fwrite(text.data(), 1, text.size(), stdout) == text.size(), "stdout: write error");
  std::fflush(stdout);
}

void run_generate(const GenerateOptions& opt) {
  const model::Model m = model::Model::load(opt.model_dir, make_ops(opt.device));
  const tokenizer::Tokenizer tok = tokenizer::Tokenizer::load(opt.model_dir);
  std::vector<int64_t> prompt;
  if (tok.bos_id() >= 0) prompt.push_back(tok.bos_id());
  for (int32_t id : tok.encode(opt.prompt)) prompt.push_back(id);
  DSQ_CHECK(!prompt.empty(), "generate: empty prompt and the tokenizer has no BOS token");

  model::Sampler sampler(opt.sampling);
  tokenizer::IncrementalDetokenizer detok(tok, /*skip_special=*/true);
  model::SequenceState state = m.new_sequence();
  const int64_t V = m.config().vocab_size;
  const auto start = std::chrono::steady_clock::now();
  Tensor logits = m.forward({{&state, prompt}}, model::LogitRows::Last);
  const auto prefilled = std::chrono::steady_clock::now();
  int64_t generated = 0;
  while (generated < opt.max_tokens) {
    const int64_t next = sampler.next(logits.data<float>(), V);
    ++generated;
    if (next == tok.eos_id()) break;
    emit(detok.push(int32_t(next)));
    if (generated == opt.max_tokens) break;
    const int64_t token[] = {next};
    logits = m.forward({{&state, token}}, model::LogitRows::Last);
  }
  emit(detok.finish());
  emit("\n");
  const auto end = std::chrono::steady_clock::now();
  const double prefill_s = std::chrono::duration<double>(prefilled - start).count();
  const double decode_s = std::chrono::duration<double>(end - prefilled).count();
  std::fprintf(stderr, "generate: prompt %zu tokens (%.1f tok/s), %lld new tokens (%.1f tok/s)\n", prompt.size(),
               double(prompt.size()) / prefill_s, static_cast<long long>(generated),
               double(generated) / std::max(decode_s, 1e-9));
}

}  // namespace

void register_generate(CLI::App& app, CommonOptions& common) {
  auto opt = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "Stream a continuation of a prompt");
  cmd->add_option("model", opt->model_dir, "Model directory")->required();
  cmd->add_option("--prompt", opt->prompt, "Prompt text (BOS is added)")->required();
  cmd->add_option("--max-tokens", opt->max_tokens, "Most new tokens")->check(CLI::NonNegativeNumber);
  cmd->add_option("--temperature", opt->sampling.temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", opt->sampling.top_p, "Nucleus mass")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--top-k", opt->sampling.top_k, "Keep the K best tokens (0 = all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", opt->sampling.seed, "Sampling seed");
  add_device_options(cmd, &opt->device);
  add_threads_option(cmd, &common);
  cmd->callback([opt, &common] {
    apply_common(common);
    run_generate(*opt);
  });
}

}  // namespace dsq::cli
