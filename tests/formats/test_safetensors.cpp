// safetensors reader/writer: round trips, the fixture files, every rejected defect (each must
// give one error naming the file, the problem and the tensor), sharded stores.
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "core/read_file.h"
#include "core/error.h"
#include "formats/safetensors.h"
#include "support/paths.h"

namespace dsq {
namespace {

namespace fs = std::filesystem;

// The bytes of a safetensors file: length prefix, `header` verbatim, `data_bytes` data bytes
// counting up from 0 (so views can be checked).
std::string raw_file(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  out += header;
  for (size_t i = 0; i < data_bytes; ++i) out += char(i & 0xff);
  return out;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// The message parse_header throws for `header` + `data_bytes`, or "" if it accepts it.
std::string header_error(const std::string& header, size_t data_bytes) {
  const std::string bytes = raw_file(header, data_bytes);
  try {
    SafetensorsFile::parse_header("f.safetensors", bytes.data(), bytes.size(), nullptr);
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    return e.what();
  }
  return "";
}

#define EXPECT_HAS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)


TEST(Safetensors, WriteThenReadRoundTripsInGivenHeaderOrder) {
  const std::string dir = test::make_temp_dir("st-roundtrip");
  const std::string path = dir + "/t.safetensors";
  // Mixed element sizes in an order that would misalign the I64 if laid out as given.
  Tensor u8 = Tensor::zeros(DType::U8, {3});
  for (int i = 0; i < 3; ++i) u8.mutable_data<uint8_t>()[i] = uint8_t(200 + i);
  Tensor f32 = Tensor::from_f32({1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f}, {2, 3});
  Tensor bf16 = Tensor::from_f32({1.0f, 2.0f, 3.0f}, {3}).cast(DType::BF16);
  Tensor i64 = Tensor::zeros(DType::I64, {2});
  i64.mutable_data<int64_t>()[0] = -5;
  i64.mutable_data<int64_t>()[1] = int64_t(1) << 40;
  write_safetensors(path, {{"z.u8", u8}, {"a.f32", f32}, {"m.bf16", bf16}, {"b.i64", i64}}, {{"format", "pt"}});

  const auto file = SafetensorsFile::open(path);
  ASSERT_EQ(file->tensors().size(), 4u);
  EXPECT_EQ(file->tensors()[0].name, "z.u8");
  EXPECT_EQ(file->tensors()[1].name, "a.f32");
  EXPECT_EQ(file->tensors()[2].name, "m.bf16");
  EXPECT_EQ(file->tensors()[3].name, "b.i64");
  EXPECT_EQ(file->metadata().at("format"), "pt");
  for (const TensorInfo& t : file->tensors()) EXPECT_EQ(t.begin % (dtype_bits(t.dtype) / 8), 0u) << t.name;
  EXPECT_EQ(file->get("z.u8").data<uint8_t>()[2], 202);
  EXPECT_EQ(file->get("a.f32").shape(), (Shape{2, 3}));
  EXPECT_EQ(file->get("a.f32").get_f32(2), 3.25f);
  EXPECT_EQ(file->get("m.bf16").dtype(), DType::BF16);
  EXPECT_EQ(file->get("m.bf16").get_f32(1), 2.0f);
  EXPECT_EQ(file->get("b.i64").get_i64(1), int64_t(1) << 40);

  // The header is space-padded so the data section starts 8-byte aligned.
  const std::string bytes = read_file(path);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | uint8_t(bytes[i]);
  EXPECT_EQ((8 + header_len) % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + header_len + 3 + 24 + 6 + 16);
  // Nothing but the file itself is left in the directory (no temporary).
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
}

TEST(Safetensors, ViewsKeepTheMappingAlive) {
  const std::string path = test::make_temp_dir("st-alive") + "/t.safetensors";
  write_safetensors(path, {{"x", Tensor::from_f32({4.0f, 5.0f}, {2})}});
  Tensor view;
  {
    const auto file = SafetensorsFile::open(path);
    view = file->get("x");
  }
  EXPECT_EQ(view.get_f32(1), 5.0f);
}

TEST(Safetensors, ReadsTheFixtureCheckpoint) {
  const auto file = SafetensorsFile::open(test::shared_path("models/tiny-a/model.safetensors"));
  EXPECT_EQ(file->tensors().size(), 210u);
  const TensorInfo& embed = file->info("model.embed_tokens.weight");
  EXPECT_EQ(embed.dtype, DType::BF16);
  EXPECT_EQ(embed.shape, (Shape{512, 64}));
  EXPECT_EQ(file->info("model.layers.0.ffn.gate.tid2eid").dtype, DType::I64);
  EXPECT_EQ(file->metadata().at("format"), "pt");
  // tid2eid holds expert ids: every entry is in [0, 8) for tiny-a's 8 experts.
  const Tensor tid2eid = file->get("model.layers.0.ffn.gate.tid2eid");
  for (int64_t i = 0; i < tid2eid.numel(); ++i) {
    ASSERT_GE(tid2eid.get_i64(i), 0);
    ASSERT_LT(tid2eid.get_i64(i), 8);
  }
}

TEST(Safetensors, AcceptsAWellFormedHandMadeHeader) {
  EXPECT_EQ(header_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"U8","shape":[],"data_offsets":[8,9]},)"
                         R"("e":{"dtype":"F32","shape":[0,3],"data_offsets":[9,9]}})",
                         9),
            "");
}

