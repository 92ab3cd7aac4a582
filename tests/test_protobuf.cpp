// The protobuf exposition and native histograms: the encoder's bytes for each field
// kind, whole messages byte for byte, bucket indexes at their boundaries, schema
// reduction, and Accept negotiation.
#include "helpers.hpp"

#include <random>

namespace {

using namespace std::string_literals;

std::string bytes(std::initializer_list<int> values) {
  std::string out;
  for (const int value : values) out += static_cast<char>(value);
  return out;
}

template <typename Append> std::string encoded(Append &&append) {
  std::string out;
  append(out);
  return out;
}

hermes::MetricConfig histogram_config(const std::string &extra) {
  const hermes::Config config = hermes::parse_config(
      R"({"service_name": "s", "histograms": [{"metric_name": "h", "native": true)" + extra + "}]}", "test");
  return config.metrics.at(0);
}

// A series of `config` that has seen `values`, pushed at `now`.
hermes::detail::Series observed(const hermes::MetricConfig &config, const std::vector<double> &values, double now = 0) {
  hermes::detail::Series series = hermes::detail::new_series(config, now);
  for (const double value : values)
    hermes::detail::apply_update(config, series, {hermes::detail::Update::Kind::observe, value}, now);
  return series;
}

} // namespace

TEST_CASE("varints take seven bits a byte, least significant first") {
  using hermes::detail::append_varint;
  CHECK(encoded([](std::string &o) { append_varint(o, 0); }) == bytes({0x00}));
  CHECK(encoded([](std::string &o) { append_varint(o, 1); }) == bytes({0x01}));
  CHECK(encoded([](std::string &o) { append_varint(o, 127); }) == bytes({0x7f}));
  CHECK(encoded([](std::string &o) { append_varint(o, 128); }) == bytes({0x80, 0x01}));
  CHECK(encoded([](std::string &o) { append_varint(o, 300); }) == bytes({0xac, 0x02}));
  CHECK(encoded([](std::string &o) { append_varint(o, UINT64_MAX); }) ==
        bytes({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}));
  for (const std::uint64_t value : {0ull, 127ull, 128ull, 16383ull, 16384ull, 1ull << 63})
    CHECK(hermes::detail::varint_size(value) == encoded([&](std::string &o) { append_varint(o, value); }).size());
}

