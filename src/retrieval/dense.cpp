// Dense retrieval: embeddings.safetensors ("embeddings", F32 [N, dim]) and
// passages.jsonl ({"title","text"} per line, line i = passage i). Queries are
// scored by exact inner product against the memory-mapped matrix (no copy).
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <fstream>
#include <mutex>

#include "flashback/error.hpp"
#include "flashback/formats/safetensors.hpp"
#include "flashback/io/atomic_file.hpp"
#include "flashback/retrieval/index.hpp"
#include "index_dir.hpp"

namespace flashback {

namespace {

constexpr const char* kEmbeddings = "/embeddings.safetensors";
constexpr const char* kPassages = "/passages.jsonl";
constexpr size_t kEncodeBatch = 64;  // texts per encoder call (and per progress report)

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

bool blank(const std::string& s) { return s.find_first_not_of(" \t\r\n") == std::string::npos; }

}  // namespace

void build_dense_index(const std::vector<Passage>& passages, TextEncoder& encoder, const IndexInfo& info_in,
                       const std::string& dir, const ProgressFn& progress) {
  if (passages.empty()) throw InvalidArgument(dir + ": no passages to index");
  const int64_t dim = encoder.dim();
  if (dim <= 0) throw InvalidArgument("dense index: the encoder reports dimension " + std::to_string(dim));
  StagedDirectory stage(dir, detail::kIndexMarker, "an index");
  IndexInfo info = info_in;
  info.kind = "dense";
  info.passages = static_cast<int64_t>(passages.size());
  info.encoder = encoder.describe();

  const size_t n = passages.size();
  std::vector<float> emb(n * static_cast<size_t>(dim));
  std::vector<std::string> texts;
  for (size_t b = 0; b < n; b += kEncodeBatch) {
    const size_t e = std::min(n, b + kEncodeBatch);
    texts.clear();
    for (size_t i = b; i < e; ++i) texts.push_back(passages[i].document());
    std::vector<float> v = encoder.encode(texts);
    if (v.size() != texts.size() * static_cast<size_t>(dim))
      throw Error("dense index: encoder '" + encoder.describe() + "' returned " + std::to_string(v.size()) +
                  " values for " + std::to_string(texts.size()) + " texts of dimension " + std::to_string(dim));
    std::copy(v.begin(), v.end(), emb.begin() + static_cast<std::ptrdiff_t>(b * static_cast<size_t>(dim)));
    if (progress) progress(e, n);
  }

  RawTensor t;
  t.name = "embeddings";
  t.dtype = DType::F32;
  t.shape = {static_cast<int64_t>(n), dim};
  t.data = reinterpret_cast<const uint8_t*>(emb.data());
  t.nbytes = emb.size() * sizeof(float);
  write_safetensors(stage.path() + kEmbeddings, {t}, {{"format", "pt"}, {"encoder", info.encoder}});

  const std::string ppath = stage.path() + kPassages;
  write_file_atomic(ppath, [&](int fd) {
    std::string buf;
    for (const Passage& p : passages) {
      nlohmann::ordered_json j;
      j["title"] = p.title;
      j["text"] = p.text;
      buf += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      buf += '\n';
      if (buf.size() > (1u << 20)) {
        write_all(fd, buf.data(), buf.size(), ppath);
        buf.clear();
      }
    }
    write_all(fd, buf.data(), buf.size(), ppath);
  });
  detail::write_index_info(stage.path(), info, {{"dim", dim}});
  stage.commit();
}

struct DenseRetriever::Impl {
  std::string dir;
  std::shared_ptr<TextEncoder> encoder;
  SafetensorsFile file;        // keeps the mapping alive
  const float* matrix = nullptr;  // [n, dim] row-major, in the mapped file
  int64_t n = 0, dim = 0;
  std::vector<Passage> passages;
  uint64_t mask_generation = ~uint64_t{0};
  std::vector<uint8_t> forbidden;  // per passage, for the current title filter
  std::mutex mu;
};

DenseRetriever::DenseRetriever(const std::string& dir, std::shared_ptr<TextEncoder> encoder)
    : impl_(std::make_unique<Impl>()) {
  nlohmann::json meta = detail::read_index_meta(dir);
  if (meta["kind"] != "dense") throw FormatError(dir, "not a dense index (kind '" + meta["kind"].get<std::string>() + "')");
  const std::string built_with = meta.value("encoder", std::string());
  if (!encoder) throw InvalidArgument(dir + ": a dense index needs a text encoder (it was built with '" + built_with + "')");
  Impl& m = *impl_;
  m.dir = dir;
  m.encoder = std::move(encoder);
  m.n = meta["passages"].get<int64_t>();

  try {
    m.file = read_safetensors(dir + kEmbeddings);
  } catch (const FormatError& e) {
    throw FormatError(dir, std::string("corrupt dense index: ") + e.what());
  }
  const RawTensor* t = nullptr;
  for (const RawTensor& r : m.file.tensors)
    if (r.name == "embeddings") t = &r;
  if (!t || t->dtype != DType::F32 || t->shape.size() != 2 || t->shape[0] != m.n)
    throw FormatError(dir, "corrupt dense index: embeddings.safetensors must hold \"embeddings\" F32 [" +
                               std::to_string(m.n) + ", dim]");
  m.dim = t->shape[1];
  m.matrix = reinterpret_cast<const float*>(t->data);
  if (m.encoder->dim() != m.dim)
    throw InvalidArgument(dir + ": the index holds " + std::to_string(m.dim) + "-dimensional embeddings (built with '" +
                          built_with + "'), the encoder '" + m.encoder->describe() + "' gives " +
                          std::to_string(m.encoder->dim()));
  // A different encoder of the same dimension is accepted (the same model may
  // have moved); the caller chose it, and meta.json names the original.

  const std::string ppath = dir + kPassages;
  std::ifstream in(ppath, std::ios::binary);
  if (!in) throw FormatError(dir, "corrupt dense index: passages.jsonl is missing");
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    try {
      nlohmann::json j = nlohmann::json::parse(line);
      Passage p;
      p.id = static_cast<int64_t>(m.passages.size());
      p.title = j.at("title").get<std::string>();
      p.text = j.at("text").get<std::string>();
      m.passages.push_back(std::move(p));
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(ppath + ":" + std::to_string(line_no), std::string("corrupt dense index: ") + e.what());
    }
  }
  if (static_cast<int64_t>(m.passages.size()) != m.n)
    throw FormatError(dir, "corrupt dense index: passages.jsonl holds " + std::to_string(m.passages.size()) +
                               " passages, meta.json says " + std::to_string(m.n));
}

