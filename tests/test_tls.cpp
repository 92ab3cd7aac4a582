// TLS (HERMES_TLS): the stream's client side, as remote write will use it, against Hermes'
// own server side and against openssl s_server, over loopback sockets stepped from the
// test's thread; and what one TLS connection holds in memory. Certificates are made with
// openssl once, in a folder of the test's own.
#include "helpers.hpp"

#ifdef HERMES_TLS

#include <malloc.h>
#include <map>
#include <signal.h>
#include <sys/wait.h>

using hermes::detail::FileDescriptor;
using hermes::detail::TlsClientSettings;
using hermes::detail::TlsContext;
using hermes::detail::TlsStream;

namespace {

// A root that signs the server's certificate (localhost, 127.0.0.1), a client root that
// signs a client's, and a stranger root that signs another client's.
class Pki {
public:
  Pki() {
    authority("root");
    leaf("server", "root", "subjectAltName=DNS:localhost,IP:127.0.0.1");
    authority("client-root");
    leaf("client", "client-root", "extendedKeyUsage=clientAuth");
    authority("stranger-root");
    leaf("stranger", "stranger-root", "extendedKeyUsage=clientAuth");
  }
  std::string file(const std::string &name) const { return dir_.file(name); }

private:
  void openssl(const std::string &arguments) const {
    const std::string command = "cd '" + dir_.file("") + "' && openssl " + arguments + " >/dev/null 2>&1";
    REQUIRE_MESSAGE(std::system(command.c_str()) == 0, "failed: openssl " << arguments);
  }
  void key(const std::string &name) const {
    openssl("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out " + name + ".key");
  }
  void authority(const std::string &name) const {
    key(name);
    openssl("req -x509 -new -key " + name + ".key -out " + name + ".pem -days 30 -subj /CN=" + name);
  }
  void leaf(const std::string &name, const std::string &issuer, const std::string &extensions) const {
    key(name);
    std::ofstream(dir_.file(name + ".ext")) << extensions << "\n";
    openssl("req -new -key " + name + ".key -out " + name + ".csr -subj /CN=" + name);
    openssl("x509 -req -in " + name + ".csr -CA " + issuer + ".pem -CAkey " + issuer + ".key -CAcreateserial -out " + name +
            ".pem -days 20 -extfile " + name + ".ext");
  }
  test::TempDir dir_;
};

const Pki &pki() {
  static const Pki made;
  return made;
}

hermes::Options tls_options(bool client_ca = false) {
  hermes::Options options = test::loopback_options();
  options.tls_cert_file = pki().file("server.pem");
  options.tls_key_file = pki().file("server.key");
  if (client_ca) options.tls_client_ca_file = pki().file("client-root.pem");
  return options;
}

std::shared_ptr<const TlsContext> client_context(const std::string &certificate = "") {
  TlsClientSettings settings;
  settings.ca_file = pki().file("root.pem");
  if (!certificate.empty()) settings.cert_file = pki().file(certificate + ".pem"), settings.key_file = pki().file(certificate + ".key");
  return TlsContext::for_client(settings);
}

FileDescriptor connect_to(std::uint16_t port) {
  FileDescriptor fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const int status = ::connect(fd.get(), reinterpret_cast<sockaddr *>(&address), sizeof address);
  REQUIRE((status == 0 || errno == EINPROGRESS));
  return fd;
}

// One step of the other side: the server's loop, or a wait for the socket as the
// stream asks (another process answers).
void step(hermes::Server *server, int fd, const TlsStream &stream) {
  if (server) return server->poll_once(5);
  pollfd entry{fd, stream.poll_events(), 0};
  ::poll(&entry, 1, 5);
}

// Steps the handshake to its end: "" when done, else the client's error.
std::string handshake(hermes::Server *server, int fd, TlsStream &client) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30); // valgrind is slow
  while (!client.handshake()) {
    if (client.failed()) return client.error();
    REQUIRE(std::chrono::steady_clock::now() < give_up);
    step(server, fd, client);
  }
  return "";
}