TEST_CASE("each field kind is a tag and its value, as the wire format defines them") {
  using namespace hermes::detail;
  // tag = field number << 3 | wire type
  CHECK(encoded([](std::string &o) { append_tag(o, 1, WireType::varint); }) == bytes({0x08}));
  CHECK(encoded([](std::string &o) { append_tag(o, 2, WireType::length_delimited); }) == bytes({0x12}));
  CHECK(encoded([](std::string &o) { append_tag(o, 15, WireType::length_delimited); }) == bytes({0x7a}));
  CHECK(encoded([](std::string &o) { append_tag(o, 16, WireType::varint); }) == bytes({0x80, 0x01}));
  // uint64 and enum
  CHECK(encoded([](std::string &o) { append_uint_field(o, 3, 4); }) == bytes({0x18, 0x04}));
  CHECK(encoded([](std::string &o) { append_uint_field(o, 1, 150); }) == bytes({0x08, 0x96, 0x01}));
  // sint32 and sint64: zigzag, 0 -1 1 -2 as 0 1 2 3
  CHECK(encoded([](std::string &o) { append_sint_field(o, 5, 0); }) == bytes({0x28, 0x00}));
  CHECK(encoded([](std::string &o) { append_sint_field(o, 5, -1); }) == bytes({0x28, 0x01}));
  CHECK(encoded([](std::string &o) { append_sint_field(o, 5, 1); }) == bytes({0x28, 0x02}));
  CHECK(encoded([](std::string &o) { append_sint_field(o, 5, -2); }) == bytes({0x28, 0x03}));
  CHECK(encoded([](std::string &o) { append_sint_field(o, 5, -4); }) == bytes({0x28, 0x07}));
  CHECK(encoded([](std::string &o) { append_sint_field(o, 1, INT64_MIN); }) ==
        bytes({0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}));
  // double: fixed64, little-endian IEEE 754
  CHECK(encoded([](std::string &o) { append_double_field(o, 1, 1.0); }) == bytes({0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f}));
  CHECK(encoded([](std::string &o) { append_double_field(o, 2, 0.1); }) ==
        bytes({0x11, 0x9a, 0x99, 0x99, 0x99, 0x99, 0x99, 0xb9, 0x3f}));
  CHECK(encoded([](std::string &o) { append_double_field(o, 1, -0.0); }) == bytes({0x09, 0, 0, 0, 0, 0, 0, 0, 0x80}));
  // string and embedded message: length-delimited
  CHECK(encoded([](std::string &o) { append_bytes_field(o, 1, "abc"); }) == bytes({0x0a, 0x03, 'a', 'b', 'c'}));
  CHECK(encoded([](std::string &o) { append_bytes_field(o, 2, ""); }) == bytes({0x12, 0x00}));
  CHECK(encoded([](std::string &o) { append_bytes_field(o, 1, std::string(200, 'x')); }).substr(0, 3) == bytes({0x0a, 0xc8, 0x01}));
  // LabelPair {name = 1, value = 2}
  CHECK(encoded([](std::string &o) { append_label_pair(o, 1, "a", "bc"); }) ==
        bytes({0x0a, 0x07, 0x0a, 0x01, 'a', 0x12, 0x02, 'b', 'c'}));
  // google.protobuf.Timestamp {seconds = 1, nanos = 2}; no nanos field when whole
  CHECK(encoded([](std::string &o) { append_timestamp_field(o, 3, 1.5); }) ==
        bytes({0x1a, 0x08, 0x08, 0x01, 0x10, 0x80, 0xca, 0xb5, 0xee, 0x01}));
  CHECK(encoded([](std::string &o) { append_timestamp_field(o, 15, 1764000000); }) ==
        bytes({0x7a, 0x06, 0x08, 0x80, 0x82, 0x92, 0xc9, 0x06}));
}

TEST_CASE("a counter family is one length-prefixed MetricFamily, byte for byte") {
  const hermes::Config config = hermes::parse_config(
      R"({"service_name": "s", "counters": [{"metric_name": "jobs_total", "metric_description": "Jobs.", "labels": ["queue"]}]})",
      "test");
  hermes::detail::Series series;
  series.value = 2;
  series.created = 1.5;
  std::string out;
  hermes::detail::ProtobufExposition writer(out);
  writer.family("jobs_total", "Jobs.", hermes::MetricType::counter);
  writer.series(config.metrics[0], {"mail"}, series);
  writer.finish();
  const std::string family = "\x0a\x0ajobs_total"s + "\x12\x05Jobs." + bytes({0x18, 0x00}) + bytes({0x22, 0x24}) +
                             // Metric: label {queue: mail}, counter {value 2, created_timestamp 1.5}
                             "\x0a\x0d\x0a\x05queue\x12\x04mail"s + bytes({0x1a, 0x13, 0x09, 0, 0, 0, 0, 0, 0, 0, 0x40}) +
                             bytes({0x1a, 0x08, 0x08, 0x01, 0x10, 0x80, 0xca, 0xb5, 0xee, 0x01});
  CHECK(family.size() == 0x3b);
  CHECK(out == "\x3b"s + family);
}

