// Datagram parsing: every accepted form, and every reject reason, through Registry::ingest.
#include "helpers.hpp"
#include "reading.hpp"

using hermes::Reject;

namespace {

hermes::Config datagram_config() {
  return hermes::parse_config(R"({"service_name": "s",
    "gauges": [{"metric_name": "sample_gauge", "labels": ["label_1", "label_2"]}, {"metric_name": "plain_gauge"}],
    "counters": [{"metric_name": "sample_counter", "labels": ["label_1"]}, {"metric_name": "plain_counter"}]})",
                              "test");
}

// The one reason a single-sample datagram was rejected for, or "accepted".
std::string outcome(hermes::Registry &registry, const std::string &datagram) {
  const hermes::IngestResult result = registry.ingest(datagram);
  REQUIRE(result.accepted + result.rejected_total() == 1);
  if (result.accepted == 1) return "accepted";
  for (std::size_t i = 0; i < hermes::reject_reason_count; ++i)
    if (result.rejected[i] == 1) return hermes::to_string(static_cast<Reject>(i));
  return "impossible";
}

std::optional<double> gauge(const hermes::Registry &registry, const std::string &a, const std::string &b) {
  return registry.value("sample_gauge", {a, b});
}

} // namespace

TEST_CASE("the original Python client's packets (python-hermes 0.0.1 to 0.0.4)") {
  hermes::Registry registry(datagram_config());
  // json.dumps with its default ", " and ": " separators.
  CHECK(outcome(registry, R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "testing label 1"}}})") == "accepted");
  CHECK(outcome(registry, R"({"metric_name": "sample_gauge", "payload": {"labels": {"label_1": "testing label 1", "label_2": "testing label 2"}, "value": 67.4}})") == "accepted");
  CHECK(outcome(registry, R"({"metric_name": "sample_gauge", "payload": {"value": 10.0, "labels": {"label_1": "a", "label_2": "b"}, "operation": "set"}})") == "accepted");
  CHECK(outcome(registry, R"({"metric_name": "sample_gauge", "payload": {"labels": {"label_1": "a", "label_2": "b"}, "operation": "increment", "value": null}})") == "accepted");
  CHECK(outcome(registry, R"({"metric_name": "sample_gauge", "payload": {"operation": "increment", "labels": {"label_1": "a", "label_2": "b"}, "value": null}})") == "accepted");
  CHECK(outcome(registry, R"({"metric_name": "sample_gauge", "payload": {"operation": "decrement", "labels": {"label_1": "a", "label_2": "b"}, "value": null}})") == "accepted");
  CHECK(registry.value("sample_counter", {"testing label 1"}) == std::optional<double>(1));
  CHECK(gauge(registry, "testing label 1", "testing label 2") == std::optional<double>(67.4));
  CHECK(gauge(registry, "a", "b") == std::optional<double>(11));
  CHECK(registry.accepted() == 6);
}

TEST_CASE("the original Go client's packets: compact, with null fields") {
  hermes::Registry registry(datagram_config());
  CHECK(outcome(registry, R"({"metric_name":"sample_counter","payload":{"labels":{"label_1":"x"}}})") == "accepted");
  CHECK(outcome(registry, R"({"metric_name":"plain_counter","payload":{"labels":null}})") == "accepted");
  CHECK(outcome(registry, R"({"metric_name":"sample_gauge","payload":{"operation":"set","value":2.5,"labels":{"label_1":"a","label_2":"b"}}})") == "accepted");
  CHECK(outcome(registry, R"({"metric_name":"sample_gauge","payload":{"operation":"increment","value":null,"labels":{"label_1":"a","label_2":"b"}}})") == "accepted");
  CHECK(outcome(registry, R"({"metric_name":"plain_gauge","payload":{"operation":"decrement","value":null,"labels":null}})") == "accepted");
  CHECK(registry.value("sample_counter", {"x"}) == std::optional<double>(1));
  CHECK(registry.value("plain_counter", {}) == std::optional<double>(1));
  CHECK(gauge(registry, "a", "b") == std::optional<double>(3.5));
  CHECK(registry.value("plain_gauge", {}) == std::optional<double>(-1));
}

TEST_CASE("counters add their value, or 1") {
  hermes::Registry registry(datagram_config());
  CHECK(outcome(registry, R"({"metric_name": "plain_counter"})") == "accepted");
  CHECK(outcome(registry, R"({"metric_name": "plain_counter", "payload": null})") == "accepted");
  CHECK(outcome(registry, R"({"metric_name": "plain_counter", "payload": {"value": 2.5}})") == "accepted");
  CHECK(outcome(registry, R"({"metric_name": "plain_counter", "payload": {"value": 0}})") == "accepted");
  CHECK(registry.value("plain_counter", {}) == std::optional<double>(4.5));
  CHECK(outcome(registry, R"({"metric_name": "plain_counter", "payload": {"value": -1}})") == "invalid_value");
  CHECK(outcome(registry, R"({"metric_name": "plain_counter", "payload": {"value": "3"}})") == "invalid_value");
  CHECK(outcome(registry, R"({"metric_name": "plain_counter", "payload": {"value": 1e999}})") == "invalid_value");
  CHECK(outcome(registry, R"({"metric_name": "plain_counter", "payload": {"value": -1e999}})") == "invalid_value");
  CHECK(registry.value("plain_counter", {}) == std::optional<double>(4.5));
}

