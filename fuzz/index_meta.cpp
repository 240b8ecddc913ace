// An index directory's meta.json (kind, passage count, budget, corpus, encoder): read as every
// retriever front end reads it before opening the index.
#include "flashback/retrieval/index.hpp"
#include "harness.hpp"

using namespace flashback;

FLASHBACK_FUZZ_TARGET(index_meta) {
  static const std::string dir = fuzz::scratch_subdir("index");
  fuzz::write_input({reinterpret_cast<const char*>(data), size}, "index/meta.json");
  fuzz::expect_clean([&] {
    const IndexInfo info = read_index_info(dir);
    FUZZ_CHECK((info.kind == "bm25" || info.kind == "dense") && info.passages >= 0);
  });
}
