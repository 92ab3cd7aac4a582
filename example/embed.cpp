// embed.cpp - Hermes inside another program: the gateway runs on a background thread,
// the program pushes to it with hermes::Client, then reads /metrics back and stops.
//
//   g++ -std=c++17 -I.. embed.cpp -o embed -pthread && ./embed
//
// Exits 0 when the pushed samples show at /metrics, 1 otherwise. The program takes its
// locale from the environment, as many do: Hermes reads and writes numbers the same
// way under any locale (try LC_ALL=de_DE.UTF-8, whose decimal point is a comma).
#include "../hermes.hpp"

#include <clocale>
#include <cstdio>
#include <thread>

int main() {
  std::setlocale(LC_ALL, "");
  const hermes::Config config = hermes::parse_config(R"({
    "service_name": "embedded",
    "counters": [{"metric_name": "jobs_total", "metric_description": "Jobs done.", "labels": ["queue"]}],
    "gauges": [{"metric_name": "queue_length", "metric_description": "Jobs waiting.", "labels": ["queue"]}],
    "summaries": [{"metric_name": "job_seconds", "metric_description": "Job durations.", "objectives": {"0.5": 0.05}}]})",
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
  client.send(hermes::Batch().observe("job_seconds", {}, 0.25).observe("job_seconds", {}, 0.25));

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
  const bool observed = body.find("job_seconds{quantile=\"0.5\"} 0.25\njob_seconds_sum 0.5\n") != std::string::npos;
  std::printf("embedded gateway on udp %s, http %s: jobs_total %s, queue_length %s, job_seconds %s (decimal point '%s')\n",
              server.udp_endpoint().c_str(), server.http_endpoint().c_str(), counted ? "3" : "missing",
              gauged ? "11" : "missing", observed ? "0.25" : "missing", std::localeconv()->decimal_point);
  return counted && gauged && observed ? 0 : 1;
}
