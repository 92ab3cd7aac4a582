// The state file: what it keeps of every metric type, how times survive a restart, what
// a file that is not state gets, and how it is written. Also the two clocks of a registry.
#include "helpers.hpp"

#include <cmath>
#include <dirent.h>

namespace {

constexpr const char *every_type_json = R"({"service_name": "s",
  "counters": [{"metric_name": "jobs_total", "labels": ["queue"]}, {"metric_name": "plain_total"}],
  "gauges": [{"metric_name": "temperature", "labels": ["room"], "ttl_seconds": 60}, {"metric_name": "level"}],
  "histograms": [{"metric_name": "latency", "labels": ["route"], "buckets": [0.1, 1, 10]}],
  "summaries": [{"metric_name": "sizes", "labels": ["route"], "objectives": {"0.5": 0.05, "0.99": 0.001}, "max_age_seconds": 100},
                {"metric_name": "plain_s", "labels": ["route"]}]})";

hermes::Registry every_type() { return hermes::Registry(hermes::parse_config(every_type_json, "test")); }

// A label value with a quote, a backslash, a newline and an emoji.
const std::string awkward = "a\"b\\c\nd \xF0\x9F\x98\x80";

std::string sample(const std::string &metric, const std::string &label, const std::string &value, const std::string &rest) {
  std::string json = R"({"metric_name": ")" + metric + R"(", "payload": {"labels": {)";
  if (!label.empty()) {
    json += '"' + label + "\": ";
    hermes::detail::append_json_string(json, value);
  }
  return json + "}" + rest + "}}";
}

// Every type, with edge values: -0, the smallest and largest doubles, a counter that
// overflowed to +Inf, observations whose sum overflows.
void push_edge_values(hermes::Registry &registry, hermes::Now now) {
  const auto push = [&](const std::string &json) { REQUIRE(registry.ingest(json, now).accepted == 1); };
  push(sample("jobs_total", "queue", awkward, R"(, "value": 1.7976931348623157e308)"));
  push(sample("jobs_total", "queue", awkward, R"(, "value": 1.7976931348623157e308)")); // +Inf
  push(sample("jobs_total", "queue", "tiny", R"(, "value": 5e-324)"));
  push(sample("plain_total", "", "", R"(, "value": 3)"));
  push(sample("temperature", "room", "minus zero", R"(, "value": -0.0)"));
  push(sample("temperature", "room", "max", R"(, "value": 1.7976931348623157e308)"));
  push(sample("temperature", "room", "lowest", R"(, "value": -1.7976931348623157e308, "operation": "set")"));
  for (const char *observation : {"0.05", "1", "9.5", "11", "1.7976931348623157e308", "1.7976931348623157e308"})
    push(sample("latency", "route", awkward, std::string(R"(, "observation": )") + observation));
  for (int i = 1; i <= 1200; ++i) // past a stream's buffer, so that entries are merged
    push(sample("sizes", "route", "/", R"(, "observation": )" + std::to_string(i % 97)));
  push(sample("sizes", "route", "inf", R"(, "observation": 1.7976931348623157e308)"));
  push(sample("sizes", "route", "inf", R"(, "observation": 1.7976931348623157e308)"));
  push(sample("plain_s", "route", "x", R"(, "observation": 2)"));
}

// The body as of `monotonic`: summary windows moved on to it first, as a scrape does.
std::string render_at(hermes::Registry &registry, hermes::Format format, double monotonic) {
  registry.expire(monotonic);
  return hermes::render_metrics(registry, format);
}

// The user's families of /metrics in both formats, without Hermes' own.
std::string render_both(hermes::Registry &registry, double monotonic) {
  const std::string body = render_at(registry, hermes::Format::text, monotonic) +
                           render_at(registry, hermes::Format::openmetrics, monotonic);
  std::string users;
  for (const std::string_view line : hermes::detail::split(body, '\n')) {
    const bool comment = line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0;
    const std::string_view name = line.substr(comment ? 7 : 0);
    if (name.rfind("hermes_", 0) != 0 && name.rfind("process_", 0) != 0) (users += line) += '\n';
  }
  return users;
}

std::string saved(const hermes::Registry &registry, hermes::Now now) {
  std::string text;
  registry.save_state(text, now);
  return text;
}

std::string restore_error(const std::string &text) {
  hermes::Registry registry = every_type();
  try {
    registry.restore_state(text, 0);
  } catch (const hermes::StateError &error) {
    CHECK(registry.changes() == 0); // nothing was taken
    CHECK(registry.series_count() == 2);
    return error.what();
  }
  return "";
}

std::string temporary_directory() {
  char name[] = "/tmp/hermes-state-test-XXXXXX";
  REQUIRE(::mkdtemp(name) != nullptr);
  return name;
}

// readdir64: a 32-bit build under qemu-user reads a 64-bit host's directories, whose
// inode numbers readdir cannot hold.
std::vector<std::string> files_in(const std::string &directory) {
  std::vector<std::string> names;
  DIR *dir = ::opendir(directory.c_str());
  REQUIRE(dir != nullptr);
  while (const dirent64 *entry = ::readdir64(dir))
    if (entry->d_name[0] != '.') names.emplace_back(entry->d_name);
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

void remove_tree(const std::string &directory) {
  for (const std::string &name : files_in(directory)) ::unlink((directory + "/" + name).c_str());
  ::rmdir(directory.c_str());
}

} // namespace

TEST_CASE("every metric type goes through the state file and comes back identical, edge values and all") {
  hermes::Registry before = every_type();
  push_edge_values(before, hermes::Now(500, 1764000000.25));
  CHECK(before.value("jobs_total", {awkward}) == std::optional<double>(HUGE_VAL));
  const std::string text = saved(before, hermes::Now(530, 1764000030));
  hermes::Registry after = every_type();
  const hermes::Registry::RestoreSummary summary = after.restore_state(text, 530);
  CHECK(summary.restored == before.series_count());
  CHECK(summary.skipped == 0);
  CHECK(summary.problems.empty());
  CHECK(saved(after, hermes::Now(530, 1764000030)) == text); // nothing lost, nothing changed in the round trip
  CHECK(render_both(after, 531) == render_both(before, 531));
  const auto minus_zero = after.value("temperature", {"minus zero"});
  REQUIRE(minus_zero.has_value());
  CHECK(*minus_zero == 0);
  CHECK(std::signbit(*minus_zero));
  CHECK(after.value("jobs_total", {"tiny"}) == std::optional<double>(5e-324));
  CHECK(after.value("temperature", {"max"}) == std::optional<double>(1.7976931348623157e308));
  CHECK(after.value("temperature", {"lowest"}) == std::optional<double>(-1.7976931348623157e308));
  CHECK(render_both(after, 531).find("latency_sum{route=\"a\\\"b\\\\c\\nd \xF0\x9F\x98\x80\"} +Inf\n") != std::string::npos);
  // The restored series go on where they stopped.
  after.ingest(sample("plain_total", "", "", R"(, "value": 2)"), hermes::Now(540, 1764000040));
  CHECK(after.value("plain_total", {}) == std::optional<double>(5));
}

