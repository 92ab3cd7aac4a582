#pragma once
// A decoder of the test's own for what remote write sends: snappy's block format and a
// WriteRequest, written from the format descriptions, not from Hermes' encoder.
#include "hermes.hpp"

#include <optional>
#include <string>
#include <vector>

namespace test {

// The bytes a snappy block holds, or nullopt when it is not a valid one.
inline std::optional<std::string> snappy_decompress(std::string_view in) {
  std::size_t at = 0;
  std::uint64_t length = 0;
  for (int shift = 0;; shift += 7) {
    if (at >= in.size() || shift > 35) return std::nullopt;
    const auto byte = static_cast<unsigned char>(in[at++]);
    length |= std::uint64_t{byte & 0x7fu} << shift;
    if (byte < 0x80) break;
  }
  if (length > (std::uint64_t{1} << 32)) return std::nullopt;
  std::string out;
  out.reserve(static_cast<std::size_t>(length));
  while (at < in.size()) {
    const auto tag = static_cast<unsigned char>(in[at++]);
    std::size_t size = 0, offset = 0;
    if ((tag & 3) == 0) { // literal
      size = tag >> 2;
      if (size >= 60) {
        const std::size_t width = size - 59;
        if (at + width > in.size()) return std::nullopt;
        size = 0;
        for (std::size_t i = 0; i < width; ++i) size |= std::size_t{static_cast<unsigned char>(in[at + i])} << (8 * i);
        at += width;
      }
      ++size;
      if (at + size > in.size() || out.size() + size > length) return std::nullopt;
      out.append(in.data() + at, size);
      at += size;
      continue;
    }
    if ((tag & 3) == 1) {
      if (at + 1 > in.size()) return std::nullopt;
      size = 4 + ((tag >> 2) & 7);
      offset = (static_cast<std::size_t>(tag >> 5) << 8) | static_cast<unsigned char>(in[at]);
      at += 1;
    } else if ((tag & 3) == 2) {
      if (at + 2 > in.size()) return std::nullopt;
      size = 1 + (tag >> 2);
      offset = static_cast<unsigned char>(in[at]) | std::size_t{static_cast<unsigned char>(in[at + 1])} << 8;
      at += 2;
    } else {
      if (at + 4 > in.size()) return std::nullopt;
      size = 1 + (tag >> 2);
      offset = 0;
      for (int i = 0; i < 4; ++i) offset |= std::size_t{static_cast<unsigned char>(in[at + i])} << (8 * i);
      at += 4;
    }
    if (offset == 0 || offset > out.size() || out.size() + size > length) return std::nullopt;
    for (std::size_t i = 0; i < size; ++i) out += out[out.size() - offset];
  }
  if (out.size() != length) return std::nullopt;
  return out;
}

struct DecodedSpan {
  std::int32_t offset = 0;
  std::uint32_t length = 0;
};

struct DecodedHistogram {
  std::uint64_t count = 0, zero_count = 0;
  double sum = 0, zero_threshold = 0;
  std::int32_t schema = 0;
  std::vector<DecodedSpan> negative_spans, positive_spans;
  std::vector<std::int64_t> negative_deltas, positive_deltas;
  std::int64_t timestamp = 0;
};

struct DecodedSeries {
  std::vector<std::pair<std::string, std::string>> labels;
  std::vector<std::pair<double, std::int64_t>> samples; // value, timestamp
  std::vector<DecodedHistogram> histograms;
  std::string label(const std::string &name) const {
    for (const auto &pair : labels)
      if (pair.first == name) return pair.second;
    return "";
  }
};

// A protobuf reader over one message; every read checks its bounds.
class ProtoReader {
public:
  explicit ProtoReader(std::string_view bytes) : bytes_(bytes) {}
  bool done() const { return at_ >= bytes_.size(); }
  bool ok() const { return ok_; }
  // The next field's number and wire type.
  bool next(std::uint32_t &field, int &type) {
    const auto key = varint();
    if (!ok_) return false;
    field = static_cast<std::uint32_t>(key >> 3), type = static_cast<int>(key & 7);
    return field != 0;
  }
  std::uint64_t varint() {
    std::uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (at_ >= bytes_.size()) return ok_ = false, 0;
      const auto byte = static_cast<unsigned char>(bytes_[at_++]);
      value |= std::uint64_t{byte & 0x7fu} << shift;
      if (byte < 0x80) return value;
    }
    return ok_ = false, 0;
  }
  std::int64_t zigzag() {
    const std::uint64_t raw = varint();
    return static_cast<std::int64_t>(raw >> 1) ^ -static_cast<std::int64_t>(raw & 1);
  }
  double fixed64() {
    if (at_ + 8 > bytes_.size()) return ok_ = false, 0;
    std::uint64_t bits = 0;
    for (int i = 0; i < 8; ++i) bits |= std::uint64_t{static_cast<unsigned char>(bytes_[at_ + static_cast<std::size_t>(i)])} << (8 * i);
    at_ += 8;
    double value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }
  std::string_view bytes() {
    const std::uint64_t size = varint();
    if (!ok_ || size > bytes_.size() - at_) return ok_ = false, std::string_view();
    const std::string_view out = bytes_.substr(at_, static_cast<std::size_t>(size));
    at_ += static_cast<std::size_t>(size);
    return out;
  }
  void skip(int type) {
    if (type == 0) varint();
    else if (type == 1) fixed64();
    else if (type == 2) bytes();
    else if (type == 5) at_ + 4 <= bytes_.size() ? void(at_ += 4) : void(ok_ = false);
    else ok_ = false;
  }

private:
  std::string_view bytes_;
  std::size_t at_ = 0;
  bool ok_ = true;
};

