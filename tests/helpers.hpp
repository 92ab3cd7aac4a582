// Shared by the unit tests: the sample config, file reading, and small socket clients
// that drive a hermes::Server step by step from the test's own thread.
#ifndef HERMES_TEST_HELPERS_HPP
#define HERMES_TEST_HELPERS_HPP

#include "hermes.hpp"

#include <doctest/doctest.h>

#include <dirent.h>
#include <fstream>
#include <sys/stat.h>
#include <sys/un.h>
#include <sstream>
#include <string>

namespace test {

constexpr const char *sample_config_json = R"({"service_name": "testing-service",
 "gauges":   [{"metric_name": "sample_gauge", "metric_description": "gauges are awesome", "labels": ["label_1", "label_2"]}],
 "counters": [{"metric_name": "sample_counter", "metric_description": "counters are awesome too", "labels": ["label_1"]}]})";

inline hermes::Config sample_config() { return hermes::parse_config(sample_config_json, "config.json"); }

inline std::string read_file(const std::string &path) {
  std::ifstream file(path, std::ios::binary);
  REQUIRE_MESSAGE(file.good(), "cannot open " << path);
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

inline std::string test_path(const std::string &name) { return std::string(HERMES_TEST_DIR) + "/" + name; }

// A fresh folder of the test's own under $TMPDIR (or /tmp), removed with all it holds.
class TempDir {
public:
  TempDir() {
    const char *base = std::getenv("TMPDIR");
    std::string pattern = std::string(base && *base ? base : "/tmp") + "/hermes-test-XXXXXX";
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  TempDir(const TempDir &) = delete;
  TempDir &operator=(const TempDir &) = delete;
  ~TempDir() {
    if (DIR *dir = ::opendir(path_.c_str())) {
      while (const dirent *entry = ::readdir(dir))
        if (std::string(entry->d_name) != "." && std::string(entry->d_name) != "..") ::unlink(file(entry->d_name).c_str());
      ::closedir(dir);
    }
    ::rmdir(path_.c_str());
  }
  std::string file(const std::string &name) const { return path_ + "/" + name; }

private:
  std::string path_;
};

// Whether this host can bind IPv6 loopback; where it cannot, IPv6 tests say so and stop.
inline bool has_ipv6_loopback() {
  hermes::detail::FileDescriptor probe(::socket(AF_INET6, SOCK_DGRAM, 0));
  sockaddr_in6 address{};
  address.sin6_family = AF_INET6;
  address.sin6_addr = in6addr_loopback;
  return probe && ::bind(probe.get(), reinterpret_cast<sockaddr *>(&address), sizeof address) == 0;
}

// The message of the ConfigError that parsing `json` throws, or "" when it loads.
inline std::string config_error(const std::string &json) {
  try {
    hermes::parse_config(json, "config.json");
  } catch (const hermes::ConfigError &error) {
    return error.what();
  }
  return "";
}

// Options for a server on loopback, ports chosen by the kernel, logs kept for the test.
inline hermes::Options loopback_options(std::vector<std::string> *log = nullptr) {
  hermes::Options options;
  options.udp_address = "127.0.0.1";
  options.udp_port = 0;
  options.http_address = "127.0.0.1";
  options.http_port = 0;
  options.log_level = hermes::LogLevel::debug;
  options.log_sink = [log](const std::string &line) {
    if (log) log->push_back(line);
  };
  return options;
}

inline void send_udp(std::uint16_t port, const std::string &datagram) {
  hermes::Client client("127.0.0.1", port);
  REQUIRE(client.send(datagram));
}

// Steps the server until `done` holds, for at most two seconds.
template <typename Done> bool pump_until(hermes::Server &server, Done done) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (!done()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    server.poll_once(5);
  }
  return true;
}

// Sends `datagrams` and steps the server until it has received them all.
inline void push(hermes::Server &server, const std::vector<std::string> &datagrams) {
  const std::uint64_t before = server.stats().udp_packets;
  for (const std::string &datagram : datagrams) send_udp(server.udp_port(), datagram);
  REQUIRE(pump_until(server, [&] { return server.stats().udp_packets == before + datagrams.size(); }));
}

// A TCP client on loopback, non-blocking so that one thread can step the server too.
class RawClient {
public:
  explicit RawClient(std::uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0)) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const int status = ::connect(fd_.get(), reinterpret_cast<sockaddr *>(&address), sizeof address);
    REQUIRE((status == 0 || errno == EINPROGRESS));
  }
  void send(const std::string &bytes) {
    std::size_t sent = 0;
    while (sent < bytes.size()) {
      const ssize_t n = ::send(fd_.get(), bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n > 0) sent += static_cast<std::size_t>(n);
      else REQUIRE_MESSAGE((errno == EAGAIN || errno == EINPROGRESS), "send: " << std::strerror(errno));
    }
  }
  // Reads what has arrived; true once the server closed its side.
  bool read_available() {
    char buffer[65536];
    for (;;) {
      const ssize_t n = ::recv(fd_.get(), buffer, sizeof buffer, 0);
      if (n > 0) received_.append(buffer, static_cast<std::size_t>(n));
      else if (n == 0) return true;
      else return errno != EAGAIN;
    }
  }
  // Steps the server until it closes this connection, and returns all it sent.
  std::string finish(hermes::Server &server) {
    REQUIRE(pump_until(server, [&] { return read_available(); }));
    return received_;
  }
  // Steps the server until one whole answer has arrived, its head and as many bytes of
  // body as its Content-Length says (none for a HEAD request), and takes it from what
  // was received: an answer on a connection that stays open.
  std::string next_answer(hermes::Server &server, bool head_only = false) {
    std::size_t length = 0;
    REQUIRE(pump_until(server, [&] {
      read_available();
      return (length = whole_answer_length(head_only)) != 0;
    }));
    const std::string answer = received_.substr(0, length);
    received_.erase(0, length);
    return answer;
  }
  void close() { fd_.reset(); }

private:
  // The length of the first answer received, once it is whole; 0 before.
  std::size_t whole_answer_length(bool head_only) const {
    const std::size_t head_end = received_.find("\r\n\r\n");
    if (head_end == std::string::npos) return 0;
    const std::size_t field = received_.find("\r\nContent-Length: ");
    REQUIRE(field < head_end);
    const std::size_t body = head_only ? 0 : std::stoul(received_.substr(field + 18));
    return received_.size() >= head_end + 4 + body ? head_end + 4 + body : 0;
  }
  hermes::detail::FileDescriptor fd_;
  std::string received_;
};

inline std::string http(hermes::Server &server, const std::string &request) {
  RawClient client(server.http_port());
  client.send(request);
  return client.finish(server);
}

inline std::string body_of(const std::string &response) {
  const std::size_t end = response.find("\r\n\r\n");
  REQUIRE(end != std::string::npos);
  return response.substr(end + 4);
}

} // namespace test

#endif
