// bench.cpp - measures ./hermes against a bare UDP receiver in one run on loopback.
//
//   make bench            (or: build/bench ./hermes [OTHER_BUILD...];
//                          build/bench --ingest ./hermes runs only part 1,
//                          build/bench --access ./hermes only part 8,
//                          build/bench --series ./hermes only the resident memory of 5,
//                          build/bench --compression ./hermes only 12,
//                          build/bench --scale ./hermes only 11 and the scrapes against
//                          ingest of 3,
//                          build/bench --mapping only 10,
//                          build/bench --peers ./hermes only 9, with the hermes figures it
//                          needs (burst, 20 samples/dgram, 100k scrape, idle) measured anew,
//                          build/bench --memory only the in-process part of 5,
//                          build/bench --tls ./hermes only 13,
//                          build/bench --push ./hermes only 15,
//                          build/bench --remote-write ./hermes only 14 and 14b)
//
// 1. Ingest: the same sender (sendmmsg) pushes the same datagrams into a bare receiver
//    (recvmmsg, counts, nothing else) and into hermes: a burst of 300k datagrams as fast
//    as the sender can (median of five), then 2 s at full speed and at fixed rates; for
//    each: datagrams sent, samples applied, receiving CPU per sample, and the ratio.
//    The same samples again as StatsD lines, one and twenty to a datagram.
// 1b. StatsD over TCP (build/bench --tcp ./hermes runs only this): the same lines over
//    one TCP connection as fast as it takes them, against the same lines over UDP, twenty
//    to a datagram, three rounds interleaved, the median ratio; MISMATCH above 1.5x.
// 2. Scrapes: /metrics with 1k, 10k and 100k series: time, body size, resident memory.
// 3. Scrapes against ingest: 100k datagrams/s while /metrics with 100k series is
//    fetched over and over.
// 4. Protobuf against text: hermes' CPU per scrape of the same 100k counter series.
// 5. Memory: what the budget's accounting costs a new series, in-process; resident
//    memory per series of each kind, native histograms empty and full.
// 6. State: the text of the state file for 100k series made in-process against a /metrics
//    body of the same registry (time, and the longest stretch between looks at the
//    sockets); then hermes with 100k series and a state file written every second while
//    100k datagrams/s arrive, against the same run without a state file.
// 7. Each binary's size and memory when idle, resident and proportional (shared library
//    pages divided among the processes mapping them); the first is the one measured
//    above, make bench adds the static build, which is what images and boards run.
// 8. Allow lists: the cost per datagram of HERMES_UDP_ALLOW with 16 ranges against none,
//    in hermes (CPU per datagram, runs interleaved) and in-process (the check against
//    Registry::ingest of the same datagram).
// 9. Beside Pushgateway (Debian's /usr/bin/prometheus-pushgateway, on loopback, no
//    persistence): its size and idle memory, its CPU (every thread's, from schedstat) per
//    single-sample PUT over keep-alive and over new connections, and /metrics with 100k
//    gauge series pushed in one PUT; next to hermes' figures of the same run. A burst
//    kept does not apply to it: a client pushing over HTTP waits for each answer.
// 10. StatsD mapping, in-process: a line mapped by a file of 100 glob rules, once its name
//    is cached and when its name comes for the first time, against the same line of a
//    configured metric (build/bench --mapping runs only this part).
// 11. A million series: 100k and 1M counters with one 10-byte label value, resident
//    memory per series and in all after scrapes, CPU per scrape as text and protobuf and
//    the client's wall time against it, and CPU per applied sample with 1M series against
//    100; each against its goal, MISMATCH where the run falls short.
// 12. Compression: the 100k counter series of 4, and 100k gauges with values spread over
//    six decades, scraped with Accept-Encoding: gzip from hermes with HERMES_COMPRESSION
//    off and at levels 1, 4, 6 and 9: CPU and bytes.
// 13. TLS (a build with HERMES_TLS; certificates made with openssl, ECDSA P-256): hermes'
//    CPU per scrape of 100k counter series over TLS against in clear, as Prometheus
//    scrapes (HTTP/1.1 over one connection kept open, so the handshake is paid once),
//    against the goal of 1.5x, and on a new connection each (HTTP/1.0); the CPU of one full
//    handshake (GET /-/healthy over TLS against in clear, each on a new connection); and
//    the resident memory each TLS connection holds, mid-handshake (64 clients that sent
//    their ClientHello and stopped) and established (64 that finished it and stopped).
// 15. The Pushgateway API (build/bench --push ./hermes runs only this): CPU per
//    single-metric PUT, and resident memory and /metrics time with 100 groups of 1,000
//    samples (100 families, half the groups pushed as text, half as protobuf), in hermes
//    and in Pushgateway in the same run, against the goals (1/20 of Pushgateway's CPU, 1/4
//    of its memory, 1/10 of its scrape time); MISMATCH where short. Not 1,000 groups as
//    the goals say: Pushgateway checks each push against every sample it holds, and
//    had not finished its half of the run after a quarter of an hour.
// 14. Remote write, in-process: the CPU of one cycle (the snapshot of every series, its
//     WriteRequest encoding, snappy of each batch) at 10k and 100k series against a text
//     /metrics body of the same registry, and snappy's compression ratio; goal: a cycle at most
//     a scrape's CPU, MISMATCH where it costs more.
// 14b. Remote write beside Prometheus 2.42 in agent mode (Debian's /usr/bin/prometheus,
//     --enable-feature=agent, its WAL in a temporary folder), in the same run: it scrapes a
//     hermes of 10k series every second and writes them to a receiver of the bench's own
//     (reads each request, answers 204, keeps nothing), while another hermes of the same
//     series writes them there itself every second. After 20 s: the resident memory remote
//     write adds to hermes (that hermes less a third one without remote write) against the
//     agent's; goal at most 1/10, MISMATCH where short.
// Figures on a shared machine wander; the ratios measured in the same run are what count.
#include "hermes.hpp"

#include <algorithm>
#include <cctype>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hermes.hpp" // for the in-process figures of the allow list

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::string read_text(const std::string &path) {
  std::string text;
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return text;
  char buffer[4096];
  for (ssize_t n; (n = ::read(fd, buffer, sizeof buffer)) > 0;) text.append(buffer, static_cast<std::size_t>(n));
  ::close(fd);
  return text;
}

// CPU seconds (user and system) a process has used, from /proc.
double cpu_seconds(pid_t pid) {
  const std::string stat = read_text("/proc/" + std::to_string(pid) + "/stat");
  const std::size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::vector<std::string> fields;
  std::size_t at = close + 2;
  while (at < stat.size()) {
    const std::size_t end = stat.find(' ', at);
    fields.push_back(stat.substr(at, end - at));
    if (end == std::string::npos) break;
    at = end + 1;
  }
  if (fields.size() < 13) return 0;
  return (std::stod(fields[11]) + std::stod(fields[12])) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// Nanoseconds the process' one thread has run, from /proc/PID/schedstat: finer than
// the clock ticks of /proc/PID/stat, which a 2% difference needs.
double run_ns(pid_t pid) {
  const std::string text = read_text("/proc/" + std::to_string(pid) + "/schedstat");
  return text.empty() ? 0 : std::stod(text);
}

// A figure in kB from a /proc file of lines "Name:   1234 kB", in MiB.
double proc_kb_as_mib(pid_t pid, const char *file, const char *name) {
  const std::string text = read_text("/proc/" + std::to_string(pid) + "/" + file);
  const std::size_t at = text.find(std::string("\n") + name + ":");
  return at == std::string::npos ? 0 : std::stod(text.substr(at + std::strlen(name) + 2)) / 1024;
}

// Resident memory, shared library pages included in full.
double rss_mib(pid_t pid) { return proc_kb_as_mib(pid, "status", "VmRSS"); }

// Proportional memory: each shared page split among the processes that map it.
double pss_mib(pid_t pid) { return proc_kb_as_mib(pid, "smaps_rollup", "Pss"); }

sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return address;
}

// ---- the two receivers --------------------------------------------------------------------

struct Receiver {
  pid_t pid = -1;
  std::uint16_t udp_port = 0;
  std::uint16_t http_port = 0; // hermes only
  std::uint16_t statsd_tcp_port = 0; // hermes with HERMES_STATSD_TCP_PORT only
  std::atomic<std::uint64_t> *count = nullptr; // the bare receiver's, in shared memory
};

// A process that receives datagrams with recvmmsg and counts them: the floor any
// receiver pays in system calls and copies.
Receiver start_bare_receiver() {
  Receiver receiver;
  void *shared = ::mmap(nullptr, sizeof(std::atomic<std::uint64_t>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  receiver.count = new (shared) std::atomic<std::uint64_t>(0);
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in address = loopback(0);
  ::bind(fd, reinterpret_cast<sockaddr *>(&address), sizeof address);
  socklen_t length = sizeof address;
  ::getsockname(fd, reinterpret_cast<sockaddr *>(&address), &length);
  receiver.udp_port = ntohs(address.sin_port);
  receiver.pid = ::fork();
  if (receiver.pid == 0) {
    constexpr int batch = 64;
    static char buffers[batch][8192];
    mmsghdr messages[batch];
    iovec chunks[batch];
    for (;;) {
      for (int i = 0; i < batch; ++i) {
        chunks[i] = {buffers[i], sizeof buffers[i]};
        messages[i] = {};
        messages[i].msg_hdr.msg_iov = &chunks[i];
        messages[i].msg_hdr.msg_iovlen = 1;
      }
      const int got = ::recvmmsg(fd, messages, batch, MSG_WAITFORONE, nullptr);
      if (got > 0) receiver.count->fetch_add(static_cast<std::uint64_t>(got));
    }
  }
  ::close(fd);
  return receiver;
}

Receiver start_hermes(const std::string &binary, const std::string &config_json,
                      const std::vector<std::pair<std::string, std::string>> &env = {}) {
  char config_path[] = "/tmp/hermes-bench-XXXXXX";
  const int config_fd = ::mkstemp(config_path);
  if (::write(config_fd, config_json.data(), config_json.size()) < 0) std::perror("write");
  ::close(config_fd);
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) std::perror("pipe");
  Receiver receiver;
  receiver.pid = ::fork();
  if (receiver.pid == 0) {
    ::dup2(pipe_fds[1], 2);
    ::setenv("HERMES_UDP_ADDRESS", "127.0.0.1", 1);
    ::setenv("HERMES_HTTP_ADDRESS", "127.0.0.1", 1);
    ::setenv("HERMES_UDP_PORT", "0", 1);
    ::setenv("HERMES_HTTP_PORT", "0", 1);
    for (const auto &variable : env) ::setenv(variable.first.c_str(), variable.second.c_str(), 1);
    ::execl(binary.c_str(), binary.c_str(), config_path, static_cast<char *>(nullptr));
    std::perror("exec");
    std::_Exit(1);
  }
  ::close(pipe_fds[1]);
  std::string line;
  char c;
  while (::read(pipe_fds[0], &c, 1) == 1 && c != '\n') line += c;
  const std::size_t udp = line.find(" udp="), http = line.find(" http=");
  if (udp == std::string::npos || http == std::string::npos) {
    std::fprintf(stderr, "hermes did not start: %s\n", line.c_str());
    std::exit(1);
  }
  receiver.udp_port = static_cast<std::uint16_t>(std::stoi(line.substr(line.find(':', udp) + 1)));
  receiver.http_port = static_cast<std::uint16_t>(std::stoi(line.substr(line.find(':', http) + 1)));
  if (const std::size_t tcp = line.find(" statsd_tcp="); tcp != std::string::npos)
    receiver.statsd_tcp_port = static_cast<std::uint16_t>(std::stoi(line.substr(line.find(':', tcp) + 1)));
  // Keep reading its log so that it never blocks on a full pipe.
  std::thread([fd = pipe_fds[0]] {
    char buffer[4096];
    while (::read(fd, buffer, sizeof buffer) > 0) {
    }
  }).detach();
  ::unlink(config_path);
  return receiver;
}

void stop(Receiver &receiver) {
  ::kill(receiver.pid, SIGTERM);
  ::waitpid(receiver.pid, nullptr, 0);
}

// ---- HTTP ---------------------------------------------------------------------------------

// Reads the whole response into `response`, whose memory is kept from call to call as a
// scraper keeps its buffers: the client's own page faults are not the server's time.
void http_get_into(std::string &response, std::uint16_t port, const char *path, const char *accept = nullptr,
                   const char *encoding = nullptr) {
  response.clear();
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address = loopback(port);
  if (::connect(fd, reinterpret_cast<sockaddr *>(&address), sizeof address) == 0) {
    const std::string request = std::string("GET ") + path + " HTTP/1.0\r\n" +
                                (accept ? std::string("Accept: ") + accept + "\r\n" : std::string()) +
                                (encoding ? std::string("Accept-Encoding: ") + encoding + "\r\n" : std::string()) + "\r\n";
    if (::send(fd, request.data(), request.size(), 0) > 0) {
      char buffer[65536];
      for (ssize_t n; (n = ::recv(fd, buffer, sizeof buffer, 0)) > 0;) response.append(buffer, static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
}

std::string http_get(std::uint16_t port, const char *path) {
  std::string response;
  http_get_into(response, port, path);
  return response;
}

// One figure from hermes' /metrics, such as "hermes_samples_accepted_total".
double hermes_metric(const Receiver &hermes, const std::string &series) {
  const std::string body = http_get(hermes.http_port, "/metrics");
  const std::size_t at = body.find("\n" + series + " ");
  return at == std::string::npos ? -1 : std::stod(body.substr(at + series.size() + 2));
}

// ---- the sender ---------------------------------------------------------------------------

// Sends `datagrams` round-robin for `duration` seconds, at `rate` datagrams a second
// (0: as fast as it can), with sendmmsg in batches of 32; duration 0 sends one datagram.
// A `limit` stops it after that many datagrams.
std::uint64_t send_stream(std::uint16_t port, const std::vector<std::string> &datagrams, double rate, double duration,
                          std::uint64_t limit = UINT64_MAX) {
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in address = loopback(port);
  ::connect(fd, reinterpret_cast<sockaddr *>(&address), sizeof address);
  constexpr unsigned batch = 32;
  mmsghdr messages[batch];
  iovec chunks[batch];
  std::uint64_t sent = 0;
  std::size_t next = 0;
  const Clock::time_point start = Clock::now();
  if (duration == 0) {
    const std::uint64_t one = ::send(fd, datagrams[0].data(), datagrams[0].size(), 0) > 0 ? 1 : 0;
    ::close(fd);
    return one;
  }
  while (sent < limit && seconds_since(start) < duration) {
    const unsigned count = static_cast<unsigned>(std::min<std::uint64_t>(batch, limit - sent));
    for (unsigned i = 0; i < count; ++i, next = (next + 1) % datagrams.size()) {
      chunks[i] = {const_cast<char *>(datagrams[next].data()), datagrams[next].size()};
      messages[i] = {};
      messages[i].msg_hdr.msg_iov = &chunks[i];
      messages[i].msg_hdr.msg_iovlen = 1;
    }
    const int done = ::sendmmsg(fd, messages, count, 0);
    if (done > 0) sent += static_cast<std::uint64_t>(done);
    if (rate > 0) {
      const double due = static_cast<double>(sent) / rate;
      while (seconds_since(start) < due) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  ::close(fd);
  return sent;
}

// Waits until a count stops moving: the receiver has taken all there is.
template <typename Count> double settle(Count count) {
  double last = count();
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const double now = count();
    if (now == last) return now;
    last = now;
  }
}

// ---- the measurements ---------------------------------------------------------------------

const char *bench_config = R"({"service_name": "bench",
  "counters": [{"metric_name": "sample_counter", "metric_description": "pushed", "labels": ["label_1"]},
               {"metric_name": "series_total", "metric_description": "many counters", "labels": ["id"], "max_series": 200000}],
  "gauges": [{"metric_name": "series_gauge", "metric_description": "many series", "labels": ["id"], "max_series": 200000}]})";

std::vector<std::string> sample_datagrams(int per_datagram) {
  std::vector<std::string> datagrams;
  for (int worker = 0; worker < 100; ++worker) {
    std::string sample = R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "worker-)" +
                         std::to_string(worker) + R"("}}})";
    if (per_datagram == 1) {
      datagrams.push_back(sample);
      continue;
    }
    std::string batch = "[";
    for (int i = 0; i < per_datagram; ++i) batch += (i ? ", " : "") + sample;
    datagrams.push_back(batch + "]");
  }
  return datagrams;
}