TEST_CASE("the state file is readable JSON with a format version, each series on its own line") {
  hermes::Registry registry = every_type();
  registry.ingest(sample("plain_total", "", "", R"(, "value": 2)"), hermes::Now(10, 1764000000));
  const std::string text = saved(registry, hermes::Now(12.5, 1764000002.5));
  picojson::value root;
  REQUIRE(picojson::parse(root, text).empty());
  CHECK(root.get("format").get<std::string>() == "hermes-state");
  CHECK(root.get("version").get<double>() == 2);
  CHECK(root.get("written_at").get<double>() == 1764000002.5);
  CHECK(text.find("\n{\"name\": \"plain_total\", \"type\": \"counter\", \"labels\": [], \"series\": [\n"
                  "  {\"labels\": [], \"value\": 2, \"created\": 0, \"pushed_ago\": 2.5}]}") != std::string::npos);
  CHECK(text.find("{\"name\": \"latency\", \"type\": \"histogram\", \"labels\": [\"route\"], \"buckets\": [0.1, 1, 10], \"series\": []}") !=
        std::string::npos);
}

TEST_CASE("a restored series keeps its age: ttl_seconds counts from its last push before the restart") {
  hermes::Registry before = every_type();
  before.ingest(sample("temperature", "room", "kitchen", R"(, "value": 21)"), hermes::Now(1000, 1764000000));
  const std::string text = saved(before, hermes::Now(1040, 1764000040)); // pushed 40 s before the write
  hermes::Registry after = every_type();
  after.restore_state(text, 5); // a new boot: the monotonic clock starts again
  CHECK(after.expire(24) == 0); // 59 s after the push
  CHECK(after.value("temperature", {"kitchen"}) == std::optional<double>(21));
  CHECK(after.expire(25) == 1); // 60 s after it
  CHECK_FALSE(after.value("temperature", {"kitchen"}).has_value());
  // One already past its ttl when written is restored and expires at the next sweep.
  hermes::Registry stale = every_type();
  stale.restore_state(saved(before, hermes::Now(1070, 1764000070)), 3);
  CHECK(stale.expire(3) == 1);
}

TEST_CASE("a restored summary window answers as before and turns when it would have") {
  hermes::Registry before = every_type();
  for (int i = 1; i <= 100; ++i)
    before.ingest(sample("sizes", "route", "/", R"(, "observation": )" + std::to_string(i)), hermes::Now(1000, 1764000000));
  const std::string text = saved(before, hermes::Now(1010, 1764000010)); // the next turn is 10 s away
  hermes::Registry after = every_type();
  after.restore_state(text, 7);
  const auto median = [](hermes::Registry &registry, double now) {
    const std::string body = render_at(registry, hermes::Format::text, now);
    const std::size_t at = body.find("sizes{route=\"/\",quantile=\"0.5\"} ");
    REQUIRE(at != std::string::npos);
    return body.substr(at, body.find('\n', at) - at);
  };
  CHECK(median(after, 7) == median(before, 1010));
  CHECK(median(after, 7) == "sizes{route=\"/\",quantile=\"0.5\"} 48");
  // max_age_seconds 100: five streams, a turn every 20 s; all of them held the observations,
  // so the last one forgets them 100 s after they came: 90 s after the write.
  CHECK(median(after, 7 + 89) == "sizes{route=\"/\",quantile=\"0.5\"} 48");
  CHECK(median(after, 7 + 91) == "sizes{route=\"/\",quantile=\"0.5\"} NaN");
  CHECK(median(before, 1010 + 91) == "sizes{route=\"/\",quantile=\"0.5\"} NaN");
}

TEST_CASE("a window saved the instant it was made restores, though its next turn rounds past one step") {
  hermes::Registry before = every_type();
  // 502.2 + 20 - 502.2 is 20.000000000000057 in doubles: a step and a rounding error away.
  before.ingest(sample("sizes", "route", "/", R"(, "observation": 3)"), hermes::Now(502.2, 1764000000));
  hermes::Registry after = every_type();
  CHECK(after.restore_state(saved(before, hermes::Now(502.2, 1764000000)), 502.2).restored == 3);
}