TEST(Safetensors, RejectsEachHeaderDefectWithOneLineNamingTheTensor) {
  const std::string ok_a = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  struct Case {
    std::string header;
    size_t data;
    std::vector<std::string> parts;  // substrings the message must contain
  };
  const std::vector<Case> cases = {
      {"{" + ok_a + ",", 8, {"f.safetensors", "malformed JSON header"}},
      {"[1,2]", 0, {"header is not a JSON object"}},
      {R"({"a":[1,2]})", 0, {"entry is not an object", "(tensor a)"}},
      {R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", 8, {"unknown dtype \"F64\"", "(tensor a)"}},
      {R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, {"shape dimensions must be non-negative integers", "(tensor a)"}},
      {R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,8]}})", 8, {"shape dimensions", "1.5", "(tensor a)"}},
      {R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", 8, {"shape missing or not an array", "(tensor a)"}},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8, {"begin 8 > end 0", "(tensor a)"}},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", 9, {"not a pair", "(tensor a)"}},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})", 8, {"data_offsets must be non-negative", "(tensor a)"}},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", 8, {"run past the end of the file", "(tensor a)"}},
      {R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, {"byte size 8 does not match shape [3]", "(tensor a)"}},
      {R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", 8, {"overflows", "(tensor a)"}},
      {R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"a":{"dtype":"F32","shape":[2],"data_offsets":[2,10]}})",
       10, {"not a multiple of the 4-byte element size", "(tensor a)"}},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       8, {"overlaps tensor a", "(tensor b)"}},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8, {"bytes [0, 4) belong to no tensor", "tensor a"}},
      {"{" + ok_a + "}", 12, {"4 trailing bytes"}},
      {"{" + ok_a + "," + ok_a + "}", 8, {"listed twice", "(tensor a)"}},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", 8, {"unexpected key \"extra\"", "(tensor a)"}},
      {"{" + ok_a + R"(,"__metadata__":{"format":1}})", 8, {"__metadata__ must map strings to strings", "format"}},
      {"{" + ok_a + R"(,"__metadata__":[]})", 8, {"__metadata__ is not an object"}},
      {R"({"a\nb":{"dtype":"X","shape":[],"data_offsets":[0,0]}})", 0, {"unknown dtype", "a\\x0ab"}},
  };
  for (const Case& c : cases) {
    const std::string message = header_error(c.header, c.data);
    ASSERT_FALSE(message.empty()) << "accepted: " << c.header;
    EXPECT_EQ(message.rfind("f.safetensors: ", 0), 0u) << message;
    for (const std::string& part : c.parts) EXPECT_HAS(message, part);
  }
}

TEST(Safetensors, LargeHeadersParseInLinearTime) {
  // The release has 69,187 tensors. A quadratic step (nlohmann's parser callback was one)
  // turned a 23k-tensor shard into a 50 s parse; linear parsing takes ~0.2 s of CPU. The
  // bound is CPU time and generous because test machines are shared.
  std::ostringstream text;
  text << "{";
  for (int i = 0; i < 20000; ++i) {
    text << (i ? "," : "") << "\"layers." << i << ".attn.wq_a.weight\":"
         << "{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" << i << "," << i + 1 << "]}";
  }
  text << "}";
  const std::string header = text.str();
  const std::clock_t start = std::clock();
  EXPECT_EQ(header_error(header, 20000), "");
  EXPECT_LT(double(std::clock() - start) / CLOCKS_PER_SEC, 5.0);
}