TEST_CASE("gauges and Hermes' own series carry their labels and a Gauge or Counter value") {
  std::string out;
  hermes::detail::ProtobufExposition writer(out);
  writer.family("up", "", hermes::MetricType::gauge);
  writer.sample("up", {}, 1);
  writer.family("r_total", "R.", hermes::MetricType::counter);
  writer.sample("r_total", {{"k", "v"}}, 0);
  writer.finish();
  const std::string up = "\x0a\x02up"s + bytes({0x12, 0x00, 0x18, 0x01, 0x22, 0x0b, 0x12, 0x09, 0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f});
  const std::string r = "\x0a\x07r_total\x12\x02R."s + bytes({0x18, 0x00, 0x22, 0x13}) + "\x0a\x06\x0a\x01k\x12\x01v"s +
                        bytes({0x1a, 0x09, 0x09, 0, 0, 0, 0, 0, 0, 0, 0});
  CHECK(out == static_cast<char>(up.size()) + up + static_cast<char>(r.size()) + r);
}

TEST_CASE("a native histogram is schema, zero bucket, spans and count deltas, byte for byte") {
  const hermes::MetricConfig config = histogram_config("");
  CHECK(config.buckets.empty()); // no classic buckets unless asked for
  const hermes::detail::Series series = observed(config, {0, 1, 1, 2, -1});
  std::string out;
  hermes::detail::ProtobufExposition writer(out);
  writer.family("h", "", hermes::MetricType::histogram);
  writer.series(config, {}, series);
  writer.finish();
  const std::string histogram = bytes({0x08, 0x05,                                      // sample_count 5
                                       0x11, 0, 0, 0, 0, 0, 0, 0x08, 0x40,              // sample_sum 3
                                       0x28, 0x06,                                      // schema 3
                                       0x31, 0, 0, 0, 0, 0, 0, 0xf0, 0x37,              // zero_threshold 2^-128
                                       0x38, 0x01,                                      // zero_count 1
                                       0x4a, 0x04, 0x08, 0x00, 0x10, 0x01,              // negative span {0, 1}
                                       0x52, 0x01, 0x02,                                // negative deltas [1]
                                       0x62, 0x04, 0x08, 0x00, 0x10, 0x01,              // positive span {0, 1}: 1
                                       0x62, 0x04, 0x08, 0x0e, 0x10, 0x01,              // positive span {7, 1}: 2
                                       0x6a, 0x02, 0x04, 0x01});                        // positive deltas [2, -1]
  const std::string family = "\x0a\x01h\x12\x00"s + bytes({0x18, 0x04, 0x22, static_cast<int>(histogram.size() + 2), 0x3a,
                                                            static_cast<int>(histogram.size())}) + histogram;
  CHECK(out == static_cast<char>(family.size()) + family);
}

TEST_CASE("native spans keep gaps of up to two empty buckets inside, as client_golang does") {
  hermes::detail::NativeSide side = {{-2, 3}, {0, 1}, {3, 4}, {7, 4}};
  std::string out, deltas;
  hermes::detail::append_native_side(out, deltas, side, 12, 13);
  // {-2, 1} then one empty bucket, then {0}: one span of 3; a gap of 2 empty: span goes on to 3 (length 6);
  // a gap of 3 empty before 7: a new span {3, 1}. Deltas: 3, -3, 1, -1, 0, 4, 0.
  CHECK(out == bytes({0x62, 0x04, 0x08, 0x03, 0x10, 0x06, 0x62, 0x04, 0x08, 0x06, 0x10, 0x01, 0x6a, 0x07, 0x06, 0x05, 0x02,
                      0x01, 0x00, 0x08, 0x00}));
}

