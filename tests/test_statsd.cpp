// StatsD and DogStatsD lines: every rule of the format, through Registry::ingest.
#include "helpers.hpp"

using hermes::Reject;

namespace {

hermes::Config statsd_config() {
  return hermes::parse_config(R"({"service_name": "s",
    "counters": [{"metric_name": "jobs_total", "labels": ["queue"]}, {"metric_name": "plain_counter"},
                 {"metric_name": "api_requests"}, {"metric_name": "tagged", "labels": ["a", "b"]}],
    "gauges": [{"metric_name": "depth"}, {"metric_name": "temp", "labels": ["room"]}],
    "histograms": [{"metric_name": "latency", "buckets": [0.1, 1, 10]}],
    "summaries": [{"metric_name": "sizes"}, {"metric_name": "quantiles", "objectives": {"0.5": 0.05}}]})",
                              "test");
}

// What one datagram did, as "accepted" or the reason's name, each with its count: "accepted 2, unknown_metric 1".
std::string outcome(hermes::Registry &registry, const std::string &datagram) {
  const hermes::IngestResult result = registry.ingest(datagram, 100);
  std::string text;
  const auto note = [&](const std::string &name, std::size_t count) {
    if (count == 0) return;
    text += (text.empty() ? "" : ", ") + name + " " + std::to_string(count);
  };
  note("accepted", result.accepted);
  for (std::size_t i = 0; i < hermes::reject_reason_count; ++i) note(hermes::to_string(static_cast<Reject>(i)), result.rejected[i]);
  return text;
}

std::optional<double> value(const hermes::Registry &registry, const std::string &metric, const std::vector<std::string> &labels = {}) {
  return registry.value(metric, labels);
}

bool has_line(const std::string &body, const std::string &line) {
  return ("\n" + body).find("\n" + line + "\n") != std::string::npos;
}

// The value of the sample line `name`, as a number: how it is spelled is the formatter's concern.
double sample_value(const std::string &body, const std::string &name) {
  const std::size_t at = ("\n" + body).find("\n" + name + " ");
  REQUIRE(at != std::string::npos);
  return std::strtod(body.c_str() + at + name.size() + 1, nullptr);
}

// The body as of t=100, the time the tests push at: summary windows move on to it first.
std::string body(hermes::Registry &registry) {
  registry.expire(100);
  return hermes::render_metrics(registry);
}

} // namespace

TEST_CASE("a datagram is JSON when its first byte that is not white space opens JSON, else StatsD") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, " \t{\"metric_name\": \"plain_counter\"}") == "accepted 1");
  CHECK(outcome(registry, "\n[{\"metric_name\": \"plain_counter\"}]") == "accepted 1");
  CHECK(outcome(registry, "plain_counter:1|c") == "accepted 1");
  CHECK(outcome(registry, "{plain_counter:1|c") == "malformed_json 1");
  CHECK(outcome(registry, "") == "malformed_json 1");
  CHECK(outcome(registry, " \r\n") == "malformed_json 1");
  CHECK(value(registry, "plain_counter") == 3.0);
  CHECK(registry.received(hermes::Wire::json) == 5);
  CHECK(registry.received(hermes::Wire::statsd) == 1);
}

TEST_CASE("is_statsd: a [ opens JSON only where a JSON array could go on from it") {
  using hermes::detail::is_statsd;
  // JSON: nothing more, ] and nothing after it, an element that opens with { [ ", or a
  // JSON word or number ended by white space, ',', ] or the end.
  for (const char *json : {"[", "[ \r\n\t", "[]", "[ ]", "[]\n", "[ ] \r\n", "[{", "[{\"metric_name\": \"plain_co", " \n[ {",
                           "[[", "[\"x\"]", "[null]", "[true,", "[false\t]", "[null", "[1, 2", "[-1]", "[1e5]", "[0.5 ,",
                           "[-]", "[1]depth:1|g", "[null]depth:1|g", "[{a=b}]tagged:1|c", "[\"a\"=x]tagged:1|c",
                           "[[a=x]]tagged:1|c", "{", "{x", "", " \r\n"}) {
    CAPTURE(json);
    CHECK_FALSE(is_statsd(json));
  }
  // StatsD: anything else, such as SignalFx tags first.
  for (const char *statsd : {"[queue=mail]jobs:1|c", " [queue=mail]jobs:1|c", "\n[queue=mail]jobs:1|c", "[ queue=mail]jobs:1|c",
                             "[]jobs:1|c", "[ ]jobs:1|c", "[nullable=1]c:1|c", "[null=1]c:1|c", "[truth=1]c:1|c",
                             "[f1=1]c:1|c", "[5xx=1]c:1|c", "[1e=1]c:1|c", "[-=1]c:1|c", "[nul", "[nan]", "[,",
                             "[queue=mail]jobs:1|c\n[1, 2]", "jobs:1|c", "17"}) {
    CAPTURE(statsd);
    CHECK(is_statsd(statsd));
  }
}

