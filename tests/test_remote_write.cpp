// Remote write: its config, the snappy block format, the WriteRequest encoding, and a
// server pushing to a receiver of the test's own.
#include "helpers.hpp"
#include "remote_write_decode.hpp"

#include <fstream>
#include <malloc.h>

using test::config_error;

namespace {

std::string with_remote_write(const std::string &targets) { return R"({"service_name": "s", "remote_write": )" + targets + "}"; }

void write_text(const std::string &path, const std::string &text) {
  std::ofstream(path) << text;
}

const char *no_variables(const char *) { return nullptr; }

} // namespace

TEST_CASE("remote_write: every key is read, several targets kept in order") {
  test::TempDir dir;
  write_text(dir.file("token"), "s3cret\n");
  write_text(dir.file("password"), "pa:ss w\xc3\xb6rd\n"); // a space and UTF-8: base64 carries any byte
  const auto config = hermes::parse_config(with_remote_write(R"([
    {"url": "http://127.0.0.1:9090/api/v1/write", "interval_seconds": 5, "timeout_seconds": 2,
     "max_samples_per_send": 500, "max_backoff_seconds": 8, "bearer_token_file": ")" + dir.file("token") + R"(",
     "headers": {"X-Scope-OrgID": "board-7"}, "external_labels": {"site": "north", "job": "boards"}},
    {"url": "http://[::1]/push?tenant=a", "basic_auth": {"username": "hermes", "password_file": ")" + dir.file("password") + R"("}}])"),
                                           "config.json");
  REQUIRE(config.remote_write.size() == 2);
  const hermes::RemoteWriteConfig &first = config.remote_write[0], &second = config.remote_write[1];
  CHECK(first.url == "http://127.0.0.1:9090/api/v1/write");
  CHECK(first.interval_seconds == 5);
  CHECK(first.timeout_seconds == 2);
  CHECK(first.max_samples_per_send == 500);
  CHECK(first.max_backoff_seconds == 8);
  CHECK(first.authorization == "Bearer s3cret");
  CHECK(first.headers == std::vector<std::pair<std::string, std::string>>{{"X-Scope-OrgID", "board-7"}});
  CHECK(first.external_labels == std::vector<std::pair<std::string, std::string>>{{"job", "boards"}, {"site", "north"}});
  CHECK(second.interval_seconds == HERMES_REMOTE_WRITE_INTERVAL_S);
  CHECK(second.timeout_seconds == HERMES_REMOTE_WRITE_TIMEOUT_S);
  CHECK(second.max_samples_per_send == HERMES_REMOTE_WRITE_BATCH);
  CHECK(second.max_backoff_seconds == HERMES_REMOTE_WRITE_MAX_BACKOFF_S);
  CHECK(second.authorization == "Basic aGVybWVzOnBhOnNzIHfDtnJk"); // base64("hermes:pa:ss wörd")
  hermes::RemoteWriteUrl url;
  REQUIRE(hermes::parse_remote_write_url(second.url, url).empty());
  CHECK(url.host == "::1");
  CHECK(url.port == 80);
  CHECK(url.path == "/push?tenant=a");
}