// A version 1 file's "sizes" series: five streams, each with its entries and its own
// buffer of observations not merged yet.
std::string version_1_file(const std::string &entries, const std::string &buffer) {
  std::string streams;
  for (int i = 0; i < 5; ++i) streams += std::string(i ? ", " : "") + R"({"entries": [)" + entries + R"(], "buffer": [)" + buffer + "]}";
  return R"({"format": "hermes-state", "version": 1, "written_at": 1764000000, "service_name": "s", "metrics": [
{"name": "sizes", "type": "summary", "labels": ["route"], "objectives": [[0.5, 0.05], [0.99, 0.001]], "max_age_seconds": 100, "series": [
  {"labels": ["/"], "sum": 5050, "count": 100, "window": {"head": 0, "turns_in": 20, "streams": [)" +
         streams + R"(]}, "created": 1764000000, "pushed_ago": 0}]}]})";
}

std::string numbers(int from, int to, const char *format) {
  std::string list;
  char item[64];
  for (int i = from; i <= to; ++i) list += std::string(i > from ? ", " : "") + (std::snprintf(item, sizeof item, format, i, i), item);
  return list;
}

TEST_CASE("a version 1 file's summary windows restore: each stream merges the buffer it kept") {
  hermes::Registry written = every_type(); // the same 100 observations, merged as they came
  for (int i = 1; i <= 100; ++i)
    written.ingest(sample("sizes", "route", "/", R"(, "observation": )" + std::to_string(i)), hermes::Now(0, 1764000000));
  hermes::Registry after = every_type();
  CHECK(after.restore_state(version_1_file("", numbers(1, 100, "%d")), 0).restored == 1);
  const std::string body = render_both(after, 1);
  CHECK(body.find("sizes{route=\"/\",quantile=\"0.5\"} 48\n") != std::string::npos);
  CHECK(body == render_both(written, 1));
  // Written again, it is version 2: the window's one buffer, empty, and the merged streams.
  const std::string text = saved(after, hermes::Now(1, 1764000001));
  CHECK(text.find(R"("version": 2)") != std::string::npos);
  CHECK(text.find(R"("buffer": []})") != std::string::npos);
  const auto window = [](const std::string &file) { // the one summary's window
    const std::size_t from = file.find("\"window\": ");
    return file.substr(from, file.find(", \"created\"", from) - from);
  };
  CHECK(window(text) == window(saved(written, hermes::Now(1, 1764000001))));
}

TEST_CASE("a version 1 stream with more entries than a stream keeps now is merged down into the worst case") {
  // 500 entries, within version 1's limit for these objectives (32 + 10 + 500), and a
  // full buffer: each stream is merged down as a merge past the limit would.
  const std::string text = version_1_file(numbers(1, 500, "[%d, 1, 0]"), numbers(501, 999, "%d"));
  const hermes::Config config = hermes::parse_config(every_type_json, "test");
  const hermes::MetricConfig &shape =
      *std::find_if(config.metrics.begin(), config.metrics.end(), [](const hermes::MetricConfig &m) { return m.name == "sizes"; });
  picojson::value tree;
  REQUIRE(picojson::parse(tree, text).empty());
  const picojson::value &series = tree.get("metrics").get(0).get("series").get(0);
  const hermes::detail::RestoredSeries restored = hermes::detail::StateCodec(0).read_series(shape, series, "s");
  const hermes::detail::QuantileWindow &window = *restored.series.distribution->quantiles;
  CHECK(window.memory_entries() <= 5 * hermes::detail::QuantileStream::entry_limit(shape.objectives));
  CHECK(sizeof window + window.held_bytes() <= hermes::detail::QuantileWindow::worst_case_bytes(shape.objectives));
  // 1 to 999: the median within its error; the 0.99 quantile of values that came in
  // ascending runs within twice its error, as in a stream that took them so.
  CHECK(std::abs(window.query(0.5) - 500) <= 0.05 * 999);
  CHECK(std::abs(window.query(0.99) - 0.99 * 999) <= 2 * 0.001 * 999);
  CHECK(restore_error(version_1_file("", numbers(1, 500, "%d"))).find(".streams[0].buffer: longer than a stream's buffer") !=
        std::string::npos);
  hermes::Registry after = every_type();
  CHECK(after.restore_state(text, 0).restored == 1);
}

TEST_CASE("a metric removed or reshaped is skipped and named once; the others are restored") {
  hermes::Registry before = every_type();
  push_edge_values(before, hermes::Now(1, 1764000000));
  const std::string text = saved(before, hermes::Now(2, 1764000001));
  hermes::Registry after(hermes::parse_config(R"({"service_name": "s",
    "counters": [{"metric_name": "jobs_total", "labels": ["queue", "host"]}, {"metric_name": "plain_total"}],
    "gauges": [{"metric_name": "temperature", "labels": ["room"], "max_series": 2}],
    "histograms": [{"metric_name": "latency", "labels": ["route"], "buckets": [0.1, 1, 5]}],
    "summaries": [{"metric_name": "sizes", "labels": ["route"], "objectives": {"0.5": 0.05, "0.99": 0.001}, "max_age_seconds": 100}]})",
                                              "changed"));
  const hermes::Registry::RestoreSummary summary = after.restore_state(text, 2);
  CHECK(summary.restored == 1 + 2 + 2); // plain_total, two temperatures, two sizes
  CHECK(summary.skipped == 2 + 1 + 1 + 1 + 1);
  CHECK(summary.problems == std::vector<std::string>{
                                "jobs_total: type, labels, buckets or objectives changed, 2 series not restored",
                                "latency: type, labels, buckets or objectives changed, 1 series not restored",
                                "level: no longer configured, 1 series not restored",
                                "plain_s: no longer configured, 1 series not restored",
                                "temperature: more series than max_series, 1 series not restored"});
  CHECK(after.value("plain_total", {}) == std::optional<double>(3));
  CHECK(after.series_count() == 5);
}

TEST_CASE("text that is not a whole state file is a StateError naming the place, and changes nothing") {
  CHECK(restore_error("") == "not valid JSON: syntax error at line 1 near: ");
  CHECK(restore_error("{\"service_name\": \"s\", \"counters\": []}") ==
        "format: not a Hermes state file (no \"format\": \"hermes-state\")");
  CHECK(restore_error("[1, 2]") == "expected an object, got a list");
  CHECK(restore_error(R"({"format": "hermes-state", "version": 3, "metrics": []})") ==
        "version: format version 3, this Hermes reads versions 1 and 2");
  CHECK(restore_error(R"({"format": "hermes-state", "version": 1})") == "metrics: missing");
  const std::string head = R"({"format": "hermes-state", "version": 1, "metrics": [)";
  CHECK(restore_error(head + R"({"name": "level", "type": "gauge", "labels": [], "series": [{"labels": [], "value": true, "created": 0, "pushed_ago": 0}]}]})") ==
        "metrics[0].series[0].value: true is not a number");
  CHECK(restore_error(head + R"({"name": "level", "type": "meter", "labels": [], "series": []}]})") ==
        "metrics[0].type: \"meter\" is not a metric type");
  CHECK(restore_error(head + R"({"name": "level", "type": "gauge", "labels": [], "series": [{"labels": ["x"], "value": 1, "created": 0, "pushed_ago": 0}]}]})") ==
        "metrics[0].series[0].labels: 1 values for 0 labels");
  CHECK(restore_error(head + R"({"name": "level", "type": "gauge", "labels": [], "series": [{"labels": [], "value": 1, "created": 0, "pushed_ago": -1}]}]})") ==
        "metrics[0].series[0].pushed_ago: -1 is out of range");
  CHECK(restore_error(head + R"({"name": "h", "type": "histogram", "labels": [], "buckets": [1], "series": [{"labels": [], "sum": 1, "count": 1, "bucket_counts": [1], "created": 0, "pushed_ago": 0}]}]})") ==
        "metrics[0].series[0].bucket_counts: 1 counts for 2 buckets with +Inf");
  CHECK(restore_error(head + R"({"name": "h", "type": "histogram", "labels": [], "buckets": [1], "series": [{"labels": [], "sum": 1, "count": 1.5, "bucket_counts": [1, 0], "created": 0, "pushed_ago": 0}]}]})") ==
        "metrics[0].series[0].count: 1.5 is not a whole number");
  CHECK(restore_error(R"({"format": "hermes-state", "version": 1, "metrics": 3})") == "metrics: expected a list, got a number");
  CHECK(restore_error(head + R"(7]})") == "metrics[0]: expected an object, got a number");
  CHECK(restore_error(head + R"({"name": "level", "type": "gauge", "labels": []}]})") == "metrics[0].series: missing");
  CHECK(restore_error(head + R"({"name": "level", "series": [], "type": "gauge", "labels": []}]})") == "metrics[0].type: missing");
  CHECK(restore_error(head + R"({"name": "level", "type": "gauge", "labels": [], "series": {}}]})") ==
        "metrics[0].series: expected a list, got an object");
  // Every cut of a real file is refused whole, wherever it falls.
  hermes::Registry registry = every_type();
  push_edge_values(registry, hermes::Now(1, 1764000000));
  const std::string text = saved(registry, hermes::Now(2, 1764000001));
  std::size_t refused = 0, cuts = 0;
  for (std::size_t length = 0; length + 2 < text.size(); length += 1 + length / 50, ++cuts)
    refused += !restore_error(text.substr(0, length)).empty();
  CHECK(refused == cuts);
  // Another program's JSON, a window broken inside.
  std::string broken = text;
  const std::size_t head_at = broken.find("\"head\": ");
  REQUIRE(head_at != std::string::npos);
  broken[head_at + 8] = '7';
  CHECK(restore_error(broken).find(".window.head: not a stream of the window") != std::string::npos);
  // A window's buffer is merged once full: a full one was not written by Hermes.
  std::string full = text;
  const std::size_t buffer_at = full.find("\"buffer\": [");
  REQUIRE(buffer_at != std::string::npos);
  full.insert(buffer_at + 11, numbers(1, 100, "%d") + (full[buffer_at + 11] == ']' ? "" : ", "));
  CHECK(restore_error(full).find(".window.buffer: longer than a window's buffer") != std::string::npos);
  // A stream with more entries than its objectives keep would pass the budget's worst case.
  std::string crowded = text;
  const std::size_t entries_at = crowded.find("\"entries\": [");
  REQUIRE(entries_at != std::string::npos);
  std::string many;
  for (int i = 0; i < 10000; ++i) many += "[-1e300, 1, 0], ";
  crowded.insert(entries_at + 12, many);
  CHECK(restore_error(crowded).find(".streams[0].entries: 100") != std::string::npos);
  CHECK(restore_error(crowded).find(" entries, more than a stream keeps (") != std::string::npos);
}

TEST_CASE("a registry counts its changes: a state write follows only a change") {
  hermes::Registry registry = every_type();
  CHECK(registry.changes() == 0);
  registry.ingest(sample("plain_total", "", "", ""), hermes::Now(1, 1));
  registry.ingest("junk", hermes::Now(1, 1));
  registry.ingest(sample("temperature", "room", "x", R"(, "value": 1)"), hermes::Now(1, 1));
  CHECK(registry.changes() == 2);
  registry.expire(30);
  CHECK(registry.changes() == 2);
  registry.expire(61);
  CHECK(registry.changes() == 3);
  registry.reload(hermes::parse_config(every_type_json, "test"));
  CHECK(registry.changes() == 3);
  registry.restore_state(saved(registry, hermes::Now(70, 70)), 70);
  CHECK(registry.changes() == 3 + 2); // the two series restored: plain_total and level
}

// ---- the two clocks ---------------------------------------------------------------------------

TEST_CASE("ttl_seconds counts on the monotonic clock: wall clock steps change nothing but _created") {
  hermes::Registry registry = every_type();
  constexpr double two_days = 2 * 86400;
  registry.ingest(sample("temperature", "room", "kitchen", R"(, "value": 21)"), hermes::Now(1000, 1000000000));
  // The wall clock steps two days forward (a board's first NTP sync); 30 s pass.
  registry.ingest(sample("temperature", "room", "hall", R"(, "value": 19)"), hermes::Now(1030, 1000000000 + two_days));
  CHECK(registry.expire(1059) == 0);
  CHECK(registry.value("temperature", {"kitchen"}) == std::optional<double>(21));
  CHECK(registry.expire(1060) == 1); // kitchen: 60 s on the monotonic clock
  CHECK(registry.expire(1089) == 0);
  CHECK(registry.expire(1090) == 1); // hall
  // Two days back: a push 3 s later is still 3 s later.
  registry.ingest(sample("temperature", "room", "porch", R"(, "value": 5)"), hermes::Now(2000, 1000000000 - two_days));
  CHECK(registry.expire(2059) == 0);
  CHECK(registry.expire(2060) == 1);
  // _created shows the wall clock as it was.
  registry.ingest(sample("jobs_total", "queue", "q", ""), hermes::Now(3000, 1764000000.5));
  const std::string body = render_at(registry, hermes::Format::openmetrics, 3001);
  CHECK(body.find("\njobs_created{queue=\"q\"} 1.7640000005e+09\n") != std::string::npos);
}

TEST_CASE("summary windows turn on the monotonic clock") {
  hermes::Registry registry = every_type();
  registry.ingest(sample("sizes", "route", "/", R"(, "observation": 4)"), hermes::Now(1000, 1000000000));
  const auto body = [&](double monotonic) {
    return render_at(registry, hermes::Format::text, monotonic);
  };
  CHECK(body(1099).find("sizes{route=\"/\",quantile=\"0.5\"} 4\n") != std::string::npos);
  registry.ingest(sample("sizes", "route", "/", R"(, "observation": 4)"), hermes::Now(1099, 1000000000 + 2 * 86400));
  CHECK(body(1101).find("sizes{route=\"/\",quantile=\"0.5\"} 4\n") != std::string::npos); // the second observation
}

TEST_CASE("Now: one number stands for both clocks; current() reads both") {
  const hermes::Now both(42.5);
  CHECK(both.monotonic == 42.5);
  CHECK(both.wall == 42.5);
  const hermes::Now now = hermes::Now::current();
  CHECK(now.wall == doctest::Approx(hermes::wall_clock_seconds()).epsilon(1e-6));
  CHECK(now.monotonic == doctest::Approx(hermes::monotonic_seconds()).epsilon(1e-3));
  CHECK(hermes::monotonic_seconds() >= now.monotonic);
}

// ---- files ------------------------------------------------------------------------------------

TEST_CASE("an atomic write replaces the file whole and leaves nothing else behind") {
  const std::string directory = temporary_directory();
  const std::string path = directory + "/state.json";
  CHECK(hermes::detail::write_file_atomically(path, "first\n") == "");
  CHECK(test::read_file(path) == "first\n");
  CHECK(hermes::detail::write_file_atomically(path, std::string(1 << 20, 'x')) == "");
  CHECK(test::read_file(path) == std::string(1 << 20, 'x'));
  CHECK(files_in(directory) == std::vector<std::string>{"state.json"});
  remove_tree(directory);
}

TEST_CASE("a write that fails says what failed and leaves the old file as it was") {
  const std::string directory = temporary_directory();
  CHECK(hermes::detail::write_file_atomically(directory + "/missing/state.json", "x") ==
        "create " + directory + "/missing/state.json.XXXXXX: No such file or directory");
  // A directory where the file should be: the rename fails, the new file is removed.
  REQUIRE(::mkdir((directory + "/state.json").c_str(), 0700) == 0);
  const std::string error = hermes::detail::write_file_atomically(directory + "/state.json", "x");
  CHECK(error.rfind("rename " + directory + "/state.json.", 0) == 0);
  CHECK(error.find(": Is a directory") != std::string::npos);
  CHECK(files_in(directory) == std::vector<std::string>{"state.json"});
  ::rmdir((directory + "/state.json").c_str());
  remove_tree(directory);
}

TEST_CASE("a file that is not state is set aside under a new name, never over another file") {
  const std::string directory = temporary_directory();
  const std::string path = directory + "/state.json";
  std::ofstream(path) << "first";
  const std::string first = hermes::detail::set_aside(path);
  std::ofstream(path) << "second";
  const std::string second = hermes::detail::set_aside(path);
  CHECK(first.rfind(path + ".corrupt-", 0) == 0);
  CHECK(second.rfind(path + ".corrupt-", 0) == 0);
  CHECK(first != second);
  CHECK(test::read_file(first) == "first");
  CHECK(test::read_file(second) == "second");
  CHECK(files_in(directory).size() == 2);
  std::string message;
  try {
    hermes::detail::set_aside(directory + "/absent.json");
  } catch (const hermes::StateError &error) {
    message = error.what();
  }
  CHECK(message == "cannot set " + directory +
                       "/absent.json aside (nothing was written over it; move it away and start again): No such file or directory");
  remove_tree(directory);
}

// ---- the server's state file --------------------------------------------------------------

namespace {

hermes::Options state_options(const std::string &path, std::vector<std::string> *log) {
  hermes::Options options = test::loopback_options(log);
  options.state_file = path;
  options.state_interval_seconds = 0.05;
  return options;
}

std::size_t lines_with(const std::vector<std::string> &log, const std::string &part) {
  return static_cast<std::size_t>(std::count_if(log.begin(), log.end(), [&](const std::string &line) {
    return line.find(part) != std::string::npos;
  }));
}

const std::string counter_sample = R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "x"}}})";

} // namespace

