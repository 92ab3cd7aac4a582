// The Pushgateway API without sockets: the grouping key, the text format parser, the
// group semantics and their checks, the budget, the TTL, and the families as written.
#include "helpers.hpp"

using hermes::detail::PushLabels;
using hermes::detail::PushStore;
using hermes::detail::PushType;

namespace {

std::map<std::string, hermes::detail::PushedFamily> parsed(std::string_view body) {
  hermes::detail::PushTextParser parser;
  auto families = parser.parse(body);
  REQUIRE_MESSAGE(families.has_value(), parser.error());
  return std::move(*families);
}

std::string parse_error(std::string_view body) {
  hermes::detail::PushTextParser parser;
  return parser.parse(body) ? "parsed" : parser.error();
}

PushLabels key(std::string job, PushLabels more = {}) {
  more.emplace_back("job", std::move(job));
  std::sort(more.begin(), more.end());
  return more;
}

hermes::detail::PushOutcome push(PushStore &store, const PushLabels &group, std::string_view body, bool replace = true,
                                  double now = 1000) {
  return store.push(group, parsed(body), replace, hermes::Now(now, 1.7e9 + now));
}

// The pushed families in the text format, push times left out.
std::string shown(const PushStore &store, hermes::Format format = hermes::Format::text) {
  std::string out, scratch;
  for (const auto &[name, index] : store.families())
    if (!hermes::detail::is_push_time(name)) hermes::detail::write_pushed_family(out, format, name, index, scratch);
  return out;
}

} // namespace

TEST_CASE("the grouping key comes from the path, base64url values decoded") {
  const auto plain = hermes::detail::parse_grouping_key("/metrics/job/backup/instance/db%201/empty@base64/=");
  CHECK(plain.problem == "");
  CHECK(plain.labels == PushLabels{{"empty", ""}, {"instance", "db 1"}, {"job", "backup"}});
  const auto encoded = hermes::detail::parse_grouping_key("/metrics/job@base64/YmFja3VwL2Ri/path@base64/L3Zhci9saWI");
  CHECK(encoded.labels == PushLabels{{"job", "backup/db"}, {"path", "/var/lib"}});
  CHECK(hermes::detail::parse_grouping_key("/metrics/job/j/odd").problem == "odd number of components in label string \"/odd\"");
  CHECK(hermes::detail::parse_grouping_key("/metrics/job/j/__a/1").problem == "improper label name \"__a\"");
  CHECK(hermes::detail::parse_grouping_key("/metrics/job/j/a@base64/abcde").problem ==
        "invalid base64 encoding for label a=\"abcde\": illegal base64 data at input byte 4");
  CHECK(hermes::detail::parse_grouping_key("/metrics/job@base64/=").problem == "job name is required");
  CHECK(hermes::detail::parse_grouping_key("/metrics/job/j/a/%zz").problem == "invalid URL escape in \"/metrics/job/j/a/%zz\"");
  CHECK(hermes::detail::parse_grouping_key("/metrics/job/j/a%2Fb").labels == PushLabels{{"a", "b"}, {"job", "j"}});
  // A '/' escaped as %2F is a separator once decoded: an empty segment, or a "." or "..",
  // which Pushgateway redirects, is refused rather than read as shifted labels.
  CHECK(hermes::detail::parse_grouping_key("/metrics/job/j/path/%2Fvar%2Flib").problem ==
        "the path \"/metrics/job/j/path//var/lib\" has an empty, \".\" or \"..\" segment once decoded: "
        "send such a value as NAME@base64/BASE64URL");
  for (const char *unclean : {"/metrics/job//x", "/metrics/job/j/a/.", "/metrics/job/j/a/../b/c", "/metrics/job/j/a/%2E/b/c"})
    CHECK_MESSAGE(!hermes::detail::parse_grouping_key(unclean).problem.empty(), unclean);
  CHECK(hermes::detail::parse_grouping_key("/metrics/job/j/a/x/b/").labels == PushLabels{{"a", "x"}, {"b", ""}, {"job", "j"}});
}