// The same samples as StatsD lines, `per_datagram` lines to a datagram.
std::vector<std::string> statsd_datagrams(int per_datagram) {
  std::vector<std::string> datagrams;
  for (int worker = 0; worker < 100; ++worker) {
    const std::string line = "sample_counter:1|c|#label_1:worker-" + std::to_string(worker);
    std::string datagram = line;
    for (int i = 1; i < per_datagram; ++i) datagram += "\n" + line;
    datagrams.push_back(datagram);
  }
  return datagrams;
}

struct IngestRow {
  std::string what;
  std::uint64_t sent;
  double received;
  double drops;
  double cpu_per_sample_us;
};

// Both receivers run ingest on one thread, whose CPU time run_ns() reads to the nanosecond.
IngestRow measure_bare(const std::string &what, const std::vector<std::string> &datagrams, double rate, double duration,
                       std::uint64_t limit = UINT64_MAX) {
  Receiver bare = start_bare_receiver();
  const double cpu_before = run_ns(bare.pid);
  const std::uint64_t sent = send_stream(bare.udp_port, datagrams, rate, duration, limit);
  const double received = settle([&] { return static_cast<double>(bare.count->load()); });
  const double cpu = (run_ns(bare.pid) - cpu_before) / 1e9;
  ::kill(bare.pid, SIGKILL);
  ::waitpid(bare.pid, nullptr, 0);
  return {what, sent, received, 0, received > 0 ? cpu / received * 1e6 : 0};
}

IngestRow measure_hermes(const std::string &binary, const std::string &what, const std::vector<std::string> &datagrams,
                         int per_datagram, double rate, double duration, std::uint64_t limit = UINT64_MAX) {
  Receiver hermes = start_hermes(binary, bench_config);
  const double cpu_before = run_ns(hermes.pid);
  const std::uint64_t sent = send_stream(hermes.udp_port, datagrams, rate, duration, limit);
  const double applied = settle([&] { return hermes_metric(hermes, "hermes_samples_accepted_total"); });
  const double cpu = (run_ns(hermes.pid) - cpu_before) / 1e9;
  const double packets = hermes_metric(hermes, "hermes_udp_packets_total");
  const double drops = hermes_metric(hermes, "hermes_udp_receive_drops_total");
  stop(hermes);
  const bool balanced = static_cast<double>(sent) == packets + drops && applied == packets * per_datagram;
  std::printf("  %s: sent %llu = received %.0f + dropped %.0f; applied %.0f = %.0f samples: %s\n", what.c_str(),
              static_cast<unsigned long long>(sent), packets, drops, applied, packets * per_datagram,
              balanced ? "nothing unaccounted" : "MISMATCH");
  return {what, sent, applied, drops, applied > 0 ? cpu / applied * 1e6 : 0};
}

void print_ingest(const IngestRow &bare, const IngestRow &hermes, int per_datagram) {
  const double sent_samples = static_cast<double>(hermes.sent) * per_datagram;
  std::printf("| %-30s | %10llu | %10.0f | %7.1f%% | %10.0f | %8.2f | %8.2f | %6.2fx |\n", hermes.what.c_str(),
              static_cast<unsigned long long>(hermes.sent), hermes.received, 100 * hermes.received / sent_samples,
              hermes.drops, bare.cpu_per_sample_us, hermes.cpu_per_sample_us,
              hermes.cpu_per_sample_us / (bare.cpu_per_sample_us > 0 ? bare.cpu_per_sample_us : 1));
  std::printf("|   bare receiver, same datagrams  | %10llu | %10.0f | %7.1f%% |            |          |          |         |\n",
              static_cast<unsigned long long>(bare.sent), bare.received, 100 * bare.received / static_cast<double>(bare.sent));
}

// A burst of 300,000 single-sample datagrams, as fast as one sender thread sends them,
// into the bare receiver and into hermes, five times each, interleaved: the run whose
// ratio is the median. A burst is what a fleet of workers finishing a job at once sends.
IngestRow measure_burst(const std::string &binary) {
  constexpr std::uint64_t burst = 300000;
  const std::string name = "1 sample/dgram, burst of 300k";
  const std::vector<std::string> single = sample_datagrams(1);
  std::vector<std::pair<IngestRow, IngestRow>> runs;
  for (int round = 0; round < 5; ++round)
    runs.emplace_back(measure_bare(name, single, 0, 60, burst), measure_hermes(binary, name, single, 1, 0, 60, burst));
  const auto ratio = [](const std::pair<IngestRow, IngestRow> &run) { return run.second.cpu_per_sample_us / run.first.cpu_per_sample_us; };
  std::sort(runs.begin(), runs.end(), [&](const auto &a, const auto &b) { return ratio(a) < ratio(b); });
  print_ingest(runs[2].first, runs[2].second, 1);
  return runs[2].second;
}

// 20 samples a datagram at full speed for 2 s, into the bare receiver and hermes.
IngestRow measure_batched(const std::string &binary, const std::vector<std::string> &batched) {
  const IngestRow bare = measure_bare("20 samples/dgram, full speed", batched, 0, 2);
  const IngestRow hermes = measure_hermes(binary, "20 samples/dgram, full speed", batched, 20, 0, 2);
  print_ingest(bare, hermes, 20);
  return hermes;
}

void load_series(const Receiver &hermes, int series) {
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in address = loopback(hermes.udp_port);
  int sent_datagrams = 0;
  for (int start = 0; start < series; start += 50) {
    std::string batch = "[";
    for (int id = start; id < std::min(series, start + 50); ++id)
      batch += (id > start ? "," : "") + std::string(R"({"metric_name":"series_gauge","payload":{"labels":{"id":")") +
               std::to_string(id) + R"("},"value":)" + std::to_string(id) + "}}";
    batch += "]";
    ::sendto(fd, batch.data(), batch.size(), 0, reinterpret_cast<sockaddr *>(&address), sizeof address);
    if (++sent_datagrams % 16 == 0) // let it keep up: no datagram may be lost here
      while (hermes_metric(hermes, "hermes_udp_packets_total") < sent_datagrams) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ::close(fd);
  while (hermes_metric(hermes, "hermes_series") < series) std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

struct ScrapeRow {
  double median_ms;
  std::size_t body_bytes;
  double resident_mib;
};

// GET /metrics `warm + timed` times over new connections: the median wall time of the
// last `timed`, the first ones warming the socket buffers and the heap up.
ScrapeRow time_scrapes(pid_t pid, std::uint16_t http_port, int warm, int timed) {
  std::vector<double> times;
  std::string response;
  for (int i = 0; i < warm + timed; ++i) {
    const Clock::time_point start = Clock::now();
    http_get_into(response, http_port, "/metrics");
    if (i >= warm) times.push_back(seconds_since(start) * 1000);
  }
  std::sort(times.begin(), times.end());
  return {times[times.size() / 2], response.size(), rss_mib(pid)};
}

ScrapeRow measure_scrape(const std::string &binary, int series) {
  Receiver hermes = start_hermes(binary, bench_config);
  load_series(hermes, series);
  const ScrapeRow row = time_scrapes(hermes.pid, hermes.http_port, 2, 7);
  stop(hermes);
  return row;
}

// The table of scrapes; returns the row of 100k series.
ScrapeRow measure_scrapes(const std::string &binary) {
  std::printf("\n| series | /metrics, median of 7 after 2 (ms) | body (bytes) | resident (MiB) |\n|---:|---:|---:|---:|\n");
  ScrapeRow row{};
  for (const int series : {0, 1000, 10000, 100000}) {
    row = measure_scrape(binary, series);
    std::printf("| %6d | %34.2f | %12zu | %14.2f |\n", series, row.median_ms, row.body_bytes, row.resident_mib);
  }
  return row;
}