TEST_CASE("a server writes its state after a change once the interval has passed, at stop, and restores it at start") {
  const std::string directory = temporary_directory();
  const std::string path = directory + "/state.json";
  std::vector<std::string> log;
  {
    hermes::Server server(test::sample_config(), state_options(path, &log));
    CHECK(log.back() == "level=info msg=\"no state file yet; starting empty\" path=" + path);
    test::push(server, {counter_sample});
    REQUIRE(test::pump_until(server, [&] { return server.stats().state_writes_succeeded == 1; }));
    CHECK(test::read_file(path).find("{\"labels\": [\"x\"], \"value\": 1, ") != std::string::npos);
    CHECK(server.stats().state_last_write_seconds == doctest::Approx(hermes::wall_clock_seconds()).epsilon(1e-8));
    // Nothing changes: nothing is written, however many intervals pass.
    const auto quiet_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
    while (std::chrono::steady_clock::now() < quiet_until) server.poll_once(5);
    CHECK(server.stats().state_writes_succeeded == 1);
    test::push(server, {counter_sample});
    REQUIRE(test::pump_until(server, [&] { return server.stats().state_writes_succeeded == 2; }));
    // Stop with a sample still on the socket: it is applied, then written.
    test::send_udp(server.udp_port(), counter_sample);
    std::atomic<bool> stop{true};
    server.run(stop);
    CHECK(server.registry().value("sample_counter", {"x"}) == std::optional<double>(3));
    CHECK(server.stats().state_writes_succeeded == 3);
    CHECK(server.stats().state_writes_failed == 0);
  }
  CHECK(files_in(directory) == std::vector<std::string>{"state.json"});
  hermes::Server again(test::sample_config(), state_options(path, &log));
  CHECK(log.back() == "level=info msg=\"state restored\" path=" + path + " series=1 skipped=0");
  CHECK(again.registry().value("sample_counter", {"x"}) == std::optional<double>(3));
  CHECK(again.stats().state_restored_series == 1);
  const std::string body = test::body_of(test::http(again, "GET /metrics HTTP/1.0\r\n\r\n"));
  CHECK(body.find("\nhermes_state_restored_series 1\n") != std::string::npos);
  CHECK(body.find("\nhermes_state_writes_total{result=\"success\"} 0\n") != std::string::npos);
  remove_tree(directory);
}