// Whether `received` holds one whole answer, as far as its Content-Length says.
bool whole_answer(const std::string &received) {
  const std::size_t head_end = received.find("\r\n\r\n"), field = received.find("\r\nContent-Length: ");
  return head_end != std::string::npos && field < head_end && received.size() == head_end + 4 + std::stoul(received.substr(field + 18));
}

// Writes `request` and reads until the other side ends the stream, or with `kept` (a
// connection that stays open) until one whole answer has come.
std::string exchange(hermes::Server *server, int fd, TlsStream &client, const std::string &request, bool kept = false) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30); // valgrind is slow
  std::size_t sent = 0;
  std::string received;
  char buffer[16384];
  for (;;) {
    REQUIRE(std::chrono::steady_clock::now() < give_up);
    if (sent < request.size()) {
      const std::ptrdiff_t n = client.write(request.data() + sent, request.size() - sent);
      if (n > 0) sent += static_cast<std::size_t>(n);
    } else {
      const std::ptrdiff_t n = client.read(buffer, sizeof buffer);
      if (n == 0) return received;
      if (n > 0) received.append(buffer, static_cast<std::size_t>(n));
      if (kept && whole_answer(received)) return received;
    }
    REQUIRE_MESSAGE(!client.failed(), client.error());
    if (client.wait() != hermes::detail::TlsWait::nothing) step(server, fd, client);
  }
}

// A free loopback port: bound, then let go.
std::uint16_t free_port() {
  FileDescriptor fd(::socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr *>(&address), sizeof address) == 0);
  return hermes::detail::local_port(fd.get());
}

// Bytes the C library's heap holds for the program.
std::size_t heap_in_use() { return mallinfo2().uordblks; }

} // namespace

TEST_CASE("the TLS client verifies Hermes' certificate by DNS name and by IP address, and reads over it") {
  hermes::Server server(test::sample_config(), tls_options());
  const auto context = client_context();
  for (const char *host : {"localhost", "127.0.0.1"}) {
    CAPTURE(host);
    FileDescriptor fd = connect_to(server.http_port());
    TlsStream client(context, fd.get(), host);
    REQUIRE(handshake(&server, fd.get(), client) == "");
    CHECK(test::body_of(exchange(&server, fd.get(), client, "GET /-/healthy HTTP/1.0\r\n\r\n")) == "Hermes is Healthy.\n");
  }
  for (const char *host : {"other.example", "127.0.0.2", "::1"}) {
    CAPTURE(host);
    FileDescriptor fd = connect_to(server.http_port());
    TlsStream client(context, fd.get(), host);
    CHECK(handshake(&server, fd.get(), client) ==
          "certificate verification failed: The certificate Common Name (CN) does not match with the expected CN");
  }
  REQUIRE(test::pump_until(server, [&] { return server.stats().tls_handshakes_failed == 3; }));
  CHECK(server.stats().tls_handshakes_ok == 2);
  CHECK(server.stats().tls_handshakes_timeout == 0);
}

TEST_CASE("a TLS connection carries one request after another, sent ahead too, on one handshake") {
  hermes::Server server(test::sample_config(), tls_options());
  FileDescriptor fd = connect_to(server.http_port());
  TlsStream client(client_context(), fd.get(), "localhost");
  REQUIRE(handshake(&server, fd.get(), client) == "");
  const std::string healthy = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n\r\nHermes is Healthy.\n";
  const std::string ready = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 17\r\n\r\nHermes is Ready.\n";
  CHECK(exchange(&server, fd.get(), client, "GET /-/healthy HTTP/1.1\r\n\r\n", true) == healthy);
  CHECK(exchange(&server, fd.get(), client, "GET /-/ready HTTP/1.1\r\n\r\n", true) == ready);
  const std::string metrics = exchange(&server, fd.get(), client, "GET /metrics HTTP/1.1\r\n\r\n", true);
  CHECK(test::body_of(metrics).rfind("# HELP hermes_build_info", 0) == 0);
  CHECK(exchange(&server, fd.get(), client, "GET /-/ready HTTP/1.1\r\n\r\nGET /-/healthy HTTP/1.1\r\nConnection: close\r\n\r\n") ==
        ready + "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\nConnection: close\r\n\r\n"
                "Hermes is Healthy.\n");
  CHECK(server.stats().tls_handshakes_ok == 1);
  CHECK(server.stats().http_requests.at(200) == 5);
}