// Pushes `count` samples, `sample(i)` each, 50 to a datagram, letting hermes keep up: no
// datagram may be lost here.
template <typename Sample> void push_all(const Receiver &hermes, int count, Sample sample) {
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in address = loopback(hermes.udp_port);
  const double before = hermes_metric(hermes, "hermes_udp_packets_total");
  int sent_datagrams = 0;
  for (int start = 0; start < count; start += 50) {
    std::string batch = "[";
    for (int i = start; i < std::min(count, start + 50); ++i) batch += (i > start ? "," : "") + sample(i);
    batch += "]";
    ::sendto(fd, batch.data(), batch.size(), 0, reinterpret_cast<sockaddr *>(&address), sizeof address);
    if (++sent_datagrams % 16 == 0 || start + 50 >= count)
      while (hermes_metric(hermes, "hermes_udp_packets_total") < before + sent_datagrams)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ::close(fd);
}

const char *protobuf_accept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,"
                              "application/openmetrics-text;version=1.0.0;q=0.8,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

// The same 100k counter series scraped as text and as protobuf: hermes' CPU per scrape.
void measure_protobuf_scrapes(const std::string &binary) {
  Receiver hermes = start_hermes(binary, bench_config);
  push_all(hermes, 100000, [](int id) {
    return R"({"metric_name":"series_total","payload":{"labels":{"id":")" + std::to_string(id) + R"("},"value":)" +
           std::to_string(id) + "}}";
  });
  std::printf("\n| 100k counter series | hermes CPU per scrape, 20 after 2 (ms) | body (bytes) |\n|---|---:|---:|\n");
  double cpu_ms[2] = {0, 0};
  for (int format = 0; format < 2; ++format) {
    const char *accept = format == 0 ? nullptr : protobuf_accept;
    std::string response;
    for (int i = 0; i < 2; ++i) http_get_into(response, hermes.http_port, "/metrics", accept);
    const double before = cpu_seconds(hermes.pid);
    for (int i = 0; i < 20; ++i) http_get_into(response, hermes.http_port, "/metrics", accept);
    cpu_ms[format] = (cpu_seconds(hermes.pid) - before) / 20 * 1000;
    std::printf("| %s | %.2f | %zu |\n", format == 0 ? "text 0.0.4" : "protobuf, delimited", cpu_ms[format], response.size());
  }
  std::printf("| protobuf / text | %.2fx | |\n", cpu_ms[1] / (cpu_ms[0] > 0 ? cpu_ms[0] : 1));
  stop(hermes);
}

// 100k series scraped by a client that asks for gzip, from hermes with HERMES_COMPRESSION
// off and at levels 1, 4, 6 and 9: hermes' CPU per scrape (its run time, from
// schedstat), the body's bytes, and what they take on a 10 Mbit/s and a 1 Gbit/s link.
// Two sets: the counters of part 4 (ids and values counting up), and gauges with
// values spread over six decades, written with 17 digits that do not repeat. Goals at
// the default level: at most a fifth of the plain bytes for the counters and three
// tenths for the gauges (their digits are what no compressor takes out), for at most
// 2.5 times the plain scrape's CPU.
void measure_compression(const std::string &binary) {
  std::printf("\n| 100k series, text, Accept-Encoding: gzip | hermes CPU per scrape, 10 after 2 (ms) | body (bytes) "
              "| of plain | at 10 Mbit/s (ms) | at 1 Gbit/s (ms) |\n|---|---:|---:|---:|---:|---:|\n");
  const auto counter = [](int id) {
    return R"({"metric_name":"series_total","payload":{"labels":{"id":")" + std::to_string(id) + R"("},"value":)" +
           std::to_string(id) + "}}";
  };
  const auto gauge = [](int id) {
    const std::uint32_t spread = static_cast<std::uint32_t>(id) * 2654435761u; // the ids' order, scrambled
    char value[32];
    std::snprintf(value, sizeof value, "%.17g", std::pow(10.0, -3 + 6 * (spread % 1000003) / 1000003.0));
    return R"({"metric_name":"series_gauge","payload":{"labels":{"id":"worker-)" + std::to_string(spread % 1000000) +
           R"("},"value":)" + value + "}}";
  };
  for (const bool gauges : {false, true}) {
    double plain_ms = 0, plain_bytes = 0;
    const double bytes_goal = gauges ? 0.3 : 0.2; // of the plain body
    for (const std::string level : {"off", "1", "4", "6", "9"}) {
      Receiver hermes = start_hermes(binary, bench_config, {{"HERMES_COMPRESSION", level}});
      if (gauges) push_all(hermes, 100000, gauge);
      else push_all(hermes, 100000, counter);
      std::string response;
      for (int i = 0; i < 2; ++i) http_get_into(response, hermes.http_port, "/metrics", nullptr, "gzip");
      const double before = run_ns(hermes.pid);
      for (int i = 0; i < 10; ++i) http_get_into(response, hermes.http_port, "/metrics", nullptr, "gzip");
      const double cpu_ms = (run_ns(hermes.pid) - before) / 10 / 1e6;
      const double bytes = static_cast<double>(response.size() - response.find("\r\n\r\n") - 4);
      const bool gzip = response.find("\r\nContent-Encoding: gzip\r\n") != std::string::npos;
      if (level == "off") plain_ms = cpu_ms, plain_bytes = bytes;
      const bool chosen = level == std::to_string(HERMES_GZIP_LEVEL);
      std::printf("| %s, %s%s | %.2f | %.0f | %.1f%% | %.0f | %.1f |\n", gauges ? "gauges, values spread" : "counters, counting up",
                  level == "off" ? "plain (HERMES_COMPRESSION=off)" : ("gzip level " + level).c_str(), chosen ? " (default)" : "",
                  cpu_ms, bytes, 100 * bytes / plain_bytes, bytes * 8 / 10e6 * 1000, bytes * 8 / 1e9 * 1000);
      if (gzip != (level != "off")) std::printf("MISMATCH: level %s answered %s\n", level.c_str(), gzip ? "gzip" : "plain");
      if (chosen && bytes > bytes_goal * plain_bytes)
        std::printf("MISMATCH: the default level's body is more than %.0f%% of the plain one\n", bytes_goal * 100);
      if (chosen && cpu_ms > 2.5 * plain_ms) std::printf("MISMATCH: the default level takes more than 2.5x the plain scrape's CPU\n");
      stop(hermes);
    }
  }
}

// Resident memory a series adds, from `series` series pushed `per_series` observations each.
// The budget is raised, as the worst case of 20k native histograms is more than the
// default 64 MiB; every series must have been made, or the figure says nothing.
double bytes_per_series(const std::string &binary, const std::string &metric_json, int series, int per_series,
                        const char *value_kind) {
  Receiver hermes = start_hermes(binary, R"({"service_name": "bench", )" + metric_json + "}", {{"HERMES_MAX_MEMORY", "4GiB"}});
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const double before = rss_mib(hermes.pid);
  std::uint64_t state = 88172645463325252ull; // xorshift: the same values every run
  push_all(hermes, series * per_series, [&](int i) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    const double exponent = -3 + 6 * static_cast<double>(state % 1000000) / 1e6; // six decades
    char value[32];
    std::snprintf(value, sizeof value, "%.6g", std::pow(10.0, exponent));
    return R"({"metric_name":"m","payload":{"labels":{"id":")" + std::to_string(i % series) + R"("},")" + value_kind +
           R"(":)" + value + "}}";
  });
  const double after = rss_mib(hermes.pid);
  const double made = hermes_metric(hermes, "hermes_series");
  stop(hermes);
  if (made != series) std::printf("MISMATCH: %.0f of %d series made\n", made, series);
  return (after - before) * 1024 * 1024 / series;
}

// Each kind's figure against its goal: 30% below what Hermes 1.0 took on the bench's
// machine (175, 756, 1993, 453 and 7414 bytes).
void series_row(const char *what, double figure, double before) {
  std::printf("| %s | %.0f | %.0f | %s |\n", what, figure, 0.7 * before, figure <= 0.7 * before ? "met" : "MISMATCH");
}

void measure_series_memory(const std::string &binary) {
  const std::string labels = R"("metric_name": "m", "labels": ["id"], "max_series": 200000)";
  std::printf("\n| series | resident bytes per series | goal | |\n|---|---:|---:|---|\n");
  series_row("counter, 20k series", bytes_per_series(binary, R"("counters": [{)" + labels + "}]", 20000, 1, "value"), 175);
  series_row("classic histogram, 11 buckets, 20k series",
             bytes_per_series(binary, R"("histograms": [{)" + labels + "}]", 20000, 1, "observation"), 756);
  series_row("summary, 2 objectives, 2k series",
             bytes_per_series(binary, R"("summaries": [{)" + labels + R"(, "objectives": {"0.5": 0.05, "0.99": 0.001}}])", 2000,
                              1, "observation"),
             1993);
  series_row("native histogram, one observation, 20k series",
             bytes_per_series(binary, R"("histograms": [{)" + labels + R"(, "native": true}])", 20000, 1, "observation"), 453);
  series_row("native histogram, 10,000 observations over six decades, 200 series",
             bytes_per_series(binary, R"("histograms": [{)" + labels + R"(, "native": true}])", 200, 10000, "observation"), 7414);
}

void measure_scrapes_against_ingest(const std::string &binary) {
  Receiver hermes = start_hermes(binary, bench_config);
  load_series(hermes, 100000);
  const double before = hermes_metric(hermes, "hermes_samples_accepted_total");
  std::atomic<bool> done{false};
  std::atomic<int> scrapes{0};
  std::thread scraper([&] {
    std::string response;
    while (!done) {
      http_get_into(response, hermes.http_port, "/metrics");
      ++scrapes;
    }
  });
  const std::uint64_t sent = send_stream(hermes.udp_port, sample_datagrams(1), 100000, 3);
  done = true;
  scraper.join();
  const double applied = settle([&] { return hermes_metric(hermes, "hermes_samples_accepted_total"); }) - before;
  const double drops = hermes_metric(hermes, "hermes_udp_receive_drops_total");
  stop(hermes);
  std::printf("\nScrapes against ingest: %d scrapes of 100k series while sending %llu datagrams at 100k/s: "
              "%.0f applied (%.2f%%), %.0f dropped by the kernel%s\n",
              scrapes.load(), static_cast<unsigned long long>(sent), applied, 100 * applied / static_cast<double>(sent), drops,
              applied < static_cast<double>(sent) ? "; MISMATCH: the goal is none lost" : "");
}

// The state's text and a /metrics body of the same 100k series, each made 7 times: the
// median time, and the longest time between two calls of the pause in which a server
// takes datagrams off its sockets.
void measure_state_text() {
  hermes::Registry registry(hermes::parse_config(bench_config, "bench"));
  for (int id = 0; id < 100000; ++id)
    registry.ingest(R"({"metric_name":"series_gauge","payload":{"labels":{"id":")" + std::to_string(id) + R"("},"value":)" +
                    std::to_string(id) + "}}");
  const hermes::ServerStats stats;
  const auto measure = [](const char *what, const std::function<void(std::string &, const std::function<void()> &)> &make) {
    std::string out;
    std::vector<double> times, gaps;
    for (int i = 0; i < 7; ++i) {
      Clock::time_point last = Clock::now();
      double longest = 0;
      const std::function<void()> pause = [&] {
        longest = std::max(longest, seconds_since(last));
        last = Clock::now();
      };
      const Clock::time_point start = Clock::now();
      make(out, pause);
      times.push_back(seconds_since(start) * 1000);
      gaps.push_back(std::max(longest, seconds_since(last)) * 1000);
    }
    std::sort(times.begin(), times.end());
    std::sort(gaps.begin(), gaps.end());
    std::printf("| %-28s | %9.2f | %22.3f | %10zu |\n", what, times[3], gaps[3], out.size());
    return times[3];
  };
  std::printf("\n| 100k series, in-process        | median (ms) | longest between pauses (ms) | bytes |\n|---|---:|---:|---:|\n");
  const double render = measure("/metrics body (reference)", [&](std::string &out, const std::function<void()> &pause) {
    hermes::detail::Renderer renderer(out, registry, {registry, &stats, nullptr}, hermes::Format::text);
    while (!renderer.write_some(HERMES_RENDER_PAUSE_STRIDE)) pause();
  });
  const double state = measure("state file text", [&](std::string &out, const std::function<void()> &pause) {
    registry.save_state(out, hermes::Now::current(), pause);
  });
  std::printf("State text / /metrics body: %.2fx\n", state / render);
  std::string text;
  registry.save_state(text, hermes::Now::current());
  std::vector<double> restores;
  for (int i = 0; i < 3; ++i) {
    hermes::Registry fresh(hermes::parse_config(bench_config, "bench"));
    const Clock::time_point start = Clock::now();
    fresh.restore_state(text);
    restores.push_back(seconds_since(start) * 1000);
  }
  std::sort(restores.begin(), restores.end());
  std::printf("Restoring the 100k series at start (median of 3): %.1f ms\n", restores[1]);
}

// 100k series; 100k datagrams/s for 5 s, each a change, so a state write falls due every second.
void measure_state_against_ingest(const std::string &binary) {
  char directory[] = "/tmp/hermes-bench-state-XXXXXX";
  if (!::mkdtemp(directory)) return std::perror("mkdtemp");
  const std::string state_file = std::string(directory) + "/state.json";
  std::printf("\n| 100k series, 100k dgram/s for 5 s | dgrams sent | applied | kernel drops | state writes | state file (bytes) |\n"
              "|---|---:|---:|---:|---:|---:|\n");
  for (const bool keep_state : {false, true}) {
    std::vector<std::pair<std::string, std::string>> env;
    if (keep_state) env = {{"HERMES_STATE_FILE", state_file}, {"HERMES_STATE_INTERVAL", "1"}};
    Receiver hermes = start_hermes(binary, bench_config, env);
    load_series(hermes, 100000);
    const double before = hermes_metric(hermes, "hermes_samples_accepted_total");
    const std::uint64_t sent = send_stream(hermes.udp_port, sample_datagrams(1), 100000, 5);
    const double applied = settle([&] { return hermes_metric(hermes, "hermes_samples_accepted_total"); }) - before;
    const double drops = hermes_metric(hermes, "hermes_udp_receive_drops_total");
    const double writes = hermes_metric(hermes, "hermes_state_writes_total{result=\"success\"}");
    struct stat info {};
    const long long bytes = keep_state && ::stat(state_file.c_str(), &info) == 0 ? static_cast<long long>(info.st_size) : 0;
    stop(hermes);
    std::printf("| %-33s | %11llu | %7.0f (%.2f%%) | %12.0f | %12.0f | %18lld |\n", keep_state ? "state file, every 1 s" : "no state file (reference)",
                static_cast<unsigned long long>(sent), applied, 100 * applied / static_cast<double>(sent), drops, writes, bytes);
  }
  ::unlink(state_file.c_str());
  ::rmdir(directory);
}

