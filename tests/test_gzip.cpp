// gzip /metrics bodies: the Accept-Encoding negotiation of client_golang, and the
// encoder that compresses a body over its own memory.
#include "helpers.hpp"

#include <random>

using hermes::detail::parse_request_head;
using test::body_of;
using test::http;

namespace {

bool wants_gzip(const std::string &headers) {
  const auto request = parse_request_head("GET /metrics HTTP/1.1\r\n" + headers + "\r\n");
  REQUIRE(request.has_value());
  return hermes::detail::wants_gzip(*request);
}

} // namespace

// Each answer is what client_golang's NegotiateContentEncoding(request, [identity, gzip])
// chooses: the best q of gzip must be above 0 and above those of identity and "*".
TEST_CASE("Accept-Encoding: gzip is chosen as client_golang chooses it") {
  const std::pair<const char *, bool> cases[] = {
      {"", false},                                           // no header: plain
      {"Accept-Encoding: gzip\r\n", true},                   // what Prometheus sends
      {"Accept-Encoding: gzip;q=0\r\n", false},              // refused outright
      {"Accept-Encoding: gzip;q=0.000\r\n", false},
      {"Accept-Encoding: gzip;q=0.001\r\n", true},
      {"Accept-Encoding: gzip ; q=0.5\r\n", true},
      {"Accept-Encoding: *\r\n", false},                     // identity, the first offer, matches * as well
      {"Accept-Encoding: identity\r\n", false},
      {"Accept-Encoding: gzip, identity\r\n", false},        // a tie goes to identity
      {"Accept-Encoding: identity;q=0.5, gzip\r\n", true},
      {"Accept-Encoding: deflate, gzip\r\n", true},
      {"Accept-Encoding: gzip, deflate, br\r\n", true},     // curl --compressed, browsers
      {"Accept-Encoding: br;q=1.0, gzip;q=0.8, *;q=0.1\r\n", true},
      {"Accept-Encoding: gzip;q=0, *\r\n", false},
      {"Accept-Encoding: *;q=0\r\n", false},
      {"Accept-Encoding: GZIP\r\n", false},                  // codings compare as written
      {"Accept-Encoding: x-gzip\r\n", false},
      {"Accept-Encoding: gzip;q=2\r\n", false},              // not a quality: the header is read no further
      {"Accept-Encoding: gzip;level=1\r\n", false},          // a parameter other than q: the same
      {"Accept-Encoding: deflate;x=1, gzip\r\n", false},
      {"Accept-Encoding: gzip,,identity\r\n", true},         // read up to the empty element
      {"Accept-Encoding: deflate\r\nAccept-Encoding: gzip\r\n", true}, // every header counts
      {"Accept-Encoding: gzip\r\nAccept-Encoding: identity\r\n", false},
  };
  for (const auto &[headers, gzip] : cases) {
    CAPTURE(headers);
    CHECK(wants_gzip(headers) == gzip);
  }
}

namespace {

hermes::Options options_with_compression(const char *value) {
  return hermes::options_from_environment(test::sample_config(), [value](const char *name) -> const char * {
    return std::string(name) == "HERMES_COMPRESSION" ? value : nullptr;
  });
}

} // namespace

TEST_CASE("HERMES_COMPRESSION is off, on, or a gzip level; a build without gzip takes only off") {
  CHECK(options_with_compression(nullptr).gzip_level == hermes::default_gzip_level);
  CHECK(options_with_compression("off").gzip_level == 0);
  CHECK(options_with_compression("0").gzip_level == 0);
#ifdef HERMES_GZIP
  CHECK(hermes::default_gzip_level == HERMES_GZIP_LEVEL);
  CHECK(options_with_compression("on").gzip_level == HERMES_GZIP_LEVEL);
  CHECK(options_with_compression("6").gzip_level == 6);
  CHECK(options_with_compression("9").gzip_level == 9);
  for (const char *wrong : {"10", "-1", "fast", "1.5"})
    CHECK_THROWS_WITH_AS(options_with_compression(wrong),
                         doctest::Contains(("HERMES_COMPRESSION: \"" + std::string(wrong) + "\" is not off, on or a gzip level from 1 to 9").c_str()),
                         hermes::UsageError);
#else
  CHECK(hermes::default_gzip_level == 0);
  CHECK_THROWS_WITH_AS(options_with_compression("on"), doctest::Contains("this build has no gzip"), hermes::UsageError);
#endif
  hermes::Options options = test::loopback_options();
  options.gzip_level = 10;
  CHECK_THROWS_WITH_AS(hermes::Server(test::sample_config(), options), doctest::Contains("Options::gzip_level: 10"), hermes::UsageError);
}