TEST_CASE("the TLS client shows its certificate when the server asks, and is refused without one") {
  std::vector<std::string> log;
  hermes::Options options = tls_options(true);
  options.log_sink = [&log](const std::string &line) { log.push_back(line); };
  hermes::Server server(test::sample_config(), options);
  {
    FileDescriptor fd = connect_to(server.http_port());
    TlsStream client(client_context("client"), fd.get(), "127.0.0.1");
    REQUIRE(handshake(&server, fd.get(), client) == "");
    CHECK(test::body_of(exchange(&server, fd.get(), client, "GET /-/ready HTTP/1.0\r\n\r\n")) == "Hermes is Ready.\n");
  }
  for (const char *certificate : {"", "stranger"}) {
    CAPTURE(certificate);
    FileDescriptor fd = connect_to(server.http_port());
    TlsStream client(client_context(certificate), fd.get(), "127.0.0.1");
    CHECK_FALSE(handshake(&server, fd.get(), client).empty());
  }
  REQUIRE(test::pump_until(server, [&] { return server.stats().tls_handshakes_failed == 2; }));
  CHECK(server.stats().tls_handshakes_ok == 1);
  const auto failures = std::count_if(log.begin(), log.end(), [](const std::string &line) {
    return line.find("msg=\"TLS handshake failed\" client=127.0.0.1:") != std::string::npos;
  });
  CHECK(failures == 1); // the second waits for the next interval, counted in failed_unlogged
}

TEST_CASE("the TLS client speaks to openssl s_server") {
  const std::uint16_t port = free_port();
  const std::string command = "exec openssl s_server -quiet -www -accept 127.0.0.1:" + std::to_string(port) + " -cert '" +
                              pki().file("server.pem") + "' -key '" + pki().file("server.key") + "' >/dev/null 2>&1";
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char *>(nullptr));
    ::_exit(127);
  }
  std::string answer, error = "not tried";
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!error.empty() && std::chrono::steady_clock::now() < give_up) { // until s_server listens
    FileDescriptor fd = connect_to(port);
    TlsStream client(client_context(), fd.get(), "localhost");
    error = handshake(nullptr, fd.get(), client);
    if (error.empty()) answer = exchange(nullptr, fd.get(), client, "GET / HTTP/1.0\r\n\r\n");
    else std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(pid, SIGTERM);
  ::waitpid(pid, nullptr, 0);
  CHECK(error == "");
  CHECK(answer.rfind("HTTP/1.0 200 ok\r\n", 0) == 0);
  CHECK(answer.find("Protocol  : TLSv1.2") != std::string::npos);
}

TEST_CASE("TLS files that cannot serve are ConfigErrors naming the file and the problem") {
  TlsClientSettings settings;
  settings.ca_file = pki().file("missing.pem");
  CHECK_THROWS_WITH_AS(TlsContext::for_client(settings),
                       ("TLS CA file " + pki().file("missing.pem") + ": cannot read: No such file or directory").c_str(),
                       hermes::ConfigError);
  settings.ca_file = pki().file("root.pem");
  settings.cert_file = pki().file("client.pem");
  CHECK_THROWS_WITH_AS(TlsContext::for_client(settings), "TLS client certificate: a certificate file and a key file go together",
                       hermes::ConfigError);
  settings.key_file = pki().file("server.key");
  CHECK_THROWS_WITH_AS(TlsContext::for_client(settings),
                       ("TLS key file " + pki().file("server.key") + ": the key does not match the certificate in " +
                        pki().file("client.pem")).c_str(),
                       hermes::ConfigError);
  hermes::Options options = tls_options();
  options.tls_key_file.clear();
  CHECK_THROWS_WITH_AS(hermes::Server(test::sample_config(), options),
                       "HERMES_TLS_CERT_FILE and HERMES_TLS_KEY_FILE (tls_server.cert_file and key_file) go together",
                       hermes::ConfigError);
}