TEST_CASE("SignalFx tags first make a StatsD line, alone in its datagram or among others") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "[queue=mail]jobs:1|c") == "accepted 1");
  CHECK(outcome(registry, "[a=x,b=y]tagged:2|c") == "accepted 1");
  CHECK(outcome(registry, "[queue=mail]jobs:2|c|@0.5\n[queue=sms]jobs_total:3|c\r\n[room=hall]temp:21.5|g\n"
                          "jobs[queue=sms]:1|c\n[]depth:4|g\n[b=y,a=x]tagged:1|c\n") == "accepted 6");
  CHECK(outcome(registry, "[queue=mail]nope:1|c\n[queue=mail]jobs:-1|c\n[queue]jobs:1|c\n[room=x]temp:1|g|#room:y") ==
        "malformed_sample 2, unknown_metric 1, invalid_value 1"); // [queue] has no value; one tag style to a line
  CHECK(registry.received(hermes::Wire::statsd) == 12);
  CHECK(registry.received(hermes::Wire::json) == 0);
  const std::string text = body(registry);
  CHECK(has_line(text, "jobs_total{queue=\"mail\"} 5")); // 1 + 2 / 0.5
  CHECK(has_line(text, "jobs_total{queue=\"sms\"} 4"));
  CHECK(has_line(text, "tagged{a=\"x\",b=\"y\"} 3"));
  CHECK(has_line(text, "temp{room=\"hall\"} 21.5"));
  CHECK(has_line(text, "depth 4"));
  // Tag keys that start as a JSON word or number would, but go on otherwise, are tags.
  hermes::Registry words(hermes::parse_config(
      R"({"service_name": "s", "counters": [{"metric_name": "c", "labels": ["nullable", "truth", "f1", "_5xx"]}]})", "test"));
  CHECK(outcome(words, "[nullable=a,truth=b,f1=c,5xx=d]c:1|c") == "accepted 1");
  CHECK(outcome(words, "[truth=b,nullable=a,5xx=d,f1=c]c:1|c") == "accepted 1");
  CHECK(outcome(words, "[f1=c,5xx=d,truth=b,nullable=a]c:1|c") == "accepted 1");
  CHECK(outcome(words, "[5xx=d,f1=c,truth=b,nullable=a]c:1|c") == "accepted 1"); // 5xx escapes to _5xx
  CHECK(value(words, "c", {"a", "b", "c", "d"}) == 4.0);
}

TEST_CASE("white space before the [ decides nothing, and stays in the line as before any name") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "\n[queue=mail]jobs:1|c") == "accepted 1");          // an empty line first
  CHECK(outcome(registry, "\r\n\n[queue=mail]jobs:1|c") == "accepted 1");
  CHECK(outcome(registry, " [queue=mail]jobs:1|c") == "unknown_metric 1");     // named _jobs, as " jobs" is
  CHECK(outcome(registry, " jobs:1|c|#queue:mail") == "unknown_metric 1");
  CHECK(outcome(registry, "[ queue=mail]jobs:1|c") == "label_mismatch 1");     // the tag key " queue" is _queue
  CHECK(value(registry, "jobs_total", {"mail"}) == 2.0);
  CHECK(outcome(registry, " \t[ {\"metric_name\": \"plain_counter\"} ]") == "accepted 1");
  CHECK(outcome(registry, "[\n\t{\"metric_name\": \"plain_counter\"}]\n") == "accepted 1");
  CHECK(value(registry, "plain_counter") == 2.0);
  CHECK(registry.received(hermes::Wire::statsd) == 5);
  CHECK(registry.received(hermes::Wire::json) == 2);
}

