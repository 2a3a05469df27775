// GPU-vs-CPU checks of CudaOps' small ops (elementwise_ops.cu): rms_norm, rope,
// norm_rope, rms_norm_and_norm_rope, swiglu, add, gather_rows, embed_streams, mhc_mix, mhc_pre, mhc_post, hc_head
// and route. Each test runs one op through CpuOps (the fp32 reference) and CudaOps on the same random inputs, for
// a table of shapes: tiny (H = 64, 4 heads of 32, rope 8, 8 experts, k = 2), DeepSeek-V4-
// Flash (H = 4096, N = 4, 64 heads of 512, rope 64, 256 experts, k = 6, T in {1, 7, 300})
// and ragged widths that take the kernels' scalar paths. GPU outputs start as NaN, so an
// element a kernel never writes fails (op_check.h).
//
// Tolerances (relative L2 unless said otherwise), by what can differ:
//  - exact (0): pure copies and the plain sum of add (gather_rows, embed_streams, add).
//  - 1e-6: one expression per element, where only the last bits of expf / sincosf and
//    FMA contraction differ (swiglu, rope, mhc_post, hc_head).
//  - 1e-5: a reduction over the row in another order (rms_norm, norm_rope,
//    rms_norm_and_norm_rope, mhc_mix:
//    ≈ √dim·2⁻²⁴ on the norm) or 20 Sinkhorn rounds that amplify an expf ulp (mhc_pre).
//  - route: the chosen expert SETS must be equal (order inside a token is unspecified);
//    weights within 1e-5 absolute (they are O(1); only the k-term sum order differs).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backend/cpu/rope.h"
#include "op_check.h"