TEST_CASE("classic buckets sit beside native ones; the +Inf bucket is left to sample_count") {
  const hermes::MetricConfig config = histogram_config(R"(, "buckets": [1, 2.5], "native_zero_threshold": 0)");
  const hermes::detail::Series empty = observed(config, {});
  std::string out;
  hermes::detail::ProtobufExposition writer(out);
  writer.family("h", "", hermes::MetricType::histogram);
  writer.series(config, {}, empty);
  writer.finish();
  // Without observations and without a zero threshold, a no-op span marks it native.
  const std::string histogram = bytes({0x08, 0x00, 0x11, 0, 0, 0, 0, 0, 0, 0, 0,   // count 0, sum 0
                                       0x1a, 0x0b, 0x08, 0x00, 0x11, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, // bucket {0, le 1}
                                       0x1a, 0x0b, 0x08, 0x00, 0x11, 0, 0, 0, 0, 0, 0, 0x04, 0x40, // bucket {0, le 2.5}
                                       0x28, 0x06, 0x31, 0, 0, 0, 0, 0, 0, 0, 0, 0x38, 0x00,      // schema 3, threshold 0, zero 0
                                       0x62, 0x04, 0x08, 0x00, 0x10, 0x00});                      // span {0, 0}
  CHECK(out.substr(out.size() - histogram.size()) == histogram);
}

TEST_CASE("the schema is the coarsest whose buckets grow by no more than native_bucket_factor") {
  using hermes::detail::native_schema;
  CHECK(native_schema(1.1) == 3);
  CHECK(native_schema(1.5) == 1);
  CHECK(native_schema(2) == 0);
  CHECK(native_schema(1.9) == 1); // 2^(1/2) <= 1.9 < 2
  CHECK(native_schema(4) == -1);
  CHECK(native_schema(1.0001) == 8);
  CHECK(native_schema(1e300) == -4);
  CHECK(native_schema(1.0905077326652577) == 3); // 2^(1/8): exactly schema 3's growth
  CHECK(native_schema(1.0905) == 4);
  CHECK(histogram_config("").native_bucket_factor == 1.1);
  CHECK(histogram_config("").native_max_buckets == 160);
  CHECK(histogram_config("").native_zero_threshold == std::ldexp(1.0, -128));
}

// The bounds are 2^(i/8)/2 rounded to the nearest double (checked for all 510 of schemas
// 1 to 8 against 60-digit decimals). client_golang's table has three of these one unit
// in the last place lower (0.7071067811865475, 0.8408964152537144, 0.9170040432046711):
// only a value within that ulp of a bound can fall in the neighbouring bucket.
TEST_CASE("bucket bounds of schema 3 are 2^(i/8)/2, correctly rounded") {
  const std::vector<double> expected = {0.5,
                                        0.5452538663326288,
                                        0.5946035575013605,
                                        0.6484197773255048,
                                        0.7071067811865476,
                                        0.7711054127039704,
                                        0.8408964152537145,
                                        0.9170040432046712};
  CHECK(hermes::detail::native_bounds(3) == expected);
  CHECK(hermes::detail::native_bounds(1) == std::vector<double>{0.5, 0.7071067811865476});
  CHECK(hermes::detail::native_bounds(8).size() == 256);
}

TEST_CASE("a value on a bucket's upper bound belongs to that bucket") {
  using hermes::detail::native_index;
  // schema 0: bucket i is (2^(i-1), 2^i]
  CHECK(native_index(1, 0) == 0);
  CHECK(native_index(std::nextafter(1.0, 2.0), 0) == 1);
  CHECK(native_index(2, 0) == 1);
  CHECK(native_index(0.5, 0) == -1);
  CHECK(native_index(0.75, 0) == 0);
  CHECK(native_index(1024, 0) == 10);
  // schema 3: eight buckets per power of two
  CHECK(native_index(1, 3) == 0);
  CHECK(native_index(2, 3) == 8);
  CHECK(native_index(4, 3) == 16);
  CHECK(native_index(0.25, 3) == -16);
  CHECK(native_index(std::nextafter(1.0, 2.0), 3) == 1);
  CHECK(native_index(std::nextafter(2.0, 0.0), 3) == 8);
  CHECK(native_index(1.0905077326652577, 3) == 1); // on 2^(1/8)
  CHECK(native_index(std::sqrt(2.0), 3) == 4);
  // negative schemas: 2^-schema powers of two per bucket, bucket i is (4^(i-1), 4^i] at -1
  CHECK(native_index(1, -1) == 0);
  CHECK(native_index(2, -1) == 1);
  CHECK(native_index(4, -1) == 1);
  CHECK(native_index(4.5, -1) == 2);
  CHECK(native_index(0.25, -1) == -1);
  CHECK(native_index(0.2, -1) == -1);
  CHECK(native_index(0.0625, -1) == -2);
  CHECK(native_index(65536, -4) == 1);
  CHECK(native_index(65537, -4) == 2);
  // the extremes
  CHECK(native_index(std::numeric_limits<double>::max(), 0) == 1024);
  CHECK(native_index(std::numeric_limits<double>::infinity(), 0) == 1025);
  CHECK(native_index(std::numeric_limits<double>::denorm_min(), 8) == -1074 * 256);
}

