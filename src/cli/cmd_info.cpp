// `dsq info <model dir>`: what a checkpoint is. Prints the config summary (dimensions, the
// per-layer attention and MoE kinds), then parameters and bytes per module kind and per
// stored dtype as aligned tables. Works on every spelling formats/ reads (transformers
// fixtures, release names, quantized checkpoints: quantized tensors count their stored bytes
// and the logical weights they encode). Opening the checkpoint validates it fully, so a bad
// file ends in one error line.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "formats/checkpoint.h"
#include "formats/weight_inventory.h"

namespace dsq::cli {
namespace {

// 1234567 -> "1,234,567": parameter counts of real models are hard to read otherwise.
std::string grouped(uint64_t v) {
  std::string digits = std::to_string(v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

// A table whose first column is left-aligned and the others right-aligned.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void print() const {
    std::vector<size_t> width(rows_[0].size(), 0);
    for (const auto& row : rows_)
      for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
    for (const auto& row : rows_) {
      std::string line = "  ";
      for (size_t c = 0; c < row.size(); ++c) {
        const std::string pad(width[c] - row[c].size(), ' ');
        line += c == 0 ? row[c] + pad : "  " + pad + row[c];
      }
      while (!line.empty() && line.back() == ' ') line.pop_back();
      std::printf("%s\n", line.c_str());
    }
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

std::string rope_text(const RopeParams& r) {
  char buf[160];
  if (r.type == "yarn")
    std::snprintf(buf, sizeof buf, "yarn, theta %g, factor %g, original %lld, beta %g/%g", r.theta, r.factor,
                  static_cast<long long>(r.original_max_positions), r.beta_fast, r.beta_slow);
  else
    std::snprintf(buf, sizeof buf, "default, theta %g", r.theta);
  return buf;
}

void print_config(const Checkpoint& ck) {
  const ModelConfig& c = ck.config();
  std::printf("model: %s\n", ck.directory().c_str());
  std::printf("  vocab %lld, hidden %lld, layers %lld (+%lld MTP), window %lld\n", (long long)c.vocab_size,
              (long long)c.hidden_size, (long long)c.num_layers, (long long)c.num_mtp_layers,
              (long long)c.sliding_window);
  std::printf("  attention: %lld heads x %lld (rope %lld), q_lora %lld, output %lld groups x rank %lld\n",
              (long long)c.num_heads, (long long)c.head_dim, (long long)c.rope_dim, (long long)c.q_lora_rank,
              (long long)c.o_groups, (long long)c.o_lora_rank);
  std::printf("  compression: CSA rate %lld, HCA rate %lld; indexer %lld heads x %lld, top-%lld\n",
              (long long)c.csa_rate, (long long)c.hca_rate, (long long)c.index_n_heads, (long long)c.index_head_dim,
              (long long)c.index_topk);
  std::printf("  MoE: %lld routed experts (top-%lld) + %lld shared, width %lld, %s, scale %g, swiglu limit %g\n",
              (long long)c.n_routed_experts, (long long)c.num_experts_per_tok, (long long)c.n_shared_experts,
              (long long)c.moe_intermediate_size, c.scoring_func.c_str(), c.routed_scaling_factor, c.swiglu_limit);
  std::printf("  mHC: %lld streams, %lld Sinkhorn iterations\n", (long long)c.hc_mult, (long long)c.hc_sinkhorn_iters);
  std::printf("  rope main: %s\n  rope compress: %s\n\n", rope_text(c.rope_main).c_str(),
              rope_text(c.rope_compress).c_str());

  Table layers({"layer", "attention", "compress", "moe"});
  for (int i = 0; i < int(c.num_layers); ++i)
    layers.add({std::to_string(i), std::string(attention_kind_name(c.attention[size_t(i)])),
                std::to_string(c.compress_rate(i)), c.moe[size_t(i)] == MoeKind::Hash ? "hash" : "top-k"});
  layers.print();
  std::printf("\n");
}

void print_inventory(const Checkpoint& ck) {
  const WeightInventory inv = take_inventory(ck);
  Table kinds({"module", "tensors", "parameters", "bytes", ""});
  for (const auto& [kind, n] : inv.by_kind)
    kinds.add({std::string(module_kind_name(kind)), grouped(uint64_t(n.tensors)), grouped(uint64_t(n.parameters)),
               grouped(n.bytes), human_bytes(n.bytes)});
  kinds.add({"total", grouped(uint64_t(inv.total.tensors)), grouped(uint64_t(inv.total.parameters)),
             grouped(inv.total.bytes), human_bytes(inv.total.bytes)});
  kinds.print();
  std::printf("\n");
  Table dtypes({"dtype", "tensors", "parameters", "bytes", ""});
  for (const auto& [dtype, n] : inv.by_dtype)
    dtypes.add({dtype, grouped(uint64_t(n.tensors)), grouped(uint64_t(n.parameters)), grouped(n.bytes),
                human_bytes(n.bytes)});
  dtypes.print();
  if (!ck.unrecognized_names().empty()) {
    std::printf("\n%zu tensors outside the name table (counted as other), e.g. %s\n", ck.unrecognized_names().size(),
                ck.unrecognized_names().front().c_str());
  }
}

}  // namespace

void register_info(CLI::App& app, CommonOptions& common) {
  auto* cmd = app.add_subcommand("info", "Describe a checkpoint: config, layers, parameters and bytes");
  auto path = std::make_shared<std::string>();
  cmd->add_option("model", *path, "Model directory (config.json + safetensors)")->required();
  cmd->callback([path] {
    const Checkpoint ck = Checkpoint::open(*path);
    print_config(ck);
    print_inventory(ck);
  });
}

}  // namespace dsq::cli