TEST_CASE("a TLS port takes every connection's TLS share of the memory budget at start") {
  hermes::Server plain(test::sample_config(), test::loopback_options());
  hermes::Server tls(test::sample_config(), tls_options());
  CHECK(tls.stats().memory_used_bytes - plain.stats().memory_used_bytes ==
        double(hermes::detail::HttpFrontEnd::most_connections * HERMES_TLS_CONNECTION_BYTES));
  hermes::Options small = tls_options();
  small.max_memory = hermes::detail::fixed_buffer_bytes + 1024 * 1024; // room for the buffers, not the TLS share
  CHECK_THROWS_AS(hermes::Server(test::sample_config(), small), hermes::UsageError);
}

// Each step of a handshake may sign (milliseconds of CPU): a loop step takes at most
// HERMES_TLS_HANDSHAKES_PER_STEP of them, oldest connection first, and reads the
// datagram sockets before the next, so that a flood of ClientHellos cannot starve ingest.
TEST_CASE("a loop step takes HERMES_TLS_HANDSHAKES_PER_STEP handshake steps, oldest first, and reads datagrams between") {
  hermes::Server server(test::sample_config(), tls_options());
  const auto context = client_context();
  constexpr std::size_t count = HERMES_TLS_HANDSHAKES_PER_STEP * 3;
  std::vector<FileDescriptor> fds;
  std::vector<std::unique_ptr<TlsStream>> clients;
  for (std::size_t i = 0; i < count; ++i) fds.push_back(connect_to(server.http_port()));
  server.poll_once(100); // accepts them all, in the order they came
  for (std::size_t i = 0; i < count; ++i) {
    clients.push_back(std::make_unique<TlsStream>(context, fds[i].get(), "localhost"));
    REQUIRE_FALSE(clients.back()->handshake()); // its ClientHello, sent
  }
  const auto answered = [&] {
    std::size_t first_flights = 0;
    for (std::size_t i = 0; i < count; ++i) {
      pollfd entry{fds[i].get(), POLLIN, 0};
      if (::poll(&entry, 1, 0) == 1) CHECK(i == first_flights++); // in the order they came
    }
    return first_flights;
  };
  for (std::size_t step = 1; step <= 3; ++step) {
    CAPTURE(step);
    test::send_udp(server.udp_port(), R"({"metric_name": "plain_counter", "payload": {}})");
    server.poll_once(100);
    CHECK(answered() == step * HERMES_TLS_HANDSHAKES_PER_STEP);
    CHECK(server.stats().udp_packets == step);
  }
}

// The heap a server stream holds, measured over many connections through socket pairs:
// mid-handshake (after its first flight, the handshake's keys alive) and once
// established, with client certificates asked for (the peer's certificate is kept).
// Excluded under the sanitizers and valgrind, whose allocators mallinfo2 cannot see.
TEST_CASE("per TLS connection memory stays within HERMES_TLS_CONNECTION_BYTES") {
  constexpr std::size_t count = 32;
  TlsClientSettings client_settings;
  client_settings.ca_file = pki().file("root.pem");
  client_settings.cert_file = pki().file("client.pem"), client_settings.key_file = pki().file("client.key");
  const auto client_context = TlsContext::for_client(client_settings);
  const auto server_context = TlsContext::for_server({pki().file("server.pem"), pki().file("server.key"), pki().file("client-root.pem")});
  std::vector<FileDescriptor> ends;
  std::vector<std::unique_ptr<TlsStream>> clients, servers;
  for (std::size_t i = 0; i < count; ++i) {
    int pair[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair) == 0);
    ends.emplace_back(pair[0]), ends.emplace_back(pair[1]);
    clients.push_back(std::make_unique<TlsStream>(client_context, pair[0], "localhost"));
    CHECK_FALSE(clients.back()->handshake()); // its ClientHello
  }
  const std::size_t before = heap_in_use();
  for (std::size_t i = 0; i < count; ++i) {
    servers.push_back(std::make_unique<TlsStream>(server_context, ends[2 * i + 1].get()));
    CHECK_FALSE(servers.back()->handshake()); // reads the ClientHello, sends its flight
  }
  const std::size_t mid_handshake = (heap_in_use() - before) / count;
  for (int round = 0; round < 8; ++round)
    for (std::size_t i = 0; i < count; ++i) clients[i]->handshake(), servers[i]->handshake();
  for (std::size_t i = 0; i < count; ++i) REQUIRE((clients[i]->handshake_done() && servers[i]->handshake_done()));
  clients.clear();
  const std::size_t with_servers = heap_in_use();
  servers.clear();
  const std::size_t established = (with_servers - heap_in_use()) / count;
  MESSAGE("bytes per TLS connection: " << mid_handshake << " mid-handshake, " << established << " established");
  CHECK(mid_handshake <= HERMES_TLS_CONNECTION_BYTES);
  CHECK(established <= HERMES_TLS_CONNECTION_BYTES);
  CHECK(mid_handshake > 32 * 1024); // two 16 KiB record buffers: a measure, not a wild guess
}