namespace dsq::test {
namespace {

using cuda::CudaOps;
using cuda::Precision;

std::vector<int64_t> random_ints(size_t n, int64_t lo, int64_t hi, std::mt19937& rng) {
  std::uniform_int_distribution<int64_t> dist(lo, hi);
  std::vector<int64_t> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// A device buffer of n floats starting `offset` floats into a fresh allocation, so that
// offset 1 breaks the 16-byte alignment the float4 paths need.
struct Shifted {
  Tensor owner;
  float* ptr;
};
Shifted shifted_gpu(CudaOps& ops, const std::vector<float>& host, int64_t offset) {
  std::vector<float> padded(size_t(offset), std::nanf(""));
  padded.insert(padded.end(), host.begin(), host.end());
  Tensor t = on_gpu(ops, padded);
  return {t, t.mutable_data<float>() + offset};
}
std::vector<float> floats_at(CudaOps& ops, const Shifted& s, int64_t offset, size_t n) {
  const std::vector<float> all = floats_of(ops, s.owner);
  return std::vector<float>(all.begin() + offset, all.begin() + offset + int64_t(n));
}

// ---- rms_norm ----

struct NormShape {
  std::string name;
  int64_t n, dim, stride;
  bool weighted, in_place;
};

TEST(CudaElementwise, RmsNormMatchesCpu) {
  DSQ_REQUIRE_GPU();
  const std::vector<NormShape> shapes = {
      {"tiny hidden", 3, 64, 64, true, false},
      {"tiny per-head q norm, in place", 3 * 4, 32, 32, false, true},
      {"ragged: dim 37 at stride 41", 5, 37, 41, true, false},
      {"flash hidden T=300", 300, 4096, 4096, true, false},
      {"flash per-head q norm T=7", 7 * 64, 512, 512, false, true},
      {"flash mHC input norm T=1 (N·H)", 1, 16384, 16384, false, false},
      {"flash kv slice at stride", 7, 448, 512, true, false},
  };
  cpu::CpuOps cpu;
  CudaOps gpu(Precision::F32);
  std::mt19937 rng(1);
  for (const NormShape& s : shapes) {
    SCOPED_TRACE(s.name);
    const size_t total = size_t((s.n - 1) * s.stride + s.dim);
    const std::vector<float> x = random_floats(total, rng, 2.0f);
    const std::vector<float> w = random_floats(size_t(s.dim), rng);
    // Elements between rows (stride > dim) must stay as they were, on both sides.
    std::vector<float> want = x;
    cpu.rms_norm(x.data(), s.n, s.dim, s.stride, s.weighted ? w.data() : nullptr, 1e-6f, want.data());
    Tensor gx = on_gpu(gpu, x), gw = on_gpu(gpu, w);
    Tensor gy = s.in_place ? gx : on_gpu(gpu, x);
    gpu.rms_norm(gx.data<float>(), s.n, s.dim, s.stride, s.weighted ? gw.data<float>() : nullptr, 1e-6f,
                 gy.mutable_data<float>());
    expect_close(floats_of(gpu, gy), want, 1e-5, "rms_norm");
  }
}

// ---- rope ----

// A rope table with V4-Flash's long-context YaRN scaling (yarn) or plain.
cpu::RopeFrequencies test_rope_table(int64_t rope_dim, bool yarn) {
  cpu::YarnScaling scaling;
  scaling.factor = 16;
  scaling.original_max_positions = 65536;
  return cpu::rope_frequencies(rope_dim, 10000.0, yarn ? &scaling : nullptr);
}

struct RopeShape {
  std::string name;
  int64_t tokens, heads, dim, rope_dim;
  int64_t max_position;
  bool inverse, yarn;
};

TEST(CudaElementwise, RopeMatchesCpu) {
  DSQ_REQUIRE_GPU();
  const std::vector<RopeShape> shapes = {
      {"tiny q", 3, 4, 32, 8, 100, false, false},
      {"tiny inverse", 3, 4, 32, 8, 100, true, false},
      {"flash q T=300", 300, 64, 512, 64, 4096, false, true},
      {"flash q T=1 at large positions", 1, 64, 512, 64, 1 << 20, false, true},
      {"flash inverse (attention output) T=7", 7, 64, 512, 64, 65536, true, true},
      {"flash indexer key, one head", 7, 1, 128, 64, 65536, false, true},
      {"odd vector length", 5, 3, 13, 6, 1000, false, false},
  };
  cpu::CpuOps cpu;
  CudaOps gpu(Precision::F32);
  std::mt19937 rng(2);
  // CudaOps keeps a device copy per host table address: the tables must outlive it.
  std::vector<cpu::RopeFrequencies> tables;
  tables.reserve(shapes.size());
  for (const RopeShape& s : shapes) {
    SCOPED_TRACE(s.name);
    const cpu::RopeFrequencies& table = tables.emplace_back(test_rope_table(s.rope_dim, s.yarn));
    const std::vector<float> x = random_floats(size_t(s.tokens * s.heads * s.dim), rng);
    const std::vector<int64_t> pos = random_ints(size_t(s.tokens), 0, s.max_position, rng);
    std::vector<float> want = x;
    cpu.rope(want.data(), s.tokens, s.heads, s.dim, pos.data(), table, s.inverse);
    Tensor gx = on_gpu(gpu, x), gpos = on_gpu(gpu, pos);
    gpu.rope(gx.mutable_data<float>(), s.tokens, s.heads, s.dim, gpos.data<int64_t>(), table, s.inverse);
    expect_close(floats_of(gpu, gx), want, 1e-6, "rope");
  }
}

// ---- norm_rope ----

TEST(CudaElementwise, NormRopeMatchesCpu) {
  DSQ_REQUIRE_GPU();
  struct Shape {
    std::string name;
    int64_t tokens, heads, dim, rope_dim;
    bool weighted;
  };
  const std::vector<Shape> shapes = {
      {"flash queries T=1", 1, 64, 512, 64, false},
      {"flash queries T=7", 7, 64, 512, 64, false},
      {"flash key T=300, kv_norm weight", 300, 1, 512, 64, true},
      {"tiny", 3, 4, 32, 8, true},
      {"odd vector length", 5, 3, 13, 6, true},
  };
  cpu::CpuOps cpu;
  CudaOps gpu(Precision::F32);
  std::mt19937 rng(11);
  std::vector<cpu::RopeFrequencies> tables;
  tables.reserve(shapes.size());
  for (const Shape& s : shapes) {
    SCOPED_TRACE(s.name);
    const cpu::RopeFrequencies& table = tables.emplace_back(test_rope_table(s.rope_dim, true));
    const std::vector<float> x = random_floats(size_t(s.tokens * s.heads * s.dim), rng, 2.0f);
    const std::vector<float> w = random_floats(size_t(s.dim), rng);
    const std::vector<int64_t> pos = random_ints(size_t(s.tokens), 0, 65536, rng);
    std::vector<float> want = x;
    cpu.norm_rope(want.data(), s.tokens, s.heads, s.dim, s.weighted ? w.data() : nullptr, 1e-6f, pos.data(), table);
    Tensor gx = on_gpu(gpu, x), gw = on_gpu(gpu, w), gpos = on_gpu(gpu, pos);
    gpu.norm_rope(gx.mutable_data<float>(), s.tokens, s.heads, s.dim, s.weighted ? gw.data<float>() : nullptr, 1e-6f,
                  gpos.data<int64_t>(), table);
    expect_close(floats_of(gpu, gx), want, 1e-5, "norm_rope");
  }
}

// ---- rms_norm_and_norm_rope ----

// Against the CPU (its composition of rms_norm and norm_rope), and bit for bit against
// CudaOps' own rms_norm and norm_rope: the one launch must do exactly their arithmetic.
TEST(CudaElementwise, RmsNormAndNormRopeMatchesCpuAndTheSeparateOps) {
  DSQ_REQUIRE_GPU();
  struct Shape {
    std::string name;
    int64_t n, dim, stride;                      // the rms_norm rows
    int64_t tokens, heads, head_dim, rope_dim;  // the norm_rope vectors
  };
  const std::vector<Shape> shapes = {
      {"flash q_residual and key head T=1", 1, 1024, 1024, 1, 1, 512, 64},
      {"flash T=7", 7, 1024, 1024, 7, 1, 512, 64},
      {"flash T=300", 300, 1024, 1024, 300, 1, 512, 64},
      {"tiny, two heads", 3, 64, 64, 3, 2, 32, 8},
      {"rows float4, heads scalar", 4, 64, 64, 4, 3, 13, 6},
      {"rows scalar at stride, heads float4", 5, 37, 41, 5, 2, 32, 8},
  };
  cpu::CpuOps cpu;
  CudaOps gpu(Precision::F32);
  std::mt19937 rng(12);
  std::vector<cpu::RopeFrequencies> tables;
  tables.reserve(shapes.size());
  for (const Shape& s : shapes) {
    SCOPED_TRACE(s.name);
    const cpu::RopeFrequencies& table = tables.emplace_back(test_rope_table(s.rope_dim, true));
    const std::vector<float> x = random_floats(size_t((s.n - 1) * s.stride + s.dim), rng, 2.0f);
    const std::vector<float> w = random_floats(size_t(s.dim), rng);
    const std::vector<float> hx = random_floats(size_t(s.tokens * s.heads * s.head_dim), rng, 2.0f);
    const std::vector<float> hw = random_floats(size_t(s.head_dim), rng);
    const std::vector<int64_t> pos = random_ints(size_t(s.tokens), 0, 65536, rng);
    std::vector<float> want_y = x, want_h = hx;
    cpu.rms_norm_and_norm_rope(x.data(), s.n, s.dim, s.stride, w.data(), want_y.data(), want_h.data(), s.tokens,
                               s.heads, s.head_dim, hw.data(), 1e-6f, pos.data(), table);
    const Tensor gx = on_gpu(gpu, x), gw = on_gpu(gpu, w), ghw = on_gpu(gpu, hw), gpos = on_gpu(gpu, pos);
    Tensor gy = on_gpu(gpu, x), gh = on_gpu(gpu, hx);
    gpu.rms_norm_and_norm_rope(gx.data<float>(), s.n, s.dim, s.stride, gw.data<float>(), gy.mutable_data<float>(),
                               gh.mutable_data<float>(), s.tokens, s.heads, s.head_dim, ghw.data<float>(), 1e-6f,
                               gpos.data<int64_t>(), table);
    Tensor separate_y = on_gpu(gpu, x), separate_h = on_gpu(gpu, hx);
    gpu.rms_norm(gx.data<float>(), s.n, s.dim, s.stride, gw.data<float>(), 1e-6f, separate_y.mutable_data<float>());
    gpu.norm_rope(separate_h.mutable_data<float>(), s.tokens, s.heads, s.head_dim, ghw.data<float>(), 1e-6f,
                  gpos.data<int64_t>(), table);
    const std::vector<float> got_y = floats_of(gpu, gy), got_h = floats_of(gpu, gh);
    expect_close(got_y, want_y, 1e-5, "rms_norm rows");
    expect_close(got_h, want_h, 1e-5, "norm_rope vectors");
    EXPECT_TRUE(got_y == floats_of(gpu, separate_y)) << "rms_norm rows differ from rms_norm's";
    EXPECT_TRUE(got_h == floats_of(gpu, separate_h)) << "norm_rope vectors differ from norm_rope's";
  }
}

// ---- swiglu and add ----

struct ElementwiseShape {
  std::string name;
  int64_t n;
  int64_t offset;  // floats into the allocation: 1 takes the unaligned scalar path
};

const std::vector<ElementwiseShape> kElementwiseShapes = {
    {"one", 1, 0},
    {"tail of 3 after the float4s", 7, 0},
    {"tiny expert T=3 (F=128)", 3 * 128, 0},
    {"flash expert T=300 (F=2048)", 300 * 2048, 0},
    {"flash unaligned", 7 * 2048 + 3, 1},
};

TEST(CudaElementwise, SwigluMatchesCpu) {
  DSQ_REQUIRE_GPU();
  cpu::CpuOps cpu;
  CudaOps gpu(Precision::F32);
  std::mt19937 rng(3);
  for (const ElementwiseShape& s : kElementwiseShapes) {
    for (float limit : {10.0f, 0.0f}) {
      SCOPED_TRACE(s.name + " limit " + std::to_string(limit));
      // sigma 8 so that the clamp at 10 bites on both inputs.
      const std::vector<float> g = random_floats(size_t(s.n), rng, 8.0f), u = random_floats(size_t(s.n), rng, 8.0f);
      std::vector<float> want(g.size());
      cpu.swiglu(g.data(), u.data(), s.n, limit, want.data());
      Shifted gg = shifted_gpu(gpu, g, s.offset), gu = shifted_gpu(gpu, u, s.offset);
      gpu.swiglu(gg.ptr, gu.ptr, s.n, limit, gg.ptr);  // out aliases gate, as the model calls it
      expect_close(floats_at(gpu, gg, s.offset, g.size()), want, 1e-6, "swiglu");
    }
  }
}

TEST(CudaElementwise, AddMatchesCpuExactly) {
  DSQ_REQUIRE_GPU();
  cpu::CpuOps cpu;
  CudaOps gpu(Precision::F32);
  std::mt19937 rng(4);
  for (const ElementwiseShape& s : kElementwiseShapes) {
    SCOPED_TRACE(s.name);
    const std::vector<float> d = random_floats(size_t(s.n), rng), src = random_floats(size_t(s.n), rng);
    std::vector<float> want = d;
    cpu.add(want.data(), src.data(), s.n);
    Shifted gd = shifted_gpu(gpu, d, s.offset), gs = shifted_gpu(gpu, src, s.offset);
    gpu.add(gd.ptr, gs.ptr, s.n);
    expect_close(floats_at(gpu, gd, s.offset, d.size()), want, 0.0, "add");
  }
}

// ---- gather_rows ----

TEST(CudaElementwise, GatherRowsMatchesCpuExactly) {
  DSQ_REQUIRE_GPU();
  struct Shape {
    std::string name;
    int64_t src_rows, n, width;
  };
  const std::vector<Shape> shapes = {
      {"tiny", 10, 6, 64},
      {"ragged width", 9, 20, 37},
      {"flash: T=300 tokens to 6 expert slots each", 300, 300 * 6, 4096},
      {"70000 narrow rows (past a 65535 grid axis)", 100, 70000, 8},
  };
  cpu::CpuOps cpu;
  CudaOps gpu(Precision::F32);
  std::mt19937 rng(5);
  for (const Shape& s : shapes) {
    SCOPED_TRACE(s.name);
    const std::vector<float> src = random_floats(size_t(s.src_rows * s.width), rng);
    const std::vector<int64_t> rows = random_ints(size_t(s.n), 0, s.src_rows - 1, rng);
    std::vector<float> want(size_t(s.n * s.width));
    cpu.gather_rows(src.data(), rows.data(), s.n, s.width, want.data());
    Tensor gsrc = on_gpu(gpu, src), grows = on_gpu(gpu, rows), gdst = poisoned_gpu(gpu, s.n * s.width);
    gpu.gather_rows(gsrc.data<float>(), grows.data<int64_t>(), s.n, s.width, gdst.mutable_data<float>());
    expect_close(floats_of(gpu, gdst), want, 0.0, "gather_rows");
  }
}

// ---- embed_streams ----

struct EmbedShape {
  std::string name;
  int64_t vocab, hidden, streams, tokens;
  DType dtype;
};

TEST(CudaElementwise, EmbedStreamsMatchesCpuExactly) {
  DSQ_REQUIRE_GPU();
  const std::vector<EmbedShape> shapes = {
      {"tiny bf16", 100, 64, 4, 5, DType::BF16},
      {"tiny f32", 50, 64, 4, 3, DType::F32},
      {"tiny f16, ragged hidden", 40, 37, 4, 6, DType::F16},
      {"flash bf16 T=1", 1000, 4096, 4, 1, DType::BF16},
      {"flash bf16 T=300", 1000, 4096, 4, 300, DType::BF16},
      {"70000 tokens of a narrow table", 50, 8, 1, 70000, DType::F32},
  };
  cpu::CpuOps cpu;
  CudaOps gpu(Precision::F32);
  std::mt19937 rng(6);
  // CudaOps keeps a device copy per host table address: the tables must outlive it (a
  // freed table's address may be reused by the next one).
  std::vector<QuantizedMatrix> tables;
  for (const EmbedShape& s : shapes) {
    SCOPED_TRACE(s.name);
    const QuantizedMatrix& table = tables.emplace_back(QuantizedMatrix::dense(
        Tensor::from_f32(random_floats(size_t(s.vocab * s.hidden), rng), {s.vocab, s.hidden}).cast(s.dtype)));
    const std::vector<int64_t> ids = random_ints(size_t(s.tokens), 0, s.vocab - 1, rng);
    const int64_t width = s.streams * s.hidden;
    std::vector<float> want(size_t(s.tokens * width));
    cpu.embed_streams(table, ids.data(), s.tokens, s.streams, want.data());
    Tensor gids = on_gpu(gpu, ids), gout = poisoned_gpu(gpu, s.tokens * width);
    gpu.embed_streams(table, gids.data<int64_t>(), s.tokens, s.streams, gout.mutable_data<float>());
    expect_close(floats_of(gpu, gout), want, 0.0, "embed_streams");
  }
}

// The CPU throws on an id outside the table; the GPU kernel cannot, and poisons that
// token's streams with NaN instead (elementwise_ops.cu), leaving the other tokens intact.
TEST(CudaElementwise, EmbedStreamsPoisonsOutOfRangeIds) {
  DSQ_REQUIRE_GPU();
  CudaOps gpu(Precision::F32);
  const int64_t V = 10, H = 8, N = 2;
  std::vector<float> rows(size_t(V * H));
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = float(i);
  const QuantizedMatrix table = QuantizedMatrix::dense(Tensor::from_f32(rows, {V, H}));
  const std::vector<int64_t> ids = {3, -1, V, 9};
  Tensor gids = on_gpu(gpu, ids), gout = poisoned_gpu(gpu, 4 * N * H);
  gpu.embed_streams(table, gids.data<int64_t>(), 4, N, gout.mutable_data<float>());
  const std::vector<float> out = floats_of(gpu, gout);
  for (int64_t t = 0; t < 4; ++t)
    for (int64_t c = 0; c < N * H; ++c) {
      const float v = out[size_t(t * N * H + c)];
      if (t == 1 || t == 2)
        EXPECT_TRUE(std::isnan(v)) << "token " << t;
      else
        EXPECT_EQ(v, float(ids[size_t(t)] * H + c % H)) << "token " << t;
    }
}

// ---- mHC ----

struct MhcShape {
  std::string name;
  int64_t tokens, streams, hidden, sinkhorn_iters;
};

const std::vector<MhcShape> kMhcShapes = {
    {"tiny", 3, 4, 64, 20},
    {"tiny, ragged hidden", 5, 4, 37, 20},
    {"two streams, one Sinkhorn round", 2, 2, 64, 1},
    {"eight streams (two Sinkhorn entries per lane)", 3, 8, 64, 20},
    {"flash T=1", 1, 4, 4096, 20},
    {"flash T=4", 4, 4, 4096, 20},
    {"flash T=7", 7, 4, 4096, 20},
    {"flash T=300", 300, 4, 4096, 20},
    {"70000 narrow tokens", 70000, 2, 4, 2},
};

// Random mHC parameters: the streams, the mixing weight fn (scaled so that a token's
// mixing logits are O(1)), base and scale.
struct MhcInputs {
  std::vector<float> streams, base, scale;
  QuantizedMatrix fn;
};
MhcInputs mhc_inputs(const MhcShape& s, std::mt19937& rng) {
  const int64_t R = (2 + s.streams) * s.streams, K = s.streams * s.hidden;
  MhcInputs in;
  in.streams = random_floats(size_t(s.tokens * K), rng);
  in.fn = QuantizedMatrix::dense(
      Tensor::from_f32(random_floats(size_t(R * K), rng, float(1.0 / std::sqrt(double(K)))), {R, K}));
  in.base = random_floats(size_t(R), rng);
  in.scale = {0.7f, 1.3f, 2.0f};
  return in;
}

// Without and with the fused input norm. Up to 4 tokens of <= 4 streams with a hidden
// size that is a multiple of 64 (up to 4096) take the cluster kernel
// (mhc_pre_cluster_kernel), up to 8 tokens of <= 6 streams with a 4-aligned hidden size
// the one-launch path with a ticket (mhc_mix_pre_kernel); the rest mhc_mix then the
// per-token kernels. Bounds: the mixing sums are fp32 in another order (1e-6 relative on
// the logits), which 20 Sinkhorn rounds and the sigmoids carry into comb and x.
TEST(CudaElementwise, MhcPreMatchesCpu) {
  DSQ_REQUIRE_GPU();
  cpu::CpuOps cpu;
  CudaOps gpu(Precision::F32);
  std::mt19937 rng(7);
  const float eps = 1e-6f;
  // CudaOps keys its weight copies by the host matrix's address: each fn lives on.
  std::vector<MhcInputs> inputs;
  for (const MhcShape& s : kMhcShapes) inputs.push_back(mhc_inputs(s, rng));
  for (size_t shape = 0; shape < kMhcShapes.size(); ++shape) {
    const MhcShape& s = kMhcShapes[shape];
    const int64_t N = s.streams, T = s.tokens, H = s.hidden;
    const MhcInputs& in = inputs[shape];
    const std::vector<float> norm_w = random_floats(size_t(H), rng);
    for (bool normed : {false, true}) {
      SCOPED_TRACE(s.name + (normed ? ", with the input norm" : ""));
      std::vector<float> x(size_t(T * H)), post(size_t(T * N)), comb(size_t(T * N * N));
      cpu.mhc_pre(in.streams.data(), T, in.fn, eps, in.base.data(), in.scale.data(), N, H, s.sinkhorn_iters, eps,
                  normed ? norm_w.data() : nullptr, eps, x.data(), post.data(), comb.data());
      Tensor gs = on_gpu(gpu, in.streams), gbase = on_gpu(gpu, in.base), gscale = on_gpu(gpu, in.scale),
             gw = on_gpu(gpu, norm_w);
      Tensor gx = poisoned_gpu(gpu, T * H), gpost = poisoned_gpu(gpu, T * N), gcomb = poisoned_gpu(gpu, T * N * N);
      for (int call = 0; call < 2; ++call) {  // the second call checks that the fused path left its sums clear
        gpu.mhc_pre(gs.data<float>(), T, in.fn, eps, gbase.data<float>(), gscale.data<float>(), N, H,
                    s.sinkhorn_iters, eps, normed ? gw.data<float>() : nullptr, eps, gx.mutable_data<float>(),
                    gpost.mutable_data<float>(), gcomb.mutable_data<float>());
        expect_close(floats_of(gpu, gx), x, 2e-5, "mhc_pre x");
        expect_close(floats_of(gpu, gpost), post, 1e-5, "mhc_pre post");
        expect_close(floats_of(gpu, gcomb), comb, 5e-5, "mhc_pre comb");
      }
      // x alone (post and comb null: the cluster kernel's pre-only variant).
      Tensor gx_only = poisoned_gpu(gpu, T * H);
      gpu.mhc_pre(gs.data<float>(), T, in.fn, eps, gbase.data<float>(), gscale.data<float>(), N, H, s.sinkhorn_iters,
                  eps, normed ? gw.data<float>() : nullptr, eps, gx_only.mutable_data<float>(), nullptr, nullptr);
      expect_close(floats_of(gpu, gx_only), x, 2e-5, "mhc_pre x without post and comb");
      // post and comb alone (mhc_coefficients).
      Tensor gpost2 = poisoned_gpu(gpu, T * N), gcomb2 = poisoned_gpu(gpu, T * N * N);
      gpu.mhc_coefficients(gs.data<float>(), T, in.fn, eps, gbase.data<float>(), gscale.data<float>(), N, H,
                           s.sinkhorn_iters, eps, gpost2.mutable_data<float>(), gcomb2.mutable_data<float>());
      expect_close(floats_of(gpu, gpost2), post, 1e-5, "mhc_coefficients post");
      expect_close(floats_of(gpu, gcomb2), comb, 5e-5, "mhc_coefficients comb");
    }
  }
}

// mhc_mix: the fused single pass (up to 8 rows, up to 64 mixing rows) and the GEMM then
// 1/rms path beyond; repeated calls check that the kernel leaves its ticket clear.
// Bound 1e-5: fp32 sums in another order, and x·w/rms instead of (x/rms)·w.
TEST(CudaElementwise, MhcMixMatchesCpu) {
  DSQ_REQUIRE_GPU();
  struct Shape {
    std::string name;
    int64_t tokens, rows, width;
  };
  const std::vector<Shape> shapes = {
      {"flash decode, T=1 (24 mixing rows of N·H = 16384)", 1, 24, 16384},
      {"flash head mix, T=1 (4 rows)", 1, 4, 16384},
      {"flash T=3", 3, 24, 16384},
      {"flash T=8", 8, 24, 16384},
      {"ragged width 1000", 2, 24, 1000},
      {"T=9: norm + GEMM", 9, 24, 16384},
      {"flash prefill T=300: norm + GEMM", 300, 24, 16384},
      {"tiny N·H = 1024", 5, 24, 1024},
  };
  cpu::CpuOps cpu;
  // CudaOps keys its weight copies by the host matrix's address: each weight lives on.
  std::mt19937 rng(17);
  std::vector<QuantizedMatrix> weights;
  for (const Shape& s : shapes)
    weights.push_back(QuantizedMatrix::dense(
        Tensor::from_f32(random_floats(size_t(s.rows * s.width), rng, 0.01f), {s.rows, s.width})));
  for (Precision precision : {Precision::F32, Precision::Fast}) {
    CudaOps gpu(precision);
    for (size_t i = 0; i < shapes.size(); ++i) {
      const Shape& s = shapes[i];
      const QuantizedMatrix& fn = weights[i];
      SCOPED_TRACE(s.name);
      for (int call = 0; call < 3; ++call) {
        const std::vector<float> x = random_floats(size_t(s.tokens * s.width), rng, 3.0f);
        std::vector<float> want(size_t(s.tokens * s.rows));
        cpu.mhc_mix(x.data(), s.tokens, s.width, 1e-6f, fn, want.data());
        Tensor gx = on_gpu(gpu, x), gmix = poisoned_gpu(gpu, s.tokens * s.rows);
        gpu.mhc_mix(gx.data<float>(), s.tokens, s.width, 1e-6f, fn, gmix.mutable_data<float>());
        expect_close(floats_of(gpu, gmix), want, 1e-5, "mhc_mix");
      }
    }
  }
}

// A residual update's inputs: the block's coefficients and its two outputs, on the host
// and as device copies.
struct UpdateInputs {
  std::vector<float> post, comb, y, y_extra;
  Tensor gpost, gcomb, gy, gy_extra;
};
UpdateInputs update_inputs(CudaOps& gpu, int64_t T, int64_t N, int64_t H, std::mt19937& rng) {
  UpdateInputs u;
  u.post = random_floats(size_t(T * N), rng);
  u.comb = random_floats(size_t(T * N * N), rng);
  u.y = random_floats(size_t(T * H), rng);
  u.y_extra = random_floats(size_t(T * H), rng);
  u.gpost = on_gpu(gpu, u.post);
  u.gcomb = on_gpu(gpu, u.comb);
  u.gy = on_gpu(gpu, u.y);
  u.gy_extra = on_gpu(gpu, u.y_extra);
  return u;
}

TEST(CudaElementwise, MhcPostMatchesCpu) {
  DSQ_REQUIRE_GPU();
  cpu::CpuOps cpu;
  CudaOps gpu(Precision::F32);
  std::mt19937 rng(8);
  for (const MhcShape& s : kMhcShapes) {
    for (bool extra : {false, true}) {  // with a second block output (the shared expert's) added
      SCOPED_TRACE(s.name + (extra ? ", with y_extra" : ""));
      const int64_t N = s.streams, T = s.tokens, H = s.hidden;
      std::vector<float> streams = random_floats(size_t(T * N * H), rng);
      const UpdateInputs u = update_inputs(gpu, T, N, H, rng);
      Tensor gs = on_gpu(gpu, streams);
      cpu.mhc_post(streams.data(), u.post.data(), u.comb.data(), u.y.data(), extra ? u.y_extra.data() : nullptr, T, N,
                   H);
      gpu.mhc_post(gs.mutable_data<float>(), u.gpost.data<float>(), u.gcomb.data<float>(), u.gy.data<float>(),
                   extra ? u.gy_extra.data<float>() : nullptr, T, N, H);
      expect_close(floats_of(gpu, gs), streams, 1e-6, "mhc_post");
    }
  }
}

// mhc_post then mhc_pre as one op: the cluster kernel applies the update to its own
// columns first (flash T = 1 and 4); the other shapes run the two ops. The bounds are
// those of mhc_post and mhc_pre.
TEST(CudaElementwise, MhcPostPreMatchesCpu) {
  DSQ_REQUIRE_GPU();
  cpu::CpuOps cpu;
  CudaOps gpu(Precision::F32);
  std::mt19937 rng(10);
  const float eps = 1e-6f;
  std::vector<MhcInputs> inputs;  // each fn lives on (CudaOps keys its copies by address)
  for (const MhcShape& s : kMhcShapes) inputs.push_back(mhc_inputs(s, rng));
  for (size_t shape = 0; shape < kMhcShapes.size(); ++shape) {
    const MhcShape& s = kMhcShapes[shape];
    const int64_t N = s.streams, T = s.tokens, H = s.hidden;
    const MhcInputs& in = inputs[shape];
    const std::vector<float> norm_w = random_floats(size_t(H), rng);
    const UpdateInputs u = update_inputs(gpu, T, N, H, rng);
    Tensor gbase = on_gpu(gpu, in.base), gscale = on_gpu(gpu, in.scale), gw = on_gpu(gpu, norm_w);
    for (bool extra : {false, true}) {
      std::vector<float> streams = in.streams, x(size_t(T * H)), next_post(size_t(T * N)),
                         next_comb(size_t(T * N * N));
      cpu.mhc_post_pre(streams.data(), u.post.data(), u.comb.data(), u.y.data(), extra ? u.y_extra.data() : nullptr,
                       T, in.fn, eps, in.base.data(), in.scale.data(), N, H, s.sinkhorn_iters, eps, norm_w.data(), eps,
                       x.data(), next_post.data(), next_comb.data());
      // With the new post and comb, and without them (x alone: the decode step's form).
      for (bool coefficients : {true, false}) {
        SCOPED_TRACE(s.name + (extra ? ", with y_extra" : "") + (coefficients ? "" : ", x alone"));
        Tensor gs = on_gpu(gpu, in.streams), gx = poisoned_gpu(gpu, T * H), gnext_post = poisoned_gpu(gpu, T * N),
               gnext_comb = poisoned_gpu(gpu, T * N * N);
        gpu.mhc_post_pre(gs.mutable_data<float>(), u.gpost.data<float>(), u.gcomb.data<float>(), u.gy.data<float>(),
                         extra ? u.gy_extra.data<float>() : nullptr, T, in.fn, eps, gbase.data<float>(),
                         gscale.data<float>(), N, H, s.sinkhorn_iters, eps, gw.data<float>(), eps,
                         gx.mutable_data<float>(), coefficients ? gnext_post.mutable_data<float>() : nullptr,
                         coefficients ? gnext_comb.mutable_data<float>() : nullptr);
        expect_close(floats_of(gpu, gs), streams, 1e-6, "mhc_post_pre streams");
        expect_close(floats_of(gpu, gx), x, 2e-5, "mhc_post_pre x");
        if (coefficients) {
          expect_close(floats_of(gpu, gnext_post), next_post, 1e-5, "mhc_post_pre post");
          expect_close(floats_of(gpu, gnext_comb), next_comb, 5e-5, "mhc_post_pre comb");
        }
      }
    }
  }
}

TEST(CudaElementwise, HcHeadMatchesCpu) {
  DSQ_REQUIRE_GPU();
  cpu::CpuOps cpu;
  CudaOps gpu(Precision::F32);
  std::mt19937 rng(9);
  for (const MhcShape& s : kMhcShapes) {
    SCOPED_TRACE(s.name);
    const int64_t N = s.streams, T = s.tokens, H = s.hidden;
    const std::vector<float> streams = random_floats(size_t(T * N * H), rng), mix = random_floats(size_t(T * N), rng),
                             base = random_floats(size_t(N), rng);
    std::vector<float> out(size_t(T * H));
    cpu.hc_head(streams.data(), mix.data(), base.data(), 0.9f, T, N, H, 1e-6f, out.data());
    Tensor gs = on_gpu(gpu, streams), gmix = on_gpu(gpu, mix), gbase = on_gpu(gpu, base),
           gout = poisoned_gpu(gpu, T * H);
    gpu.hc_head(gs.data<float>(), gmix.data<float>(), gbase.data<float>(), 0.9f, T, N, H, 1e-6f,
                gout.mutable_data<float>());
    expect_close(floats_of(gpu, gout), out, 1e-6, "hc_head");
  }
}

// ---- route ----

struct RouteShape {
  std::string name;
  int64_t tokens, experts, k;
  bool bias, hash;
};

// Per token, the (expert, weight) pairs sorted by expert: the order inside a token is
// unspecified.
std::vector<std::vector<std::pair<int64_t, float>>> routing_sets(const std::vector<int64_t>& chosen,
                                                                 const std::vector<float>& weights, int64_t k) {
  std::vector<std::vector<std::pair<int64_t, float>>> sets(chosen.size() / size_t(k));
  for (size_t t = 0; t < sets.size(); ++t) {
    for (int64_t j = 0; j < k; ++j) sets[t].push_back({chosen[t * k + j], weights[t * k + j]});
    std::sort(sets[t].begin(), sets[t].end());
  }
  return sets;
}

TEST(CudaElementwise, RouteMatchesCpu) {
  DSQ_REQUIRE_GPU();
  const std::vector<RouteShape> shapes = {
      {"tiny top-k", 5, 8, 2, true, false},
      {"tiny top-k without bias", 5, 8, 2, false, false},
      {"tiny hash", 5, 8, 2, false, true},
      {"flash top-k T=1", 1, 256, 6, true, false},
      {"flash top-k T=7", 7, 256, 6, true, false},
      {"flash top-k T=300", 300, 256, 6, true, false},
      {"flash hash T=300", 300, 256, 6, false, true},
      {"k = 8 of 256", 64, 256, 8, true, false},
      {"ragged: 72 experts", 9, 72, 3, true, false},
      {"384 experts", 5, 384, 8, true, false},
  };
  cpu::CpuOps cpu;
  CudaOps gpu(Precision::F32);
  std::mt19937 rng(10);
  const int64_t vocab = 1000;
  const float scaling = 1.5f;
  for (const RouteShape& s : shapes) {
    SCOPED_TRACE(s.name);
    const int64_t T = s.tokens, E = s.experts, k = s.k;
    // sigma 4 reaches softplus' linear branch (> 20 needs 5 sigma: a few per T=300 run).
    std::vector<float> logits = random_floats(size_t(T * E), rng, 4.0f);
    logits[0] = 25.0f;
    const std::vector<float> bias = random_floats(size_t(E), rng, 0.3f);
    const std::vector<int64_t> tid2eid = random_ints(size_t(vocab * k), 0, E - 1, rng);
    const std::vector<int64_t> tokens = random_ints(size_t(T), 0, vocab - 1, rng);
    const float* b = s.bias ? bias.data() : nullptr;
    std::vector<int64_t> chosen(size_t(T * k));
    std::vector<float> weights(size_t(T * k));
    cpu.route(logits.data(), T, E, b, s.hash ? tid2eid.data() : nullptr, tokens.data(), vocab, k, scaling,
              chosen.data(), weights.data());
    Tensor glogits = on_gpu(gpu, logits), gbias = on_gpu(gpu, bias), gtable = on_gpu(gpu, tid2eid),
           gtokens = on_gpu(gpu, tokens), gchosen = on_gpu(gpu, std::vector<int64_t>(size_t(T * k), -7)),
           gweights = poisoned_gpu(gpu, T * k);
    gpu.route(glogits.data<float>(), T, E, s.bias ? gbias.data<float>() : nullptr,
              s.hash ? gtable.data<int64_t>() : nullptr, gtokens.data<int64_t>(), vocab, k, scaling,
              gchosen.mutable_data<int64_t>(), gweights.mutable_data<float>());
    const auto want = routing_sets(chosen, weights, k);
    const auto got = routing_sets(ints_of(gpu, gchosen), floats_of(gpu, gweights), k);
    for (size_t t = 0; t < want.size(); ++t)
      for (int64_t j = 0; j < k; ++j) {
        ASSERT_EQ(got[t][j].first, want[t][j].first) << "token " << t;
        EXPECT_NEAR(got[t][j].second, want[t][j].second, 1e-5) << "token " << t << " expert " << got[t][j].first;
      }
  }
}

// Exact ties: the GPU keeps the lowest indices among equal scores. (torch's CPU top-k
// may keep others; the chosen scores are the same either way.)
TEST(CudaElementwise, RouteBreaksTiesByLowerIndex) {
  DSQ_REQUIRE_GPU();
  CudaOps gpu(Precision::F32);
  const int64_t E = 256, k = 6;
  std::vector<float> logits(size_t(E), -3.0f);
  for (int64_t e : {200, 17, 90, 5, 130, 64, 250, 33}) logits[size_t(e)] = 1.0f;  // 8 tied at the top
  logits[240] = 2.0f;                                                               // one clear winner
  Tensor glogits = on_gpu(gpu, logits), gchosen = on_gpu(gpu, std::vector<int64_t>(size_t(k), -7)),
         gweights = poisoned_gpu(gpu, k);
  gpu.route(glogits.data<float>(), 1, E, nullptr, nullptr, nullptr, 0, k, 1.0f, gchosen.mutable_data<int64_t>(),
            gweights.mutable_data<float>());
  std::vector<int64_t> chosen = ints_of(gpu, gchosen);
  std::sort(chosen.begin(), chosen.end());
  EXPECT_EQ(chosen, (std::vector<int64_t>{5, 17, 33, 64, 90, 240}));
}

// The CPU throws on a bad hash entry; the GPU gives that token expert ids inside
// [0, n_experts) and NaN weights, and routes the other tokens normally.
TEST(CudaElementwise, RouteHashPoisonsOutOfRangeIds) {
  DSQ_REQUIRE_GPU();
  CudaOps gpu(Precision::F32);
  const int64_t E = 8, k = 2, vocab = 4;
  const std::vector<float> logits(size_t(4 * E), 0.5f);
  const std::vector<int64_t> tid2eid = {0, 1, 2, E, 3, -1, 6, 7};  // rows 1 and 2 hold bad ids
  const std::vector<int64_t> tokens = {0, 1, vocab, 3};           // token 2 is outside the table
  Tensor glogits = on_gpu(gpu, logits), gtable = on_gpu(gpu, tid2eid), gtokens = on_gpu(gpu, tokens),
         gchosen = on_gpu(gpu, std::vector<int64_t>(size_t(4 * k), -7)), gweights = poisoned_gpu(gpu, 4 * k);
  gpu.route(glogits.data<float>(), 4, E, nullptr, gtable.data<int64_t>(), gtokens.data<int64_t>(), vocab, k, 1.0f,
            gchosen.mutable_data<int64_t>(), gweights.mutable_data<float>());
  const std::vector<int64_t> chosen = ints_of(gpu, gchosen);
  const std::vector<float> weights = floats_of(gpu, gweights);
  for (int64_t t = 0; t < 4; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const size_t i = size_t(t * k + j);
      EXPECT_TRUE(chosen[i] >= 0 && chosen[i] < E) << "token " << t;
      if (t == 1 || t == 2) {
        EXPECT_TRUE(std::isnan(weights[i])) << "token " << t;
      } else {
        EXPECT_EQ(chosen[i], tid2eid[size_t(tokens[size_t(t)] * k + j)]);
        EXPECT_FLOAT_EQ(weights[i], 0.5f);  // equal scores share the weight
      }
    }
}

// ---- no rows ----

// With T = 0 every op returns without touching memory (null pointers are never read).
TEST(CudaElementwise, ZeroRowsAreNoOps) {
  DSQ_REQUIRE_GPU();
  CudaOps gpu(Precision::F32);
  Tensor canary = poisoned_gpu(gpu, 16);
  float* p = canary.mutable_data<float>();
  const cpu::RopeFrequencies table = cpu::rope_frequencies(8, 10000.0);
  const QuantizedMatrix embed = QuantizedMatrix::dense(Tensor::from_f32(std::vector<float>(64, 1.0f), {4, 16}));
  gpu.rms_norm(p, 0, 16, 16, nullptr, 1e-6f, p);
  gpu.rope(p, 0, 4, 16, nullptr, table, false);
  gpu.swiglu(p, p, 0, 10.0f, p);
  gpu.add(p, p, 0);
  gpu.gather_rows(p, nullptr, 0, 16, p);
  gpu.embed_streams(embed, nullptr, 0, 4, p);
  gpu.norm_rope(p, 0, 4, 16, nullptr, 1e-6f, nullptr, table);
  gpu.rms_norm_and_norm_rope(p, 0, 16, 16, nullptr, p, p, 0, 1, 16, nullptr, 1e-6f, nullptr, table);
  gpu.mhc_mix(p, 0, 16, 1e-6f, embed, p);
  const QuantizedMatrix mix_fn = QuantizedMatrix::dense(Tensor::from_f32(std::vector<float>(24 * 64, 1.0f), {24, 64}));
  gpu.mhc_pre(p, 0, mix_fn, 1e-6f, nullptr, nullptr, 4, 16, 20, 1e-6f, nullptr, 1e-6f, p, p, p);
  gpu.mhc_pre(p, 0, mix_fn, 1e-6f, nullptr, nullptr, 4, 16, 20, 1e-6f, p, 1e-6f, p, p, p);
  gpu.mhc_post(p, nullptr, nullptr, nullptr, nullptr, 0, 4, 16);
  gpu.hc_head(p, nullptr, nullptr, 1.0f, 0, 4, 16, 1e-6f, p);
  gpu.route(p, 0, 8, nullptr, nullptr, nullptr, 0, 2, 1.0f, nullptr, p);
  for (float v : floats_of(gpu, canary)) EXPECT_TRUE(std::isnan(v));
}

}  // namespace
}  // namespace dsq::test