TEST_CASE("a failed state write is counted, logged once per interval and tried again; serving goes on") {
  const std::string directory = temporary_directory();
  const std::string path = directory + "/later/state.json";
  std::vector<std::string> log;
  hermes::Server server(test::sample_config(), state_options(path, &log));
  test::push(server, {counter_sample});
  const auto started = std::chrono::steady_clock::now();
  REQUIRE(test::pump_until(server, [&] { return server.stats().state_writes_failed == 3; }));
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  CHECK(elapsed >= 2 * 0.05); // three attempts, an interval apart
  CHECK(lines_with(log, "msg=\"state write failed; the previous file stays, retrying next interval\" path=" + path +
                            " error=\"create " + path + ".XXXXXX: No such file or directory\"") == 3);
  CHECK(test::body_of(test::http(server, "GET /metrics HTTP/1.0\r\n\r\n")).find("\nhermes_state_writes_total{result=\"failure\"} 3\n") !=
        std::string::npos);
  REQUIRE(::mkdir((directory + "/later").c_str(), 0700) == 0);
  REQUIRE(test::pump_until(server, [&] { return server.stats().state_writes_succeeded == 1; }));
  CHECK(test::read_file(path).find("{\"labels\": [\"x\"], \"value\": 1, ") != std::string::npos);
  ::unlink(path.c_str());
  ::rmdir((directory + "/later").c_str());
  remove_tree(directory);
}

TEST_CASE("a state path under a regular file has no state yet: the server starts empty, counts each failed write, serves on") {
  const std::string directory = temporary_directory();
  const std::string parent = directory + "/hermes"; // a file where the state's directory should be
  const std::string path = parent + "/state.json";
  std::ofstream(parent) << "not a directory";
  std::vector<std::string> log;
  hermes::Server server(test::sample_config(), state_options(path, &log));
  CHECK(log.back() == "level=warn msg=\"no state file yet; starting empty\" path=" + path + " error=\"stat: Not a directory\"");
  CHECK(server.registry().series_count() == 0);
  CHECK(server.stats().state_restored_series == 0);
  test::push(server, {counter_sample});
  REQUIRE(test::pump_until(server, [&] { return server.stats().state_writes_failed == 2; }));
  CHECK(server.stats().state_writes_succeeded == 0);
  CHECK(lines_with(log, "level=error msg=\"state write failed; the previous file stays, retrying next interval\" path=" + path +
                            " error=\"create " + path + ".XXXXXX: Not a directory\"") == 2);
  const std::string body = test::body_of(test::http(server, "GET /metrics HTTP/1.0\r\n\r\n"));
  CHECK(body.find("\nsample_counter{label_1=\"x\"} 1\n") != std::string::npos);
  const std::string failures = "\nhermes_state_writes_total{result=\"failure\"} ";
  REQUIRE(body.find(failures) != std::string::npos);
  CHECK(std::stod(body.substr(body.find(failures) + failures.size())) >= 2); // the scrape's steps may try again
  CHECK(files_in(directory) == std::vector<std::string>{"hermes"}); // nothing set aside, nothing beside it
  CHECK(test::read_file(parent) == "not a directory");
  remove_tree(directory);
}

