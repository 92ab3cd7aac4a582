// Access control: CIDR ranges and allow lists, the bearer token, and both over real
// sockets from IPv4 and IPv6 loopback addresses.
#include "helpers.hpp"

#include <map>

using test::body_of;

namespace {

// The problem parse_address_range finds in `text`, or "" when it reads.
std::string range_problem(const std::string &text) {
  hermes::AddressRange range;
  return hermes::parse_address_range(text, range);
}

// A socket address from numeric text, IPv4 or IPv6.
hermes::detail::SocketAddress address_of(const std::string &text, std::uint16_t port = 0) {
  hermes::detail::SocketAddress address;
  if (text.find(':') == std::string::npos) {
    sockaddr_in v4{};
    v4.sin_family = AF_INET;
    v4.sin_port = htons(port);
    REQUIRE(::inet_pton(AF_INET, text.c_str(), &v4.sin_addr) == 1);
    std::memcpy(&address.storage, &v4, sizeof v4);
    address.length = sizeof v4;
  } else {
    sockaddr_in6 v6{};
    v6.sin6_family = AF_INET6;
    v6.sin6_port = htons(port);
    REQUIRE(::inet_pton(AF_INET6, text.c_str(), &v6.sin6_addr) == 1);
    std::memcpy(&address.storage, &v6, sizeof v6);
    address.length = sizeof v6;
  }
  return address;
}

hermes::AllowList allow_list(std::initializer_list<const char *> ranges) {
  hermes::AllowList list;
  for (const char *text : ranges) {
    hermes::AddressRange range;
    REQUIRE_MESSAGE(hermes::parse_address_range(text, range) == "", text);
    list.add(range, text);
  }
  return list;
}

bool allows(const hermes::AllowList &list, const std::string &address) {
  const auto socket_address = address_of(address);
  return list.allows(socket_address.get(), socket_address.length);
}

hermes::Options options_from(const std::map<std::string, std::string> &values, const hermes::Config &config = test::sample_config()) {
  return hermes::options_from_environment(config, [&values](const char *name) -> const char * {
    const auto found = values.find(name);
    return found == values.end() ? nullptr : found->second.c_str();
  });
}

std::string usage_error(const std::map<std::string, std::string> &values) {
  try {
    options_from(values);
  } catch (const hermes::UsageError &error) {
    return error.what();
  }
  return "";
}

bool contains_line(const std::string &body, const std::string &line) {
  return ("\n" + body).find("\n" + line + "\n") != std::string::npos;
}

std::string scrape(hermes::Server &server, const std::string &headers = "") {
  return body_of(test::http(server, "GET /metrics HTTP/1.0\r\n" + headers + "\r\n"));
}

// Whether this host can use IPv6 loopback; when not, the test says so in its output.
bool ipv6_loopback_works() {
  hermes::detail::FileDescriptor fd(::socket(AF_INET6, SOCK_DGRAM, 0));
  const auto address = address_of("::1");
  if (fd && ::bind(fd.get(), address.get(), address.length) == 0) return true;
  MESSAGE("this host has no IPv6 loopback (::1): the IPv6 part of this test does not run here");
  return false;
}

// A socket bound to `source` (port 0), so that its datagrams and connections come from there.
hermes::detail::FileDescriptor socket_from(const std::string &source, int type) {
  const auto address = address_of(source);
  hermes::detail::FileDescriptor fd(::socket(address.storage.ss_family, type, 0));
  REQUIRE(fd);
  REQUIRE_MESSAGE(::bind(fd.get(), address.get(), address.length) == 0, "bind " << source << ": " << std::strerror(errno));
  return fd;
}

// Sends one datagram from `source` to the server's UDP port at `destination`, and steps
// the server until it has received it.
void push_from(hermes::Server &server, const std::string &source, const std::string &destination, const std::string &datagram) {
  const hermes::detail::FileDescriptor fd = socket_from(source, SOCK_DGRAM);
  const auto to = address_of(destination, server.udp_port());
  const std::uint64_t before = server.stats().udp_packets;
  REQUIRE(::sendto(fd.get(), datagram.data(), datagram.size(), 0, to.get(), to.length) == static_cast<ssize_t>(datagram.size()));
  REQUIRE(test::pump_until(server, [&] { return server.stats().udp_packets == before + 1; }));
}

// One HTTP exchange from `source` to the server at `destination`: all it answered.
std::string http_from(hermes::Server &server, const std::string &source, const std::string &destination, const std::string &request) {
  const hermes::detail::FileDescriptor fd = socket_from(source, SOCK_STREAM);
  const auto to = address_of(destination, server.http_port());
  ::fcntl(fd.get(), F_SETFL, O_NONBLOCK);
  const int status = ::connect(fd.get(), to.get(), to.length);
  REQUIRE((status == 0 || errno == EINPROGRESS));
  std::string received;
  std::size_t sent = 0;
  const bool closed = test::pump_until(server, [&] {
    if (sent < request.size()) {
      const ssize_t n = ::send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n > 0) sent += static_cast<std::size_t>(n);
    }
    char buffer[65536];
    const ssize_t n = ::recv(fd.get(), buffer, sizeof buffer, 0);
    if (n > 0) received.append(buffer, static_cast<std::size_t>(n));
    return n == 0;
  });
  REQUIRE(closed);
  return received;
}

