// BpeModel: byte-level BPE over raw bytes: vocab, merge ranks, and the merge loop.
//
// A piece of text starts as one token per byte; the pair of adjacent tokens with the
// lowest merge rank is merged (leftmost first on ties) until no adjacent pair has a
// merge. That is HF's `BPE` model with dropout off; tokenizer.json's vocab and merges are
// converted from the byte-level alphabet to raw bytes by the loader (tokenizer_load.cpp),
// so this class never sees the alphabet.
//
// Speed: merges are found in an open-addressing table keyed by the pair of token ids (no
// string building per merge); candidate merges sit in a min-heap ordered by (rank,
// position), so a piece of n bytes costs O(n log n); per-thread scratch buffers avoid
// allocation per piece; and results for pieces seen before come from a bounded cache
// (natural text repeats its words constantly).
// Tested by tests/tokenizer (fixture ids, merge-order tests).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/piece_cache.h"

namespace dsq::tokenizer {

class BpeModel {
 public:
  struct Merge {
    int32_t left;
    int32_t right;
    int32_t merged;
  };

  // `token_bytes[id]` is the raw byte string of token id (empty for an id the vocab does not
  // use); merges are listed in rank order. Throws dsq::Error if some single byte has no
  // token, since then not every text could be encoded.
  // `ignore_merges`: a piece that is itself a vocab token maps to it directly (HF option).
  BpeModel(std::vector<std::string> token_bytes, const std::vector<Merge>& merges,
           bool ignore_merges);
  BpeModel(BpeModel&&) noexcept = default;

  // Appends the token ids of one pre-tokenized piece to `out`. Thread-safe.
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;

  // -1 when no token has exactly these bytes.
  int32_t token_id(std::string_view bytes) const;
  const std::string& token_bytes(int32_t id) const { return token_bytes_[id]; }
  size_t size() const { return token_bytes_.size(); }

 private:
  struct MergeSlot {
    uint64_t pair = kEmptyPair;  // (left << 32) | right
    int32_t rank = 0;
    int32_t merged = 0;
  };
  static constexpr uint64_t kEmptyPair = ~uint64_t{0};
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  const MergeSlot* find_merge(int32_t left, int32_t right) const;
  void merge_piece(std::string_view piece, std::vector<int32_t>& out) const;

  // Hashes std::string keys and string_view probes alike (lookups without a copy).
  struct ViewHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };

  std::vector<std::string> token_bytes_;
  std::unordered_map<std::string, int32_t, ViewHash, std::equal_to<>> id_of_bytes_;
  std::array<int32_t, 256> id_of_byte_{};
  std::vector<MergeSlot> merge_slots_;  // power-of-two size, linear probing
  bool ignore_merges_ = false;
  mutable PieceCache cache_;  // a cache: filling it does not change what encode returns
};

}  // namespace dsq::tokenizer