#ifdef HERMES_GZIP

namespace {

// The bytes a gzip member holds, read with zlib; "<not gzip>" when it is not one whole member.
std::string gunzip(const std::string &member) {
  z_stream stream{};
  REQUIRE(inflateInit2(&stream, 15 + 16) == Z_OK);
  std::string plain;
  char buffer[65536];
  stream.next_in = reinterpret_cast<Bytef *>(const_cast<char *>(member.data()));
  stream.avail_in = static_cast<uInt>(member.size());
  int result = Z_OK;
  while (result == Z_OK) {
    stream.next_out = reinterpret_cast<Bytef *>(buffer);
    stream.avail_out = sizeof buffer;
    result = inflate(&stream, Z_NO_FLUSH);
    plain.append(buffer, sizeof buffer - stream.avail_out);
  }
  const bool whole = result == Z_STREAM_END && stream.avail_in == 0;
  inflateEnd(&stream);
  return whole ? plain : "<not gzip>";
}

// A registry of `series` counters, one label each, and two gauges that need escaping.
hermes::Registry registry_with(int series) {
  hermes::Registry registry(test::sample_config());
  for (int id = 0; id < series; ++id)
    registry.ingest(R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "id-)" + std::to_string(id) +
                    R"("}, "value": )" + std::to_string(id % 977) + "}}");
  registry.ingest(R"({"metric_name": "sample_gauge", "payload": {"labels": {"label_1": "a\"b", "label_2": "\n"}, "value": 1.5}})");
  return registry;
}

} // namespace

TEST_CASE("a gzip body is one member that inflates to exactly the plain body, in every format") {
  hermes::detail::GzipEncoder encoder(HERMES_GZIP_LEVEL, nullptr);
  const hermes::Registry registry = registry_with(20000);
  for (const hermes::Format format : {hermes::Format::text, hermes::Format::openmetrics, hermes::Format::protobuf}) {
    CAPTURE(static_cast<int>(format));
    const std::string plain = hermes::render_metrics(registry, format);
    std::string body = plain;
    const char *memory = body.data();
    std::size_t pauses = 0;
    REQUIRE(encoder.compress_in_place(body, [&] { ++pauses; }));
    CHECK(body.data() == memory); // written over the plain text, never reallocated
    CHECK(body.size() < plain.size() / 4);
    CHECK(gunzip(body) == plain);
    CHECK(pauses == (plain.size() - 1) / HERMES_GZIP_PAUSE_BYTES); // one between each piece and the next
  }
}

TEST_CASE("the encoder is used again and again, and makes the same member of the same text") {
  hermes::detail::GzipEncoder encoder(9, nullptr);
  for (const std::string &plain : {std::string(), std::string("x"), std::string(300000, 'a'), std::string("# EOF\n")}) {
    std::string first, second; // with room for the header and trailer past a text too short to compress
    first.reserve(plain.size() + 64), second.reserve(plain.size() + 64);
    first = plain, second = plain;
    REQUIRE(encoder.compress_in_place(first, {}));
    REQUIRE(encoder.compress_in_place(second, {}));
    CHECK(first == second);
    CHECK(gunzip(first) == plain);
  }
}

TEST_CASE("text that does not compress is refused when the output would overtake the input or outgrow the memory") {
  std::mt19937 random(24);
  std::string noise(1 << 20, '\0');
  for (char &c : noise) c = static_cast<char>(random());
  // With room past the text for the stored blocks' headers, it fits.
  std::string roomy;
  roomy.reserve(noise.size() + 4096);
  roomy = noise;
  hermes::detail::GzipEncoder encoder(1, nullptr);
  REQUIRE(encoder.compress_in_place(roomy, {}));
  CHECK(roomy.size() > noise.size());
  CHECK(gunzip(roomy) == noise);
  // Without, the member's last bytes have nowhere to go.
  std::string tight = noise;
  tight.shrink_to_fit();
  REQUIRE(tight.capacity() < noise.size() + 64);
  CHECK_FALSE(encoder.compress_in_place(tight, {}));
  // A chunk smaller than the lead of the output over the input fails midway.
  hermes::detail::GzipEncoder small_chunk(1, nullptr, 16);
  std::string spoilt = noise;
  CHECK_FALSE(small_chunk.compress_in_place(spoilt, {}));
  // Text still compresses through a small chunk: its output trails its input.
  std::string text = hermes::render_metrics(registry_with(2000), hermes::Format::text), plain = text;
  REQUIRE(small_chunk.compress_in_place(text, {}));
  CHECK(gunzip(text) == plain);
}