constexpr const char *counter_sample = R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "x"}}})";

struct TokenFile {
  std::string path = "/tmp/hermes-test-token-XXXXXX";
  TokenFile() {
    const int fd = ::mkstemp(path.data());
    REQUIRE(fd >= 0);
    ::close(fd);
  }
  ~TokenFile() { std::remove(path.c_str()); }
  void write(const std::string &text) const { std::ofstream(path, std::ios::binary | std::ios::trunc) << text; }
};

const std::string forbidden_403 =
    "HTTP/1.0 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 14\r\nConnection: close\r\n\r\n403 Forbidden\n";
const std::string unauthorized_401 = "HTTP/1.0 401 Unauthorized\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 17\r\n"
                                     "WWW-Authenticate: Bearer\r\nConnection: close\r\n\r\n401 Unauthorized\n";

} // namespace

// ---- ranges and lists ---------------------------------------------------------------------

TEST_CASE("CIDR ranges: IPv4, IPv6, bare addresses and the edge prefixes") {
  const hermes::AllowList v4 = allow_list({"10.0.0.0/8", "192.168.1.7"});
  CHECK(allows(v4, "10.0.0.0"));
  CHECK(allows(v4, "10.255.255.255"));
  CHECK_FALSE(allows(v4, "11.0.0.0"));
  CHECK_FALSE(allows(v4, "9.255.255.255"));
  CHECK(allows(v4, "192.168.1.7"));
  CHECK_FALSE(allows(v4, "192.168.1.8"));
  CHECK_FALSE(allows(v4, "192.168.1.6"));
  const hermes::AllowList v6 = allow_list({"2001:db8::/32", "::1", "fe80::/10"});
  CHECK(allows(v6, "2001:db8::1"));
  CHECK(allows(v6, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"));
  CHECK_FALSE(allows(v6, "2001:db9::"));
  CHECK(allows(v6, "::1"));
  CHECK_FALSE(allows(v6, "::2"));
  CHECK_FALSE(allows(v6, "::"));
  CHECK(allows(v6, "febf::1"));
  CHECK_FALSE(allows(v6, "fec0::1"));
  CHECK_FALSE(allows(v6, "127.0.0.1")); // an IPv6 range without IPv4 addresses in it
  // /0, /32 and /128 edges, and prefixes across the middle of the address.
  CHECK(allows(allow_list({"0.0.0.0/0"}), "255.255.255.255"));
  CHECK(allows(allow_list({"0.0.0.0/0"}), "::ffff:1.2.3.4"));
  CHECK_FALSE(allows(allow_list({"0.0.0.0/0"}), "::1"));
  CHECK(allows(allow_list({"::/0"}), "::1"));
  CHECK(allows(allow_list({"::/0"}), "1.2.3.4")); // every address, IPv4 ones as IPv4-mapped IPv6
  CHECK(allows(allow_list({"1.2.3.4/32"}), "1.2.3.4"));
  CHECK_FALSE(allows(allow_list({"1.2.3.4/32"}), "1.2.3.5"));
  CHECK(allows(allow_list({"2001:db8::1/128"}), "2001:db8::1"));
  CHECK_FALSE(allows(allow_list({"2001:db8::1/128"}), "2001:db8::"));
  CHECK(allows(allow_list({"2001:db8:0:1::/64"}), "2001:db8:0:1:ffff::"));
  CHECK_FALSE(allows(allow_list({"2001:db8:0:1::/64"}), "2001:db8:0:2::"));
  CHECK(allows(allow_list({"2001:db8::8000:0:0:0/65"}), "2001:db8::ffff:0:0:0"));
  CHECK_FALSE(allows(allow_list({"2001:db8::8000:0:0:0/65"}), "2001:db8::7fff:0:0:0"));
  // IPv6 ranges wider than the IPv4-mapped space hold every IPv4 sender; the IPv4-compatible ::/96 none.
  CHECK(allows(allow_list({"::/64"}), "1.2.3.4"));
  CHECK(allows(allow_list({"::ffff:0:0/96"}), "1.2.3.4"));
  CHECK(allows(allow_list({"::fffe:0:0/95"}), "255.255.255.255"));
  CHECK_FALSE(allows(allow_list({"::/96"}), "1.2.3.4"));
  CHECK_FALSE(allows(allow_list({"::/96"}), "::ffff:1.2.3.4"));
  CHECK(allows(allow_list({"::/96"}), "::1.2.3.4"));
  CHECK_FALSE(allows(allow_list({"2001:db8::/32", "::1"}), "0.0.0.1"));
  CHECK(allows(allow_list({"128.0.0.0/1"}), "200.1.1.1"));
  CHECK_FALSE(allows(allow_list({"128.0.0.0/1"}), "127.255.255.255"));
}

TEST_CASE("every range of a long list counts, in whatever order IPv4 and IPv6 ones come") {
  const hermes::AllowList list = allow_list({"1.0.0.1", "2001:db8::1", "1.0.0.2", "1.0.0.3", "1.0.0.4", "1.0.0.5", "fd00::/8",
                                             "1.0.0.6", "1.0.0.7", "1.0.0.8", "1.0.0.9", "::1"});
  for (int i = 1; i <= 9; ++i) CHECK_MESSAGE(allows(list, "1.0.0." + std::to_string(i)), i);
  for (const char *other : {"1.0.0.0", "1.0.0.10", "0.0.0.0", "2001:db8::2", "fe00::1", "::2"}) CHECK_FALSE_MESSAGE(allows(list, other), other);
  for (const char *listed : {"2001:db8::1", "fd12::3", "::1", "::ffff:1.0.0.9"}) CHECK_MESSAGE(allows(list, listed), listed);
}

TEST_CASE("an IPv4 range matches IPv4-mapped IPv6 senders, and a mapped range IPv4 ones") {
  const hermes::AllowList list = allow_list({"127.0.0.0/8"});
  CHECK(allows(list, "::ffff:127.0.0.1"));
  CHECK(allows(list, "::ffff:127.1.2.3"));
  CHECK_FALSE(allows(list, "::ffff:128.0.0.1"));
  CHECK_FALSE(allows(list, "::127.0.0.1")); // IPv4-compatible, a different (deprecated) address
  CHECK_FALSE(allows(list, "::1"));
  const hermes::AllowList mapped = allow_list({"::ffff:10.0.0.0/104"});
  CHECK(allows(mapped, "10.9.8.7"));
  CHECK_FALSE(allows(mapped, "11.0.0.1"));
}

TEST_CASE("an empty allow list allows everyone; a full one refuses other families") {
  const hermes::AllowList empty;
  CHECK(empty.empty());
  CHECK(allows(empty, "203.0.113.9"));
  CHECK(allows(empty, "2001:db8::9"));
  sockaddr_un unix_address{};
  unix_address.sun_family = AF_UNIX;
  CHECK(empty.allows(reinterpret_cast<const sockaddr *>(&unix_address), sizeof unix_address));
  const hermes::AllowList list = allow_list({"::/0"});
  CHECK_FALSE(list.allows(reinterpret_cast<const sockaddr *>(&unix_address), sizeof unix_address));
  const auto cut = address_of("::1");
  CHECK_FALSE(list.allows(cut.get(), 0)); // no address told: nobody vouches for it
  CHECK(list.texts() == std::vector<std::string>{"::/0"});
}

TEST_CASE("a bad CIDR range says what is wrong with it") {
  CHECK(range_problem("10.0.0.0/8") == "");
  CHECK(range_problem("::ffff:1.2.3.4") == "");
  CHECK(range_problem("10.0.0.0/33") == "the prefix length \"33\" is not a number from 0 to 32");
  CHECK(range_problem("::/129") == "the prefix length \"129\" is not a number from 0 to 128");
  CHECK(range_problem("10.0.0.0/") == "the prefix length \"\" is not a number from 0 to 32");
  CHECK(range_problem("10.0.0.0/-1") == "the prefix length \"-1\" is not a number from 0 to 32");
  CHECK(range_problem("10.0.0.0/8/8") == "the prefix length \"8/8\" is not a number from 0 to 32");
  CHECK(range_problem("10.0.0.0/ 8") == "the prefix length \" 8\" is not a number from 0 to 32");
  CHECK(range_problem("") == "\"\" is not an IPv4 or IPv6 address");
  CHECK(range_problem("/8") == "\"\" is not an IPv4 or IPv6 address");
  CHECK(range_problem("localhost") == "\"localhost\" is not an IPv4 or IPv6 address");
  CHECK(range_problem("10.0.0") == "\"10.0.0\" is not an IPv4 or IPv6 address");
  CHECK(range_problem("256.0.0.0/8") == "\"256.0.0.0\" is not an IPv4 or IPv6 address");
  CHECK(range_problem("010.0.0.0/8") == "\"010.0.0.0\" is not an IPv4 or IPv6 address");
  CHECK(range_problem("fe80::1%eth0") == "\"fe80::1%eth0\" is not an IPv4 or IPv6 address");
  CHECK(range_problem("2001:db8:::/48") == "\"2001:db8:::\" is not an IPv4 or IPv6 address");
  CHECK(range_problem(std::string("1.2.3.4\0/8", 10)) == std::string("\"1.2.3.4\0\" is not an IPv4 or IPv6 address", 41));
  CHECK(range_problem("10.0.0.1/8") == "bits are set past the /8 prefix (the network is 10.0.0.0/8)");
  CHECK(range_problem("127.0.0.1/31") == "bits are set past the /31 prefix (the network is 127.0.0.0/31)");
  CHECK(range_problem("1.2.3.4/0") == "bits are set past the /0 prefix (the network is 0.0.0.0/0)");
  CHECK(range_problem("2001:db8::1/64") == "bits are set past the /64 prefix (the network is 2001:db8::/64)");
  CHECK(range_problem("2001:db8:ffff::/33") == "bits are set past the /33 prefix (the network is 2001:db8:8000::/33)");
}

// ---- config and environment ---------------------------------------------------------------

TEST_CASE("udp_allow and http_allow are read from the config, and a bad range names its place") {
  const hermes::Config config = hermes::parse_config(
      R"({"service_name": "s", "udp_allow": ["10.0.0.0/8", "::1"], "http_allow": ["192.0.2.0/24"]})", "config.json");
  CHECK(config.udp_allow.texts() == std::vector<std::string>{"10.0.0.0/8", "::1"});
  CHECK(config.http_allow.texts() == std::vector<std::string>{"192.0.2.0/24"});
  CHECK(hermes::parse_config(R"({"service_name": "s", "udp_allow": []})", "config.json").udp_allow.empty());
  CHECK(test::config_error(R"({"service_name": "s", "udp_allow": ["10.0.0.0/8", "10.0.0.0/33"]})") ==
        "config.json: udp_allow[1]: \"10.0.0.0/33\" is not a CIDR range: the prefix length \"33\" is not a number from 0 to 32");
  CHECK(test::config_error(R"({"service_name": "s", "http_allow": "10.0.0.0/8"})") ==
        "config.json: http_allow: expected a list of CIDR ranges, got a string");
  CHECK(test::config_error(R"({"service_name": "s", "http_allow": [8]})") == "config.json: http_allow[0]: expected a string, got a number");
  CHECK(test::config_error(R"({"service_name": "s", "http_allow": ["example.com"]})") ==
        "config.json: http_allow[0]: \"example.com\" is not a CIDR range: \"example.com\" is not an IPv4 or IPv6 address");
}

TEST_CASE("HERMES_UDP_ALLOW and HERMES_HTTP_ALLOW win over the config; empty counts as unset") {
  const hermes::Config config =
      hermes::parse_config(R"({"service_name": "s", "udp_allow": ["10.0.0.0/8"], "http_allow": ["::1"]})", "config.json");
  hermes::Options options = options_from({}, config);
  CHECK(options.udp_allow.texts() == std::vector<std::string>{"10.0.0.0/8"});
  CHECK(options.http_allow.texts() == std::vector<std::string>{"::1"});
  CHECK(options.http_token_file.empty());
  options = options_from({{"HERMES_UDP_ALLOW", "192.0.2.0/24, 2001:db8::/32 ,127.0.0.1"}, {"HERMES_HTTP_ALLOW", ""},
                          {"HERMES_HTTP_TOKEN_FILE", "/etc/hermes/token"}},
                         config);
  CHECK(options.udp_allow.texts() == std::vector<std::string>{"192.0.2.0/24", "2001:db8::/32", "127.0.0.1"});
  CHECK(allows(options.udp_allow, "127.0.0.1"));
  CHECK_FALSE(allows(options.udp_allow, "10.0.0.1"));
  CHECK(options.http_allow.texts() == std::vector<std::string>{"::1"});
  CHECK(options.http_token_file == "/etc/hermes/token");
  CHECK(options_from({}).udp_allow.empty());
  CHECK(options_from({}).http_allow.empty());
}

TEST_CASE("a bad range in the environment names the variable, the item and the problem") {
  CHECK(usage_error({{"HERMES_UDP_ALLOW", "10.0.0.0/8,10.0.0.0/33"}}) ==
        "HERMES_UDP_ALLOW: \"10.0.0.0/33\" (item 2) is not a CIDR range: the prefix length \"33\" is not a number from 0 to 32");
  CHECK(usage_error({{"HERMES_HTTP_ALLOW", "10.0.0.0/8,,::1"}}) ==
        "HERMES_HTTP_ALLOW: \"10.0.0.0/8,,::1\": (item 2) is empty; separate ranges by single commas");
  CHECK(usage_error({{"HERMES_HTTP_ALLOW", "::1,"}}) == "HERMES_HTTP_ALLOW: \"::1,\": (item 2) is empty; separate ranges by single commas");
  CHECK(usage_error({{"HERMES_UDP_ALLOW", "10.0.0.0/8 192.168.0.0/16"}}) ==
        "HERMES_UDP_ALLOW: \"10.0.0.0/8 192.168.0.0/16\" (item 1) is not a CIDR range: the prefix length \"8 192.168.0.0/16\" "
        "is not a number from 0 to 32");
  CHECK(usage_error({{"HERMES_UDP_ALLOW", "10.1.0.0/8"}}) ==
        "HERMES_UDP_ALLOW: \"10.1.0.0/8\" (item 1) is not a CIDR range: bits are set past the /8 prefix (the network is 10.0.0.0/8)");
}

// ---- the token and the answers ------------------------------------------------------------

TEST_CASE("a token file is read without its line end; a missing, empty or unfit one says why") {
  const TokenFile file;
  std::string token = "old";
  file.write("s3cr3t-T0ken_~+/=\n");
  CHECK(hermes::detail::read_token_file(file.path, token) == "");
  CHECK(token == "s3cr3t-T0ken_~+/=");
  file.write("crlf\r\n");
  CHECK(hermes::detail::read_token_file(file.path, token) == "");
  CHECK(token == "crlf");
  file.write("\n");
  CHECK(hermes::detail::read_token_file(file.path, token) == "http token file " + file.path + ": empty: it must hold the bearer token");
  CHECK(token == "crlf"); // unchanged by a failure
  file.write("two words\n");
  CHECK(hermes::detail::read_token_file(file.path, token) ==
        "http token file " + file.path + ": holds a space, a control character or a byte past ASCII, which a bearer token cannot");
  file.write("two\nlines\n");
  CHECK(hermes::detail::read_token_file(file.path, token) ==
        "http token file " + file.path + ": holds a space, a control character or a byte past ASCII, which a bearer token cannot");
  file.write(std::string(HERMES_MAX_TOKEN_SIZE, 'a'));
  CHECK(hermes::detail::read_token_file(file.path, token) == "");
  CHECK(token.size() == HERMES_MAX_TOKEN_SIZE);
  file.write(std::string(HERMES_MAX_TOKEN_SIZE + 1, 'a'));
  CHECK(hermes::detail::read_token_file(file.path, token) ==
        "http token file " + file.path + ": longer than " + std::to_string(HERMES_MAX_TOKEN_SIZE) + " bytes");
  CHECK(hermes::detail::read_token_file("/nonexistent/token", token) ==
        "http token file /nonexistent/token: cannot read: No such file or directory");
}

TEST_CASE("Authorization: Bearer with exactly the token, the scheme in any case") {
  using hermes::detail::bearer_matches;
  CHECK(bearer_matches("Bearer abc123", "abc123"));
  CHECK(bearer_matches("bearer abc123", "abc123"));
  CHECK(bearer_matches("BEARER   abc123", "abc123"));
  CHECK_FALSE(bearer_matches("Bearer abc124", "abc123"));
  CHECK_FALSE(bearer_matches("Bearer abc12", "abc123"));
  CHECK_FALSE(bearer_matches("Bearer abc1234", "abc123"));
  CHECK_FALSE(bearer_matches("Bearer ", "abc123"));
  CHECK_FALSE(bearer_matches("Bearer", "abc123"));
  CHECK_FALSE(bearer_matches("", "abc123"));
  CHECK_FALSE(bearer_matches("Basic abc123", "abc123"));
  CHECK_FALSE(bearer_matches("Bearerabc123", "abc123"));
  CHECK_FALSE(bearer_matches("abc123", "abc123"));
  CHECK_FALSE(bearer_matches(std::string("Bearer abc123\0", 14), "abc123"));
  CHECK(hermes::detail::equal_in_constant_time("", ""));
  CHECK_FALSE(hermes::detail::equal_in_constant_time("a", ""));
  CHECK_FALSE(hermes::detail::equal_in_constant_time("", "a"));
}

TEST_CASE("401 and 403 answers, byte for byte") {
  CHECK(hermes::detail::serialize_response(hermes::detail::error_response(401)) == unauthorized_401);
  CHECK(hermes::detail::serialize_response(hermes::detail::error_response(403)) == forbidden_403);
  CHECK(hermes::detail::serialize_response(hermes::detail::error_response(401, true)) ==
        unauthorized_401.substr(0, unauthorized_401.find("\r\n\r\n") + 4));
}

// ---- over the sockets ---------------------------------------------------------------------

TEST_CASE("a UDP allow list takes 127.0.0.1 and drops 127.0.0.2 unparsed, counted as forbidden_source") {
  std::vector<std::string> log;
  hermes::Options options = test::loopback_options(&log);
  options.udp_address = "0.0.0.0";
  options.udp_allow = allow_list({"192.0.2.0/24", "127.0.0.1/32"});
  hermes::Server server(test::sample_config(), options);
  push_from(server, "127.0.0.1", "127.0.0.1", counter_sample);
  push_from(server, "127.0.0.2", "127.0.0.1", counter_sample);
  push_from(server, "127.0.0.2", "127.0.0.1", "not json: never parsed");
  push_from(server, "127.0.0.1", "127.0.0.1", counter_sample);
  CHECK(server.registry().value("sample_counter", {"x"}) == std::optional<double>(2));
  CHECK(server.registry().rejected(hermes::Reject::forbidden_source) == 2);
  CHECK(server.registry().rejected(hermes::Reject::malformed_json) == 0);
  const std::string body = scrape(server);
  CHECK(contains_line(body, "hermes_samples_rejected_total{reason=\"forbidden_source\"} 2"));
  CHECK(contains_line(body, "hermes_udp_packets_total 4"));
  CHECK(contains_line(body, "hermes_samples_accepted_total 2"));
  CHECK(std::count_if(log.begin(), log.end(), [](const std::string &line) {
          return line.rfind("level=debug msg=\"datagram from a forbidden source dropped\" count=1 source=127.0.0.2:", 0) == 0;
        }) == 2);
  CHECK(log.front().find(" udp_allow=192.0.2.0/24,127.0.0.1/32 ") != std::string::npos);
}

TEST_CASE("the unix socket is not subject to the UDP allow list") {
  const std::string path = "/tmp/hermes-test-access-" + std::to_string(::getpid()) + ".sock";
  hermes::Options options = test::loopback_options();
  options.unix_socket_path = path;
  options.udp_allow = allow_list({"192.0.2.1"});
  hermes::Server server(test::sample_config(), options);
  hermes::detail::FileDescriptor fd(::socket(AF_UNIX, SOCK_DGRAM, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  REQUIRE(::sendto(fd.get(), counter_sample, std::strlen(counter_sample), 0, reinterpret_cast<sockaddr *>(&address), sizeof address) > 0);
  REQUIRE(test::pump_until(server, [&] { return server.stats().unix_datagrams == 1; }));
  CHECK(server.registry().value("sample_counter", {"x"}) == std::optional<double>(1));
  push_from(server, "127.0.0.1", "127.0.0.1", counter_sample);
  CHECK(server.registry().rejected(hermes::Reject::forbidden_source) == 1);
}

TEST_CASE("forbidden datagrams that arrive while /metrics renders are dropped and counted after it") {
  hermes::Options options = test::loopback_options();
  options.udp_allow = allow_list({"127.0.0.2"});
  hermes::Server server(test::sample_config(), options);
  // Series enough for the render to pause, and datagrams waiting when it starts.
  for (int i = 0; i < 3 * HERMES_RENDER_PAUSE_STRIDE; i += 50) {
    std::string batch = "[";
    for (int k = i; k < i + 50; ++k)
      batch += std::string(k > i ? "," : "") + R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": ")" +
               std::to_string(k) + "\"}}}";
    push_from(server, "127.0.0.2", "127.0.0.1", batch + "]");
  }
  const hermes::detail::FileDescriptor from_1 = socket_from("127.0.0.1", SOCK_DGRAM), from_2 = socket_from("127.0.0.2", SOCK_DGRAM);
  const auto to = address_of("127.0.0.1", server.udp_port());
  for (const auto *fd : {&from_1, &from_2, &from_1})
    REQUIRE(::sendto(fd->get(), counter_sample, std::strlen(counter_sample), 0, to.get(), to.length) > 0);
  const std::uint64_t packets = server.stats().udp_packets;
  const std::string body = server.render(); // takes the three off the socket during its pauses
  CHECK(server.stats().udp_packets == packets + 3);
  CHECK(server.registry().rejected(hermes::Reject::forbidden_source) == 2);
  CHECK(server.registry().value("sample_counter", {"x"}) == std::optional<double>(1));
  CHECK(contains_line(body, "hermes_samples_rejected_total{reason=\"forbidden_source\"} 0")); // counted after the render
}

TEST_CASE("IPv6: ::1 and IPv4-mapped senders on a dual-stack socket against the allow list") {
  if (!ipv6_loopback_works()) return;
  hermes::Options options = test::loopback_options();
  options.udp_address = "::"; // dual-stack: IPv4 senders arrive as ::ffff:a.b.c.d
  options.http_address = "::";
  options.udp_allow = allow_list({"127.0.0.1", "::1"});
  options.http_allow = allow_list({"::1"});
  hermes::Server server(test::sample_config(), options);
  push_from(server, "::1", "::1", counter_sample);
  // A new IPv6 socket takes the system's default, net.ipv6.bindv6only: 0 on Linux unless changed.
  const hermes::detail::FileDescriptor probe(::socket(AF_INET6, SOCK_DGRAM, 0));
  int v6_only = 1;
  socklen_t length = sizeof v6_only;
  REQUIRE(::getsockopt(probe.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6_only, &length) == 0);
  if (v6_only == 0) {
    push_from(server, "127.0.0.1", "127.0.0.1", counter_sample);
    push_from(server, "127.0.0.2", "127.0.0.1", counter_sample);
    CHECK(server.registry().value("sample_counter", {"x"}) == std::optional<double>(2));
    CHECK(server.registry().rejected(hermes::Reject::forbidden_source) == 1);
    CHECK(http_from(server, "127.0.0.1", "127.0.0.1", "GET /-/healthy HTTP/1.0\r\n\r\n") == forbidden_403);
  } else {
    MESSAGE("IPv6 sockets here are IPv6-only (net.ipv6.bindv6only=1): the IPv4-mapped part does not run");
  }
  CHECK(http_from(server, "::1", "::1", "GET /-/healthy HTTP/1.0\r\n\r\n").rfind("HTTP/1.0 200 OK\r\n", 0) == 0);
  hermes::Options only_v4 = test::loopback_options();
  only_v4.udp_address = "::1";
  only_v4.udp_allow = allow_list({"127.0.0.0/8"});
  hermes::Server v4_list(test::sample_config(), only_v4);
  push_from(v4_list, "::1", "::1", counter_sample);
  CHECK(v4_list.registry().rejected(hermes::Reject::forbidden_source) == 1);
  CHECK_FALSE(v4_list.registry().value("sample_counter", {"x"}).has_value());
}

TEST_CASE("an HTTP allow list answers others 403 after reading their request, and counts it") {
  hermes::Options options = test::loopback_options();
  options.http_address = "0.0.0.0";
  options.http_allow = allow_list({"127.0.0.1"});
  hermes::Server server(test::sample_config(), options);
  CHECK(http_from(server, "127.0.0.2", "127.0.0.1", "GET /metrics HTTP/1.0\r\n\r\n") == forbidden_403);
  CHECK(http_from(server, "127.0.0.2", "127.0.0.1", "GET /-/healthy HTTP/1.0\r\n\r\n") == forbidden_403);
  CHECK(http_from(server, "127.0.0.2", "127.0.0.1", "BLAH\r\n\r\n") == forbidden_403);
  CHECK(http_from(server, "127.0.0.2", "127.0.0.1", "HEAD / HTTP/1.0\r\n\r\n") == forbidden_403.substr(0, forbidden_403.size() - 14));
  const std::string huge = "GET /metrics HTTP/1.0\r\nX-Fill: " + std::string(HERMES_MAX_REQUEST_HEAD, 'a') + "\r\n\r\n";
  CHECK(http_from(server, "127.0.0.2", "127.0.0.1", huge) == forbidden_403);
  CHECK(http_from(server, "127.0.0.1", "127.0.0.1", "GET /-/ready HTTP/1.0\r\n\r\n").rfind("HTTP/1.0 200 OK\r\n", 0) == 0);
  const std::string body = scrape(server);
  CHECK(contains_line(body, "hermes_http_requests_total{code=\"403\"} 5"));
  CHECK(contains_line(body, "hermes_http_requests_total{code=\"200\"} 1"));
  CHECK(contains_line(body, "hermes_http_requests_total{code=\"401\"} 0"));
}

namespace {

// A client from `source` that connects and says nothing; the server has taken it once
// it has stepped.
hermes::detail::FileDescriptor idle_from(hermes::Server &server, const std::string &source) {
  hermes::detail::FileDescriptor fd = socket_from(source, SOCK_STREAM);
  ::fcntl(fd.get(), F_SETFL, O_NONBLOCK);
  const auto to = address_of("127.0.0.1", server.http_port());
  const int status = ::connect(fd.get(), to.get(), to.length);
  REQUIRE((status == 0 || errno == EINPROGRESS));
  server.poll_once(1);
  return fd;
}

// Whether the server has closed this client's connection.
bool closed_by_server(const hermes::detail::FileDescriptor &fd) {
  char byte;
  const ssize_t n = ::recv(fd.get(), &byte, 1, 0);
  return n == 0 || (n < 0 && errno != EAGAIN);
}

} // namespace

TEST_CASE("in a full house, forbidden clients make room first and never push out allowed ones") {
  hermes::Options options = test::loopback_options();
  options.http_allow = allow_list({"127.0.0.1"});
  hermes::Server server(test::sample_config(), options);
  std::vector<hermes::detail::FileDescriptor> clients;
  clients.push_back(idle_from(server, "127.0.0.1")); // the oldest
  clients.push_back(idle_from(server, "127.0.0.2")); // forbidden
  while (clients.size() < HERMES_MAX_CONNECTIONS) clients.push_back(idle_from(server, "127.0.0.1"));
  for (int i = 0; i < 10; ++i) server.poll_once(1);
  // A forbidden newcomer finds no forbidden reader but the one, whose place it takes.
  CHECK(http_from(server, "127.0.0.2", "127.0.0.1", "GET / HTTP/1.0\r\n\r\n") == forbidden_403);
  CHECK(closed_by_server(clients[1]));
  CHECK_FALSE(closed_by_server(clients[0]));
  // With the house full of allowed clients again, another is answered 403 (in one of the
  // places kept for refusals) without any allowed client losing its place.
  for (int i = 0; i < 10; ++i) server.poll_once(1); // the answered client's close is seen
  clients.push_back(idle_from(server, "127.0.0.1"));
  CHECK(http_from(server, "127.0.0.2", "127.0.0.1", "GET / HTTP/1.0\r\n\r\n") == forbidden_403);
  for (int i = 0; i < 10; ++i) server.poll_once(1);
  for (std::size_t i = 0; i < clients.size(); ++i)
    if (i != 1) CHECK_FALSE_MESSAGE(closed_by_server(clients[i]), "client " << i);
  // An allowed newcomer takes the place of the oldest allowed one.
  CHECK(http_from(server, "127.0.0.1", "127.0.0.1", "GET /-/ready HTTP/1.0\r\n\r\n").rfind("HTTP/1.0 200 OK\r\n", 0) == 0);
  CHECK(closed_by_server(clients[0]));
  CHECK_FALSE(closed_by_server(clients[2]));
}

TEST_CASE("with a token file, /metrics and / need the bearer token; the probes stay open") {
  const TokenFile file;
  file.write("first-token\n");
  std::vector<std::string> log;
  hermes::Options options = test::loopback_options(&log);
  options.http_token_file = file.path;
  hermes::Server server(test::sample_config(), options);
  CHECK(test::http(server, "GET /metrics HTTP/1.0\r\n\r\n") == unauthorized_401);
  CHECK(test::http(server, "GET / HTTP/1.0\r\n\r\n") == unauthorized_401);
  CHECK(test::http(server, "GET /metrics HTTP/1.0\r\nAuthorization: Bearer wrong-token\r\n\r\n") == unauthorized_401);
  CHECK(test::http(server, "GET /metrics HTTP/1.0\r\nAuthorization: Basic Zmlyc3QtdG9rZW4=\r\n\r\n") == unauthorized_401);
  CHECK(test::http(server, "HEAD /metrics HTTP/1.0\r\n\r\n") == unauthorized_401.substr(0, unauthorized_401.size() - 17));
  CHECK(test::http(server, "POST /metrics HTTP/1.0\r\n\r\n") == unauthorized_401);
  CHECK(test::http(server, "GET /-/healthy HTTP/1.0\r\n\r\n").rfind("HTTP/1.0 200 OK\r\n", 0) == 0);
  CHECK(test::http(server, "GET /-/ready HTTP/1.0\r\n\r\n").rfind("HTTP/1.0 200 OK\r\n", 0) == 0);
  CHECK(test::http(server, "GET /other HTTP/1.0\r\n\r\n").rfind("HTTP/1.0 404 Not Found\r\n", 0) == 0);
  const std::string index = test::http(server, "GET / HTTP/1.0\r\nAuthorization: bearer first-token\r\n\r\n");
  CHECK(index.rfind("HTTP/1.0 200 OK\r\n", 0) == 0);
  const std::string body = scrape(server, "Authorization: Bearer first-token\r\n");
  CHECK(contains_line(body, "hermes_http_requests_total{code=\"401\"} 6"));
  CHECK(log.front().find(" http_token_file=" + file.path + " ") != std::string::npos);
  for (const std::string &line : log) CHECK(line.find("first-token") == std::string::npos); // never logged
}

TEST_CASE("SIGHUP's reload reads the token file again; a missing or empty one keeps the token and counts as failed") {
  const std::string config_path = "/tmp/hermes-test-token-config-" + std::to_string(::getpid()) + ".json";
  std::ofstream(config_path) << test::sample_config_json;
  const TokenFile file;
  file.write("first-token\n");
  std::vector<std::string> log;
  hermes::Options options = test::loopback_options(&log);
  options.http_token_file = file.path;
  options.config_path = config_path;
  hermes::Server server(test::sample_config(), options);
  const auto status_with = [&](const std::string &token) {
    return test::http(server, "GET /metrics HTTP/1.0\r\nAuthorization: Bearer " + token + "\r\n\r\n").substr(0, 12);
  };
  file.write("second-token");
  CHECK(server.reload());
  CHECK(log.back() == "level=info msg=\"token reloaded\" path=" + file.path);
  CHECK(status_with("second-token") == "HTTP/1.0 200");
  CHECK(status_with("first-token") == "HTTP/1.0 401");
  file.write("");
  CHECK_FALSE(server.reload());
  CHECK(log.back() == "level=error msg=\"token reload failed; the token in force stays\" error=\"http token file " + file.path +
                          ": empty: it must hold the bearer token\"");
  CHECK(status_with("second-token") == "HTTP/1.0 200");
  std::remove(file.path.c_str());
  CHECK_FALSE(server.reload());
  CHECK(status_with("second-token") == "HTTP/1.0 200");
  const std::string body = scrape(server, "Authorization: Bearer second-token\r\n");
  CHECK(contains_line(body, "hermes_config_reloads_total{result=\"success\"} 1"));
  CHECK(contains_line(body, "hermes_config_reloads_total{result=\"failure\"} 2"));
  std::remove(config_path.c_str());
}

TEST_CASE("SIGHUP's reload reads the push token file again; a bad or unreadable one keeps the push token and counts as failed") {
  const std::string config_path = "/tmp/hermes-test-push-token-config-" + std::to_string(::getpid()) + ".json";
  std::ofstream(config_path) << test::sample_config_json;
  const TokenFile file;
  file.write("first-push\n");
  std::vector<std::string> log;
  hermes::Options options = test::loopback_options(&log);
  options.push_token_file = file.path;
  options.config_path = config_path;
  hermes::Server server(test::sample_config(), options);
  const auto push_with = [&](const std::string &token) {
    return test::http(server, "PUT /metrics/job/j HTTP/1.0\r\nContent-Length: 4\r\nAuthorization: Bearer " + token +
                                  "\r\n\r\nx 1\n").substr(0, 12);
  };
  CHECK(push_with("first-push") == "HTTP/1.0 200");
  file.write("second-push\n");
  CHECK(server.reload());
  CHECK(log.back() == "level=info msg=\"push token reloaded\" path=" + file.path);
  CHECK(push_with("second-push") == "HTTP/1.0 200");
  CHECK(push_with("first-push") == "HTTP/1.0 401");
  file.write("two words\n");
  CHECK_FALSE(server.reload());
  CHECK(log.back() == "level=error msg=\"push token reload failed; the push token in force stays\" error=\"push token file " +
                          file.path + ": holds a space, a control character or a byte past ASCII, which a bearer token cannot\"");
  CHECK(push_with("second-push") == "HTTP/1.0 200");
  std::remove(file.path.c_str());
  CHECK_FALSE(server.reload());
  CHECK(log.back() == "level=error msg=\"push token reload failed; the push token in force stays\" error=\"push token file " +
                          file.path + ": cannot read: No such file or directory\"");
  CHECK(push_with("second-push") == "HTTP/1.0 200");
  CHECK(push_with("") == "HTTP/1.0 401");
  const std::string body = scrape(server, "");
  CHECK(contains_line(body, "hermes_config_reloads_total{result=\"success\"} 1"));
  CHECK(contains_line(body, "hermes_config_reloads_total{result=\"failure\"} 2"));
  std::remove(config_path.c_str());
}

TEST_CASE("a missing or empty token file stops the server at start, naming the file") {
  const TokenFile file;
  hermes::Options options = test::loopback_options();
  options.http_token_file = file.path;
  CHECK_THROWS_WITH_AS(hermes::Server(test::sample_config(), options),
                       ("http token file " + file.path + ": empty: it must hold the bearer token").c_str(), hermes::ConfigError);
  options.http_token_file = "/nonexistent/token";
  CHECK_THROWS_WITH_AS(hermes::Server(test::sample_config(), options),
                       "http token file /nonexistent/token: cannot read: No such file or directory", hermes::ConfigError);
}