TEST_CASE("gauges set, increment and decrement") {
  hermes::Registry registry(datagram_config());
  const std::string labels = R"("labels": {"label_1": "a", "label_2": "b"})";
  CHECK(outcome(registry, R"({"metric_name": "sample_gauge", "payload": {)" + labels + R"(, "operation": "increment"}})") == "accepted");
  CHECK(gauge(registry, "a", "b") == std::optional<double>(1)); // a new series starts from 0
  CHECK(outcome(registry, R"({"metric_name": "sample_gauge", "payload": {)" + labels + R"(, "operation": "increment", "value": 4}})") == "accepted");
  CHECK(outcome(registry, R"({"metric_name": "sample_gauge", "payload": {)" + labels + R"(, "operation": "decrement", "value": 0.5}})") == "accepted");
  CHECK(gauge(registry, "a", "b") == std::optional<double>(4.5));
  CHECK(outcome(registry, R"({"metric_name": "sample_gauge", "payload": {)" + labels + R"(, "value": -7}})") == "accepted");
  CHECK(gauge(registry, "a", "b") == std::optional<double>(-7));
  CHECK(outcome(registry, R"({"metric_name": "sample_gauge", "payload": {)" + labels + R"(}})") == "invalid_value");
  CHECK(outcome(registry, R"({"metric_name": "sample_gauge", "payload": {)" + labels + R"(, "operation": "set", "value": null}})") == "invalid_value");
  CHECK(outcome(registry, R"({"metric_name": "sample_gauge", "payload": {)" + labels + R"(, "value": true}})") == "invalid_value");
  CHECK(outcome(registry, R"({"metric_name": "sample_gauge", "payload": {)" + labels + R"(, "operation": "multiply", "value": 2}})") == "invalid_operation");
  CHECK(outcome(registry, R"({"metric_name": "sample_gauge", "payload": {)" + labels + R"(, "operation": 1, "value": 2}})") == "invalid_operation");
  CHECK(outcome(registry, R"({"metric_name": "sample_gauge", "payload": {)" + labels + R"(, "operation": "SET", "value": 2}})") == "invalid_operation");
  CHECK(gauge(registry, "a", "b") == std::optional<double>(-7));
}

TEST_CASE("labels must match the configured names exactly") {
  hermes::Registry registry(datagram_config());
  CHECK(outcome(registry, R"({"metric_name": "sample_counter", "payload": {"labels": {}}})") == "label_mismatch");
  CHECK(outcome(registry, R"({"metric_name": "sample_counter"})") == "label_mismatch");
  CHECK(outcome(registry, R"({"metric_name": "sample_counter", "payload": {"labels": {"label_2": "x"}}})") == "label_mismatch");
  CHECK(outcome(registry, R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "x", "extra": "y"}}})") == "label_mismatch");
  CHECK(outcome(registry, R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": 5}}})") == "label_mismatch");
  CHECK(outcome(registry, R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": null}}})") == "label_mismatch");
  CHECK(outcome(registry, R"({"metric_name": "plain_counter", "payload": {"labels": {"label_1": "x"}}})") == "label_mismatch");
  CHECK(outcome(registry, R"({"metric_name": "plain_counter", "payload": {"labels": {}}})") == "accepted");
  CHECK(registry.series_count() == 2); // the two label-less metrics' series; nothing else was created
}

