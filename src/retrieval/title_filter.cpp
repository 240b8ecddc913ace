// Title normalisation and the forbidden-title list.
#include <cctype>
#include <fstream>
#include <string>

#include "flashback/error.hpp"
#include "flashback/retrieval/retriever.hpp"

namespace flashback {

std::string normalize_title(std::string_view title) {
  std::string out;
  out.reserve(title.size());
  for (char ch : title) {
    auto c = static_cast<unsigned char>(ch);
    if (c >= 0x80) {
      out.push_back(ch);  // UTF-8 bytes: "Dürenstein", en dashes in "2011 – 12" must survive
    } else if (std::isalnum(c)) {
      out.push_back(static_cast<char>(std::tolower(c)));
    }
  }
  return out;
}

TitleFilter TitleFilter::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FormatError(path, "cannot open the forbidden-titles file");
  TitleFilter filter;
  std::string line;
  while (std::getline(in, line)) {
    // A line that normalises to nothing ("", "...") would otherwise forbid
    // every untitled passage.
    if (normalize_title(line).empty()) continue;
    filter.add(line);
  }
  if (in.bad()) throw FormatError(path, "read error in the forbidden-titles file");
  return filter;
}

}  // namespace flashback