inline bool decode_span(std::string_view bytes, DecodedSpan &span) {
  ProtoReader in(bytes);
  std::uint32_t field;
  int type;
  while (!in.done() && in.next(field, type)) {
    if (field == 1 && type == 0) span.offset = static_cast<std::int32_t>(in.zigzag());
    else if (field == 2 && type == 0) span.length = static_cast<std::uint32_t>(in.varint());
    else in.skip(type);
  }
  return in.ok();
}

inline bool decode_deltas(std::string_view packed, std::vector<std::int64_t> &out) {
  ProtoReader in(packed);
  while (!in.done()) out.push_back(in.zigzag());
  return in.ok();
}

inline bool decode_histogram(std::string_view bytes, DecodedHistogram &h) {
  ProtoReader in(bytes);
  std::uint32_t field;
  int type;
  bool good = true;
  while (good && !in.done() && in.next(field, type)) {
    if (field == 1 && type == 0) h.count = in.varint();
    else if (field == 3 && type == 1) h.sum = in.fixed64();
    else if (field == 4 && type == 0) h.schema = static_cast<std::int32_t>(in.zigzag());
    else if (field == 5 && type == 1) h.zero_threshold = in.fixed64();
    else if (field == 6 && type == 0) h.zero_count = in.varint();
    else if ((field == 8 || field == 11) && type == 2) {
      DecodedSpan span;
      good = decode_span(in.bytes(), span);
      (field == 8 ? h.negative_spans : h.positive_spans).push_back(span);
    } else if ((field == 9 || field == 12) && type == 2) good = decode_deltas(in.bytes(), field == 9 ? h.negative_deltas : h.positive_deltas);
    else if (field == 15 && type == 0) h.timestamp = static_cast<std::int64_t>(in.varint());
    else in.skip(type);
  }
  return good && in.ok();
}

inline bool decode_series(std::string_view bytes, DecodedSeries &series) {
  ProtoReader in(bytes);
  std::uint32_t field;
  int type;
  bool good = true;
  while (good && !in.done() && in.next(field, type)) {
    if (field == 1 && type == 2) {
      ProtoReader label(in.bytes());
      std::pair<std::string, std::string> pair;
      std::uint32_t f;
      int t;
      while (!label.done() && label.next(f, t)) {
        if (f == 1 && t == 2) pair.first = std::string(label.bytes());
        else if (f == 2 && t == 2) pair.second = std::string(label.bytes());
        else label.skip(t);
      }
      good = label.ok();
      series.labels.push_back(pair);
    } else if (field == 2 && type == 2) {
      ProtoReader sample(in.bytes());
      std::pair<double, std::int64_t> value{0, 0};
      std::uint32_t f;
      int t;
      while (!sample.done() && sample.next(f, t)) {
        if (f == 1 && t == 1) value.first = sample.fixed64();
        else if (f == 2 && t == 0) value.second = static_cast<std::int64_t>(sample.varint());
        else sample.skip(t);
      }
      good = sample.ok();
      series.samples.push_back(value);
    } else if (field == 4 && type == 2) {
      series.histograms.emplace_back();
      good = decode_histogram(in.bytes(), series.histograms.back());
    } else {
      in.skip(type);
    }
  }
  return good && in.ok();
}

// The time series of a WriteRequest {timeseries = 1}, or nullopt when it is not one.
inline std::optional<std::vector<DecodedSeries>> decode_write_request(std::string_view bytes) {
  ProtoReader in(bytes);
  std::vector<DecodedSeries> out;
  std::uint32_t field;
  int type;
  while (!in.done() && in.next(field, type)) {
    if (field == 1 && type == 2) {
      out.emplace_back();
      if (!decode_series(in.bytes(), out.back())) return std::nullopt;
    } else {
      in.skip(type);
    }
  }
  if (!in.ok()) return std::nullopt;
  return out;
}

} // namespace test