TEST_CASE("the compressor's memory is taken from the budget for as long as it lives") {
  auto budget = std::make_shared<hermes::MemoryBudget>(64 * 1024 * 1024, 2);
  std::size_t bytes = 0;
  {
    hermes::detail::GzipEncoder encoder(HERMES_GZIP_LEVEL, budget.get());
    bytes = encoder.bytes();
    CHECK(budget->used() == bytes);
    // zlib's deflate state at windowBits 15 and memLevel 8: 256 KiB and a few more, and the chunk.
    CHECK(bytes > 256 * 1024 + hermes::detail::GzipEncoder::default_chunk_bytes);
    CHECK(bytes < 300 * 1024 + hermes::detail::GzipEncoder::default_chunk_bytes);
    std::string body = hermes::render_metrics(registry_with(1000), hermes::Format::text);
    REQUIRE(encoder.compress_in_place(body, {}));
    CHECK(budget->used() == bytes); // compressing takes nothing more
  }
  CHECK(budget->used() == 0);
  hermes::MemoryBudget small(bytes - 1);
  CHECK_THROWS_WITH_AS(hermes::detail::GzipEncoder(HERMES_GZIP_LEVEL, &small), doctest::Contains("no room for the gzip compressor"),
                       hermes::UsageError);
  CHECK(small.used() == 0);
}

namespace {

const char *gzip_scrape = "GET /metrics HTTP/1.1\r\nConnection: close\r\nAccept-Encoding: gzip\r\n\r\n";

// The lines of a text body that show configured metrics: Hermes' own change from one
// scrape to the next.
std::string configured_lines(const std::string &body) {
  std::string kept;
  for (const std::string_view line : hermes::detail::split(body, '\n')) {
    const std::string_view name = hermes::detail::starts_with(line, "# HELP ") || hermes::detail::starts_with(line, "# TYPE ") ? line.substr(7) : line;
    if (!hermes::detail::starts_with(name, "hermes_") && !hermes::detail::starts_with(name, "process_"))
      kept.append(line).push_back('\n');
  }
  return kept;
}

// A server with 3000 series of sample_counter: more than a render's step, and more
// text than a piece of compression.
hermes::Server server_with_series(hermes::Options options) {
  hermes::Server server(hermes::parse_config(R"({"service_name": "svc",
    "counters": [{"metric_name": "sample_counter", "labels": ["label_1"], "max_series": 5000}]})", "test"), options);
  std::vector<std::string> batches;
  for (int start = 0; start < 3000; start += 50) {
    std::string batch = "[";
    for (int id = start; id < start + 50; ++id)
      batch += (id > start ? "," : "") + std::string(R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "series-)") +
               std::to_string(id) + R"("}, "value": 7}})";
    batches.push_back(batch + "]");
  }
  test::push(server, batches);
  return server;
}

std::string head_of(const std::string &response) { return response.substr(0, response.find("\r\n\r\n") + 4); }

} // namespace

TEST_CASE("a scraper that asks for gzip gets Content-Encoding: gzip and, inflated, the plain body, in every format") {
  hermes::Server server = server_with_series(test::loopback_options());
  for (const char *accept : {"", "Accept: application/openmetrics-text;version=1.0.0\r\n"}) {
    CAPTURE(accept);
    const std::string plain = http(server, std::string("GET /metrics HTTP/1.1\r\nConnection: close\r\n") + accept + "\r\n");
    const std::string gzip = http(server, std::string("GET /metrics HTTP/1.1\r\nConnection: close\r\n") + accept + "Accept-Encoding: gzip\r\n\r\n");
    CHECK(head_of(plain).find("Content-Encoding") == std::string::npos);
    CHECK(head_of(gzip).find("\r\nContent-Encoding: gzip\r\n") != std::string::npos);
    CHECK(head_of(gzip).find("\r\nContent-Length: " + std::to_string(body_of(gzip).size()) + "\r\n") != std::string::npos);
    CHECK(head_of(gzip).find("Vary") == std::string::npos); // client_golang sends none
    const std::string inflated = gunzip(body_of(gzip));
    CHECK(configured_lines(inflated) == configured_lines(body_of(plain)));
    CHECK(configured_lines(inflated).find("sample_counter{label_1=\"series-2999\"} 7\n") != std::string::npos);
    CHECK(body_of(gzip).size() < body_of(plain).size() / 4);
  }
  const std::string protobuf = http(server, "GET /metrics HTTP/1.1\r\nConnection: close\r\nAccept: application/vnd.google.protobuf;"
                                            "proto=io.prometheus.client.MetricFamily;encoding=delimited\r\nAccept-Encoding: gzip\r\n\r\n");
  CHECK(head_of(protobuf).find("\r\nContent-Encoding: gzip\r\n") != std::string::npos);
  CHECK(gunzip(body_of(protobuf)).substr(1, 19) == "\x0a\x11hermes_build_info");
  CHECK(gunzip(body_of(protobuf)).find("series-2999") != std::string::npos);
  // HEAD: the headers of GET, the gzip body's length among them.
  const std::string head = http(server, "HEAD /metrics HTTP/1.1\r\nConnection: close\r\nAccept-Encoding: gzip\r\n\r\n");
  CHECK(head.find("\r\nContent-Encoding: gzip\r\n") != std::string::npos);
  CHECK(body_of(head).empty());
}