TEST_CASE("remote_write: errors name the file, the place and the problem") {
  test::TempDir dir;
  write_text(dir.file("empty"), "\n");
  write_text(dir.file("tab"), "pass\tword\n");
  write_text(dir.file("ca.pem"), "x");
  CHECK(config_error(with_remote_write("{}")) == "config.json: remote_write: expected a list of receivers, got an object");
  CHECK(config_error(with_remote_write("[{}]")) ==
        "config.json: remote_write[0].url: missing: the receiver's URL, such as http://prometheus:9090/api/v1/write");
  CHECK(config_error(with_remote_write(R"([{"url": "prometheus:9090"}])")) ==
        "config.json: remote_write[0].url: \"prometheus:9090\": not a URL (expected http://host[:port]/path)");
  CHECK(config_error(with_remote_write(R"([{"url": "ftp://h/x"}])")) ==
        "config.json: remote_write[0].url: \"ftp://h/x\": scheme \"ftp\" is neither http nor https");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h:0/x"}])")) ==
        "config.json: remote_write[0].url: \"http://h:0/x\": port \"0\" is not a number from 1 to 65535");
  CHECK(config_error(with_remote_write(R"([{"url": "http://u:p@h/x"}])")) ==
        "config.json: remote_write[0].url: \"http://u:p@h/x\": user info in the URL; use basic_auth with a password_file");
#ifndef HERMES_TLS
  CHECK(config_error(with_remote_write(R"([{"url": "https://h/x"}])")) ==
        "config.json: remote_write[0].url: \"https://h/x\": https needs TLS, which is not compiled into this build of Hermes (HERMES_TLS)");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "tls": {"ca_file": ")" + dir.file("ca.pem") + R"("}}])")) ==
        "config.json: remote_write[0].tls: TLS is not compiled into this build of Hermes (HERMES_TLS); its settings cannot be used");
#endif
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "tls": {"ca_file": "/nonexistent/ca.pem"}}])")) ==
        "config.json: remote_write[0].tls.ca_file: /nonexistent/ca.pem: cannot read: No such file or directory");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x"}, {"url": "http://h/x"}])")) ==
        "config.json: remote_write[1].url: the same URL as remote_write[0]");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "interval_seconds": 0}])")) ==
        "config.json: remote_write[0].interval_seconds: 0 is not a number of seconds above 0 and at most 86400");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "max_samples_per_send": 1.5}])")) ==
        "config.json: remote_write[0].max_samples_per_send: 1.5 is not a whole number from 1 to 10000000");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "bearer_token": "x"}])")).rfind(
            "config.json: remote_write[0].bearer_token: unknown key (expected one of: url, ", 0) == 0);
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "bearer_token_file": "/nonexistent/token"}])")) ==
        "config.json: remote_write[0].bearer_token_file: token file /nonexistent/token: cannot read: No such file or directory");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "bearer_token_file": ")" + dir.file("empty") + R"("}])")) ==
        "config.json: remote_write[0].bearer_token_file: token file " + dir.file("empty") + ": empty: it must hold the bearer token");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "basic_auth": {"username": "u"}}])")) ==
        "config.json: remote_write[0].basic_auth.password_file: missing: the password is read from a file, never from the config");
  const auto basic_auth = [&](const char *file) {
    return with_remote_write(R"([{"url": "http://h/x", "basic_auth": {"username": "u", "password_file": ")" + dir.file(file) + R"("}}])");
  };
  CHECK(config_error(basic_auth("none")) ==
        "config.json: remote_write[0].basic_auth.password_file: password file " + dir.file("none") + ": cannot read: No such file or directory");
  CHECK(config_error(basic_auth("empty")) ==
        "config.json: remote_write[0].basic_auth.password_file: password file " + dir.file("empty") + ": empty: it must hold the password");
  CHECK(config_error(basic_auth("tab")) == "config.json: remote_write[0].basic_auth.password_file: password file " + dir.file("tab") +
                                               ": holds a control character, which a password cannot");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "headers": {"Content-Type": "x"}}])")) ==
        "config.json: remote_write[0].headers.Content-Type: set by Hermes itself; use bearer_token_file or basic_auth for Authorization");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "external_labels": {"__name__": "x"}}])")) ==
        "config.json: remote_write[0].external_labels.__name__: not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not __*)");
}