TEST_CASE("a chunked body is decoded in place as its chunks come, trailers and extensions ignored") {
  hermes::detail::Connection connection;
  const std::string head = "PUT /metrics/job/j HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  connection.input = head + "4;ext=1\r\nx 1\n\r\n";
  connection.body_start = connection.chunk_at = head.size();
  using hermes::detail::ChunkState;
  CHECK(decode_chunks(connection, 100) == ChunkState::more);
  connection.input += "4\r\ny 2";
  CHECK(decode_chunks(connection, 100) == ChunkState::more); // the chunk's data is not whole
  connection.input += "\n\r\n0\r\nX-Trailer: t\r\n";
  CHECK(decode_chunks(connection, 100) == ChunkState::more); // nor the trailer section
  connection.input += "\r\n";
  CHECK(decode_chunks(connection, 100) == ChunkState::done);
  CHECK(connection.input.substr(connection.body_start, connection.body_length) == "x 1\ny 2\n");
  for (const char *bad : {"x\r\n", "\r\n", "-1\r\n", "2\r\nabc\r\n", "0x2\r\nab\r\n"}) {
    connection.input = head + bad;
    connection.chunk_at = head.size(), connection.body_length = 0, connection.last_chunk = false;
    CHECK_MESSAGE(decode_chunks(connection, 100) == ChunkState::bad, bad);
  }
  connection.input = head + "65\r\n";
  connection.chunk_at = head.size();
  CHECK(decode_chunks(connection, 100) == ChunkState::too_large); // 0x65 = 101 bytes
  // A size or trailer line is searched again at each read until it ends: it has a limit.
  connection.input = head + std::string(HERMES_MAX_CHUNK_LINE, '0');
  CHECK(decode_chunks(connection, 100) == ChunkState::more);
  connection.input += "0";
  CHECK(decode_chunks(connection, 100) == ChunkState::bad);
  connection.input = head + "0\r\nX-Trailer: " + std::string(HERMES_MAX_CHUNK_LINE, 't') + "\r\n\r\n";
  connection.last_chunk = false;
  CHECK(decode_chunks(connection, 100) == ChunkState::bad);
}

TEST_CASE("the text parser reads families, types, HELP and the samples of summaries and histograms") {
  const auto families = parsed("# HELP a_total Done \\\\ and\\n more.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n"
                               "# TYPE s summary\ns{quantile=\"0.5\",k=\"v\"} 2\ns_sum{k=\"v\"} 9\ns_count{k=\"v\"} 4\n"
                               "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 3\nh_sum 1.5\nh_count 3\n"
                               "plain -Inf\n# TYPE unused gauge\n");
  CHECK(families.size() == 4);
  const auto &counter = families.at("a_total");
  CHECK(counter.help == std::optional<std::string>("Done \\ and\n more."));
  CHECK(counter.type == PushType::counter);
  CHECK(counter.metrics.at(0).labels == PushLabels{{"x", "1"}});
  CHECK(counter.metrics.at(0).value == 3);
  const auto &summary = families.at("s").metrics;
  REQUIRE(summary.size() == 1);
  CHECK(summary[0].labels == PushLabels{{"k", "v"}});
  CHECK((summary[0].count == 4 && summary[0].sum == 9));
  CHECK(summary[0].points == std::vector<std::pair<double, double>>{{0.5, 2}});
  const auto &histogram = families.at("h").metrics.at(0);
  CHECK(histogram.points == std::vector<std::pair<double, double>>{{1, 2}, {HUGE_VAL, 3}});
  CHECK(families.at("plain").type == PushType::untyped);
  CHECK(!families.at("plain").help);
}

TEST_CASE("a bad body is answered with the line and the problem, as Pushgateway words it") {
  CHECK(parse_error("x 1") == "text format parsing error in line 1: unexpected end of input stream");
  CHECK(parse_error("x 1\ny{a=\"1\" 2\n") == "text format parsing error in line 2: unexpected end of label value \"1\"");
  CHECK(parse_error("x{a=1} 2\n") == "text format parsing error in line 1: expected '\"' at start of label value, found '1'");
  CHECK(parse_error("x{a=\"1\",a=\"2\"} 2\n") == "text format parsing error in line 1: duplicate label names for metric \"x\"");
  CHECK(parse_error("x abc\n") == "text format parsing error in line 1: expected float as value, got \"abc\"");
  CHECK(parse_error("x 1 \n") == "text format parsing error in line 1: expected integer as timestamp, got \"\"");
  CHECK(parse_error("x 1\n# TYPE x gauge\n") ==
        "text format parsing error in line 2: second TYPE line for metric name \"x\", or TYPE reported after samples");
  CHECK(parse_error("x 1e400\n") == "text format parsing error in line 1: expected float as value, got \"1e400\"");
  CHECK(parse_error("x{a=\"\\q\"} 1\n") == "text format parsing error in line 1: invalid escape sequence '\\q'");
}