#else // HERMES_TLS

TEST_CASE("without HERMES_TLS, a TLS certificate is an error that says TLS is not compiled in") {
  hermes::Options options = test::loopback_options();
  options.tls_cert_file = "cert.pem";
  options.tls_key_file = "key.pem";
  CHECK_THROWS_WITH_AS(hermes::Server(test::sample_config(), options),
                       "HERMES_TLS_CERT_FILE (tls_server): TLS is not compiled in: build Hermes with -DHERMES_TLS and mbedTLS",
                       hermes::ConfigError);
}

#endif // HERMES_TLS

TEST_CASE("tls_server in the config: both files or neither, and TLS12 the only minimum") {
  const hermes::Config config = hermes::parse_config(
      R"({"service_name": "s", "tls_server": {"cert_file": "c.pem", "key_file": "k.pem", "client_ca_file": "ca.pem", "min_version": "TLS12"}})",
      "config.json");
  CHECK(config.tls_server.cert_file == "c.pem");
  CHECK(config.tls_server.key_file == "k.pem");
  CHECK(config.tls_server.client_ca_file == "ca.pem");
  CHECK(test::config_error(R"({"service_name": "s", "tls_server": {"cert_file": "c.pem"}})") ==
        "config.json: tls_server: cert_file and key_file go together");
  CHECK(test::config_error(R"({"service_name": "s", "tls_server": {"client_ca_file": "ca.pem"}})") ==
        "config.json: tls_server: client_ca_file needs cert_file and key_file");
  CHECK(test::config_error(R"({"service_name": "s", "tls_server": {"cert_file": "c", "key_file": "k", "min_version": "TLS13"}})") ==
        "config.json: tls_server.min_version: TLS13 is not available: Hermes' TLS library (mbedTLS 2.28) speaks TLS 1.2");
  CHECK(test::config_error(R"({"service_name": "s", "tls_server": {"cert_file": "c", "key_file": "k", "min_version": "TLS11"}})") ==
        "config.json: tls_server.min_version: \"TLS11\" is not accepted: TLS12 is the only minimum (TLS 1.0 and 1.1 are not spoken)");
  CHECK(test::config_error(R"({"service_name": "s", "tls_server": {"cert": "c"}})") ==
        "config.json: tls_server.cert: unknown key (expected one of: cert_file, key_file, client_ca_file, min_version)");
  std::map<std::string, std::string> env = {{"HERMES_TLS_CERT_FILE", "env.pem"}, {"HERMES_TLS_CLIENT_CA_FILE", "env-ca.pem"}};
  const hermes::Options options = hermes::options_from_environment(config, [&env](const char *name) -> const char * {
    const auto found = env.find(name);
    return found == env.end() ? nullptr : found->second.c_str();
  });
  CHECK(options.tls_cert_file == "env.pem");
  CHECK(options.tls_key_file == "k.pem");
  CHECK(options.tls_client_ca_file == "env-ca.pem");
}