TEST_CASE("a scraper without Accept-Encoding, or with gzip;q=0, or any with compression off, gets the plain body") {
  hermes::Options off = test::loopback_options();
  off.gzip_level = 0;
  hermes::Server plain_only = server_with_series(off), server = server_with_series(test::loopback_options());
  for (auto [target, request] : {std::make_pair(&server, "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n"),
                                 std::make_pair(&server, "GET /metrics HTTP/1.1\r\nConnection: close\r\nAccept-Encoding: gzip;q=0\r\n\r\n"),
                                 std::make_pair(&server, "GET /metrics HTTP/1.1\r\nConnection: close\r\nAccept-Encoding: identity, *\r\n\r\n"),
                                 std::make_pair(&plain_only, gzip_scrape)}) {
    CAPTURE(request);
    const std::string response = http(*target, request);
    CHECK(head_of(response).find("Content-Encoding") == std::string::npos);
    CHECK(hermes::detail::starts_with(body_of(response), "# HELP hermes_build_info"));
  }
}

TEST_CASE("the bytes of /metrics bodies sent are counted by encoding, with what the gzip ones hold") {
  hermes::Server server = server_with_series(test::loopback_options());
  const std::string gzip = body_of(http(server, gzip_scrape));
  const std::string plain = body_of(http(server, "GET /metrics HTTP/1.0\r\n\r\n"));
  http(server, "HEAD /metrics HTTP/1.0\r\nAccept-Encoding: gzip\r\n\r\n"); // sends no body
  const hermes::ServerStats stats = server.stats();
  CHECK(stats.metrics_bytes_gzip == gzip.size());
  CHECK(stats.metrics_bytes_identity == plain.size());
  CHECK(stats.metrics_gzip_uncompressed_bytes == gunzip(gzip).size());
  const std::string text = body_of(http(server, "GET /metrics HTTP/1.0\r\n\r\n"));
  CHECK(text.find("\nhermes_http_metrics_bytes_total{encoding=\"gzip\"} " + std::to_string(gzip.size()) + "\n") != std::string::npos);
  CHECK(text.find("\nhermes_http_metrics_gzip_uncompressed_bytes_total " + std::to_string(gunzip(gzip).size()) + "\n") !=
        std::string::npos);
}

TEST_CASE("the compressor is taken from the budget at start; a gzip body takes the memory of its plain text, no more") {
  hermes::Options off = test::loopback_options();
  off.gzip_level = 0;
  hermes::Server plain_only = server_with_series(off), server = server_with_series(test::loopback_options());
  const double compressor = server.stats().memory_used_bytes - plain_only.stats().memory_used_bytes;
  CHECK(compressor > 256 * 1024 + hermes::detail::GzipEncoder::default_chunk_bytes);
  CHECK(compressor < 300 * 1024 + hermes::detail::GzipEncoder::default_chunk_bytes);
  // Each keeps its latest body, idle, for the next scrape to write over.
  http(plain_only, "GET /metrics HTTP/1.0\r\n\r\n");
  http(server, gzip_scrape);
  CHECK(server.stats().memory_used_bytes - plain_only.stats().memory_used_bytes == compressor);
  CHECK(server.stats().memory_committed_bytes <= server.stats().memory_budget_bytes);
}

#endif // HERMES_GZIP