TEST_CASE("zero, negative and tiny observations go where the zero threshold says") {
  const hermes::MetricConfig config = histogram_config(R"(, "native_zero_threshold": 0.001)");
  const hermes::detail::Series series = observed(config, {0, 0.001, -0.001, 0.0011, -0.0011, -3, -3, -0.0});
  const hermes::detail::NativeHistogram &native = *series.distribution->native;
  CHECK(native.zero_count == 4);
  CHECK(native.positive == hermes::detail::NativeSide{{hermes::detail::native_index(0.0011, 3), 1}});
  CHECK(native.negative == hermes::detail::NativeSide{{hermes::detail::native_index(0.0011, 3), 1},
                                                      {hermes::detail::native_index(3, 3), 2}});
  CHECK(series.distribution->count == 8);
  CHECK(series.distribution->bucket_counts == std::vector<std::uint64_t>{8}); // +Inf only
}

TEST_CASE("past native_max_buckets neighbours merge into the next coarser schema") {
  const hermes::MetricConfig config = histogram_config(R"(, "native_bucket_factor": 2, "native_max_buckets": 4)");
  hermes::detail::Series series = observed(config, {1, 2, 4, 8});
  CHECK(series.distribution->native->schema == 0);
  CHECK(series.distribution->native->positive.size() == 4);
  series = observed(config, {1, 2, 4, 8, 16});
  const hermes::detail::NativeHistogram &native = *series.distribution->native;
  CHECK(native.schema == -1);
  CHECK(native.positive == hermes::detail::NativeSide{{0, 1}, {1, 2}, {2, 2}});
}

TEST_CASE("merged buckets hold exactly what the coarser schema would have counted") {
  const hermes::MetricConfig config = histogram_config(R"(, "native_max_buckets": 20)");
  std::mt19937_64 random(7);
  std::uniform_real_distribution<double> exponent(-6, 6);
  std::vector<double> values;
  for (int i = 0; i < 5000; ++i) values.push_back((i % 3 == 0 ? -1 : 1) * std::pow(10.0, exponent(random)));
  values.push_back(1), values.push_back(-0.5), values.push_back(1024); // exact powers of two
  const hermes::detail::Series series = observed(config, values);
  const hermes::detail::NativeHistogram &native = *series.distribution->native;
  CHECK(native.schema < 3);
  CHECK(native.buckets() <= 20);
  std::map<std::int32_t, std::uint64_t> positive, negative;
  for (const double value : values)
    ++(value > 0 ? positive : negative)[hermes::detail::native_index(std::abs(value), native.schema)];
  CHECK(native.positive == hermes::detail::NativeSide(positive.begin(), positive.end()));
  CHECK(native.negative == hermes::detail::NativeSide(negative.begin(), negative.end()));
}

TEST_CASE("at schema -4 buckets stop merging; their number stays bounded") {
  const hermes::MetricConfig config = histogram_config(R"(, "native_max_buckets": 1)");
  const hermes::detail::Series series = observed(config, {1e-35, 1e-10, 1, 1e100, 1e300, -1e300});
  CHECK(series.distribution->native->schema == -4);
  CHECK(series.distribution->native->buckets() == 6);
}