DenseRetriever::~DenseRetriever() = default;

int64_t DenseRetriever::size() const { return impl_->n; }

std::vector<Passage> DenseRetriever::retrieve(const std::string& query, int64_t k) {
  if (k <= 0) throw InvalidArgument("retrieve: k must be positive (got " + std::to_string(k) + ")");
  std::lock_guard<std::mutex> lock(impl_->mu);
  Impl& m = *impl_;
  std::vector<Passage> out;
  if (blank(query) || m.n == 0) return out;
  std::vector<float> q = m.encoder->encode({query});
  if (static_cast<int64_t>(q.size()) != m.dim)
    throw Error("dense retrieve: encoder '" + m.encoder->describe() + "' returned " + std::to_string(q.size()) +
                " values, expected " + std::to_string(m.dim));
  Eigen::Map<const Eigen::VectorXf> qv(q.data(), m.dim);
  if (!(qv.squaredNorm() > 0)) return out;  // a query with no tokens (or NaN) matches nothing

  Eigen::Map<const RowMatrix> mat(m.matrix, m.n, m.dim);
  Eigen::VectorXf scores = mat * qv;

  if (m.mask_generation != filter_generation_) {
    m.forbidden.assign(static_cast<size_t>(m.n), 0);
    if (filter_.size() > 0)
      for (int64_t i = 0; i < m.n; ++i) m.forbidden[static_cast<size_t>(i)] = filter_.forbids(m.passages[i].title);
    m.mask_generation = filter_generation_;
  }
  std::vector<int64_t> cand;
  cand.reserve(static_cast<size_t>(m.n));
  for (int64_t i = 0; i < m.n; ++i)
    if (!m.forbidden[static_cast<size_t>(i)] && !std::isnan(scores[i])) cand.push_back(i);
  const auto kk = static_cast<size_t>(std::min<int64_t>(k, static_cast<int64_t>(cand.size())));
  // Best first; ties go to the lower id so results are deterministic.
  std::partial_sort(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(kk), cand.end(), [&](int64_t a, int64_t b) {
    return scores[a] != scores[b] ? scores[a] > scores[b] : a < b;
  });
  for (size_t r = 0; r < kk; ++r) {
    Passage p = m.passages[static_cast<size_t>(cand[r])];
    p.score = scores[cand[r]];
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace flashback