#ifdef HERMES_TLS
TEST_CASE("remote_write: the tls files are loaded with the config, an error names the file, the place and the problem") {
  test::TempDir dir;
  write_text(dir.file("bad.pem"), "x");
  const std::string make = "cd '" + dir.file("") + "' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                           "-keyout a.key -out a.pem -days 1 -subj /CN=a >/dev/null 2>&1 && openssl genpkey -algorithm EC "
                           "-pkeyopt ec_paramgen_curve:P-256 -out b.key >/dev/null 2>&1";
  REQUIRE(std::system(make.c_str()) == 0);
  const auto with_tls = [&](const std::string &tls) { return with_remote_write(R"([{"url": "https://h/x", "tls": )" + tls + "}]"); };
  CHECK(config_error(with_tls(R"({"ca_file": ")" + dir.file("bad.pem") + R"("})")) ==
        "config.json: remote_write[0].tls: TLS CA file " + dir.file("bad.pem") +
            ": no certificate in it: X509 - The CRT/CRL/CSR format is invalid, e.g. different type expected");
  CHECK(config_error(with_tls(R"({"ca_file": ")" + dir.file("a.pem") + R"(", "cert_file": ")" + dir.file("a.pem") +
                              R"(", "key_file": ")" + dir.file("b.key") + R"("})")) ==
        "config.json: remote_write[0].tls: TLS key file " + dir.file("b.key") + ": the key does not match the certificate in " + dir.file("a.pem"));
  CHECK(config_error(with_tls(R"({"cert_file": ")" + dir.file("bad.pem") + R"(", "key_file": ")" + dir.file("b.key") + R"("})")) ==
        "config.json: remote_write[0].tls: TLS certificate file " + dir.file("bad.pem") +
            ": X509 - The CRT/CRL/CSR format is invalid, e.g. different type expected");
  // Good files, and insecure_skip_verify without a CA at all, are taken.
  const auto good = hermes::parse_config(with_tls(R"({"ca_file": ")" + dir.file("a.pem") + R"(", "cert_file": ")" + dir.file("a.pem") +
                                                  R"(", "key_file": ")" + dir.file("a.key") + R"(", "server_name": "a"})"),
                                         "config.json");
  CHECK(good.remote_write.at(0).tls->server_name == "a");
  CHECK(hermes::parse_config(with_tls(R"({"insecure_skip_verify": true})"), "config.json").remote_write.at(0).tls->insecure_skip_verify);
}
#endif

#ifdef HERMES_TLS
// Its name matches the Makefile's HEAP_MEASURES: excluded under the sanitizers and
// valgrind, whose allocators mallinfo2 cannot see.
TEST_CASE("remote_write: per TLS connection memory: a client context's count covers its heap, Debian's CA bundle too") {
  hermes::detail::TlsClientSettings settings; // the system's bundle: 140-odd CAs
  const std::size_t before = mallinfo2().uordblks;
  const auto context = hermes::detail::TlsContext::for_client(settings);
  const std::size_t heap = mallinfo2().uordblks - before;
  MESSAGE("a client context with " << settings.ca_file << ": " << heap << " bytes of heap, " << context->held_bytes() << " counted");
  CHECK(heap > 100 * 1024); // a measure: the bundle was read
  CHECK(context->held_bytes() >= heap);
  CHECK(context->held_bytes() <= 2 * heap);
}
#endif