TEST_CASE("numbers are read as Go's ParseFloat reads them") {
  using hermes::detail::parse_go_float;
  CHECK(parse_go_float("1e5") == 1e5);
  CHECK(parse_go_float(".5") == 0.5);
  CHECK(parse_go_float("5.") == 5);
  CHECK(parse_go_float("-Infinity") == -HUGE_VAL);
  CHECK(std::isnan(*parse_go_float("NaN")));
  CHECK(parse_go_float("1e-400") == 0);
  CHECK(!parse_go_float("+NaN"));
  CHECK(!parse_go_float("0x1p3"));
  CHECK(!parse_go_float("1_000"));
  CHECK(!parse_go_float("1e"));
  CHECK(!parse_go_float(""));
}

TEST_CASE("PUT replaces the group, POST the families it pushes, DELETE the group") {
  PushStore store(nullptr, 100, 0);
  CHECK(push(store, key("j"), "a 1\nb 2\n").status == 200);
  CHECK(push(store, key("j"), "b 3\n", false).status == 200);
  CHECK(shown(store) == "# TYPE a untyped\na{instance=\"\",job=\"j\"} 1\n# TYPE b untyped\nb{instance=\"\",job=\"j\"} 3\n");
  CHECK(push(store, key("j"), "b 4\n").status == 200);
  CHECK(shown(store) == "# TYPE b untyped\nb{instance=\"\",job=\"j\"} 4\n");
  store.remove(key("j"));
  CHECK(store.group_count() == 0);
  CHECK(store.families().empty());
}

TEST_CASE("grouping labels win over pushed labels of the same name, and instance is added") {
  PushStore store(nullptr, 100, 0);
  CHECK(push(store, key("j", {{"instance", "i"}}), "a{job=\"x\",instance=\"y\",z=\"1\"} 1\n").status == 200);
  CHECK(shown(store) == "# TYPE a untyped\na{instance=\"i\",job=\"j\",z=\"1\"} 1\n");
}

TEST_CASE("a group holds its grouping labels once: samples show them, sorted across the groups that overlap") {
  PushStore store(nullptr, 100, 0);
  CHECK(push(store, key("j"), "m{a=\"3\"} 3\nm{a=\"1\",instance=\"\"} 1\n").status == 200);
  CHECK(push(store, key("k"), "m{a=\"2\",job=\"x\"} 2\n").status == 200);
  CHECK(push(store, key("l", {{"g", "1"}}), "m{a=\"0\",instance=\"i\"} 0\n").status == 200);
  CHECK(shown(store) == "# TYPE m untyped\nm{a=\"1\",instance=\"\",job=\"j\"} 1\nm{a=\"2\",instance=\"\",job=\"k\"} 2\n"
                        "m{a=\"3\",instance=\"\",job=\"j\"} 3\nm{a=\"0\",g=\"1\",instance=\"i\",job=\"l\"} 0\n");
  // Another key that shows the same labels: instance="" is what the group of job j shows.
  const auto taken = push(store, key("j", {{"instance", ""}}), "m{a=\"1\"} 5\n");
  CHECK(taken.message == "pushed metrics are invalid or inconsistent with existing metrics: family \"m\": the labels "
                         "{a=\"1\",instance=\"\",job=\"j\"} are another group's already");
  CHECK(push(store, key("j", {{"instance", ""}}), "m{a=\"4\"} 4\n").message ==
        "pushed metrics are invalid or inconsistent with existing metrics: family \"push_failure_time_seconds\": the labels "
        "{instance=\"\",job=\"j\"} are another group's already"); // its push times, too
  // A push of more samples than the group it meets: the group's samples are looked up in it.
  CHECK(push(store, key("j", {{"instance", ""}}), "m{a=\"9\"} 9\nm{a=\"8\"} 8\nm{a=\"3\"} 7\n").message ==
        "pushed metrics are invalid or inconsistent with existing metrics: family \"m\": the labels "
        "{a=\"3\",instance=\"\",job=\"j\"} are another group's already");
  CHECK(store.group_count() == 3);
}