TEST_CASE("a server set aside a state file it cannot read, logs where, and starts empty") {
  const std::string directory = temporary_directory();
  const std::string path = directory + "/state.json";
  std::ofstream(path) << "{\"format\": \"hermes-state\", \"version\": 1, \"metrics\": [";
  std::vector<std::string> log;
  hermes::Server server(test::sample_config(), state_options(path, &log));
  const std::vector<std::string> files = files_in(directory);
  REQUIRE(files.size() == 1);
  CHECK(files[0].rfind("state.json.corrupt-", 0) == 0);
  CHECK(log.back() == "level=error msg=\"state file is not state; set aside, starting empty\" path=" + path +
                          " error=\"not valid JSON: syntax error at line 1 near: \" moved_to=" + directory + "/" + files[0]);
  CHECK(server.registry().series_count() == 0);
  CHECK(test::read_file(directory + "/" + files[0]) == "{\"format\": \"hermes-state\", \"version\": 1, \"metrics\": [");
  remove_tree(directory);
}

TEST_CASE("the state's text takes its memory from the budget only while it is written, and a file read at start its size") {
  const std::string directory = temporary_directory();
  const std::string path = directory + "/state.json";
  std::vector<std::string> log;
  double idle = 0;
  {
    hermes::Server server(test::sample_config(), state_options(path, &log));
    idle = server.stats().memory_used_bytes;
    std::vector<std::string> samples;
    for (int i = 0; i < 500; ++i)
      samples.push_back(R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "x)" + std::to_string(i) + R"("}}})");
    test::push(server, samples);
    // A write may be under way as the pushes end; once the one with every series is on
    // disk, nothing is held but the series.
    const hermes::Config config = test::sample_config();
    const auto counter = std::find_if(config.metrics.begin(), config.metrics.end(), [](const auto &m) { return m.name == "sample_counter"; });
    const std::vector<std::string> one{"x0"}; // every label value here fits a string's own buffer, as this one
    const double with_series = idle + 500 * static_cast<double>(hermes::detail::series_cost(*counter, one).own);
    const auto on_disk_whole = [&] { // no file before the first write
      std::ifstream file(path, std::ios::binary);
      const std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
      return text.find("[\"x499\"]") != std::string::npos;
    };
    REQUIRE(test::pump_until(server, on_disk_whole));
    CHECK(test::pump_until(server, [&] { return server.stats().memory_used_bytes == with_series; }));
    std::atomic<bool> stop{true};
    server.run(stop);
    CHECK(server.stats().memory_used_bytes == with_series);
  }
  hermes::Server again(test::sample_config(), state_options(path, &log));
  CHECK(again.stats().state_restored_series == 500);
  hermes::Server fresh(test::sample_config(), test::loopback_options());
  test::push(fresh, {R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "x0"}}})"});
  // The restore gave back the file's bytes: what is held is the series, as for pushes.
  CHECK(again.stats().memory_used_bytes - idle == 500 * (fresh.stats().memory_used_bytes - idle));
  remove_tree(directory);
}

TEST_CASE("a state file the memory budget cannot hold is set aside whole and named so; a state text with no room is a failed write") {
  const std::string directory = temporary_directory();
  const std::string path = directory + "/state.json";
  std::vector<std::string> log;
  hermes::Options options = state_options(path, &log);
  {
    hermes::Server server(test::sample_config(), options);
    std::vector<std::string> samples;
    for (int i = 0; i < 300; ++i)
      samples.push_back(R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": ")" + std::string(200, 'x') +
                        std::to_string(i) + R"("}}})");
    test::push(server, samples);
    std::atomic<bool> stop{true};
    server.run(stop);
  }
  const std::string written = test::read_file(path);
  REQUIRE(written.size() > 60000);
  hermes::Server probe(test::sample_config(), test::loopback_options());
  options.max_memory = static_cast<std::size_t>(probe.stats().memory_used_bytes) + hermes::detail::Renderer::bound(probe.registry()) * 4 + 30000;
  {
    hermes::Server small(test::sample_config(), options);
    const std::vector<std::string> files = files_in(directory);
    REQUIRE(files.size() == 1);
    CHECK(files[0].rfind("state.json.corrupt-", 0) == 0);
    CHECK(log.back() == "level=error msg=\"state file larger than the memory budget has room for; set aside, starting empty\" path=" +
                            path + " error=\"" + std::to_string(written.size()) + " bytes\" moved_to=" + directory + "/" + files[0]);
    CHECK(test::read_file(directory + "/" + files[0]) == written);
    CHECK(small.stats().memory_used_bytes == probe.stats().memory_used_bytes); // nothing of the file is held
    // Series up to the budget: their state text has no room, and the scrape is still answered.
    std::vector<std::string> samples;
    for (int i = 0; i < 300; ++i)
      samples.push_back(R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": ")" + std::string(200, 'y') +
                        std::to_string(i) + R"("}}})");
    test::push(small, samples);
    CHECK(small.registry().rejected(hermes::Reject::memory_limit) > 0);
    REQUIRE(test::pump_until(small, [&] { return small.stats().state_writes_failed >= 1; }));
    CHECK(lines_with(log, "level=error msg=\"state write failed; the previous file stays, retrying next interval\" path=" + path +
                              " error=\"no room in the memory budget for its text\"") >= 1);
    CHECK(test::http(small, "GET /metrics HTTP/1.0\r\n\r\n").rfind("HTTP/1.0 200 OK\r\n", 0) == 0);
    CHECK(small.stats().memory_used_bytes <= small.stats().memory_budget_bytes);
  }
  remove_tree(directory);
}

