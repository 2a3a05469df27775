// PieceCache: a bounded, thread-safe map from a pre-tokenized piece to its BPE token ids.
//
// Natural text repeats its words constantly, so most pieces are found here instead of
// being merged again. The table is open-addressed (linear probing) over flat arenas for the
// key bytes and the ids, so an insert allocates nothing per entry and a lookup touches one
// slot array and two arenas. Once full it stops inserting (like HF's word cache): the
// first pieces of a text are the frequent ones anyway, and memory stays bounded.
// Tested through tests/tokenizer (repeat encodes and concurrent encodes must agree).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace dsq::tokenizer {

class PieceCache {
 public:
  explicit PieceCache(size_t max_entries);
  PieceCache(PieceCache&&) noexcept;

  // Appends the cached ids of `piece` to `out` and returns true, or returns false.
  bool append_cached(std::string_view piece, std::vector<int32_t>& out) const;
  // Remembers `ids` for `piece` unless the cache is full or already has it.
  void insert(std::string_view piece, const int32_t* ids, size_t count);

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_offset = 0;
    uint32_t key_length = 0;  // 0: empty slot (pieces are never empty)
    uint32_t ids_offset = 0;
    uint32_t ids_count = 0;
  };
  // The slot holding `piece`, or the empty slot where it would go. Caller holds mutex_.
  size_t find_slot(std::string_view piece, uint64_t hash) const;

  size_t max_entries_;
  size_t entries_ = 0;
  std::vector<Slot> slots_;  // power-of-two size, at least twice max_entries_
  std::string key_bytes_;
  std::vector<int32_t> ids_;
  mutable std::mutex mutex_;
};

}  // namespace dsq::tokenizer