TEST(Safetensors, RejectsBadLengthPrefixes) {
  std::string tiny(5, '\0');
  try {
    SafetensorsFile::parse_header("f.safetensors", tiny.data(), tiny.size(), nullptr);
    FAIL();
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), "too short");
  }
  std::string bytes = raw_file("{}", 0);
  bytes[0] = char(0x40);  // claims a 64-byte header in a 10-byte file
  try {
    SafetensorsFile::parse_header("f.safetensors", bytes.data(), bytes.size(), nullptr);
    FAIL();
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), "header length 64 runs past the end of the file (10 bytes)");
  }
}

TEST(Safetensors, TruncatedFileNamesThePathAndTheCutTensor) {
  const std::string dir = test::make_temp_dir("st-trunc");
  const std::string path = dir + "/model.safetensors";
  write_safetensors(path, {{"first", Tensor::from_f32({1, 2}, {2})}, {"last", Tensor::from_f32({3, 4}, {2})}});
  fs::resize_file(path, fs::file_size(path) - 3);
  try {
    SafetensorsFile::open(path);
    FAIL();
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), path + ": ");
    EXPECT_HAS(e.what(), "run past the end of the file");
    EXPECT_HAS(e.what(), "(tensor last)");
  }
}

TEST(Safetensors, UnpaddedHeaderGivesAlignedCopies) {
  // A 1-byte-longer header than padding would give: the data section starts at an odd address.
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} )";
  ASSERT_NE((8 + header.size()) % 4, 0u);
  std::string bytes = raw_file(header, 0);
  const float values[2] = {1.25f, -3.5f};
  bytes.append(reinterpret_cast<const char*>(values), 8);
  const std::string path = test::make_temp_dir("st-unpadded") + "/t.safetensors";
  write_bytes(path, bytes);
  const Tensor t = SafetensorsFile::open(path)->get("a");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.bytes()) % 4, 0u);
  EXPECT_EQ(t.get_f32(0), 1.25f);
  EXPECT_EQ(t.get_f32(1), -3.5f);
}

TEST(Safetensors, WriterRejectsPackedDtypesAndLeavesNothingBehind) {
  const std::string dir = test::make_temp_dir("st-reject");
  EXPECT_THROW(write_safetensors(dir + "/p.safetensors", {{"p", Tensor::zeros(DType::I4, {4})}}), Error);
  EXPECT_THROW(write_safetensors(dir + "/d.safetensors",
                                 {{"x", Tensor::from_f32({1}, {1})}, {"x", Tensor::from_f32({2}, {1})}}),
               Error);
  EXPECT_TRUE(fs::is_empty(dir));
  EXPECT_THROW(write_safetensors(dir + "/no/such/dir/t.safetensors", {{"x", Tensor::from_f32({1}, {1})}}), Error);
}

TEST(Safetensors, WriterReplacesAnExistingFile) {
  const std::string path = test::make_temp_dir("st-replace") + "/t.safetensors";
  write_safetensors(path, {{"old", Tensor::from_f32({1}, {1})}});
  write_safetensors(path, {{"new", Tensor::from_f32({2}, {1})}});
  const auto file = SafetensorsFile::open(path);
  EXPECT_FALSE(file->contains("old"));
  EXPECT_EQ(file->get("new").get_f32(0), 2.0f);
}

// ---- TensorStore ----

