// The two readers of a JSON datagram side by side: PlainJson, which reads plain
// datagrams in place, and picojson, whose reading is the one that counts. Shared by
// test_datagram.cpp and fuzz/fuzz_datagram.cpp, which check that wherever the first
// reads a datagram, it reads it as the second does.
#ifndef HERMES_TEST_READING_HPP
#define HERMES_TEST_READING_HPP

#include "hermes.hpp"

#include <cstring>

namespace reading {

using hermes::detail::JsonKind;
using hermes::detail::ReadBatch;
using hermes::detail::ReadSample;
using hermes::detail::ReadValue;
using hermes::detail::SampleReader;

struct Both {
  bool plain = false, picojson = false; // whether each read the datagram
  ReadBatch plain_batch, picojson_batch;
};

inline Both read_both(std::string_view datagram) {
  Both both;
  SampleReader plain_reader(SampleReader::Place::datagram, both.plain_batch, hermes::detail::NestingBudget{});
  hermes::detail::PlainJson in(datagram);
  both.plain = hermes::detail::read_plain(plain_reader, in) && in.at_end();
  SampleReader reader(SampleReader::Place::datagram, both.picojson_batch, hermes::detail::NestingBudget{});
  both.picojson = hermes::detail::parse_json_into(reader, datagram);
  return both;
}

// Numbers compare bit for bit, so that -0 and 0 differ.
inline bool same(const ReadValue &a, const ReadValue &b) {
  if (a.kind != b.kind) return false;
  if (a.kind == JsonKind::number) return std::memcmp(&a.number, &b.number, sizeof a.number) == 0;
  return a.kind != JsonKind::string || a.text.get() == b.text.get();
}

inline bool same(const ReadSample &a, const ReadSample &b) {
  if (a.shape != b.shape || a.payload != b.payload || a.labels != b.labels || a.label_count != b.label_count) return false;
  if (!same(a.metric_name, b.metric_name) || !same(a.value, b.value) || !same(a.observation, b.observation) ||
      !same(a.operation, b.operation))
    return false;
  for (std::size_t i = 0; i < a.label_count; ++i)
    if (a.label_slots[i].first.get() != b.label_slots[i].first.get() || !same(a.label_slots[i].second, b.label_slots[i].second)) return false;
  return true;
}

inline bool same(const ReadBatch &a, const ReadBatch &b) {
  if (a.count != b.count || a.is_array != b.is_array) return false;
  for (std::size_t i = 0; i < a.count; ++i)
    if (!same(a.slots[i], b.slots[i])) return false;
  return true;
}

} // namespace reading

#endif