TEST_CASE("remote_write: HERMES_REMOTE_WRITE_URL adds one target, its secret from a file") {
  test::TempDir dir;
  write_text(dir.file("token"), "tok\n");
  const std::string token = dir.file("token");
  const auto env = [&](const char *name) -> const char * {
    const std::string key = name;
    if (key == "HERMES_REMOTE_WRITE_URL") return "http://127.0.0.1:9/w";
    if (key == "HERMES_REMOTE_WRITE_INTERVAL") return "2.5";
    if (key == "HERMES_REMOTE_WRITE_BEARER_TOKEN_FILE") return token.c_str();
    return nullptr;
  };
  const hermes::Options options = hermes::options_from_environment(test::sample_config(), env);
  REQUIRE(options.remote_write.size() == 1);
  CHECK(options.remote_write[0].url == "http://127.0.0.1:9/w");
  CHECK(options.remote_write[0].interval_seconds == 2.5);
  CHECK(options.remote_write[0].authorization == "Bearer tok");
  CHECK(hermes::options_from_environment(test::sample_config(), no_variables).remote_write.empty());
  const auto usage_error = [](std::function<const char *(const char *)> variables) -> std::string {
    try {
      hermes::options_from_environment(test::sample_config(), variables);
    } catch (const hermes::UsageError &error) {
      return error.what();
    }
    return "";
  };
  CHECK(usage_error([](const char *name) -> const char * {
          return std::string(name) == "HERMES_REMOTE_WRITE_INTERVAL" ? "5" : nullptr;
        }) == "HERMES_REMOTE_WRITE_INTERVAL: set without HERMES_REMOTE_WRITE_URL");
  CHECK(usage_error([](const char *name) -> const char * {
          return std::string(name) == "HERMES_REMOTE_WRITE_URL" ? "gopher://x" : nullptr;
        }) == "HERMES_REMOTE_WRITE_URL: \"gopher://x\": scheme \"gopher\" is neither http nor https");
  CHECK(usage_error([](const char *name) -> const char * {
          const std::string key = name;
          return key == "HERMES_REMOTE_WRITE_URL" ? "http://h/" : key == "HERMES_REMOTE_WRITE_BEARER_TOKEN_FILE" ? "/nonexistent" : nullptr;
        }) == "HERMES_REMOTE_WRITE_BEARER_TOKEN_FILE: token file /nonexistent: cannot read: No such file or directory");
}

// ---- snappy ----------------------------------------------------------------------------------

namespace {

std::string compressed(std::string_view raw) {
  std::string out;
  hermes::detail::snappy_compress(raw, out);
  return out;
}

std::string pseudo_random(std::size_t size, std::uint32_t seed) {
  std::string out;
  for (std::size_t i = 0; i < size; ++i) {
    seed = seed * 1103515245u + 12345u;
    out += static_cast<char>((seed >> 16) & 0xff);
  }
  return out;
}

} // namespace

TEST_CASE("snappy: what Hermes compresses decodes to the same bytes, and shrinks what repeats") {
  const std::vector<std::string> inputs = {"", "a", "abcd", std::string(100000, 'x'), pseudo_random(70000, 1),
                                           test::read_file(test::test_path("expected/snappy/text.raw")),
                                           std::string(65536, 'y') + "z" + std::string(65536, 'y')};
  for (const std::string &raw : inputs) {
    CAPTURE(raw.size());
    const std::string packed = compressed(raw);
    CHECK(packed.size() <= hermes::detail::snappy_max_compressed_length(raw.size()));
    CHECK(test::snappy_decompress(packed) == std::optional<std::string>(raw));
  }
  CHECK(compressed("") == std::string(1, '\0'));
  CHECK(compressed("abc") == std::string("\x03\x08" "abc", 5)); // length 3, a literal of 3
  CHECK(compressed(std::string(100000, 'x')).size() < 5000);
}

TEST_CASE("snappy: the test's decoder reads what python3-snappy wrote") {
  for (const char *name : {"text", "random", "runs"}) {
    CAPTURE(name);
    const std::string raw = test::read_file(test::test_path(std::string("expected/snappy/") + name + ".raw"));
    const std::string packed = test::read_file(test::test_path(std::string("expected/snappy/") + name + ".sz"));
    CHECK(test::snappy_decompress(packed) == std::optional<std::string>(raw));
    CHECK(test::snappy_decompress(compressed(raw)) == std::optional<std::string>(raw));
  }
  CHECK_FALSE(test::snappy_decompress(std::string("\x05\x08" "abc", 5)).has_value()); // says 5 bytes, holds 3
  CHECK_FALSE(test::snappy_decompress(std::string("\x04\x05\x01", 3)).has_value());   // a copy before any byte
}

