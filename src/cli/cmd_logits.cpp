// `dsq logits <model> --input ids.safetensors --out logits.safetensors
//              [--chunks 37,27] [--decode N] [--device cpu|cuda] [--precision fast|f32] [--threads N]`
//
// Writes logits in the layout of the reference fixtures (shared/docs/dsv4-architecture.md
// §7.2): input_ids (i64 [1, L]); logits_full (f32 [1, L, V], one stateless forward);
// with chunks (--chunks, else the input file's `chunks` tensor if present): chunks and
// logits_chunked (the prompt fed chunk by chunk through the decoding state); with
// --decode N > 0: decode_ids (i64 [1, N], greedy, decode_ids[0] = argmax after the last
// chunk) and logits_decode (f32 [1, N, V], the logits after feeding each decode id). The
// output is written atomically.
#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/device_options.h"
#include "core/error.h"
#include "formats/safetensors.h"
#include "model/model.h"

namespace dsq::cli {
namespace {

struct LogitsOptions {
  DeviceOptions device;
  std::string model_dir, input, output, chunks;
  int64_t decode = 0;
};

std::vector<int64_t> parse_chunks(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    DSQ_CHECK(used == part.size() && !part.empty() && v > 0, "--chunks: '", part,
              "' is not a positive chunk length");
    out.push_back(v);
  }
  return out;
}

Tensor i64_tensor(const std::vector<int64_t>& v, Shape shape) {
  Tensor t = Tensor::zeros(DType::I64, std::move(shape));
  std::copy(v.begin(), v.end(), t.mutable_data<int64_t>());
  return t;
}

int64_t argmax(const float* row, int64_t n) { return std::max_element(row, row + n) - row; }

void run_logits(const LogitsOptions& opt) {
  const auto in = SafetensorsFile::open(opt.input);
  DSQ_CHECK(in->contains("input_ids"), opt.input, ": no tensor input_ids");
  const Tensor ids_t = in->get("input_ids");
  DSQ_CHECK(ids_t.dtype() == DType::I64 && ids_t.rank() == 2 && ids_t.dim(0) == 1 && ids_t.dim(1) > 0, opt.input,
            ": input_ids must be i64 [1, L], found ", dtype_name(ids_t.dtype()), " ", shape_string(ids_t.shape()));
  const std::vector<int64_t> ids(ids_t.data<int64_t>(), ids_t.data<int64_t>() + ids_t.numel());
  const int64_t L = int64_t(ids.size());
  std::vector<int64_t> chunks;
  if (!opt.chunks.empty()) {
    chunks = parse_chunks(opt.chunks);
  } else if (in->contains("chunks")) {
    const Tensor c = in->get("chunks");
    for (int64_t i = 0; i < c.numel(); ++i) chunks.push_back(c.get_i64(i));
  }
  int64_t sum = 0;
  for (int64_t c : chunks) {
    DSQ_CHECK(c > 0, opt.input, ": chunk length ", c, " must be positive");
    sum += c;
  }
  DSQ_CHECK(chunks.empty() || sum == L, "chunks sum to ", sum, " but input_ids has ", L, " tokens");
  DSQ_CHECK(opt.decode >= 0, "--decode must be >= 0");

  const model::Model m = model::Model::load(opt.model_dir, make_ops(opt.device));
  const int64_t V = m.config().vocab_size;
  std::vector<NamedTensor> out;
  out.push_back({"input_ids", ids_t});
  {
    model::SequenceState s = m.new_sequence();
    out.push_back({"logits_full", m.forward({{&s, ids}}).reshaped({1, L, V})});
  }
  // The decode path continues from the chunked state (or from one whole-prompt call).
  model::SequenceState state = m.new_sequence();
  const std::vector<int64_t> prefill = chunks.empty() ? std::vector<int64_t>{L} : chunks;
  Tensor chunked = Tensor::zeros(DType::F32, {1, L, V});
  int64_t begin = 0;
  for (int64_t len : prefill) {
    const Tensor part = m.forward({{&state, std::span<const int64_t>(ids.data() + begin, size_t(len))}});
    std::copy(part.data<float>(), part.data<float>() + len * V, chunked.mutable_data<float>() + begin * V);
    begin += len;
  }
  if (!chunks.empty()) {
    out.push_back({"chunks", i64_tensor(chunks, {int64_t(chunks.size())})});
    out.push_back({"logits_chunked", chunked});
  }
  if (opt.decode > 0) {
    std::vector<int64_t> decode_ids;
    Tensor logits_decode = Tensor::zeros(DType::F32, {1, opt.decode, V});
    int64_t next = argmax(chunked.data<float>() + (L - 1) * V, V);
    for (int64_t k = 0; k < opt.decode; ++k) {
      decode_ids.push_back(next);
      const int64_t token[] = {next};
      const Tensor step = m.forward({{&state, token}});
      std::copy(step.data<float>(), step.data<float>() + V, logits_decode.mutable_data<float>() + k * V);
      next = argmax(step.data<float>(), V);
    }
    out.push_back({"decode_ids", i64_tensor(decode_ids, {1, opt.decode})});
    out.push_back({"logits_decode", logits_decode});
  }
  write_safetensors(opt.output, out);
}

}  // namespace

void register_logits(CLI::App& app, CommonOptions& common) {
  auto opt = std::make_shared<LogitsOptions>();
  CLI::App* cmd = app.add_subcommand("logits", "Full, chunked and greedy-decode logits of a prompt");
  cmd->add_option("model", opt->model_dir, "Model directory")->required();
  cmd->add_option("--input", opt->input, "safetensors file with input_ids (i64 [1, L])")->required();
  cmd->add_option("--out", opt->output, "Output safetensors file")->required();
  cmd->add_option("--chunks", opt->chunks, "Prefill chunk lengths, comma-separated (default: the input's chunks)");
  cmd->add_option("--decode", opt->decode, "Greedy decode steps after the prefill")->check(CLI::NonNegativeNumber);
  add_device_options(cmd, &opt->device);
  add_threads_option(cmd, &common);
  cmd->callback([opt, &common] {
    apply_common(common);
    run_logits(*opt);
  });
}

}  // namespace dsq::cli
