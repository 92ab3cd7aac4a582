// libFuzzer target: the Pushgateway API's grouping key, text format parser and protobuf
// reader, then the push applied to a group store within a memory budget and its
// families written in every format. The input's first line is the path; the first byte
// after it picks the body's format (odd: protobuf), the rest is the body.
#include "hermes.hpp"

#include <cstdlib>

namespace {

void apply_and_render(hermes::detail::PushStore &store, const std::shared_ptr<hermes::MemoryBudget> &budget,
                      const hermes::detail::PushLabels &key, std::map<std::string, hermes::detail::PushedFamily> families,
                      bool replace) {
  const auto outcome = store.push(key, std::move(families), replace, hermes::Now(1000));
  if (outcome.status != 200 && outcome.status != 400 && outcome.status != 507) std::abort();
  if (!budget->keeps_room()) std::abort();
  for (const hermes::Format format : {hermes::Format::text, hermes::Format::openmetrics, hermes::Format::protobuf}) {
    std::string out, scratch;
    for (const auto &[name, index] : store.families()) hermes::detail::write_pushed_family(out, format, name, index, scratch);
    if (out.size() > budget->body_bound()) std::abort(); // the room the groups took holds what they write
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char *>(data), size);
  const std::size_t line_end = input.find('\n');
  const std::string_view path = input.substr(0, line_end);
  std::string_view body = line_end == std::string_view::npos ? std::string_view() : input.substr(line_end + 1);
  const bool protobuf = !body.empty() && (static_cast<unsigned char>(body.front()) & 1) != 0;
  if (!body.empty()) body.remove_prefix(1);

  const hermes::detail::GroupingKey key =
      hermes::detail::parse_grouping_key(hermes::detail::is_push_path(path) ? path : std::string_view("/metrics/job/fuzz"));
  if (!key.problem.empty()) return 0;
  std::string error;
  hermes::detail::PushTextParser parser;
  auto families = protobuf ? hermes::detail::parse_push_protobuf(body, error) : parser.parse(body);
  if (!families) {
    if ((protobuf ? error : parser.error()).empty()) std::abort(); // a refusal always says why
    return 0;
  }
  auto budget = std::make_shared<hermes::MemoryBudget>(4 * 1024 * 1024, 2);
  {
    hermes::detail::PushStore store(budget, 16, 0);
    store.reserve_names({"hermes_series"});
    apply_and_render(store, budget, key.labels, *families, true);
    apply_and_render(store, budget, key.labels, std::move(*families), false);
    store.remove(key.labels);
    if (store.group_count() != 0 || !store.families().empty()) std::abort();
  }
  if (budget->used() != 0 || budget->body_bound() != 0) std::abort(); // every byte given back
  return 0;
}