// ---- access control -------------------------------------------------------------------------

// Sixteen ranges, eleven IPv4 and five IPv6, the sender's (127.0.0.0/8) last; the other
// list lacks it, so that every datagram is dropped.
const char *const sixteen_ranges[] = {"10.0.0.0/8",      "172.16.0.0/12",  "192.168.0.0/16", "100.64.0.0/10",
                                      "192.0.2.0/24",    "198.51.100.0/24", "203.0.113.0/24", "169.254.0.0/16",
                                      "2001:db8::/32",   "fd00::/8",        "fe80::/10",      "2001:db8:1::/48",
                                      "198.18.0.0/15",   "224.0.0.0/4",     "::1",            "127.0.0.0/8"};

std::string allow_list_text(bool with_sender) {
  std::string text;
  for (const char *range : sixteen_ranges) text += (text.empty() ? "" : ",") + std::string(range);
  return with_sender ? text : text.substr(0, text.rfind(',')) + ",127.0.0.2";
}

// CPU nanoseconds per datagram of hermes at full speed for 2 s, and what it did with them.
struct AllowRun {
  double ns_per_datagram = 0, packets = 0, accepted = 0, forbidden = 0;
};

AllowRun measure_allow_run(const std::string &binary, const std::vector<std::pair<std::string, std::string>> &env) {
  Receiver hermes = start_hermes(binary, bench_config, env);
  const double before = run_ns(hermes.pid);
  send_stream(hermes.udp_port, sample_datagrams(1), 0, 2);
  AllowRun run;
  run.packets = settle([&] { return hermes_metric(hermes, "hermes_udp_packets_total"); });
  const double used = run_ns(hermes.pid) - before;
  run.accepted = hermes_metric(hermes, "hermes_samples_accepted_total");
  run.forbidden = hermes_metric(hermes, "hermes_samples_rejected_total{reason=\"forbidden_source\"}");
  run.ns_per_datagram = run.packets > 0 ? used / run.packets : 0;
  stop(hermes);
  return run;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// Runs without a list, with the sender 16th of 16 ranges, and with the sender in none,
// interleaved seven times; the medians and their ratios.
void measure_allow_list(const std::string &binary) {
  std::vector<double> none, listed, dropped;
  double accepted = 0, forbidden = 0;
  for (int round = 0; round < 7; ++round) {
    none.push_back(measure_allow_run(binary, {}).ns_per_datagram);
    const AllowRun with = measure_allow_run(binary, {{"HERMES_UDP_ALLOW", allow_list_text(true)}});
    listed.push_back(with.ns_per_datagram);
    accepted += with.accepted - with.packets; // 0 when every datagram was applied
    const AllowRun without = measure_allow_run(binary, {{"HERMES_UDP_ALLOW", allow_list_text(false)}});
    dropped.push_back(without.ns_per_datagram);
    forbidden += without.forbidden - without.packets; // 0 when every datagram was dropped as forbidden
  }
  std::printf("\nAllow list in hermes, full speed 2 s, 1 sample/dgram, median of 7 interleaved runs (CPU ns per datagram received):\n");
  std::printf("| HERMES_UDP_ALLOW | ns/datagram | ratio to none |\n|---|---:|---:|\n");
  std::printf("| unset | %.0f | 1.000 |\n", median(none));
  std::printf("| 16 ranges, the sender's 16th | %.0f | %.3f |\n", median(listed), median(listed) / median(none));
  std::printf("| 16 ranges, sender in none: all dropped | %.0f | %.3f |\n", median(dropped), median(dropped) / median(none));
  std::printf("(unaccounted: %.0f applied short, %.0f forbidden short)\n", -accepted, -forbidden);
}

// The same in-process, without sockets: the check of one sender against 16 ranges
// beside Registry::ingest of the datagram it sent.
void measure_allow_list_in_process() {
  hermes::AllowList list;
  for (const char *text : sixteen_ranges) {
    hermes::AddressRange range;
    if (!hermes::parse_address_range(text, range).empty()) std::abort();
    list.add(range, text);
  }
  hermes::Registry registry(hermes::parse_config(bench_config, "bench"));
  const std::vector<std::string> datagrams = sample_datagrams(1);
  constexpr int rounds = 2000000;
  Clock::time_point start = Clock::now();
  for (int i = 0; i < rounds; ++i) registry.ingest(datagrams[static_cast<std::size_t>(i) % datagrams.size()], 1.7e9);
  const double ingest_ns = seconds_since(start) * 1e9 / rounds;
  // Senders made beforehand, as the kernel writes them before recvmmsg returns: writing
  // a byte of the address just before reading it whole would time a stalled load.
  std::vector<sockaddr_in> senders(256, loopback(40000));
  for (std::size_t i = 0; i < senders.size(); ++i) senders[i].sin_addr.s_addr = htonl(0x7f000001u + static_cast<std::uint32_t>(i));
  std::uint64_t allowed = 0;
  start = Clock::now();
  for (int i = 0; i < rounds; ++i) // 127.0.0.x: matched by the 16th range
    allowed += list.allows(reinterpret_cast<const sockaddr *>(&senders[static_cast<std::size_t>(i) & 0xff]), sizeof(sockaddr_in));
  const double v4_ns = seconds_since(start) * 1e9 / rounds;
  sockaddr_in6 senders6[2] = {};
  for (int i = 0; i < 2; ++i) {
    senders6[i].sin6_family = AF_INET6;
    ::inet_pton(AF_INET6, i == 0 ? "::1" : "::2", &senders6[i].sin6_addr); // ::1 listed, ::2 not
  }
  std::uint64_t allowed6 = 0;
  start = Clock::now();
  for (int i = 0; i < rounds; ++i) allowed6 += list.allows(reinterpret_cast<const sockaddr *>(&senders6[i & 1]), sizeof(sockaddr_in6));
  const double v6_ns = seconds_since(start) * 1e9 / rounds;
  std::printf("\nAllow list in-process, 16 ranges (11 IPv4, 5 IPv6), against Registry::ingest of one datagram (%.1f ns):\n"
              "| sender | check (ns) | allowed | (ingest + check) / ingest |\n|---|---:|---:|---:|\n"
              "| IPv4, 127.0.0.x | %.1f | %llu of %d | %.4f |\n| IPv6, ::1 and ::2 | %.1f | %llu of %d | %.4f |\n",
              ingest_ns, v4_ns, static_cast<unsigned long long>(allowed), rounds, (ingest_ns + v4_ns) / ingest_ns, v6_ns,
              static_cast<unsigned long long>(allowed6), rounds, (ingest_ns + v6_ns) / ingest_ns);
}

#ifdef HERMES_YAML
// Nanoseconds per Registry::ingest of `lines`, one line a datagram, the best of five.
double ns_per_line(hermes::Registry &registry, const std::vector<std::string> &lines) {
  double best = 1e30;
  for (int run = 0; run < 5; ++run) {
    const Clock::time_point start = Clock::now();
    for (const std::string &line : lines) registry.ingest(line, 1.7e9);
    best = std::min(best, seconds_since(start) * 1e9 / static_cast<double>(lines.size()));
  }
  return best;
}

// A line through 100 glob rules (matched by the 61st: a first field shared by none),
// against a configured metric's line of the same series; new names against new series.
void measure_mapping_in_process() {
  const char *config_text = R"({"service_name": "bench", "max_series": 10000000, "max_memory_bytes": "1GiB",
    "counters": [{"metric_name": "jobs_total", "labels": ["host", "queue"]}]})";
  std::string rules = "mappings:\n";
  for (int i = 0; i < 100; ++i)
    rules += "- match: \"app" + std::to_string(i) + ".*.*.jobs\"\n  name: \"jobs\"\n  labels:\n    host: \"$1\"\n    queue: \"$2\"\n";
  const hermes::StatsdMappingFile mapping = hermes::parse_statsd_mapping(rules, "bench.yml");
  constexpr int lines = 200000;
  std::vector<std::string> plain_same(lines, "jobs:1|c|#host:h1,queue:mail"), mapped_same(lines, "app60.h1.mail.jobs:1|c");
  std::vector<std::string> plain_new, mapped_new;
  for (int i = 0; i < lines; ++i) {
    plain_new.push_back("jobs:1|c|#host:h" + std::to_string(i) + ",queue:mail");
    mapped_new.push_back("app60.h" + std::to_string(i) + ".mail.jobs:1|c");
  }
  const auto fresh = [&](bool mapped) {
    auto registry = std::make_unique<hermes::Registry>(hermes::parse_config(config_text, "bench"));
    if (mapped) registry->use_statsd_mapping(mapping.mapping);
    return registry;
  };
  auto plain = fresh(false), with_rules = fresh(true);
  const double plain_cached = ns_per_line(*plain, plain_same), mapped_cached = ns_per_line(*with_rules, mapped_same);
  double plain_first = 1e30, mapped_first = 1e30;
  for (int run = 0; run < 3; ++run) { // each run on registries without those series yet
    auto a = fresh(false), b = fresh(true);
    Clock::time_point start = Clock::now();
    for (const std::string &line : plain_new) a->ingest(line, 1.7e9);
    plain_first = std::min(plain_first, seconds_since(start) * 1e9 / lines);
    start = Clock::now();
    for (const std::string &line : mapped_new) b->ingest(line, 1.7e9);
    mapped_first = std::min(mapped_first, seconds_since(start) * 1e9 / lines);
    if (a->series_count() != lines || b->series_count() != lines) std::abort();
  }
  std::printf("\nStatsD mapping in-process, 100 glob rules, against a configured metric's line (ns per line):\n"
              "| line | configured | mapped | mapped / configured |\n|---|---:|---:|---:|\n"
              "| a name seen before (cached), same series | %.1f | %.1f | %.2f |\n"
              "| a name seen for the first time, new series | %.1f | %.1f | %.2f |\n",
              plain_cached, mapped_cached, mapped_cached / plain_cached, plain_first, mapped_first, mapped_first / plain_first);
}
#endif

} // namespace

// The memory budget's share of ingest: what a new series' accounting (its worst case
// worked out and taken from the budget) costs beside ingesting the datagram that makes
// it, in-process. An update of an existing series takes nothing from the budget.
void measure_memory_accounting() {
  const hermes::Config config = hermes::parse_config(bench_config, "bench");
  const hermes::MetricConfig &metric = config.metrics[0];
  constexpr int series = 200000;
  std::vector<std::string> datagrams, ids;
  for (int id = 0; id < series; ++id) {
    ids.push_back(std::to_string(id));
    datagrams.push_back(R"({"metric_name":"series_gauge","payload":{"labels":{"id":")" + ids.back() + R"("},"value":1}})");
  }
  std::vector<double> ingest_ns, accounting_ns;
  for (int round = 0; round < 5; ++round) {
    hermes::Registry registry(config, std::make_shared<hermes::MemoryBudget>(std::size_t{1} << 40));
    Clock::time_point start = Clock::now();
    for (const std::string &datagram : datagrams) registry.ingest(datagram, 1);
    ingest_ns.push_back(seconds_since(start) * 1e9 / series);
    hermes::MemoryBudget budget(std::size_t{1} << 40);
    std::vector<std::string_view> one(1);
    start = Clock::now();
    for (const std::string &id : ids) {
      one[0] = id;
      const hermes::detail::SeriesCost cost = hermes::detail::series_cost(metric, one);
      budget.take_for_series(cost.own, cost.body);
    }
    accounting_ns.push_back(seconds_since(start) * 1e9 / series);
    if (budget.used() == 0) std::abort(); // keeps the loop from being optimised away
  }
  std::sort(ingest_ns.begin(), ingest_ns.end());
  std::sort(accounting_ns.begin(), accounting_ns.end());
  std::printf("\nMemory accounting, in-process, 200k new series (median of 5): %.1f ns a series against %.1f ns to ingest "
              "the datagram that makes it: %.2f%%; nothing for an update\n",
              accounting_ns[2], ingest_ns[2], 100 * accounting_ns[2] / ingest_ns[2]);
}

// ---- a million series -----------------------------------------------------------------------

// Counters with one label value of 10 bytes, as the goals of the scale part count them.
const char *scale_config = R"({"service_name": "bench",
  "counters": [{"metric_name": "scale_total", "metric_description": "many counters", "labels": ["id"], "max_series": 1000000}]})";

std::string scale_id(int id) {
  char text[16];
  std::snprintf(text, sizeof text, "s%09d", id);
  return text;
}

std::string scale_sample(int id) { return R"({"metric_name":"scale_total","payload":{"labels":{"id":")" + scale_id(id) + R"("}}})"; }