struct ShardedDir {
  std::string dir;
  ShardedDir() : dir(test::make_temp_dir("st-sharded")) {
    write_safetensors(dir + "/model-00001-of-00002.safetensors", {{"a", Tensor::from_f32({1, 2}, {2})}});
    write_safetensors(dir + "/model-00002-of-00002.safetensors",
                      {{"b", Tensor::from_f32({3}, {1})}, {"c", Tensor::from_f32({4}, {1})}});
  }
  void index(const std::map<std::string, std::string>& weight_map) const {
    write_safetensors_index(dir + "/model.safetensors.index.json", weight_map, 16);
  }
  std::string open_error() const {
    try {
      TensorStore::open(dir);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
};

TEST(TensorStore, OpensAShardedCheckpointThroughItsIndex) {
  ShardedDir d;
  d.index({{"a", "model-00001-of-00002.safetensors"},
           {"b", "model-00002-of-00002.safetensors"},
           {"c", "model-00002-of-00002.safetensors"}});
  const TensorStore store = TensorStore::open(d.dir);
  EXPECT_EQ(store.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(store.get("c").get_f32(0), 4.0f);
  EXPECT_EQ(fs::path(store.file_of("a")).filename(), "model-00001-of-00002.safetensors");
  EXPECT_EQ(store.info("a").shape, (Shape{2}));
  try {
    store.get("zz");
    FAIL();
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), d.dir + ": missing tensor zz");
  }
}

TEST(TensorStore, IndexListingAMissingShard) {
  ShardedDir d;
  d.index({{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00003-of-00002.safetensors"}});
  const std::string message = d.open_error();
  EXPECT_HAS(message, "model.safetensors.index.json: shard model-00003-of-00002.safetensors does not exist (tensor b)");
}

TEST(TensorStore, IndexPlacingATensorInTheWrongShard) {
  ShardedDir d;
  d.index({{"a", "model-00001-of-00002.safetensors"},
           {"b", "model-00001-of-00002.safetensors"},
           {"c", "model-00002-of-00002.safetensors"}});
  const std::string message = d.open_error();
  EXPECT_HAS(message, "model-00002-of-00002.safetensors: tensor b is in this shard but");
  EXPECT_HAS(message, "places it in model-00001-of-00002.safetensors");
}

TEST(TensorStore, IndexMissingATensorOfAShard) {
  ShardedDir d;
  d.index({{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}});
  EXPECT_HAS(d.open_error(), "tensor c is not listed in");
}

TEST(TensorStore, IndexWithATensorNoShardHolds) {
  ShardedDir d;
  write_safetensors(d.dir + "/model-00002-of-00002.safetensors", {{"b", Tensor::from_f32({3}, {1})}});
  d.index({{"a", "model-00001-of-00002.safetensors"},
           {"b", "model-00002-of-00002.safetensors"},
           {"c", "model-00002-of-00002.safetensors"}});
  EXPECT_HAS(d.open_error(), "tensor c is listed in shard model-00002-of-00002.safetensors but that shard does not contain it");
}

TEST(TensorStore, MalformedIndex) {
  ShardedDir d;
  std::ofstream(d.dir + "/model.safetensors.index.json") << "{\"weight_map\": {\"a\": 3}}";
  EXPECT_HAS(d.open_error(), "index.json: shard of tensor a is not a string");
  std::ofstream(d.dir + "/model.safetensors.index.json") << "{\"weight_map\": ";
  EXPECT_HAS(d.open_error(), "index.json: malformed JSON");
}

TEST(TensorStore, WithoutIndexEverySafetensorsFileCountsButNamesMustBeUnique) {
  ShardedDir d;
  EXPECT_EQ(TensorStore::open(d.dir).names().size(), 3u);
  write_safetensors(d.dir + "/extra.safetensors", {{"a", Tensor::from_f32({9}, {1})}});
  EXPECT_HAS(d.open_error(), "tensor a also appears in");
}

TEST(TensorStore, ModelSafetensorsWinsOverOtherFiles) {
  // The fixture directories hold reference.safetensors next to model.safetensors.
  const TensorStore store = TensorStore::open(test::shared_path("models/tiny-a"));
  EXPECT_TRUE(store.contains("head.weight"));
  EXPECT_FALSE(store.contains("logits_full"));
}

TEST(TensorStore, EmptyDirectory) {
  const std::string dir = test::make_temp_dir("st-empty");
  try {
    TensorStore::open(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), dir + ": no safetensors files");
  }
}

}  // namespace
}  // namespace dsq

namespace dsq {
namespace {

TEST(Safetensors, FuzzSeedCorpusHoldsValidFiles) {
  // The fuzzer starts from these (fuzz/CMakeLists.txt); a seed the reader rejects would only
  // explore the first error path.
  int seeds = 0;
  for (const auto& entry : std::filesystem::directory_iterator(test::project_path("fuzz/corpus/safetensors"))) {
    EXPECT_FALSE(SafetensorsFile::open(entry.path().string())->tensors().empty()) << entry.path();
    ++seeds;
  }
  EXPECT_GE(seeds, 3);
}

}  // namespace
}  // namespace dsq