TEST_CASE("a broken JSON batch is counted as before: malformed_json, or malformed_sample for its shape") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, R"([{"metric_name": "plain_counter"}, {"metric_name": )") == "malformed_json 1");
  CHECK(outcome(registry, R"([{"metric_name": "plain_co)") == "malformed_json 1");
  CHECK(outcome(registry, "[1, 2") == "malformed_json 1");
  CHECK(outcome(registry, "[") == "malformed_json 1");
  CHECK(outcome(registry, "[ \n") == "malformed_json 1");
  CHECK(outcome(registry, "[null") == "malformed_json 1");
  CHECK(outcome(registry, "[]") == "malformed_sample 1");
  CHECK(outcome(registry, "[ ]") == "malformed_sample 1");
  CHECK(outcome(registry, "[]\r\n") == "malformed_sample 1");
  CHECK(outcome(registry, R"(["x"])") == "malformed_sample 1");
  CHECK(outcome(registry, "[null]") == "malformed_sample 1");
  CHECK(outcome(registry, "[true, false]") == "malformed_sample 2");
  CHECK(outcome(registry, "[1, 2]") == "malformed_sample 2");
  CHECK(outcome(registry, R"([-1.5e3, {"metric_name": "plain_counter"}])") == "accepted 1, malformed_sample 1");
  CHECK(value(registry, "plain_counter") == 1.0);
  CHECK(registry.received(hermes::Wire::json) == 17);
  CHECK(registry.received(hermes::Wire::statsd) == 0);
}

TEST_CASE("tags that could start JSON make the datagram JSON: malformed_json, all its lines") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "[{a=x,b=y}]tagged:1|c") == "malformed_json 1");
  CHECK(outcome(registry, "[\"a\"=x,b=y]tagged:1|c") == "malformed_json 1");
  CHECK(outcome(registry, "[[a=x,b=y]]tagged:1|c") == "malformed_json 1");
  CHECK(outcome(registry, "[1]depth:1|g") == "malformed_json 1");
  CHECK(outcome(registry, "[null]depth:1|g") == "malformed_json 1");
  CHECK(outcome(registry, "[{a=x,b=y}]tagged:1|c\n[a=x,b=y]tagged:1|c\ndepth:1|g") == "malformed_json 1");
  // On a later line the same are tags, escaped as statsd_exporter escapes them: {a is _a.
  CHECK(outcome(registry, "[a=x,b=y]tagged:1|c\n[{a=x,b=y}]tagged:1|c") == "accepted 1, label_mismatch 1");
  CHECK(value(registry, "tagged", {"x", "y"}) == 1.0);
  CHECK(value(registry, "depth") == 0.0);
}

TEST_CASE("StatsD off: SignalFx tags first are JSON too, and malformed_json") {
  hermes::Registry registry(statsd_config());
  registry.accept_statsd(false);
  CHECK(outcome(registry, "[queue=mail]jobs:1|c") == "malformed_json 1");
  CHECK(outcome(registry, "[a=x,b=y]tagged:1|c\n[a=x,b=y]tagged:1|c") == "malformed_json 1");
  CHECK(outcome(registry, "[]jobs:1|c") == "malformed_json 1");
  CHECK(outcome(registry, "\n [queue=mail]jobs:1|c") == "malformed_json 1");
  CHECK(outcome(registry, "[1, 2]") == "malformed_sample 2");
  CHECK(registry.received(hermes::Wire::statsd) == 0);
  CHECK(registry.received(hermes::Wire::json) == 6);
  CHECK_FALSE(value(registry, "jobs_total", {"mail"}).has_value());
}

TEST_CASE("lines are separated by \\n; \\r\\n, empty lines and a final newline are fine") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "plain_counter:1|c\nplain_counter:2|c\r\n\nplain_counter:4|c\n") == "accepted 3");
  CHECK(value(registry, "plain_counter") == 7.0);
  CHECK(outcome(registry, "plain_counter:1|c\r\n\r\n") == "accepted 1");
  CHECK(value(registry, "plain_counter") == 8.0);
}

TEST_CASE("a bad line never touches the other lines of its datagram") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "plain_counter:1|c\ngarbage\nplain_counter:-1|c\nnope:1|c\nplain_counter:2|c\ndepth:1|c") ==
        "accepted 2, malformed_sample 1, unknown_metric 2, invalid_value 1");
  CHECK(value(registry, "plain_counter") == 3.0);
  CHECK(registry.accepted() == 2);
  CHECK(registry.rejected(Reject::unknown_metric) == 2);
  CHECK(registry.received(hermes::Wire::statsd) == 6);
}