TEST_CASE("Accept negotiation picks protobuf by its q value, and only the delimited MetricFamily stream") {
  using hermes::Format;
  using hermes::negotiate_format;
  // What Prometheus 2.42 sends with --enable-feature=native-histograms.
  const std::string native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,"
                             "application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;"
                             "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
  CHECK(negotiate_format(native) == Format::protobuf);
  CHECK(negotiate_format(native, true, false) == Format::openmetrics);
  CHECK(negotiate_format(native, false, false) == Format::text);
  CHECK(negotiate_format(native, false, true) == Format::protobuf);
  const std::string proto = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";
  CHECK(negotiate_format(proto + ";q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1") == Format::protobuf);
  CHECK(negotiate_format(proto + ";q=0.3,text/plain;q=0.7") == Format::text);
  CHECK(negotiate_format(proto + ";q=0.5,application/openmetrics-text;q=0.6,text/plain;q=0.1") == Format::openmetrics);
  CHECK(negotiate_format(proto + ", text/plain") == Format::text); // a tie goes to text
  CHECK(negotiate_format(proto + ";q=0") == Format::text);
  CHECK(negotiate_format("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited") ==
        Format::protobuf);
  CHECK(negotiate_format("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text") == Format::text);
  CHECK(negotiate_format("application/vnd.google.protobuf;proto=other.Message;encoding=delimited") == Format::text);
  CHECK(negotiate_format("application/vnd.google.protobuf") == Format::text);
  CHECK(std::string(hermes::content_type(Format::protobuf)) ==
        "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited");
}

// ---- a whole body, read back --------------------------------------------------------------