// Sends every series once, in bursts that the receive buffer holds, and returns once
// hermes has taken them all in (it runs for less than 1 ms in 300).
void send_scale_series(const Receiver &hermes, int series) {
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in address = loopback(hermes.udp_port);
  for (int start = 0, sent = 0; start < series; start += 100) {
    std::string batch = "[";
    for (int i = start; i < std::min(series, start + 100); ++i) // made out of label order, as workers make them
      batch += (i > start ? "," : "") + scale_sample(static_cast<int>(static_cast<long>(i) * 7919 % series));
    batch += "]";
    ::sendto(fd, batch.data(), batch.size(), 0, reinterpret_cast<sockaddr *>(&address), sizeof address);
    if (++sent % 50 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(15));
  }
  ::close(fd);
  for (double before = run_ns(hermes.pid);;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const double now = run_ns(hermes.pid);
    if (now - before < 1e6) return;
    before = now;
  }
}

// A scrape of 1M series is too slow to pace a load by: the series go in bursts, again
// (counters only count again) until every one is there.
void load_scale_series(const Receiver &hermes, int series) {
  while (hermes_metric(hermes, "hermes_series") < series) send_scale_series(hermes, series);
}

// A figure against its goal: the row's last column says MISMATCH where the run fell short.
void goal_row(const char *what, double figure, const char *unit, double goal) {
  std::printf("| %s | %.2f %s | %.2f %s | %s |\n", what, figure, unit, goal, unit, figure <= goal ? "met" : "MISMATCH");
}

struct ScrapeCpu {
  double cpu_ms, wall_ms, waiting_ms; // waiting: runnable, but another process had the CPU
};

// Nanoseconds the process' one thread has waited on a run queue: on a busy machine,
// the part of a wall time that other processes took.
double wait_ns(pid_t pid) {
  const std::string text = read_text("/proc/" + std::to_string(pid) + "/schedstat");
  const std::size_t space = text.find(' ');
  return space == std::string::npos ? 0 : std::stod(text.substr(space + 1));
}

// Medians of 9 scrapes after 2: hermes' run time (schedstat) and the client's wall time,
// read as fast as loopback allows.
ScrapeCpu scrape_cpu(const Receiver &hermes, const char *accept) {
  std::string response;
  for (int i = 0; i < 2; ++i) http_get_into(response, hermes.http_port, "/metrics", accept);
  std::vector<double> cpu, wall, waiting;
  for (int i = 0; i < 9; ++i) {
    const double before = run_ns(hermes.pid), waited_before = wait_ns(hermes.pid);
    const Clock::time_point start = Clock::now();
    http_get_into(response, hermes.http_port, "/metrics", accept);
    wall.push_back(seconds_since(start) * 1000);
    cpu.push_back((run_ns(hermes.pid) - before) / 1e6);
    waiting.push_back((wait_ns(hermes.pid) - waited_before) / 1e6);
  }
  return {median(cpu), median(wall), median(waiting)};
}

// Hermes' run time per applied sample, one sample a datagram at 100k/s for 2 s, each
// to a series drawn at random among `series` that exist. The scrapes that read the
// count of samples come before and after the time measured: at 1M series each costs
// more than a thousand samples.
double ns_per_sample(const std::string &binary, int series) {
  Receiver hermes = start_hermes(binary, scale_config, {{"HERMES_MAX_MEMORY", "2GiB"}});
  load_scale_series(hermes, series);
  std::vector<std::string> datagrams;
  std::uint64_t state = 88172645463325252ull; // xorshift: the same series every run
  for (int i = 0; i < 200000; ++i) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    datagrams.push_back(scale_sample(static_cast<int>(state % static_cast<std::uint64_t>(series))));
  }
  const double applied_before = hermes_metric(hermes, "hermes_samples_accepted_total");
  const double before = run_ns(hermes.pid);
  send_stream(hermes.udp_port, datagrams, 100000, 2);
  std::this_thread::sleep_for(std::chrono::milliseconds(500)); // hermes keeps up: its queue is empty by then
  const double elapsed = run_ns(hermes.pid) - before;
  const double applied = hermes_metric(hermes, "hermes_samples_accepted_total") - applied_before;
  stop(hermes);
  return elapsed / applied;
}

// One registry of `series` counters: resident memory per series and in all after
// scrapes, CPU per scrape as text and protobuf, and the client's wall time against it.
void measure_scale_scrapes(const std::string &binary, int series, const char *label) {
  Receiver hermes = start_hermes(binary, scale_config, {{"HERMES_MAX_MEMORY", "2GiB"}});
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const double idle = rss_mib(hermes.pid);
  send_scale_series(hermes, series);
  const double loaded = rss_mib(hermes.pid); // before any scrape: a server keeps its latest body
  const double made = hermes_metric(hermes, "hermes_series");
  load_scale_series(hermes, series);
  const double per_series = (loaded - idle) * 1024 * 1024 / made;
  const ScrapeCpu text = scrape_cpu(hermes, nullptr), protobuf = scrape_cpu(hermes, protobuf_accept);
  const double resident = rss_mib(hermes.pid);
  stop(hermes);
  const bool million = series == 1000000;
  const std::string name = std::string(label) + " counter series";
  goal_row((name + ", resident bytes a series").c_str(), per_series, "B", 96);
  goal_row((name + ", resident in all after scrapes").c_str(), resident, "MiB", million ? 140 : 17);
  goal_row((name + ", CPU per scrape, text").c_str(), text.cpu_ms, "ms", million ? 70 : 8);
  if (million) goal_row((name + ", CPU per scrape, protobuf").c_str(), protobuf.cpu_ms, "ms", 45);
  goal_row((name + ", wall time of a text scrape / its CPU").c_str(), text.wall_ms / text.cpu_ms, "x", 1.3);
  std::printf("| %s, the same less hermes' wait for a busy CPU | %.2f x | | |\n", name.c_str(),
              (text.wall_ms - text.waiting_ms) / text.cpu_ms);
}

// 11. A million series: each figure against its goal.
void measure_scale(const std::string &binary) {
  std::printf("\n| counters, one 10-byte label value | measured | goal | |\n|---|---:|---:|---|\n");
  measure_scale_scrapes(binary, 100000, "100k");
  measure_scale_scrapes(binary, 1000000, "1M");
  const double few = ns_per_sample(binary, 100), many = ns_per_sample(binary, 1000000);
  std::printf("| CPU per applied sample, 100 series | %.2f us | | |\n", few / 1000);
  std::printf("| CPU per applied sample, 1M series | %.2f us | | |\n", many / 1000);
  goal_row("CPU per applied sample, 1M series / 100 series", many / few, "x", 1.3);
}

// ---- idle memory ----------------------------------------------------------------------------

struct IdleRow {
  long long size_bytes;
  double resident_mib;
  double proportional_mib;
};

// A process' size on disk and its memory 500 ms after it is ready to serve.
IdleRow measure_idle(const std::string &path, pid_t pid) {
  struct stat info {};
  ::stat(path.c_str(), &info);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  return {static_cast<long long>(info.st_size), rss_mib(pid), pss_mib(pid)};
}

IdleRow measure_hermes_idle(const std::string &binary) {
  Receiver idle = start_hermes(binary, bench_config);
  const IdleRow row = measure_idle(binary, idle.pid);
  stop(idle);
  return row;
}

// ---- Pushgateway, beside ------------------------------------------------------------------

// Debian's prometheus-pushgateway, the push gateway Prometheus itself ships; make bench
// installs it (bench-deps) and the bench stops when it is missing.
const char *pushgateway_binary = "/usr/bin/prometheus-pushgateway";

// Every thread's run time: Pushgateway, a Go program, works on several threads.
double all_threads_run_ns(pid_t pid) {
  const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
  double total = 0;
  if (DIR *directory = ::opendir(tasks.c_str())) {
    while (const dirent *entry = ::readdir(directory))
      if (entry->d_name[0] != '.') {
        const std::string text = read_text(tasks + "/" + entry->d_name + "/schedstat");
        if (!text.empty()) total += std::stod(text);
      }
    ::closedir(directory);
  }
  return total;
}