TEST_CASE("c: a counter adds value / rate; a negative value is invalid_value") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "plain_counter:3|c") == "accepted 1");
  CHECK(outcome(registry, "plain_counter:2|c|@0.5") == "accepted 1");   // adds 4
  CHECK(outcome(registry, "plain_counter:1|c|@0.1") == "accepted 1");   // adds 10
  CHECK(outcome(registry, "plain_counter:0.25|c|@1") == "accepted 1");  // adds 0.25
  CHECK(outcome(registry, "plain_counter:+1|c") == "accepted 1");       // a plus sign is a plain number
  CHECK(value(registry, "plain_counter") == 18.25);
  CHECK(outcome(registry, "plain_counter:-1|c") == "invalid_value 1");
  CHECK(outcome(registry, "plain_counter:1e308|c|@1e-300") == "invalid_value 1"); // beyond double
  CHECK(outcome(registry, "plain_counter:x|c") == "invalid_value 1");
  CHECK(outcome(registry, "plain_counter:|c") == "invalid_value 1");
  CHECK(outcome(registry, "plain_counter:nan|c") == "invalid_value 1");
  CHECK(outcome(registry, "plain_counter:inf|c") == "invalid_value 1");
  CHECK(outcome(registry, "plain_counter:1,5|c") == "invalid_value 1"); // numbers do not follow the locale
  CHECK(outcome(registry, "plain_counter:0x10|c") == "invalid_value 1");
  CHECK(outcome(registry, "plain_counter:+-1|c") == "invalid_value 1");
  CHECK(outcome(registry, "plain_counter: 1|c") == "invalid_value 1");
  CHECK(value(registry, "plain_counter") == 18.25);
}

TEST_CASE("a counter declared as X_total takes lines named X or X_total") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "jobs:1|c|#queue:mail") == "accepted 1");
  CHECK(outcome(registry, "jobs_total:2|c|#queue:mail") == "accepted 1");
  CHECK(value(registry, "jobs_total", {"mail"}) == 3.0);
  CHECK(outcome(registry, "jobs:1|g|#queue:mail") == "unknown_metric 1"); // only counters
  CHECK(outcome(registry, "plain:1|c") == "unknown_metric 1");            // plain_counter is not plain_total
}

TEST_CASE("g: a gauge is set to the value; a sign moves it; the rate is ignored") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "depth:5|g") == "accepted 1");
  CHECK(value(registry, "depth") == 5.0);
  CHECK(outcome(registry, "depth:+3|g") == "accepted 1");
  CHECK(value(registry, "depth") == 8.0);
  CHECK(outcome(registry, "depth:-10.5|g") == "accepted 1");
  CHECK(value(registry, "depth") == -2.5);
  CHECK(outcome(registry, "depth:4|g|@0.5") == "accepted 1");
  CHECK(value(registry, "depth") == 4.0);
  CHECK(outcome(registry, "depth:+1|g|@0.1") == "accepted 1");
  CHECK(value(registry, "depth") == 5.0);
  CHECK(outcome(registry, "depth:0|g") == "accepted 1");
  CHECK(value(registry, "depth") == 0.0);
  CHECK(outcome(registry, "depth:-0|g") == "accepted 1"); // moves by nothing
  CHECK(value(registry, "depth") == 0.0);
  CHECK(outcome(registry, "depth:1e3|g") == "accepted 1");
  CHECK(value(registry, "depth") == 1000.0);
}

TEST_CASE("ms: a timer observes value / 1000 seconds; h and d observe the value") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "latency:250|ms") == "accepted 1"); // 0.25 s
  CHECK(outcome(registry, "latency:0.05|h") == "accepted 1");
  CHECK(outcome(registry, "latency:7|d") == "accepted 1");
  CHECK(outcome(registry, "latency:20000|ms") == "accepted 1"); // 20 s
  const std::string text = body(registry);
  CHECK(has_line(text, "latency_bucket{le=\"0.1\"} 1"));
  CHECK(has_line(text, "latency_bucket{le=\"1\"} 2"));
  CHECK(has_line(text, "latency_bucket{le=\"10\"} 3"));
  CHECK(has_line(text, "latency_bucket{le=\"+Inf\"} 4"));
  CHECK(has_line(text, "latency_sum 27.3"));
  CHECK(has_line(text, "latency_count 4"));
  CHECK(outcome(registry, "sizes:3|h") == "accepted 1"); // summaries too
  CHECK(outcome(registry, "sizes:1500|ms") == "accepted 1");
  const std::string summary = body(registry);
  CHECK(has_line(summary, "sizes_sum 4.5"));
  CHECK(has_line(summary, "sizes_count 2"));
  CHECK(outcome(registry, "latency:1|c") == "unknown_metric 1");
  CHECK(outcome(registry, "latency:1|g") == "unknown_metric 1");
  CHECK(outcome(registry, "depth:1|ms") == "unknown_metric 1");
  CHECK(outcome(registry, "plain_counter:1|h") == "unknown_metric 1");
  CHECK(outcome(registry, "latency:-1|h") == "accepted 1"); // observations may be negative
}