TEST_CASE("worst_case_state_bytes bounds the state text of a series at its fullest") {
  const hermes::Config config = hermes::parse_config(R"({"service_name": "s",
    "summaries": [{"metric_name": "q", "labels": ["k"], "objectives": {"0.5": 0.05, "0.9": 0.01, "0.99": 0.001}}],
    "histograms": [{"metric_name": "n", "labels": ["k"], "native": true, "native_max_buckets": 20}]})",
                                                     "c");
  for (const hermes::MetricConfig &metric : config.metrics) {
    CAPTURE(metric.name);
    hermes::Registry registry(hermes::parse_config(R"({"service_name": "s", ")" + std::string(metric.objectives.empty() ? "histograms" : "summaries") +
                                                       R"(": [)" + (metric.objectives.empty() ? R"({"metric_name": "n", "labels": ["k"], "native": true, "native_max_buckets": 20})"
                                                                                               : R"({"metric_name": "q", "labels": ["k"], "objectives": {"0.5": 0.05, "0.9": 0.01, "0.99": 0.001}})") +
                                                       "]}",
                                                   "c"));
    for (int i = 20000; i > 0; --i) // decreasing values fill a summary's streams; both signs and every scale a native histogram's buckets
      registry.ingest(R"({"metric_name": ")" + metric.name + R"(", "payload": {"labels": {"k": "abcdefghijklmno"}, "observation": )" +
                          hermes::detail::format_double(metric.objectives.empty() ? (i % 2 ? -1 : 1) * std::ldexp(1.0 + i % 7, i % 2000 - 1000) : -i * 1.2345678901234567) +
                          "}}",
                      hermes::Now(1000, 1.7640000001234567e9));
    std::string text;
    registry.save_state(text, hermes::Now(1000, 1.7640000001234567e9));
    CHECK(text.size() <= hermes::worst_case_state_bytes(metric) + 1024); // the head and the metric's shape besides
  }
}

TEST_CASE("a native histogram goes through the state file with its schema, zero bucket and sparse buckets") {
  const char *config = R"({"service_name": "s", "histograms": [
    {"metric_name": "latency_seconds", "labels": ["route"], "native": true, "buckets": [1], "native_max_buckets": 12}]})";
  hermes::Registry before(hermes::parse_config(config, "test"));
  for (const double value : {0.0, -3.5, 0.001, 2.0, 1e6, -1e-3, 42.0, 1e-9})
    REQUIRE(before.ingest(R"({"metric_name": "latency_seconds", "payload": {"labels": {"route": "/"}, "observation": )" +
                              hermes::detail::format_double(value) + "}}",
                          hermes::Now(10, 1764000000))
                .accepted == 1);
  const std::string text = saved(before, hermes::Now(20, 1764000010));
  CHECK(text.find("\"native\": {\"schema\": ") != std::string::npos);
  hermes::Registry after(hermes::parse_config(config, "test"));
  CHECK(after.restore_state(text, 20).restored == 1);
  const std::string users = render_both(after, 20);
  CHECK(users == render_both(before, 20));
  CHECK(users.find("latency_seconds_count{route=\"/\"} 8\n") != std::string::npos);
  // The native buckets show in protobuf only: the family, from its name on, byte for byte.
  const auto native_family = [](const hermes::Registry &registry) {
    const std::string body = hermes::render_metrics(registry, hermes::Format::protobuf);
    return body.substr(body.find("\x0a\x0f" "latency_seconds")); // its name field; before it, its name as a label value
  };
  CHECK(native_family(after) == native_family(before));
  // A file that claims more buckets than the metric may hold is not state.
  const std::string many = "[" + [] {
    std::string pairs;
    for (int i = 0; i < 200; ++i) pairs += (i ? ", [" : "[") + std::to_string(i) + ", 1]";
    return pairs;
  }() + "]";
  std::string swollen = text;
  const std::size_t positive = swollen.find("\"positive\": ");
  REQUIRE(positive != std::string::npos);
  swollen.replace(positive + 12, swollen.find(']', swollen.find(']', positive) + 1) - positive - 11, many);
  hermes::Registry refused(hermes::parse_config(config, "test"));
  CHECK_THROWS_AS(refused.restore_state(swollen, 20), hermes::StateError);
}

namespace {

using hermes::detail::PushLabels;
using hermes::detail::PushStore;

void push_text(PushStore &store, const PushLabels &key, std::string_view body, hermes::Now now, int status = 200) {
  hermes::detail::PushTextParser parser;
  auto families = parser.parse(body);
  REQUIRE_MESSAGE(families.has_value(), parser.error());
  CHECK(store.push(key, std::move(*families), true, now).status == status);
}

// Every pushed family, push times and all, in the text and the protobuf format.
std::string shown_groups(const PushStore &store) {
  std::string out, scratch;
  for (const hermes::Format format : {hermes::Format::text, hermes::Format::protobuf})
    for (const auto &[name, index] : store.families()) hermes::detail::write_pushed_family(out, format, name, index, scratch);
  return out;
}

std::string saved_with(const hermes::Registry &registry, const PushStore &store, hermes::Now now) {
  std::string text;
  REQUIRE(hermes::detail::StateCodec::save(registry, text, now, {}, {}, &store));
  return text;
}

// Groups of every pushed type, an escaped HELP and label values with every escape, a
// key value with a slash, a native histogram's bytes, and a group whose push failed.
void push_every_group(PushStore &store) {
  const hermes::Now at(990, 1764000000.25);
  push_text(store, {{"job", "batch/nightly"}, {"zone", "a\"b\\c\nd"}},
            "# HELP jobs_done_total Jobs \\\\ done\\nfor real.\n# TYPE jobs_done_total counter\n"
            "jobs_done_total{queue=\"a\\\"b\\\\c\\nd \xF0\x9F\x98\x80\"} 1.5e308\njobs_done_total{queue=\"\"} 0\n"
            "# TYPE level gauge\nlevel -0\nplain{instance=\"mine\"} NaN\n"
            "# TYPE size summary\nsize{quantile=\"0.5\"} +Inf\nsize{quantile=\"0.99\"} 7\nsize_sum 8\nsize_count 2\n"
            "# TYPE took histogram\ntook_bucket{le=\"0.1\"} 1\ntook_bucket{le=\"+Inf\"} 3\ntook_sum -Inf\ntook_count 3\n",
            at);
  push_text(store, {{"job", "other"}}, "# TYPE level gauge\nlevel 2\n", at);
  push_text(store, {{"job", "other"}}, "# TYPE level counter\nlevel 3\n", hermes::Now(995, 1764000005.5), 400);
  push_text(store, {{"job", "failed"}}, "level 1 1000\n", at, 400); // a group of push times only
  std::map<std::string, hermes::detail::PushedFamily> native;
  auto &family = native["wait_seconds"];
  family.name = "wait_seconds";
  family.type = hermes::detail::PushType::histogram;
  auto &metric = family.metrics.emplace_back();
  metric.kind = hermes::detail::PushType::histogram;
  metric.count = 4, metric.sum = 2.5;
  hermes::detail::append_uint_field(metric.native, 5, 3);             // schema
  hermes::detail::append_double_field(metric.native, 6, 1e-128);      // zero threshold
  hermes::detail::append_bytes_field(metric.native, 12, "\x02\x00\x01"); // positive spans, bytes of every value
  REQUIRE(store.push({{"job", "native"}}, std::move(native), true, at).status == 200);
}

} // namespace