namespace {

// One field of a message as the wire has it: a varint, eight bytes, or length-delimited bytes.
struct Field {
  std::uint32_t number = 0;
  std::uint64_t varint = 0;
  std::string bytes;
  double number_value() const {
    double value = 0;
    std::memcpy(&value, &varint, sizeof value);
    return value;
  }
};

std::uint64_t read_varint(std::string_view &in) {
  std::uint64_t value = 0;
  for (int shift = 0;; shift += 7) {
    REQUIRE(!in.empty());
    REQUIRE(shift < 64);
    const auto byte = static_cast<unsigned char>(in.front());
    in.remove_prefix(1);
    value |= std::uint64_t{byte & 0x7fu} << shift;
    if (byte < 0x80) return value;
  }
}

std::vector<Field> read_message(std::string_view in) {
  std::vector<Field> fields;
  while (!in.empty()) {
    const std::uint64_t tag = read_varint(in);
    Field field;
    field.number = static_cast<std::uint32_t>(tag >> 3);
    if ((tag & 7) == 0) {
      field.varint = read_varint(in);
    } else if ((tag & 7) == 1) {
      REQUIRE(in.size() >= 8);
      for (int byte = 7; byte >= 0; --byte) field.varint = field.varint << 8 | static_cast<unsigned char>(in[static_cast<std::size_t>(byte)]);
      in.remove_prefix(8);
    } else {
      REQUIRE((tag & 7) == 2);
      const auto size = static_cast<std::size_t>(read_varint(in)); // bodies here are far below 4 GiB
      REQUIRE(size <= in.size());
      field.bytes = std::string(in.substr(0, size));
      in.remove_prefix(size);
    }
    fields.push_back(field);
  }
  return fields;
}

std::string labels_text(const std::vector<std::pair<std::string, std::string>> &labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  for (const auto &label : labels) {
    out += (out.size() > 1 ? "," : "") + label.first + "=\"";
    hermes::detail::append_escaped(out, label.second, true);
    out += '"';
  }
  return out + "}";
}

// One Metric as the lines the text format writes for it.
std::string metric_text(const std::string &name, std::uint64_t type, const std::vector<Field> &metric) {
  std::vector<std::pair<std::string, std::string>> labels;
  std::string out;
  for (const Field &field : metric)
    if (field.number == 1) {
      const auto pair = read_message(field.bytes);
      labels.emplace_back(pair.at(0).bytes, pair.at(1).bytes);
    }
  const auto with = [&](const char *label, const std::string &value) {
    auto more = labels;
    more.emplace_back(label, value);
    return labels_text(more);
  };
  const auto number = [](double value) { return hermes::detail::format_double(value); };
  for (const Field &field : metric) {
    if (field.number == 2 || field.number == 3) { // gauge, counter
      out += name + labels_text(labels) + " " + number(read_message(field.bytes).at(0).number_value()) + "\n";
    } else if (field.number == 7 || field.number == 4) { // histogram, summary
      std::uint64_t count = 0;
      double sum = 0;
      for (const Field &part : read_message(field.bytes)) {
        if (part.number == 1) count = part.varint;
        if (part.number == 2) sum = part.number_value();
        const auto inner = part.number == 3 ? read_message(part.bytes) : std::vector<Field>{};
        if (part.number == 3 && field.number == 7)
          out += name + "_bucket" + with("le", number(inner.at(1).number_value())) + " " + number(static_cast<double>(inner.at(0).varint)) + "\n";
        if (part.number == 3 && field.number == 4)
          out += name + with("quantile", number(inner.at(0).number_value())) + " " + number(inner.at(1).number_value()) + "\n";
      }
      if (field.number == 7) out += name + "_bucket" + with("le", "+Inf") + " " + number(static_cast<double>(count)) + "\n";
      out += name + "_sum" + labels_text(labels) + " " + number(sum) + "\n";
      out += name + "_count" + labels_text(labels) + " " + number(static_cast<double>(count)) + "\n";
    }
  }
  CHECK(type == (metric.back().number == 3 ? 0u : metric.back().number == 2 ? 1u : metric.back().number == 7 ? 4u : 2u));
  return out;
}

// The text format of a protobuf body, rebuilt from its messages.
std::string as_text(std::string_view body) {
  std::string out;
  while (!body.empty()) {
    const auto size = static_cast<std::size_t>(read_varint(body));
    REQUIRE(size <= body.size());
    const std::vector<Field> family = read_message(body.substr(0, size));
    body.remove_prefix(size);
    REQUIRE(family.size() >= 3);
    const std::string &name = family[0].bytes;
    static const std::map<std::uint64_t, std::string> types = {{0, "counter"}, {1, "gauge"}, {2, "summary"}, {4, "histogram"}};
    out += "# HELP " + name + " ";
    hermes::detail::append_escaped(out, family[1].bytes, false);
    out += "\n# TYPE " + name + " " + types.at(family[2].varint) + "\n";
    for (std::size_t i = 3; i < family.size(); ++i) out += metric_text(name, family[2].varint, read_message(family[i].bytes));
  }
  return out;
}

} // namespace