TEST_CASE("a rate r counts an observation int(1 / r) times, at the cost of one") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "latency:500|ms|@0.1") == "accepted 1");  // 10 observations of 0.5 s
  CHECK(outcome(registry, "latency:0.05|h|@0.3") == "accepted 1");  // int(3.33) = 3
  CHECK(outcome(registry, "latency:20|d|@1") == "accepted 1");
  std::string text = body(registry);
  CHECK(has_line(text, "latency_bucket{le=\"0.1\"} 3"));
  CHECK(has_line(text, "latency_bucket{le=\"1\"} 13"));
  CHECK(has_line(text, "latency_bucket{le=\"10\"} 13"));
  CHECK(has_line(text, "latency_bucket{le=\"+Inf\"} 14"));
  CHECK(has_line(text, "latency_sum 25.15"));
  CHECK(has_line(text, "latency_count 14"));
  // A rate so small that the count cannot hold 1 / r: held at the largest count, at once.
  CHECK(outcome(registry, "sizes:1|h|@1e-300") == "accepted 1");
  CHECK(outcome(registry, "sizes:1|h|@1e-300") == "accepted 1");
  text = body(registry);
  CHECK(sample_value(text, "sizes_count") == 18446744073709551615.0);
  CHECK(sample_value(text, "sizes_sum") == 2 * 18446744073709551615.0);
}

TEST_CASE("a summary's quantiles take a sampled observation once") {
  hermes::Registry registry(statsd_config());
  for (int i = 1; i <= 9; ++i) CHECK(outcome(registry, "quantiles:" + std::to_string(i) + "|h|@0.5") == "accepted 1");
  const std::string text = body(registry);
  CHECK(has_line(text, "quantiles{quantile=\"0.5\"} 5"));
  CHECK(has_line(text, "quantiles_count 18"));
  CHECK(has_line(text, "quantiles_sum 90"));
}

TEST_CASE("a rate outside (0, 1] or that is not a number is malformed_sample") {
  hermes::Registry registry(statsd_config());
  for (const char *rate : {"0", "-0.5", "1.5", "x", "", "nan", "inf"}) {
    CAPTURE(rate);
    CHECK(outcome(registry, std::string("plain_counter:1|c|@") + rate) == "malformed_sample 1");
    CHECK(outcome(registry, std::string("latency:1|ms|@") + rate) == "malformed_sample 1");
  }
  CHECK(value(registry, "plain_counter") == 0.0);
}

TEST_CASE("DogStatsD 1.1: several values in one line are several samples, each on its own") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "latency:100:200:20000|ms|@0.5") == "accepted 3");
  CHECK(outcome(registry, "latency:1:x:2|h") == "accepted 2, invalid_value 1");
  CHECK(outcome(registry, "latency:1::2|h") == "accepted 2, invalid_value 1");
  const std::string text = body(registry);
  CHECK(has_line(text, "latency_count 10"));
  CHECK(has_line(text, "latency_sum 46.6"));
  CHECK(outcome(registry, "plain_counter:1:2|c") == "malformed_sample 2"); // ms, h and d only
  CHECK(outcome(registry, "depth:1:2:3|g") == "malformed_sample 3");
  CHECK(outcome(registry, "nope:1:2|h") == "unknown_metric 2");
  CHECK(outcome(registry, "latency:1:2|s") == "unsupported_type 2");
  CHECK(registry.received(hermes::Wire::statsd) == 18);
}

