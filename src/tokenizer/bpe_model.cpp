// Byte-level BPE merge loop; see bpe_model.h.
#include "tokenizer/bpe_model.h"

#include <algorithm>
#include <bit>

#include "core/error.h"

namespace dsq::tokenizer {
namespace {

// Pieces longer than this are merged but not cached: they rarely repeat, and the bound
// keeps the cache's memory predictable.
constexpr size_t kMaxCachedPieceBytes = 64;
// HF stops inserting into its word cache at 10k entries; natural-language vocabularies
// (Brown has ~50k distinct words) benefit from more, and an entry costs ~50 bytes.
constexpr size_t kMaxCacheEntries = 1 << 17;

uint64_t mix(uint64_t key) {  // splitmix64 finalizer: spreads pairs of small ids
  key ^= key >> 30;
  key *= 0xbf58476d1ce4e5b9ULL;
  key ^= key >> 27;
  key *= 0x94d049bb133111ebULL;
  return key ^ (key >> 31);
}

// One symbol of the piece being merged: a token id in a doubly linked list over the
// initial byte positions (merged-away symbols are unlinked and marked dead).
struct Symbol {
  int32_t id;
  int32_t prev;  // -1 at the start
  int32_t next;  // -1 at the end
  bool alive;
};

// A candidate merge of the symbol at `left` with its successor. Ordered so that the heap
// top is the lowest rank, and among equal ranks the leftmost position.
struct Candidate {
  int32_t rank;
  int32_t left;
  int32_t left_id;   // both ids when queued: if either symbol has changed since,
  int32_t right_id;  // the candidate is stale
  int32_t merged;
  bool operator<(const Candidate& other) const {
    return rank != other.rank ? rank > other.rank : left > other.left;
  }
};

struct MergeScratch {
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
};

MergeScratch& merge_scratch() {
  thread_local MergeScratch scratch;
  return scratch;
}

}  // namespace

BpeModel::BpeModel(std::vector<std::string> token_bytes, const std::vector<Merge>& merges,
                   bool ignore_merges)
    : token_bytes_(std::move(token_bytes)), ignore_merges_(ignore_merges), cache_(kMaxCacheEntries) {
  id_of_bytes_.reserve(token_bytes_.size());
  for (size_t id = 0; id < token_bytes_.size(); ++id) {
    if (token_bytes_[id].empty()) continue;  // an id the vocab does not use
    id_of_bytes_.emplace(token_bytes_[id], static_cast<int32_t>(id));
  }
  for (int b = 0; b < 256; ++b) {
    const std::string byte(1, static_cast<char>(b));
    id_of_byte_[b] = token_id(byte);
    DSQ_CHECK(id_of_byte_[b] >= 0, "byte-level BPE vocab has no token for byte ", b);
  }
  merge_slots_.resize(std::bit_ceil(std::max<size_t>(16, merges.size() * 2)));
  const size_t mask = merge_slots_.size() - 1;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const Merge& m = merges[rank];
    const uint64_t key = pair_key(m.left, m.right);
    size_t slot = mix(key) & mask;
    while (merge_slots_[slot].pair != kEmptyPair && merge_slots_[slot].pair != key) {
      slot = (slot + 1) & mask;
    }
    if (merge_slots_[slot].pair == key) continue;  // a repeated merge keeps its first rank
    merge_slots_[slot] = {key, static_cast<int32_t>(rank), m.merged};
  }
}

int32_t BpeModel::token_id(std::string_view bytes) const {
  const auto it = id_of_bytes_.find(bytes);
  return it == id_of_bytes_.end() ? -1 : it->second;
}

const BpeModel::MergeSlot* BpeModel::find_merge(int32_t left, int32_t right) const {
  const uint64_t key = pair_key(left, right);
  const size_t mask = merge_slots_.size() - 1;
  for (size_t slot = mix(key) & mask;; slot = (slot + 1) & mask) {
    const MergeSlot& s = merge_slots_[slot];
    if (s.pair == key) return &s;
    if (s.pair == kEmptyPair) return nullptr;
  }
}

void BpeModel::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.size() == 1) {
    out.push_back(id_of_byte_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (ignore_merges_) {
    const int32_t whole = token_id(piece);
    if (whole >= 0) {
      out.push_back(whole);
      return;
    }
  }
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  if (cacheable && cache_.append_cached(piece, out)) return;
  const size_t first = out.size();
  merge_piece(piece, out);
  if (cacheable) cache_.insert(piece, out.data() + first, out.size() - first);
}

void BpeModel::merge_piece(std::string_view piece, std::vector<int32_t>& out) const {
  MergeScratch& scratch = merge_scratch();
  std::vector<Symbol>& symbols = scratch.symbols;
  std::vector<Candidate>& heap = scratch.heap;
  const auto n = static_cast<int32_t>(piece.size());
  symbols.resize(n);
  heap.clear();
  for (int32_t i = 0; i < n; ++i) {
    symbols[i] = {id_of_byte_[static_cast<unsigned char>(piece[i])], i - 1,
                  i + 1 < n ? i + 1 : -1, true};
  }
  const auto queue_pair = [&](int32_t left) {
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    if (const MergeSlot* m = find_merge(symbols[left].id, symbols[right].id)) {
      heap.push_back({m->rank, left, symbols[left].id, symbols[right].id, m->merged});
      std::push_heap(heap.begin(), heap.end());
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) queue_pair(i);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.left];
    // Stale when the left symbol was merged away or either side changed since queueing
    // (same ids at the same position mean the same pair, so the merge still applies).
    if (!left.alive || left.next < 0 || left.id != top.left_id) continue;
    Symbol& right = symbols[left.next];
    if (right.id != top.right_id) continue;

    left.id = top.merged;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    if (left.prev >= 0) queue_pair(left.prev);
    queue_pair(top.left);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
}

}  // namespace dsq::tokenizer