TEST_CASE("a push that would make /metrics inconsistent is refused whole, keeping only its failure time") {
  PushStore store(nullptr, 100, 0);
  store.reserve_names({"configured_total"});
  CHECK(push(store, key("a"), "# TYPE f counter\nf 1\n").status == 200);
  const std::string before = shown(store);
  const auto conflict = push(store, key("b"), "# TYPE f gauge\nf 1\ng 1\n");
  CHECK(conflict.status == 400);
  CHECK(conflict.message == "pushed metrics are invalid or inconsistent with existing metrics: family \"f\" is pushed as gauge "
                            "but another group has it as counter");
  CHECK(push(store, key("a"), "x 1 1700000000000\n").message ==
        "pushed metrics are invalid or inconsistent with existing metrics: pushed metrics must not have timestamps");
  CHECK(push(store, key("a"), "configured_total 1\n").status == 400);
  CHECK(push(store, key("a"), "d 1\nd 2\n").status == 400);
  CHECK(push(store, key("c", {{"k", "v"}}), "x 1\n").status == 200);
  CHECK(push(store, key("c"), "x{k=\"v\"} 1\n").status == 400); // the labels of the group above
  CHECK(push(store, key("s"), "# TYPE s summary\ns_sum 1\n").status == 200);
  CHECK(push(store, key("t"), "s_count 1\n").status == 400); // collides with the summary's _count
  CHECK(push(store, key("h", {{"le", "1"}}), "# TYPE h histogram\nh_sum 1\n").status == 400);
  CHECK(shown(store).find("f{instance=\"\",job=\"a\"} 1\n") != std::string::npos);
  CHECK(shown(store).find("g{") == std::string::npos);
  CHECK(shown(store).find("f{instance=\"\",job=\"a\"} 1\n# TYPE s summary") == before.find("f{instance=\"\",job=\"a\"} 1\n"));
  CHECK(store.group_count() == 7); // a, c/k and s, and b, c, t and h/le, which their refused pushes made
}

TEST_CASE("each group takes its bytes from the budget, and a push with no room costs nothing else") {
  auto budget = std::make_shared<hermes::MemoryBudget>(200000, 2);
  PushStore store(budget, 100, 0);
  std::string body;
  for (int i = 0; i < 200; ++i) body += "m{i=\"" + std::to_string(i) + "\"} 1\n";
  int admitted = 0;
  while (push(store, key("g" + std::to_string(admitted)), body).status == 200) ++admitted;
  CHECK(admitted > 0);
  CHECK(push(store, key("g" + std::to_string(admitted)), body).status == 507);
  CHECK(store.group_count() == static_cast<std::size_t>(admitted));
  CHECK(budget->keeps_room());
  CHECK(budget->used() == store.bytes());
  store.wipe();
  CHECK(budget->used() == 0);
  CHECK(budget->body_bound() == 0);
}

TEST_CASE("max_push_groups caps the groups, and the TTL drops the groups not pushed for it") {
  PushStore store(nullptr, 2, 10);
  CHECK(push(store, key("a"), "x 1\n", true, 100).status == 200);
  CHECK(push(store, key("b"), "x 1\n", true, 105).status == 200);
  CHECK(push(store, key("c"), "x 1\n", true, 105).status == 507);
  CHECK(store.expire(109.9) == 0);
  CHECK(store.expire(110) == 1);
  CHECK(push(store, key("c"), "x 1\n", true, 110).status == 200);
}

TEST_CASE("families of several groups are written once, their samples sorted as client_golang sorts them") {
  PushStore store(nullptr, 100, 0);
  push(store, key("b"), "# HELP x The x.\n# TYPE x gauge\nx 2\n");
  push(store, key("a", {{"zone", "z"}}), "# TYPE x gauge\nx 1\n");
  push(store, key("a"), "# TYPE x gauge\nx 3\n");
  CHECK(shown(store) == "# TYPE x gauge\nx{instance=\"\",job=\"a\"} 3\nx{instance=\"\",job=\"b\"} 2\n"
                        "x{instance=\"\",job=\"a\",zone=\"z\"} 1\n");
  CHECK(shown(store, hermes::Format::openmetrics).find("# TYPE x gauge\n") == 0);
}

TEST_CASE("a delimited protobuf body is read whole or not at all") {
  std::string family, metric, counter, label;
  hermes::detail::append_bytes_field(label, 1, "kind");
  hermes::detail::append_bytes_field(label, 2, "a");
  hermes::detail::append_bytes_field(metric, 1, label);
  hermes::detail::append_double_field(counter, 1, 3);
  hermes::detail::append_bytes_field(metric, 3, counter);
  hermes::detail::append_bytes_field(family, 1, "done_total");
  hermes::detail::append_uint_field(family, 3, 0);
  hermes::detail::append_bytes_field(family, 4, metric);
  std::string body;
  hermes::detail::append_varint(body, family.size());
  body += family;
  std::string error;
  const auto families = hermes::detail::parse_push_protobuf(body, error);
  REQUIRE(families.has_value());
  const auto &read = families->at("done_total");
  CHECK(read.type == PushType::counter);
  CHECK(read.metrics.at(0).labels == PushLabels{{"kind", "a"}});
  CHECK(read.metrics.at(0).value == 3);
  CHECK(read.metrics.at(0).kind == PushType::counter);
  for (std::size_t cut = 1; cut < body.size(); ++cut) {
    CHECK(!hermes::detail::parse_push_protobuf(std::string_view(body).substr(0, cut), error));
    CHECK(error == "unexpected EOF");
  }
}
