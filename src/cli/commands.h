// Each `dsq <subcommand>` lives in its own cmd_<name>.cpp and registers itself on the
// CLI11 app through one of these functions; main.cpp only wires them together.
#pragma once

#include <CLI/CLI.hpp>

namespace dsq::cli {

// Options every subcommand shares.
struct CommonOptions {
  int threads = 0;  // 0: hardware concurrency
};

// Adds --threads to a subcommand.
void add_threads_option(CLI::App* cmd, CommonOptions* common);
// Applies the common options before a subcommand runs.
void apply_common(const CommonOptions& common);

// Subcommand registration, one function per cmd_<name>.cpp. Each adds its subcommand to
// `app` with a callback that runs it (errors are thrown as dsq::Error).
// (Add new subcommands here and in main.cpp, one line each.)
void register_tokenize(CLI::App& app, CommonOptions& common);
void register_logits(CLI::App& app, CommonOptions& common);
void register_generate(CLI::App& app, CommonOptions& common);
void register_ppl(CLI::App& app, CommonOptions& common);
void register_info(CLI::App& app, CommonOptions& common);
void register_quantize(CLI::App& app, CommonOptions& common);
void register_convert(CLI::App& app, CommonOptions& common);
void register_synth(CLI::App& app, CommonOptions& common);

}  // namespace dsq::cli