// ---- snapshots ---------------------------------------------------------------------------------

namespace {

struct Snapshot {
  hermes::detail::PendingSnapshot pending;
  std::vector<test::DecodedSeries> series;
  std::string key_text;
  std::vector<hermes::detail::SeriesKey> keys;
};

// One snapshot of a registry, as a server makes it, decoded by the test's own decoder.
Snapshot take_snapshot(const hermes::Registry &registry, const hermes::RemoteWriteConfig &target, std::int64_t timestamp_ms,
                       const Snapshot *previous = nullptr) {
  static const std::string job = "boards", instance = "board-1";
  hermes::detail::SnapshotWriter writer({&job, &instance, &target.external_labels, target.max_samples_per_send}, timestamp_ms,
                                        [](std::size_t) { return true; });
  hermes::detail::Renderer renderer(writer, registry, {registry, nullptr, nullptr});
  while (!renderer.write_some(SIZE_MAX)) {
  }
  static const std::string no_text;
  static const std::vector<hermes::detail::SeriesKey> no_keys;
  REQUIRE(writer.add_stale_markers(previous ? previous->key_text : no_text, previous ? previous->keys : no_keys));
  Snapshot out{std::move(writer.snapshot()), {}, std::move(writer.key_text()), std::move(writer.keys())};
  const auto decoded = test::decode_write_request(out.pending.series);
  REQUIRE(decoded.has_value());
  out.series = *decoded;
  return out;
}

const test::DecodedSeries *find_series(const Snapshot &snapshot, const std::string &name, const std::string &label = "",
                                       const std::string &value = "") {
  for (const test::DecodedSeries &series : snapshot.series)
    if (series.label("__name__") == name && (label.empty() || series.label(label) == value)) return &series;
  return nullptr;
}

const char *snapshot_config = R"({"service_name": "boards",
  "counters": [{"metric_name": "jobs_total", "labels": ["queue", "job"]}],
  "gauges": [{"metric_name": "depth"}],
  "histograms": [{"metric_name": "latency_seconds", "buckets": [0.1, 1]},
                 {"metric_name": "size_bytes", "native": true}],
  "summaries": [{"metric_name": "rtt_seconds", "objectives": {"0.5": 0.05}}]})";

} // namespace

