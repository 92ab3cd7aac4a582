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