TEST_CASE("every family in protobuf carries the names, labels, help texts and values of the text format") {
  hermes::Registry registry(hermes::parse_config(R"({"service_name": "svc \"q\"",
    "gauges": [{"metric_name": "temperature", "metric_description": "back\\slash and\nnewline", "labels": ["room"]}],
    "counters": [{"metric_name": "jobs_total", "labels": ["queue"]}, {"metric_name": "plain"}],
    "histograms": [{"metric_name": "latency", "labels": ["a"], "buckets": [-1, 0.5, 1e5]},
                   {"metric_name": "native_only", "native": true},
                   {"metric_name": "both", "native": true, "buckets": [1]}],
    "summaries": [{"metric_name": "rpc", "objectives": {"0.5": 0.05, "0.99": 0.001}},
                  {"metric_name": "bare_summary"}]})",
                                                 "test"));
  registry.ingest(R"([{"metric_name": "temperature", "payload": {"labels": {"room": "k\"\\\n"}, "value": -0.0}},
    {"metric_name": "temperature", "payload": {"labels": {"room": ""}, "value": 1e-300}},
    {"metric_name": "jobs_total", "payload": {"labels": {"queue": "m\u00fc"}, "value": 2.5}},
    {"metric_name": "plain", "payload": {"value": 3}},
    {"metric_name": "latency", "payload": {"labels": {"a": "x"}, "observation": 0.7}},
    {"metric_name": "native_only", "payload": {"observation": -3}},
    {"metric_name": "both", "payload": {"observation": 0.5}},
    {"metric_name": "rpc", "payload": {"observation": 4}}, {"metric_name": "nope"}])",
                  1764000000.25);
  hermes::ServerStats stats;
  stats.udp_packets = 12;
  stats.http_requests[200] = 3;
  const hermes::detail::ProcessStats process{1.25, 4096000, 10240000, 1764000000.5, 7, 1024};
  std::string text, protobuf;
  hermes::detail::Renderer(text, registry, {registry, &stats, &process}, hermes::Format::text).write_some(SIZE_MAX);
  hermes::detail::Renderer stepped(protobuf, registry, {registry, &stats, &process}, hermes::Format::protobuf);
  while (!stepped.write_some(1)) {
  }
  CHECK(as_text(protobuf) == text);
  CHECK(text.find("hermes_build_info{version=\"" HERMES_VERSION_STR "\",service=\"svc \\\"q\\\"\"} 1") != std::string::npos);
  std::string whole;
  hermes::detail::Renderer(whole, registry, {registry, &stats, &process}, hermes::Format::protobuf).write_some(SIZE_MAX);
  CHECK(whole == protobuf); // in steps or at once, the same bytes
}

TEST_CASE("a render in protobuf steps out whole families only") {
  hermes::Registry registry(hermes::parse_config(R"({"service_name": "svc",
    "histograms": [{"metric_name": "latency_seconds", "labels": ["id"], "native": true, "max_series": 5000}]})",
                                                 "test"));
  const int series = 2 * HERMES_RENDER_PAUSE_STRIDE + 5;
  for (int id = 0; id < series; ++id)
    REQUIRE(registry.ingest(R"({"metric_name": "latency_seconds", "payload": {"labels": {"id": ")" + std::to_string(id) +
                                R"("}, "observation": 0.5}})",
                            1764000000)
                .accepted == 1);
  std::string out;
  hermes::detail::Renderer renderer(out, registry, {registry, nullptr, nullptr}, hermes::Format::protobuf);
  std::vector<std::size_t> sizes;
  while (!renderer.write_some(HERMES_RENDER_PAUSE_STRIDE)) sizes.push_back(out.size());
  std::string_view body = out;
  std::size_t families = 0;
  for (; !body.empty(); ++families) {
    const auto size = static_cast<std::size_t>(read_varint(body));
    REQUIRE(size <= body.size());
    body.remove_prefix(size);
  }
  CHECK(families == 9); // hermes_build_info, hermes_metric_* (2), hermes_samples_* (3), hermes_series* (2), latency_seconds
  CHECK(sizes.size() == 2);
  CHECK(out == hermes::render_metrics(registry, hermes::Format::protobuf));
  CHECK(as_text(out) == hermes::render_metrics(registry, hermes::Format::text));
}

TEST_CASE("a timestamp past what int64 seconds hold is held at its ends, as a state file may say any time") {
  CHECK(hermes::detail::Timestamp(1.764e36).seconds == static_cast<std::uint64_t>(std::int64_t{9200000000000000000}));
  CHECK(hermes::detail::Timestamp(-1.764e36).seconds == static_cast<std::uint64_t>(std::int64_t{-9200000000000000000}));
  CHECK(hermes::detail::Timestamp(1764000000.25).seconds == 1764000000u);
  CHECK(hermes::detail::Timestamp(1764000000.25).nanos == 250000000u);
}