TEST_CASE("remote write snapshot: every series as a scrape gives it, labels sorted, one timestamp") {
  hermes::Registry registry(hermes::parse_config(snapshot_config, "config.json"));
  registry.ingest(R"([{"metric_name": "jobs_total", "payload": {"labels": {"queue": "mail", "job": "inner"}, "value": 3}},
                      {"metric_name": "depth", "payload": {"value": 7, "operation": "set"}},
                      {"metric_name": "latency_seconds", "payload": {"observation": 0.5}},
                      {"metric_name": "latency_seconds", "payload": {"observation": 5}},
                      {"metric_name": "size_bytes", "payload": {"observation": 3}},
                      {"metric_name": "rtt_seconds", "payload": {"observation": 0.25}}])", 1000);
  hermes::RemoteWriteConfig target;
  target.external_labels = {{"instance", "north-7"}, {"site", "north"}};
  const Snapshot snapshot = take_snapshot(registry, target, 1234567);
  const test::DecodedSeries *jobs = find_series(snapshot, "jobs_total");
  REQUIRE(jobs != nullptr);
  CHECK(jobs->labels == std::vector<std::pair<std::string, std::string>>{{"__name__", "jobs_total"}, {"exported_job", "inner"},
                                                                         {"instance", "north-7"}, {"job", "boards"},
                                                                         {"queue", "mail"}, {"site", "north"}});
  CHECK(jobs->samples == std::vector<std::pair<double, std::int64_t>>{{3, 1234567}});
  REQUIRE(find_series(snapshot, "depth") != nullptr);
  CHECK(find_series(snapshot, "depth")->samples[0].first == 7);
  CHECK(find_series(snapshot, "latency_seconds_bucket", "le", "0.1")->samples[0].first == 0);
  CHECK(find_series(snapshot, "latency_seconds_bucket", "le", "1")->samples[0].first == 1);
  CHECK(find_series(snapshot, "latency_seconds_bucket", "le", "+Inf")->samples[0].first == 2);
  CHECK(find_series(snapshot, "latency_seconds_sum")->samples[0].first == 5.5);
  CHECK(find_series(snapshot, "latency_seconds_count")->samples[0].first == 2);
  CHECK(find_series(snapshot, "rtt_seconds", "quantile", "0.5")->samples[0].first == 0.25);
  CHECK(find_series(snapshot, "rtt_seconds_count")->samples[0].first == 1);
  const test::DecodedSeries *native = find_series(snapshot, "size_bytes");
  REQUIRE(native != nullptr);
  REQUIRE(native->histograms.size() == 1);
  CHECK(native->samples.empty());
  CHECK(native->histograms[0].count == 1);
  CHECK(native->histograms[0].sum == 3);
  CHECK(native->histograms[0].timestamp == 1234567);
  CHECK(native->histograms[0].positive_spans.size() == 1);
  CHECK(native->histograms[0].positive_deltas == std::vector<std::int64_t>{1});
  CHECK(find_series(snapshot, "size_bytes_count") == nullptr); // a native histogram without classic buckets is one series
  CHECK(find_series(snapshot, "hermes_samples_accepted_total") != nullptr); // Hermes' own, as /metrics shows them
  for (const test::DecodedSeries &series : snapshot.series) {
    CAPTURE(series.label("__name__"));
    CHECK(std::is_sorted(series.labels.begin(), series.labels.end()));
    CHECK(series.samples.size() + series.histograms.size() == 1);
    if (!series.samples.empty()) CHECK(series.samples[0].second == 1234567);
  }
  CHECK(snapshot.pending.samples == snapshot.series.size());
}

TEST_CASE("remote write snapshot: batches of max_samples_per_send, and stale markers for series gone since") {
  hermes::Registry registry(hermes::parse_config(
      R"({"service_name": "s", "gauges": [{"metric_name": "g", "labels": ["k"], "ttl_seconds": 10}]})", "config.json"));
  for (int i = 0; i < 5; ++i)
    registry.ingest(R"({"metric_name": "g", "payload": {"labels": {"k": ")" + std::to_string(i) + R"("}, "value": 1}})", 1000);
  hermes::RemoteWriteConfig target;
  target.max_samples_per_send = 4;
  const Snapshot first = take_snapshot(registry, target, 1000);
  const std::size_t total = first.series.size();
  CHECK(first.pending.batch_ends.size() == (total + 3) / 4);
  std::size_t in_batches = 0;
  for (const std::size_t samples : first.pending.batch_samples) {
    in_batches += samples;
    CHECK(samples <= 4);
  }
  CHECK(in_batches == total);
  CHECK(first.pending.batch_ends.back() == first.pending.series.size());
  registry.ingest(R"({"metric_name": "g", "payload": {"labels": {"k": "0"}, "value": 2}})", 1005);
  registry.expire(1012); // k=1..4 expire, k=0 stays
  const Snapshot second = take_snapshot(registry, target, 2000, &first);
  std::vector<std::string> stale;
  for (const test::DecodedSeries &series : second.series) {
    std::uint64_t bits;
    std::memcpy(&bits, &series.samples.at(0).first, sizeof bits);
    if (bits == 0x7ff0000000000002ull) stale.push_back(series.label("__name__") + "{k=" + series.label("k") + "}");
  }
  std::sort(stale.begin(), stale.end()); // markers come in the order of the label sets' hashes
  CHECK(stale == std::vector<std::string>{"g{k=1}", "g{k=2}", "g{k=3}", "g{k=4}"});
  CHECK(find_series(second, "g", "k", "0")->samples[0] == std::pair<double, std::int64_t>{2, 2000});
  const Snapshot third = take_snapshot(registry, target, 3000, &second);
  CHECK(third.series.size() == second.series.size() - 4); // a marker once, not again
}