TEST_CASE("label values must be valid UTF-8; any valid UTF-8 is kept as it is") {
  hermes::Registry registry(datagram_config());
  const auto with_value = [](const std::string &value) {
    return R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": ")" + value + R"("}}})";
  };
  CHECK(outcome(registry, with_value("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80")) == "accepted");
  CHECK(outcome(registry, with_value("\\u00e9\\ud83d\\ude00")) == "accepted");
  CHECK(registry.value("sample_counter", {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"}) == std::optional<double>(1));
  CHECK(registry.value("sample_counter", {"\xc3\xa9\xf0\x9f\x98\x80"}) == std::optional<double>(1));
  CHECK(outcome(registry, with_value("\xff")) == "invalid_label_value");
  CHECK(outcome(registry, with_value("\xc3")) == "invalid_label_value");         // cut off
  CHECK(outcome(registry, with_value("\xc0\xaf")) == "invalid_label_value");     // overlong
  CHECK(outcome(registry, with_value("\xed\xa0\x80")) == "invalid_label_value"); // a surrogate
  CHECK(outcome(registry, with_value("\xf4\x90\x80\x80")) == "invalid_label_value"); // past U+10FFFF
  CHECK(outcome(registry, with_value("\\ud800")) == "malformed_json");           // a lone surrogate escape
}

TEST_CASE("is_valid_utf8 at the edges") {
  using hermes::detail::is_valid_utf8;
  CHECK(is_valid_utf8(""));
  CHECK(is_valid_utf8("\x7f"));
  CHECK(is_valid_utf8("\xc2\x80"));
  CHECK(is_valid_utf8("\xef\xbf\xbf"));
  CHECK(is_valid_utf8("\xf4\x8f\xbf\xbf"));
  CHECK_FALSE(is_valid_utf8("\x80"));
  CHECK_FALSE(is_valid_utf8("\xe2\x82"));
  CHECK_FALSE(is_valid_utf8("\xf8\x88\x80\x80\x80"));
  CHECK_FALSE(is_valid_utf8("\xe0\x80\x80"));
}

TEST_CASE("the wrong shapes are malformed_sample, non-JSON is malformed_json") {
  hermes::Registry registry(datagram_config());
  CHECK(outcome(registry, "") == "malformed_json");
  CHECK(outcome(registry, "{") == "malformed_json");
  CHECK(outcome(registry, "not json") == "malformed_sample"); // read as a StatsD line
  CHECK(outcome(registry, " \n") == "malformed_json");          // blank: left to the JSON reader
  registry.accept_statsd(false);
  CHECK(outcome(registry, "not json") == "malformed_json");
  CHECK(outcome(registry, "plain_counter:1|c") == "malformed_json");
  registry.accept_statsd(true);
  CHECK(outcome(registry, R"({"metric_name": "plain_counter"} {})") == "malformed_json");
  CHECK(outcome(registry, std::string(5000, '[')) == "malformed_json");
  CHECK(outcome(registry, "17") == "malformed_sample");
  CHECK(outcome(registry, R"("plain_counter")") == "malformed_sample");
  CHECK(outcome(registry, "{}") == "malformed_sample");
  CHECK(outcome(registry, R"({"metric_name": 5})") == "malformed_sample");
  CHECK(outcome(registry, R"({"metric_name": "plain_counter", "payload": []})") == "malformed_sample");
  CHECK(outcome(registry, R"({"metric_name": "plain_counter", "payload": {"labels": ["a"]}})") == "malformed_sample");
  CHECK(outcome(registry, "[]") == "malformed_sample");
  CHECK(outcome(registry, R"({"metric_name": "no_such_metric"})") == "unknown_metric");
  CHECK(outcome(registry, R"({"metric_name": "Plain_counter"})") == "unknown_metric");
  CHECK(registry.value("plain_counter", {}) == std::optional<double>(0));
}

TEST_CASE("unknown extra keys in a sample are ignored") {
  hermes::Registry registry(datagram_config());
  CHECK(outcome(registry, R"({"metric_name": "plain_counter", "timestamp": 5, "payload": {"unit": "s", "value": 2}})") == "accepted");
  CHECK(registry.value("plain_counter", {}) == std::optional<double>(2));
}

TEST_CASE("a batch counts each sample on its own") {
  hermes::Registry registry(datagram_config());
  const hermes::IngestResult result = registry.ingest(R"([
    {"metric_name": "plain_counter"},
    {"metric_name": "plain_counter", "payload": {"value": 2}},
    {"metric_name": "nope"},
    {"metric_name": "sample_gauge", "payload": {"labels": {"label_1": "a", "label_2": "b"}, "value": 9}},
    {"metric_name": "sample_gauge", "payload": {"labels": {"label_1": "a"}, "value": 9}},
    7,
    {"metric_name": "plain_gauge", "payload": {"operation": "jump"}}])");
  CHECK(result.accepted == 3);
  CHECK(result.rejected_total() == 4);
  CHECK(result.rejected[static_cast<std::size_t>(Reject::unknown_metric)] == 1);
  CHECK(result.rejected[static_cast<std::size_t>(Reject::label_mismatch)] == 1);
  CHECK(result.rejected[static_cast<std::size_t>(Reject::malformed_sample)] == 1);
  CHECK(result.rejected[static_cast<std::size_t>(Reject::invalid_operation)] == 1);
  CHECK(registry.value("plain_counter", {}) == std::optional<double>(3));
  CHECK(gauge(registry, "a", "b") == std::optional<double>(9));
  CHECK(registry.accepted() == 3);
  CHECK(registry.rejected(Reject::unknown_metric) == 1);
}

TEST_CASE("plain datagrams are read in place, others by picojson, and both read alike") {
  const std::string sample = R"({"metric_name": "sample_gauge", "payload": {"labels": {"label_1": "a", "label_2": "b"}, "value": )";
  // Plain: strings without escapes, numbers as JSON writes them, any white space and order.
  for (const std::string &plain : {sample + "2}}", sample + "-0}}", sample + "-12.5e-3}}", sample + "1E+2}}", sample + "0.1e1}}",
                                   sample + "2.2250738585072014e-308}}", sample + "1.7976931348623157e308}}", sample + "null}}",
                                   sample + R"("s", "value": true}})", std::string(R"( [ {"metric_name":"plain_counter"} , 7 ,"x",[]] )"),
                                   std::string("\t{\"payload\": {\"labels\": {\"label_1\": \"\xc3\xa9\"}}, \"metric_name\": \"sample_counter\"}\r\n"),
                                   std::string(R"({"metric_name": "c", "payload": {"labels": {"a": "x", "a": "y"}}, "payload": {}})")}) {
    CAPTURE(plain);
    const reading::Both both = reading::read_both(plain);
    CHECK(both.plain);
    CHECK(both.picojson);
    CHECK(reading::same(both.plain_batch, both.picojson_batch));
  }
  // Not plain, but JSON to picojson: escapes, and numbers in forms JSON does not write
  // or beyond a double's range.
  for (const std::string &other : {sample + R"(2, "x": "\n"}})", sample + "01}}", sample + "1.}}", sample + "-.5}}", sample + "1e999}}",
                                   sample + "1e-400}}", sample + "+1}}" /* not JSON to either */}) {
    CAPTURE(other);
    const reading::Both both = reading::read_both(other);
    CHECK_FALSE(both.plain);
    CHECK(both.picojson == (other != sample + "+1}}"));
  }
  // Ingest takes the plain reading: the strings it keeps are views of the datagram.
  const std::string plain = sample + "2}}";
  hermes::detail::ReadBatch batch;
  REQUIRE(hermes::detail::read_datagram(plain, batch));
  const std::string_view name = batch.slots[0].metric_name.text.get();
  CHECK(name == "sample_gauge");
  CHECK(name.data() == plain.data() + plain.find("sample_gauge"));
  const std::string escaped = sample + R"(2, "x": "\n"}})";
  REQUIRE(hermes::detail::read_datagram(escaped, batch)); // read again by picojson: copies
  CHECK(batch.slots[0].metric_name.text.get() == "sample_gauge");
  CHECK(batch.slots[0].metric_name.text.get().data() != escaped.data() + escaped.find("sample_gauge"));
  // What picojson reads stands: an escaped label value, a number read by strtod.
  hermes::Registry registry(datagram_config());
  CHECK(outcome(registry, R"({"metric_name": "sample_gauge", "payload": {"labels": {"label_1": "\u00e9", "label_2": "b\/"}, "value": 01}})") == "accepted");
  CHECK(gauge(registry, "\xc3\xa9", "b/") == std::optional<double>(1));
  CHECK(outcome(registry, sample + "-.5}}") == "accepted");
  CHECK(gauge(registry, "a", "b") == std::optional<double>(-0.5));
  CHECK(outcome(registry, sample + "1e999}}") == "invalid_value");
  CHECK(outcome(registry, sample + "+1}}") == "malformed_json");
}

TEST_CASE("a datagram that is not JSON as a whole applies nothing, not even its valid start") {
  hermes::Registry registry(datagram_config());
  const hermes::IngestResult result = registry.ingest(R"([{"metric_name": "plain_counter"}, {"metric_name": )");
  CHECK(result.accepted == 0);
  CHECK(result.rejected[static_cast<std::size_t>(Reject::malformed_json)] == 1);
  CHECK(registry.value("plain_counter", {}) == std::optional<double>(0));
}

TEST_CASE("count_rejected counts a datagram rejected before parsing") {
  hermes::Registry registry(datagram_config());
  registry.count_rejected(Reject::too_large);
  registry.count_rejected(Reject::too_large);
  CHECK(registry.rejected(Reject::too_large) == 2);
  CHECK(registry.accepted() == 0);
}

TEST_CASE("every reason has its name") {
  const char *names[] = {"malformed_json",      "malformed_sample", "unknown_metric",    "label_mismatch",
                         "invalid_label_value", "invalid_value",    "invalid_operation", "series_limit", "too_large",
                         "unsupported_type",    "memory_limit",     "forbidden_source",  "dropped",      "type_mismatch",
                         "metric_limit"};
  static_assert(std::size(names) == hermes::reject_reason_count, "one expected name per reason");
  for (std::size_t i = 0; i < hermes::reject_reason_count; ++i)
    CHECK(std::string(hermes::to_string(static_cast<Reject>(i))) == names[i]);
}