// A port the kernel says is free now; Pushgateway takes no port 0 it would tell us about.
std::uint16_t free_tcp_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address = loopback(0);
  ::bind(fd, reinterpret_cast<sockaddr *>(&address), sizeof address);
  socklen_t length = sizeof address;
  ::getsockname(fd, reinterpret_cast<sockaddr *>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

bool answers_200(const std::string &response) { return response.compare(0, 12, "HTTP/1.1 200") == 0 || response.compare(0, 12, "HTTP/1.0 200") == 0; }

// A server of Prometheus' own (Pushgateway, Prometheus) on a free loopback port, its
// output discarded, once /-/ready answers 200; the bench stops if it does not within
// `seconds`.
Receiver start_prometheus_server(const char *binary, std::vector<std::string> args, int seconds) {
  Receiver server;
  server.http_port = free_tcp_port();
  args.insert(args.begin(), binary);
  args.push_back("--web.listen-address=127.0.0.1:" + std::to_string(server.http_port));
  server.pid = ::fork();
  if (server.pid == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 1), ::dup2(null, 2);
    std::vector<char *> argv;
    for (std::string &arg : args) argv.push_back(&arg[0]);
    argv.push_back(nullptr);
    ::execv(binary, argv.data());
    std::_Exit(1);
  }
  for (int tries = 0; tries < seconds * 100; ++tries) {
    if (answers_200(http_get(server.http_port, "/-/ready"))) return server;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::fprintf(stderr, "bench: %s did not answer on 127.0.0.1:%u\n", binary, server.http_port);
  std::exit(1);
}

// Pushgateway on loopback. Debian's default persistence file would carry the groups of an
// earlier run into this one, so it gets none, and the store is checked empty after the
// idle figures are read.
Receiver start_pushgateway() { return start_prometheus_server(pushgateway_binary, {"--persistence.file="}, 10); }

void expect_empty_store(const Receiver &gateway) {
  if (http_get(gateway.http_port, "/metrics").find("\npush_time_seconds{") != std::string::npos) {
    std::fprintf(stderr, "bench: Pushgateway started with groups pushed before\n");
    std::exit(1);
  }
}

int connect_tcp(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_in address = loopback(port);
  if (::connect(fd, reinterpret_cast<sockaddr *>(&address), sizeof address) != 0) std::perror("connect");
  return fd;
}

// Sends one HTTP/1.1 request on `fd` and reads its answer, whose body Content-Length
// bounds: true when the status is 200.
bool http_exchange(int fd, const std::string &request) {
  if (::send(fd, request.data(), request.size(), 0) != static_cast<ssize_t>(request.size())) return false;
  std::string response;
  char buffer[4096];
  std::size_t head_end = std::string::npos;
  for (ssize_t n; head_end == std::string::npos && (n = ::recv(fd, buffer, sizeof buffer, 0)) > 0;) {
    response.append(buffer, static_cast<std::size_t>(n));
    head_end = response.find("\r\n\r\n");
  }
  if (head_end == std::string::npos) return false;
  const std::size_t length_at = response.find("Content-Length: ");
  const std::size_t body = length_at < head_end ? std::stoul(response.substr(length_at + 16)) : 0;
  for (ssize_t n; response.size() < head_end + 4 + body && (n = ::recv(fd, buffer, sizeof buffer, 0)) > 0;)
    response.append(buffer, static_cast<std::size_t>(n));
  return answers_200(response);
}

std::string put_request(const std::string &body) {
  return "PUT /metrics/job/bench HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain; version=0.0.4\r\n"
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

// A receiver's CPU (every thread, from schedstat) per single-sample PUT, `pushes` of
// them one after another over one keep-alive connection or a new connection each.
double cpu_us_per_push(const Receiver &gateway, int pushes, bool keep_alive) {
  const std::string request = put_request("bench_counter 1\n");
  int fd = connect_tcp(gateway.http_port);
  for (int i = 0; i < 100; ++i) { // warm up
    if (!keep_alive) ::close(fd), fd = connect_tcp(gateway.http_port);
    http_exchange(fd, request);
  }
  const double cpu_before = all_threads_run_ns(gateway.pid);
  int failed = 0;
  for (int i = 0; i < pushes; ++i) {
    if (!keep_alive) ::close(fd), fd = connect_tcp(gateway.http_port);
    failed += http_exchange(fd, request) ? 0 : 1;
  }
  ::close(fd);
  std::this_thread::sleep_for(std::chrono::milliseconds(300)); // let it finish what the last one started
  const double cpu_ns = all_threads_run_ns(gateway.pid) - cpu_before;
  if (failed != 0) {
    std::fprintf(stderr, "bench: %d of %d pushes into port %u failed\n", failed, pushes, gateway.http_port);
    std::exit(1);
  }
  return cpu_ns / pushes / 1000;
}

// 100k gauge series in one PUT of 100k lines, all of them in its /metrics after.
void push_series_into_pushgateway(const Receiver &gateway, int series) {
  std::string body = "# TYPE bench_gauge gauge\n";
  for (int id = 0; id < series; ++id) body += "bench_gauge{id=\"" + std::to_string(id) + "\"} " + std::to_string(id) + "\n";
  const int fd = connect_tcp(gateway.http_port);
  const bool pushed = http_exchange(fd, put_request(body));
  ::close(fd);
  const std::string scraped = http_get(gateway.http_port, "/metrics");
  int found = 0;
  for (std::size_t at = 0; (at = scraped.find("\nbench_gauge{", at)) != std::string::npos; ++at) ++found;
  if (!pushed || found != series) {
    std::fprintf(stderr, "bench: Pushgateway holds %d of %d series pushed\n", found, series);
    std::exit(1);
  }
}

// What Hermes measured in the same run, to print beside Pushgateway.
struct HermesFigures {
  IngestRow burst;      // 1 sample a datagram, 300k as fast as they go
  IngestRow batched;    // 20 samples a datagram, 2 s at full speed
  ScrapeRow scrape_100k;
  IdleRow idle;
};

void measure_peers(const std::string &binary, const HermesFigures &hermes) {
  constexpr int pushes = 5000, series = 100000;
  Receiver gateway = start_pushgateway();
  const IdleRow idle = measure_idle(pushgateway_binary, gateway.pid);
  expect_empty_store(gateway);
  const double keep_alive_us = cpu_us_per_push(gateway, pushes, true);
  const double new_connection_us = cpu_us_per_push(gateway, pushes, false);
  stop(gateway);
  gateway = start_pushgateway();
  expect_empty_store(gateway);
  push_series_into_pushgateway(gateway, series);
  const ScrapeRow scrape = time_scrapes(gateway.pid, gateway.http_port, 2, 5);
  stop(gateway);
  std::printf("\n| beside Pushgateway | %s | %s |\n|---|---|---|\n", binary.c_str(), pushgateway_binary);
  std::printf("| takes | JSON datagrams and StatsD lines over UDP | Prometheus text over HTTP, PUT per job and group |\n");
  std::printf("| CPU per sample | %.2f us (1 sample/dgram, UDP, burst of 300k); %.2f us (20 samples/dgram) | "
              "%.2f us (PUT of 1 sample, keep-alive, %d pushes); %.2f us (a new connection each) |\n",
              hermes.burst.cpu_per_sample_us, hermes.batched.cpu_per_sample_us, keep_alive_us, pushes, new_connection_us);
  std::printf("| burst of 300k datagrams kept | %.1f%% | does not apply: a client pushing over HTTP waits for each answer |\n",
              100 * hermes.burst.received / static_cast<double>(hermes.burst.sent));
  std::printf("| /metrics at 100k series | %.2f ms (median of 7 after 2), %.2f MiB resident | "
              "%.2f ms (median of 5 after 2; one PUT of 100k lines), %.2f MiB resident |\n",
              hermes.scrape_100k.median_ms, hermes.scrape_100k.resident_mib, scrape.median_ms, scrape.resident_mib);
  std::printf("| /metrics body at 100k series | %zu bytes | %zu bytes |\n", hermes.scrape_100k.body_bytes, scrape.body_bytes);
  std::printf("| binary size | %lld bytes | %lld bytes |\n", hermes.idle.size_bytes, idle.size_bytes);
  std::printf("| idle memory | %.2f MiB resident, %.2f proportional | %.2f MiB resident, %.2f proportional |\n",
              hermes.idle.resident_mib, hermes.idle.proportional_mib, idle.resident_mib, idle.proportional_mib);
}

// ---- The Pushgateway API, beside Pushgateway --------------------------------------------------

// The body the groups are pushed with: 100 gauge families of 10 samples each, in the
// text format or as delimited protobuf MetricFamily messages (what client_golang sends).
std::string push_groups_body(bool protobuf) {
  std::string body;
  const auto varint = [](std::string &out, std::uint64_t value) {
    for (; value >= 0x80; value >>= 7) out += static_cast<char>(value | 0x80);
    out += static_cast<char>(value);
  };
  const auto bytes = [&](std::string &out, int field, const std::string &value) {
    varint(out, static_cast<std::uint64_t>(field) << 3 | 2), varint(out, value.size()), out += value;
  };
  for (int family = 0; family < 100; ++family) {
    const std::string name = "bench_family_" + std::to_string(family);
    std::string message; // MetricFamily {name = 1, type = 3 (GAUGE = 1), metric = 4}
    bytes(message, 1, name), varint(message, 3 << 3), varint(message, 1);
    if (!protobuf) body += "# TYPE " + name + " gauge\n";
    for (int sample = 0; sample < 10; ++sample) {
      const double value = family * 10 + sample + 0.5;
      if (!protobuf) {
        body += name + "{i=\"" + std::to_string(sample) + "\"} " + std::to_string(family * 10 + sample) + ".5\n";
        continue;
      }
      std::string label, gauge(1, static_cast<char>(1 << 3 | 1)), metric; // LabelPair {1, 2}, Gauge {value = 1}
      bytes(label, 1, "i"), bytes(label, 2, std::to_string(sample));
      gauge.append(reinterpret_cast<const char *>(&value), sizeof value); // little-endian, as the wire wants
      bytes(metric, 1, label), bytes(metric, 2, gauge);
      bytes(message, 4, metric);
    }
    if (protobuf) varint(body, message.size()), body += message;
  }
  return body;
}

// `groups` groups of 100 gauge families of 10 samples each, one PUT a group on a
// connection of its own, every other one in protobuf; every one must be answered 200.
void push_groups(const Receiver &receiver, int groups) {
  const std::string bodies[] = {push_groups_body(false), push_groups_body(true)};
  for (int group = 0; group < groups; ++group) {
    const int fd = connect_tcp(receiver.http_port);
    std::string request = put_request(bodies[group % 2]);
    request.replace(request.find("/job/bench"), 10, "/job/bench/group/" + std::to_string(group));
    if (group % 2)
      request.replace(request.find("text/plain; version=0.0.4"), 25,
                      "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited");
    const bool pushed = http_exchange(fd, request);
    ::close(fd);
    if (!pushed) {
      std::fprintf(stderr, "bench: group %d of %d was not pushed into port %u\n", group, groups, receiver.http_port);
      std::exit(1);
    }
  }
}

struct PushFigures {
  double cpu_us;    // per single-metric PUT, a new connection each
  ScrapeRow groups; // /metrics with the groups, and resident memory after it
};

PushFigures measure_push_api(Receiver receiver, int pushes, int groups) {
  PushFigures figures{};
  figures.cpu_us = cpu_us_per_push(receiver, pushes, false);
  push_groups(receiver, groups);
  figures.groups = time_scrapes(receiver.pid, receiver.http_port, 2, 5);
  stop(receiver);
  return figures;
}

// A figure against a fraction of Pushgateway's: MISMATCH where Hermes falls short.
void push_goal_row(const char *what, double hermes, double gateway, const char *unit, double fraction) {
  const double goal = gateway * fraction;
  std::printf("| %s | %.2f %s | %.2f %s | at most 1/%.0f: %.2f %s | %s |\n", what, hermes, unit, gateway, unit, 1 / fraction,
              goal, unit, hermes <= goal ? "met" : "MISMATCH");
}

// 15. The Pushgateway API: the same pushes into hermes and into Pushgateway in one run,
// CPU per single-metric PUT (a new connection each: hermes answers one request per
// connection), then 100 groups of 1,000 samples: resident memory after a scrape, and the
// scrape's time; each against the goals of the Pushgateway API (1/20, 1/4, 1/10).
void measure_push_against_pushgateway(const std::string &binary) {
  constexpr int pushes = 5000, groups = 100;
  Receiver gateway = start_pushgateway();
  expect_empty_store(gateway);
  const PushFigures theirs = measure_push_api(gateway, pushes, groups);
  // Room for the groups whatever their worst case: the budget is not what is measured.
  const PushFigures ours = measure_push_api(start_hermes(binary, bench_config, {{"HERMES_MAX_MEMORY", "1GiB"}}), pushes, groups);
  std::printf("\n| Pushgateway API | %s | %s | goal | |\n|---|---:|---:|---|---|\n", binary.c_str(), pushgateway_binary);
  push_goal_row("CPU per single-metric PUT, a new connection each", ours.cpu_us, theirs.cpu_us, "us", 1.0 / 20);
  push_goal_row("resident, 100 groups of 1,000 samples", ours.groups.resident_mib, theirs.groups.resident_mib, "MiB", 1.0 / 4);
  push_goal_row("/metrics of those groups, median of 5 after 2", ours.groups.median_ms, theirs.groups.median_ms, "ms", 1.0 / 10);
  std::printf("| /metrics body of those groups | %zu bytes | %zu bytes | | |\n", ours.groups.body_bytes, theirs.groups.body_bytes);
}

// ---- StatsD over TCP ------------------------------------------------------------------------

// Sends the lines of `datagrams`, each ended by a newline, over one TCP connection, over and
// over for `duration` seconds, in writes of about 64 KiB as a buffering client makes them;
// returns the lines sent.
std::uint64_t send_tcp_lines(std::uint16_t port, const std::vector<std::string> &datagrams, double duration) {
  std::string chunk;
  std::uint64_t per_chunk = 0;
  while (chunk.size() < 65536)
    for (const std::string &line : datagrams) chunk += line + "\n", ++per_chunk;
  const int fd = connect_tcp(port);
  std::uint64_t sent = 0;
  for (const Clock::time_point start = Clock::now(); seconds_since(start) < duration; sent += per_chunk)
    for (std::size_t at = 0; at < chunk.size();) {
      const ssize_t n = ::send(fd, chunk.data() + at, chunk.size() - at, MSG_NOSIGNAL);
      if (n <= 0) return ::close(fd), sent;
      at += static_cast<std::size_t>(n);
    }
  ::close(fd);
  return sent;
}

IngestRow measure_tcp(const std::string &binary, const std::vector<std::string> &lines, double duration) {
  Receiver hermes = start_hermes(binary, bench_config, {{"HERMES_STATSD_TCP_PORT", "0"}});
  const double cpu_before = run_ns(hermes.pid);
  const std::uint64_t sent = send_tcp_lines(hermes.statsd_tcp_port, lines, duration);
  const double applied = settle([&] { return hermes_metric(hermes, "hermes_samples_accepted_total"); });
  const double cpu = (run_ns(hermes.pid) - cpu_before) / 1e9;
  stop(hermes);
  std::printf("  statsd over TCP: sent %llu lines, applied %.0f: %s\n", static_cast<unsigned long long>(sent), applied,
              static_cast<double>(sent) == applied ? "nothing unaccounted" : "MISMATCH");
  return {"statsd over TCP, full speed", sent, applied, 0, applied > 0 ? cpu / applied * 1e6 : 0};
}

// TCP against UDP in hermes' CPU per sample, the same lines, three rounds interleaved:
// the round whose ratio is the median.
void measure_tcp_against_udp(const std::string &binary) {
  const std::vector<std::string> lines = statsd_datagrams(1), batched = statsd_datagrams(20);
  std::vector<std::pair<IngestRow, IngestRow>> runs;
  for (int round = 0; round < 3; ++round) {
    IngestRow udp = measure_hermes(binary, "statsd 20 lines, UDP", batched, 20, 0, 2);
    runs.emplace_back(std::move(udp), measure_tcp(binary, lines, 2));
  }
  const auto ratio = [](const std::pair<IngestRow, IngestRow> &run) { return run.second.cpu_per_sample_us / run.first.cpu_per_sample_us; };
  std::sort(runs.begin(), runs.end(), [&](const auto &a, const auto &b) { return ratio(a) < ratio(b); });
  const auto &[udp, tcp] = runs[1];
  std::printf("\n| StatsD lines (2 s each, median of 3) | samples applied | hermes us/sample | TCP / UDP |\n|---|---:|---:|---:|\n");
  std::printf("| over UDP, 20 lines a datagram | %.0f | %.3f | |\n", udp.received, udp.cpu_per_sample_us);
  std::printf("| over TCP, one connection | %.0f | %.3f | %.2fx%s |\n", tcp.received, tcp.cpu_per_sample_us, ratio(runs[1]),
              ratio(runs[1]) <= 1.5 ? "" : " MISMATCH: more than 1.5x");
}

// ---- 13. TLS ------------------------------------------------------------------------------

#ifdef HERMES_TLS

// A root and a server certificate for 127.0.0.1, made with openssl in a new folder.
std::string make_certificates() {
  char folder[] = "/tmp/hermes-bench-tls-XXXXXX";
  if (!::mkdtemp(folder)) std::perror("mkdtemp");
  const std::string dir = folder;
  const std::string commands =
      "cd " + dir + " && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out root.key"
      " && openssl req -x509 -new -key root.key -out root.pem -days 2 -subj /CN=root"
      " && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key"
      " && openssl req -new -key server.key -out server.csr -subj /CN=server"
      " && echo subjectAltName=IP:127.0.0.1 > ext"
      " && openssl x509 -req -in server.csr -CA root.pem -CAkey root.key -CAcreateserial -out server.pem -days 1 -extfile ext";
  if (std::system((commands + " >/dev/null 2>&1").c_str()) != 0) {
    std::fprintf(stderr, "bench: openssl could not make the certificates\n");
    std::exit(1);
  }
  return dir;
}

// A TLS client on a new connection to hermes, blocking, with its handshake done; or,
// without `finish`, stopped after its ClientHello.
struct TlsClient {
  hermes::detail::FileDescriptor fd;
  std::unique_ptr<hermes::detail::TlsStream> stream;
};

TlsClient tls_connect(std::uint16_t port, const std::shared_ptr<const hermes::detail::TlsContext> &context, bool finish = true) {
  TlsClient client{hermes::detail::FileDescriptor(::socket(AF_INET, SOCK_STREAM, 0)), nullptr};
  sockaddr_in address = loopback(port);
  if (::connect(client.fd.get(), reinterpret_cast<sockaddr *>(&address), sizeof address) != 0) return client;
  client.stream = std::make_unique<hermes::detail::TlsStream>(context, client.fd.get(), "127.0.0.1");
  if (!finish) { // the one step that sends the ClientHello, without waiting for the answer
    ::fcntl(client.fd.get(), F_SETFL, O_NONBLOCK);
    client.stream->handshake();
    return client;
  }
  while (!client.stream->handshake() && !client.stream->failed()) {
  }
  return client;
}

void https_get_into(std::string &response, std::uint16_t port, const std::shared_ptr<const hermes::detail::TlsContext> &context,
                    const char *path) {
  response.clear();
  TlsClient client = tls_connect(port, context);
  if (!client.stream || !client.stream->handshake_done()) return;
  const std::string request = std::string("GET ") + path + " HTTP/1.0\r\n\r\n";
  if (client.stream->write(request.data(), request.size()) <= 0) return;
  char buffer[65536];
  for (std::ptrdiff_t n; (n = client.stream->read(buffer, sizeof buffer)) > 0;) response.append(buffer, static_cast<std::size_t>(n));
}

// GET `path` as HTTP/1.1 on a connection that stays open, as Prometheus scrapes, through
// `write` and `read` (a socket's or a TLS stream's): the answer, as far as its
// Content-Length says, into `response`.
template <typename Write, typename Read>
void kept_get_into(std::string &response, const char *path, const char *headers, Write write, Read read) {
  response.clear();
  const std::string request = std::string("GET ") + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + "\r\n";
  if (write(request.data(), request.size()) != static_cast<std::ptrdiff_t>(request.size())) return;
  char buffer[65536];
  std::size_t head_end = std::string::npos, whole = std::string::npos;
  while (response.size() < whole) {
    const std::ptrdiff_t n = read(buffer, sizeof buffer);
    if (n <= 0) return;
    response.append(buffer, static_cast<std::size_t>(n));
    if (head_end != std::string::npos || (head_end = response.find("\r\n\r\n")) == std::string::npos) continue;
    const std::size_t field = response.find("Content-Length: ");
    whole = head_end + 4 + (field < head_end ? std::stoul(response.substr(field + 16)) : 0);
  }
}

// hermes' CPU (ns, from schedstat) per run of `request`, `count` runs.
template <typename Request> double run_ns_per(const Receiver &hermes, int count, Request request) {
  const double before = run_ns(hermes.pid);
  for (int i = 0; i < count; ++i) request();
  return (run_ns(hermes.pid) - before) / count;
}

// Resident memory per connection of 64 TLS clients that stop mid-handshake or once it
// is done, each measure in a hermes of its own: freed pages stay resident for the next.
double resident_bytes_per_connection(const std::string &binary, const std::string &dir,
                                     const std::shared_ptr<const hermes::detail::TlsContext> &context, bool finish) {
  constexpr int count = 64;
  Receiver hermes = start_hermes(binary, bench_config, {{"HERMES_TLS_CERT_FILE", dir + "/server.pem"}, {"HERMES_TLS_KEY_FILE", dir + "/server.key"}});
  std::string response;
  https_get_into(response, hermes.http_port, context, "/metrics"); // the first scrape's memory is not a connection's
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const double before = rss_mib(hermes.pid);
  std::vector<TlsClient> clients;
  for (int i = 0; i < count; ++i) clients.push_back(tls_connect(hermes.http_port, context, finish));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const double after = rss_mib(hermes.pid);
  clients.clear();
  stop(hermes);
  return (after - before) * 1024 * 1024 / count;
}

// 100k counter series into `hermes` in parts of 1000, without reading its /metrics (a
// TLS hermes does not answer in clear); true once it shows them all over TLS.
bool push_series_over_tls(const Receiver &hermes, const std::shared_ptr<const hermes::detail::TlsContext> &context) {
  for (int id = 0; id < 100000; id += 1000) {
    std::vector<std::string> part;
    for (int i = id; i < id + 1000; ++i)
      part.push_back(R"({"metric_name":"series_total","payload":{"labels":{"id":")" + std::to_string(i) + R"("},"value":)" +
                     std::to_string(i) + "}}");
    send_stream(hermes.udp_port, part, 0, 10, part.size());
    std::this_thread::sleep_for(std::chrono::milliseconds(5)); // within the socket's buffer
  }
  std::string response;
  for (int attempt = 0; attempt < 50; ++attempt) {
    https_get_into(response, hermes.http_port, context, "/metrics");
    if (response.find("\nhermes_series 100000\n") != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

void measure_tls(const std::string &binary) {
  const std::string dir = make_certificates();
  hermes::detail::TlsClientSettings settings;
  settings.ca_file = dir + "/root.pem";
  const auto context = hermes::detail::TlsContext::for_client(settings);
  Receiver tls = start_hermes(binary, bench_config, {{"HERMES_TLS_CERT_FILE", dir + "/server.pem"}, {"HERMES_TLS_KEY_FILE", dir + "/server.key"}});
  Receiver plain = start_hermes(binary, bench_config);
  push_all(plain, 100000, [](int id) {
    return R"({"metric_name":"series_total","payload":{"labels":{"id":")" + std::to_string(id) + R"("},"value":)" +
           std::to_string(id) + "}}";
  });
  std::printf("\n| TLS 1.2 (ECDSA P-256 key, X25519, ChaCha20-Poly1305) | in clear | over TLS | ratio |\n|---|---:|---:|---:|\n");
  if (!push_series_over_tls(tls, context)) std::printf("MISMATCH: the TLS hermes does not show 100000 series\n");
  std::string response;
  // As Prometheus scrapes: one connection to each, kept open, the handshake done before.
  const hermes::detail::FileDescriptor plain_kept(connect_tcp(plain.http_port));
  const TlsClient tls_kept = tls_connect(tls.http_port, context);
  const auto plain_kept_scrape = [&](const char *headers) {
    kept_get_into(response, "/metrics", headers, [&](const char *data, std::size_t size) { return ::send(plain_kept.get(), data, size, MSG_NOSIGNAL); },
                  [&](char *data, std::size_t size) { return ::recv(plain_kept.get(), data, size, 0); });
  };
  const auto tls_kept_scrape = [&](const char *headers) {
    kept_get_into(response, "/metrics", headers, [&](const char *data, std::size_t size) { return tls_kept.stream->write(data, size); },
                  [&](char *data, std::size_t size) { return tls_kept.stream->read(data, size); });
  };
  // Prometheus asks for gzip; curl and most other clients do not.
  for (const auto &[headers, what] : {std::pair<const char *, const char *>{"", "the body as it is"},
                                      {"Accept-Encoding: gzip\r\n", "gzip, as Prometheus asks"}}) {
    for (int i = 0; i < 2; ++i) plain_kept_scrape(headers), tls_kept_scrape(headers);
    const double plain_kept_ns = run_ns_per(plain, 20, [&] { plain_kept_scrape(headers); });
    const std::size_t plain_size = response.size();
    const double tls_kept_ns = run_ns_per(tls, 20, [&] { tls_kept_scrape(headers); });
    if (response.size() < plain_size * 9 / 10 || response.size() > plain_size * 11 / 10)
      std::printf("MISMATCH: bodies of %zu bytes in clear, %zu over TLS\n", plain_size, response.size());
    std::printf("| hermes CPU per scrape of 100k series on one kept-alive connection, %s (%zu bytes), 20 after 2 (ms) | %.2f | %.2f | %.2fx%s |\n",
                what, plain_size, plain_kept_ns / 1e6, tls_kept_ns / 1e6, tls_kept_ns / plain_kept_ns,
                tls_kept_ns > 1.5 * plain_kept_ns ? " MISMATCH: the goal is 1.5x" : "");
  }
  for (int i = 0; i < 2; ++i) http_get_into(response, plain.http_port, "/metrics"), https_get_into(response, tls.http_port, context, "/metrics");
  const double plain_scrape = run_ns_per(plain, 20, [&] { http_get_into(response, plain.http_port, "/metrics"); });
  const double tls_scrape = run_ns_per(tls, 20, [&] { https_get_into(response, tls.http_port, context, "/metrics"); });
  std::printf("| hermes CPU per scrape of 100k series on a new connection each (HTTP/1.0), 20 after 2 (ms) | %.2f | %.2f | %.2fx |\n",
              plain_scrape / 1e6, tls_scrape / 1e6, tls_scrape / plain_scrape);
  const double plain_request = run_ns_per(plain, 200, [&] { http_get_into(response, plain.http_port, "/-/healthy"); });
  const double tls_request = run_ns_per(tls, 200, [&] { https_get_into(response, tls.http_port, context, "/-/healthy"); });
  std::printf("| hermes CPU per GET /-/healthy on a new connection, 200 (ms) | %.3f | %.3f | +%.3f ms: one full handshake |\n",
              plain_request / 1e6, tls_request / 1e6, (tls_request - plain_request) / 1e6);
  stop(plain);
  stop(tls);
  const double mid = resident_bytes_per_connection(binary, dir, context, false);
  const double established = resident_bytes_per_connection(binary, dir, context, true);
  std::printf("| resident memory per TLS connection, 64 held (bytes) | | %.0f mid-handshake, %.0f established | the budget's share: %d |\n",
              mid, established, HERMES_TLS_CONNECTION_BYTES);
  if (std::system(("rm -rf " + dir).c_str()) != 0) std::fprintf(stderr, "bench: could not remove %s\n", dir.c_str());
}

#else

void measure_tls(const std::string &) { std::printf("\nTLS: this bench was built without HERMES_TLS\n"); }

#endif // HERMES_TLS

// The CPU this thread has used, in ms: what one remote-write cycle or one body costs.
double thread_cpu_ms() {
  timespec now{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) * 1000 + static_cast<double>(now.tv_nsec) / 1e6;
}

void measure_remote_write() {
  std::printf("\n| remote write, in-process, median of 9 interleaved | series | text /metrics CPU (ms) | remote-write cycle CPU (ms) | cycle / scrape | goal: at most 1x | WriteRequest bytes | snappy bytes | ratio |\n"
              "|---|---:|---:|---:|---:|---|---:|---:|---:|\n");
  for (const int count : {10000, 100000}) {
    hermes::Registry registry(hermes::parse_config(bench_config, "bench"));
    for (int id = 0; id < count; ++id)
      registry.ingest(R"({"metric_name":"series_gauge","payload":{"labels":{"id":")" + std::to_string(id) + R"("},"value":)" +
                      std::to_string(id) + "}}");
    registry.expire(); // as a server does before every scrape and snapshot: new series sorted into place once
    const hermes::ServerStats stats;
    std::string body;
    const auto scrape_once = [&] {
      hermes::detail::Renderer renderer(body, registry, {registry, &stats, nullptr}, hermes::Format::text);
      while (!renderer.write_some(HERMES_RENDER_PAUSE_STRIDE)) {
      }
    };
    static const std::string job = "bench", instance = "board";
    static const std::vector<std::pair<std::string, std::string>> external = {{"site", "lab"}};
    std::size_t raw = 0, packed = 0;
    std::string compressed, previous_text;
    std::vector<hermes::detail::SeriesKey> previous_keys;
    const auto cycle_once = [&] { // as a server does it: sized as the last one, keys and stale markers against it
      hermes::detail::SnapshotWriter writer({&job, &instance, &external, 2000, raw, previous_keys.size(), &previous_text, &previous_keys},
                                            1764000000000, [](std::size_t) { return true; });
      hermes::detail::Renderer renderer(writer, registry, {registry, &stats, nullptr});
      while (!renderer.write_some(HERMES_RENDER_PAUSE_STRIDE)) {
      }
      writer.add_stale_markers(previous_text, previous_keys);
      if (!writer.same_keys()) previous_text.swap(writer.key_text()), previous_keys.swap(writer.keys());
      const hermes::detail::PendingSnapshot &snapshot = writer.snapshot();
      raw = packed = 0;
      for (std::size_t b = 0, start = 0; b < snapshot.batch_ends.size(); start = snapshot.batch_ends[b++]) {
        hermes::detail::snappy_compress(std::string_view(snapshot.series).substr(start, snapshot.batch_ends[b] - start), compressed);
        raw += snapshot.batch_ends[b] - start, packed += compressed.size();
      }
    };
    std::vector<double> scrapes, cycles; // taken in turn, so that a busy moment of a shared machine falls on both
    for (int i = 0; i < 9; ++i) {
      double start = thread_cpu_ms();
      scrape_once();
      scrapes.push_back(thread_cpu_ms() - start);
      start = thread_cpu_ms();
      cycle_once();
      cycles.push_back(thread_cpu_ms() - start);
    }
    const double scrape = median(scrapes), cycle = median(cycles);
    std::printf("| %s series | %d | %.2f | %.2f | %.2fx | %s | %zu | %zu | %.1fx |\n", count == 10000 ? "10k" : "100k", count, scrape,
                cycle, cycle / scrape, cycle <= scrape ? "met" : "MISMATCH", raw, packed, static_cast<double>(raw) / static_cast<double>(packed));
  }
}

// ---- remote write beside Prometheus in agent mode ------------------------------------------

constexpr const char *prometheus_binary = "/usr/bin/prometheus";

// A remote-write receiver in this process: reads each request whole, answers 204 and
// keeps nothing, counting requests by sender (User-Agent Hermes/ or Prometheus/).
struct DiscardReceiver {
  std::uint16_t port = 0;
  std::atomic<std::uint64_t> hermes_requests{0}, prometheus_requests{0};
};

void serve_discarding(int fd, DiscardReceiver &receiver) {
  std::string buffer;
  char chunk[65536];
  for (;;) {
    std::size_t head_end;
    while ((head_end = buffer.find("\r\n\r\n")) == std::string::npos) {
      const ssize_t got = ::recv(fd, chunk, sizeof chunk, 0);
      if (got <= 0) return void(::close(fd));
      buffer.append(chunk, static_cast<std::size_t>(got));
    }
    std::string head = buffer.substr(0, head_end);
    std::transform(head.begin(), head.end(), head.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    const std::size_t length_at = head.find("\ncontent-length:");
    const std::size_t length = length_at == std::string::npos ? 0 : std::stoul(head.substr(length_at + 16));
    while (buffer.size() < head_end + 4 + length) {
      const ssize_t got = ::recv(fd, chunk, sizeof chunk, 0);
      if (got <= 0) return void(::close(fd));
      buffer.append(chunk, static_cast<std::size_t>(got));
    }
    buffer.erase(0, head_end + 4 + length);
    if (head.find("\nuser-agent: hermes/") != std::string::npos) ++receiver.hermes_requests;
    if (head.find("\nuser-agent: prometheus/") != std::string::npos) ++receiver.prometheus_requests;
    static const char answer[] = "HTTP/1.1 204 No Content\r\n\r\n";
    if (::send(fd, answer, sizeof answer - 1, MSG_NOSIGNAL) < 0) return void(::close(fd));
  }
}

DiscardReceiver &start_discard_receiver() {
  static DiscardReceiver receiver; // serves until the bench ends
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address = loopback(0);
  ::bind(listener, reinterpret_cast<sockaddr *>(&address), sizeof address);
  socklen_t length = sizeof address;
  ::getsockname(listener, reinterpret_cast<sockaddr *>(&address), &length);
  ::listen(listener, 64);
  receiver.port = ntohs(address.sin_port);
  std::thread([listener] {
    for (int fd; (fd = ::accept(listener, nullptr, nullptr)) >= 0;) std::thread(serve_discarding, fd, std::ref(receiver)).detach();
  }).detach();
  return receiver;
}

// Prometheus in agent mode on loopback, its WAL in `dir`: scrapes `target` every second
// and writes what it scrapes to the receiver, with its defaults otherwise.
Receiver start_prometheus_agent(const std::string &dir, std::uint16_t target, std::uint16_t receiver_port) {
  const std::string config = dir + "/agent.yml";
  std::FILE *file = std::fopen(config.c_str(), "w");
  std::fprintf(file,
               "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
               "scrape_configs: [{job_name: hermes, static_configs: [{targets: ['127.0.0.1:%u']}]}]\n"
               "remote_write: [{url: 'http://127.0.0.1:%u/api/v1/write'}]\n",
               target, receiver_port);
  std::fclose(file);
  return start_prometheus_server(prometheus_binary, {"--enable-feature=agent", "--config.file=" + config, "--storage.agent.path=" + dir + "/wal"},
                                 30);
}

// 14b. What remote write adds to hermes' resident memory at 10k series, against
// Prometheus 2.42 in agent mode scraping a hermes of the same series and writing them to
// the same receiver, in the same run, every second for 20 s: hermes with remote write
// less a hermes without it, each with the same 10k series, against the agent; goal 1/10.
void measure_remote_write_memory(const std::string &binary) {
  constexpr int series = 10000, seconds = 20;
  char folder[] = "/tmp/hermes-bench-agent-XXXXXX";
  if (!::mkdtemp(folder)) return std::perror("mkdtemp");
  const std::string dir = folder;
  DiscardReceiver &receiver = start_discard_receiver();
  const std::string url = "http://127.0.0.1:" + std::to_string(receiver.port) + "/api/v1/write";
  Receiver without = start_hermes(binary, bench_config);
  Receiver scraped = start_hermes(binary, bench_config);
  Receiver writing = start_hermes(binary, bench_config, {{"HERMES_REMOTE_WRITE_URL", url}, {"HERMES_REMOTE_WRITE_INTERVAL", "1"}});
  for (const Receiver *hermes : {&without, &scraped, &writing}) load_series(*hermes, series);
  Receiver agent = start_prometheus_agent(dir, scraped.http_port, receiver.port);
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
  const double base = rss_mib(without.pid), with_writes = rss_mib(writing.pid), scraped_rss = rss_mib(scraped.pid);
  const double agent_rss = rss_mib(agent.pid);
  const std::uint64_t ours = receiver.hermes_requests, theirs = receiver.prometheus_requests;
  for (Receiver *process : {&agent, &without, &scraped, &writing}) stop(*process);
  if (std::system(("rm -rf " + dir).c_str()) != 0) std::fprintf(stderr, "bench: could not remove %s\n", dir.c_str());
  const double added = with_writes - base, goal = agent_rss / 10;
  std::printf("\n| remote write of 10k series, every 1 s for %d s | hermes | Prometheus 2.42 agent | goal | |\n|---|---:|---:|---|---|\n",
              seconds);
  std::printf("| requests the receiver took | %llu | %llu | | %s |\n", static_cast<unsigned long long>(ours),
              static_cast<unsigned long long>(theirs), ours > 0 && theirs > 0 ? "" : "MISMATCH: a writer sent nothing");
  std::printf("| resident memory remote write adds (MiB) | %.2f (%.2f with, %.2f without) | %.2f (the agent) | at most 1/10: %.2f | %s |\n",
              added, with_writes, base, agent_rss, goal, added <= goal ? "met" : "MISMATCH");
  std::printf("| resident memory of the whole (MiB) | %.2f (hermes writing) | %.2f (hermes scraped + agent) | | |\n", with_writes,
              scraped_rss + agent_rss);
}

int main(int argc, char **argv) {
  if (argc > 1 && std::string(argv[1]) == "--memory") return measure_memory_accounting(), 0;
  const std::string part = argc > 1 && argv[1][0] == '-' ? argv[1] : "";
  if (!part.empty()) --argc, ++argv;
  if (!part.empty() && part != "--ingest" && part != "--access" && part != "--series" && part != "--peers" &&
      part != "--tcp" && part != "--compression" && part != "--tls" && part != "--push" &&
      part != "--mapping" && part != "--scale" && part != "--remote-write") {
    std::fprintf(stderr, "usage: bench [--ingest | --access | --series | --scale | --peers | --push | --tcp | --compression | --tls | --mapping | --memory | --remote-write] [HERMES_BINARY...]\n");
    return 2;
  }
  const std::string binary = argc > 1 ? argv[1] : "./hermes";
  struct stat info {};
  if (::stat(binary.c_str(), &info) != 0) {
    std::fprintf(stderr, "bench: %s not found\n", binary.c_str());
    return 1;
  }
  if ((part.empty() || part == "--peers" || part == "--push") && ::stat(pushgateway_binary, &info) != 0) {
    std::fprintf(stderr, "bench: %s not found: make bench-deps installs it (apt-get install prometheus-pushgateway)\n",
                 pushgateway_binary);
    return 1;
  }
  if ((part.empty() || part == "--remote-write") && ::stat(prometheus_binary, &info) != 0) {
    std::fprintf(stderr, "bench: %s not found: make bench-deps installs it (apt-get install prometheus)\n", prometheus_binary);
    return 1;
  }
  ::signal(SIGPIPE, SIG_IGN);
  std::printf("Hermes benchmark: %s, %ld cores\n\n", binary.c_str(), ::sysconf(_SC_NPROCESSORS_ONLN));
  if (part == "--series") return measure_series_memory(binary), 0;
  if (part == "--tcp") return measure_tcp_against_udp(binary), 0;
  if (part == "--compression") return measure_compression(binary), 0;
  if (part == "--tls") return measure_tls(binary), 0;
  if (part == "--push") return measure_push_against_pushgateway(binary), 0;
  if (part == "--remote-write") return measure_remote_write(), measure_remote_write_memory(binary), 0;
#ifdef HERMES_YAML
  if (part == "--mapping") return measure_mapping_in_process(), 0;
#endif
  if (part == "--scale") return measure_scrapes_against_ingest(binary), measure_scale(binary), 0;
  if (part == "--access") {
    measure_allow_list(binary);
    measure_allow_list_in_process();
    return 0;
  }
  std::printf("| run (2 s each, or a burst)       | dgrams sent | samples applied | applied | kernel drops | bare us/dgram | hermes us/sample | ratio |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|\n");
  const std::vector<std::string> single = sample_datagrams(1), batched = sample_datagrams(20);
  HermesFigures figures{};
  figures.burst = measure_burst(binary);
  if (part == "--peers") {
    figures.batched = measure_batched(binary, batched);
    figures.scrape_100k = measure_scrape(binary, 100000);
    figures.idle = measure_hermes_idle(binary);
    return measure_peers(binary, figures), 0;
  }
  for (const double rate : {0.0, 100000.0, 200000.0}) {
    const std::string name = rate == 0 ? "1 sample/dgram, full speed" : "1 sample/dgram, " + std::to_string(int(rate / 1000)) + "k dgram/s";
    const IngestRow bare = measure_bare(name, single, rate, 2);
    print_ingest(bare, measure_hermes(binary, name, single, 1, rate, 2), 1);
  }
  figures.batched = measure_batched(binary, batched);
  const std::vector<std::string> statsd_single = statsd_datagrams(1), statsd_batched = statsd_datagrams(20);
  for (const double rate : {0.0, 100000.0}) {
    const std::string name = rate == 0 ? "statsd 1 line, full speed" : "statsd 1 line, 100k dgram/s";
    const IngestRow bare = measure_bare(name, statsd_single, rate, 2);
    print_ingest(bare, measure_hermes(binary, name, statsd_single, 1, rate, 2), 1);
  }
  {
    const IngestRow bare = measure_bare("statsd 20 lines, full speed", statsd_batched, 0, 2);
    print_ingest(bare, measure_hermes(binary, "statsd 20 lines, full speed", statsd_batched, 20, 0, 2), 20);
  }
  measure_tcp_against_udp(binary);
  if (part == "--ingest") return 0;
  measure_memory_accounting();
  figures.scrape_100k = measure_scrapes(binary);
  measure_scrapes_against_ingest(binary);
  measure_protobuf_scrapes(binary);
  measure_compression(binary);
  measure_series_memory(binary);
  measure_scale(binary);
  measure_state_text();
  measure_state_against_ingest(binary);
  measure_remote_write();
  measure_remote_write_memory(binary);
  std::printf("\n| binary | size (bytes) | idle, resident (MiB) | idle, proportional (MiB) |\n|---|---:|---:|---:|\n");
  for (int i = 1; i < std::max(argc, 2); ++i) {
    const std::string path = argc > 1 ? argv[i] : binary;
    if (::stat(path.c_str(), &info) != 0) continue;
    const IdleRow idle = measure_hermes_idle(path);
    if (i == 1) figures.idle = idle;
    std::printf("| %s | %lld | %.2f | %.2f |\n", path.c_str(), idle.size_bytes, idle.resident_mib, idle.proportional_mib);
  }
  measure_peers(binary, figures);
  measure_push_against_pushgateway(binary);
  measure_allow_list(binary);
  measure_allow_list_in_process();
  measure_tls(binary);
#ifdef HERMES_YAML
  measure_mapping_in_process();
#endif
  return 0;
}