namespace {

// The last snapshot's label sets as a server keeps them, and the snapshot's bytes.
struct KeptKeys {
  std::string text;
  std::vector<hermes::detail::SeriesKey> keys;
  bool same = false; // the last snapshot's label sets were those kept before it
};

// A snapshot as a server makes it: its label sets compared with the kept ones as they come.
std::string take_snapshot_against(const hermes::Registry &registry, const hermes::RemoteWriteConfig &target,
                                  std::int64_t timestamp_ms, KeptKeys &kept) {
  static const std::string job = "boards", instance = "board-1";
  hermes::detail::SnapshotWriter writer({&job, &instance, &target.external_labels, target.max_samples_per_send, 0, 0, &kept.text, &kept.keys},
                                        timestamp_ms, [](std::size_t) { return true; });
  hermes::detail::Renderer renderer(writer, registry, {registry, nullptr, nullptr});
  while (!renderer.write_some(SIZE_MAX)) {
  }
  REQUIRE(writer.add_stale_markers(kept.text, kept.keys));
  kept.same = writer.same_keys();
  if (!kept.same) kept.text = std::move(writer.key_text()), kept.keys = std::move(writer.keys());
  return writer.snapshot().series;
}

} // namespace

TEST_CASE("remote write snapshot: label sets compared in place with the last ones give the same bytes, kept while unchanged") {
  hermes::Registry registry(hermes::parse_config(
      R"({"service_name": "s", "gauges": [{"metric_name": "g", "labels": ["k"], "ttl_seconds": 10}]})", "config.json"));
  const auto set = [&](const std::string &k, double now) {
    registry.ingest(R"({"metric_name": "g", "payload": {"labels": {"k": ")" + k + R"("}, "value": 1}})", now);
  };
  for (int i = 1; i <= 5; ++i) set(std::to_string(i), 1000);
  hermes::RemoteWriteConfig target;
  target.max_samples_per_send = 3;
  KeptKeys kept;
  const Snapshot *last = nullptr;
  std::vector<Snapshot> made;
  made.reserve(5);
  double now = 1000;
  const auto both_ways = [&](std::int64_t timestamp_ms) { // the same bytes whichever way the keys are kept
    registry.expire(now);
    made.push_back(take_snapshot(registry, target, timestamp_ms, last));
    last = &made.back();
    CHECK(take_snapshot_against(registry, target, timestamp_ms, kept) == last->pending.series);
  };
  both_ways(1000);
  CHECK_FALSE(kept.same); // the first: nothing kept before
  both_ways(2000);
  CHECK(kept.same);
  set("0", now += 6), set("3", now), set("6", now); // one before all, one after all; 1, 2, 4 and 5 are not refreshed
  both_ways(3000);
  CHECK_FALSE(kept.same);
  now += 6; // 1, 2, 4 and 5 expire: their stale markers
  both_ways(4000);
  CHECK_FALSE(kept.same);
  const auto count_g = [&](bool stale) {
    std::size_t count = 0;
    for (const test::DecodedSeries &series : last->series) {
      std::uint64_t bits;
      std::memcpy(&bits, &series.samples.at(0).first, sizeof bits);
      count += series.label("__name__") == "g" && (bits == 0x7ff0000000000002ull) == stale;
    }
    return count;
  };
  CHECK(count_g(true) == 4);
  CHECK(count_g(false) == 3);
  both_ways(5000);
  CHECK(kept.same);
  CHECK(count_g(true) == 0); // markers once, not again
  CHECK(count_g(false) == 3); // 0, 3 and 6
}