TEST_CASE("pushed groups go through the state file and come back identical, push times and TTL age with them") {
  auto budget = std::make_shared<hermes::MemoryBudget>(1 << 24, 2);
  hermes::Registry registry = every_type();
  PushStore store(budget, 100, 30);
  push_every_group(store);
  REQUIRE(store.group_count() == 4);
  const std::string text = saved_with(registry, store, hermes::Now(1000, 1764000010));
  CHECK(text.find("\n{\"key\": [\"job\", \"other\"], \"pushed_ago\": 10, \"push_time\": 1764000000.25, "
                  "\"push_failure_time\": 1764000005.5, \"families\": [{\"name\": \"level\", \"type\": \"gauge\", "
                  "\"metrics\": [{\"labels\": [\"instance\", \"\", \"job\", \"other\"], \"value\": 2}]}]}") != std::string::npos);
  // After a reboot the monotonic clock starts again: the TTL counts on from the age.
  auto budget_after = std::make_shared<hermes::MemoryBudget>(1 << 24, 2);
  hermes::Registry after = every_type();
  PushStore restored(budget_after, 100, 30);
  const hermes::Registry::RestoreSummary summary = hermes::detail::StateCodec::restore(after, text, 50, &restored);
  CHECK(summary.push_groups_restored == 4);
  CHECK(summary.push_groups_skipped == 0);
  CHECK(shown_groups(restored) == shown_groups(store));
  CHECK(restored.bytes() == store.bytes());
  CHECK(budget_after->used() == budget->used());
  CHECK(restored.changes() == 4);
  CHECK(saved_with(after, restored, hermes::Now(50, 1764000010)) == text);
  CHECK(restored.expire(69.9) == 0);
  CHECK(restored.expire(70) == 4);
  // The registry's own reader takes the series and leaves the groups.
  hermes::Registry plain = every_type();
  CHECK(plain.restore_state(text, 50).push_groups_restored == 0);
}

TEST_CASE("a state file without pushed groups still loads; a broken group is a StateError naming its place") {
  hermes::Registry registry = every_type();
  PushStore none(nullptr, 100, 0);
  const std::string old = saved(registry, hermes::Now(2, 1764000001));
  CHECK(old.find("push_groups") == std::string::npos);
  CHECK(hermes::detail::StateCodec::restore(registry, old, 0, &none).push_groups_restored == 0);
  CHECK(none.group_count() == 0);
  const std::string head = R"({"format": "hermes-state", "version": 2, "metrics": [], "push_groups": [)";
  const std::string group = R"({"key": ["job", "j"], "pushed_ago": 0, "push_time": 1, "push_failure_time": 0, "families": )";
  const auto error = [&](const std::string &text) -> std::string {
    hermes::Registry fresh = every_type();
    PushStore store(nullptr, 100, 0);
    try {
      hermes::detail::StateCodec::restore(fresh, text, 0, &store);
    } catch (const hermes::StateError &problem) {
      CHECK(store.group_count() == 0);
      CHECK(fresh.changes() == 0);
      return problem.what();
    }
    return "";
  };
  CHECK(error(head + "7]}") == "push_groups[0]: expected an object, got a number");
  CHECK(error(R"({"format": "hermes-state", "version": 2, "metrics": [], "push_groups": {}})") ==
        "push_groups: expected a list, got an object");
  CHECK(error(head + R"({"key": ["zone", "z"], "pushed_ago": 0, "push_time": 1, "push_failure_time": 0, "families": []}]})") ==
        "push_groups[0].key: no job");
  CHECK(error(head + R"({"key": ["job"], "pushed_ago": 0, "push_time": 1, "push_failure_time": 0, "families": []}]})") ==
        "push_groups[0].key: expected name, value, name, value...");
  CHECK(error(head + R"({"key": ["job", "j"], "pushed_ago": -1, "push_time": 1, "push_failure_time": 0, "families": []}]})") ==
        "push_groups[0].pushed_ago: -1 is out of range");
  CHECK(error(head + group + R"([{"name": "x", "type": "meter", "metrics": []}]}]})") ==
        "push_groups[0].families[0].type: \"meter\" is not a pushed type");
  CHECK(error(head + group + R"([{"name": "x", "type": "gauge", "metrics": [{"labels": []}]}]}]})") ==
        "push_groups[0].families[0].metrics[0].value: missing");
  CHECK(error(head + group + R"([{"name": "x", "type": "summary", "metrics": [{"labels": [], "count": 1, "sum": 1, "points": [1]}]}]}]})") ==
        "push_groups[0].families[0].metrics[0].points: expected bound, value, bound, value...");
  CHECK(error(head + group + R"([{"name": "x", "type": "histogram", "metrics": [{"labels": [], "count": 1, "sum": 1, "points": [], "native": "0g"}]}]}]})") ==
        "push_groups[0].families[0].metrics[0].native: not a histogram's bytes in hexadecimal");
  CHECK(error(head + group + R"([{"name": "push_time_seconds", "type": "gauge", "metrics": []}]}]})") ==
        "push_groups[0].families[0].name: made from the group's times, not kept as a family");
  CHECK(error(head + group + R"([{"name": "x", "type": "gauge", "metrics": []}, {"name": "x", "type": "gauge", "metrics": []}]}]})") ==
        "push_groups[0].families[1].name: a second family \"x\"");
  // Nested deeper than a group is: refused where picojson stops.
  CHECK(error(head + group + R"([[[[[[[[1]]]]]]]]}]})") == "not valid JSON: syntax error at line 1 near: [[1]]]]]]]]}]}");
}

TEST_CASE("a restored group is checked as a push is: one that no longer fits is skipped and named") {
  hermes::Registry registry = every_type();
  PushStore store(nullptr, 100, 0);
  push_every_group(store);
  const std::string text = saved_with(registry, store, hermes::Now(1000, 1764000010));
  PushStore reserved(nullptr, 2, 0);
  reserved.reserve_names({"level"}); // now a configured metric
  const hermes::Registry::RestoreSummary summary = hermes::detail::StateCodec::restore(registry, text, 0, &reserved);
  CHECK(summary.push_groups_restored == 2);
  CHECK(summary.push_groups_skipped == 2);
  CHECK(summary.push_group_problems ==
        std::vector<std::string>{"{job=\"batch/nightly\",zone=\"a\\\"b\\\\c\\nd\"}: family \"level\" writes level, a metric Hermes serves already",
                                 "{job=\"other\"}: family \"level\" writes level, a metric Hermes serves already"});
  CHECK(reserved.group_count() == 2);
}