TEST_CASE("the fields after the type come in any order; DogStatsD's container id, timestamp and the like are ignored") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "jobs:1|c|@0.5|#queue:mail") == "accepted 1");
  CHECK(outcome(registry, "jobs:1|c|#queue:mail|@0.5") == "accepted 1");
  CHECK(outcome(registry, "jobs:1|c|T1656581400|#queue:mail") == "accepted 1"); // as hot-shots writes it
  CHECK(outcome(registry, "jobs:1|c|#queue:mail|c:83c0a99c0a54c0c187f461c7980e9b57f3f6a8b0c918c8d93df19a9de6f3fe1d") == "accepted 1");
  CHECK(outcome(registry, "jobs:1|c|c:abc|T0|@1|#queue:mail") == "accepted 1");
  CHECK(outcome(registry, "jobs:1|c|#queue:mail|e:it-false,cn-x,pu-y|card:low") == "accepted 1"); // external data, cardinality
  CHECK(value(registry, "jobs_total", {"mail"}) == 8.0);
  CHECK(outcome(registry, "jobs:1|c|#queue:mail|") == "malformed_sample 1");    // an empty field
  CHECK(outcome(registry, "jobs:1|c|#queue:mail|x") == "malformed_sample 1");   // an unknown field
  CHECK(outcome(registry, "jobs:1|c|#queue:mail|c:") == "malformed_sample 1");  // a container id of nothing
  CHECK(outcome(registry, "jobs:1|c|#queue:mail|c") == "malformed_sample 1");
  CHECK(outcome(registry, "jobs:1|c|#queue:mail|T") == "malformed_sample 1");   // a timestamp of nothing
  CHECK(outcome(registry, "jobs:1|c|#queue:mail|T12x") == "malformed_sample 1");
  CHECK(outcome(registry, "jobs:1|c|#queue:mail|e:") == "malformed_sample 1");
  CHECK(outcome(registry, "jobs:1|c|#queue:mail|card:") == "malformed_sample 1");
  CHECK(outcome(registry, "jobs:1|c|#queue:mail|car:x") == "malformed_sample 1");
  CHECK(value(registry, "jobs_total", {"mail"}) == 8.0);
}

TEST_CASE("a line without a name, a value part or a known type is malformed_sample") {
  hermes::Registry registry(statsd_config());
  for (const char *line : {"plain_counter", "plain_counter:1", ":1|c", "plain_counter:1|", "plain_counter:1|x",
                           "plain_counter:1|C", "plain_counter:1|cc", "plain_counter:1||c", "|c", "::|c"}) {
    CAPTURE(line);
    CHECK(outcome(registry, line) == "malformed_sample 1");
  }
  CHECK(outcome(registry, "plain\xff_counter:1|c") == "malformed_sample 1"); // a name that is not UTF-8
  CHECK(value(registry, "plain_counter") == 0.0);
}

TEST_CASE("sets, events and service checks are unsupported_type") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "users:42|s") == "unsupported_type 1");
  CHECK(outcome(registry, "plain_counter:1|s|#a:b") == "unsupported_type 1");
  CHECK(outcome(registry, "_e{5,4}:title|text|#a:b") == "unsupported_type 1");
  CHECK(outcome(registry, "_sc|my.check|0|#a:b") == "unsupported_type 1");
  CHECK(outcome(registry, "users:42|s\nplain_counter:1|c") == "accepted 1, unsupported_type 1");
  CHECK(registry.rejected(Reject::unsupported_type) == 5);
}

TEST_CASE("names: every character outside [a-zA-Z0-9_:] becomes _") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "api.requests:1|c") == "accepted 1");
  CHECK(outcome(registry, "api-requests:1|c") == "accepted 1");
  CHECK(outcome(registry, "api requests:1|c") == "accepted 1");
  CHECK(outcome(registry, "api\xc3\xa9requests:1|c") == "accepted 1"); // one _ for a character of two bytes
  CHECK(outcome(registry, "api_requests:1|c") == "accepted 1");
  CHECK(value(registry, "api_requests") == 5.0);
  CHECK(outcome(registry, "api..requests:1|c") == "unknown_metric 1");
  CHECK(outcome(registry, "API.requests:1|c") == "unknown_metric 1");
  hermes::Registry digits(hermes::parse_config(R"({"service_name": "s", "counters": [{"metric_name": "_5xx"}]})", "test"));
  CHECK(outcome(digits, "5xx:1|c") == "accepted 1"); // a leading digit gains a _, as statsd_exporter does
  CHECK(value(digits, "_5xx") == 1.0);
}

