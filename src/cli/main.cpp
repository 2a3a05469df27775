// dsq: the command-line entry point. Parses the subcommand, runs it, and turns every
// dsq::Error into one line on stderr and a non-zero exit code.
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace dsq::cli {

void add_threads_option(CLI::App* cmd, CommonOptions* common) {
  cmd->add_option("--threads", common->threads, "CPU threads (default: all cores)")
      ->check(CLI::NonNegativeNumber);
}

void apply_common(const CommonOptions& common) {
  if (common.threads > 0) set_num_threads(common.threads);
}

}  // namespace dsq::cli

int main(int argc, char** argv) {
  CLI::App app{"dsq: quantize, serve and measure DeepSeek-V4 models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "dsq 0.1.0");
  dsq::cli::CommonOptions common;
  // Subcommands, in the order --help lists them (one line each).
  dsq::cli::register_tokenize(app, common);
  dsq::cli::register_generate(app, common);
  dsq::cli::register_logits(app, common);
  dsq::cli::register_ppl(app, common);
  dsq::cli::register_info(app, common);
  dsq::cli::register_quantize(app, common);
  dsq::cli::register_convert(app, common);
  dsq::cli::register_synth(app, common);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const dsq::Error& e) {
    std::fprintf(stderr, "dsq: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsq: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
