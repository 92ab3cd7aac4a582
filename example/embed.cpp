// embed.cpp - Hermes inside another program: the gateway runs on a background thread,
// the program pushes to it with hermes::Client, then reads /metrics back and stops.
//
//   g++ -std=c++17 -I.. embed.cpp -o embed -pthread && ./embed
//
// Exits 0 when the pushed samples show at /metrics, 1 otherwise.
#include "../hermes.hpp"

#include <cstdio>
#include <thread>

int main() {
  const hermes::Config config = hermes::parse_config(R"({
    "service_name": "embedded",
    "counters": [{"metric_name": "jobs_total", "metric_description": "Jobs done.", "labels": ["queue"]}],
    "gauges": [{"metric_name": "queue_length", "metric_description": "Jobs waiting.", "labels": ["queue"]}]})",
                                                     "embedded config");
  hermes::Options options;
  options.udp_address = "127.0.0.1";
  options.udp_port = 0; // let the kernel choose, then ask the server
  options.http_address = "127.0.0.1";
  options.http_port = 0;
  hermes::Server server(config, options);

  std::atomic<bool> stop{false};
  std::thread gateway([&] { server.run(stop); });

  hermes::Client client("127.0.0.1", server.udp_port());
  client.increment_counter("jobs_total", {{"queue", "mail"}}, 3);
  client.set_gauge("queue_length", {{"queue", "mail"}}, 12);
  client.decrement_gauge("queue_length", {{"queue", "mail"}});

  // A scrape over real HTTP, as Prometheus would make it.
  std::string body;
  for (int attempt = 0; attempt < 100 && body.find("queue_length{queue=\"mail\"} 11") == std::string::npos; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    hermes::detail::FileDescriptor sock(::socket(AF_INET, SOCK_STREAM, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(server.http_port());
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(sock.get(), reinterpret_cast<sockaddr *>(&address), sizeof address) != 0) continue;
    const char request[] = "GET /metrics HTTP/1.0\r\n\r\n";
    if (::send(sock.get(), request, sizeof request - 1, 0) < 0) continue;
    body.clear();
    char buffer[4096];
    for (ssize_t n; (n = ::recv(sock.get(), buffer, sizeof buffer, 0)) > 0;) body.append(buffer, static_cast<std::size_t>(n));
  }

  stop = true;
  gateway.join();

  const bool counted = body.find("jobs_total{queue=\"mail\"} 3\n") != std::string::npos;
  const bool gauged = body.find("queue_length{queue=\"mail\"} 11\n") != std::string::npos;
  std::printf("embedded gateway on udp %s, http %s: jobs_total %s, queue_length %s\n", server.udp_endpoint().c_str(),
              server.http_endpoint().c_str(), counted ? "3" : "missing", gauged ? "11" : "missing");
  return counted && gauged ? 0 : 1;
}