TEST_CASE("tags become labels, in DogStatsD, InfluxDB, Librato and SignalFx styles") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "tagged:1|c|#a:x,b:y") == "accepted 1");   // DogStatsD
  CHECK(outcome(registry, "tagged,a=x,b=y:1|c") == "accepted 1");    // InfluxDB, telegraf
  CHECK(outcome(registry, "tagged#a=x,b=y:1|c") == "accepted 1");    // Librato
  CHECK(outcome(registry, "tagged[a=x,b=y]:1|c") == "accepted 1");   // SignalFx
  CHECK(outcome(registry, "tag[a=x,b=y]ged:1|c") == "accepted 1");   // SignalFx, inside the name
  CHECK(outcome(registry, "tagged:1|c|#b:y,a:x") == "accepted 1");   // any order
  CHECK(outcome(registry, "tagged:1|c|#a:x|#b:y") == "accepted 1");  // in two fields
  CHECK(outcome(registry, "tagged:1|c|#a:x,#b:y") == "accepted 1");  // each with its #
  CHECK(value(registry, "tagged", {"x", "y"}) == 8.0);
  CHECK(outcome(registry, "tagged:1|c|#a:http://h:80/,b:") == "accepted 1"); // a value up to the comma; empty is a value
  CHECK(value(registry, "tagged", {"http://h:80/", ""}) == 1.0);
  CHECK(outcome(registry, "tagged,a=1=2,b=y:1|c") == "accepted 1");
  CHECK(value(registry, "tagged", {"1=2", "y"}) == 1.0);
}

TEST_CASE("the tags must be exactly the declared labels") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "tagged:1|c|#a:x") == "label_mismatch 1");
  CHECK(outcome(registry, "tagged:1|c") == "label_mismatch 1");
  CHECK(outcome(registry, "tagged:1|c|#a:x,b:y,c:z") == "label_mismatch 1");
  CHECK(outcome(registry, "tagged:1|c|#a:x,B:y") == "label_mismatch 1");
  CHECK(outcome(registry, "plain_counter:1|c|#a:x") == "label_mismatch 1");
  CHECK(outcome(registry, "jobs:1|c|#queue:a,queue:b") == "accepted 1"); // repeated: the last wins, as in JSON
  CHECK(value(registry, "jobs_total", {"b"}) == 1.0);
  CHECK(outcome(registry, "jobs:1|c|#que.ue:c") == "label_mismatch 1"); // keys are escaped as names are: que_ue
  hermes::Registry dotted(hermes::parse_config(R"({"service_name": "s", "counters": [{"metric_name": "c", "labels": ["env_name"]}]})", "test"));
  CHECK(outcome(dotted, "c:1|c|#env.name:prod") == "accepted 1");
  CHECK(value(dotted, "c", {"prod"}) == 1.0);
  CHECK_FALSE(value(registry, "jobs_total", {"a"}).has_value());
  CHECK_FALSE(value(registry, "tagged", {"x", "y"}).has_value());
}

TEST_CASE("tag values are checked as JSON label values are") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "temp:1|g|#room:\xc3\xa9t\xc3\xa9") == "accepted 1");
  CHECK(value(registry, "temp", {"\xc3\xa9t\xc3\xa9"}) == 1.0);
  CHECK(outcome(registry, "temp:1|g|#room:\xff") == "invalid_label_value 1");
  CHECK(outcome(registry, "temp:1|g|#room:\xc3") == "invalid_label_value 1");
  CHECK(outcome(registry, "temp:1|g|#ro\xffom:x") == "label_mismatch 1");
}

TEST_CASE("malformed tags and mixed tag styles are malformed_sample") {
  hermes::Registry registry(statsd_config());
  CHECK(outcome(registry, "temp:1|g|#room") == "malformed_sample 1");        // no separator
  CHECK(outcome(registry, "temp:1|g|#:x") == "malformed_sample 1");          // no key
  CHECK(outcome(registry, "temp:1|g|#room:x,") == "malformed_sample 1");     // an empty tag
  CHECK(outcome(registry, "temp,room:1|g") == "malformed_sample 1");
  CHECK(outcome(registry, "temp,room=x:1|g|#room:y") == "malformed_sample 1"); // one style to a line
  CHECK(outcome(registry, "temp[room=x:1|g") == "unknown_metric 1");          // one bracket stays in the name
  CHECK(outcome(registry, "depth[]:1|g") == "accepted 1");                    // no tags at all
  CHECK(outcome(registry, "depth:2|g|#") == "accepted 1");
  CHECK(value(registry, "depth") == 2.0);
}

