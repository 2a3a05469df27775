// Open-addressed piece -> ids cache; see piece_cache.h.
#include "tokenizer/piece_cache.h"

#include <bit>
#include <functional>

namespace dsq::tokenizer {

PieceCache::PieceCache(size_t max_entries)
    : max_entries_(max_entries), slots_(std::bit_ceil(std::max<size_t>(16, 2 * max_entries))) {}

PieceCache::PieceCache(PieceCache&& other) noexcept
    : max_entries_(other.max_entries_),
      entries_(other.entries_),
      slots_(std::move(other.slots_)),
      key_bytes_(std::move(other.key_bytes_)),
      ids_(std::move(other.ids_)) {}

size_t PieceCache::find_slot(std::string_view piece, uint64_t hash) const {
  const size_t mask = slots_.size() - 1;
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.key_length == 0) return i;
    if (s.hash == hash && s.key_length == piece.size() &&
        std::string_view(key_bytes_).substr(s.key_offset, s.key_length) == piece) {
      return i;
    }
  }
}

bool PieceCache::append_cached(std::string_view piece, std::vector<int32_t>& out) const {
  const uint64_t hash = std::hash<std::string_view>{}(piece);
  std::lock_guard<std::mutex> lock(mutex_);
  const Slot& s = slots_[find_slot(piece, hash)];
  if (s.key_length == 0) return false;
  out.insert(out.end(), ids_.begin() + s.ids_offset, ids_.begin() + s.ids_offset + s.ids_count);
  return true;
}

void PieceCache::insert(std::string_view piece, const int32_t* ids, size_t count) {
  const uint64_t hash = std::hash<std::string_view>{}(piece);
  std::lock_guard<std::mutex> lock(mutex_);
  if (entries_ >= max_entries_) return;
  Slot& s = slots_[find_slot(piece, hash)];
  if (s.key_length != 0) return;  // another thread cached it meanwhile
  s = {hash, static_cast<uint32_t>(key_bytes_.size()), static_cast<uint32_t>(piece.size()),
       static_cast<uint32_t>(ids_.size()), static_cast<uint32_t>(count)};
  key_bytes_.append(piece);
  ids_.insert(ids_.end(), ids, ids + count);
  ++entries_;
}

}  // namespace dsq::tokenizer