TEST_CASE("series_limit applies to StatsD as to JSON") {
  hermes::Registry registry(hermes::parse_config(R"({"service_name": "s", "max_series": 2,
    "counters": [{"metric_name": "c", "labels": ["k"]}]})",
                                                 "test"));
  CHECK(outcome(registry, "c:1|c|#k:a\nc:1|c|#k:b\nc:1|c|#k:c\nc:1|c|#k:a") == "accepted 3, series_limit 1");
  CHECK(value(registry, "c", {"a"}) == 2.0);
  CHECK_FALSE(value(registry, "c", {"c"}).has_value());
}

TEST_CASE("StatsD off: every datagram is JSON, and StatsD lines are malformed_json") {
  hermes::Registry registry(statsd_config());
  registry.accept_statsd(false);
  CHECK(outcome(registry, "plain_counter:1|c\nplain_counter:1|c") == "malformed_json 1");
  CHECK(outcome(registry, "{\"metric_name\": \"plain_counter\"}") == "accepted 1");
  CHECK(registry.received(hermes::Wire::json) == 2);
  CHECK(registry.received(hermes::Wire::statsd) == 0);
  hermes::Config config = statsd_config();
  const auto env = [](const char *variables) {
    return [variables](const char *name) -> const char * { return std::string(name) == "HERMES_STATSD" ? variables : nullptr; };
  };
  CHECK(hermes::options_from_environment(config, env(nullptr)).statsd);
  CHECK_FALSE(hermes::options_from_environment(config, env("off")).statsd);
  CHECK(hermes::options_from_environment(config, env("on")).statsd);
  CHECK_THROWS_WITH_AS(hermes::options_from_environment(config, env("maybe")), "HERMES_STATSD: \"maybe\" is not on or off",
                       hermes::UsageError);
}

TEST_CASE("the server reads StatsD from UDP and counts samples by format at /metrics") {
  hermes::Options options = test::loopback_options();
  hermes::Server server(hermes::parse_config(R"({"service_name": "s", "counters": [{"metric_name": "jobs_total", "labels": ["queue"]}]})", "t"),
                        options);
  test::push(server, {"jobs:1|c|#queue:mail\n", "jobs:2|c|@0.5|#queue:mail\njobs:1|s",
                      R"({"metric_name": "jobs_total", "payload": {"labels": {"queue": "mail"}}})", "[queue=sms]jobs:3|c"});
  const std::string text = server.render();
  CHECK(has_line(text, "jobs_total{queue=\"mail\"} 6"));
  CHECK(has_line(text, "jobs_total{queue=\"sms\"} 3"));
  CHECK(has_line(text, "hermes_samples_received_total{format=\"json\"} 1"));
  CHECK(has_line(text, "hermes_samples_received_total{format=\"statsd\"} 4"));
  CHECK(has_line(text, "hermes_samples_rejected_total{reason=\"unsupported_type\"} 1"));

  options = test::loopback_options();
  options.statsd = false;
  hermes::Server off(hermes::parse_config(R"({"service_name": "s", "counters": [{"metric_name": "jobs_total", "labels": ["queue"]}]})", "t"),
                     options);
  test::push(off, {"jobs:1|c|#queue:mail", "[queue=mail]jobs:1|c"});
  CHECK(off.registry().rejected(Reject::malformed_json) == 2);
  CHECK_FALSE(off.registry().value("jobs_total", {"mail"}).has_value());
}

TEST_CASE("parse_statsd_number reads whole numbers the same in every locale") {
  using hermes::detail::parse_statsd_number;
  double out = 0;
  CHECK((parse_statsd_number("1.5", out) && out == 1.5));
  CHECK((parse_statsd_number("+2", out) && out == 2));
  CHECK((parse_statsd_number("-2e-3", out) && out == -0.002));
  CHECK((parse_statsd_number(".5", out) && out == 0.5));
  CHECK_FALSE(parse_statsd_number("1.5 ", out));
  CHECK_FALSE(parse_statsd_number("1e999", out));
  CHECK_FALSE(parse_statsd_number("++1", out));
  CHECK_FALSE(parse_statsd_number("+", out));
}
