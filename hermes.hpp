// hermes.hpp - Hermes 1.0.0, a push gateway for Prometheus metrics. MIT licence.
//
// Worker processes push samples as small JSON datagrams or StatsD lines over UDP (or
// StatsD over TCP, or a client library's Pushgateway push over HTTP); Hermes keeps them
// in a registry and serves them at /metrics for Prometheus to scrape, or writes them to
// a remote-write receiver. A worker that pushes over UDP never waits for Hermes and
// never breaks when Hermes is gone.
//
// ---- Embedding ----------------------------------------------------------------------
//
//     #include "hermes.hpp"             // needs picojson.h; link nothing else, unless defined:
//                                       // HERMES_GZIP (-lz), HERMES_TLS (-lmbedtls -lmbedx509
//                                       // -lmbedcrypto), HERMES_YAML (-lyaml)
//
//     std::atomic<bool> stop{false};
//     hermes::Config config = hermes::load_config("config.json");
//     hermes::Options options;           // UDP 0.0.0.0:7789, HTTP 0.0.0.0:8080
//     options.udp_port = 0;              // 0 lets the kernel choose
//     hermes::Server server(config, options);
//     std::thread gateway([&] { server.run(stop); });
//     hermes::Client("127.0.0.1", server.udp_port()).increment_counter("jobs_total", {{"queue", "mail"}});
//     stop = true; gateway.join();
//
// ---- Leaving parts out ------------------------------------------------------------------
//
// As stb's STBI_NO_PNG, each macro defined before including leaves a part out: none of its
// functions is emitted, so a static program holds no byte of it (make tiny builds the
// daemon with all of them). A config key, environment variable or Options field of a part
// left out is an error at start that names the macro, never ignored:
//     HERMES_NO_STATSD        StatsD lines over UDP and TCP, and the mapping file: every
//                             datagram is JSON (statsd_*, max_undeclared_metrics, HERMES_STATSD*)
//     HERMES_NO_PROTOBUF      the protobuf /metrics format: scrapers get text or OpenMetrics
//     HERMES_NO_STATE         the state file (state_file, state_interval_seconds, HERMES_STATE_*)
//     HERMES_NO_PUSH          the Pushgateway API: PUT, POST and DELETE get 405
//                             (max_push_groups, push_ttl_seconds, HERMES_PUSH*, HERMES_MAX_PUSH_*)
//     HERMES_NO_REMOTE_WRITE  remote write (remote_write, HERMES_REMOTE_WRITE_*)
//     HERMES_NO_RESOLVER      host names: addresses must be numeric, and getaddrinfo and
//                             the C library's resolver stay out (needs HERMES_NO_REMOTE_WRITE)
// hermes::has_statsd, has_protobuf, has_state, has_push and has_remote_write tell which
// parts a build has, has_gzip, has_tls and has_yaml which optional libraries; Hermes' own
// figures and environment_help() (hermes --help) show only what it has.
//
// ---- Config file ----------------------------------------------------------------------
//
//     {"service_name": "testing-service",                  required, non-empty
//      "gauges":   [{"metric_name": "sample_gauge",         required, [a-zA-Z_:][a-zA-Z0-9_:]*
//                    "metric_description": "...",          optional HELP text
//                    "labels": ["label_1", "label_2"]}],   optional, [a-zA-Z_][a-zA-Z0-9_]*
//      "counters": [ ...same keys... ],
//      "histograms": [{ ...same keys..., "buckets": [0.1, 1, 10]}],         default: Prometheus'
//                     optional: "native": true, "native_bucket_factor": 1.1, "native_max_buckets": 160,
//                     "native_zero_threshold": 2^-128 (a native histogram; "buckets" then optional)
//      "summaries": [{ ...same keys..., "objectives": {"0.5": 0.05}, "max_age_seconds": 600}],
//      "listen_address": "0.0.0.0", "listen_port": 7789,   optional UDP address and port
//      "state_file": "/var/lib/hermes/state.json",         optional: keep series across restarts
//      "state_interval_seconds": 10,                       optional: between state writes
//      "max_series": 10000, "ttl_seconds": 0,              optional defaults for every metric
//      "max_memory_bytes": "64MiB",                        optional memory budget (HERMES_MAX_MEMORY wins)
//      "statsd_mapping_file": "mapping.yml",               optional: statsd_exporter's mapping (HERMES_YAML)
//      "statsd_undeclared": "reject",                      or "accept": StatsD lines make their metrics
//      "statsd_observer_type": "histogram",                or "summary": what undeclared ms, h, d lines make
//      "statsd_ttl_seconds": 0, "max_undeclared_metrics": 1000,  for metrics StatsD lines make
//      "remote_write": [{"url": "http://tsdb:9090/api/v1/write", ...}]}  optional receivers: see Remote write
//
// A metric may set its own max_series (a push that would make one more series is
// rejected as series_limit) and ttl_seconds (a labelled series not pushed for that
// long disappears; 0, the default, keeps series for ever).
//
// Unknown keys, repeated names, names starting with hermes_ or process_ (the daemon's
// own), and a metric X or X_created beside a counter X_total (OpenMetrics' names for that
// counter's family) are errors: ConfigError names the file, the place and the problem.
// lint_config() gives the naming advice promtool would give, which is not an error.
//
// ---- Datagrams ------------------------------------------------------------------------
//
// One UDP datagram holds one sample object, or a JSON array of them (a batch):
//
//     {"metric_name": "sample_counter", "payload": {"labels": {"label_1": "a"}}}
//     {"metric_name": "sample_gauge", "payload": {"labels": {...}, "value": 65.4, "operation": "set"}}
//
// A counter adds `value` (finite, >= 0; default 1). A gauge sets `value`, or with
// "operation": "increment" / "decrement" moves by `value` (default 1). A histogram or
// summary takes `observation` (or `value`). `labels` holds
// exactly the configured label names with string values. JSON null counts as absent.
// A sample that is not applied is counted in hermes_samples_rejected_total under one
// reason: malformed_json, malformed_sample, unknown_metric, label_mismatch,
// invalid_label_value, invalid_value, invalid_operation, series_limit, too_large,
// unsupported_type, memory_limit, forbidden_source (a UDP datagram from outside
// udp_allow, never parsed), and for StatsD lines dropped, type_mismatch, metric_limit
// (see StatsD mapping). malformed_json, too_large and forbidden_source count whole
// datagrams.
//
// A datagram is JSON when its first byte that is not white space is {, or is [ and the
// rest goes on as a JSON array could: nothing more, ] and only white space after it, or a
// first element that opens with {, [ or ", or is true, false, null or a number ended by
// white space, ',', ] or the datagram's end. So a batch broken further on
// ([{"metric_name": ... cut short, [1, 2) is still malformed_json, and [], [ ], ["x"],
// [null] malformed_sample. Any other datagram holds StatsD lines (below), such as
// [env=prod]jobs:1|c.
//
// ---- StatsD ---------------------------------------------------------------------------
//
// A datagram that is not JSON (see Datagrams) holds StatsD lines, one sample each
// (Options::statsd, HERMES_STATSD=off, turns this off: every datagram is then JSON):
//
//     jobs:1|c|@0.5|#queue:mail     counter jobs_total{queue="mail"} += 1 / 0.5
//     depth:7|g   depth:+2|g        gauge set to 7; a sign moves it
//     latency:250|ms|#route:/       histogram or summary observes 0.25 (seconds)
//     sizes:3:4:5|h   sizes:3|d     each value observed; |@r counts it int(1/r) times
//     jobs,queue=mail:1|c   jobs#queue=mail:1|c   jobs[queue=mail]:1|c   tags in the name
//     [queue=mail]jobs:1|c          SignalFx tags first, as statsd_exporter reads them
//
// With statsd_exporter's meanings: names escape [^a-zA-Z0-9_:] to '_'; a counter X_total
// also takes lines named X; tags must be exactly the metric's labels. Fields after the
// type come in any order; DogStatsD's |c:, |T, |e: and |card: are checked and ignored.
// Sets, events and service checks are unsupported_type. A bad line spoils no other.
// Where both could be meant, JSON wins: a datagram whose first line opens with SignalFx
// tags that could start JSON ([{a=b}]x:1|c, ["k"=v]x:1|c, [1]x:1|c) is malformed_json,
// where statsd_exporter would read the tags with {, [ and " escaped to _.
//
// ---- StatsD over TCP -------------------------------------------------------------------
//
// With Options::statsd_tcp_port (HERMES_STATSD_TCP_PORT; off by default) a TCP listener
// on udp_address takes StatsD lines separated by "\n" or "\r\n", as statsd_exporter's
// --statsd.listen-tcp: each line as a line of a datagram (a '{' opens no JSON there),
// the last one taken even without a newline when the connection ends. In the same poll()
// loop (through one epoll set), one read of HERMES_STATSD_TCP_READ_BYTES per connection
// with input per step, for up to HERMES_STATSD_TCP_READS connections. A line over
// HERMES_MAX_DATAGRAM_SIZE bytes is too_large and closes its connection; a connection past
// statsd_tcp_max_connections, without room in the memory budget for its line buffer, or
// from outside udp_allow is closed at once; one that completes no line for
// statsd_tcp_idle_seconds is closed. Counted in hermes_statsd_tcp_connections_* by reason.
//
// ---- StatsD mapping -------------------------------------------------------------------
//
// Compiled in where HERMES_YAML is defined (libyaml, -lyaml); without it, a mapping file
// is a start-up error saying so. statsd_mapping_file (HERMES_STATSD_MAPPING) names
// statsd_exporter's mapping file, read unchanged with v0.23's meanings: glob rules first
// in file order, the first match winning, $1 and ${1} in names and label values; then
// regex rules (RE2's syntax, run as POSIX regexes) in order; action: drop (counted as dropped); match_metric_type;
// observer_type (a summary by default), buckets, quantiles, ttl, defaults. Keys Hermes does
// not act on load with one warning each; a file that cannot be used is a ConfigError
// naming the file and the line. A mapped name, or with "statsd_undeclared": "accept" an
// unmapped one, that no configured metric holds makes a metric as if configured: type from
// the line (a counter NAME_total), labels the first line's tags and the rule's, sorted.
// Later lines of another type are type_mismatch, of other tags label_mismatch; beyond
// max_undeclared_metrics, metric_limit. Results are kept per name (HERMES_STATSD_MAPPING_CACHE),
// their bytes taken from the memory budget. Reloads and the state file keep such metrics.
//
// ---- HTTP -----------------------------------------------------------------------------
//
// HTTP/1.1 and 1.0, with persistent connections as RFC 9112 has them: an HTTP/1.1 connection
// stays open after an answer unless the request says "Connection: close", an HTTP/1.0 one
// only when it says "Connection: keep-alive"; an answer after which Hermes closes says
// "Connection: close". Requests on one connection are answered in order, one at a time
// (what a client sends ahead waits, within HERMES_MAX_REQUEST_HEAD). A request that does
// not parse, or whose body Hermes does not read (refused before it, or on a path that
// takes none), closes the connection, as does a 403 or a 503 for a full house. An idle
// connection closes after Options::http_idle_timeout_seconds (default
// HERMES_HTTP_IDLE_TIMEOUT_S; 0: every answer closes), and gives its place to a newcomer
// before a client mid-request does when every connection is taken. Once a request's first
// byte arrives, its head (and a push's body) has HERMES_HTTP_READ_TIMEOUT_MS, as on a
// new connection. HTTP connections set TCP_NODELAY.
//     GET|HEAD /metrics          200, Prometheus text format 0.0.4, or OpenMetrics 1.0.0 or
//                                Prometheus' delimited protobuf format (the one with native
//                                histograms) when the Accept header prefers it and Options allow it
//     GET|HEAD /-/healthy, /-/ready, /    200, short text
//     other paths 404; other methods 405 (Allow: GET, HEAD); a malformed request 400;
//     a request head over HERMES_MAX_REQUEST_HEAD 431; a major version other than 1, 505;
//     503 with Retry-After when every connection is busy, or when more /metrics bodies
//     are in flight at once than the memory budget keeps room for (HERMES_SCRAPE_BODIES).
// With HERMES_GZIP (link zlib), /metrics answers Content-Encoding: gzip when the request's
// Accept-Encoding chooses gzip as client_golang reads it (gzip with a q above 0 and above
// identity's and *'s: Prometheus sends "gzip"; no header, "identity", "*" and "gzip;q=0"
// get the plain body), at zlib level Options::gzip_level (HERMES_COMPRESSION: off, on,
// or 1-9; default HERMES_GZIP_LEVEL).
// Empty lines before the request line are ignored. Rendering only reads the registry.
//     PUT|POST|DELETE /metrics/job/<JOB>{/<NAME>/<VALUE>}   the Pushgateway API (below)
//
// ---- Pushgateway API --------------------------------------------------------------------
//
// Options::push (HERMES_PUSH, on by default) takes pushes as Pushgateway 1.5.1 answers
// them: PUT replaces a group's families, POST those of the same name, DELETE removes the
// group (202); a name suffixed @base64 carries a base64url value; the body is the text
// format 0.0.4, or the delimited protobuf format (native histograms too) when the
// Content-Type names it; one that does not parse gets 400 with Pushgateway's message. Each
// sample carries the grouping labels and instance=""; each group its push_time_seconds
// and push_failure_time_seconds. A push with timestamps, or one that would make /metrics
// inconsistent (a name of the config's or Hermes' own, another type than another
// group's, two samples with the same labels) is 400 and changes nothing but the failure
// time. Each group takes its bytes and its room in the bodies from the memory budget: a
// push with no room, or one group past max_push_groups, is 507. A body over
// max_push_bytes is 413, one with neither Content-Length nor chunks 411, a
// Content-Encoding 415. Groups not pushed for push_ttl_seconds disappear;
// push_token_file guards pushes (401).
//
// Server::reload() (SIGHUP in the daemon) takes the config file again; an optional unix
// datagram socket (Options::unix_socket_path) takes samples beside UDP.
//
// ---- Memory ---------------------------------------------------------------------------
//
// One budget (Options::max_memory, 64 MiB by default) bounds what input can grow: fixed
// buffers are taken at start; a new series takes its worst case (worst_case_series_bytes)
// and room for its lines in each of HERMES_SCRAPE_BODIES /metrics bodies
// (worst_case_body_bytes), or is refused as memory_limit; bodies take from that room
// and nothing else does. So after every step
//
//     buffers + series + (each body in flight, at its size or the bound if more)
//                      + (the bound for each body not yet in flight) <= budget
//
// where the bound is the most one body of every series can take (MemoryBudget). A gzip
// body is compressed over the memory of its plain text, so it takes no more; the
// compressor's state (about 320 KiB) is a fixed buffer taken at start.
//
// and pressure costs new series, never a scrape: while no more bodies are in flight at
// once than HERMES_SCRAPE_BODIES (scrapes that come while a body is being sent share it),
// /metrics is never 503 for lack of memory. A summary's windows and a native histogram's
// buckets never grow past the worst case their series took. The state file's text takes
// its memory part by part as it grows (a write with no room fails, and is tried again),
// and the file read at start its size. The config's metrics without labels and every
// family's room must fit at start and at each reload (ConfigError otherwise).
//
// ---- State across restarts ----------------------------------------------------------------
//
// With Options::state_file (HERMES_STATE_FILE, "state_file") a Server restores every
// series and pushed group (its push times and TTL age too) from that file at start,
// writes it every state_interval_seconds when something changed, and once more when
// run() ends, after the samples still queued on its sockets. A write goes to a new file
// in the same directory, fsynced and renamed over the old one, on a thread of its own. A
// file that is not state is renamed aside, never deleted; a series whose metric is gone
// or changed shape, or a group a push would not be taken for, is skipped and logged. A path with a
// directory missing, or a file where a directory should be, holds no state yet: the
// server starts empty, and counts and logs each write that fails until it is fixed.
//
// ---- Remote write ---------------------------------------------------------------------------
//
// Each entry of "remote_write" (and HERMES_REMOTE_WRITE_URL, with _INTERVAL and
// _BEARER_TOKEN_FILE) is a Prometheus remote-write 1.0 receiver:
//     {"url": "http://host:port/path", "interval_seconds": 15, "timeout_seconds": 10,
//      "max_samples_per_send": 2000, "max_backoff_seconds": 30, "bearer_token_file": "...",
//      "basic_auth": {"username": "...", "password_file": "..."}, "headers": {...},
//      "external_labels": {...}, "tls": {...}}
// Secrets are read from files with the config and never logged. An https URL speaks TLS
// 1.2 (HERMES_TLS; without it https and "tls" are ConfigErrors): "tls": {"ca_file",
// "cert_file", "key_file", "server_name", "insecure_skip_verify"}; without ca_file the
// system's CAs (HERMES_TLS_CA_BUNDLE). The files are loaded with the config, so that a bad
// one is an error at start and in --check-config. A connection, and its handshake, serve
// request after request while the receiver keeps them open; a handshake that fails sends
// nothing and counts under hermes_remote_storage_unanswered_requests_total{reason=
// "tls_handshake"}. Each https target takes its TLS state from the memory budget at start.
// Every interval_seconds the server makes one snapshot of every series /metrics would
// show, the Pushgateway API's groups included (labels as a scrape gives them: the
// series' (job and instance renamed exported_job and exported_instance, as without
// honor_labels, but a pushed group's kept, as with it), job = service name, instance =
// host name, then external_labels; sorted), as a
// snappy-compressed WriteRequest in batches of max_samples_per_send, with Prometheus'
// stale marker for each series gone since the last one (an expired series, a deleted
// group). A thread per target sends; failures that may pass (connection, timeout, 5xx,
// 429) are retried after 0.5 s doubling to max_backoff_seconds or after Retry-After,
// another 4xx drops the batch. Snapshots waiting take at most 1/HERMES_REMOTE_WRITE_PENDING_SHARE
// of the memory budget, oldest dropped first; run() ends with one last send within
// timeout_seconds. hermes_remote_storage_* show it all, per target.
//
// ---- Time -------------------------------------------------------------------------------------
//
// ttl_seconds, summary windows, log rate limits and HTTP timeouts count on the monotonic
// clock; the wall clock serves only the timestamps shown (_created, *_timestamp_seconds).
//
// ---- Access control -------------------------------------------------------------------
//
// Options::udp_allow ("udp_allow" in the config, HERMES_UDP_ALLOW) and http_allow
// ("http_allow", HERMES_HTTP_ALLOW) are lists of CIDR ranges, IPv4 or IPv6; a bare address
// is a /32 or a /128, and an IPv4 range also matches the same senders written as
// IPv4-mapped IPv6 (::ffff:a.b.c.d), as a dual-stack socket sees them. Empty: everyone.
// A UDP datagram from elsewhere is dropped unparsed and counted as forbidden_source; the
// unix socket is not filtered. An HTTP client from elsewhere has its request read and
// answered 403. With Options::http_token_file (HERMES_HTTP_TOKEN_FILE), /metrics and /
// answer only requests carrying "Authorization: Bearer <the file's token>" (compared in
// constant time), others get 401 with "WWW-Authenticate: Bearer"; /-/healthy and /-/ready
// stay open. The file is read at start (missing, empty or unfit: an error) and on each
// reload (then a bad file keeps the token in force and the reload counts as failed).
// Allow lists change only at restart. None of this is a substitute for TLS or a
// firewall: see the README's security section.
//
// ---- TLS ------------------------------------------------------------------------------
//
// Built with HERMES_TLS (and mbedTLS 2.28), Options::tls_cert_file and tls_key_file
// (HERMES_TLS_CERT_FILE, HERMES_TLS_KEY_FILE, "tls_server": {"cert_file", "key_file"})
// make the HTTP port speak only TLS 1.2, ECDHE with AES-GCM or ChaCha20-Poly1305, sending
// the whole chain of the certificate file. tls_client_ca_file ("client_ca_file") asks
// every client for a certificate those CAs signed, and fails the handshake without one.
// The handshake runs in the loop within HERMES_HTTP_READ_TIMEOUT_MS, at most
// HERMES_TLS_HANDSHAKES_PER_STEP steps of it (oldest connection first) between two
// reads of the datagram sockets, none while datagrams wait unread (one every
// HERMES_TLS_HANDSHAKE_WAIT_MS at least), so that a flood of handshakes cannot starve ingest;
// each connection Hermes may hold takes HERMES_TLS_CONNECTION_BYTES of the budget at start. A missing or
// unreadable file, a key that does not match, an expired certificate: ConfigError naming
// the file. Server::reload() reads the pair again; a bad pair keeps the one in force and
// the reload counts as failed. Without HERMES_TLS, setting a file is a ConfigError.
//
// ---- Limits (define before including to change) ------------------------------------------
//
//     HERMES_MAX_DATAGRAM_SIZE      8192   bytes; a longer datagram is rejected as too_large
//     HERMES_MAX_JSON_DEPTH           16   nested arrays and objects in a datagram or config
//     HERMES_MAX_CONFIG_SIZE     1048576   bytes of config file
//     HERMES_MAX_REQUEST_HEAD       8192   bytes of HTTP request line and headers
//     HERMES_MAX_CHUNK_LINE         4096   bytes of a chunked push body's size or trailer line
//     HERMES_MAX_CONNECTIONS          64   open HTTP connections
//     HERMES_MAX_REFUSED_CONNECTIONS  16   more connections, read and answered 503; beyond, closed
//     HERMES_HTTP_READ_TIMEOUT_MS   5000   time a client has to send its request head
//     HERMES_HTTP_WRITE_TIMEOUT_MS 10000   time a client has to read its response
//     HERMES_HTTP_LINGER_MS         1000   time a client has to close after its response
//     HERMES_HTTP_IDLE_TIMEOUT_S      90   default time a kept-alive connection may wait for its next request (Options)
//     HERMES_RECEIVE_BATCH            32   datagrams one recvmmsg() call may take
//     HERMES_UDP_RECEIVE_BUFFER  4194304   default SO_RCVBUF of the UDP socket (Options)
//     HERMES_DATAGRAMS_PER_STEP      256   datagrams read before HTTP gets a turn
//     HERMES_RENDER_PAUSE_STRIDE    1024   series rendered between looks at the sockets
//     HERMES_RENDER_HOLD_BYTES   4194304   datagrams held in memory while /metrics renders
//     HERMES_POLL_INTERVAL_MS        200   longest sleep in run(); bounds the reaction to stop
//     HERMES_REJECT_LOG_INTERVAL_S    10   seconds between warn lines summarising rejects
//     HERMES_DEFAULT_MAX_SERIES    10000   series per metric unless the config sets max_series
//     HERMES_MAX_SERIES_LIMIT   10000000   the largest max_series a config may set
//     HERMES_LISTEN_BACKLOG          128   pending TCP connections the kernel queues for accept
//     HERMES_DEFAULT_MAX_MEMORY     64 MiB the memory budget unless HERMES_MAX_MEMORY or the config sets one
//     HERMES_SHARED_BODY_MS         1000   scrapes this close together share one /metrics body
//     HERMES_SCRAPE_BODIES             2   /metrics bodies the memory budget always keeps room for
//     HERMES_MAX_NATIVE_BUCKETS    10000   the largest native_max_buckets a config may set
//     HERMES_STATE_INTERVAL_S         10   default seconds between state writes (state_interval_seconds)
//     HERMES_MAX_STATE_SIZE   1073741824   bytes of state file read at start; a larger one is set aside
//     HERMES_STATE_PAUSE_STRIDE     1024   series written to the state between looks at the sockets
//     HERMES_MAX_TOKEN_SIZE         1024   bytes of bearer token in HERMES_HTTP_TOKEN_FILE
//     HERMES_MAX_STATSD_CONNECTIONS  256   default of open StatsD TCP connections (Options)
//     HERMES_STATSD_TCP_IDLE_S       300   default seconds a StatsD TCP connection may go without a whole line
//     HERMES_STATSD_TCP_READ_BYTES 16384   bytes read from one StatsD TCP connection in a step
//     HERMES_STATSD_TCP_ACCEPTS       64   StatsD TCP connections accepted (or refused) in a step
//     HERMES_STATSD_TCP_READS        256   StatsD TCP connections read (once each) in a step
//     HERMES_GZIP_LEVEL                1   zlib level of gzip /metrics bodies unless Options say otherwise
//     HERMES_GZIP_PAUSE_BYTES      65536   /metrics text compressed between looks at the sockets
//     HERMES_TLS_CONNECTION_BYTES  57344   the budget's share for each TLS connection (HERMES_TLS)
//     HERMES_TLS_CA_BUNDLE    /etc/ssl/certs/ca-certificates.crt   the CAs a TLS client trusts by default
//     HERMES_TLS_HANDSHAKES_PER_STEP  1   TLS handshake steps (each may sign) between looks at the sockets
//     HERMES_TLS_HANDSHAKE_WAIT_MS    5   longest handshakes wait while datagrams wait unread
//     HERMES_DEFAULT_MAX_UNDECLARED_METRICS 1000  metrics StatsD lines may make (max_undeclared_metrics)
//     HERMES_STATSD_MAPPING_CACHE   1000   StatsD names whose mapping result is kept
//     HERMES_MAX_MAPPING_SIZE   16777216   bytes of StatsD mapping file
//     HERMES_MAX_MAPPING_NODES    500000   YAML nodes of a mapping file, aliases unfolded
//     HERMES_REMOTE_WRITE_INTERVAL_S  15   default interval_seconds of a remote-write target
//     HERMES_REMOTE_WRITE_TIMEOUT_S   10   default timeout_seconds: one request, connect to answer
//     HERMES_REMOTE_WRITE_BATCH     2000   default max_samples_per_send
//     HERMES_REMOTE_WRITE_MAX_BACKOFF_S 30 default max_backoff_seconds; retries start at 0.5 s
//     HERMES_REMOTE_WRITE_MAX_RETRY_AFTER_S 300  a longer Retry-After is taken as this
//     HERMES_REMOTE_WRITE_PENDING_SHARE 4  snapshots waiting take at most 1/this of the budget
//     HERMES_REMOTE_WRITE_MAX_RESPONSE 4096  bytes of a receiver's answer read
//     HERMES_MAX_PUSH_BYTES      4194304   default largest push body (Options::max_push_bytes)
//     HERMES_DEFAULT_MAX_PUSH_GROUPS 10000 pushed groups unless max_push_groups says otherwise

#ifndef HERMES_HPP
#define HERMES_HPP

// ===== VERSION ============================================================================

#define HERMES_VERSION_MAJOR 1
#define HERMES_VERSION_MINOR 0
#define HERMES_VERSION_PATCH 0
#define HERMES_VERSION (HERMES_VERSION_MAJOR * 10000 + HERMES_VERSION_MINOR * 100 + HERMES_VERSION_PATCH)
#define HERMES_VERSION_STR "1.0.0"

// ===== LIMITS =============================================================================

#ifndef HERMES_MAX_DATAGRAM_SIZE
#define HERMES_MAX_DATAGRAM_SIZE 8192 // receive buffer; a longer datagram is too_large
#endif
#ifndef HERMES_MAX_JSON_DEPTH
#define HERMES_MAX_JSON_DEPTH 16 // a datagram needs 4 levels, a config 4
#endif
#ifndef HERMES_MAX_CONFIG_SIZE
#define HERMES_MAX_CONFIG_SIZE (1024 * 1024) // a larger file is not a config
#endif
#ifndef HERMES_MAX_REQUEST_HEAD
#define HERMES_MAX_REQUEST_HEAD 8192 // request line and headers; more is answered 431
#endif
#ifndef HERMES_MAX_CHUNK_LINE
#define HERMES_MAX_CHUNK_LINE 4096 // a longer chunk size or trailer line is 400, as Go's server has it
#endif
#ifndef HERMES_MAX_CONNECTIONS
#define HERMES_MAX_CONNECTIONS 64 // when full, the oldest connection still reading is dropped
#endif
#ifndef HERMES_MAX_REFUSED_CONNECTIONS
#define HERMES_MAX_REFUSED_CONNECTIONS 16 // beyond those, connections read and answered 503; more are closed
#endif
#ifndef HERMES_HTTP_READ_TIMEOUT_MS
#define HERMES_HTTP_READ_TIMEOUT_MS 5000 // from accept to a complete request head
#endif
#ifndef HERMES_HTTP_WRITE_TIMEOUT_MS
#define HERMES_HTTP_WRITE_TIMEOUT_MS 10000 // from the request head to the last byte sent
#endif
#ifndef HERMES_HTTP_LINGER_MS
#define HERMES_HTTP_LINGER_MS 1000 // after the response, how long to wait for the client to close
#endif
#ifndef HERMES_HTTP_IDLE_TIMEOUT_S
#define HERMES_HTTP_IDLE_TIMEOUT_S 90 // default; a kept-alive connection's wait for its next request, as Go's clients keep theirs
#endif
#ifndef HERMES_RECEIVE_BATCH
#define HERMES_RECEIVE_BATCH 32 // datagrams one recvmmsg() call may take
#endif
#ifndef HERMES_UDP_RECEIVE_BUFFER
#define HERMES_UDP_RECEIVE_BUFFER (4 * 1024 * 1024) // bytes the kernel may queue for us; a burst waits there
#endif
#ifndef HERMES_DATAGRAMS_PER_STEP
#define HERMES_DATAGRAMS_PER_STEP 256 // then HTTP clients get their turn
#endif
#ifndef HERMES_RENDER_PAUSE_STRIDE
#define HERMES_RENDER_PAUSE_STRIDE 1024 // series; 100k series render in a few ms, this pauses every ~60 us
#endif
#ifndef HERMES_RENDER_HOLD_BYTES
#define HERMES_RENDER_HOLD_BYTES (4 * 1024 * 1024) // taken off the sockets during a render; more waits in the kernel
#endif
#ifndef HERMES_POLL_INTERVAL_MS
#define HERMES_POLL_INTERVAL_MS 200 // run() looks at its stop flag at least this often
#endif
#ifndef HERMES_REJECT_LOG_INTERVAL_S
#define HERMES_REJECT_LOG_INTERVAL_S 10 // at most one warn line about rejects per interval
#endif
#ifndef HERMES_DEFAULT_MAX_SERIES
#define HERMES_DEFAULT_MAX_SERIES 10000 // series per metric, unless the config says otherwise
#endif
#ifndef HERMES_MAX_SERIES_LIMIT
#define HERMES_MAX_SERIES_LIMIT 10000000 // the largest max_series a config may ask for
#endif
#ifndef HERMES_DEFAULT_MAX_MEMORY
#define HERMES_DEFAULT_MAX_MEMORY (64 * 1024 * 1024) // the memory budget unless HERMES_MAX_MEMORY or the config sets one
#endif
#ifndef HERMES_SHARED_BODY_MS
#define HERMES_SHARED_BODY_MS 1000 // scrapes this close together share one /metrics body while it is sent
#endif
#ifndef HERMES_SCRAPE_BODIES
#define HERMES_SCRAPE_BODIES 2 // /metrics bodies the budget always has room for: one being sent, the next
#endif
#ifndef HERMES_STATE_INTERVAL_S
#define HERMES_STATE_INTERVAL_S 10 // default seconds between state writes; each writes only if something changed
#endif
#ifndef HERMES_MAX_STATE_SIZE
#define HERMES_MAX_STATE_SIZE (1024 * 1024 * 1024) // a state file larger than this is not read, but set aside
#endif
#ifndef HERMES_STATE_PAUSE_STRIDE
#define HERMES_STATE_PAUSE_STRIDE 1024 // series; as HERMES_RENDER_PAUSE_STRIDE, for the state's text
#endif
#ifndef HERMES_LISTEN_BACKLOG
#define HERMES_LISTEN_BACKLOG 128 // pending TCP connections the kernel queues for accept
#endif
#ifndef HERMES_MAX_NATIVE_BUCKETS
#define HERMES_MAX_NATIVE_BUCKETS 10000 // the largest native_max_buckets a config may ask for
#endif
#ifndef HERMES_MAX_TOKEN_SIZE
#define HERMES_MAX_TOKEN_SIZE 1024 // bytes of bearer token in HERMES_HTTP_TOKEN_FILE
#endif
#ifndef HERMES_MAX_STATSD_CONNECTIONS
#define HERMES_MAX_STATSD_CONNECTIONS 256 // default; each takes 8.1 KiB of the budget and a descriptor
#endif
#ifndef HERMES_STATSD_TCP_IDLE_S
#define HERMES_STATSD_TCP_IDLE_S 300 // default; a connection that completes no line for this long is closed
#endif
#ifndef HERMES_STATSD_TCP_READ_BYTES
#define HERMES_STATSD_TCP_READ_BYTES 16384 // one read per connection per step: a fast sender cannot starve the rest
#endif
#ifndef HERMES_STATSD_TCP_ACCEPTS
#define HERMES_STATSD_TCP_ACCEPTS 64 // connections accepted or refused per step: a flood of them waits in the backlog
#endif
#ifndef HERMES_STATSD_TCP_READS
#define HERMES_STATSD_TCP_READS 256 // connections read per step, one read each; the others at the next step
#endif
#ifndef HERMES_GZIP_LEVEL
#define HERMES_GZIP_LEVEL 1 // zlib level of gzip /metrics bodies (HERMES_GZIP builds); 1: a sixth to a quarter of the bytes for about a render's CPU
#endif
#ifndef HERMES_GZIP_PAUSE_BYTES
#define HERMES_GZIP_PAUSE_BYTES 65536 // of /metrics text compressed between looks at the sockets
#endif
#ifndef HERMES_TLS_CONNECTION_BYTES
#define HERMES_TLS_CONNECTION_BYTES (56 * 1024) // the budget's share for one TLS connection: mbedTLS' records and handshake
#endif
#ifndef HERMES_TLS_CA_BUNDLE
#define HERMES_TLS_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt" // the CAs a TLS client trusts unless told others
#endif
#ifndef HERMES_TLS_HANDSHAKES_PER_STEP
#define HERMES_TLS_HANDSHAKES_PER_STEP 1 // a step costs milliseconds of signing; the datagrams are read between
#endif
#ifndef HERMES_TLS_HANDSHAKE_WAIT_MS
#define HERMES_TLS_HANDSHAKE_WAIT_MS 5 // while datagrams wait unread, at most one handshake step this often
#endif
#ifndef HERMES_DEFAULT_MAX_UNDECLARED_METRICS
#define HERMES_DEFAULT_MAX_UNDECLARED_METRICS 1000 // metrics StatsD lines may make, unless max_undeclared_metrics says
#endif
#ifndef HERMES_STATSD_MAPPING_CACHE
#define HERMES_STATSD_MAPPING_CACHE 1000 // StatsD names whose mapping is kept, as statsd_exporter's cache_size
#endif
#ifndef HERMES_MAX_MAPPING_SIZE
#define HERMES_MAX_MAPPING_SIZE (16 * 1024 * 1024) // bytes of StatsD mapping file
#endif
#ifndef HERMES_MAX_MAPPING_NODES
#define HERMES_MAX_MAPPING_NODES 500000 // YAML nodes of a mapping file, aliases unfolded
#endif
// remote write
#ifndef HERMES_REMOTE_WRITE_INTERVAL_S
#define HERMES_REMOTE_WRITE_INTERVAL_S 15 // default interval_seconds: one snapshot of every series this often
#endif
#ifndef HERMES_REMOTE_WRITE_TIMEOUT_S
#define HERMES_REMOTE_WRITE_TIMEOUT_S 10 // default timeout_seconds: connect, send and answer of one request
#endif
#ifndef HERMES_REMOTE_WRITE_BATCH
#define HERMES_REMOTE_WRITE_BATCH 2000 // default max_samples_per_send, as Prometheus' queue manager
#endif
#ifndef HERMES_REMOTE_WRITE_MAX_BACKOFF_S
#define HERMES_REMOTE_WRITE_MAX_BACKOFF_S 30 // default max_backoff_seconds; retries start at 0.5 s
#endif
#ifndef HERMES_REMOTE_WRITE_MAX_RETRY_AFTER_S
#define HERMES_REMOTE_WRITE_MAX_RETRY_AFTER_S 300 // a longer Retry-After is taken as this: a receiver cannot stall Hermes for ever
#endif
#ifndef HERMES_REMOTE_WRITE_PENDING_SHARE
#define HERMES_REMOTE_WRITE_PENDING_SHARE 4 // snapshots waiting to be sent take at most 1/this of the memory budget
#endif
#ifndef HERMES_REMOTE_WRITE_MAX_RESPONSE
#define HERMES_REMOTE_WRITE_MAX_RESPONSE 4096 // bytes of a receiver's answer read; its message is cut there
#endif
#ifndef HERMES_MAX_PUSH_BYTES
#define HERMES_MAX_PUSH_BYTES (4 * 1024 * 1024) // default largest push body; HERMES_MAX_PUSH_BYTES in the environment wins
#endif
#ifndef HERMES_DEFAULT_MAX_PUSH_GROUPS
#define HERMES_DEFAULT_MAX_PUSH_GROUPS 10000 // pushed groups unless max_push_groups says otherwise
#endif

// Each limit is checked here, so that a wrong value stops the build with what to do
// instead of a daemon that loops for ever or refuses every datagram.
static_assert(HERMES_MAX_DATAGRAM_SIZE >= 64 && HERMES_MAX_DATAGRAM_SIZE <= 65536,
              "HERMES_MAX_DATAGRAM_SIZE must be between 64 and 65536 bytes");
static_assert(HERMES_MAX_JSON_DEPTH >= 4, "HERMES_MAX_JSON_DEPTH must be at least 4: a batch of samples nests 4 levels deep");
static_assert(HERMES_MAX_CONFIG_SIZE >= 1024, "HERMES_MAX_CONFIG_SIZE must be at least 1024 bytes");
static_assert(HERMES_MAX_REQUEST_HEAD >= 256, "HERMES_MAX_REQUEST_HEAD must be at least 256 bytes");
static_assert(HERMES_MAX_CHUNK_LINE >= 64, "HERMES_MAX_CHUNK_LINE must be at least 64 bytes");
static_assert(HERMES_MAX_CONNECTIONS >= 1 && HERMES_MAX_CONNECTIONS <= 65536,
              "HERMES_MAX_CONNECTIONS must be between 1 and 65536");
static_assert(HERMES_MAX_REFUSED_CONNECTIONS >= 0, "HERMES_MAX_REFUSED_CONNECTIONS must not be negative");
static_assert(HERMES_HTTP_READ_TIMEOUT_MS >= 1, "HERMES_HTTP_READ_TIMEOUT_MS must be at least 1 ms");
static_assert(HERMES_HTTP_WRITE_TIMEOUT_MS >= 1, "HERMES_HTTP_WRITE_TIMEOUT_MS must be at least 1 ms");
static_assert(HERMES_HTTP_LINGER_MS >= 0, "HERMES_HTTP_LINGER_MS must not be negative");
static_assert(HERMES_HTTP_IDLE_TIMEOUT_S >= 0, "HERMES_HTTP_IDLE_TIMEOUT_S must not be negative (0: no persistent connections)");
static_assert(HERMES_RECEIVE_BATCH >= 1 && HERMES_RECEIVE_BATCH <= 1024, "HERMES_RECEIVE_BATCH must be between 1 and 1024");
static_assert(HERMES_UDP_RECEIVE_BUFFER >= 4096, "HERMES_UDP_RECEIVE_BUFFER must be at least 4096 bytes");
static_assert(HERMES_DATAGRAMS_PER_STEP >= HERMES_RECEIVE_BATCH,
              "HERMES_DATAGRAMS_PER_STEP must be at least HERMES_RECEIVE_BATCH, or a step reads nothing");
static_assert(HERMES_RENDER_PAUSE_STRIDE >= 1, "HERMES_RENDER_PAUSE_STRIDE must be at least 1 series");
static_assert(HERMES_RENDER_HOLD_BYTES >= 0, "HERMES_RENDER_HOLD_BYTES must not be negative (0: hold nothing)");
static_assert(HERMES_POLL_INTERVAL_MS >= 1, "HERMES_POLL_INTERVAL_MS must be at least 1 ms");
static_assert(HERMES_REJECT_LOG_INTERVAL_S >= 1, "HERMES_REJECT_LOG_INTERVAL_S must be at least 1 second");
static_assert(HERMES_DEFAULT_MAX_SERIES >= 1 && HERMES_DEFAULT_MAX_SERIES <= HERMES_MAX_SERIES_LIMIT,
              "HERMES_DEFAULT_MAX_SERIES must be between 1 and HERMES_MAX_SERIES_LIMIT");
static_assert(HERMES_MAX_SERIES_LIMIT >= 1, "HERMES_MAX_SERIES_LIMIT must be at least 1");
static_assert(HERMES_MAX_SERIES_LIMIT <= 16777214, "HERMES_MAX_SERIES_LIMIT must be at most 2^24 - 2: a series index slot holds 24 bits of position");
static_assert(HERMES_LISTEN_BACKLOG >= 1, "HERMES_LISTEN_BACKLOG must be at least 1");
static_assert(HERMES_DEFAULT_MAX_MEMORY >= 8 * 1024 * 1024, "HERMES_DEFAULT_MAX_MEMORY must be at least 8 MiB");
static_assert(HERMES_SHARED_BODY_MS >= 0, "HERMES_SHARED_BODY_MS must not be negative (0: every scrape renders)");
static_assert(HERMES_SCRAPE_BODIES >= 1 && HERMES_SCRAPE_BODIES <= 16,
              "HERMES_SCRAPE_BODIES must be between 1 and 16: room for at least the body being sent");
static_assert(HERMES_MAX_NATIVE_BUCKETS >= 160 && HERMES_MAX_NATIVE_BUCKETS <= 1000000,
              "HERMES_MAX_NATIVE_BUCKETS must be between 160 (the default native_max_buckets) and 1000000");
static_assert(HERMES_STATE_INTERVAL_S >= 1, "HERMES_STATE_INTERVAL_S must be at least 1 second");
static_assert(HERMES_MAX_STATE_SIZE >= 65536, "HERMES_MAX_STATE_SIZE must be at least 65536 bytes");
static_assert(HERMES_STATE_PAUSE_STRIDE >= 1, "HERMES_STATE_PAUSE_STRIDE must be at least 1 series");
static_assert(HERMES_GZIP_LEVEL >= 1 && HERMES_GZIP_LEVEL <= 9, "HERMES_GZIP_LEVEL must be a zlib level from 1 to 9");
static_assert(HERMES_GZIP_PAUSE_BYTES >= 4096, "HERMES_GZIP_PAUSE_BYTES must be at least 4096 bytes");
static_assert(HERMES_MAX_PUSH_BYTES >= 1024, "HERMES_MAX_PUSH_BYTES must be at least 1024 bytes");
static_assert(HERMES_DEFAULT_MAX_PUSH_GROUPS >= 1, "HERMES_DEFAULT_MAX_PUSH_GROUPS must be at least 1");
static_assert(HERMES_MAX_TOKEN_SIZE >= 16 && HERMES_MAX_TOKEN_SIZE <= HERMES_MAX_REQUEST_HEAD - 64,
              "HERMES_MAX_TOKEN_SIZE must be at least 16 bytes and fit a request head (HERMES_MAX_REQUEST_HEAD - 64)");
static_assert(HERMES_MAX_STATSD_CONNECTIONS >= 1 && HERMES_MAX_STATSD_CONNECTIONS <= 1000000,
              "HERMES_MAX_STATSD_CONNECTIONS must be between 1 and 1000000");
static_assert(HERMES_STATSD_TCP_IDLE_S >= 0, "HERMES_STATSD_TCP_IDLE_S must not be negative (0: never closed for idling)");
static_assert(HERMES_STATSD_TCP_READ_BYTES >= 512 && HERMES_STATSD_TCP_READ_BYTES <= 16 * 1024 * 1024,
              "HERMES_STATSD_TCP_READ_BYTES must be between 512 bytes and 16 MiB");
static_assert(HERMES_STATSD_TCP_ACCEPTS >= 1, "HERMES_STATSD_TCP_ACCEPTS must be at least 1");
static_assert(HERMES_STATSD_TCP_READS >= 1 && HERMES_STATSD_TCP_READS <= 65536,
              "HERMES_STATSD_TCP_READS must be between 1 and 65536");
static_assert(HERMES_TLS_CONNECTION_BYTES >= 40 * 1024,
              "HERMES_TLS_CONNECTION_BYTES must be at least 40 KiB: mbedTLS' two 16 KiB record buffers and a handshake");
static_assert(HERMES_TLS_HANDSHAKES_PER_STEP >= 1 && HERMES_TLS_HANDSHAKES_PER_STEP <= HERMES_MAX_CONNECTIONS,
              "HERMES_TLS_HANDSHAKES_PER_STEP must be between 1 and HERMES_MAX_CONNECTIONS");
static_assert(HERMES_TLS_HANDSHAKE_WAIT_MS >= 1 && HERMES_TLS_HANDSHAKE_WAIT_MS <= 1000,
              "HERMES_TLS_HANDSHAKE_WAIT_MS must be between 1 and 1000: handshakes must go on under any stream");
static_assert(HERMES_DEFAULT_MAX_UNDECLARED_METRICS >= 1, "HERMES_DEFAULT_MAX_UNDECLARED_METRICS must be at least 1");
static_assert(HERMES_STATSD_MAPPING_CACHE >= 1, "HERMES_STATSD_MAPPING_CACHE must be at least 1 name");
static_assert(HERMES_MAX_MAPPING_SIZE >= 4096, "HERMES_MAX_MAPPING_SIZE must be at least 4096 bytes");
static_assert(HERMES_MAX_MAPPING_NODES >= 1000, "HERMES_MAX_MAPPING_NODES must be at least 1000");

static_assert(HERMES_REMOTE_WRITE_INTERVAL_S >= 1, "HERMES_REMOTE_WRITE_INTERVAL_S must be at least 1 second");
static_assert(HERMES_REMOTE_WRITE_TIMEOUT_S >= 1, "HERMES_REMOTE_WRITE_TIMEOUT_S must be at least 1 second");
static_assert(HERMES_REMOTE_WRITE_BATCH >= 1, "HERMES_REMOTE_WRITE_BATCH must be at least 1 sample");
static_assert(HERMES_REMOTE_WRITE_MAX_BACKOFF_S >= 1, "HERMES_REMOTE_WRITE_MAX_BACKOFF_S must be at least 1 second");
static_assert(HERMES_REMOTE_WRITE_MAX_RETRY_AFTER_S >= 1, "HERMES_REMOTE_WRITE_MAX_RETRY_AFTER_S must be at least 1 second");
static_assert(HERMES_REMOTE_WRITE_PENDING_SHARE >= 2, "HERMES_REMOTE_WRITE_PENDING_SHARE must be at least 2: half the budget at most");
static_assert(HERMES_REMOTE_WRITE_MAX_RESPONSE >= 256, "HERMES_REMOTE_WRITE_MAX_RESPONSE must be at least 256 bytes: a status line and headers");

// ===== INCLUDES ===========================================================================

// Quoted, so that a copy of picojson.h beside this header is found first, and an
// installed one (<picojson.h>) otherwise.
#include "picojson.h"

// With HERMES_GZIP (link -lz), /metrics answers gzip to scrapers that ask for it.
#ifdef HERMES_GZIP
#include <cstdlib>
#include <zlib.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <deque>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/sock_diag.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#ifdef HERMES_YAML // StatsD mapping files: libyaml (Debian's libyaml-dev), linked with -lyaml
#include <regex.h> // the C library's POSIX regexes, for regex rules: std::regex would double a static binary
#include <yaml.h>
#endif

namespace hermes {

// ===== PUBLIC API: ERRORS =================================================================

// A config file that cannot be used: the message names the file, the place and the problem.
class ConfigError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// A bad command-line or environment value: the message names the variable.
class UsageError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// A socket that cannot be set up: the message names the address and the system error.
class SocketError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// A state file that cannot be read as state, or one that cannot be set aside: the
// message names the file, the place in it and the problem.
class StateError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// ===== PUBLIC API: ACCESS =================================================================

// A CIDR range, held as an IPv6 network and mask in two 64-bit halves, so that a check
// is two XORs and two ANDs. An IPv4 range is held as its IPv4-mapped IPv6 range
// (a.b.c.d/n as ::ffff:a.b.c.d/96+n), and an IPv4 sender is checked as its mapped address.
struct AddressRange {
  std::uint64_t high = 0, low = 0;           // the network; bits past the prefix are zero
  std::uint64_t high_mask = 0, low_mask = 0; // the prefix's bits set
  bool contains(std::uint64_t address_high, std::uint64_t address_low) const {
    return (((address_high ^ high) & high_mask) | ((address_low ^ low) & low_mask)) == 0; // no branch
  }
};

// Reads "10.0.0.0/8", "2001:db8::/32", or a bare address ("192.0.2.7" is a /32, "::1" a
// /128). Returns "" and sets `range`, or says what is wrong with the text. Bits set past
// the prefix are an error: "10.0.0.1/8" is more likely a mistake than 10.0.0.0/8 meant.
inline std::string parse_address_range(std::string_view text, AddressRange &range);

// The addresses allowed to send samples or to scrape. Empty allows everyone. It keeps
// what each range says of IPv4 senders as a 32-bit network and mask, in blocks of four
// that the compiler checks with a few vector instructions, and apart from them the
// ranges that hold IPv6 addresses other than IPv4-mapped ones.
class AllowList {
public:
  void add(const AddressRange &range, std::string text);
  bool empty() const { return ranges_.empty(); }
  const std::vector<std::string> &texts() const { return texts_; } // as written, for logs
  // Whether a sender may: always when the list is empty; else an AF_INET or AF_INET6
  // address in one of the ranges. Allocates nothing.
  bool allows(const sockaddr *address, socklen_t length) const {
    return ranges_.empty() || listed(address, length);
  }

private:
  bool listed(const sockaddr *address, socklen_t length) const;
  bool listed_v4(std::uint32_t address) const;
  static constexpr std::size_t v4_block = 4; // 128 bits of networks or masks
  std::vector<AddressRange> ranges_;         // as given
  std::vector<AddressRange> v6_ranges_;      // those that hold other IPv6 addresses than IPv4-mapped ones
  std::vector<std::uint32_t> v4_networks_, v4_masks_; // of those that hold IPv4 addresses; whole blocks
  std::size_t v4_count_ = 0;                          // of them, the rest of the last block are copies
  std::vector<std::string> texts_;
};

// ===== PUBLIC API: REMOTE WRITE ===========================================================

// A receiver of Prometheus remote write 1.0 that Hermes pushes every series to: one entry
// of the config's "remote_write" list, or HERMES_REMOTE_WRITE_URL. Secrets come from files
// only and are read when the config is; they are never logged.
struct RemoteWriteTls {
  std::string ca_file, cert_file, key_file, server_name;
  bool insecure_skip_verify = false;
};

struct RemoteWriteConfig {
  std::string url;                                             // http://host[:port][/path]
  double interval_seconds = HERMES_REMOTE_WRITE_INTERVAL_S;    // between snapshots
  double timeout_seconds = HERMES_REMOTE_WRITE_TIMEOUT_S;      // one request, from connect to answer
  std::size_t max_samples_per_send = HERMES_REMOTE_WRITE_BATCH; // samples in one request at most
  double max_backoff_seconds = HERMES_REMOTE_WRITE_MAX_BACKOFF_S; // retries wait 0.5 s, doubling up to this
  std::string bearer_token_file;                               // "Authorization: Bearer <its token>"
  std::string basic_auth_username, basic_auth_password_file;   // "Authorization: Basic ..."
  std::vector<std::pair<std::string, std::string>> headers;    // more headers, as given
  std::vector<std::pair<std::string, std::string>> external_labels; // sorted by name
  std::optional<RemoteWriteTls> tls;
  std::string authorization; // the Authorization header's value made from the files; secret
};

// The parts of a remote-write URL. Returns "" and sets `url`, or says what is wrong.
struct RemoteWriteUrl {
  std::string scheme, host; // host without brackets for an IPv6 address
  std::uint16_t port = 0;
  std::string path;         // "/" at least, with the query if any
};
inline std::string parse_remote_write_url(std::string_view text, RemoteWriteUrl &url);

// Why a remote-write request got no HTTP answer (requests_total{code="0"}), one reason
// each: no address for the host, no TCP connection, a TLS handshake that failed (a
// certificate not trusted, a wrong name: nothing is sent then), the connection lost
// while sending or reading, timeout_seconds passed, or given up for memory or at stop.
enum class RemoteWriteFailure { resolve, connect, tls_handshake, connection, timeout, given_up, count_ };
constexpr std::size_t remote_write_failure_count = static_cast<std::size_t>(RemoteWriteFailure::count_);
inline const char *to_string(RemoteWriteFailure reason);

// What a server did for one remote-write target, as hermes_remote_storage_* shows it.
struct RemoteWriteStats {
  std::string url;                    // as configured, without user info
  std::uint64_t samples_in = 0;       // samples in the snapshots taken, stale markers included
  std::uint64_t samples_sent = 0;     // accepted by the receiver (2xx)
  std::uint64_t samples_failed = 0;   // in requests that failed and will be retried
  std::uint64_t samples_retried = 0;  // sent again after a failure
  std::uint64_t samples_dropped = 0;  // given up: a 4xx other than 429, or a snapshot dropped for memory
  std::uint64_t snapshots_failed = 0; // snapshots the memory budget had no room for
  std::map<int, std::uint64_t> requests; // by status code; 0: no answer (connection error, timeout)
  std::array<std::uint64_t, remote_write_failure_count> failures{}; // requests without an answer, by reason
  std::uint64_t connections = 0;         // opened (TCP, and TLS handshakes over https); one serves many requests
  double pending_snapshots = 0, pending_bytes = 0;
  double last_send_seconds = 0;          // wall clock of the last request that succeeded; 0: none yet
  double highest_sent_timestamp_seconds = 0;
};

// ===== PUBLIC API: CONFIG =================================================================

enum class MetricType { counter, gauge, histogram, summary, count_ };
inline const char *to_string(MetricType type);

// The buckets of a histogram whose config names none: Prometheus' defaults, as the
// original Hermes uses them.
inline std::vector<double> default_buckets() { return {.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}; }

struct MetricConfig {
  std::string name;
  std::string help;
  MetricType type = MetricType::counter;
  std::vector<std::string> labels;
  std::size_t max_series = HERMES_DEFAULT_MAX_SERIES; // a push for one more is rejected: series_limit
  double ttl_seconds = 0; // a labelled series not pushed for this long is dropped; 0: never
  std::vector<double> buckets;                        // histograms: upper bounds, strictly increasing; may be
                                                      // empty when native
  bool native = false;                                // histograms: keep a native (sparse, exponential) histogram
  double native_bucket_factor = 1.1;                  // its buckets grow by at most this factor: the schema
  std::size_t native_max_buckets = 160;               // more buckets halve the resolution (schema minus one)
  double native_zero_threshold = 0x1p-128;            // observations this close to 0 count in the zero bucket
  std::vector<std::pair<double, double>> objectives;  // summaries: quantile and its allowed rank error
  double max_age_seconds = 600;                       // summaries: quantiles cover this window
};

// "tls_server" in the config: HTTPS on the HTTP port, in a build with HERMES_TLS.
struct TlsServerConfig {
  std::string cert_file;      // "cert_file": PEM, the leaf first, then the intermediates
  std::string key_file;       // "key_file": PEM or DER, unencrypted; with cert_file
  std::string client_ca_file; // "client_ca_file": clients must show a certificate these CAs signed
                              // "min_version": "TLS12", the only one accepted (TLS 1.2 and later)
};

// How StatsD lines make metrics that the config does not name (see StatsD mapping).
struct StatsdSettings {
  std::string mapping_file;        // "statsd_mapping_file": statsd_exporter's YAML mapping; empty: none
  bool accept_undeclared = false;  // "statsd_undeclared": "accept", or "reject" (the default)
  bool observe_as_summary = false; // "statsd_observer_type": "summary", or "histogram" (the default)
  double ttl_seconds = 0;          // "statsd_ttl_seconds": the ttl_seconds of metrics lines make
  std::size_t max_metrics = HERMES_DEFAULT_MAX_UNDECLARED_METRICS; // "max_undeclared_metrics": metrics lines may make
  std::size_t max_series = HERMES_DEFAULT_MAX_SERIES; // the config's top-level max_series
};

struct Config {
  std::string service_name;
  std::vector<MetricConfig> metrics;       // in the order of the file
  std::string listen_address;              // UDP address from the file; empty when not set
  std::optional<std::uint16_t> listen_port; // UDP port from the file
  std::optional<std::size_t> max_memory_bytes; // the memory budget from the file
  std::string state_file;                   // "state_file": where state is kept; empty when not set
  std::optional<double> state_interval_seconds; // "state_interval_seconds"
  AllowList udp_allow;                      // "udp_allow": who may send; empty: everyone
  AllowList http_allow;                     // "http_allow": who may use HTTP; empty: everyone
  TlsServerConfig tls_server;               // "tls_server": HTTPS on the HTTP port; empty: plain HTTP
  StatsdSettings statsd;                    // the "statsd_*" keys and max_undeclared_metrics
  std::vector<RemoteWriteConfig> remote_write; // "remote_write": receivers to push to
  std::optional<std::size_t> max_push_groups; // "max_push_groups"
  std::optional<double> push_ttl_seconds;     // "push_ttl_seconds"
};

// What a series of `metric` may cost at most, in bytes of the memory budget, besides its
// label values: a summary's windows at their fullest. --check-config shows it.
inline std::size_t worst_case_series_bytes(const MetricConfig &metric);
// What a series of `metric` may add to one /metrics body, in the format that writes the
// most of it, with label values of `label_value_bytes` bytes that need no escaping. The
// budget keeps this room for every series in each body a server keeps in flight.
inline std::size_t worst_case_body_bytes(const MetricConfig &metric, std::size_t label_value_bytes = 15);
// What a series of `metric` may add to the state file's text at most, with label values
// of that length: its summary windows and native buckets at their fullest. While a
// write's text is made, it holds up to half as much again.
inline std::size_t worst_case_state_bytes(const MetricConfig &metric, std::size_t label_value_bytes = 15);

// Parses and validates a config; `origin` (the file name) starts every error message.
inline Config parse_config(std::string_view json, const std::string &origin);
// Reads, parses and validates a config file. Throws ConfigError.
inline Config load_config(const std::string &path);
// Naming advice that `promtool check metrics` would give on the configured metrics, as
// "name: problem" lines; advice, not errors.
inline std::vector<std::string> lint_config(const Config &config);

// ===== PUBLIC API: OPTIONS ================================================================

enum class LogLevel { debug, info, warn, error, count_ };
inline const char *to_string(LogLevel level);
inline std::optional<LogLevel> parse_log_level(std::string_view text); // any case
inline std::optional<std::uint16_t> parse_port(std::string_view text); // decimal 0..65535
inline std::optional<bool> parse_switch(std::string_view text);        // on/off, true/false, yes/no, 1/0

// Receives each log line (logfmt, no newline). Empty: lines go to stderr.
using LogSink = std::function<void(const std::string &line)>;

#ifdef HERMES_GZIP
constexpr bool has_gzip = true;
constexpr int default_gzip_level = HERMES_GZIP_LEVEL;
#else
constexpr bool has_gzip = false;
constexpr int default_gzip_level = 0; // a build without HERMES_GZIP has no gzip
#endif
#ifdef HERMES_TLS
constexpr bool has_tls = true;
#else
constexpr bool has_tls = false;
#endif
#ifdef HERMES_YAML
constexpr bool has_yaml = true;
#else
constexpr bool has_yaml = false;
#endif

// The parts this build has: each HERMES_NO_* macro leaves one out (see "Leaving parts out").
// A part left out keeps its declarations, so that code naming it still compiles, but nothing
// reaches it, so the compiler emits none of its functions.
#if defined(HERMES_NO_RESOLVER) && !defined(HERMES_NO_REMOTE_WRITE)
#error "HERMES_NO_RESOLVER: remote write looks its receivers' names up; define HERMES_NO_REMOTE_WRITE too"
#endif
#ifdef HERMES_NO_STATSD
constexpr bool has_statsd = false;
#else
constexpr bool has_statsd = true;
#endif
#ifdef HERMES_NO_PROTOBUF
constexpr bool has_protobuf = false;
#else
constexpr bool has_protobuf = true;
#endif
#ifdef HERMES_NO_STATE
constexpr bool has_state = false;
#else
constexpr bool has_state = true;
#endif
#ifdef HERMES_NO_PUSH
constexpr bool has_push = false;
#else
constexpr bool has_push = true;
#endif
#ifdef HERMES_NO_REMOTE_WRITE
constexpr bool has_remote_write = false;
#else
constexpr bool has_remote_write = true;
#endif

namespace detail {

// A part and the macro that leaves it out, for the error a setting of it gets.
struct Part {
  bool built;
  const char *what;
  const char *macro;
};
inline constexpr Part statsd_part{has_statsd, "StatsD", "HERMES_NO_STATSD"};
inline constexpr Part protobuf_part{has_protobuf, "protobuf format", "HERMES_NO_PROTOBUF"};
inline constexpr Part state_part{has_state, "state file", "HERMES_NO_STATE"};
inline constexpr Part push_part{has_push, "Pushgateway API", "HERMES_NO_PUSH"};
inline constexpr Part remote_write_part{has_remote_write, "remote write", "HERMES_NO_REMOTE_WRITE"};

inline std::string not_built(const Part &part) { return std::string("this build has no ") + part.what + " (" + part.macro + ")"; }

// A config key or environment variable, and the part it sets: in a build without that
// part, setting it is an error rather than ignored.
struct PartSetting {
  const char *name;
  const Part &part;
};
inline constexpr PartSetting part_config_keys[] = {
    {"statsd_mapping_file", statsd_part}, {"statsd_undeclared", statsd_part},  {"statsd_observer_type", statsd_part},
    {"statsd_ttl_seconds", statsd_part},  {"max_undeclared_metrics", statsd_part}, {"state_file", state_part},
    {"state_interval_seconds", state_part}, {"max_push_groups", push_part}, {"push_ttl_seconds", push_part},
    {"remote_write", remote_write_part}};
inline constexpr PartSetting part_variables[] = {
    {"HERMES_STATSD", statsd_part}, {"HERMES_STATSD_TCP_PORT", statsd_part}, {"HERMES_MAX_STATSD_CONNECTIONS", statsd_part},
    {"HERMES_STATSD_TCP_IDLE_SECONDS", statsd_part}, {"HERMES_STATSD_MAPPING", statsd_part},
    {"HERMES_PROTOBUF", protobuf_part}, {"HERMES_STATE_FILE", state_part}, {"HERMES_STATE_INTERVAL", state_part},
    {"HERMES_PUSH", push_part}, {"HERMES_MAX_PUSH_BYTES", push_part}, {"HERMES_MAX_PUSH_GROUPS", push_part},
    {"HERMES_PUSH_TTL", push_part}, {"HERMES_PUSH_TOKEN_FILE", push_part}, {"HERMES_PUSH_ADMIN", push_part},
    {"HERMES_REMOTE_WRITE_URL", remote_write_part}, {"HERMES_REMOTE_WRITE_INTERVAL", remote_write_part},
    {"HERMES_REMOTE_WRITE_BEARER_TOKEN_FILE", remote_write_part}};

} // namespace detail

struct Options {
  std::string udp_address = "0.0.0.0";
  std::uint16_t udp_port = 7789; // 0: the kernel chooses
  int udp_receive_buffer = HERMES_UDP_RECEIVE_BUFFER; // SO_RCVBUF in bytes; the kernel may grant less
  std::string http_address = "0.0.0.0";
  std::uint16_t http_port = 8080;
  LogLevel log_level = LogLevel::info;
  bool openmetrics = true; // serve OpenMetrics to scrapers that prefer it
  bool protobuf = has_protobuf; // serve the protobuf format to scrapers that prefer it
  int gzip_level = default_gzip_level; // /metrics in gzip, at this zlib level (1-9), to scrapers that ask; 0: never
  std::string config_path; // the file Server::reload() reads again; empty: no reloads
  std::string unix_socket_path; // a unix datagram socket that takes samples too; empty: none
  unsigned unix_socket_mode = 0660; // its file mode, so that only its group may push
  bool statsd = has_statsd; // datagrams that are not JSON hold StatsD lines; off: they are malformed_json
  std::size_t max_memory = HERMES_DEFAULT_MAX_MEMORY; // the memory budget, in bytes
  std::string state_file; // where the series are kept across restarts; empty: nowhere
  double state_interval_seconds = HERMES_STATE_INTERVAL_S; // between writes, each only after a change
  AllowList udp_allow;  // UDP senders outside these ranges are dropped (forbidden_source); empty: everyone
  AllowList http_allow; // HTTP clients outside these ranges are answered 403; empty: everyone
  std::string http_token_file; // a file holding the bearer token /metrics and / ask for; empty: none
  double http_idle_timeout_seconds = HERMES_HTTP_IDLE_TIMEOUT_S; // a kept-alive connection's wait for a request; 0: none kept
  // StatsD lines over TCP, on udp_address (statsd_exporter's --statsd.listen-tcp); see "StatsD over TCP".
  std::optional<std::uint16_t> statsd_tcp_port; // none: no TCP listener; 0: the kernel chooses
  std::size_t statsd_tcp_max_connections = HERMES_MAX_STATSD_CONNECTIONS; // more are refused (connection_limit)
  double statsd_tcp_idle_seconds = HERMES_STATSD_TCP_IDLE_S; // without a whole line, then closed; 0: never
  std::string tls_cert_file;      // with tls_key_file, the HTTP port speaks only TLS (HERMES_TLS builds)
  std::string tls_key_file;       // the certificate's private key
  std::string tls_client_ca_file; // clients must show a certificate these CAs signed; empty: none asked
  std::string statsd_mapping_file; // HERMES_STATSD_MAPPING: over the config's statsd_mapping_file; empty: that
  std::vector<RemoteWriteConfig> remote_write; // the config's, and HERMES_REMOTE_WRITE_URL's
  bool push = has_push;        // take pushes over the Pushgateway API on the HTTP port
  std::size_t max_push_bytes = HERMES_MAX_PUSH_BYTES; // a longer push body is answered 413
  std::size_t max_push_groups = HERMES_DEFAULT_MAX_PUSH_GROUPS; // a push for one group more is answered 507
  double push_ttl_seconds = 0;  // a group not pushed for this long disappears; 0: never
  std::string push_token_file;  // a file holding the bearer token pushes and deletes must carry; empty: none
  bool push_admin = false;      // PUT /api/v1/admin/wipe deletes every group
  LogSink log_sink;
};

// "67108864", "64MiB", "512 KiB", "1GiB": bytes, or with a binary suffix.
inline std::optional<std::size_t> parse_bytes(std::string_view text);

// Looks a variable up, as std::getenv does: nullptr when unset.
using Environment = std::function<const char *(const char *name)>;

// Options from the environment over the config file's listen_* keys over the defaults:
// HERMES_UDP_ADDRESS (or LISTEN_ADDRESS), HERMES_UDP_PORT (or LISTEN_PORT),
// HERMES_HTTP_ADDRESS, HERMES_HTTP_PORT, HERMES_LOG_LEVEL (or LOG_LEVEL), HERMES_OPENMETRICS, HERMES_PROTOBUF,
// HERMES_UNIX_SOCKET and HERMES_UNIX_SOCKET_MODE (octal), HERMES_UDP_RECEIVE_BUFFER (bytes),
// HERMES_STATSD (on or off), HERMES_MAX_MEMORY (bytes), HERMES_COMPRESSION (off, on, or a gzip level 1-9),
// HERMES_STATE_FILE and HERMES_STATE_INTERVAL (seconds, over the config's state_* keys),
// HERMES_UDP_ALLOW and HERMES_HTTP_ALLOW (comma-separated CIDR ranges, over the config's
// udp_allow and http_allow), HERMES_HTTP_TOKEN_FILE, HERMES_HTTP_IDLE_TIMEOUT_SECONDS (0: no
// persistent connections), HERMES_STATSD_TCP_PORT,
// HERMES_MAX_STATSD_CONNECTIONS and HERMES_STATSD_TCP_IDLE_SECONDS (0: never), HERMES_TLS_CERT_FILE,
// HERMES_TLS_KEY_FILE and HERMES_TLS_CLIENT_CA_FILE (over the config's tls_server).
// An empty variable counts as unset. Throws UsageError naming a bad variable.
inline Options options_from_environment(const Config &config, const Environment &env);
// The variables options_from_environment reads, as `hermes --help` lists them: only those
// of the parts this build has (HERMES_NO_*, HERMES_GZIP, HERMES_TLS, HERMES_YAML).
inline std::string environment_help();

// ---- StatsD mapping ----

namespace detail {
class StatsdMapping;
} // namespace detail

// statsd_exporter's mapping file, read: its rules, and a warning for each key that
// Hermes does not act on.
struct StatsdMappingFile {
  std::shared_ptr<const detail::StatsdMapping> mapping;
  std::size_t rules = 0;
  std::vector<std::string> warnings;
};
// The mapping file in force: Options::statsd_mapping_file, else the config's; empty: none.
inline std::string statsd_mapping_path(const Config &config, const Options &options);
// Reads a mapping file (statsd_exporter v0.23's YAML). Needs HERMES_YAML; without it,
// throws ConfigError saying so. Throws ConfigError naming the file, the line and the problem.
inline StatsdMappingFile load_statsd_mapping(const std::string &path);
// The same from text, `origin` naming it in messages.
inline StatsdMappingFile parse_statsd_mapping(std::string_view yaml, const std::string &origin);

// ===== PUBLIC API: SAMPLES ================================================================

// Why a sample was not applied; each is a value of hermes_samples_rejected_total's reason.
enum class Reject {
  malformed_json,      // the datagram is not JSON
  malformed_sample,    // JSON of the wrong shape
  unknown_metric,      // no such metric in the config
  label_mismatch,      // a label missing, extra or not a string
  invalid_label_value, // a label value that is not valid UTF-8
  invalid_value,       // value missing, not a number, or a negative counter increment
  invalid_operation,   // a gauge operation other than set, increment, decrement
  series_limit,        // a new series for a metric that has max_series already
  too_large,           // a datagram longer than HERMES_MAX_DATAGRAM_SIZE
  unsupported_type,    // a StatsD set, event or service check
  memory_limit,        // a new series that the memory budget has no room for
  forbidden_source,    // a UDP datagram from an address outside Options::udp_allow, not parsed
  dropped,             // a StatsD line that a mapping rule with action: drop matched
  type_mismatch,       // a StatsD line that would make a metric whose names another metric uses
  metric_limit,        // a StatsD line that would make one more metric than max_undeclared_metrics
  count_
};
constexpr std::size_t reject_reason_count = static_cast<std::size_t>(Reject::count_);
inline const char *to_string(Reject reason);

// The two formats a datagram may speak: JSON samples, or StatsD lines.
enum class Wire { json, statsd, count_ };
constexpr std::size_t wire_count = static_cast<std::size_t>(Wire::count_);
inline const char *to_string(Wire wire);

// Seconds since the epoch, as the timestamps of /metrics count them. It may step.
inline double wall_clock_seconds();
// Seconds on a clock that never steps (CLOCK_MONOTONIC): ttl_seconds, summary windows.
inline double monotonic_seconds();

// The two clocks a registry reads: the monotonic one for ages, the wall one for the
// timestamps it shows. One number stands for both, as unit tests step them together.
struct Now {
  double monotonic = 0; // monotonic_seconds(): ttl_seconds and summary windows count on it
  double wall = 0;      // wall_clock_seconds(): the _created timestamps
  Now(double both) : monotonic(both), wall(both) {} // implicit, so that a test may write ingest(text, 1000)
  Now(double monotonic_seconds, double wall_seconds) : monotonic(monotonic_seconds), wall(wall_seconds) {}
  static Now current() { return {monotonic_seconds(), wall_clock_seconds()}; }
};

// What one datagram did: samples applied, and samples rejected by reason.
struct IngestResult {
  std::size_t accepted = 0;
  std::array<std::size_t, reject_reason_count> rejected{};
  std::size_t rejected_total() const;
};

// ===== PUBLIC API: MEMORY BUDGET ==========================================================

// The bytes Hermes may hold for what input can grow: series and their summary windows,
// /metrics bodies, HTTP connections, datagrams held during a render, the state file's
// text. Each is taken before it is allocated and given back when it is freed; what would
// cross the limit is refused. The binary and the C and C++ libraries are outside it.
//
// The rule that keeps scrapes answered: every series takes its own bytes and, besides,
// room for its lines in each of the bodies a server keeps in flight (`bodies`). Bodies
// are taken from that room, other buffers never are, so that after every step
//
//     held + (each body in flight, at its size or the bound if more)
//          + (the bound for each of the `bodies` not in flight) <= limit
//
// where the bound is the most one body of every existing series can take. A new series
// that does not fit with its room is refused; while fewer than `bodies` are in flight, a
// body of the bound always fits, whatever came before it: series that expire only
// lower the bound, and a body made before them keeps its place.
class MemoryBudget {
public:
  // `bodies`: the /metrics bodies to keep room for; 0 (a registry without a server) keeps none.
  explicit MemoryBudget(std::size_t limit_bytes = SIZE_MAX, std::size_t bodies = 0) : limit_(limit_bytes), bodies_(bodies) {}

  // A buffer: takes `bytes`, or nothing and false when they would cross the limit or
  // eat the room kept for bodies.
  bool take(std::size_t bytes) { return fits(held_ + bytes, body_bound_) && (held_ += bytes, true); }
  void give_back(std::size_t bytes) { held_ -= std::min(bytes, held_); }

  // A series: its own bytes, and `body_bytes` more room in each body; false when they
  // do not fit.
  bool take_for_series(std::size_t own_bytes, std::size_t body_bytes) {
    if (!fits(held_ + own_bytes, body_bound_ + body_bytes)) return false;
    held_ += own_bytes, body_bound_ += body_bytes;
    return true;
  }
  void give_back_series(std::size_t own_bytes, std::size_t body_bytes) {
    held_ -= std::min(own_bytes, held_);
    body_bound_ -= std::min(body_bytes, body_bound_);
  }
  // Whether series could be exchanged: given back, then others taken (a reload).
  bool can_exchange(std::size_t own_freed, std::size_t body_freed, std::size_t own_wanted, std::size_t body_wanted) const {
    const std::size_t held = held_ - std::min(own_freed, held_) + own_wanted;
    return fits(held, body_bound_ - std::min(body_freed, body_bound_) + body_wanted);
  }

  // A /metrics body that holds `from` bytes (0: a new one) and would hold `to` (0: it is
  // freed). Growing takes from the room kept for bodies, and beyond it only what nothing
  // else holds; false, with nothing changed, when there is no room.
  bool resize_body(std::size_t from, std::size_t to) {
    const auto at = std::find(bodies_held_.begin(), bodies_held_.end(), from);
    if (from == 0) bodies_held_.push_back(to);
    else *at = to;
    if (to > from && committed() > limit_) {
      if (from == 0) bodies_held_.pop_back();
      else *at = from;
      return false;
    }
    if (to == 0) bodies_held_.erase(std::find(bodies_held_.begin(), bodies_held_.end(), std::size_t{0}));
    in_bodies_ = in_bodies_ - from + to;
    return true;
  }

  std::size_t limit() const { return limit_; }
  std::size_t used() const { return held_ + in_bodies_; }          // what is taken: buffers, series and bodies
  std::size_t body_bound() const { return body_bound_; }          // the most one body of every series can take
  std::size_t body_room() const { return bodies_ * body_bound_; } // kept for bodies, taken or not
  std::size_t bodies() const { return bodies_; }
  std::size_t committed() const { return committed_with(held_, body_bound_); } // what the rule adds up
  // The rule above; true after every step.
  bool keeps_room() const { return committed() <= limit_; }

private:
  // Buffers and series, with each body in flight at its size or the bound, whichever is
  // more (a body made before series expired may be larger than a body now), and the
  // bound for each body not in flight yet.
  std::size_t committed_with(std::size_t held, std::size_t bound) const {
    std::size_t total = held, slots = bodies_;
    for (const std::size_t body : bodies_held_) {
      total += std::max(body, bound);
      slots -= slots > 0 ? 1 : 0;
    }
    return total + slots * bound;
  }
  bool fits(std::size_t held, std::size_t bound) const { return committed_with(held, bound) <= limit_; }

  std::size_t limit_;
  std::size_t bodies_;                    // bodies kept room for
  std::size_t held_ = 0;                  // buffers and series
  std::size_t body_bound_ = 0;            // one body of every series, at most
  std::size_t in_bodies_ = 0;             // bodies in flight, in all
  std::vector<std::size_t> bodies_held_;  // each body in flight; a few
};

// ===== PUBLIC API: REGISTRY ===============================================================

// Declared here so that Registry can hold them; defined in the detail sections below.
namespace detail {
struct Metric;
struct Reading;
struct ReadSample;
struct StatsdReading;
struct LineMetrics;
class Renderer;
class StateCodec;
struct SeriesCost;
} // namespace detail

// The metrics of a config and their series. Not thread-safe: one owner applies samples
// and sweeps; any number of readers may render a Registry that nobody changes meanwhile.
class Registry {
public:
  // Series are taken from `budget` (shared with a server's other buffers), each with its
  // room in the /metrics bodies the budget keeps room for; without one, only max_series
  // bounds them. Throws ConfigError when the budget has no room for the series of the
  // metrics without labels and the room of every family.
  explicit Registry(const Config &config, std::shared_ptr<MemoryBudget> budget = nullptr);
  Registry(Registry &&) noexcept;
  Registry &operator=(Registry &&) noexcept;
  ~Registry();

  // Parses one datagram and applies every sample in it, at `now`. Never throws on bad input.
  IngestResult ingest(std::string_view datagram, Now now = Now::current());
  // Counts a datagram rejected before parsing, such as one that was too large.
  void count_rejected(Reject reason);
  // Applies StatsD lines as ingest() applies a datagram of them, whatever their first
  // byte and Options::statsd: a StatsD TCP stream holds nothing else.
  IngestResult ingest_statsd_lines(std::string_view lines, Now now = Now::current());
  // Off: every datagram is read as JSON, so StatsD lines are malformed_json. On by default.
  void accept_statsd(bool on) { statsd_ = on; }
  // Maps StatsD names through a mapping file's rules (null: none); forgets the mapping
  // results kept so far. Metrics made before stay.
  void use_statsd_mapping(std::shared_ptr<const detail::StatsdMapping> mapping);
  // Takes a new config. A metric whose series have the same shape as before (type,
  // labels, buckets, objectives, max_age_seconds, the native_* settings) keeps them; a changed one starts
  // afresh; one no longer configured disappears. The counts of samples go on. Throws
  // ConfigError, having changed nothing, when the budget has no room for what the new
  // config makes.
  struct ReloadSummary {
    std::size_t kept = 0, fresh = 0, removed = 0; // metrics
  };
  ReloadSummary reload(const Config &config);
  // Brings the registry up to `monotonic_now`: drops the labelled series whose metric
  // has a ttl_seconds and that were not pushed for that long, and moves summary windows
  // on, forgetting observations older than max_age_seconds. Returns how many series it
  // dropped. A series without labels stays. Call it before rendering, which only reads.
  std::size_t expire(double monotonic_now = monotonic_seconds());

  // Writes every series over `out` as the state file's JSON text (format version 2,
  // see README "State across restarts"): values, buckets, sums, counts, summary windows,
  // _created, each series' age since its last push, and each metric's shape. `pause`,
  // when given, runs after every HERMES_STATE_PAUSE_STRIDE series and must not change
  // the registry.
  void save_state(std::string &out, Now now, const std::function<void()> &pause = {}) const;
  // The most bytes save_state() would write now: what a server takes from its budget first.
  std::size_t state_size_bound() const;
  // What restore_state() took, and what it left out and why ("metric: problem", once each).
  struct RestoreSummary {
    std::size_t restored = 0, skipped = 0; // series
    std::vector<std::string> problems;
    std::size_t push_groups_restored = 0, push_groups_skipped = 0; // a server's pushed groups
    std::vector<std::string> push_group_problems;                  // "{job=\"x\"}: why", once each
  };
  // Takes the series of a state file whose metric is configured with the same shape;
  // series past their ttl_seconds expire at the next expire(). Throws StateError, having
  // changed nothing, when `text` is not a whole state file.
  RestoreSummary restore_state(std::string_view text, double monotonic_now = monotonic_seconds());
  // Goes up whenever a sample is applied, a series expires or one is restored: the state
  // is written only after a change. A reload alone is none: it leaves the file as it is.
  std::uint64_t changes() const { return changes_; }

  const std::string &service_name() const { return service_name_; }
  // Whether a metric, configured or made by StatsD lines, writes `name` in either format.
  bool uses_name(std::string_view name) const;
  // Names written elsewhere on /metrics (pushed groups): a StatsD line may not make a
  // metric that writes one of them.
  void keep_line_metrics_off(std::function<bool(std::string_view)> taken) { taken_elsewhere_ = std::move(taken); }
  // The value of one series, label values in configured order; nullopt when it does not exist.
  std::optional<double> value(std::string_view metric, const std::vector<std::string> &label_values) const;
  std::size_t series_count() const; // live series of all configured metrics
  // Each configured metric, by index in name order (0 to metric_count() - 1): its live
  // series and its max_series, so that an operator sees which one is full.
  struct MetricFill {
    std::string_view name;
    std::size_t series = 0, max_series = 0;
  };
  std::size_t metric_count() const;
  MetricFill metric_fill(std::size_t index) const;
  std::uint64_t accepted() const { return accepted_; }
  std::uint64_t expired() const { return expired_; } // series dropped by expire(), ever
  std::uint64_t rejected(Reject reason) const { return rejected_[static_cast<std::size_t>(reason)]; }
  // Samples that arrived in each format, applied or not; a too_large datagram is in neither.
  std::uint64_t received(Wire wire) const { return received_[static_cast<std::size_t>(wire)]; }

private:
  friend class detail::Renderer;
  friend class detail::StateCodec;
  void ingest_json(std::string_view datagram, Now now, IngestResult &result);
  void ingest_statsd(std::string_view datagram, Now now, IngestResult &result);
  void apply_statsd(detail::StatsdReading &reading, Now now, IngestResult &result);
  detail::Metric *find_statsd(detail::StatsdReading &reading);
  detail::Metric *find_statsd_named(detail::StatsdReading &reading);
  detail::Metric *find_or_make_statsd(detail::StatsdReading &reading, std::optional<Reject> &refused);
  detail::Metric *make_line_metric(MetricConfig config, std::optional<Reject> &refused);
  void carry_line_metrics(Config &next) const;
  detail::Metric *restore_line_metric(const MetricConfig &shape);
  void tally(IngestResult &result, std::optional<Reject> reason, std::size_t samples = 1);
  std::optional<Reject> apply(const detail::ReadSample &sample, Now now);
  detail::Metric *find(std::string_view name);
  const detail::Metric *find(std::string_view name) const;
  void release(detail::Metric &metric);
  void give_back_budget();
  detail::SeriesCost standing_cost() const;
  std::string no_room_for(const detail::SeriesCost &wanted) const;

  std::string service_name_;
  std::vector<detail::Metric> metrics_; // sorted by name
  std::shared_ptr<MemoryBudget> budget_;     // series are taken from it, and given back
  std::unique_ptr<detail::Reading> reading_; // buffers that datagrams are read into, reused
  std::unique_ptr<detail::StatsdReading> statsd_reading_; // the same for StatsD lines
  bool statsd_ = true;
  std::unique_ptr<detail::LineMetrics> line_metrics_; // metrics made from StatsD lines, and the mapping
  std::function<bool(std::string_view)> taken_elsewhere_;
  std::size_t fixed_body_bytes_ = 0; // the families' heads and Hermes' own families, in one body at most
  bool holds_budget_ = false;        // what it took is still to be given back
  std::uint64_t accepted_ = 0;
  std::uint64_t expired_ = 0;
  std::uint64_t changes_ = 0;
  std::array<std::uint64_t, reject_reason_count> rejected_{};
  std::array<std::uint64_t, wire_count> received_{};
};

// ===== PUBLIC API: FORMATTING =============================================================

// The exposition formats /metrics speaks.
enum class Format {
  text,        // Prometheus text format 0.0.4
  openmetrics, // OpenMetrics 1.0.0: counters named *_total become a family without the
               // suffix and gain *_created; other counters are typed unknown, as
               // Prometheus' Go client does; the body ends with # EOF
  protobuf,    // Prometheus' protobuf format: io.prometheus.client.MetricFamily messages,
               // each after its varint length; the one format with native histograms
               // (and created_timestamp where OpenMetrics has *_created)
  count_
};
inline const char *content_type(Format format);

// The format an Accept header prefers by its q values, among text and those allowed;
// a tie goes to text, then OpenMetrics. Protobuf is the media type
// application/vnd.google.protobuf with proto=io.prometheus.client.MetricFamily and
// encoding=delimited.
inline Format negotiate_format(std::string_view accept, bool openmetrics = true, bool protobuf = true);

// The exposition of a registry: every configured metric and the registry's own figures
// (hermes_build_info, hermes_samples_*, hermes_series*, and per configured metric
// hermes_metric_series and hermes_metric_max_series), each family once, sorted by name.
// It only reads the registry; call Registry::expire first for up-to-date ttl and summary
// windows. A Server adds its own figures: see Server::render.
inline std::string render_metrics(const Registry &registry, Format format = Format::text);
// The same written over `out`, whose memory is reused.
inline void render_metrics(std::string &out, const Registry &registry, Format format);

// ===== PUBLIC API: SERVER =================================================================

// Why a StatsD TCP connection was closed as soon as it was accepted; each is a value of
// hermes_statsd_tcp_connections_refused_total's reason.
enum class TcpRefusal {
  connection_limit, // Options::statsd_tcp_max_connections are open already
  memory_limit,     // the memory budget has no room for one more connection's line buffer
  forbidden_source, // from an address outside Options::udp_allow; nothing of it is read
  count_
};
constexpr std::size_t tcp_refusal_count = static_cast<std::size_t>(TcpRefusal::count_);
inline const char *to_string(TcpRefusal reason);

// Why an open StatsD TCP connection ended; each is a value of hermes_statsd_tcp_connections_closed_total's reason.
enum class TcpClose {
  end,       // the client closed it; its last line, even without a newline, was taken
  error,     // the connection failed (reset); its last line was taken too
  idle,      // no whole line for Options::statsd_tcp_idle_seconds; what it had of one was taken as its last
  too_large, // a line longer than HERMES_MAX_DATAGRAM_SIZE (counted too_large, not parsed)
  count_
};
constexpr std::size_t tcp_close_count = static_cast<std::size_t>(TcpClose::count_);
inline const char *to_string(TcpClose reason);

// The daemon's own figures beside the registry's.
struct ServerStats {
  std::uint64_t udp_packets = 0;
  std::uint64_t udp_receive_drops = 0; // datagrams the kernel dropped: the receive buffer was full
  double udp_receive_buffer_bytes = 0;
  std::uint64_t unix_datagrams = 0;
  std::uint64_t reloads_succeeded = 0;
  std::uint64_t reloads_failed = 0;
  double last_reload_success_seconds = 0; // the start, until a reload succeeds
  std::map<int, std::uint64_t> http_requests; // by status code; every code Hermes sends, from 0
  std::map<std::pair<std::string, int>, std::uint64_t> push_requests; // Pushgateway API requests by method and status, from 0
  double push_groups = 0;      // groups pushed over the Pushgateway API
  double push_group_bytes = 0; // what they hold of the memory budget
  double memory_budget_bytes = 0;             // the limit of the memory budget
  double memory_used_bytes = 0;               // what of it is taken
  double memory_committed_bytes = 0;          // taken, or kept for the /metrics bodies of the series that exist
  std::uint64_t state_writes_succeeded = 0;
  std::uint64_t state_writes_failed = 0;
  double state_last_write_seconds = 0; // wall clock of the last write that succeeded; 0: none yet
  std::uint64_t state_restored_series = 0;
  bool statsd_tcp = false; // a StatsD TCP listener is on; its figures below are shown only then
  std::uint64_t statsd_tcp_connections = 0; // open now
  std::uint64_t statsd_tcp_accepted = 0;
  std::array<std::uint64_t, tcp_refusal_count> statsd_tcp_refused{};
  std::array<std::uint64_t, tcp_close_count> statsd_tcp_closed{};
  std::uint64_t metrics_bytes_identity = 0; // of /metrics bodies sent plain
  std::uint64_t metrics_bytes_gzip = 0;     // of /metrics bodies sent in gzip
  std::uint64_t metrics_gzip_uncompressed_bytes = 0; // what those gzip bodies hold uncompressed
  bool tls = false;                           // the HTTP port speaks TLS: the hermes_tls_* families are shown
  std::uint64_t tls_handshakes_ok = 0;
  std::uint64_t tls_handshakes_failed = 0;    // a protocol error, a refused certificate, a client that left
  std::uint64_t tls_handshakes_timeout = 0;   // unfinished at the read timeout, or closed for a newcomer
  double tls_certificate_expiry_seconds = 0;  // when the served certificate expires, in seconds since the epoch
  std::vector<RemoteWriteStats> remote_write; // one per target, in config order
  ServerStats();
};

// Owns the UDP and HTTP sockets and the registry. Single-threaded: drive it from one
// thread. Movable, not copyable.
class Server {
public:
  // Binds both sockets, reads Options::http_token_file and the TLS files, logs where it
  // listens, and restores Options::state_file. Throws SocketError; ConfigError when the
  // token file is missing, empty or unfit, or a TLS file is (see TLS above), or a
  // remote-write target's URL is (https without HERMES_TLS), or the budget has no room
  // for its figures; StateError when a state file that is not state cannot be set aside.
  // Starts a sending thread per remote-write target.
  Server(const Config &config, Options options);
  Server(Server &&) noexcept;
  Server &operator=(Server &&) noexcept;
  ~Server();

  // Waits up to timeout_ms for traffic and handles what arrived.
  void poll_once(int timeout_ms);
  // Steps until `stop` is set; sees it within HERMES_POLL_INTERVAL_MS. When `reload` is
  // given, each time it is set the server clears it and reloads. With a state file, it
  // then applies the samples still queued on the sockets and writes the state.
  void run(const std::atomic<bool> &stop, std::atomic<bool> *reload = nullptr);
  // Reads Options::config_path again and takes it (Registry::reload), the token file
  // and the TLS certificate and key; one that fails to load is logged and the reload counted as failed, and what
  // is in force stays. Listen addresses and ports, allow lists, the state file and its
  // interval change only at restart.
  bool reload();

  std::uint16_t udp_port() const;
  std::uint16_t http_port() const;
  std::string udp_endpoint() const; // as bound: "0.0.0.0:7789", "[::1]:7789"
  std::string http_endpoint() const;
  std::uint16_t statsd_tcp_port() const; // 0: no StatsD TCP listener
  const Registry &registry() const;
  ServerStats stats() const;
  // The /metrics body as of now: the registry's and the daemon's figures, and the
  // process_* metrics of the standard client libraries (those /proc can tell).
  std::string render(Format format = Format::text);

private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ===== PUBLIC API: CLIENT =================================================================

using Labels = std::vector<std::pair<std::string, std::string>>;

// Samples gathered to go out in one datagram, as a JSON array. Keep a batch below
// HERMES_MAX_DATAGRAM_SIZE bytes (size_bytes()): a longer one is rejected whole. A
// value that is not finite is left out: JSON cannot carry it.
class Batch {
public:
  Batch &increment_counter(std::string_view metric, const Labels &labels, double by = 1);
  Batch &set_gauge(std::string_view metric, const Labels &labels, double value);
  Batch &increment_gauge(std::string_view metric, const Labels &labels, double by = 1);
  Batch &decrement_gauge(std::string_view metric, const Labels &labels, double by = 1);
  Batch &observe(std::string_view metric, const Labels &labels, double value); // histograms, summaries

  std::size_t size() const { return samples_; }
  std::size_t size_bytes() const { return json_.size() + 1; }
  std::string json() const { return json_ + ']'; }
  void clear() { json_ = "[", samples_ = 0; }

private:
  Batch &add(std::string_view metric, const Labels &labels, double value, const char *operation);
  std::string json_ = "[";
  std::size_t samples_ = 0;
};

// Sends samples to a Hermes over UDP. Sending never blocks and never throws: a lost
// datagram is the price of a worker that never waits. Movable, not copyable.
class Client {
public:
  // Resolves host once; where a name has IPv4 and IPv6 addresses, the IPv4 one is used,
  // since Hermes listens on 0.0.0.0 by default. Throws SocketError when it cannot.
  Client(const std::string &host, std::uint16_t port);
  Client(Client &&) noexcept;
  Client &operator=(Client &&) noexcept;
  ~Client();

  bool send(std::string_view datagram); // false when the kernel refused it
  bool send(const Batch &batch);        // false also for an empty batch
  bool increment_counter(std::string_view metric, const Labels &labels, double by = 1);
  bool set_gauge(std::string_view metric, const Labels &labels, double value);
  bool increment_gauge(std::string_view metric, const Labels &labels, double by = 1);
  bool decrement_gauge(std::string_view metric, const Labels &labels, double by = 1);
  bool observe(std::string_view metric, const Labels &labels, double value); // histograms, summaries

private:
  // false without sending when the value is not finite: JSON cannot carry it.
  bool send_sample(std::string_view metric, const Labels &labels, double value, const char *operation);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

} // namespace hermes

// ===== DETAIL: QUANTILES ==================================================================

namespace hermes {
namespace detail {

// A stream of observations summarised so that any quantile can be read with a bounded
// rank error, in bounded memory: the targeted-quantile algorithm of Cormode, Korn,
// Muthukrishnan and Srivastava ("Effective computation of biased quantiles over data
// streams", ICDE 2005). It keeps a sorted list of values, each standing for `width`
// observations with an uncertainty of `delta` in rank, and merges neighbours as long
// as the allowed error at their rank permits. Observations come in sorted runs (a
// QuantileWindow's buffer), merged and compressed in place: the list holds at most
// entry_limit() entries and one run, and is never copied.
class QuantileStream {
public:
  using Objectives = std::vector<std::pair<double, double>>; // quantile, allowed rank error
  static constexpr std::size_t run_limit = 100;                // observations merged at once

  // Takes `count` values in ascending order, at most run_limit of them.
  void merge(const double *sorted, std::size_t count, const Objectives &objectives) {
    if (count == 0) return;
    make_room(entries_.size() + count, objectives);
    insert_sorted(sorted, count, objectives);
    compress(objectives, 1);
    keep_within_limit(objectives);
  }

  // The most entries a stream keeps once merged. A summary that just holds an objective's
  // error at every rank needs H(q) / (2 error) entries for it, H(q) = -q ln q - (1-q) ln(1-q)
  // (the integral of 1 / allowed error over the ranks); merging neighbours in pairs keeps
  // up to about twice that. This allows three times it plus 32: for {0.5: 0.05, 0.9: 0.01,
  // 0.99: 0.001}, 186, where shuffled, skewed or much-repeated values keep 40 to 95
  // entries. Input ordered to defeat the summary (values that only ever decrease would
  // keep one entry in 40 of them) is merged harder past it.
  static std::size_t entry_limit(const Objectives &objectives) {
    double limit = 32;
    for (const auto &[q, error] : objectives) limit += 1.5 * (-q * std::log(q) - (1 - q) * std::log(1 - q)) / error;
    // A config's quantiles and errors lie in (0, 1). A state file's may be anything, 0 or
    // negative included, and its series are refused for not matching the config: no
    // limit for them here, rather than a conversion out of range.
    constexpr double most = 1e15;
    return limit >= 0 && limit <= most ? static_cast<std::size_t>(std::ceil(limit)) : static_cast<std::size_t>(most);
  }

  // The most bytes a stream holds: its entries with room for a run merged in place.
  static std::size_t worst_case_bytes(const Objectives &objectives) {
    return sizeof(QuantileStream) + (entry_limit(objectives) + run_limit) * sizeof(Entry);
  }

  // The value at quantile q (0 < q < 1) of what was merged; NaN without observations.
  double query(double q, const Objectives &objectives) const {
    if (entries_.empty()) return std::nan("");
    // The first entry whose rank may reach past the wanted rank plus half the allowed
    // error has gone too far; the one before it answers.
    const double rank_wanted = std::ceil(q * count_);
    const double wanted = rank_wanted + allowed_error(rank_wanted, count_, objectives) / 2;
    double rank = 0;
    for (std::size_t i = 1; i < entries_.size(); ++i) {
      rank += entries_[i - 1].width;
      if (rank + entries_[i].width + entries_[i].delta > wanted) return entries_[i - 1].value;
    }
    return entries_.back().value;
  }

  void reset() {
    entries_.clear();
    count_ = 0;
  }

  std::size_t memory_entries() const { return entries_.size(); }
  // The bytes its vector holds now, used or not: at most worst_case_bytes() less its own size.
  std::size_t held_bytes() const { return entries_.capacity() * sizeof(Entry); }

private:
  friend class StateCodec;
  struct Entry {
    double value;
    double width; // observations this entry stands for
    double delta; // how far its rank may be off
  };

  // The rank error allowed at rank r of `count` observations: the tightest over all objectives.
  static double allowed_error(double rank, double count, const Objectives &objectives) {
    double allowed = std::numeric_limits<double>::max();
    for (const auto &objective : objectives) {
      const double q = objective.first, error = objective.second;
      const double here = q * count <= rank ? 2 * error * rank / q : 2 * error * (count - rank) / (1 - q);
      allowed = std::min(allowed, here);
    }
    return allowed;
  }

  // The entries grow by doubling as a vector does, but never past the limit and a run,
  // which worst_case_bytes() counts: a stream that has seen a few observations keeps a few.
  void make_room(std::size_t needed, const Objectives &objectives) {
    if (needed <= entries_.capacity()) return;
    const std::size_t most = entry_limit(objectives) + run_limit;
    entries_.reserve(std::max(needed, std::min(most, std::max<std::size_t>(8, 2 * entries_.capacity()))));
  }

  // Places the values among the entries from the back, each after the entries equal to
  // it, as if inserted in ascending order one at a time. A new value in the middle may be
  // off by what its place allows at the count so far; at either end, not at all.
  void insert_sorted(const double *sorted, std::size_t count, const Objectives &objectives) {
    const std::size_t had = entries_.size();
    const double before = count_; // the widths of all entries: observations merged so far
    entries_.resize(had + count);
    std::size_t old = had, to = had + count;
    double after = 0; // the widths of the old entries above the value at hand
    for (std::size_t i = count; i-- > 0;) {
      for (; old > 0 && entries_[old - 1].value > sorted[i]; --old) {
        after += entries_[old - 1].width;
        entries_[--to] = entries_[old - 1];
      }
      const double earlier = static_cast<double>(i); // new values below this one
      const double rank = before - after + earlier;
      const double delta = old < had ? std::max(0.0, std::floor(allowed_error(rank, before + earlier, objectives)) - 1) : 0;
      entries_[--to] = {sorted[i], 1, delta};
    }
    count_ = before + static_cast<double>(count);
  }

  // Folds each entry into its right neighbour where the error allowed there, times
  // `slack`, permits. Walks from the top down, writing what it keeps at the top end,
  // never over an entry it has still to read.
  void compress(const Objectives &objectives, double slack) {
    if (entries_.size() < 2) return;
    std::size_t kept = entries_.size(); // entries_[kept, size) are kept, in order
    Entry right = entries_.back();
    double rank = count_ - 1 - right.width;
    for (std::size_t i = entries_.size() - 1; i-- > 0;) {
      const Entry left = entries_[i];
      if (left.width + right.width + right.delta <= slack * allowed_error(rank, count_, objectives)) {
        right.width += left.width;
      } else {
        entries_[--kept] = right;
        right = left;
      }
      rank -= left.width;
    }
    entries_[--kept] = right;
    entries_.erase(entries_.begin(), entries_.begin() + static_cast<std::ptrdiff_t>(kept));
  }

  // Past the limit, each pass allows twice the error, so that memory stays bounded
  // whatever the order of the input; the objectives then hold only as far as it allows.
  void keep_within_limit(const Objectives &objectives) {
    for (double slack = 2; entries_.size() > entry_limit(objectives) && slack < 1e300; slack *= 2) compress(objectives, slack);
  }

  std::vector<Entry> entries_;
  double count_ = 0;
};

// Quantiles over the last max_age seconds, as Prometheus' Go client keeps them: five
// streams all take every observation, each is emptied in turn every max_age / 5, and
// the oldest one answers, so an answer covers between 4/5 of max_age and max_age.
// Observations wait in one buffer for all five, as client_golang's do; it is sorted
// once and merged into every stream when full, before a turn, and on advance().
class QuantileWindow {
public:
  static constexpr std::size_t streams = 5;
  static constexpr std::size_t allocations = streams + 4; // blocks: each stream's entries, the buffer, the objectives, the streams, itself

  // A copy of the objectives, so that the window outlives any config it was made from.
  QuantileWindow(const MetricConfig &config, double now)
      : objectives_(config.objectives), step_(config.max_age_seconds / streams), head_expires_(now + step_),
        streams_(streams) {}

  void observe(double value, double now) {
    rotate(now);
    // The buffer grows by doubling as a vector does, but never past buffer_limit, which
    // worst_case_bytes() counts: a series that sees a few observations keeps a few.
    if (buffer_.size() == buffer_.capacity()) buffer_.reserve(std::min(buffer_limit, std::max<std::size_t>(8, 2 * buffer_.capacity())));
    buffer_.push_back(value);
    if (buffer_.size() >= buffer_limit) flush();
  }

  // The value at quantile q as of the last observe() or advance(); only reads. What
  // still waits in the buffer is merged into a copy of the answering stream; a Server
  // moves every window on (Registry::expire) before it renders, and never needs one.
  double query(double q) const {
    const QuantileStream &answering = streams_[head_];
    if (buffer_.empty()) return answering.query(q, objectives_);
    std::vector<double> sorted = buffer_;
    std::sort(sorted.begin(), sorted.end());
    QuantileStream merged = answering;
    merged.merge(sorted.data(), sorted.size(), objectives_);
    return merged.query(q, objectives_);
  }

  // Moves the window on to `now`, and merges buffered observations, so that queries
  // until the next change read a summary that is up to date.
  void advance(double now) {
    rotate(now);
    flush();
  }

  std::size_t memory_entries() const {
    std::size_t total = buffer_.size();
    for (const QuantileStream &stream : streams_) total += stream.memory_entries();
    return total;
  }

  // The bytes its vectors hold now, used or not: at most worst_case_bytes() less its own size.
  std::size_t held_bytes() const {
    std::size_t bytes = objectives_.capacity() * sizeof(objectives_[0]) + buffer_.capacity() * sizeof(double) +
                        streams_.capacity() * sizeof(QuantileStream);
    for (const QuantileStream &stream : streams_) bytes += stream.held_bytes();
    return bytes;
  }

  static std::size_t worst_case_bytes(const QuantileStream::Objectives &objectives) {
    return sizeof(QuantileWindow) + objectives.size() * sizeof(objectives[0]) + buffer_limit * sizeof(double) +
           streams * QuantileStream::worst_case_bytes(objectives);
  }

private:
  friend class StateCodec;
  static constexpr std::size_t buffer_limit = QuantileStream::run_limit; // a full buffer is one run for each stream

  void flush() {
    if (buffer_.empty()) return;
    std::sort(buffer_.begin(), buffer_.end());
    for (QuantileStream &stream : streams_) stream.merge(buffer_.data(), buffer_.size(), objectives_);
    buffer_.clear();
  }

  void rotate(double now) {
    if (now >= head_expires_) flush(); // the buffer's observations came before the turn: every stream takes them
    for (std::size_t turns = 0; now >= head_expires_ && turns < streams; ++turns) {
      streams_[head_].reset();
      head_ = (head_ + 1) % streams;
      head_expires_ += step_;
    }
    if (now >= head_expires_) head_expires_ = now + step_; // idle for longer than max_age: all were emptied
  }

  QuantileStream::Objectives objectives_;
  double step_;
  double head_expires_; // when the head stream is emptied and the next one answers
  std::size_t head_ = 0;
  std::vector<QuantileStream> streams_;
  std::vector<double> buffer_; // observations not yet merged, in the order they came
};

} // namespace detail
} // namespace hermes

// ===== DETAIL: NATIVE HISTOGRAMS ==========================================================

namespace hermes {
namespace detail {

// Prometheus' native histograms: at schema s, bucket i holds the values in
// (2^((i-1)/2^s), 2^(i/2^s)], negative values likewise by their magnitude, and values
// within the zero threshold of 0 one bucket of their own. Buckets are kept sparse, and
// when there are more than a metric's native_max_buckets, two neighbours merge into one
// of the next coarser schema, as client_golang does.
constexpr std::int32_t native_schema_min = -4, native_schema_max = 8;

// The coarsest schema whose buckets grow by no more than `factor` (> 1), as client_golang
// picks it: 1.1 gives 3, 1.5 gives 1.
inline std::int32_t native_schema(double factor) {
  const double floor = std::floor(std::log2(std::log2(factor)));
  if (floor <= -native_schema_max) return native_schema_max;
  if (floor >= -native_schema_min) return native_schema_min;
  return static_cast<std::int32_t>(-floor);
}

// The upper bounds of the buckets of one power of two at schema 1 to 8, as fractions
// in [0.5, 1): 2^(i/2^s) / 2. Made once, in long double, and rounded to the nearest double.
inline const std::vector<double> &native_bounds(std::int32_t schema) {
  static const std::array<std::vector<double>, native_schema_max + 1> tables = [] {
    std::array<std::vector<double>, native_schema_max + 1> made;
    for (std::size_t s = 1; s < made.size(); ++s) {
      const std::size_t n = std::size_t{1} << s;
      for (std::size_t i = 0; i < n; ++i)
        made[s].push_back(static_cast<double>(std::exp2(static_cast<long double>(i) / static_cast<long double>(n)) / 2));
    }
    return made;
  }();
  return tables[static_cast<std::size_t>(schema)];
}

// Rounds toward minus infinity, where >> on a negative number would be the compiler's choice.
inline std::int32_t floor_divide(std::int32_t value, std::int32_t divisor) {
  return value / divisor - (value % divisor != 0 && (value < 0) != (divisor < 0) ? 1 : 0);
}

// The index of the bucket that holds `magnitude` (> 0, may be infinite) at `schema`.
inline std::int32_t native_index(double magnitude, std::int32_t schema) {
  const bool infinite = std::isinf(magnitude);
  int exponent = 0;
  const double fraction = std::frexp(infinite ? std::numeric_limits<double>::max() : magnitude, &exponent);
  std::int32_t index = 0;
  if (schema > 0) {
    const std::vector<double> &bounds = native_bounds(schema);
    const auto within = std::lower_bound(bounds.begin(), bounds.end(), fraction) - bounds.begin();
    index = static_cast<std::int32_t>(within) + (exponent - 1) * static_cast<std::int32_t>(bounds.size());
  } else {
    index = exponent - (fraction == 0.5 ? 1 : 0);
    const std::int32_t width = std::int32_t{1} << -schema;
    index = floor_divide(index + width - 1, width);
  }
  return infinite ? index + 1 : index; // one past the largest finite bucket
}

// One side's buckets: (index, count) by ascending index, counts above zero.
using NativeSide = std::vector<std::pair<std::int32_t, std::uint64_t>>;

struct NativeHistogram {
  std::int32_t schema = 0;
  std::uint64_t zero_count = 0;
  NativeSide positive, negative;
  std::size_t buckets() const { return positive.size() + negative.size(); }
};

// Counts one in the bucket `index`; true when the bucket is new.
inline bool count_in(NativeSide &side, std::int32_t index) {
  const auto at = std::lower_bound(side.begin(), side.end(), index,
                                   [](const std::pair<std::int32_t, std::uint64_t> &b, std::int32_t i) { return b.first < i; });
  if (at != side.end() && at->first == index) {
    ++at->second;
    return false;
  }
  side.insert(at, {index, 1});
  return true;
}

// Merges each pair of neighbours into the bucket of the next coarser schema that covers
// both: index i goes to ceil(i / 2).
inline void merge_neighbours(NativeSide &side) {
  std::size_t kept = 0;
  for (std::size_t i = 0; i < side.size(); ++i) {
    const std::int32_t index = side[i].first;
    const std::int32_t coarse = (index > 0 ? index + 1 : index) / 2; // / truncates: ceil for both signs
    if (kept > 0 && side[kept - 1].first == coarse) {
      side[kept - 1].second += side[i].second;
    } else {
      side[kept++] = {coarse, side[i].second};
    }
  }
  side.resize(kept);
}

inline void observe_native(NativeHistogram &histogram, const MetricConfig &config, double value) {
  bool made_bucket = false;
  if (value > config.native_zero_threshold) {
    made_bucket = count_in(histogram.positive, native_index(value, histogram.schema));
  } else if (value < -config.native_zero_threshold) {
    made_bucket = count_in(histogram.negative, native_index(-value, histogram.schema));
  } else {
    ++histogram.zero_count;
  }
  if (!made_bucket || histogram.buckets() <= config.native_max_buckets || histogram.schema == native_schema_min) return;
  while (histogram.buckets() > config.native_max_buckets && histogram.schema > native_schema_min) {
    merge_neighbours(histogram.positive);
    merge_neighbours(histogram.negative);
    --histogram.schema;
  }
  histogram.positive.shrink_to_fit(); // half the buckets: give the memory back
  histogram.negative.shrink_to_fit();
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: SERIES =====================================================================

namespace hermes {
namespace detail {

// The order series are listed in: by label values in configured order. It compares each
// pair of values once, three ways (std::lexicographical_compare asks a < b and then b < a).
struct LabelValuesLess {
  template <typename A, typename B> bool operator()(const A &a, const B &b) const {
    const std::size_t common = std::min(a.size(), b.size());
    for (std::size_t i = 0; i < common; ++i)
      if (const int order = std::string_view(a[i]).compare(std::string_view(b[i]))) return order < 0;
    return a.size() < b.size();
  }
};

// What a histogram or summary series has seen.
struct Distribution {
  double sum = 0;
  std::uint64_t count = 0;
  std::vector<std::uint64_t> bucket_counts;  // histograms: per bucket, not cumulative; the last is +Inf
  std::unique_ptr<NativeHistogram> native;   // native histograms
  std::unique_ptr<QuantileWindow> quantiles; // summaries with objectives
};

struct Series {
  double value = 0;
  double created = 0;   // wall clock of the push that made it; 0 when made at start
  double last_push = 0; // monotonic clock of the latest push
  std::unique_ptr<Distribution> distribution; // histograms and summaries
};

// The label values of one series in configured order, packed into one string: their
// count, each value but the last after its length (both varints), then the last value.
// A 10-byte value takes 11 bytes, inside what std::string holds without allocating, where
// a vector of strings took 24 bytes in the series and 48 on the heap.
class LabelValues {
public:
  class Iterator;
  LabelValues() : packed_(1, '\0') {}
  LabelValues(std::initializer_list<std::string_view> values) { pack(values); }
  template <typename Values, typename = std::enable_if_t<!std::is_same_v<Values, LabelValues>>,
            typename = decltype(std::declval<const Values &>().begin())>
  LabelValues(const Values &values) { // NOLINT: implicit, so that a list of strings stands for its packed form
    pack(values);
  }

  std::size_t size() const { return count_and_start().first; }
  bool empty() const { return size() == 0; }
  std::string_view operator[](std::size_t index) const;
  Iterator begin() const;
  Iterator end() const;

private:
  template <typename Values> void pack(const Values &values);
  static std::size_t read_varint(const char *&at) {
    std::size_t value = 0;
    for (int shift = 0;; shift += 7) {
      const auto byte = static_cast<unsigned char>(*at++);
      value |= static_cast<std::size_t>(byte & 0x7F) << shift;
      if (byte < 0x80) return value;
    }
  }
  void write_varint(std::size_t value) {
    for (; value >= 0x80; value >>= 7) packed_ += static_cast<char>((value & 0x7F) | 0x80);
    packed_ += static_cast<char>(value);
  }
  std::pair<std::size_t, const char *> count_and_start() const {
    const char *at = packed_.data();
    const std::size_t count = read_varint(at);
    return {count, at};
  }
  // The value that starts at `at` with `left` values after it; moves `at` past it.
  std::string_view value_at(const char *&at, std::size_t left) const {
    const std::size_t length = left == 0 ? static_cast<std::size_t>(packed_.data() + packed_.size() - at) : read_varint(at);
    const std::string_view value(at, length);
    at += length;
    return value;
  }

  std::string packed_;
};

template <typename Values> void LabelValues::pack(const Values &values) {
  std::size_t count = 0, bytes = 0;
  for (const auto &value : values) ++count, bytes += std::string_view(value).size() + 2;
  packed_.clear();
  packed_.reserve(bytes + 2);
  write_varint(count);
  std::size_t index = 0;
  for (const auto &value : values) {
    const std::string_view text(value);
    if (++index < count) write_varint(text.size());
    packed_ += text;
  }
}

// Reads the values one after another, as a range-for over them does.
class LabelValues::Iterator {
public:
  Iterator(const LabelValues &values, const char *at, std::size_t left) : values_(&values), at_(at), left_(left) {}
  std::string_view operator*() const {
    const char *at = at_;
    return values_->value_at(at, left_ - 1);
  }
  Iterator &operator++() {
    values_->value_at(at_, --left_);
    return *this;
  }
  bool operator!=(const Iterator &other) const { return left_ != other.left_; }

private:
  const LabelValues *values_;
  const char *at_;
  std::size_t left_;
};

inline LabelValues::Iterator LabelValues::begin() const {
  const auto [count, start] = count_and_start();
  return Iterator(*this, start, count);
}
inline LabelValues::Iterator LabelValues::end() const { return Iterator(*this, nullptr, 0); }

inline std::string_view LabelValues::operator[](std::size_t index) const {
  auto [count, at] = count_and_start();
  for (std::size_t i = 0; i < index; ++i) value_at(at, count - 1 - i);
  return value_at(at, count - 1 - index);
}

// A hash of label values in configured order, the same for strings and views of them.
// Eight bytes at a time, each value's length mixed in so that ("ab", "c") and ("a", "bc")
// differ; the last multiply spreads every input bit over the bits the index uses.
template <typename Values> std::uint64_t hash_label_values(const Values &values) {
  constexpr std::uint64_t odd = 0x9E3779B97F4A7C15ull;
  std::uint64_t hash = values.size();
  for (const auto &value : values) {
    const std::string_view text(value);
    std::size_t at = 0;
    for (; at + 8 <= text.size(); at += 8) {
      std::uint64_t word = 0;
      std::memcpy(&word, text.data() + at, 8);
      hash = (hash ^ word) * odd;
      hash ^= hash >> 29;
    }
    std::uint64_t tail = static_cast<std::uint64_t>(text.size()) << 56;
    std::memcpy(&tail, text.data() + at, text.size() - at);
    hash = (hash ^ tail) * odd;
    hash ^= hash >> 29;
  }
  hash ^= hash >> 32;
  hash *= 0xD6E8FEB86659FD93ull;
  return hash ^ (hash >> 32);
}

template <typename A, typename B> bool same_label_values(const A &a, const B &b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::string_view(a[i]) != std::string_view(b[i])) return false;
  return true;
}

// The series of one metric, keyed by label values in configured order. A std::map cost
// a node and a cache miss per level: at a million series a lookup took 2.5 times as long
// as at a hundred. Here series sit in the order they were made, and an open-addressing
// index of 4-byte slots finds one: its position (24 bits) and 8 bits of its hash, so that
// a probe rarely reads a series that is not the one sought. The formats and the state
// file list series in label order: a list of positions kept sorted, which the series
// made since join at sort(), one merge, instead of a tree kept sorted at every push.
class SeriesTable {
public:
  using Entry = std::pair<LabelValues, Series>;
  static constexpr std::size_t max_size = (std::size_t{1} << 24) - 2; // positions + 1 in 24 bits
  // The bytes one series adds, at most: its entry with its share of the deque's blocks, its slot at the lowest load (3/8, just
  // after the index doubled) and its place in the sorted list (which may have twice the room).
  static constexpr std::size_t bytes_per_series = sizeof(Entry) + 4 + 11 + 2 * sizeof(std::uint32_t);

  // Moved, never copied: std::deque's move may allocate, so it is not noexcept, and a
  // vector of metrics would copy where it could.
  SeriesTable() = default;
  SeriesTable(SeriesTable &&) = default;
  SeriesTable &operator=(SeriesTable &&) = default;
  SeriesTable(const SeriesTable &) = delete;
  SeriesTable &operator=(const SeriesTable &) = delete;

  template <typename Values> Series *find(const Values &values) { return at(locate(values, hash_label_values(values))); }
  template <typename Values> const Series *find(const Values &values) const {
    return const_cast<SeriesTable *>(this)->find(values);
  }
  // A series whose label values are not in the table yet.
  Series &add(LabelValues values, Series series);
  std::size_t size() const { return entries_.size(); }
  void clear() { *this = SeriesTable(); }
  // Every series, in the order they were made.
  std::deque<Entry>::iterator begin() { return entries_.begin(); }
  std::deque<Entry>::iterator end() { return entries_.end(); }
  std::deque<Entry>::const_iterator begin() const { return entries_.begin(); }
  std::deque<Entry>::const_iterator end() const { return entries_.end(); }
  // Drops every series `drop(entry)` is true for; returns how many.
  template <typename Drop> std::size_t drop_if(Drop drop);
  // Puts the series made since the last sort in their place in the sorted list.
  void sort();
  class InOrder;

private:
  static constexpr std::uint32_t tag_bits = 8, tag_mask = (1u << tag_bits) - 1;
  static constexpr std::size_t not_found = SIZE_MAX;
  template <typename Values> std::size_t locate(const Values &values, std::uint64_t hash) const;
  Series *at(std::size_t position) { return position == not_found ? nullptr : &entries_[position].second; }
  void index(std::size_t position, std::uint64_t hash);
  void reindex(std::size_t slot_count);
  bool label_less(std::uint32_t a, std::uint32_t b) const { return LabelValuesLess()(entries_[a].first, entries_[b].first); }
  void lay_out_in_order();
  void sort_new(std::size_t from);

  std::deque<Entry> entries_;         // by position; a deque grows without copying and without double room
  std::vector<std::uint32_t> slots_;  // (position + 1) << 8 | tag, 0 when empty; a power of two of them
  std::vector<std::uint32_t> sorted_; // positions 0 to its size - 1, in label order
  std::size_t placed_since_layout_ = 0; // series sorted into the list since they were last laid out in order
};

template <typename Values> std::size_t SeriesTable::locate(const Values &values, std::uint64_t hash) const {
  if (slots_.empty()) return not_found;
  const std::size_t mask = slots_.size() - 1;
  const std::uint32_t tag = static_cast<std::uint32_t>(hash) & tag_mask;
  for (std::size_t slot = static_cast<std::size_t>(hash >> tag_bits) & mask;; slot = (slot + 1) & mask) {
    const std::uint32_t held = slots_[slot];
    if (held == 0) return not_found;
    const std::size_t position = (held >> tag_bits) - 1;
    if ((held & tag_mask) == tag && same_label_values(entries_[position].first, values)) return position;
  }
}

inline void SeriesTable::index(std::size_t position, std::uint64_t hash) {
  const std::size_t mask = slots_.size() - 1;
  std::size_t slot = static_cast<std::size_t>(hash >> tag_bits) & mask;
  while (slots_[slot] != 0) slot = (slot + 1) & mask;
  slots_[slot] = static_cast<std::uint32_t>(position + 1) << tag_bits | (static_cast<std::uint32_t>(hash) & tag_mask);
}

inline void SeriesTable::reindex(std::size_t slot_count) {
  slots_.assign(slot_count, 0);
  for (std::size_t position = 0; position < entries_.size(); ++position)
    index(position, hash_label_values(entries_[position].first));
}

inline Series &SeriesTable::add(LabelValues values, Series series) {
  if ((entries_.size() + 1) * 4 > slots_.size() * 3) reindex(std::max<std::size_t>(8, 2 * slots_.size())); // load <= 3/4
  const std::uint64_t hash = hash_label_values(values);
  entries_.emplace_back(std::move(values), std::move(series));
  index(entries_.size() - 1, hash);
  return entries_.back().second;
}

// Keeps the order of those that stay, so that the sorted list needs only its positions
// moved; allocates only when a series goes, as expire() runs before every scrape.
template <typename Drop> std::size_t SeriesTable::drop_if(Drop drop) {
  std::size_t first = 0;
  while (first < entries_.size() && !drop(entries_[first])) ++first;
  if (first == entries_.size()) return 0;
  constexpr std::uint32_t gone = UINT32_MAX;
  std::vector<std::uint32_t> moved_to(entries_.size(), gone);
  for (std::size_t position = 0; position < first; ++position) moved_to[position] = static_cast<std::uint32_t>(position);
  std::size_t kept = first;
  for (std::size_t position = first + 1; position < entries_.size(); ++position) {
    if (drop(entries_[position])) continue;
    entries_[kept] = std::move(entries_[position]);
    moved_to[position] = static_cast<std::uint32_t>(kept++);
  }
  const std::size_t dropped = entries_.size() - kept;
  entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(kept), entries_.end());
  std::size_t listed = 0;
  for (const std::uint32_t position : sorted_)
    if (moved_to[position] != gone) sorted_[listed++] = moved_to[position];
  sorted_.resize(listed);
  std::size_t slot_count = 8;
  while (kept * 4 > slot_count * 3) slot_count *= 2;
  reindex(slot_count);
  return dropped;
}

inline void SeriesTable::sort() {
  const std::size_t old_size = sorted_.size();
  if (old_size == entries_.size()) return;
  sort_new(old_size);
  const auto less = [this](std::uint32_t a, std::uint32_t b) { return label_less(a, b); };
  std::inplace_merge(sorted_.begin(), sorted_.begin() + static_cast<std::ptrdiff_t>(old_size), sorted_.end(), less);
  placed_since_layout_ += entries_.size() - old_size;
  if (placed_since_layout_ * 8 > entries_.size()) lay_out_in_order();
}

// Moves the series into label order, following each cycle of the sorted list so that no
// second copy is needed, and indexes them again: a render then reads memory in order.
// Once an eighth of the series came since the last time, so that its cost, a move and a
// hash of each series, stays a small constant for each new one.
inline void SeriesTable::lay_out_in_order() {
  for (std::size_t start = 0; start < sorted_.size(); ++start) {
    if (sorted_[start] == start) continue;
    Entry first = std::move(entries_[start]);
    std::size_t to = start;
    for (std::size_t from = sorted_[to]; from != start; from = sorted_[to]) {
      entries_[to] = std::move(entries_[from]);
      sorted_[to] = static_cast<std::uint32_t>(to);
      to = from;
    }
    entries_[to] = std::move(first);
    sorted_[to] = static_cast<std::uint32_t>(to);
  }
  reindex(slots_.size());
  placed_since_layout_ = 0;
}

// The first eight bytes of a series' first label value, big-endian and padded with
// zeros: where two differ, they order the series as their label values do.
inline std::uint64_t label_prefix(const LabelValues &values) {
  std::uint64_t prefix = 0;
  if (values.empty()) return prefix;
  const std::string_view first = values[0];
  for (std::size_t i = 0; i < 8; ++i)
    prefix = prefix << 8 | (i < first.size() ? static_cast<unsigned char>(first[i]) : 0u);
  return prefix;
}

// Appends the series made since `from` to the sorted list, in label order among
// themselves. Sorted by a key beside each position first: comparing series where they
// lie costs a cache miss each, and a million new series took 1.4 s that way.
inline void SeriesTable::sort_new(std::size_t from) {
  std::vector<std::pair<std::uint64_t, std::uint32_t>> keyed;
  keyed.reserve(entries_.size() - from);
  for (std::size_t position = from; position < entries_.size(); ++position)
    keyed.emplace_back(label_prefix(entries_[position].first), static_cast<std::uint32_t>(position));
  std::sort(keyed.begin(), keyed.end(), [this](const auto &a, const auto &b) {
    return a.first != b.first ? a.first < b.first : label_less(a.second, b.second);
  });
  for (const auto &[prefix, position] : keyed) sorted_.push_back(position);
}

// Walks the series in label order for a reader, which cannot sort(): the sorted list
// merged with the series made since, sorted apart in `pending` (a server sorts before
// every scrape and once a second, so these are few).
class SeriesTable::InOrder {
public:
  InOrder(const SeriesTable &table, std::vector<std::uint32_t> &pending) : table_(table), pending_(pending) {
    pending.clear();
    for (std::size_t position = table.sorted_.size(); position < table.entries_.size(); ++position)
      pending.push_back(static_cast<std::uint32_t>(position));
    std::sort(pending.begin(), pending.end(), [&table](std::uint32_t a, std::uint32_t b) { return table.label_less(a, b); });
  }
  bool done() const { return sorted_at_ == table_.sorted_.size() && pending_at_ == pending_.size(); }
  // The next series; not when done(). Series in label order lie all over memory: the
  // one a few steps ahead is fetched while this one is written, or a large scrape
  // waits on a cache miss for each.
  const Entry &next() {
    const std::vector<std::uint32_t> &sorted = table_.sorted_;
    constexpr std::size_t ahead = 8;
    if (sorted_at_ + ahead < sorted.size()) {
      const char *coming = reinterpret_cast<const char *>(&table_.entries_[sorted[sorted_at_ + ahead]]);
      __builtin_prefetch(coming);
      __builtin_prefetch(coming + sizeof(Entry) - 1);
    }
    const bool from_pending = pending_at_ < pending_.size() &&
                              (sorted_at_ == sorted.size() || table_.label_less(pending_[pending_at_], sorted[sorted_at_]));
    return table_.entries_[from_pending ? pending_[pending_at_++] : sorted[sorted_at_++]];
  }

private:
  const SeriesTable &table_;
  const std::vector<std::uint32_t> &pending_;
  std::size_t sorted_at_ = 0, pending_at_ = 0;
};

struct Metric {
  MetricConfig config;
  SeriesTable series;
  bool from_line = false; // made from a StatsD line, not configured
};

} // namespace detail
} // namespace hermes

// ===== DETAIL: TEXT AND FILES =============================================================

namespace hermes {
namespace detail {

inline bool is_valid_utf8(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    const auto byte = static_cast<unsigned char>(text[i]);
    std::size_t extra = 0;
    std::uint32_t code = 0, minimum = 0;
    if (byte < 0x80) {
      ++i;
      continue;
    } else if ((byte & 0xE0) == 0xC0) {
      extra = 1, code = byte & 0x1Fu, minimum = 0x80;
    } else if ((byte & 0xF0) == 0xE0) {
      extra = 2, code = byte & 0x0Fu, minimum = 0x800;
    } else if ((byte & 0xF8) == 0xF0) {
      extra = 3, code = byte & 0x07u, minimum = 0x10000;
    } else {
      return false;
    }
    if (i + extra >= text.size()) return false; // the sequence is cut off
    for (std::size_t k = 1; k <= extra; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0) != 0x80) return false;
      code = (code << 6) | (next & 0x3Fu);
    }
    // Overlong forms, UTF-16 surrogates and code points past Unicode are not UTF-8.
    if (code < minimum || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
    i += extra + 1;
  }
  return true;
}

// The name of an enumerator from a table of one name per enumerator, in order; the
// enum's trailing count_ keeps the two in step.
template <typename Enum, std::size_t N> constexpr const char *name_of(Enum value, const char *const (&names)[N]) {
  static_assert(N == static_cast<std::size_t>(Enum::count_), "one name per enumerator");
  return names[static_cast<std::size_t>(value)];
}

inline bool is_metric_name(std::string_view name) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!letter && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

inline bool is_label_name(std::string_view name) {
  return is_metric_name(name) && name.find(':') == std::string_view::npos;
}

inline bool starts_with(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

// The parts of `text` between separators, empty ones included.
inline std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  for (std::size_t start = 0;;) {
    const std::size_t end = text.find(separator, start);
    parts.push_back(text.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    if (end == std::string_view::npos) return parts;
    start = end + 1;
  }
}

// Reads at most `limit` bytes of a file into `out`; returns 0, or the errno of the failure.
inline int read_file(const char *path, std::size_t limit, std::string &out) {
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  out.clear();
  char buffer[16384];
  int error = 0;
  while (out.size() < limit) {
    const ssize_t length = ::read(fd, buffer, std::min(sizeof buffer, limit - out.size()));
    if (length < 0 && errno == EINTR) continue;
    if (length <= 0) {
      error = length < 0 ? errno : 0;
      break;
    }
    out.append(buffer, static_cast<std::size_t>(length));
  }
  ::close(fd);
  return error;
}

inline bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

// ASCII character classes: what the C library's would say in the "C" locale, whatever
// locale a program that embeds Hermes has set.
inline bool is_ascii_lower(char c) { return c >= 'a' && c <= 'z'; }
inline bool is_ascii_upper(char c) { return c >= 'A' && c <= 'Z'; }
inline bool is_ascii_digit(char c) { return c >= '0' && c <= '9'; }
inline bool is_ascii_alnum(char c) { return is_ascii_lower(c) || is_ascii_upper(c) || is_ascii_digit(c); }

// The whole text as a decimal number, whatever the C locale.
inline std::optional<double> parse_decimal(std::string_view text) {
  double value = 0;
  const auto result = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || result.ec != std::errc() || result.ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

inline std::string lowercase(std::string_view text) {
  std::string out(text);
  for (char &c : out)
    if (is_ascii_upper(c)) c = static_cast<char>(c - 'A' + 'a');
  return out;
}

// A JSON value shortened for an error message.
inline std::string quote_json(const picojson::value &value) {
  std::string text = value.serialize();
  constexpr std::size_t max_shown = 60;
  return text.size() > max_shown ? text.substr(0, max_shown) + "..." : text;
}

// Numbers are written as client_golang writes them, with Go's strconv.FormatFloat(v,
// 'g', -1, 64): the shortest digits that read back to the same double, in exponent
// form exactly when the decimal exponent is below -4 or at least 6 (100000, 1e+06,
// 0.0001, 1e-05). Prometheus stores le and quantile label values as strings, so a
// bucket must be spelled as every other client spells it.
constexpr int exponent_form_below = -4, exponent_form_from = 6;

// A whole number below 10^6 is written as an integer by that rule; integers print in a
// tenth of the time, and counters are mostly whole.
// Each writes at `at`, which has room for number_room bytes, and returns the end.
constexpr std::size_t number_room = 40;

inline char *put_whole_number(char *at, double value) {
  if (!(std::fabs(value) < 1e6) || value != std::trunc(value) || (value == 0 && std::signbit(value))) return nullptr;
  return std::to_chars(at, at + 16, static_cast<long>(value)).ptr;
}

inline char *put_shortest(char *at, double value) {
  char *end = std::to_chars(at, at + number_room, value, std::chars_format::scientific).ptr;
  const char *e = std::find(at, end, 'e'); // d.ddde+XX, in the shortest digits
  int exponent = 0;
  std::from_chars(e + (e[1] == '+' ? 2 : 1), end, exponent);
  if (exponent < exponent_form_below || exponent >= exponent_form_from) return end;
  return std::to_chars(at, at + number_room, value, std::chars_format::fixed).ptr; // the same digits
}

// NaN and infinities as Prometheus spells them.
inline char *put_double(char *at, double value) {
  if (std::isnan(value)) return std::copy_n("NaN", 3, at);
  if (std::isinf(value)) return std::copy_n(value > 0 ? "+Inf" : "-Inf", 4, at);
  char *end = put_whole_number(at, value);
  return end ? end : put_shortest(at, value);
}

inline void append_double(std::string &out, double value) {
  char buffer[number_room];
  out.append(buffer, put_double(buffer, value));
}

inline std::string format_double(double value) {
  std::string out;
  append_double(out, value);
  return out;
}

inline void append_json_string(std::string &out, std::string_view text) {
  out += '"';
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\u%04x", static_cast<unsigned>(c));
      out += escape;
    } else {
      out += c;
    }
  }
  out += '"';
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: PROTOBUF ===================================================================

namespace hermes {
namespace detail {

// The Protocol Buffers wire format, as far as io.prometheus.client's metrics.proto needs
// it: a field is a varint tag (number << 3 | wire type), then a varint, eight bytes
// little-endian, or a varint length and that many bytes (strings and messages). Each
// put_* writes at `at` into memory reserved beforehand and returns the end; each
// append_* appends to a string. A scrape writes millions of them.
enum class WireType : std::uint8_t { varint = 0, fixed64 = 1, length_delimited = 2 };

inline std::size_t varint_size(std::uint64_t value) {
  std::size_t size = 1;
  for (; value >= 0x80; value >>= 7) ++size;
  return size;
}

inline char *put_varint(char *at, std::uint64_t value) {
  for (; value >= 0x80; value >>= 7) *at++ = static_cast<char>((value & 0x7f) | 0x80);
  *at++ = static_cast<char>(value);
  return at;
}

inline char *put_tag(char *at, std::uint32_t field, WireType type) {
  return put_varint(at, std::uint64_t{field} << 3 | static_cast<std::uint8_t>(type));
}

inline char *put_double_field(char *at, std::uint32_t field, double value) {
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  at = put_tag(at, field, WireType::fixed64);
  for (int byte = 0; byte < 8; ++byte, bits >>= 8) *at++ = static_cast<char>(bits & 0xff);
  return at;
}

inline char *put_bytes_field(char *at, std::uint32_t field, std::string_view bytes) {
  at = put_varint(put_tag(at, field, WireType::length_delimited), bytes.size());
  std::memcpy(at, bytes.data(), bytes.size());
  return at + bytes.size();
}

inline void append_varint(std::string &out, std::uint64_t value) {
  char bytes[10];
  out.append(bytes, static_cast<std::size_t>(put_varint(bytes, value) - bytes));
}

inline void append_tag(std::string &out, std::uint32_t field, WireType type) {
  append_varint(out, std::uint64_t{field} << 3 | static_cast<std::uint8_t>(type));
}

// uint32, uint64 and enum fields; int64 too, whose negative values take ten bytes.
inline void append_uint_field(std::string &out, std::uint32_t field, std::uint64_t value) {
  char bytes[20];
  out.append(bytes, static_cast<std::size_t>(put_varint(put_tag(bytes, field, WireType::varint), value) - bytes));
}

// sint32 and sint64 fields: zigzag, so that small negative numbers stay short.
inline std::uint64_t zigzag(std::int64_t value) {
  return (static_cast<std::uint64_t>(value) << 1) ^ (value < 0 ? ~std::uint64_t{0} : 0);
}

inline void append_sint_field(std::string &out, std::uint32_t field, std::int64_t value) {
  append_uint_field(out, field, zigzag(value));
}

inline void append_double_field(std::string &out, std::uint32_t field, double value) {
  char bytes[18];
  out.append(bytes, static_cast<std::size_t>(put_double_field(bytes, field, value) - bytes));
}

// string, bytes and embedded message fields.
inline void append_bytes_field(std::string &out, std::uint32_t field, std::string_view bytes) {
  append_tag(out, field, WireType::length_delimited);
  append_varint(out, bytes.size());
  out += bytes;
}

// The size of a LabelPair {name = 1, value = 2}, and the pair as field `field`.
inline std::size_t label_pair_size(std::string_view name, std::string_view value) {
  return 2 + varint_size(name.size()) + name.size() + varint_size(value.size()) + value.size();
}

inline char *put_label_pair(char *at, std::uint32_t field, std::string_view name, std::string_view value) {
  at = put_varint(put_tag(at, field, WireType::length_delimited), label_pair_size(name, value));
  return put_bytes_field(put_bytes_field(at, 1, name), 2, value);
}

inline void append_label_pair(std::string &out, std::uint32_t field, std::string_view name, std::string_view value) {
  const std::size_t size = label_pair_size(name, value);
  const std::size_t start = out.size();
  out.resize(start + varint_size(std::uint64_t{field} << 3) + varint_size(size) + size);
  put_label_pair(&out[start], field, name, value);
}

// A google.protobuf.Timestamp {seconds = 1, nanos = 2} of seconds since the epoch, as
// field `field`: its size, and the field itself.
struct Timestamp {
  std::uint64_t seconds, nanos;
  explicit Timestamp(double since_epoch) {
    const double whole = std::floor(since_epoch);
    // A state file may say any time: one past what int64 seconds hold is held at its ends.
    constexpr double lowest = -9.2e18, highest = 9.2e18;
    const double held = whole >= lowest ? std::min(whole, highest) : lowest;
    seconds = static_cast<std::uint64_t>(static_cast<std::int64_t>(held));
    nanos = static_cast<std::uint64_t>(std::clamp<std::int64_t>(std::llround((since_epoch - whole) * 1e9), 0, 999999999));
  }
  std::size_t size() const { return 1 + varint_size(seconds) + (nanos > 0 ? 1 + varint_size(nanos) : 0); }
};

inline char *put_timestamp_field(char *at, std::uint32_t field, const Timestamp &timestamp) {
  at = put_varint(put_tag(at, field, WireType::length_delimited), timestamp.size());
  at = put_varint(put_tag(at, 1, WireType::varint), timestamp.seconds);
  return timestamp.nanos > 0 ? put_varint(put_tag(at, 2, WireType::varint), timestamp.nanos) : at;
}

inline void append_timestamp_field(std::string &out, std::uint32_t field, double seconds) {
  char bytes[32];
  out.append(bytes, static_cast<std::size_t>(put_timestamp_field(bytes, field, Timestamp(seconds)) - bytes));
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: SNAPPY =====================================================================
//
// Snappy's block format, as remote write sends it: the uncompressed length as a varint,
// then elements. A literal is tag 00 with its length - 1 in the upper six bits, or 60 to
// 63 there saying that 1 to 4 bytes of length - 1 follow, little-endian; then the bytes.
// A copy repeats bytes seen before: tag 01 for lengths 4 to 11 at offsets below 2048
// (length - 4 in bits 2-4, the offset's high 3 bits in bits 5-7, its low byte after), or
// tag 10 for lengths 1 to 64 with a two-byte offset. The input is taken in blocks of
// 64 KiB, each matched only within itself, so that every offset fits two bytes; a hash of
// the four bytes at each place remembers where they were last seen.

namespace hermes {
namespace detail {

constexpr std::size_t snappy_block = 65536;
constexpr std::size_t snappy_table_size = 1 << 14; // positions remembered per block

inline std::size_t snappy_max_compressed_length(std::size_t length) { return 32 + length + length / 6; }

// Each writer below writes at `out`, into room for snappy_max_compressed_length, and
// returns the end: appending to a string a byte at a time was most of the compressor's time.
inline char *snappy_literal(char *out, const char *bytes, std::size_t length) {
  const std::size_t n = length - 1;
  if (n < 60) {
    *out++ = static_cast<char>(n << 2);
  } else {
    const std::size_t width = n < 0x100 ? 1 : n < 0x10000 ? 2 : n < 0x1000000 ? 3 : 4;
    *out++ = static_cast<char>((59 + width) << 2);
    for (std::size_t i = 0; i < width; ++i) *out++ = static_cast<char>((n >> (8 * i)) & 0xff);
  }
  std::memcpy(out, bytes, length);
  return out + length;
}

// One copy element of 1 to 64 bytes.
inline char *snappy_copy_element(char *out, std::size_t offset, std::size_t length) {
  if (length >= 4 && length <= 11 && offset < 2048) {
    *out++ = static_cast<char>(1 | ((length - 4) << 2) | ((offset >> 8) << 5));
    *out++ = static_cast<char>(offset & 0xff);
  } else {
    *out++ = static_cast<char>(2 | ((length - 1) << 2));
    *out++ = static_cast<char>(offset & 0xff);
    *out++ = static_cast<char>(offset >> 8);
  }
  return out;
}

// A match of 4 bytes or more as copies of at most 64, none left shorter than 4.
inline char *snappy_copy(char *out, std::size_t offset, std::size_t length) {
  for (; length >= 68; length -= 64) out = snappy_copy_element(out, offset, 64);
  if (length > 64) out = snappy_copy_element(out, offset, 60), length -= 60;
  return snappy_copy_element(out, offset, length);
}

inline std::uint32_t load32(const char *at) {
  std::uint32_t value;
  std::memcpy(&value, at, sizeof value);
  return value;
}

inline std::uint64_t load64(const char *at) {
  std::uint64_t value;
  std::memcpy(&value, at, sizeof value);
  return value;
}

// How far the bytes at `from` repeat those at `candidate`, up to `end`: eight at a time,
// the first that differs found from the lowest set bit of their difference.
inline std::size_t snappy_match_length(const char *candidate, const char *from, const char *end) {
  const char *at = from;
  for (; at + 8 <= end; at += 8, candidate += 8) {
    const std::uint64_t differ = load64(candidate) ^ load64(at);
    if (differ != 0) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
      const int bit = __builtin_clzll(differ); // the first byte in memory is the highest
#else
      const int bit = __builtin_ctzll(differ);
#endif
      return static_cast<std::size_t>(at - from) + static_cast<std::size_t>(bit >> 3);
    }
  }
  for (; at < end && *candidate == *at; ++at, ++candidate) {
  }
  return static_cast<std::size_t>(at - from);
}

inline char *snappy_compress_block(char *out, const char *block, std::size_t size, std::uint16_t *table) {
  std::fill(table, table + snappy_table_size, std::uint16_t{0});
  std::size_t literal_start = 0, at = 0, misses = 0;
  while (at + 4 <= size) {
    const std::uint32_t bytes = load32(block + at);
    const std::size_t slot = (bytes * 0x1e35a7bdu) >> (32 - 14);
    const std::size_t candidate = table[slot];
    table[slot] = static_cast<std::uint16_t>(at);
    if (candidate >= at || load32(block + candidate) != bytes) {
      at += 1 + (misses++ >> 5); // data that does not repeat is passed over faster and faster
      continue;
    }
    const std::size_t length = 4 + snappy_match_length(block + candidate + 4, block + at + 4, block + size);
    if (literal_start < at) out = snappy_literal(out, block + literal_start, at - literal_start);
    out = snappy_copy(out, at - candidate, length);
    at += length, literal_start = at, misses = 0;
  }
  if (literal_start < size) out = snappy_literal(out, block + literal_start, size - literal_start);
  return out;
}

// Compresses `input` over `out`, whose memory is reused.
inline void snappy_compress(std::string_view input, std::string &out) {
  out.resize(snappy_max_compressed_length(input.size()));
  char *end = put_varint(&out[0], input.size());
  std::unique_ptr<std::uint16_t[]> table(new std::uint16_t[snappy_table_size]); // cleared for each block
  for (std::size_t start = 0; start < input.size(); start += snappy_block)
    end = snappy_compress_block(end, input.data() + start, std::min(snappy_block, input.size() - start), table.get());
  out.resize(static_cast<std::size_t>(end - out.data()));
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: BODY BOUNDS ================================================================
//
// What a series may add to a /metrics body at most, in the format that writes the most
// of it, so that the memory budget can keep that room for every series from the moment
// it is made (see MemoryBudget). Bounds, not estimates: every number as long as a number
// can be written, every label value as escaped, a native histogram at its most buckets.

namespace hermes {
namespace detail {

constexpr std::size_t longest_number = 24; // "-2.2250738585072014e-308": the most append_double writes
constexpr std::size_t longest_varint = 10;
constexpr std::size_t message_head = 1 + 5;         // a field's tag and the length of a message below 2^35 bytes
constexpr std::size_t varint_field = 1 + longest_varint;
constexpr std::size_t double_field = 1 + 8;
constexpr std::size_t timestamp_field = message_head + 2 * varint_field;
constexpr std::size_t most_native_buckets_at_coarsest = 2 * 134; // schema -4: 2^16 per bucket, both signs
constexpr std::size_t body_end_bytes = sizeof "# EOF\n" - 1;  // OpenMetrics' last line

// A label value as the text formats write it: backslash, newline and double quote take two bytes.
inline std::size_t escaped_size(std::string_view text) {
  std::size_t size = text.size();
  for (const char c : text) size += c == '\\' || c == '\n' || c == '"';
  return size;
}

// The label pairs of one line in the text formats, braces and commas included, with
// `extra` bytes for a last pair such as le="...".
template <typename Values>
std::size_t text_labels_bound(const std::vector<std::string> &names, const Values &values, std::size_t extra) {
  std::size_t size = 2 + extra; // the braces
  for (std::size_t i = 0; i < names.size(); ++i) size += names[i].size() + sizeof "=\"\"," - 1 + escaped_size(values[i]);
  return size;
}

// One series in the text formats: OpenMetrics writes the most, with its _created line.
template <typename Values> std::size_t text_series_bound(const MetricConfig &metric, const Values &values) {
  const std::size_t labels = text_labels_bound(metric.labels, values, 0), name = metric.name.size();
  const auto line = [&](std::size_t name_size, std::size_t extra) { return name_size + labels + extra + 1 + longest_number + 1; };
  std::size_t bytes = line(name + sizeof "_created" - 1, 0);
  if (metric.type == MetricType::histogram) {
    const std::size_t le = sizeof ",le=\"\"" - 1 + longest_number;
    bytes += (metric.buckets.size() + 1) * line(name + sizeof "_bucket" - 1, le);
    bytes += line(name + sizeof "_sum" - 1, 0) + line(name + sizeof "_count" - 1, 0);
  } else if (metric.type == MetricType::summary) {
    const std::size_t quantile = sizeof ",quantile=\"\"" - 1 + longest_number;
    bytes += metric.objectives.size() * line(name, quantile);
    bytes += line(name + sizeof "_sum" - 1, 0) + line(name + sizeof "_count" - 1, 0);
  } else {
    bytes += line(name, 0);
  }
  return bytes;
}

// A native histogram's part of a protobuf Histogram: schema, zero threshold and count,
// and per bucket its delta and, before it, either the deltas of up to two empty buckets
// (the first may undo a large count, the second is 0) or a new span (BucketSpan: a tag,
// a length, an sint32 offset and a uint32 length).
inline std::size_t native_protobuf_bound(const MetricConfig &metric) {
  if (!metric.native) return 0;
  const std::size_t buckets = std::max(metric.native_max_buckets, most_native_buckets_at_coarsest);
  constexpr std::size_t empty_buckets = longest_varint + 1, span = 2 + 2 * (1 + 5);
  const std::size_t per_bucket = longest_varint + std::max(empty_buckets, span);
  return varint_field + double_field + varint_field + 4 * message_head + buckets * per_bucket + message_head + 4;
}

// One series in the protobuf format: a Metric with its label pairs and its value message.
template <typename Values> std::size_t protobuf_series_bound(const MetricConfig &metric, const Values &values) {
  std::size_t labels = 0;
  for (std::size_t i = 0; i < metric.labels.size(); ++i) {
    const std::size_t pair = label_pair_size(metric.labels[i], values[i]);
    labels += 1 + varint_size(pair) + pair;
  }
  std::size_t inner = double_field + timestamp_field; // a counter or gauge
  if (metric.type == MetricType::histogram) {
    inner = varint_field + double_field + timestamp_field + native_protobuf_bound(metric) +
            metric.buckets.size() * (message_head + varint_field + double_field);
  } else if (metric.type == MetricType::summary) {
    inner = varint_field + double_field + timestamp_field + metric.objectives.size() * (message_head + 2 * double_field);
  }
  return message_head + labels + message_head + inner;
}

// A family's HELP and TYPE lines, or its protobuf MetricFamily head, whichever is longer.
inline std::size_t family_bound(std::string_view name, std::string_view help) {
  const std::size_t text = sizeof "# HELP  \n# TYPE  histogram\n" - 1 + 2 * name.size() + escaped_size(help);
  const std::size_t protobuf = 5 + message_head + name.size() + message_head + help.size() + varint_field;
  return std::max(text, protobuf);
}

// What a series takes from the memory budget: its own bytes (its entry and index slots with
// its label values, and the distribution of a histogram or summary at its fullest, so
// that it never needs more after it was let in), and what it may add to one body.
struct SeriesCost {
  std::size_t own = 0, body = 0;
};

template <typename Values> SeriesCost series_cost(const MetricConfig &metric, const Values &label_values) {
  constexpr std::size_t small_string = 15; // characters a std::string holds without allocating
  constexpr std::size_t allocation = 32;   // what malloc adds to a block, rounding included
  SeriesCost cost{worst_case_series_bytes(metric), 0};
  std::size_t packed = varint_size(label_values.size()), index = 0; // as LabelValues packs them
  for (const auto &value : label_values)
    packed += std::string_view(value).size() + (++index < label_values.size() ? varint_size(std::string_view(value).size()) : 0);
  cost.own += packed > small_string ? packed + 1 + allocation : 0;
  cost.body = std::max(text_series_bound(metric, label_values), protobuf_series_bound(metric, label_values));
  return cost;
}

// Adds what every series of `metric` takes to `sum`.
inline void add_series_costs(SeriesCost &sum, const Metric &metric) {
  for (const auto &entry : metric.series) {
    const SeriesCost cost = series_cost(metric.config, entry.first);
    sum.own += cost.own, sum.body += cost.body;
  }
}

// What a body holds besides the series of a registry, at most: the families' heads,
// Hermes' own families, the end. Defined with the formatting, whose tables it reads.
inline std::size_t fixed_body_bound(const Registry &registry);

} // namespace detail
} // namespace hermes

// ===== DETAIL: JSON =======================================================================

namespace hermes {
namespace detail {

// How much deeper arrays and objects may still nest; each parse context holds a copy
// and hands one level less to the values inside it.
struct NestingBudget {
  std::size_t left = HERMES_MAX_JSON_DEPTH;
  bool enter() {
    if (left == 0) return false;
    --left;
    return true;
  }
};

// Builds a picojson tree like picojson's default context, with two differences that
// matter for hostile input: nesting of arrays and objects alike is bounded, and a
// number beyond the range of double does not throw. The place of the first such number
// (as "gauges[0].max_series") is noted, so that the error can say where it stands.
class BoundedJsonContext {
public:
  BoundedJsonContext(picojson::value *out, NestingBudget nesting, std::string place,
                     std::optional<std::string> *out_of_range)
      : out_(out), nesting_(nesting), place_(std::move(place)), out_of_range_(out_of_range) {}
  bool set_null() { return *out_ = picojson::value(), true; }
  bool set_bool(bool b) { return *out_ = picojson::value(b), true; }
  bool set_number(double f) {
    if (!std::isfinite(f) && !*out_of_range_) *out_of_range_ = place_;
    *out_ = picojson::value(std::isfinite(f) ? f : 0.0);
    return true;
  }
  template <typename Iter> bool parse_string(picojson::input<Iter> &in) {
    *out_ = picojson::value(picojson::string_type, false);
    return picojson::_parse_string(out_->get<std::string>(), in);
  }
  bool parse_array_start() { return enter(picojson::array_type); }
  template <typename Iter> bool parse_array_item(picojson::input<Iter> &in, std::size_t index) {
    auto &array = out_->get<picojson::array>();
    array.emplace_back();
    BoundedJsonContext item(&array.back(), nesting_, place_ + "[" + std::to_string(index) + "]", out_of_range_);
    return picojson::_parse(item, in);
  }
  bool parse_array_stop(std::size_t) { return true; }
  bool parse_object_start() { return enter(picojson::object_type); }
  template <typename Iter> bool parse_object_item(picojson::input<Iter> &in, const std::string &key) {
    BoundedJsonContext item(&out_->get<picojson::object>()[key], nesting_, place_.empty() ? key : place_ + "." + key,
                            out_of_range_);
    return picojson::_parse(item, in);
  }
  bool parse_object_stop() { return true; }

private:
  bool enter(int type) { // picojson names its types in an unnamed enum
    if (!nesting_.enter()) return false;
    *out_ = picojson::value(type, false);
    return true;
  }
  picojson::value *out_;
  NestingBudget nesting_;
  std::string place_;
  std::optional<std::string> *out_of_range_;
};

// Parses one whole JSON text into a picojson parse context; trailing bytes other than
// white space are an error. On failure `error` (when given) says where, as
// "not valid JSON: syntax error at line N near: ...".
template <typename Context> bool parse_json_into(Context &context, std::string_view text, std::string *error = nullptr) {
  picojson::input<const char *> in(text.data(), text.data() + text.size());
  if (!picojson::_parse(context, in)) {
    if (!error) return false; // ingest has no use for the words: build them only when asked
    *error = "not valid JSON: syntax error at line " + std::to_string(in.line()) + " near: "; // picojson's own words
    for (int c = in.getc(); c != -1 && c != '\n'; c = in.getc())
      if (c >= ' ') error->push_back(static_cast<char>(c));
    return false;
  }
  in.skip_ws();
  if (in.getc() != -1) {
    if (error) *error = "not valid JSON: unexpected text after the JSON value";
    return false;
  }
  return true;
}

// A whole JSON text as a tree; a number beyond the range of a double is an error that
// names its place.
inline bool parse_json(std::string_view text, picojson::value &out, std::string *error = nullptr) {
  std::optional<std::string> out_of_range;
  BoundedJsonContext context(&out, NestingBudget{}, "", &out_of_range);
  if (!parse_json_into(context, text, error)) return false;
  if (!out_of_range) return true;
  if (error) *error = (out_of_range->empty() ? "" : *out_of_range + ": ") + "a number beyond the range of a double (about 1.8e308)";
  return false;
}

// ---- Plain JSON, read in place ---------------------------------------------------------------
//
// picojson reads a character at a time through its input class, which counts lines as it
// goes, and builds each string a character at a time: that was most of the CPU a datagram
// cost. Most datagrams are plain: strings without escapes, numbers as JSON writes them.
// PlainJson reads those in place, into the same parse contexts, and gives up at anything
// else: an escape, a control character, a number in another form (01, 1., .5, 1e999), an
// error. The datagram is then read again by picojson, whose reading is the one that
// counts; so where both read a datagram they read it alike (tests/fuzz/fuzz_datagram.cpp
// checks that on every input).

// Character classes of PlainJson, looked up in a table: its loops test one bit a character.
enum PlainJsonClass : unsigned char { json_space = 1, json_string_char = 2, json_number_char = 4 };

constexpr std::array<unsigned char, 256> make_plain_json_classes() {
  std::array<unsigned char, 256> classes{};
  for (std::size_t c = 0x20; c < 256; ++c) classes[c] = json_string_char; // all but control characters, quotes
  classes['"'] = classes['\\'] = 0;                                            // and escapes
  for (const char c : {' ', '\t', '\n', '\r'}) classes[static_cast<unsigned char>(c)] |= json_space;
  for (const char c : {'0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '+', '-', '.', 'e', 'E'}) // as picojson takes them
    classes[static_cast<unsigned char>(c)] |= json_number_char;
  return classes;
}
inline constexpr std::array<unsigned char, 256> plain_json_classes = make_plain_json_classes();

class PlainJson {
public:
  explicit PlainJson(std::string_view text) : at_(text.data()), end_(text.data() + text.size()) {}

  // Skips white space, then takes `c` if it comes next.
  bool expect(char c) {
    skip_space();
    if (at_ == end_ || *at_ != c) return false;
    ++at_;
    return true;
  }
  int peek() const { return at_ == end_ ? -1 : static_cast<unsigned char>(*at_); }
  void skip_space() {
    while (at_ != end_ && is(*at_, json_space)) ++at_;
  }
  bool at_end() {
    skip_space();
    return at_ == end_;
  }
  // Takes `word` (null, true, false) if the text goes on with it.
  bool word(std::string_view word) {
    if (static_cast<std::size_t>(end_ - at_) < word.size() || std::string_view(at_, word.size()) != word) return false;
    at_ += word.size();
    return true;
  }

  // The rest of a string whose opening quote is taken, up to its closing quote, which is
  // taken too; false at an escape, a control character or the end of the text.
  bool string(std::string_view &out) {
    const char *end = at_; // a local the compiler keeps in a register
    while (end != end_ && is(*end, json_string_char)) ++end;
    if (end == end_ || *end != '"') return false;
    out = std::string_view(at_, static_cast<std::size_t>(end - at_));
    at_ = end + 1;
    return true;
  }

  // A number as JSON writes it, -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, within
  // the range of a double. picojson takes every character of [0-9+-.eE] that follows as
  // the number and has strtod read it; std::from_chars, correctly rounded like glibc's
  // strtod, gives the same double for each text of this form.
  bool number(double &out) {
    const char *start = at_;
    while (at_ != end_ && is(*at_, json_number_char)) ++at_;
    if (!is_plain_number(std::string_view(start, static_cast<std::size_t>(at_ - start)))) return false;
    const auto result = std::from_chars(start, at_, out);
    return result.ec == std::errc() && result.ptr == at_;
  }

private:
  static bool is(char c, PlainJsonClass what) { return plain_json_classes[static_cast<unsigned char>(c)] & what; }

  static bool is_plain_number(std::string_view text) {
    std::size_t i = 0;
    const auto digits = [&] {
      const std::size_t first = i;
      while (i < text.size() && is_ascii_digit(text[i])) ++i;
      return i > first;
    };
    if (i < text.size() && text[i] == '-') ++i;
    if (i < text.size() && text[i] == '0') ++i;
    else if (!digits()) return false;
    if (i < text.size() && text[i] == '.') {
      ++i;
      if (!digits()) return false;
    }
    if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
      ++i;
      if (i < text.size() && (text[i] == '+' || text[i] == '-')) ++i;
      if (!digits()) return false;
    }
    return i == text.size();
  }

  const char *at_, *end_;
};

template <typename Context> bool read_plain(Context &context, PlainJson &in);

template <typename Context> bool read_plain_array(Context &context, PlainJson &in) {
  if (!context.parse_array_start()) return false;
  std::size_t index = 0;
  if (in.expect(']')) return context.parse_array_stop(index);
  do {
    if (!context.parse_array_item(in, index++)) return false;
  } while (in.expect(','));
  return in.expect(']') && context.parse_array_stop(index);
}

template <typename Context> bool read_plain_object(Context &context, PlainJson &in) {
  if (!context.parse_object_start()) return false;
  if (in.expect('}')) return context.parse_object_stop();
  do {
    std::string_view key;
    if (!in.expect('"') || !in.string(key) || !in.expect(':') || !context.parse_object_item(in, key)) return false;
  } while (in.expect(','));
  return in.expect('}') && context.parse_object_stop();
}

// The value that comes next, into a picojson parse context, as picojson's _parse() would
// hand it over.
template <typename Context> bool read_plain(Context &context, PlainJson &in) {
  in.skip_space();
  double number = 0;
  switch (in.peek()) {
  case 'n': return in.word("null") && context.set_null();
  case 't': return in.word("true") && context.set_bool(true);
  case 'f': return in.word("false") && context.set_bool(false);
  case '"': return in.expect('"') && context.parse_string(in);
  case '[': return in.expect('[') && read_plain_array(context, in);
  case '{': return in.expect('{') && read_plain_object(context, in);
  default: return in.number(number) && (context.set_number(number), true);
  }
}

// ---- Reading datagrams without a tree ------------------------------------------------------
//
// A datagram is read straight into the few fields a sample has, in buffers that are
// reused from one datagram to the next, so ingest allocates nothing once they have
// grown. The reader notes what kind of JSON value stood at each place; checking it
// against the config comes after, when the whole datagram has proved to be JSON.

enum class JsonKind { absent, null, other, number, string, array, object };

// A string of a datagram: a view of the datagram where the string stands in it as it
// is (PlainJson), else a copy with its escapes undone (picojson). Views are used while
// the datagram is applied, never after.
class ReadText {
public:
  std::string_view get() const { return copied_ ? std::string_view(copy_) : view_; }
  void refer_to(std::string_view text) { view_ = text, copied_ = false; }
  std::string &start_copy() { // kept for the next datagram's copies
    copy_.clear();
    copied_ = true;
    return copy_;
  }

private:
  std::string_view view_;
  std::string copy_;
  bool copied_ = false;
};

struct ReadValue {
  JsonKind kind = JsonKind::absent;
  double number = 0;
  ReadText text;
  bool present() const { return kind != JsonKind::absent && kind != JsonKind::null; } // null counts as absent
};

struct ReadSample {
  JsonKind shape = JsonKind::absent; // the sample itself
  ReadValue metric_name, value, observation, operation;
  JsonKind payload = JsonKind::absent, labels = JsonKind::absent;
  std::vector<std::pair<ReadText, ReadValue>> label_slots; // the first label_count are this sample's
  std::size_t label_count = 0;

  void reset_payload() {
    value.kind = observation.kind = operation.kind = JsonKind::absent;
    labels = JsonKind::absent;
    label_count = 0;
  }
  // The label's slot, the same one again for a repeated name: the last value wins, as in
  // a JSON object. A `name` that stands in the datagram is kept as a view, else copied.
  ReadValue &label(std::string_view name, bool in_datagram) {
    for (std::size_t i = 0; i < label_count; ++i)
      if (label_slots[i].first.get() == name) return label_slots[i].second;
    if (label_count == label_slots.size()) label_slots.emplace_back();
    auto &slot = label_slots[label_count++];
    if (in_datagram) slot.first.refer_to(name);
    else slot.first.start_copy().assign(name);
    slot.second.kind = JsonKind::absent;
    return slot.second;
  }
  const ReadValue *find_label(std::string_view name) const {
    for (std::size_t i = 0; i < label_count; ++i)
      if (label_slots[i].first.get() == name) return &label_slots[i].second;
    return nullptr;
  }
};

// The samples of one datagram; their buffers stay for the next.
struct ReadBatch {
  std::vector<ReadSample> slots;
  std::size_t count = 0;
  bool is_array = false;

  void clear() { count = 0, is_array = false; }
  ReadSample &start(JsonKind shape) {
    if (count == slots.size()) slots.emplace_back();
    ReadSample &sample = slots[count++];
    sample.shape = shape;
    sample.metric_name.kind = sample.payload = JsonKind::absent;
    sample.reset_payload();
    return sample;
  }
  ReadSample &current() { return slots[count - 1]; }
};

// What a parse context's members call to read what comes next, from either reader.
template <typename Context, typename Iter> bool read_value(Context &context, picojson::input<Iter> &in) {
  return picojson::_parse(context, in);
}
template <typename Context> bool read_value(Context &context, PlainJson &in) { return read_plain(context, in); }

template <typename Iter> bool read_string(ReadText &out, picojson::input<Iter> &in) {
  return picojson::_parse_string(out.start_copy(), in);
}
inline bool read_string(ReadText &out, PlainJson &in) {
  std::string_view text;
  if (!in.string(text)) return false;
  out.refer_to(text);
  return true;
}

template <typename Iter> bool skip_string(picojson::input<Iter> &in) {
  picojson::null_parse_context::dummy_str ignored;
  return picojson::_parse_string(ignored, in);
}
inline bool skip_string(PlainJson &in) {
  std::string_view ignored;
  return in.string(ignored);
}

// A picojson parse context for one place in a datagram: the datagram itself, a sample,
// its payload, its labels, a value to keep, or anything to skip. Nesting is bounded as
// in BoundedJsonContext; a number beyond double's range is kept as kind `other`, so
// every field that wants a number rejects it.
class SampleReader {
public:
  enum class Place { datagram, sample, payload, labels, value, skip };

  SampleReader(Place place, ReadBatch &batch, NestingBudget nesting, ReadValue *value = nullptr)
      : place_(place), batch_(batch), nesting_(nesting), value_(value) {}

  bool set_null() { return note(JsonKind::null); }
  bool set_bool(bool) { return note(JsonKind::other); }
  bool set_number(double f) {
    if (!std::isfinite(f)) return note(JsonKind::other);
    if (value_) value_->number = f;
    return note(JsonKind::number);
  }
  template <typename Input> bool parse_string(Input &in) {
    note(JsonKind::string);
    return value_ ? read_string(value_->text, in) : skip_string(in);
  }
  bool parse_array_start() { return enter() && note(JsonKind::array); }
  template <typename Input> bool parse_array_item(Input &in, std::size_t) {
    SampleReader item(place_ == Place::datagram ? Place::sample : Place::skip, batch_, nesting_);
    return read_value(item, in);
  }
  bool parse_array_stop(std::size_t) { return true; }
  bool parse_object_start() { return enter() && note(JsonKind::object); }
  template <typename Input> bool parse_object_item(Input &in, std::string_view key) {
    SampleReader item = member_reader(key, std::is_same_v<Input, PlainJson>); // picojson's keys are its own
    return read_value(item, in);
  }
  bool parse_object_stop() { return true; }

private:
  bool enter() { return nesting_.enter(); }

  // Notes the kind of value that stands at this place.
  bool note(JsonKind kind) {
    switch (place_) {
    case Place::datagram:
      if (kind == JsonKind::array) batch_.is_array = true;
      else batch_.start(kind);
      break;
    case Place::sample: batch_.start(kind); break;
    case Place::payload:
      batch_.current().reset_payload(); // a repeated payload replaces the one before
      batch_.current().payload = kind;
      break;
    case Place::labels:
      batch_.current().label_count = 0;
      batch_.current().labels = kind;
      break;
    case Place::value: value_->kind = kind; break;
    case Place::skip: break;
    }
    return true;
  }

  // Where a member of the object at this place goes.
  SampleReader member_reader(std::string_view key, bool key_in_datagram) {
    const bool in_sample = place_ == Place::datagram || place_ == Place::sample;
    ReadSample *sample = batch_.count ? &batch_.current() : nullptr;
    if (in_sample && key == "metric_name") return {Place::value, batch_, nesting_, &sample->metric_name};
    if (in_sample && key == "payload") return {Place::payload, batch_, nesting_};
    if (place_ == Place::payload) {
      if (key == "labels") return {Place::labels, batch_, nesting_};
      if (key == "value") return {Place::value, batch_, nesting_, &sample->value};
      if (key == "observation") return {Place::value, batch_, nesting_, &sample->observation};
      if (key == "operation") return {Place::value, batch_, nesting_, &sample->operation};
    }
    if (place_ == Place::labels) return {Place::value, batch_, nesting_, &sample->label(key, key_in_datagram)};
    return {Place::skip, batch_, nesting_};
  }

  Place place_;
  ReadBatch &batch_;
  NestingBudget nesting_;
  ReadValue *value_;
};

struct Reading {
  ReadBatch batch;
  std::vector<std::string_view> label_values;
};

// Reads a whole datagram into `batch`: in place if it is plain, else with picojson.
// False when it is not JSON, or more deeply nested than HERMES_MAX_JSON_DEPTH.
inline bool read_datagram(std::string_view datagram, ReadBatch &batch) {
  batch.clear();
  SampleReader plain_reader(SampleReader::Place::datagram, batch, NestingBudget{});
  PlainJson plain(datagram);
  if (read_plain(plain_reader, plain) && plain.at_end()) return true;
  batch.clear();
  SampleReader reader(SampleReader::Place::datagram, batch, NestingBudget{});
  return parse_json_into(reader, datagram);
}

// The member `key` of an object, treating JSON null as absent.
inline const picojson::value *member(const picojson::object &object, const std::string &key) {
  const auto found = object.find(key);
  if (found == object.end() || found->second.is<picojson::null>()) return nullptr;
  return &found->second;
}

inline const char *json_type_name(const picojson::value &value) {
  if (value.is<picojson::null>()) return "null";
  if (value.is<bool>()) return "a boolean";
  if (value.is<double>()) return "a number";
  if (value.is<std::string>()) return "a string";
  if (value.is<picojson::array>()) return "a list";
  return "an object";
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: STATSD ====================================================================

namespace hermes {
namespace detail {

inline std::size_t skip_json_space(std::string_view text, std::size_t at) {
  while (at < text.size() && (plain_json_classes[static_cast<unsigned char>(text[at])] & json_space)) ++at;
  return at;
}

// Whether a JSON word or number may end at `at`: white space, ',', ']' or the end follow.
inline bool ends_json_value(std::string_view text, std::size_t at) {
  return at == text.size() || text[at] == ',' || text[at] == ']' ||
         (plain_json_classes[static_cast<unsigned char>(text[at])] & json_space);
}

// Whether `text`, which opens with '[', goes on as a JSON array could: nothing more (a
// batch cut short), ']' and only white space after it, or a first element that opens with '{',
// '[' or '"', or is true, false, null or a number (picojson's [0-9+-.eE]) ended as JSON
// ends one. A SignalFx tag list's first tag (env=prod) is none of these. Only the first
// element is looked at: a batch broken later is still the JSON reader's to refuse.
inline bool opens_json_batch(std::string_view text) {
  std::size_t at = skip_json_space(text, 1);
  if (at == text.size()) return true;
  const char first = text[at];
  if (first == ']') return skip_json_space(text, at + 1) == text.size();
  if (first == '{' || first == '[' || first == '"') return true;
  for (const std::string_view word : {"true", "false", "null"})
    if (starts_with(text.substr(at), word)) return ends_json_value(text, at + word.size());
  if (first != '-' && !is_ascii_digit(first)) return false;
  while (at < text.size() && (plain_json_classes[static_cast<unsigned char>(text[at])] & json_number_char)) ++at;
  return ends_json_value(text, at);
}

// A datagram is StatsD lines unless it opens JSON: its first byte that is not white space
// is '{', or '[' that opens a JSON batch. A line with SignalFx tags first
// ([env=prod]jobs:1|c) opens with '[' too, so a '[' alone cannot decide. Runs on every
// datagram: reads no further than the first element, allocates nothing. A blank datagram is left to the JSON
// reader, which calls it malformed_json.
inline bool is_statsd(std::string_view datagram) {
  const std::size_t first = skip_json_space(datagram, 0);
  if (first == datagram.size() || datagram[first] == '{') return false;
  return datagram[first] != '[' || !opens_json_batch(datagram.substr(first));
}

enum class StatsdType { counter, gauge, timer, histogram, distribution, set };

struct StatsdTag {
  std::string_view key, value;
};

// One line cut into views of its datagram: name:value[:value...]|type[|field...].
struct StatsdLine {
  std::string_view name, name_rest; // the name around SignalFx tags, which may stand inside it
  std::string_view values;          // one value, or several separated by ':' (DogStatsD 1.1)
  std::size_t value_count = 1;      // the samples the line holds, known before anything else is checked
  StatsdType type = StatsdType::counter;
  double rate = 1;
  bool name_tags = false; // tags came in the name (InfluxDB, Librato, SignalFx), not as |#
  std::vector<StatsdTag> tags;

  void reset() { // keeps the tags' memory
    name = name_rest = values = {};
    value_count = 1;
    type = StatsdType::counter;
    rate = 1;
    name_tags = false;
    tags.clear();
  }
};

// Buffers for StatsD lines, reused from one datagram to the next.
struct StatsdReading {
  StatsdLine line;
  std::string name; // the escaped name, then each tag's escaped key
  std::vector<std::string_view> label_values;
};

// The next line of `datagram` from `position`, without its "\n" or "\r\n"; moves `position` past it.
inline std::string_view next_statsd_line(std::string_view datagram, std::size_t &position) {
  const std::size_t end = std::min(datagram.find('\n', position), datagram.size());
  std::string_view line = datagram.substr(position, end - position);
  position = end + 1;
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

// A whole number text as std::from_chars reads it, whatever the locale, with an optional
// leading '+'; only finite numbers.
inline bool parse_statsd_number(std::string_view text, double &out) {
  if (!text.empty() && text.front() == '+') text.remove_prefix(1);
  if (text.empty() || text.front() == '+') return false;
  const char *end = text.data() + text.size();
  const auto result = std::from_chars(text.data(), end, out);
  return result.ec == std::errc() && result.ptr == end && std::isfinite(out);
}

inline std::optional<StatsdType> parse_statsd_type(std::string_view text) {
  if (text == "c") return StatsdType::counter;
  if (text == "g") return StatsdType::gauge;
  if (text == "ms") return StatsdType::timer;
  if (text == "h") return StatsdType::histogram;
  if (text == "d") return StatsdType::distribution;
  if (text == "s") return StatsdType::set;
  return std::nullopt;
}

inline bool observes(StatsdType type) {
  return type == StatsdType::timer || type == StatsdType::histogram || type == StatsdType::distribution;
}

// Appends the tags of a comma-separated list of key<separator>value; the value may be
// empty, the key may not. An empty list holds no tags.
inline bool read_statsd_tags(std::string_view list, char separator, StatsdLine &line) {
  if (list.empty()) return true;
  for (std::size_t start = 0; start <= list.size();) {
    const std::size_t end = std::min(list.find(',', start), list.size());
    std::string_view tag = list.substr(start, end - start);
    start = end + 1;
    if (separator == ':' && !tag.empty() && tag.front() == '#') tag.remove_prefix(1); // |#a:b,#c:d
    const std::size_t split = tag.find(separator);
    if (split == 0 || split == std::string_view::npos) return false;
    line.tags.push_back({tag.substr(0, split), tag.substr(split + 1)});
  }
  return true;
}

// Takes the tags out of a name, in the styles statsd_exporter reads: SignalFx
// name[k=v,...] first, else InfluxDB name,k=v,... or Librato name#k=v,...
inline bool read_name_tags(std::string_view name, StatsdLine &line) {
  line.name = name;
  // Where the first of each mark stands, found in one pass: most names hold none.
  std::size_t open = std::string_view::npos, close = open, mark = open;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    if (c == '[' && open == std::string_view::npos) open = i;
    else if (c == ']' && close == std::string_view::npos) close = i;
    else if ((c == ',' || c == '#') && mark == std::string_view::npos) mark = i;
  }
  if (open != std::string_view::npos && close != std::string_view::npos && open < close) {
    line.name = name.substr(0, open);
    line.name_rest = name.substr(close + 1);
    if (!read_statsd_tags(name.substr(open + 1, close - open - 1), '=', line)) return false;
  } else if (open == std::string_view::npos && close == std::string_view::npos) {
    if (mark == std::string_view::npos) return true;
    line.name = name.substr(0, mark);
    if (!read_statsd_tags(name.substr(mark + 1), '=', line)) return false;
  } // one bracket alone stays in the name, where it becomes '_'
  line.name_tags = !line.tags.empty();
  return true;
}

// One field after the type: @rate, #tags, or DogStatsD's container id (c:...),
// timestamp (T...), external data (e:...) and cardinality (card:...), which are checked
// and ignored.
inline bool read_statsd_field(std::string_view field, StatsdLine &line) {
  if (field.empty()) return false;
  const std::string_view rest = field.substr(1);
  const auto holds = [field](std::string_view prefix) { return field.size() > prefix.size() && starts_with(field, prefix); };
  switch (field.front()) {
  case '@': return parse_statsd_number(rest, line.rate) && line.rate > 0 && line.rate <= 1;
  case '#': return !line.name_tags && read_statsd_tags(rest, ':', line); // one tag style to a line
  case 'T': return !rest.empty() && rest.find_first_not_of("0123456789") == std::string_view::npos;
  default: return holds("c:") || holds("e:") || holds("card:");
  }
}

// The fields after the type, each after a '|', in any order.
inline bool read_statsd_fields(std::string_view fields, StatsdLine &line) {
  while (!fields.empty()) {
    fields.remove_prefix(1); // the '|'
    const std::size_t end = std::min(fields.find('|'), fields.size());
    if (!read_statsd_field(fields.substr(0, end), line)) return false;
    fields.remove_prefix(end);
  }
  return true;
}

// Cuts one line into `line`, or says why it cannot be applied.
inline std::optional<Reject> parse_statsd_line(std::string_view text, StatsdLine &line) {
  line.reset();
  if (starts_with(text, "_e{") || starts_with(text, "_sc|")) return Reject::unsupported_type; // events, service checks
  const std::size_t colon = text.find(':');
  if (colon == 0 || colon == std::string_view::npos) return Reject::malformed_sample;
  const std::string_view rest = text.substr(colon + 1);
  const std::size_t bar = std::min(rest.find('|'), rest.size());
  line.values = rest.substr(0, bar);
  line.value_count = 1 + static_cast<std::size_t>(std::count(line.values.begin(), line.values.end(), ':'));
  const std::string_view after = rest.substr(std::min(bar + 1, rest.size()));
  const std::size_t type_end = std::min(after.find('|'), after.size());
  const auto type = parse_statsd_type(after.substr(0, type_end));
  if (bar == rest.size() || !type) return Reject::malformed_sample;
  line.type = *type;
  if (line.type == StatsdType::set) return Reject::unsupported_type;
  if (line.value_count > 1 && !observes(line.type)) return Reject::malformed_sample; // several values: ms, h, d only
  const std::string_view name = text.substr(0, colon);
  if (!is_valid_utf8(name) || !read_name_tags(name, line) || !read_statsd_fields(after.substr(type_end), line))
    return Reject::malformed_sample;
  return std::nullopt;
}

inline bool is_name_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == ':';
}

// A StatsD name as the metric name it stands for, escaped as statsd_exporter escapes
// names: a leading digit gains a '_' before it, and each character outside
// [a-zA-Z0-9_:] becomes one '_', a character of several UTF-8 bytes too.
inline void append_statsd_name(std::string &out, std::string_view name, std::string_view rest = {}) {
  const std::string_view first = name.empty() ? rest : name;
  const std::size_t start = out.size();
  out.resize(start + 1 + name.size() + rest.size()); // the most it can take: no byte becomes more than one
  char *to = out.data() + start;
  if (!first.empty() && first.front() >= '0' && first.front() <= '9') *to++ = '_';
  for (const std::string_view part : {name, rest})
    for (const char c : part) {
      const auto byte = static_cast<unsigned char>(c);
      if (is_name_char(byte)) *to++ = c;
      else if ((byte & 0xC0) != 0x80) *to++ = '_'; // a continuation byte belongs to the '_' before
    }
  out.resize(static_cast<std::size_t>(to - out.data()));
}

// Whether a metric of `type` takes StatsD lines of `statsd` type.
inline bool takes(MetricType type, StatsdType statsd) {
  switch (type) {
  case MetricType::counter: return statsd == StatsdType::counter;
  case MetricType::gauge: return statsd == StatsdType::gauge;
  default: return observes(statsd);
  }
}

// The label values of a line's tags in the order `metric` declares its labels. The tags,
// keys escaped as names are, must be exactly those labels; of a repeated tag the last
// wins, as in a JSON object. Values are checked as JSON label values are.
inline std::optional<Reject> statsd_label_values(const MetricConfig &metric, const StatsdLine &line, std::string &key,
                                                 std::vector<std::string_view> &values) {
  values.assign(metric.labels.size(), std::string_view()); // a view of nothing, not even of "": no tag yet
  for (const StatsdTag &tag : line.tags) {
    key.clear();
    append_statsd_name(key, tag.key);
    const auto label = std::find(metric.labels.begin(), metric.labels.end(), key);
    if (label == metric.labels.end() || !is_valid_utf8(tag.key)) return Reject::label_mismatch;
    values[static_cast<std::size_t>(label - metric.labels.begin())] = tag.value;
  }
  for (const std::string_view value : values) {
    if (value.data() == nullptr) return Reject::label_mismatch;
    if (!is_valid_utf8(value)) return Reject::invalid_label_value;
  }
  return std::nullopt;
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: CONFIG =====================================================================

namespace hermes {
namespace detail {

// The family name of a metric in OpenMetrics: a counter drops its _total.
inline std::string_view openmetrics_family(std::string_view name, MetricType type) {
  const bool total = type == MetricType::counter && ends_with(name, "_total");
  return total ? name.substr(0, name.size() - 6) : name;
}

// Every name a metric uses in either format: its family and its series' names.
inline std::vector<std::string> names_taken(const MetricConfig &metric) {
  const std::string &name = metric.name;
  const std::string family(openmetrics_family(metric.name, metric.type));
  if (metric.type == MetricType::counter)
    return family == name ? std::vector<std::string>{name} : std::vector<std::string>{family, name, family + "_created"};
  if (metric.type == MetricType::histogram) return {name, name + "_bucket", name + "_sum", name + "_count", name + "_created"};
  if (metric.type == MetricType::summary) return {name, name + "_sum", name + "_count", name + "_created"};
  return {name};
}

inline std::vector<RemoteWriteConfig> read_remote_write(const picojson::value &value, const std::string &origin); // REMOTE WRITE CONFIG

// Reads a config tree; every error names the file and the JSON path of the place.
class ConfigReader {
public:
  explicit ConfigReader(std::string origin) : origin_(std::move(origin)) {}

  Config read(const picojson::value &root) {
    if (!root.is<picojson::object>()) fail("", std::string("expected an object, got ") + json_type_name(root));
    const auto &top = root.get<picojson::object>();
    reject_unknown_keys(top, "", {"service_name", "gauges", "counters", "histograms", "summaries", "listen_address",
                                  "listen_port", "max_series", "ttl_seconds", "max_memory_bytes", "state_file",
                                  "state_interval_seconds", "udp_allow", "http_allow", "max_push_groups", "push_ttl_seconds", "remote_write", "tls_server", "statsd_mapping_file",
                                  "statsd_undeclared", "statsd_observer_type", "statsd_ttl_seconds",
                                  "max_undeclared_metrics"});
    reject_left_out_keys(top);
    Config config;
    config.service_name = read_service_name(top);
    read_series_limits(top, "", defaults_);
    read_metrics(top, "gauges", MetricType::gauge, config.metrics);
    read_metrics(top, "counters", MetricType::counter, config.metrics);
    read_metrics(top, "histograms", MetricType::histogram, config.metrics);
    read_metrics(top, "summaries", MetricType::summary, config.metrics);
    if (const auto *address = member(top, "listen_address")) config.listen_address = string_at(*address, "listen_address");
    if (const auto *port = member(top, "listen_port")) config.listen_port = port_at(*port, "listen_port");
    if (const auto *bytes = member(top, "max_memory_bytes")) config.max_memory_bytes = bytes_at(*bytes, "max_memory_bytes");
    if (const auto *path = member(top, "state_file")) config.state_file = string_at(*path, "state_file");
    if (const auto *interval = member(top, "state_interval_seconds")) {
      if (!interval->is<double>() || !(interval->get<double>() > 0))
        fail("state_interval_seconds", quote_json(*interval) + " is not a number of seconds above 0");
      config.state_interval_seconds = interval->get<double>();
    }
    if (const auto *allow = member(top, "udp_allow")) config.udp_allow = allow_list_at(*allow, "udp_allow");
    if (const auto *allow = member(top, "http_allow")) config.http_allow = allow_list_at(*allow, "http_allow");
    if (const auto *tls = member(top, "tls_server")) config.tls_server = tls_server_at(*tls, "tls_server");
    read_statsd_settings(top, config.statsd);
    if (const auto *targets = has_remote_write ? member(top, "remote_write") : nullptr)
      config.remote_write = read_remote_write(*targets, origin_);
    read_push_limits(top, config);
    check_name_collisions(config.metrics);
    return config;
  }

private:
  [[noreturn]] void fail(const std::string &place, const std::string &problem) const {
    throw ConfigError(origin_ + ": " + (place.empty() ? "" : place + ": ") + problem);
  }

  // A key of a part this build leaves out (HERMES_NO_*) is an error, never ignored.
  void reject_left_out_keys(const picojson::object &top) const {
    for (const PartSetting &key : part_config_keys)
      if (!key.part.built && member(top, key.name)) fail(key.name, not_built(key.part));
  }

  // max_push_groups (a whole number from 1) and push_ttl_seconds (seconds, 0: never).
  void read_push_limits(const picojson::object &top, Config &config) const {
    if (const auto *groups = member(top, "max_push_groups")) {
      const double n = groups->is<double>() ? groups->get<double>() : 0;
      if (!(n >= 1 && n <= 1e9 && n == std::floor(n))) fail("max_push_groups", quote_json(*groups) + " is not a whole number from 1");
      config.max_push_groups = static_cast<std::size_t>(n);
    }
    if (const auto *ttl = member(top, "push_ttl_seconds")) {
      if (!ttl->is<double>() || !(ttl->get<double>() >= 0) || !std::isfinite(ttl->get<double>()))
        fail("push_ttl_seconds", quote_json(*ttl) + " is not a number of seconds, 0 or more");
      config.push_ttl_seconds = ttl->get<double>();
    }
  }

  void reject_unknown_keys(const picojson::object &object, const std::string &place,
                           std::initializer_list<const char *> known) const {
    for (const auto &entry : object) {
      const bool is_known = std::any_of(known.begin(), known.end(), [&](const char *k) { return entry.first == k; });
      if (is_known) continue;
      std::string expected;
      for (const char *k : known) expected += (expected.empty() ? "" : ", ") + std::string(k);
      fail(join(place, entry.first), "unknown key (expected one of: " + expected + ")");
    }
  }

  static std::string join(const std::string &place, const std::string &key) {
    return place.empty() ? key : place + "." + key;
  }

  // HTTPS on the HTTP port. mbedTLS 2.28 speaks TLS 1.2 and no later version, so that
  // "min_version" may only say TLS12; anything older is refused as a security review would.
  TlsServerConfig tls_server_at(const picojson::value &value, const std::string &place) const {
    if (!value.is<picojson::object>()) fail(place, std::string("expected an object, got ") + json_type_name(value));
    const auto &object = value.get<picojson::object>();
    reject_unknown_keys(object, place, {"cert_file", "key_file", "client_ca_file", "min_version"});
    TlsServerConfig tls;
    if (const auto *path = member(object, "cert_file")) tls.cert_file = string_at(*path, join(place, "cert_file"));
    if (const auto *path = member(object, "key_file")) tls.key_file = string_at(*path, join(place, "key_file"));
    if (const auto *path = member(object, "client_ca_file")) tls.client_ca_file = string_at(*path, join(place, "client_ca_file"));
    if (const auto *version = member(object, "min_version")) {
      const std::string text = string_at(*version, join(place, "min_version"));
      if (text == "TLS13") fail(join(place, "min_version"), "TLS13 is not available: Hermes' TLS library (mbedTLS 2.28) speaks TLS 1.2");
      if (text != "TLS12") fail(join(place, "min_version"), "\"" + text + "\" is not accepted: TLS12 is the only minimum (TLS 1.0 and 1.1 are not spoken)");
    }
    if (tls.cert_file.empty() != tls.key_file.empty()) fail(place, "cert_file and key_file go together");
    if (tls.cert_file.empty() && !tls.client_ca_file.empty()) fail(place, "client_ca_file needs cert_file and key_file");
    return tls;
  }

  std::string string_at(const picojson::value &value, const std::string &place) const {
    if (!value.is<std::string>()) fail(place, std::string("expected a string, got ") + json_type_name(value));
    return value.get<std::string>();
  }

  // A whole number of bytes, or a string with a KiB, MiB or GiB suffix.
  std::size_t bytes_at(const picojson::value &value, const std::string &place) const {
    std::optional<std::size_t> bytes;
    if (value.is<double>() && value.get<double>() >= 0 && value.get<double>() < 1e18 &&
        value.get<double>() == std::floor(value.get<double>()))
      bytes = static_cast<std::size_t>(value.get<double>());
    else if (value.is<std::string>())
      bytes = parse_bytes(value.get<std::string>());
    if (!bytes) fail(place, quote_json(value) + " is not a number of bytes (such as 67108864 or \"64MiB\")");
    return *bytes;
  }

  std::uint16_t port_at(const picojson::value &value, const std::string &place) const {
    std::optional<std::uint16_t> port;
    if (value.is<double>()) {
      const double number = value.get<double>();
      if (number >= 0 && number <= 65535 && number == std::floor(number)) port = static_cast<std::uint16_t>(number);
    } else if (value.is<std::string>()) {
      port = parse_port(value.get<std::string>());
    }
    if (!port) fail(place, quote_json(value) + " is not a port number (0-65535)");
    return *port;
  }

  // A list of CIDR ranges; an empty list allows everyone.
  AllowList allow_list_at(const picojson::value &value, const std::string &place) const {
    if (!value.is<picojson::array>()) fail(place, std::string("expected a list of CIDR ranges, got ") + json_type_name(value));
    AllowList list;
    const auto &items = value.get<picojson::array>();
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::string item_place = place + "[" + std::to_string(i) + "]";
      const std::string text = string_at(items[i], item_place);
      AddressRange range;
      const std::string problem = parse_address_range(text, range);
      if (!problem.empty()) fail(item_place, "\"" + text + "\" is not a CIDR range: " + problem);
      list.add(range, text);
    }
    return list;
  }

  // max_series and ttl_seconds, of the top level (the defaults) or of one metric.
  void read_series_limits(const picojson::object &object, const std::string &place, MetricConfig &limits) const {
    if (const auto *max = member(object, "max_series")) {
      const std::string where = join(place, "max_series");
      const bool whole = max->is<double>() && max->get<double>() == std::floor(max->get<double>());
      if (!whole || max->get<double>() < 1 || max->get<double>() > HERMES_MAX_SERIES_LIMIT)
        fail(where, quote_json(*max) + " is not a whole number from 1 to " + std::to_string(HERMES_MAX_SERIES_LIMIT));
      limits.max_series = static_cast<std::size_t>(max->get<double>());
    }
    if (const auto *ttl = member(object, "ttl_seconds")) {
      if (!ttl->is<double>() || ttl->get<double>() < 0)
        fail(join(place, "ttl_seconds"), quote_json(*ttl) + " is not a number of seconds (0 or more; 0: never)");
      limits.ttl_seconds = ttl->get<double>();
    }
  }

  // What StatsD lines may make beyond the configured metrics.
  void read_statsd_settings(const picojson::object &top, StatsdSettings &settings) const {
    settings.max_series = defaults_.max_series;
    if (const auto *path = member(top, "statsd_mapping_file")) settings.mapping_file = string_at(*path, "statsd_mapping_file");
    if (const auto *mode = member(top, "statsd_undeclared")) {
      const std::string text = string_at(*mode, "statsd_undeclared");
      if (text != "accept" && text != "reject") fail("statsd_undeclared", quote_json(*mode) + " is not \"accept\" or \"reject\"");
      settings.accept_undeclared = text == "accept";
    }
    if (const auto *type = member(top, "statsd_observer_type")) {
      const std::string text = string_at(*type, "statsd_observer_type");
      if (text != "histogram" && text != "summary")
        fail("statsd_observer_type", quote_json(*type) + " is not \"histogram\" or \"summary\"");
      settings.observe_as_summary = text == "summary";
    }
    if (const auto *ttl = member(top, "statsd_ttl_seconds")) {
      if (!ttl->is<double>() || ttl->get<double>() < 0)
        fail("statsd_ttl_seconds", quote_json(*ttl) + " is not a number of seconds (0 or more; 0: never)");
      settings.ttl_seconds = ttl->get<double>();
    }
    if (const auto *max = member(top, "max_undeclared_metrics")) {
      const bool whole = max->is<double>() && max->get<double>() == std::floor(max->get<double>());
      if (!whole || max->get<double>() < 0 || max->get<double>() > 1e9)
        fail("max_undeclared_metrics", quote_json(*max) + " is not a whole number from 0 to 1000000000");
      settings.max_metrics = static_cast<std::size_t>(max->get<double>());
    }
  }

  std::string read_service_name(const picojson::object &top) const {
    const auto *name = member(top, "service_name");
    if (!name) fail("service_name", "missing: every config names its service");
    std::string text = string_at(*name, "service_name");
    if (text.empty()) fail("service_name", "must not be empty");
    if (!is_valid_utf8(text)) fail("service_name", "is not valid UTF-8");
    return text;
  }

  void read_metrics(const picojson::object &top, const char *key, MetricType type, std::vector<MetricConfig> &out) {
    const auto *list = member(top, key);
    if (!list) return;
    if (!list->is<picojson::array>()) fail(key, std::string("expected a list, got ") + json_type_name(*list));
    const auto &items = list->get<picojson::array>();
    for (std::size_t i = 0; i < items.size(); ++i) {
      out.push_back(read_metric(items[i], std::string(key) + "[" + std::to_string(i) + "]", type));
      check_unique(out.back().name, join(std::string(key) + "[" + std::to_string(i) + "]", "metric_name"));
    }
  }

  MetricConfig read_metric(const picojson::value &item, const std::string &place, MetricType type) const {
    if (!item.is<picojson::object>()) fail(place, std::string("expected an object, got ") + json_type_name(item));
    const auto &object = item.get<picojson::object>();
    if (type == MetricType::histogram)
      reject_unknown_keys(object, place, {"metric_name", "metric_description", "labels", "max_series", "ttl_seconds", "buckets",
                                          "native", "native_bucket_factor", "native_max_buckets", "native_zero_threshold"});
    else if (type == MetricType::summary)
      reject_unknown_keys(object, place, {"metric_name", "metric_description", "labels", "max_series", "ttl_seconds",
                                          "objectives", "max_age_seconds"});
    else
      reject_unknown_keys(object, place, {"metric_name", "metric_description", "labels", "max_series", "ttl_seconds"});
    MetricConfig metric = defaults_;
    read_series_limits(object, place, metric);
    metric.type = type;
    metric.name = read_metric_name(object, join(place, "metric_name"));
    if (const auto *help = member(object, "metric_description")) {
      metric.help = string_at(*help, join(place, "metric_description"));
      if (!is_valid_utf8(metric.help)) fail(join(place, "metric_description"), "is not valid UTF-8");
    }
    if (const auto *labels = member(object, "labels")) metric.labels = read_labels(*labels, join(place, "labels"));
    if (type == MetricType::histogram) read_histogram(object, place, metric);
    if (type == MetricType::summary) read_summary(object, place, metric);
    return metric;
  }

  void reject_label(const MetricConfig &metric, const std::string &place, const char *label, const char *why) const {
    const auto found = std::find(metric.labels.begin(), metric.labels.end(), label);
    if (found != metric.labels.end())
      fail(join(place, "labels") + "[" + std::to_string(found - metric.labels.begin()) + "]",
           std::string("\"") + label + "\" is reserved: " + why);
  }

  void read_histogram(const picojson::object &object, const std::string &place, MetricConfig &metric) const {
    reject_label(metric, place, "le", "a histogram's buckets use it");
    read_native(object, place, metric);
    const auto *buckets = member(object, "buckets");
    if (!metric.native) metric.buckets = default_buckets(); // a native histogram has classic buckets only when asked
    if (!buckets) return;
    const std::string where = join(place, "buckets");
    if (!buckets->is<picojson::array>()) fail(where, std::string("expected a list, got ") + json_type_name(*buckets));
    const auto &items = buckets->get<picojson::array>();
    if (items.empty()) fail(where, "must hold at least one bucket");
    metric.buckets.clear();
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::string item_place = where + "[" + std::to_string(i) + "]";
      if (!items[i].is<double>()) fail(item_place, quote_json(items[i]) + " is not a finite number");
      const double bound = items[i].get<double>();
      if (!metric.buckets.empty() && bound <= metric.buckets.back())
        fail(item_place, quote_json(items[i]) + " is not above the bucket before it: buckets must increase strictly");
      metric.buckets.push_back(bound);
    }
  }

  // "native": true and its three settings, which mean nothing without it.
  void read_native(const picojson::object &object, const std::string &place, MetricConfig &metric) const {
    if (const auto *native = member(object, "native")) {
      if (!native->is<bool>()) fail(join(place, "native"), quote_json(*native) + " is not true or false");
      metric.native = native->get<bool>();
    }
    for (const char *key : {"native_bucket_factor", "native_max_buckets", "native_zero_threshold"})
      if (member(object, key) && !metric.native) fail(join(place, key), "applies only to a histogram with \"native\": true");
    if (const auto *factor = member(object, "native_bucket_factor")) {
      if (!factor->is<double>() || !(factor->get<double>() > 1))
        fail(join(place, "native_bucket_factor"),
           quote_json(*factor) + " is not a number above 1 (the growth from bucket to bucket)");
      metric.native_bucket_factor = factor->get<double>();
    }
    if (const auto *max = member(object, "native_max_buckets")) {
      const bool whole = max->is<double>() && max->get<double>() == std::floor(max->get<double>());
      if (!whole || max->get<double>() < 1 || max->get<double>() > HERMES_MAX_NATIVE_BUCKETS)
        fail(join(place, "native_max_buckets"),
             quote_json(*max) + " is not a whole number from 1 to " + std::to_string(HERMES_MAX_NATIVE_BUCKETS));
      metric.native_max_buckets = static_cast<std::size_t>(max->get<double>());
    }
    if (const auto *zero = member(object, "native_zero_threshold")) {
      if (!zero->is<double>() || !(zero->get<double>() >= 0 && std::isfinite(zero->get<double>())))
        fail(join(place, "native_zero_threshold"), quote_json(*zero) + " is not a finite number of 0 or more");
      metric.native_zero_threshold = zero->get<double>();
    }
  }

  void read_summary(const picojson::object &object, const std::string &place, MetricConfig &metric) const {
    reject_label(metric, place, "quantile", "a summary's quantiles use it");
    if (const auto *age = member(object, "max_age_seconds")) {
      if (!age->is<double>() || age->get<double>() <= 0)
        fail(join(place, "max_age_seconds"), quote_json(*age) + " is not a number of seconds above 0");
      metric.max_age_seconds = age->get<double>();
    }
    const auto *objectives = member(object, "objectives");
    if (!objectives) return;
    const std::string where = join(place, "objectives");
    if (!objectives->is<picojson::object>())
      fail(where, std::string("expected an object of quantile: error, got ") + json_type_name(*objectives));
    for (const auto &entry : objectives->get<picojson::object>()) {
      const std::string item_place = where + "." + entry.first;
      const std::optional<double> parsed = parse_decimal(entry.first);
      const double quantile = parsed.value_or(0);
      if (!(quantile > 0 && quantile < 1)) fail(item_place, "\"" + entry.first + "\" is not a quantile between 0 and 1");
      for (const auto &seen : metric.objectives)
        if (seen.first == quantile) fail(item_place, "\"" + entry.first + "\" is the quantile " + format_double(quantile) + " again");
      if (!entry.second.is<double>() || !(entry.second.get<double>() > 0 && entry.second.get<double>() <= 0.5))
        fail(item_place, quote_json(entry.second) + " is not an allowed rank error above 0 and at most 0.5");
      metric.objectives.emplace_back(quantile, entry.second.get<double>());
    }
    std::sort(metric.objectives.begin(), metric.objectives.end());
  }

  std::string read_metric_name(const picojson::object &object, const std::string &place) const {
    const auto *name = member(object, "metric_name");
    if (!name) fail(place, "missing");
    std::string text = string_at(*name, place);
    if (!is_metric_name(text)) fail(place, quote_json(*name) + " is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)");
    if (starts_with(text, "hermes_") || starts_with(text, "process_"))
      fail(place, quote_json(*name) + " is reserved: hermes_* and process_* are Hermes' own metrics");
    return text;
  }

  std::vector<std::string> read_labels(const picojson::value &labels, const std::string &place) const {
    if (!labels.is<picojson::array>()) fail(place, std::string("expected a list, got ") + json_type_name(labels));
    std::vector<std::string> names;
    const auto &items = labels.get<picojson::array>();
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::string item_place = place + "[" + std::to_string(i) + "]";
      std::string name = string_at(items[i], item_place);
      if (!is_label_name(name)) fail(item_place, quote_json(items[i]) + " is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)");
      if (starts_with(name, "__")) fail(item_place, quote_json(items[i]) + " is reserved: names starting with __ are Prometheus' own");
      if (std::find(names.begin(), names.end(), name) != names.end()) fail(item_place, quote_json(items[i]) + " is listed twice");
      names.push_back(std::move(name));
    }
    return names;
  }

  // No two metrics may expose the same name in either format: a histogram X also has
  // X_bucket, X_sum, X_count; in OpenMetrics a counter X_total is the family X, and
  // counters, histograms and summaries add X_created.
  void check_name_collisions(const std::vector<MetricConfig> &metrics) const {
    for (std::size_t i = 0; i < metrics.size(); ++i)
      for (std::size_t j = i + 1; j < metrics.size(); ++j)
        for (const std::string &name : names_taken(metrics[i])) {
          const std::vector<std::string> other = names_taken(metrics[j]);
          if (std::find(other.begin(), other.end(), name) != other.end())
            fail("", "\"" + metrics[i].name + "\" and \"" + metrics[j].name + "\" would both expose the name " + name);
        }
  }

  void check_unique(const std::string &name, const std::string &place) {
    if (std::find(seen_names_.begin(), seen_names_.end(), name) != seen_names_.end())
      fail(place, "\"" + name + "\" is defined twice");
    seen_names_.push_back(name);
  }

  std::string origin_;
  MetricConfig defaults_; // the top level's max_series and ttl_seconds
  std::vector<std::string> seen_names_;
};

// The unit a name part stands for, with the base unit promtool asks for instead.
inline std::optional<std::pair<std::string, std::string>> unit_in(std::string_view part) {
  static constexpr std::pair<const char *, const char *> units[] = {
      {"amperes", "amperes"}, {"bytes", "bytes"},     {"celsius", "celsius"}, {"grams", "grams"},     {"joules", "joules"},
      {"kelvin", "kelvin"},   {"meters", "meters"},   {"metres", "metres"},   {"seconds", "seconds"}, {"volts", "volts"},
      {"minutes", "seconds"}, {"hours", "seconds"},   {"days", "seconds"},    {"weeks", "seconds"},   {"kelvins", "kelvin"},
      {"fahrenheit", "celsius"}, {"rankine", "celsius"}, {"inches", "meters"}, {"yards", "meters"}, {"miles", "meters"},
      {"bits", "bytes"},      {"calories", "joules"}, {"pounds", "grams"},    {"ounces", "grams"}};
  static constexpr const char *prefixes[] = {"", "pico", "nano", "micro", "milli", "centi", "deci", "deca", "hecto", "kilo",
                                             "kibi", "mega", "mibi", "giga", "gibi", "tera", "tebi", "peta", "pebi"};
  for (const char *prefix : prefixes) {
    if (!starts_with(part, prefix)) continue;
    for (const auto &unit : units)
      if (part.substr(std::strlen(prefix)) == unit.first) return std::make_pair(std::string(part), std::string(unit.second));
  }
  return std::nullopt;
}

// Whether a name has `word` as a whole _-separated part in the middle or at the end.
inline bool has_part(std::string_view name, std::string_view word) {
  const std::string middle = "_" + std::string(word) + "_";
  return name.find(middle) != std::string_view::npos || ends_with(name, "_" + std::string(word));
}

inline bool is_camel_case(std::string_view name) {
  for (std::size_t i = 1; i < name.size(); ++i)
    if (is_ascii_lower(name[i - 1]) && is_ascii_upper(name[i])) return true;
  return false;
}

inline std::vector<std::string> lint_names(const MetricConfig &metric) {
  std::vector<std::string> problems;
  const std::string &name = metric.name;
  const std::string lower = lowercase(name);
  const bool counter = metric.type == MetricType::counter;
  if (metric.help.empty()) problems.push_back("no help text");
  for (const std::string_view part : split(name, '_')) {
    if (const auto unit = unit_in(part)) {
      if (unit->first != unit->second) problems.push_back("use base unit \"" + unit->second + "\" instead of \"" + unit->first + "\"");
      break;
    }
  }
  if (counter && !ends_with(name, "_total")) problems.push_back("counter metrics should have \"_total\" suffix");
  if (!counter && ends_with(name, "_total")) problems.push_back("non-counter metrics should not have \"_total\" suffix");
  const bool plain = counter || metric.type == MetricType::gauge;
  if (plain && ends_with(name, "_bucket")) problems.push_back("non-histogram metrics should not have \"_bucket\" suffix");
  if (plain && ends_with(name, "_count"))
    problems.push_back("non-histogram and non-summary metrics should not have \"_count\" suffix");
  if (plain && ends_with(name, "_sum")) problems.push_back("non-histogram and non-summary metrics should not have \"_sum\" suffix");
  for (const char *type : {"counter", "gauge", "histogram", "summary"})
    if (has_part(lower, type)) problems.push_back(std::string("metric name should not include type '") + type + "'");
  if (name.find(':') != std::string::npos) problems.push_back("metric names should not contain ':'");
  if (is_camel_case(name)) problems.push_back("metric names should be written in 'snake_case' not 'camelCase'");
  for (const std::string &label : metric.labels) {
    if (is_camel_case(label)) problems.push_back("label names should be written in 'snake_case' not 'camelCase'");
    if (label == "le") problems.push_back("non-histogram metrics should not have \"le\" label");
    if (label == "quantile") problems.push_back("non-summary metrics should not have \"quantile\" label");
  }
  for (const char *abbreviation : {"s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d"})
    if (has_part(lower, abbreviation)) problems.push_back("metric names should not contain abbreviated units");
  return problems;
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: METRICS FROM STATSD LINES ==================================================
//
// A StatsD line whose name the config does not hold may make its metric: through a rule
// of the mapping file, or as an undeclared metric ("statsd_undeclared": "accept"). The
// shape comes from the rule (or the settings) and the line: its type, its tags' names.

namespace hermes {
namespace detail {

// What a mapping rule says of the metrics it makes; for an undeclared metric, the settings'.
struct LineMetricShape {
  bool summary = false; // ms, h and d lines make a summary, else a histogram
  std::vector<double> buckets = default_buckets();
  std::vector<std::pair<double, double>> objectives;
  double max_age_seconds = 600;
  std::optional<double> ttl_seconds; // unset: the settings' statsd_ttl_seconds
  std::string help;
};

// statsd_exporter's summary quantiles when a mapping names none.
inline std::vector<std::pair<double, double>> statsd_default_objectives() { return {{0.5, 0.05}, {0.9, 0.01}, {0.99, 0.001}}; }

// The metric a line makes, named `name` (escaped; a counter gains _total): its type from
// the line's, its labels the line's tag keys (escaped, sorted as Prometheus' clients show
// them; a mapping's labels are among the tags by now), the rest from `shape`.
inline MetricConfig line_metric_config(std::string_view name, const StatsdLine &line, const LineMetricShape &shape,
                                       const StatsdSettings &settings) {
  MetricConfig config;
  config.name = std::string(name);
  if (line.type == StatsdType::counter && !ends_with(name, "_total")) config.name += "_total";
  config.type = line.type == StatsdType::counter ? MetricType::counter
                : line.type == StatsdType::gauge ? MetricType::gauge
                : shape.summary                  ? MetricType::summary
                                                 : MetricType::histogram;
  for (const StatsdTag &tag : line.tags) {
    std::string key;
    append_statsd_name(key, tag.key);
    config.labels.push_back(std::move(key));
  }
  std::sort(config.labels.begin(), config.labels.end());
  config.labels.erase(std::unique(config.labels.begin(), config.labels.end()), config.labels.end());
  if (config.type == MetricType::histogram) config.buckets = shape.buckets;
  if (config.type == MetricType::summary) config.objectives = shape.objectives, config.max_age_seconds = shape.max_age_seconds;
  config.ttl_seconds = shape.ttl_seconds.value_or(settings.ttl_seconds);
  config.max_series = settings.max_series;
  config.help = shape.help;
  return config;
}

// Why a metric of `config` cannot stand beside `others` and be shown, if it cannot: a
// reserved name or label, or a name another metric's family or series already uses.
inline std::optional<Reject> line_metric_conflict(const MetricConfig &config, const std::vector<Metric> &others) {
  if (starts_with(config.name, "hermes_") || starts_with(config.name, "process_") || !is_metric_name(config.name))
    return Reject::unknown_metric;
  for (const std::string &label : config.labels) {
    const bool reserved = starts_with(label, "__") || (config.type == MetricType::histogram && label == "le") ||
                          (config.type == MetricType::summary && label == "quantile");
    if (reserved || !is_label_name(label)) return Reject::label_mismatch;
  }
  const std::vector<std::string> mine = names_taken(config);
  for (const Metric &other : others)
    for (const std::string &name : names_taken(other.config))
      if (std::find(mine.begin(), mine.end(), name) != mine.end()) return Reject::type_mismatch;
  return std::nullopt;
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: STATSD MAPPING =============================================================
//
// statsd_exporter's mapping file (v0.23), read as it reads it: glob rules first, in the
// order of the file, the first that matches wins; then regex rules in order. Only with
// HERMES_YAML, which brings libyaml.

#ifdef HERMES_YAML

namespace hermes {
namespace detail {

// One node of a YAML document: a scalar's text, or a sequence's items, or a mapping's
// keys and values one after the other. Where it starts, for messages.
struct YamlNode {
  enum class Kind { scalar, sequence, mapping } kind = Kind::scalar;
  std::string text;
  bool plain = false; // an unquoted scalar, which may stand for null
  std::size_t line = 0;
  std::vector<YamlNode> items;

  bool is_null() const {
    return kind == Kind::scalar && plain && (text.empty() || text == "~" || text == "null" || text == "Null" || text == "NULL");
  }
};

// Builds YamlNodes from libyaml's events (its parser alone: the document loader would add
// 9 KB to a static binary). Aliases are followed, so a document that refers to itself,
// or unfolds past HERMES_MAX_MAPPING_NODES, is refused.
class YamlTree {
public:
  YamlTree(yaml_parser_t &parser, const std::string &origin) : parser_(parser), origin_(origin) {}
  ~YamlTree() { yaml_event_delete(&event_); }

  // The first document's root; an empty stream is an empty mapping.
  YamlNode root() {
    while (next() != YAML_DOCUMENT_START_EVENT)
      if (event_.type == YAML_STREAM_END_EVENT) return YamlNode{YamlNode::Kind::mapping, {}, false, 1, {}};
    next();
    return node(0);
  }

private:
  yaml_event_type_t next() {
    yaml_event_delete(&event_);
    if (!yaml_parser_parse(&parser_, &event_))
      throw ConfigError(origin_ + ":" + std::to_string(parser_.problem_mark.line + 1) + ": " +
                        (parser_.problem ? parser_.problem : "not YAML") +
                        (parser_.context ? std::string(" ") + parser_.context : std::string()));
    return event_.type;
  }

  void count(std::size_t nodes, std::size_t depth) {
    if ((nodes_ += nodes) > HERMES_MAX_MAPPING_NODES || depth > HERMES_MAX_JSON_DEPTH * 4)
      throw ConfigError(origin_ + ":" + std::to_string(event_.start_mark.line + 1) +
                        ": too deep, or too many nodes once aliases are unfolded");
  }

  // The node whose first event is the current one; leaves its last event current.
  YamlNode node(std::size_t depth) {
    count(1, depth);
    YamlNode out;
    out.line = event_.start_mark.line + 1;
    const std::size_t first = nodes_;
    const yaml_char_t *anchor = nullptr;
    if (event_.type == YAML_ALIAS_EVENT) {
      const std::string name = reinterpret_cast<const char *>(event_.data.alias.anchor);
      const auto found = std::find_if(anchors_.begin(), anchors_.end(), [&](const auto &a) { return a.first == name; });
      if (found == anchors_.end()) throw ConfigError(origin_ + ":" + std::to_string(out.line) + ": unknown alias *" + name);
      count(found->second.second, depth);
      return found->second.first;
    } else if (event_.type == YAML_SCALAR_EVENT) {
      anchor = event_.data.scalar.anchor;
      out.text.assign(reinterpret_cast<const char *>(event_.data.scalar.value), event_.data.scalar.length);
      out.plain = event_.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    } else {
      const bool sequence = event_.type == YAML_SEQUENCE_START_EVENT;
      anchor = sequence ? event_.data.sequence_start.anchor : event_.data.mapping_start.anchor;
      const std::string name = anchor ? reinterpret_cast<const char *>(anchor) : "";
      out.kind = sequence ? YamlNode::Kind::sequence : YamlNode::Kind::mapping;
      while (next() != YAML_SEQUENCE_END_EVENT && event_.type != YAML_MAPPING_END_EVENT) out.items.push_back(node(depth + 1));
      if (!name.empty()) anchors_.emplace_back(name, std::make_pair(out, nodes_ - first + 1));
      return out;
    }
    if (anchor) anchors_.emplace_back(reinterpret_cast<const char *>(anchor), std::make_pair(out, std::size_t{1}));
    return out;
  }

  yaml_parser_t &parser_;
  const std::string &origin_;
  yaml_event_t event_{};
  std::size_t nodes_ = 0;
  std::vector<std::pair<std::string, std::pair<YamlNode, std::size_t>>> anchors_; // each with its node count
};

// The first document of `text`; an empty one is an empty mapping.
inline YamlNode parse_yaml(std::string_view text, const std::string &origin) {
  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser)) throw ConfigError(origin + ": cannot start the YAML parser");
  const auto free_parser = [](yaml_parser_t *p) { yaml_parser_delete(p); };
  const std::unique_ptr<yaml_parser_t, decltype(free_parser)> owner(&parser, free_parser);
  yaml_parser_set_input_string(&parser, reinterpret_cast<const unsigned char *>(text.data()), text.size());
  return YamlTree(parser, origin).root();
}

// A regex rule's pattern, written in RE2's syntax as statsd_exporter reads it, run by the
// C library's POSIX extended regexes: \d \w \s (and their capitals), (?:...) groups,
// (?P<name>...) names and a leading (?i) are translated; what POSIX cannot say (lazy
// quantifiers, \b, other (?...) forms) is refused at load. Where a pattern could match
// in several ways, POSIX takes the longest at the leftmost place, RE2 the first.
class MappingRegex {
public:
  // Empty on success, else what is wrong with `pattern`.
  std::string compile(std::string_view pattern) {
    std::string posix, problem;
    int flags = REG_EXTENDED;
    for (std::size_t i = 0; i < pattern.size() && problem.empty(); ++i) problem = translate(pattern, i, posix, flags);
    if (problem.empty()) problem = check_size(posix);
    if (!problem.empty()) return problem;
    auto compiled = std::make_unique<regex_t>();
    if (const int error = ::regcomp(compiled.get(), posix.c_str(), flags)) { // a failed regcomp holds nothing to free
      char message[256];
      ::regerror(error, compiled.get(), message, sizeof message);
      return message;
    }
    regex_ = std::shared_ptr<regex_t>(compiled.release(), [](regex_t *r) { ::regfree(r), delete r; });
    return {};
  }

  // The groups of the first match in `name` by RE2's numbers (0: the whole match; a group
  // that took no part is null), or false.
  bool search(const std::string &name, std::vector<std::string_view> &groups) const {
    std::vector<regmatch_t> found(posix_groups_ + 1);
    if (::regexec(regex_.get(), name.c_str(), found.size(), found.data(), 0) != 0) return false;
    groups.assign(1 + numbers_.size(), std::string_view());
    const auto text = [&](std::size_t posix) {
      const regmatch_t &m = found[posix];
      return m.rm_so < 0 ? std::string_view() : std::string_view(name).substr(static_cast<std::size_t>(m.rm_so),
                                                                                static_cast<std::size_t>(m.rm_eo - m.rm_so));
    };
    groups[0] = text(0);
    for (std::size_t k = 0; k < numbers_.size(); ++k) groups[k + 1] = text(numbers_[k]);
    return true;
  }

  // The RE2 number of a named group, or 0.
  std::size_t named(std::string_view name) const {
    for (const auto &entry : names_)
      if (entry.first == name) return entry.second;
    return 0;
  }

private:
  // Appends the POSIX form of the element at `i` (moving `i` past it); a problem, or "".
  std::string translate(std::string_view re, std::size_t &i, std::string &out, int &flags) {
    const char c = re[i];
    const auto next = [&](std::size_t k) { return i + k < re.size() ? re[i + k] : '\0'; };
    if (c == '\\') {
      static constexpr std::pair<char, const char *> classes[] = {{'d', "[0-9]"}, {'D', "[^0-9]"}, {'w', "[[:alnum:]_]"},
                                                                  {'W', "[^[:alnum:]_]"}, {'s', "[[:space:]]"}, {'S', "[^[:space:]]"},
                                                                  {'A', "^"}, {'z', "$"}};
      const char d = next(1);
      if (d == '\0') return "a trailing backslash";
      ++i;
      for (const auto &[letter, posix] : classes)
        if (d == letter) return out += posix, "";
      if (is_ascii_alnum(d)) return std::string("\\") + d + " is not supported";
      out += '\\', out += d;
      return "";
    }
    if (c == '[') return bracket(re, i, out);
    if (c == '(' && next(1) == '?') return special_group(re, i, out, flags);
    if (c == '(') {
      ++posix_groups_;
      numbers_.push_back(posix_groups_);
    }
    if ((c == '*' || c == '+' || c == '?' || c == '}') && next(1) == '?') return "lazy quantifiers (*?, +?) are not supported";
    out += c;
    return "";
  }

  // The C library compiles a repetition by copying its operand: X{n,m} holds max(n, m)
  // copies of X, X+ two, and nested repetitions multiply, so (a{1000}){1000} or
  // ((a+)+)+... would take gigabytes to compile. As Go and RE2 do, a count is at most
  // 1000 and a repetition of a repetition (a**, a+{2}) is refused; and the pattern, its
  // copies written out, is at most 10,000 elements.
  static std::string check_size(std::string_view posix) {
    constexpr std::size_t max_count = 1000, max_elements = 10000;
    struct Group {
      std::size_t size = 0, last = 0; // elements so far; those of the last element
    };
    std::vector<Group> open(1);
    bool after_repetition = false;
    for (std::size_t i = 0; i < posix.size(); ++i) {
      const char c = posix[i];
      const bool counted = c == '{' && i + 1 < posix.size() && (is_ascii_digit(posix[i + 1]) || posix[i + 1] == ',');
      const bool repetition = counted || c == '*' || c == '+' || c == '?';
      if (repetition && after_repetition) return "invalid nested repetition operator";
      after_repetition = repetition;
      Group &group = open.back();
      std::size_t copies = 1;
      if (counted) {
        const std::size_t end = posix.find('}', i);
        if (end == std::string_view::npos) break; // regcomp says what is wrong
        std::size_t largest = 0;
        copies = copies_of(posix.substr(i + 1, end - i - 1), largest);
        if (largest > max_count) return "a repetition count over 1000";
        i = end;
      } else if (c == '+') {
        copies = 2;
      } else if (c == '(') {
        open.emplace_back();
      } else if (c == ')' && open.size() > 1) {
        const std::size_t inner = std::max<std::size_t>(open.back().size, 1);
        open.pop_back();
        open.back().size += inner, open.back().last = inner;
      } else if (c != '*' && c != '?' && c != '|') {
        if (c == '[') i = bracket_end(posix, i);
        else if (c == '\\') ++i;
        group.size += 1, group.last = 1;
      }
      if (copies > 1) group.size += group.last * (copies - 1), group.last *= copies;
      if (open.back().size > max_elements) return "too large once its repetitions are written out (over 10000 elements)";
    }
    return "";
  }

  // How many copies of its operand "n", "n,m", ",m" or "n," makes (the last n + 1: n
  // copies and a starred one), and the largest count written; past 100,000 a count is
  // only known to be over.
  static std::size_t copies_of(std::string_view counts, std::size_t &largest) {
    std::size_t low = 0, high = 0, *value = &low;
    for (const char c : counts) {
      if (c == ',') value = &high;
      else if (is_ascii_digit(c)) *value = std::min<std::size_t>(*value * 10 + static_cast<std::size_t>(c - '0'), 100000);
    }
    const bool open_ended = value == &high && counts.back() == ',';
    largest = std::max(low, high);
    return open_ended ? low + 1 : largest;
  }

  // Where the POSIX bracket expression opening at `i` closes ([]...] and [:class:] inside).
  static std::size_t bracket_end(std::string_view posix, std::size_t i) {
    std::size_t k = i + 1;
    if (k < posix.size() && posix[k] == '^') ++k;
    if (k < posix.size() && posix[k] == ']') ++k;
    for (; k < posix.size() && posix[k] != ']'; ++k)
      if (posix[k] == '[' && k + 1 < posix.size() && posix[k + 1] == ':') {
        const std::size_t end = posix.find(":]", k + 2);
        if (end == std::string_view::npos) return posix.size();
        k = end + 1;
      }
    return k;
  }

  // (?:...) becomes a group that RE2 does not number; (?P<name>...) and (?<name>...) a
  // named one; (?i) at the very start ignores case.
  std::string special_group(std::string_view re, std::size_t &i, std::string &out, int &flags) {
    const std::string_view rest = re.substr(i);
    if (starts_with(rest, "(?i)") && i == 0) return flags |= REG_ICASE, i += 3, "";
    if (starts_with(rest, "(?:")) {
      ++posix_groups_, out += '(', i += 2;
      return "";
    }
    const std::size_t open = starts_with(rest, "(?P<") ? 4 : starts_with(rest, "(?<") ? 3 : 0;
    const std::size_t close = rest.find('>');
    if (open == 0 || close == std::string_view::npos) return "(?" + std::string(1, rest.size() > 2 ? rest[2] : ' ') + " is not supported";
    ++posix_groups_;
    numbers_.push_back(posix_groups_);
    names_.emplace_back(std::string(rest.substr(open, close - open)), numbers_.size());
    out += '(', i += close;
    return "";
  }

  // A bracket expression: inside one POSIX reads '\' as itself, so RE2's escapes there
  // are written out.
  std::string bracket(std::string_view re, std::size_t &i, std::string &out) {
    out += '[';
    std::size_t k = i + 1;
    if (k < re.size() && re[k] == '^') out += '^', ++k;
    if (k < re.size() && re[k] == ']') out += ']', ++k;
    for (; k < re.size() && re[k] != ']'; ++k) {
      if (re[k] == '[' && k + 1 < re.size() && re[k + 1] == ':') {
        const std::size_t end = re.find(":]", k + 2);
        if (end == std::string_view::npos) return "an unclosed [: in a bracket";
        out += re.substr(k, end + 2 - k), k = end + 1;
      } else if (re[k] == '\\' && k + 1 < re.size()) {
        const char d = re[++k];
        if (d == 'd') out += "0-9";
        else if (d == 'w') out += "[:alnum:]_";
        else if (d == 's') out += "[:space:]";
        else if (is_ascii_alnum(d)) return std::string("\\") + d + " in a bracket is not supported";
        else out += d;
      } else {
        out += re[k];
      }
    }
    if (k == re.size()) return "missing ]";
    out += ']', i = k;
    return "";
  }

  std::shared_ptr<regex_t> regex_;
  std::size_t posix_groups_ = 0;
  std::vector<std::size_t> numbers_;                        // RE2 group k + 1: its POSIX group
  std::vector<std::pair<std::string, std::size_t>> names_; // named groups: RE2 numbers
};

// Which StatsD lines a rule takes: match_metric_type.
enum class MatchOn { any, counter, gauge, observer };

inline bool matches_type(MatchOn on, StatsdType type) {
  switch (on) {
  case MatchOn::counter: return type == StatsdType::counter;
  case MatchOn::gauge: return type == StatsdType::gauge;
  case MatchOn::observer: return observes(type);
  default: return true;
  }
}

struct MappingRule {
  std::size_t line = 0; // in the file, for messages
  bool regex = false;
  std::vector<std::string> fields; // a glob's match cut at '.'; "*" captures the field
  std::size_t captures = 0;        // a glob's '*' fields
  std::shared_ptr<const MappingRegex> pattern;
  MatchOn metric_type = MatchOn::any;
  bool drop = false;
  std::string name;                                        // with $1, ${1} (regex: Go's $name too)
  std::vector<std::pair<std::string, std::string>> labels; // label name and value template
  LineMetricShape shape;
};

// What a rule made of one StatsD name: the metric's name, escaped, and its labels.
struct MappingResult {
  enum class Action { unmapped, map, drop } action = Action::unmapped;
  const MappingRule *rule = nullptr;
  std::string name;
  std::vector<std::pair<std::string, std::string>> labels;
};

// The whole text as a decimal number of digits only.
inline std::optional<std::size_t> parse_index(std::string_view text) {
  std::size_t value = 0;
  const auto result = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || !is_ascii_digit(text[0]) || result.ec != std::errc() || result.ptr != text.data() + text.size())
    return std::nullopt;
  return value;
}

// A glob's template: $N or ${N} stands for the Nth capture; a '$' followed by
// [a-zA-Z0-9_$]+ that is not such a number stands for nothing, as statsd_exporter's
// formatter reads it ("$1_x" is nothing, "${1}_x" the capture and "_x").
inline std::string expand_glob(std::string_view text, const std::vector<std::string_view> &captures) {
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    const auto in_class = [&](std::size_t at) {
      return at < text.size() && (is_ascii_alnum(text[at]) || text[at] == '_' || text[at] == '$');
    };
    std::size_t start = i + 1 + (i + 1 < text.size() && text[i + 1] == '{' ? 1 : 0);
    if (text[i] != '$' || !in_class(start)) {
      out += text[i++];
      continue;
    }
    std::size_t end = start;
    while (in_class(end)) ++end;
    const auto index = parse_index(text.substr(start, end - start));
    if (index && *index >= 1 && *index <= captures.size()) out += captures[*index - 1];
    i = end + (end < text.size() && text[end] == '}' ? 1 : 0);
  }
  return out;
}

// A regex rule's template, as Go's Regexp.Expand reads it: $$ is '$'; $name or ${name},
// name the longest run of [a-zA-Z0-9_], is the group of that number, or of that name (no
// such group: nothing); a '$' that starts neither stays.
inline std::string expand_regex(std::string_view text, const std::vector<std::string_view> &groups, const MappingRegex &regex) {
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    if (text[i] != '$') {
      out += text[i++];
      continue;
    }
    if (i + 1 < text.size() && text[i + 1] == '$') {
      out += '$', i += 2;
      continue;
    }
    const bool brace = i + 1 < text.size() && text[i + 1] == '{';
    std::size_t start = i + 1 + (brace ? 1 : 0), end = start;
    while (end < text.size() && (is_ascii_alnum(text[end]) || text[end] == '_')) ++end;
    if (end == start || (brace && (end == text.size() || text[end] != '}'))) {
      out += text[i++];
      continue;
    }
    const std::string_view group = text.substr(start, end - start);
    const std::optional<std::size_t> number = parse_index(group);
    const std::size_t index = number ? *number : regex.named(group); // 0: no group of that name
    if (index < groups.size() && (number || index > 0)) out += groups[index];
    i = end + (brace ? 1 : 0);
  }
  return out;
}

// The rules of one mapping file, and an index of the glob rules by their field count
// and first field, so that a name is compared with the few rules that could match it.
class StatsdMapping {
public:
  std::vector<MappingRule> rules;

  void index() {
    for (std::size_t i = 0; i < rules.size(); ++i) {
      const MappingRule &rule = rules[i];
      if (rule.regex) continue;
      by_first_[index_key(rule.fields.size(), rule.fields[0])].push_back(i); // "*" first: the list for any
    }
  }

  MappingResult map(std::string_view name, StatsdType type) const {
    MappingResult result;
    if (!map_glob(name, type, result)) map_regex(name, type, result);
    return result;
  }

private:
  static std::string index_key(std::size_t count, std::string_view first) { return std::to_string(count) + ":" + std::string(first); }

  bool map_glob(std::string_view name, StatsdType type, MappingResult &result) const {
    const std::vector<std::string_view> fields = split(name, '.');
    static const std::vector<std::size_t> none;
    const auto literal = by_first_.find(index_key(fields.size(), fields[0]));
    const auto any = by_first_.find(index_key(fields.size(), "*"));
    const std::vector<std::size_t> &a = literal == by_first_.end() ? none : literal->second;
    const std::vector<std::size_t> &b = any == by_first_.end() || fields[0] == "*" ? none : any->second;
    std::vector<std::string_view> captures;
    for (std::size_t i = 0, j = 0; i < a.size() || j < b.size();) { // both lists in the order of the file
      const std::size_t next = j == b.size() || (i < a.size() && a[i] < b[j]) ? a[i++] : b[j++];
      if (matches_type(rules[next].metric_type, type) && glob_matches(rules[next], fields, captures)) {
        fill(rules[next], expand_glob(rules[next].name, captures), result);
        for (const auto &label : rules[next].labels) result.labels.emplace_back(label.first, expand_glob(label.second, captures));
        return true;
      }
    }
    return false;
  }

  static bool glob_matches(const MappingRule &rule, const std::vector<std::string_view> &fields,
                           std::vector<std::string_view> &captures) {
    captures.clear();
    for (std::size_t k = 0; k < fields.size(); ++k) {
      if (rule.fields[k] == "*") captures.push_back(fields[k]);
      else if (rule.fields[k] != fields[k]) return false;
    }
    return true;
  }

  void map_regex(std::string_view name, StatsdType type, MappingResult &result) const {
    const std::string text(name); // regexec reads up to a NUL
    std::vector<std::string_view> groups;
    for (const MappingRule &rule : rules) {
      if (!rule.regex || !matches_type(rule.metric_type, type)) continue;
      if (!rule.pattern->search(text, groups)) continue;
      fill(rule, expand_regex(rule.name, groups, *rule.pattern), result);
      for (const auto &label : rule.labels)
        result.labels.emplace_back(label.first, expand_regex(label.second, groups, *rule.pattern));
      return;
    }
  }

  static void fill(const MappingRule &rule, const std::string &name, MappingResult &result) {
    result.action = rule.drop ? MappingResult::Action::drop : MappingResult::Action::map;
    result.rule = &rule;
    if (!name.empty()) append_statsd_name(result.name, name);
  }

  std::unordered_map<std::string, std::vector<std::size_t>> by_first_; // by field count and first field, or "*"
};

// Go's time.ParseDuration, as yaml.v2 reads a duration: "90s", "1h30m", "0.5m"; a bare
// whole number is nanoseconds. Seconds, or nullopt.
inline std::optional<double> parse_go_duration(std::string_view text) {
  static constexpr std::pair<const char *, double> units[] = {{"ns", 1e-9}, {"us", 1e-6}, {"\xC2\xB5s", 1e-6}, {"ms", 1e-3},
                                                              {"s", 1},     {"m", 60},    {"h", 3600}};
  if (const auto whole = parse_index(text)) return static_cast<double>(*whole) * 1e-9;
  if (!text.empty() && text.front() == '+') text.remove_prefix(1);
  if (text == "0") return 0.0;
  double total = 0;
  if (text.empty()) return std::nullopt;
  while (!text.empty()) {
    std::size_t digits = 0;
    while (digits < text.size() && (is_ascii_digit(text[digits]) || text[digits] == '.')) ++digits;
    const auto number = parse_decimal(text.substr(0, digits));
    if (digits == 0 || !number) return std::nullopt;
    text.remove_prefix(digits);
    std::size_t letters = 0; // the unit runs to the next number
    while (letters < text.size() && !is_ascii_digit(text[letters]) && text[letters] != '.') ++letters;
    const std::string_view name = text.substr(0, letters);
    const auto unit = std::find_if(std::begin(units), std::end(units), [&](const auto &u) { return name == u.first; });
    if (unit == std::end(units)) return std::nullopt;
    total += *number * unit->second;
    text.remove_prefix(letters);
  }
  return total;
}


// Whether `text` is a glob statsd_exporter takes: fields cut at '.', each '*' or a name
// part ([a-zA-Z_][a-zA-Z0-9_-]*, the first; later ones may start with a digit).
inline bool is_glob_match(std::string_view text) {
  const std::vector<std::string_view> fields = split(text, '.');
  for (std::size_t i = 0; i < fields.size(); ++i) {
    const std::string_view field = fields[i];
    if (field == "*") continue;
    if (field.empty() || !(is_ascii_alnum(field[0]) || field[0] == '_') || (i == 0 && is_ascii_digit(field[0]))) return false;
    for (const char c : field)
      if (!is_ascii_alnum(c) && c != '_' && c != '-') return false;
  }
  return true;
}

// Whether a rule's name is one statsd_exporter takes: [a-zA-Z_][a-zA-Z0-9_]*, where $N,
// ${N} may stand for any character.
inline bool is_name_template(std::string_view text) {
  for (std::size_t i = 0; i < text.size();) {
    if (text[i] == '$') {
      std::size_t at = i + 1 + (i + 1 < text.size() && text[i + 1] == '{' ? 1 : 0), digits = at;
      while (digits < text.size() && is_ascii_digit(text[digits])) ++digits;
      if (digits == at) return false;
      i = digits + (digits < text.size() && text[digits] == '}' ? 1 : 0);
    } else if (is_ascii_alnum(text[i]) || text[i] == '_') {
      if (i == 0 && is_ascii_digit(text[i])) return false;
      ++i;
    } else {
      return false;
    }
  }
  return !text.empty();
}

// Reads a mapping file's YAML into rules. Every problem names the file and the line;
// keys Hermes reads but does not act on give one warning each.
class MappingReader {
public:
  explicit MappingReader(std::string origin) : origin_(std::move(origin)) {}

  std::shared_ptr<StatsdMapping> read(const YamlNode &root) {
    auto mapping = std::make_shared<StatsdMapping>();
    if (root.is_null()) return mapping;
    expect(root, YamlNode::Kind::mapping, "the file");
    keys(root, "", {"defaults", "mappings"}, {});
    if (const YamlNode *defaults = member(root, "defaults")) read_defaults(*defaults);
    if (const YamlNode *rules = member(root, "mappings")) {
      expect(*rules, YamlNode::Kind::sequence, "mappings");
      for (const YamlNode &rule : rules->items) mapping->rules.push_back(read_rule(rule));
    }
    // statsd_exporter asks the glob rules first, then the regex rules: both in file order.
    mapping->index();
    for (const Warning &warning : warned_) warnings.push_back(warning.text);
    return mapping;
  }

  std::vector<std::string> warnings; // in the order of the file

private:
  [[noreturn]] void fail(const YamlNode &node, const std::string &problem) const {
    throw ConfigError(origin_ + ":" + std::to_string(node.line) + ": " + problem);
  }

  void expect(const YamlNode &node, YamlNode::Kind kind, const std::string &what) const {
    static constexpr const char *names[] = {"a scalar", "a list", "a mapping"};
    if (node.kind != kind) fail(node, what + ": expected " + names[static_cast<int>(kind)]);
  }

  static const YamlNode *member(const YamlNode &map, std::string_view key) {
    for (std::size_t i = 0; i + 1 < map.items.size(); i += 2)
      if (map.items[i].kind == YamlNode::Kind::scalar && map.items[i].text == key)
        return map.items[i + 1].is_null() ? nullptr : &map.items[i + 1];
    return nullptr;
  }

  // Keys `read` are acted on; `ignored` are statsd_exporter's that Hermes does not act
  // on, and others none of its: both warned of once each, so that the file still loads.
  void keys(const YamlNode &map, const std::string &where, std::initializer_list<const char *> read,
            std::initializer_list<const char *> ignored) {
    for (std::size_t i = 0; i < map.items.size(); i += 2) {
      const YamlNode &key = map.items[i];
      if (key.kind != YamlNode::Kind::scalar) fail(key, where + ": a key that is not a scalar");
      const auto is = [&](const char *name) { return key.text == name; };
      if (std::any_of(read.begin(), read.end(), is)) continue;
      const std::string path = where.empty() ? key.text : where + "." + key.text;
      if (std::any_of(warned_.begin(), warned_.end(), [&](const Warning &w) { return w.path == path; })) continue;
      const bool known = std::any_of(ignored.begin(), ignored.end(), is);
      const auto after = std::find_if(warned_.begin(), warned_.end(), [&](const Warning &w) { return w.line > key.line; });
      warned_.insert(after, {key.line, path, origin_ + ":" + std::to_string(key.line) + ": " + path +
                                                 (known ? ": not implemented by Hermes, ignored" : ": unknown key, ignored")});
    }
  }

  std::string scalar(const YamlNode &node, const std::string &what) const {
    expect(node, YamlNode::Kind::scalar, what);
    return node.text;
  }

  double number(const YamlNode &node, const std::string &what) const {
    const auto value = parse_decimal(scalar(node, what));
    if (!value || !std::isfinite(*value)) fail(node, what + ": \"" + node.text + "\" is not a finite number");
    return *value;
  }

  double seconds(const YamlNode &node, const std::string &what) const {
    const auto value = parse_go_duration(scalar(node, what));
    if (!value) fail(node, what + ": \"" + node.text + "\" is not a duration (such as 30s, 5m, 1h30m)");
    return *value;
  }

  bool observer_is_summary(const YamlNode &node, const std::string &what) const {
    const std::string text = scalar(node, what);
    if (text != "histogram" && text != "summary" && !text.empty()) fail(node, what + ": invalid observer type '" + text + "'");
    return text != "histogram";
  }

  std::vector<double> buckets(const YamlNode &node, const std::string &what) const {
    expect(node, YamlNode::Kind::sequence, what);
    std::vector<double> out;
    for (const YamlNode &item : node.items) {
      out.push_back(number(item, what));
      if (out.size() > 1 && out.back() <= out[out.size() - 2]) fail(item, what + ": buckets must increase strictly");
    }
    return out;
  }

  std::vector<std::pair<double, double>> quantiles(const YamlNode &node, const std::string &what) const {
    expect(node, YamlNode::Kind::sequence, what);
    std::vector<std::pair<double, double>> out;
    for (const YamlNode &item : node.items) {
      expect(item, YamlNode::Kind::mapping, what);
      const YamlNode *quantile = member(item, "quantile"), *error = member(item, "error");
      const double q = quantile ? number(*quantile, what + ".quantile") : 0, e = error ? number(*error, what + ".error") : 0;
      if (!(q > 0 && q < 1)) fail(item, what + ": a quantile between 0 and 1 (exclusive) is needed");
      if (!(e > 0 && e <= 0.5)) fail(item, what + ": an error above 0 and at most 0.5 is needed");
      for (const auto &seen : out)
        if (seen.first == q) fail(item, what + ": the quantile " + format_double(q) + " twice");
      out.emplace_back(q, e);
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  // histogram_options and summary_options, of the defaults or of a rule.
  void read_options(const YamlNode &map, const std::string &where, LineMetricShape &shape) {
    if (const YamlNode *histogram = member(map, "histogram_options")) {
      expect(*histogram, YamlNode::Kind::mapping, where + "histogram_options");
      keys(*histogram, where + "histogram_options", {"buckets"}, {"native_histogram_bucket_factor", "native_histogram_max_buckets"});
      if (const YamlNode *list = member(*histogram, "buckets")) {
        std::vector<double> read = buckets(*list, "buckets");
        if (!read.empty()) shape.buckets = std::move(read);
      }
    }
    if (const YamlNode *summary = member(map, "summary_options")) {
      expect(*summary, YamlNode::Kind::mapping, where + "summary_options");
      keys(*summary, where + "summary_options", {"quantiles", "max_age"}, {"age_buckets", "buf_cap"});
      if (const YamlNode *list = member(*summary, "quantiles")) {
        auto read = quantiles(*list, "quantiles");
        if (!read.empty()) shape.objectives = std::move(read);
      }
      if (const YamlNode *age = member(*summary, "max_age")) {
        const double value = seconds(*age, "max_age");
        if (value > 0) shape.max_age_seconds = value;
      }
    }
  }

  void read_defaults(const YamlNode &node) {
    expect(node, YamlNode::Kind::mapping, "defaults");
    keys(node, "defaults",
         {"observer_type", "timer_type", "match_type", "ttl", "summary_options", "histogram_options", "buckets", "quantiles"},
         {"glob_disable_ordering"});
    const YamlNode *observer = member(node, "observer_type");
    if (!observer) observer = member(node, "timer_type");
    if (observer) defaults_.summary = observer_is_summary(*observer, "observer_type");
    if (const YamlNode *type = member(node, "match_type")) regex_default_ = match_is_regex(*type);
    if (const YamlNode *ttl = member(node, "ttl")) defaults_.ttl_seconds = seconds(*ttl, "ttl");
    read_options(node, "defaults.", defaults_);
    if (const YamlNode *list = member(node, "buckets"); list && !member(node, "histogram_options")) {
      auto read = buckets(*list, "buckets");
      if (!read.empty()) defaults_.buckets = std::move(read);
    }
    if (const YamlNode *list = member(node, "quantiles"); list && !member(node, "summary_options")) {
      auto read = quantiles(*list, "quantiles");
      if (!read.empty()) defaults_.objectives = std::move(read);
    }
    if (defaults_.ttl_seconds && *defaults_.ttl_seconds <= 0) defaults_.ttl_seconds.reset();
  }

  bool match_is_regex(const YamlNode &node) const {
    const std::string text = scalar(node, "match_type");
    if (text != "glob" && text != "regex" && !text.empty()) fail(node, "invalid match type \"" + text + "\"");
    return text == "regex";
  }

  MappingRule read_rule(const YamlNode &node) {
    expect(node, YamlNode::Kind::mapping, "a mapping rule");
    keys(node, "mappings[]",
         {"match", "name", "labels", "match_type", "match_metric_type", "action", "observer_type", "timer_type",
          "histogram_options", "summary_options", "buckets", "quantiles", "ttl", "help"},
         {});
    MappingRule rule;
    rule.line = node.line;
    const YamlNode *match = member(node, "match");
    const std::string text = match ? scalar(*match, "match") : std::string();
    const YamlNode *type = member(node, "match_type");
    rule.regex = type ? match_is_regex(*type) : regex_default_;
    read_name_and_labels(node, rule);
    if (rule.regex) {
      auto pattern = std::make_shared<MappingRegex>();
      const std::string problem = pattern->compile(text);
      if (!problem.empty()) fail(match ? *match : node, "invalid regex " + text + " in mapping: " + problem);
      rule.pattern = std::move(pattern);
    } else {
      if (!is_glob_match(text)) fail(match ? *match : node, "invalid match: " + text);
      for (const std::string_view field : split(text, '.')) rule.fields.emplace_back(field);
      rule.captures = static_cast<std::size_t>(std::count(rule.fields.begin(), rule.fields.end(), "*"));
    }
    read_actions(node, rule);
    read_shape(node, rule);
    return rule;
  }

  void read_name_and_labels(const YamlNode &node, MappingRule &rule) const {
    const YamlNode *name = member(node, "name");
    rule.name = name ? scalar(*name, "name") : std::string();
    if (rule.name.empty()) fail(node, "metric mapping didn't set a metric name");
    if (!is_name_template(rule.name)) fail(*name, "metric name '" + rule.name + "' is not a metric name ([a-zA-Z_][a-zA-Z0-9_]*, with $1 or ${1})");
    if (const YamlNode *labels = member(node, "labels")) {
      expect(*labels, YamlNode::Kind::mapping, "labels");
      for (std::size_t i = 0; i + 1 < labels->items.size(); i += 2) {
        const std::string key = scalar(labels->items[i], "a label name");
        if (key.size() < 2 || !is_label_name(key)) fail(labels->items[i], "invalid label key: " + key);
        for (const auto &seen : rule.labels)
          if (seen.first == key) fail(labels->items[i], "the label " + key + " twice");
        rule.labels.emplace_back(key, scalar(labels->items[i + 1], "the value of label " + key));
      }
    }
  }

  void read_actions(const YamlNode &node, MappingRule &rule) const {
    if (const YamlNode *action = member(node, "action")) {
      const std::string text = scalar(*action, "action");
      if (text != "map" && text != "drop" && !text.empty()) fail(*action, "invalid action type \"" + text + "\"");
      rule.drop = text == "drop";
    }
    if (const YamlNode *type = member(node, "match_metric_type")) {
      const std::string text = scalar(*type, "match_metric_type");
      if (text == "counter") rule.metric_type = MatchOn::counter;
      else if (text == "gauge") rule.metric_type = MatchOn::gauge;
      else if (text == "observer" || text == "timer") rule.metric_type = MatchOn::observer;
      else fail(*type, "invalid metric type '" + text + "'");
    }
  }

  // The rule's shape: its own settings over the defaults', as statsd_exporter resolves them.
  void read_shape(const YamlNode &node, MappingRule &rule) {
    const YamlNode *observer = member(node, "observer_type");
    if (!observer) observer = member(node, "timer_type");
    rule.shape.summary = observer ? observer_is_summary(*observer, "observer_type") : defaults_.summary;
    const YamlNode *histogram = member(node, "histogram_options"), *summary = member(node, "summary_options");
    const YamlNode *legacy_buckets = member(node, "buckets"), *legacy_quantiles = member(node, "quantiles");
    if (rule.shape.summary && histogram) fail(*histogram, "cannot use summary observer and histogram options at the same time");
    if (!rule.shape.summary && summary) fail(*summary, "cannot use histogram observer and summary options at the same time");
    if (histogram && legacy_buckets && member(*histogram, "buckets"))
      fail(node, "cannot use buckets in both the top level and histogram options at the same time in " + rule.name);
    if (summary && legacy_quantiles && member(*summary, "quantiles"))
      fail(node, "cannot use quantiles in both the top level and summary options at the same time in " + rule.name);
    rule.shape.buckets = defaults_.buckets;
    rule.shape.objectives = defaults_.objectives;
    rule.shape.max_age_seconds = defaults_.max_age_seconds;
    read_options(node, "mappings[].", rule.shape);
    if (legacy_buckets) {
      auto read = buckets(*legacy_buckets, "buckets");
      if (!read.empty()) rule.shape.buckets = std::move(read);
    }
    if (legacy_quantiles) {
      auto read = quantiles(*legacy_quantiles, "quantiles");
      if (!read.empty()) rule.shape.objectives = std::move(read);
    }
    rule.shape.ttl_seconds = defaults_.ttl_seconds;
    if (const YamlNode *ttl = member(node, "ttl")) {
      const double value = seconds(*ttl, "ttl");
      if (value > 0) rule.shape.ttl_seconds = value;
    }
    if (const YamlNode *help = member(node, "help")) rule.shape.help = scalar(*help, "help");
    if (!is_valid_utf8(rule.shape.help)) fail(node, "help: not valid UTF-8");
  }

  std::string origin_;
  LineMetricShape defaults_{true, default_buckets(), statsd_default_objectives(), 600, std::nullopt, {}};
  bool regex_default_ = false;
  struct Warning {
    std::size_t line;
    std::string path, text;
  };
  std::vector<Warning> warned_; // one for each key path
};

// Mapping results by StatsD name and type, as statsd_exporter caches them: at most
// HERMES_STATSD_MAPPING_CACHE names, each taking its bytes from the budget. When full, or
// the budget has no room, a name is mapped again each time it comes.
class MappingCache {
public:
  // The result for `key` (the name, a '|' and the type's letter), made by `make` if new.
  template <typename Make> const MappingResult &get(const std::string &key, MemoryBudget &budget, Make &&make) {
    const auto found = entries_.find(key);
    if (found != entries_.end()) return found->second;
    MappingResult result = make();
    if (entries_.size() >= HERMES_STATSD_MAPPING_CACHE) evict_one(budget);
    const std::size_t bytes = entry_bytes(key, result);
    if (!budget.take(bytes)) return scratch_ = std::move(result);
    bytes_ += bytes;
    return entries_.emplace(key, std::move(result)).first->second;
  }

  void clear(MemoryBudget &budget) {
    budget.give_back(bytes_);
    bytes_ = 0;
    entries_.clear();
  }

  std::size_t size() const { return entries_.size(); }
  std::size_t bytes() const { return bytes_; }

private:
  // The hash node, the key, and the result's strings, each as allocated.
  static std::size_t entry_bytes(const std::string &key, const MappingResult &result) {
    constexpr std::size_t node = sizeof(std::pair<const std::string, MappingResult>) + 32, allocation = 16;
    std::size_t bytes = node + key.size() + result.name.size() + 2 * allocation;
    for (const auto &label : result.labels) bytes += sizeof label + label.first.size() + label.second.size() + 2 * allocation;
    return bytes;
  }

  void evict_one(MemoryBudget &budget) {
    const auto victim = entries_.begin(); // any: statsd_exporter's random cache does the same
    const std::size_t bytes = entry_bytes(victim->first, victim->second);
    budget.give_back(bytes);
    bytes_ -= std::min(bytes, bytes_);
    entries_.erase(victim);
  }

  std::unordered_map<std::string, MappingResult> entries_;
  std::size_t bytes_ = 0;
  MappingResult scratch_; // the result of a name not kept
};

} // namespace detail
} // namespace hermes

#endif // HERMES_YAML

namespace hermes {
namespace detail {

// The registry's part for metrics made from StatsD lines: the settings, the mapping and
// its cache, and how many such metrics there are.
struct LineMetrics {
  StatsdSettings settings;
  std::shared_ptr<const StatsdMapping> mapping;
#ifdef HERMES_YAML
  MappingCache cache;
  std::string key; // the cache's key for a line, reused
#endif
  std::size_t made = 0;

  bool active() const { return mapping || settings.accept_undeclared; }
};

} // namespace detail
} // namespace hermes

// ===== DETAIL: SOCKETS ====================================================================

namespace hermes {
namespace detail {

// Owns one file descriptor and closes it; movable, not copyable.
class FileDescriptor {
public:
  explicit FileDescriptor(int fd = -1) : fd_(fd) {}
  FileDescriptor(FileDescriptor &&other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  FileDescriptor &operator=(FileDescriptor &&other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  FileDescriptor(const FileDescriptor &) = delete;
  FileDescriptor &operator=(const FileDescriptor &) = delete;
  ~FileDescriptor() { reset(); }

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_); // close is not retried on EINTR: Linux frees the descriptor anyway
    fd_ = fd;
  }

private:
  int fd_;
};

// Runs a system call again while a signal interrupts it, so callers see only real results.
template <typename Call> auto retry_on_eintr(Call call) -> decltype(call()) {
  decltype(call()) result;
  do {
    result = call();
  } while (result == -1 && errno == EINTR);
  return result;
}

// EAGAIN means "not now": the socket is non-blocking and has nothing more for us.
inline bool is_not_now(int error) { return error == EAGAIN || error == EWOULDBLOCK; }

// "bind 0.0.0.0:80: Permission denied": the call, the address and the system error.
inline std::string system_error_message(const std::string &what, int error) {
  return what + ": " + std::strerror(error);
}

// Waits for the descriptors. A signal ends the wait early, with no events, so the
// caller can look at its stop flag at once instead of sleeping on.
inline int wait_for_events(std::vector<pollfd> &fds, int timeout_ms) {
  const int ready = ::poll(fds.data(), static_cast<nfds_t>(fds.size()), timeout_ms);
  if (ready < 0 && errno == EINTR) return 0;
  return ready;
}

struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  const sockaddr *get() const { return reinterpret_cast<const sockaddr *>(&storage); }
};

// "1.2.3.4:80" or "[::1]:80".
// The port of an IPv4 or IPv6 address.
inline std::uint16_t port_of(const sockaddr *address) {
  if (address->sa_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6 *>(address)->sin6_port);
  return ntohs(reinterpret_cast<const sockaddr_in *>(address)->sin_port);
}

inline std::string format_endpoint(const sockaddr *address) {
  char host[INET6_ADDRSTRLEN] = "?";
  const bool v6 = address->sa_family == AF_INET6;
  const void *bytes = v6 ? static_cast<const void *>(&reinterpret_cast<const sockaddr_in6 *>(address)->sin6_addr)
                         : static_cast<const void *>(&reinterpret_cast<const sockaddr_in *>(address)->sin_addr);
  ::inet_ntop(address->sa_family, bytes, host, sizeof host);
  const std::string port = std::to_string(port_of(address));
  return v6 ? std::string("[") + host + "]:" + port : std::string(host) + ":" + port;
}

// Accepts "[::1]" as well as "::1", as addresses are often written next to ports.
inline std::string strip_brackets(const std::string &host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') return host.substr(1, host.size() - 2);
  return host;
}

#ifndef HERMES_NO_RESOLVER

// A numeric address first, then a name: a static binary in an empty image has no
// resolver, and numeric addresses need none.
inline SocketAddress resolve(const std::string &host, std::uint16_t port, int socket_type, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = socket_type;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo *found = nullptr;
  const std::string name = strip_brackets(host);
  const std::string service = std::to_string(port);
  int status = ::getaddrinfo(name.c_str(), service.c_str(), &hints, &found);
  if (status == EAI_NONAME) {
    hints.ai_flags &= ~AI_NUMERICHOST;
    status = ::getaddrinfo(name.c_str(), service.c_str(), &hints, &found);
  }
  if (status != 0) throw SocketError("cannot resolve address \"" + host + "\": " + ::gai_strerror(status));
  // A name such as localhost may stand for ::1 and 127.0.0.1: the IPv4 address is taken,
  // because Hermes listens on 0.0.0.0 by default, and UDP would lose every datagram
  // sent to an address nobody listens on without a word.
  const addrinfo *chosen = found;
  for (const addrinfo *candidate = found; candidate; candidate = candidate->ai_next)
    if (candidate->ai_family == AF_INET) {
      chosen = candidate;
      break;
    }
  SocketAddress address;
  std::memcpy(&address.storage, chosen->ai_addr, chosen->ai_addrlen);
  address.length = chosen->ai_addrlen;
  ::freeaddrinfo(found);
  return address;
}

#else // HERMES_NO_RESOLVER

// Numeric addresses only: without getaddrinfo, a static build holds none of the C
// library's resolver, nor the dynamic loader its NSS modules need.
inline SocketAddress resolve(const std::string &host, std::uint16_t port, int, bool) {
  const std::string name = strip_brackets(host);
  SocketAddress address;
  sockaddr_in v4{};
  sockaddr_in6 v6{};
  if (::inet_pton(AF_INET, name.c_str(), &v4.sin_addr) == 1) {
    v4.sin_family = AF_INET;
    v4.sin_port = htons(port);
    std::memcpy(&address.storage, &v4, sizeof v4);
    address.length = sizeof v4;
  } else if (::inet_pton(AF_INET6, name.c_str(), &v6.sin6_addr) == 1) {
    v6.sin6_family = AF_INET6;
    v6.sin6_port = htons(port);
    std::memcpy(&address.storage, &v6, sizeof v6);
    address.length = sizeof v6;
  } else {
    throw SocketError("cannot resolve address \"" + host + "\": this build takes numeric addresses only (HERMES_NO_RESOLVER)");
  }
  return address;
}

#endif // HERMES_NO_RESOLVER

// The address a socket is bound to; nullopt when the kernel cannot tell.
inline std::optional<SocketAddress> local_address(int fd) {
  SocketAddress address;
  address.length = sizeof address.storage;
  if (::getsockname(fd, reinterpret_cast<sockaddr *>(&address.storage), &address.length) != 0) return std::nullopt;
  return address;
}

inline std::string local_endpoint(int fd) {
  const auto address = local_address(fd);
  return address ? format_endpoint(address->get()) : "?";
}

inline FileDescriptor open_socket(const SocketAddress &address, int socket_type, const std::string &what) {
  FileDescriptor fd(::socket(address.storage.ss_family, socket_type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) throw SocketError(system_error_message("socket " + what, errno));
  return fd;
}

inline void bind_socket(const FileDescriptor &fd, const SocketAddress &address, const std::string &what) {
  if (::bind(fd.get(), address.get(), address.length) != 0)
    throw SocketError(system_error_message("bind " + what + " " + format_endpoint(address.get()), errno));
}

// A burst larger than the receive buffer is lost in the kernel, so ask for a large one:
// SO_RCVBUFFORCE passes the system's cap (net.core.rmem_max) where we may, SO_RCVBUF
// gets what the cap allows elsewhere.
inline FileDescriptor open_udp_listener(const std::string &host, std::uint16_t port, int receive_buffer) {
  const SocketAddress address = resolve(host, port, SOCK_DGRAM, true);
  FileDescriptor fd = open_socket(address, SOCK_DGRAM, "udp");
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUFFORCE, &receive_buffer, sizeof receive_buffer) != 0)
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
  bind_socket(fd, address, "udp");
  return fd;
}

// The kernel's count of datagrams it dropped on a socket, as SO_MEMINFO tells it when
// asked (Linux 4.12 and later; not under qemu-user, which does not pass it on).
inline std::optional<std::uint32_t> kernel_drop_counter(int fd) {
  std::array<std::uint32_t, SK_MEMINFO_VARS> info{};
  socklen_t length = sizeof info;
  if (::getsockopt(fd, SOL_SOCKET, SO_MEMINFO, info.data(), &length) != 0 || length <= SK_MEMINFO_DROPS * sizeof info[0])
    return std::nullopt;
  return info[SK_MEMINFO_DROPS];
}

// The datagrams the kernel dropped on the UDP socket, from its counter, which wraps at
// 2^32 (the difference between two readings does not). Where the kernel tells it when
// asked (SO_MEMINFO), it is asked when the figure is wanted, and once a second so that no
// wrap goes unseen: nothing per datagram. Older kernels attach it to every datagram
// instead (SO_RXQ_OVFL), which costs about a tenth of a datagram's CPU; only they pay it.
class KernelDrops {
public:
  explicit KernelDrops(int fd) : fd_(fd) {
    const int on = 1;
    carried_ = !kernel_drop_counter(fd) && ::setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &on, sizeof on) == 0;
  }
  bool carried() const { return carried_; } // then receive with ReceiveBatch's room for it
  void note_carried(std::uint32_t counter) { fold(counter); }
  void ask() {
    if (const auto counter = asked()) fold(*counter);
  }
  std::uint64_t total() const { // as of now, changing nothing
    const auto counter = asked();
    return counter ? total_ + static_cast<std::uint32_t>(*counter - last_) : total_;
  }

private:
  std::optional<std::uint32_t> asked() const { return carried_ ? std::nullopt : kernel_drop_counter(fd_); }
  void fold(std::uint32_t counter) {
    total_ += static_cast<std::uint32_t>(counter - last_);
    last_ = counter;
  }
  int fd_;
  bool carried_ = false;
  std::uint32_t last_ = 0;
  std::uint64_t total_ = 0;
};

inline int receive_buffer_size(int fd) {
  int bytes = 0;
  socklen_t length = sizeof bytes;
  ::getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, &length);
  return bytes / 2; // Linux reports twice what it grants, the other half for its bookkeeping
}

// Where recvmmsg() puts a batch of datagrams: one slot of HERMES_MAX_DATAGRAM_SIZE each,
// and room for each one's sender and, on kernels that attach it, drop counter.
class ReceiveBatch {
public:
  ReceiveBatch() : data_(new char[HERMES_RECEIVE_BATCH * std::size_t{HERMES_MAX_DATAGRAM_SIZE}]) {
    for (std::size_t i = 0; i < HERMES_RECEIVE_BATCH; ++i) {
      chunks_[i] = {data_.get() + i * HERMES_MAX_DATAGRAM_SIZE, HERMES_MAX_DATAGRAM_SIZE};
      messages_[i].msg_hdr.msg_iov = &chunks_[i];
      messages_[i].msg_hdr.msg_iovlen = 1;
    }
  }
  ReceiveBatch(const ReceiveBatch &) = delete; // the messages point into it
  ReceiveBatch &operator=(const ReceiveBatch &) = delete;

  // Receives what is waiting, up to `wanted` datagrams (at most a batch); returns how
  // many, 0 when nothing is. With `senders`, source(i) tells who sent each; with
  // `drop_counters`, drop_counter(i) what the kernel attached. Only the fields the
  // kernel writes are set again each time.
  int receive(int fd, int wanted, bool senders = false, bool drop_counters = false) {
    const unsigned count = static_cast<unsigned>(std::clamp(wanted, 0, HERMES_RECEIVE_BATCH));
    for (std::size_t i = 0; i < count; ++i) {
      messages_[i].msg_hdr.msg_name = senders ? &sources_[i] : nullptr;
      messages_[i].msg_hdr.msg_namelen = senders ? sizeof sources_[i] : 0;
      messages_[i].msg_hdr.msg_control = drop_counters ? controls_[i].data() : nullptr;
      messages_[i].msg_hdr.msg_controllen = drop_counters ? controls_[i].size() : 0;
    }
    const int got = retry_on_eintr([&] { return ::recvmmsg(fd, messages_.data(), count, MSG_DONTWAIT, nullptr); });
    return got > 0 ? got : 0;
  }

  std::string_view datagram(int i) const {
    return {data_.get() + static_cast<std::size_t>(i) * HERMES_MAX_DATAGRAM_SIZE, messages_[static_cast<std::size_t>(i)].msg_len};
  }
  bool truncated(int i) const { return messages_[static_cast<std::size_t>(i)].msg_hdr.msg_flags & MSG_TRUNC; }
  // The sender's address, as long as source_length(i) says (0: none told).
  const sockaddr *source(int i) const { return reinterpret_cast<const sockaddr *>(&sources_[static_cast<std::size_t>(i)]); }
  socklen_t source_length(int i) const { return messages_[static_cast<std::size_t>(i)].msg_hdr.msg_namelen; }

  // The kernel's drop counter, if it came with datagram i (SO_RXQ_OVFL).
  std::optional<std::uint32_t> drop_counter(int i) {
    msghdr &header = messages_[static_cast<std::size_t>(i)].msg_hdr;
    for (cmsghdr *c = CMSG_FIRSTHDR(&header); c; c = CMSG_NXTHDR(&header, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SO_RXQ_OVFL) continue;
      std::uint32_t dropped = 0;
      std::memcpy(&dropped, CMSG_DATA(c), sizeof dropped);
      return dropped;
    }
    return std::nullopt;
  }

private:
  std::unique_ptr<char[]> data_; // not zeroed: only the slots a burst fills become resident
  std::array<mmsghdr, HERMES_RECEIVE_BATCH> messages_{};
  std::array<iovec, HERMES_RECEIVE_BATCH> chunks_{};
  std::array<sockaddr_in6, HERMES_RECEIVE_BATCH> sources_{}; // UDP senders, IPv4 or IPv6; a unix one is cut short
  std::array<std::array<char, CMSG_SPACE(sizeof(std::uint32_t))>, HERMES_RECEIVE_BATCH> controls_{};
};

// Datagrams copied out of a ReceiveBatch to be applied later, in the order they came,
// within HERMES_RENDER_HOLD_BYTES. Each one's bookkeeping counts against that budget
// too, so that a flood of empty datagrams is bounded as well. Its memory is reused.
class HeldDatagrams {
  struct Entry;

public:
  enum class Source { udp, unix_socket };
  static constexpr std::size_t bookkeeping_bytes = 32; // each one's Entry, counted against the budget

  // How many datagrams surely fit the budget still, each as long as a datagram may be.
  std::size_t room() const {
    const std::size_t budget = HERMES_RENDER_HOLD_BYTES;
    return cost_ < budget ? (budget - cost_) / (HERMES_MAX_DATAGRAM_SIZE + bookkeeping_bytes) : 0;
  }
  std::size_t cost() const { return cost_; } // bytes of the budget in use

  void hold(std::string_view datagram, bool truncated, Source source) {
    entries_.push_back({bytes_.size(), datagram.size(), truncated, source});
    bytes_ += datagram;
    cost_ += datagram.size() + bookkeeping_bytes;
  }

  // Calls take(datagram, truncated, source) for each, oldest first, and forgets them.
  template <typename Take> void release(Take &&take) {
    for (const Entry &entry : entries_)
      take(std::string_view(bytes_).substr(entry.offset, entry.length), entry.truncated, entry.source);
    entries_.clear();
    bytes_.clear();
    cost_ = 0;
  }

private:
  struct Entry {
    std::size_t offset, length;
    bool truncated;
    Source source;
  };
  static_assert(sizeof(Entry) <= bookkeeping_bytes, "the bookkeeping counted must cover an entry");
  std::string bytes_;
  std::vector<Entry> entries_;
  std::size_t cost_ = 0;
};

inline FileDescriptor open_tcp_listener(const std::string &host, std::uint16_t port, const std::string &what = "http") {
  const SocketAddress address = resolve(host, port, SOCK_STREAM, true);
  FileDescriptor fd = open_socket(address, SOCK_STREAM, what);
  // A restarted daemon must bind again at once, while old connections sit in TIME_WAIT.
  const int on = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  bind_socket(fd, address, what);
  if (::listen(fd.get(), HERMES_LISTEN_BACKLOG) != 0)
    throw SocketError(system_error_message("listen " + what + " " + format_endpoint(address.get()), errno));
  return fd;
}

// A unix datagram socket bound to a path, which it removes when it closes. A socket file
// left by a daemon that died is removed first; any other file at the path is an error.
class UnixSocket {
public:
  UnixSocket(const std::string &path, unsigned mode) : path_(path) {
    if (path.empty()) return;
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.size() >= sizeof address.sun_path)
      throw SocketError("unix socket " + path + ": longer than " + std::to_string(sizeof address.sun_path - 1) + " bytes");
    std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
    struct stat existing {};
    if (::lstat(path.c_str(), &existing) == 0) {
      if (!S_ISSOCK(existing.st_mode)) throw SocketError("unix socket " + path + ": a file that is not a socket is there");
      ::unlink(path.c_str());
    }
    fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd_) throw SocketError(system_error_message("socket unix " + path, errno));
    if (::bind(fd_.get(), reinterpret_cast<const sockaddr *>(&address), sizeof address) != 0)
      throw SocketError(system_error_message("bind unix " + path, errno));
    if (::chmod(path.c_str(), static_cast<mode_t>(mode)) != 0) {
      const int error = errno;
      ::unlink(path.c_str());
      throw SocketError(system_error_message("chmod unix " + path, error));
    }
    bound_ = true;
  }
  UnixSocket(const UnixSocket &) = delete;
  UnixSocket &operator=(const UnixSocket &) = delete;
  ~UnixSocket() {
    if (bound_) ::unlink(path_.c_str());
  }
  int get() const { return fd_.get(); }
  const std::string &path() const { return path_; }

private:
  std::string path_;
  FileDescriptor fd_;
  bool bound_ = false;
};

inline std::uint16_t local_port(int fd) {
  const auto address = local_address(fd);
  return address ? port_of(address->get()) : 0;
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: TLS ========================================================================
//
// With HERMES_TLS (and mbedTLS 2.28 linked: -lmbedtls -lmbedx509 -lmbedcrypto), one TLS
// stream over a non-blocking socket, for either side: the HTTP front end serves with it,
// and a client (remote write) connects with it. A TlsContext holds what streams are made
// with (certificates, key, CAs, the settings) and is shared by them, so that a reload
// makes a new context while open streams keep theirs. A stream is stepped, never waits:
// each call does what the socket allows and says what it waits for, for poll().
//
//     auto context = TlsContext::for_client({});          // the system's CA bundle
//     TlsStream stream(context, fd, "metrics.example");   // fd: connected, O_NONBLOCK
//     while (!stream.handshake() && !stream.failed()) poll_for(fd, stream.poll_events());
//     stream.write(...), stream.read(...), stream.close();
//
// TLS 1.2 is the least either side speaks (mbedTLS 2.28 speaks no 1.3), with ECDHE key
// exchange and AEAD ciphers only; renegotiation is refused.

namespace hermes {
namespace detail {

// What a client stream trusts and shows: the CAs its peer's certificate must chain to,
// and its own certificate and key when the server asks for one (both or neither).
// insecure_skip_verify trusts any certificate under any name: the traffic is encrypted,
// but anyone on the path may read it.
struct TlsClientSettings {
  std::string ca_file = HERMES_TLS_CA_BUNDLE;
  std::string cert_file;
  std::string key_file;
  bool insecure_skip_verify = false;
};

// What a server stream shows and asks for: its certificate chain (the leaf first, then
// the intermediates, all sent), its key, and when client_ca_file is set, a client
// certificate signed by one of those CAs, without which the handshake fails.
struct TlsServerSettings {
  std::string cert_file;
  std::string key_file;
  std::string client_ca_file;
};

} // namespace detail
} // namespace hermes

#ifdef HERMES_TLS

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include <ctime>

namespace hermes {
namespace detail {

class TlsStream;

class TlsContext {
public:
  // Throw ConfigError naming the file and the problem: unreadable, not PEM, a key that
  // does not match the certificate, a certificate that has expired.
  static std::shared_ptr<const TlsContext> for_server(const TlsServerSettings &settings);
  static std::shared_ptr<const TlsContext> for_client(const TlsClientSettings &settings);
  TlsContext(const TlsContext &) = delete;
  TlsContext &operator=(const TlsContext &) = delete;
  ~TlsContext();

  // When its own certificate (the leaf) expires, in seconds since the epoch; 0 without one.
  double certificate_expiry_seconds() const { return expiry_seconds_; }
  // The heap its certificates, CAs and key take, as the memory budget counts them: each
  // certificate's DER three times (mbedTLS keeps a copy, and the names and extensions it
  // parses into lists, with malloc's overhead, take about twice as much) and its struct,
  // beside the context itself. Debian's bundle: 514 KB of heap, 602 KB counted.
  std::size_t held_bytes() const;

private:
  explicit TlsContext(int endpoint);
  void load_chain(const std::string &path);
  void load_key(const std::string &path, const std::string &cert_path);
  void load_cas(const std::string &path);
  friend class TlsStream;

  mbedtls_entropy_context entropy_;
  mbedtls_ctr_drbg_context random_;
  mbedtls_x509_crt chain_, cas_;
  mbedtls_pk_context key_;
  mbedtls_ssl_config config_;
  double expiry_seconds_ = 0;
};

// What a stream's last step waits for.
enum class TlsWait { nothing, readable, writable };

// One TLS connection over a socket it does not own. Neither copied nor moved: mbedTLS
// holds its address.
class TlsStream {
public:
  // The server side of an accepted socket.
  TlsStream(std::shared_ptr<const TlsContext> context, int fd);
  // The client side of a connected socket: `host` is sent as SNI and checked against the
  // server's certificate, a name against its DNS names, an IPv4 or IPv6 address against
  // its IP addresses (which mbedTLS 2.28 does not check, so Hermes does).
  TlsStream(std::shared_ptr<const TlsContext> context, int fd, const std::string &host);
  TlsStream(const TlsStream &) = delete;
  TlsStream &operator=(const TlsStream &) = delete;
  ~TlsStream() { mbedtls_ssl_free(&ssl_); }

  // One step of the handshake: true once it is done; false while it waits (wait()) or
  // when it failed (failed()).
  bool handshake();
  // Up to `size` bytes read or written: their count, 0 from read() when the peer ended
  // the stream, -1 while it waits (wait()) or when it failed (failed()). A write that
  // waited must be called again with the same bytes.
  std::ptrdiff_t read(char *data, std::size_t size);
  std::ptrdiff_t write(const char *data, std::size_t size);
  // Sends close_notify, the end of what this side writes; false while it waits.
  bool close();

  bool handshake_done() const { return handshake_done_; }
  bool failed() const { return !error_.empty(); }
  const std::string &error() const { return error_; } // what failed, in mbedTLS' words
  TlsWait wait() const { return wait_; }
  short poll_events() const { return wait_ == TlsWait::writable ? short(POLLOUT) : short(POLLIN); }

private:
  TlsStream(std::shared_ptr<const TlsContext> context, int fd, int);
  bool settle(int result);
  static int send_to(void *stream, const unsigned char *data, std::size_t size);
  static int receive_from(void *stream, unsigned char *data, std::size_t size);
  static int check_ip_address(void *stream, mbedtls_x509_crt *certificate, int depth, std::uint32_t *flags);

  std::shared_ptr<const TlsContext> context_;
  int fd_;
  mbedtls_ssl_context ssl_;
  std::string ip_address_; // a client's host when it is an address: 4 or 16 bytes
  bool handshake_done_ = false;
  TlsWait wait_ = TlsWait::nothing;
  std::string error_;
};

// mbedTLS' text for an error code, such as "SSL - No client certification received from the client".
inline std::string tls_error_text(int code) {
  char text[160];
  mbedtls_strerror(code, text, sizeof text);
  return text;
}

// The ciphers a review accepts: forward secrecy (ECDHE) and authenticated encryption
// (GCM, ChaCha20-Poly1305), as Go's and Mozilla's "intermediate" lists.
// ChaCha20-Poly1305 first: mbedTLS 2.28 runs GCM's hash 16 bytes a call even with AES-NI,
// and a scrape of 100k series (3 MB) took 21 ms of CPU with ChaCha20 against 27 to 28
// with AES-128-GCM (make bench); boards without AES instructions gain more.
inline const int tls_cipher_suites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,       MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,       MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    0};

// The key exchange's curves, X25519 first: a handshake takes a third less CPU than with
// P-256, whose table mbedTLS makes anew for every handshake (make bench).
inline const mbedtls_ecp_group_id tls_curves[] = {MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1,
                                                  MBEDTLS_ECP_DP_SECP384R1, MBEDTLS_ECP_DP_NONE};

// An X.509 time in seconds since the epoch (UTC).
inline double x509_seconds(const mbedtls_x509_time &time) {
  std::tm parts{};
  parts.tm_year = time.year - 1900, parts.tm_mon = time.mon - 1, parts.tm_mday = time.day;
  parts.tm_hour = time.hour, parts.tm_min = time.min, parts.tm_sec = time.sec;
  return static_cast<double>(::timegm(&parts));
}

// A PEM file's text with the NUL that mbedTLS' parsers count; ConfigError when it cannot be read.
inline std::string read_pem_file(const std::string &path, const char *what) {
  std::string text;
  if (const int error = read_file(path.c_str(), HERMES_MAX_CONFIG_SIZE, text))
    throw ConfigError(std::string(what) + " " + path + ": cannot read: " + std::strerror(error));
  if (text.empty()) throw ConfigError(std::string(what) + " " + path + ": empty");
  text.push_back('\0');
  return text;
}

inline TlsContext::TlsContext(int endpoint) {
  mbedtls_entropy_init(&entropy_);
  mbedtls_ctr_drbg_init(&random_);
  mbedtls_x509_crt_init(&chain_);
  mbedtls_x509_crt_init(&cas_);
  mbedtls_pk_init(&key_);
  mbedtls_ssl_config_init(&config_);
  static const char personal[] = "hermes";
  if (const int error = mbedtls_ctr_drbg_seed(&random_, mbedtls_entropy_func, &entropy_,
                                              reinterpret_cast<const unsigned char *>(personal), sizeof personal - 1))
    throw ConfigError("TLS: cannot seed the random generator: " + tls_error_text(error));
  mbedtls_ssl_config_defaults(&config_, endpoint, MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
  mbedtls_ssl_conf_rng(&config_, mbedtls_ctr_drbg_random, &random_);
  mbedtls_ssl_conf_min_version(&config_, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3); // TLS 1.2
  mbedtls_ssl_conf_ciphersuites(&config_, tls_cipher_suites);
  mbedtls_ssl_conf_curves(&config_, tls_curves);
  mbedtls_ssl_conf_renegotiation(&config_, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
}

inline TlsContext::~TlsContext() {
  mbedtls_ssl_config_free(&config_);
  mbedtls_pk_free(&key_);
  mbedtls_x509_crt_free(&cas_);
  mbedtls_x509_crt_free(&chain_);
  mbedtls_ctr_drbg_free(&random_);
  mbedtls_entropy_free(&entropy_);
}

inline void TlsContext::load_chain(const std::string &path) {
  const std::string text = read_pem_file(path, "TLS certificate file");
  const int result = mbedtls_x509_crt_parse(&chain_, reinterpret_cast<const unsigned char *>(text.data()), text.size());
  if (result != 0)
    throw ConfigError("TLS certificate file " + path + ": " +
                      (result > 0 ? std::to_string(result) + " certificates in it cannot be read" : tls_error_text(result)));
  if (mbedtls_x509_time_is_past(&chain_.valid_to)) {
    char date[32];
    std::snprintf(date, sizeof date, "%04d-%02d-%02d %02d:%02d:%02d UTC", chain_.valid_to.year, chain_.valid_to.mon,
                  chain_.valid_to.day, chain_.valid_to.hour, chain_.valid_to.min, chain_.valid_to.sec);
    throw ConfigError("TLS certificate file " + path + ": the certificate expired on " + date);
  }
  expiry_seconds_ = x509_seconds(chain_.valid_to);
}

inline void TlsContext::load_key(const std::string &path, const std::string &cert_path) {
  const std::string text = read_pem_file(path, "TLS key file");
  const int result = mbedtls_pk_parse_key(&key_, reinterpret_cast<const unsigned char *>(text.data()), text.size(), nullptr, 0);
  if (result != 0) throw ConfigError("TLS key file " + path + ": not an unencrypted private key: " + tls_error_text(result));
  if (mbedtls_pk_check_pair(&chain_.pk, &key_) != 0)
    throw ConfigError("TLS key file " + path + ": the key does not match the certificate in " + cert_path);
  if (const int error = mbedtls_ssl_conf_own_cert(&config_, &chain_, &key_))
    throw ConfigError("TLS key file " + path + ": " + tls_error_text(error));
}

// A bundle may hold certificates mbedTLS cannot read (the system's does); those it can
// are enough.
inline void TlsContext::load_cas(const std::string &path) {
  const std::string text = read_pem_file(path, "TLS CA file");
  const int result = mbedtls_x509_crt_parse(&cas_, reinterpret_cast<const unsigned char *>(text.data()), text.size());
  if (result < 0 || cas_.version == 0)
    throw ConfigError("TLS CA file " + path + ": no certificate in it: " + tls_error_text(result < 0 ? result : MBEDTLS_ERR_X509_INVALID_FORMAT));
  mbedtls_ssl_conf_ca_chain(&config_, &cas_, nullptr);
}

inline std::shared_ptr<const TlsContext> TlsContext::for_server(const TlsServerSettings &settings) {
  std::shared_ptr<TlsContext> context(new TlsContext(MBEDTLS_SSL_IS_SERVER));
  context->load_chain(settings.cert_file);
  context->load_key(settings.key_file, settings.cert_file);
  if (!settings.client_ca_file.empty()) {
    context->load_cas(settings.client_ca_file);
    mbedtls_ssl_conf_authmode(&context->config_, MBEDTLS_SSL_VERIFY_REQUIRED);
  } else {
    mbedtls_ssl_conf_authmode(&context->config_, MBEDTLS_SSL_VERIFY_NONE);
  }
  return context;
}

inline std::shared_ptr<const TlsContext> TlsContext::for_client(const TlsClientSettings &settings) {
  std::shared_ptr<TlsContext> context(new TlsContext(MBEDTLS_SSL_IS_CLIENT));
  if (settings.insecure_skip_verify) {
    mbedtls_ssl_conf_authmode(&context->config_, MBEDTLS_SSL_VERIFY_NONE);
  } else {
    context->load_cas(settings.ca_file);
    mbedtls_ssl_conf_authmode(&context->config_, MBEDTLS_SSL_VERIFY_REQUIRED);
  }
  if (settings.cert_file.empty() != settings.key_file.empty())
    throw ConfigError("TLS client certificate: a certificate file and a key file go together");
  if (!settings.cert_file.empty()) {
    context->load_chain(settings.cert_file);
    context->load_key(settings.key_file, settings.cert_file);
  }
  return context;
}

inline std::size_t TlsContext::held_bytes() const {
  std::size_t total = sizeof(TlsContext) + 4096; // the random generator's and the key's state besides
  for (const mbedtls_x509_crt *list : {&chain_, &cas_})
    for (const mbedtls_x509_crt *certificate = list; certificate && certificate->version != 0; certificate = certificate->next)
      total += sizeof(mbedtls_x509_crt) + 3 * certificate->raw.len;
  return total;
}

inline TlsStream::TlsStream(std::shared_ptr<const TlsContext> context, int fd, int) : context_(std::move(context)), fd_(fd) {
  mbedtls_ssl_init(&ssl_);
  if (const int error = mbedtls_ssl_setup(&ssl_, &context_->config_)) error_ = tls_error_text(error);
  mbedtls_ssl_set_bio(&ssl_, this, send_to, receive_from, nullptr);
}

inline TlsStream::TlsStream(std::shared_ptr<const TlsContext> context, int fd) : TlsStream(std::move(context), fd, 0) {}

inline TlsStream::TlsStream(std::shared_ptr<const TlsContext> context, int fd, const std::string &host)
    : TlsStream(std::move(context), fd, 0) {
  unsigned char address[16];
  if (::inet_pton(AF_INET, host.c_str(), address) == 1) ip_address_.assign(reinterpret_cast<char *>(address), 4);
  else if (::inet_pton(AF_INET6, host.c_str(), address) == 1) ip_address_.assign(reinterpret_cast<char *>(address), 16);
  if (!ip_address_.empty()) mbedtls_ssl_set_verify(&ssl_, check_ip_address, this); // no SNI for an address (RFC 6066)
  else if (const int error = mbedtls_ssl_set_hostname(&ssl_, host.c_str())) error_ = tls_error_text(error);
}

inline bool TlsStream::handshake() {
  if (handshake_done_ || failed()) return handshake_done_;
  if (!settle(mbedtls_ssl_handshake(&ssl_))) return false;
  handshake_done_ = true;
  return true;
}

inline std::ptrdiff_t TlsStream::read(char *data, std::size_t size) {
  if (failed()) return -1;
  const int result = mbedtls_ssl_read(&ssl_, reinterpret_cast<unsigned char *>(data), size);
  if (result == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || result == 0) return wait_ = TlsWait::nothing, 0;
  return settle(result) ? result : -1;
}

inline std::ptrdiff_t TlsStream::write(const char *data, std::size_t size) {
  if (failed()) return -1;
  const int result = mbedtls_ssl_write(&ssl_, reinterpret_cast<const unsigned char *>(data), size);
  return settle(result) ? result : -1;
}

inline bool TlsStream::close() { return failed() || settle(mbedtls_ssl_close_notify(&ssl_)); }

// Whether a call succeeded; when not, what it waits for or why it failed. A peer that
// verified badly is told why in words (the verification flags), not as a code.
inline bool TlsStream::settle(int result) {
  wait_ = TlsWait::nothing;
  if (result >= 0) return true;
  if (result == MBEDTLS_ERR_SSL_WANT_READ) wait_ = TlsWait::readable;
  else if (result == MBEDTLS_ERR_SSL_WANT_WRITE) wait_ = TlsWait::writable;
  else if (result == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
    char text[512];
    mbedtls_x509_crt_verify_info(text, sizeof text, "", mbedtls_ssl_get_verify_result(&ssl_));
    error_ = "certificate verification failed: ";
    for (const std::string_view line : split(text, '\n')) // one line per problem
      if (!line.empty()) error_.append(line).append("; ");
    error_.resize(error_.size() - 2);
  } else error_ = tls_error_text(result);
  return false;
}

inline int TlsStream::send_to(void *stream, const unsigned char *data, std::size_t size) {
  const int fd = static_cast<TlsStream *>(stream)->fd_;
  const ssize_t sent = retry_on_eintr([&] { return ::send(fd, data, size, MSG_NOSIGNAL); });
  if (sent >= 0) return static_cast<int>(sent);
  return is_not_now(errno) ? MBEDTLS_ERR_SSL_WANT_WRITE : MBEDTLS_ERR_NET_SEND_FAILED;
}

inline int TlsStream::receive_from(void *stream, unsigned char *data, std::size_t size) {
  const int fd = static_cast<TlsStream *>(stream)->fd_;
  const ssize_t got = retry_on_eintr([&] { return ::recv(fd, data, size, 0); });
  if (got >= 0) return static_cast<int>(got); // 0: the peer closed
  return is_not_now(errno) ? MBEDTLS_ERR_SSL_WANT_READ : MBEDTLS_ERR_NET_RECV_FAILED;
}

// Whether a certificate's subjectAltName extension lists `address` (4 or 16 bytes) as an
// iPAddress ([7] in GeneralName): mbedTLS 2.28 keeps only DNS names of that extension,
// so it is read here from the certificate's DER.
inline bool certificate_lists_address(const mbedtls_x509_crt &certificate, std::string_view address) {
  unsigned char *p = certificate.v3_ext.p, *end = p + certificate.v3_ext.len;
  std::size_t length = 0;
  if (!p || mbedtls_asn1_get_tag(&p, end, &length, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0) return false;
  end = p + length;
  while (p < end) {
    if (mbedtls_asn1_get_tag(&p, end, &length, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0) return false;
    unsigned char *extension_end = p + length;
    mbedtls_x509_buf oid{};
    if (mbedtls_asn1_get_tag(&p, extension_end, &oid.len, MBEDTLS_ASN1_OID) != 0) return false;
    oid.p = p, p += oid.len;
    if (MBEDTLS_OID_CMP(MBEDTLS_OID_SUBJECT_ALT_NAME, &oid) != 0) {
      p = extension_end;
      continue;
    }
    int critical = 0;
    mbedtls_asn1_get_bool(&p, extension_end, &critical); // optional
    if (mbedtls_asn1_get_tag(&p, extension_end, &length, MBEDTLS_ASN1_OCTET_STRING) != 0 ||
        mbedtls_asn1_get_tag(&p, extension_end, &length, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0)
      return false;
    while (p < extension_end) {
      const unsigned char tag = *p++;
      if (mbedtls_asn1_get_len(&p, extension_end, &length) != 0) return false;
      if (tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7) && std::string_view(reinterpret_cast<char *>(p), length) == address)
        return true;
      p += length;
    }
    return false;
  }
  return false;
}

inline int TlsStream::check_ip_address(void *stream, mbedtls_x509_crt *certificate, int depth, std::uint32_t *flags) {
  if (depth == 0 && !certificate_lists_address(*certificate, static_cast<TlsStream *>(stream)->ip_address_))
    *flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
  return 0;
}

} // namespace detail
} // namespace hermes

#endif // HERMES_TLS

// ===== DETAIL: HTTP =======================================================================

namespace hermes {
namespace detail {

struct HttpRequest {
  std::string method;
  std::string path; // the target without its query string
  std::string version;
  std::vector<std::pair<std::string, std::string>> headers;
};

// Where the request head ends (just past the blank line), or npos while it is incomplete.
// Bare LF line ends are accepted as well as CRLF, as robust servers do.
inline std::size_t find_head_end(std::string_view buffer) {
  for (std::size_t i = buffer.find('\n'); i != std::string_view::npos; i = buffer.find('\n', i + 1)) {
    if (i + 1 < buffer.size() && buffer[i + 1] == '\n') return i + 2;
    if (i + 2 < buffer.size() && buffer[i + 1] == '\r' && buffer[i + 2] == '\n') return i + 3;
  }
  return std::string_view::npos;
}

inline bool is_token_char(char c) {
  return is_ascii_alnum(c) || (c != '\0' && std::strchr("!#$%&'*+-.^_`|~", c) != nullptr);
}

inline bool is_token(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), is_token_char);
}

// Splits the head into lines without their CR.
inline std::vector<std::string_view> head_lines(std::string_view head) {
  std::vector<std::string_view> lines;
  while (!head.empty()) {
    const std::size_t end = head.find('\n');
    std::string_view line = head.substr(0, end);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    if (end == std::string_view::npos) break;
    head.remove_prefix(end + 1);
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

inline std::string_view trim(std::string_view text) {
  const std::size_t first = text.find_first_not_of(" \t");
  if (first == std::string_view::npos) return {};
  return text.substr(first, text.find_last_not_of(" \t") - first + 1);
}

// "GET /metrics?x=1 HTTP/1.1": method, target and version; absolute-form targets
// (http://host/metrics) are reduced to their path.
inline bool parse_request_line(std::string_view line, HttpRequest &request) {
  const std::size_t first_space = line.find(' ');
  const std::size_t last_space = line.rfind(' ');
  if (first_space == std::string_view::npos || first_space == last_space) return false;
  const std::string_view method = line.substr(0, first_space);
  std::string_view target = line.substr(first_space + 1, last_space - first_space - 1);
  const std::string_view version = line.substr(last_space + 1);
  if (!is_token(method) || target.empty() || target.find(' ') != std::string_view::npos) return false;
  const bool version_ok = version.size() == 8 && starts_with(version, "HTTP/") && is_ascii_digit(version[5]) &&
                          version[6] == '.' && is_ascii_digit(version[7]);
  if (!version_ok) return false;
  if (starts_with(target, "http://") || starts_with(target, "https://")) {
    const std::size_t path_start = target.find('/', target.find("//") + 2);
    target = path_start == std::string_view::npos ? std::string_view("/") : target.substr(path_start);
  }
  if (target.front() != '/' && target != "*") return false;
  request.method = std::string(method);
  request.path = std::string(target.substr(0, target.find('?')));
  request.version = std::string(version);
  return true;
}

// Parses a complete request head; nullopt when it is malformed (answered 400).
inline std::optional<HttpRequest> parse_request_head(std::string_view head) {
  const std::vector<std::string_view> lines = head_lines(head);
  HttpRequest request;
  if (lines.empty() || !parse_request_line(lines[0], request)) return std::nullopt;
  for (std::size_t i = 1; i < lines.size(); ++i) {
    const std::size_t colon = lines[i].find(':');
    // No colon, a folded line or white space before the colon: RFC 9112 says reject.
    if (colon == std::string_view::npos || !is_token(lines[i].substr(0, colon))) return std::nullopt;
    request.headers.emplace_back(lowercase(lines[i].substr(0, colon)), std::string(trim(lines[i].substr(colon + 1))));
  }
  return request;
}

// Every status Hermes sends, with its reason phrase; hermes_http_requests_total lists
// each from the start.
struct HttpStatus {
  int code;
  const char *text;
};
constexpr HttpStatus http_statuses[] = {
    {200, "OK"},          {202, "Accepted"}, {400, "Bad Request"}, {401, "Unauthorized"}, {403, "Forbidden"},
    {404, "Not Found"},   {405, "Method Not Allowed"}, {411, "Length Required"}, {413, "Payload Too Large"},
    {415, "Unsupported Media Type"}, {431, "Request Header Fields Too Large"},   {503, "Service Unavailable"},
    {505, "HTTP Version Not Supported"}, {507, "Insufficient Storage"}};

inline const char *status_text(int status) {
  for (const HttpStatus &known : http_statuses)
    if (known.code == status) return known.text;
  return "Unknown"; // never sent: every response Hermes makes has a status of the table
}

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::shared_ptr<const std::string> shared_body; // when set, the body, which other responses may share
  bool head_only = false; // HEAD: the headers of GET, no body
  bool gzip = false;      // the body is gzip: Content-Encoding: gzip
  const std::string &text() const { return shared_body ? *shared_body : body; }
};

// The status line and headers, up to the blank line: HTTP/1.1 to an HTTP/1.1 request, and
// whether the connection stays open in the words of the request's version (HTTP/1.1
// keeps it unless told "close", 1.0 closes it unless told "keep-alive"). A 503 asks to
// come back in a second.
inline std::string response_head(const HttpResponse &response, bool http11 = false, bool keep_alive = false) {
  std::string out = (http11 ? "HTTP/1.1 " : "HTTP/1.0 ") + std::to_string(response.status) + " " + status_text(response.status) + "\r\n";
  out += "Content-Type: " + response.content_type + "\r\n";
  if (response.gzip) out += "Content-Encoding: gzip\r\n";
  out += "Content-Length: " + std::to_string(response.text().size()) + "\r\n";
  if (response.status == 401) out += "WWW-Authenticate: Bearer\r\n";
  if (response.status == 405) out += "Allow: GET, HEAD\r\n";
  if (response.status == 503) out += "Retry-After: 1\r\n";
  if (!keep_alive) out += "Connection: close\r\n";
  else if (!http11) out += "Connection: keep-alive\r\n";
  return out + "\r\n";
}

inline std::string serialize_response(const HttpResponse &response) {
  return response_head(response) + (response.head_only ? std::string() : response.text());
}

// `head_only` for a HEAD request: the headers of the GET answer, without its body.
inline HttpResponse error_response(int status, bool head_only = false) {
  HttpResponse response;
  response.status = status;
  response.head_only = head_only;
  response.body = std::to_string(status) + " " + status_text(status) + "\n";
  return response;
}

inline const char *index_page() {
  return "Hermes " HERMES_VERSION_STR ", a push gateway for Prometheus metrics.\n\n"
         "/metrics     the metrics, in Prometheus text format\n"
         "/-/healthy   200 while the process runs\n"
         "/-/ready     200 while it accepts samples\n";
}

inline std::string_view header(const HttpRequest &request, std::string_view name) {
  for (const auto &entry : request.headers)
    if (entry.first == name) return entry.second;
  return {};
}

// Reads a bearer token file into `token`: its bytes without the line end that ends it.
// Returns "", or what is wrong: the file cannot be read, is empty, too long, or holds
// a byte that an Authorization header cannot carry (only visible ASCII can).
inline std::string read_token_file(const std::string &path, std::string &token, const std::string &what = "http token file") {
  std::string text;
  if (const int error = read_file(path.c_str(), HERMES_MAX_TOKEN_SIZE + 3, text))
    return what + " " + path + ": cannot read: " + std::strerror(error);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  if (text.empty()) return what + " " + path + ": empty: it must hold the bearer token";
  if (text.size() > HERMES_MAX_TOKEN_SIZE)
    return what + " " + path + ": longer than " + std::to_string(HERMES_MAX_TOKEN_SIZE) + " bytes";
  if (!std::all_of(text.begin(), text.end(), [](char c) { return c > 0x20 && c < 0x7f; }))
    return what + " " + path + ": holds a space, a control character or a byte past ASCII, which a bearer token cannot";
  token = std::move(text);
  return "";
}

// Whether two strings are equal, in a time that depends on the length of `secret` only:
// where the first difference lies stays hidden from a client that measures the answer.
inline bool equal_in_constant_time(std::string_view given, std::string_view secret) {
  unsigned difference = given.size() == secret.size() ? 0 : 1;
  for (std::size_t i = 0; i < secret.size(); ++i)
    difference |= static_cast<unsigned char>(secret[i]) ^ static_cast<unsigned char>(i < given.size() ? given[i] : 0);
  return difference == 0;
}

// Whether an Authorization header is "Bearer <token>" (the scheme in any case, RFC 9110).
inline bool bearer_matches(std::string_view authorization, std::string_view token) {
  constexpr std::string_view scheme = "bearer ";
  if (authorization.size() <= scheme.size()) return false;
  for (std::size_t i = 0; i < scheme.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != scheme[i]) return false;
  return equal_in_constant_time(trim(authorization.substr(scheme.size())), token);
}

// Whether a request's Connection headers name `option` ("close", "keep-alive"): a
// comma-separated list, in any case (RFC 9110, section 7.6.1).
inline bool names_connection_option(const HttpRequest &request, std::string_view option) {
  for (const auto &[name, value] : request.headers) {
    if (name != "connection") continue;
    for (std::string_view rest = value; !rest.empty();) {
      const std::size_t comma = rest.find(',');
      if (lowercase(trim(rest.substr(0, comma))) == option) return true;
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    }
  }
  return false;
}

// Whether the request is HTTP/1.1 or a later 1.x, whose answers say HTTP/1.1.
inline bool is_http11(const HttpRequest &request) { return request.version[5] == '1' && request.version[7] >= '1'; }

// Whether the connection may carry another request after this one (RFC 9112, section
// 9.3): HTTP/1.1 unless it says "close", HTTP/1.0 only when it says "keep-alive", and
// never when a body that Hermes has not read follows the head (its bytes would be read
// as the next request).
inline bool keeps_connection(const HttpRequest &request, bool body_read) {
  if (request.version[5] != '1') return false;
  if (!body_read) {
    const std::string_view length = header(request, "content-length");
    if (!header(request, "transfer-encoding").empty() || (!length.empty() && length != "0")) return false;
  }
  return is_http11(request) ? !names_connection_option(request, "close") : names_connection_option(request, "keep-alive");
}

// Why the request's body framing is ambiguous, or "": more than one Content-Length or
// Transfer-Encoding, an empty Transfer-Encoding, both at once, or Transfer-Encoding in
// HTTP/1.0 (RFC 9112, section 6). On a kept-alive connection, or behind a proxy that
// frames the body another way, such a body could be read as the next request; it is
// answered 400 and the connection closes.
inline std::string framing_problem(const HttpRequest &request) {
  std::size_t lengths = 0, encodings = 0;
  bool empty_encoding = false;
  for (const auto &[name, value] : request.headers) {
    lengths += name == "content-length";
    if (name == "transfer-encoding") ++encodings, empty_encoding |= value.empty();
  }
  if (lengths > 1) return "more than one Content-Length";
  if (encodings > 1 || empty_encoding) return "more than one Transfer-Encoding, or an empty one";
  if (lengths == 1 && encodings == 1) return "both Content-Length and Transfer-Encoding";
  if (encodings == 1 && !is_http11(request)) return "Transfer-Encoding in an HTTP/1.0 request";
  return "";
}

// The paths a bearer token guards; the probes' paths stay open.
inline bool needs_token(const std::string &path) { return path == "/metrics" || path == "/"; }

// Answers one parsed request; `render(format)` gives the /metrics body when it is needed,
// or null when there is no memory for one (503). OpenMetrics or protobuf is served when
// the client prefers it and the flag of the same name allows it.
template <typename Render>
HttpResponse route(const HttpRequest &request, bool openmetrics, bool protobuf, Render &&render) {
  if (request.version[5] != '1') return error_response(505);
  if (request.method != "GET" && request.method != "HEAD") return error_response(405);
  HttpResponse response;
  response.head_only = request.method == "HEAD";
  if (request.path == "/metrics") {
    const Format format = negotiate_format(header(request, "accept"), openmetrics, protobuf);
    response.content_type = content_type(format);
    response.shared_body = render(format);
    if (!response.shared_body) {
      const bool head_only = response.head_only;
      response = error_response(503);
      response.head_only = head_only;
    }
  } else if (request.path == "/-/healthy") {
    response.body = "Hermes is Healthy.\n";
  } else if (request.path == "/-/ready") {
    response.body = "Hermes is Ready.\n";
  } else if (request.path == "/") {
    response.body = index_page();
  } else {
    const bool head_only = response.head_only;
    response = error_response(404);
    response.head_only = head_only;
  }
  return response;
}

// What the front end hands the requests of the Pushgateway API to: whether a request is
// one (seen once its head is read), and its answer once its body is read too. Empty
// `takes`: no push API.
struct PushEndpoint {
  std::function<bool(const HttpRequest &)> takes;
  std::function<HttpResponse(const HttpRequest &, std::string_view body)> answer;
  std::size_t max_body = 0;  // bytes; a longer body is answered 413
  std::string token_file;    // a bearer token pushes must carry; empty: none
};

// One HTTP client: each request head as it arrives, then its response as it leaves,
// then, when the connection persists, the next request. After its last response it
// lingers: reads and drops what the client still sends until the client closes, because
// closing a socket with unread input resets the connection and can destroy the response
// before the client has read it.
struct Connection {
  enum class Phase { reading, writing, lingering, done };
  FileDescriptor fd;
  std::uint64_t sequence = 0; // order of accept; the lowest is the oldest
  bool refused = false;       // admitted over HERMES_MAX_CONNECTIONS: answered 503 once its head is read
  bool forbidden = false;     // from outside Options::http_allow: answered 403 once its head is read
  bool heard = false;         // has sent something: on its way (a TLS handshake takes round trips)
  bool idle = false;          // kept open after an answer, no byte of the next request yet: the first to give way
  bool ready = false;         // has input poll() does not report: bytes sent ahead, or TLS bytes already decrypted
  bool keep_alive = false;    // the request being answered leaves the connection open for the next
  bool http11 = false;        // the request being answered is HTTP/1.1: so is its answer
  std::chrono::steady_clock::time_point last_heard{}; // when it last had bytes for us: waiting on us is not idling
  Phase phase = Phase::reading;
  std::string input;
  std::string head; // the response's, sent before its body: the body is not copied
  std::string body;
  std::shared_ptr<const std::string> shared_body; // a /metrics body, in place of `body`
  std::size_t sent = 0; // of head and body together
  std::chrono::steady_clock::time_point deadline;
#ifdef HERMES_TLS
  std::unique_ptr<TlsStream> tls; // on a TLS port: what the socket's bytes go through
#endif
  std::optional<HttpRequest> push; // a push whose body is being read, after its head in `input`
  std::size_t body_start = 0, body_length = 0; // the request in `input`: its head, then its body (a push's)
  // A chunked push body is decoded in place as it comes: its data at body_start, the
  // chunks not yet decoded from chunk_at on.
  bool chunked = false, last_chunk = false;
  std::size_t chunk_at = 0;
  MemoryBudget *budget = nullptr; // where the push body's bytes were taken from
  std::size_t body_taken = 0;
  ~Connection() {
    if (budget) budget->give_back(body_taken);
  }
};

} // namespace detail
} // namespace hermes

// ===== DETAIL: REMOTE WRITE CONFIG ========================================================

namespace hermes {
namespace detail {

inline std::string base64(std::string_view bytes) {
  static constexpr char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (std::size_t i = 0; i < bytes.size(); i += 3) {
    std::uint32_t group = static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i])) << 16;
    if (i + 1 < bytes.size()) group |= static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8;
    if (i + 2 < bytes.size()) group |= static_cast<unsigned char>(bytes[i + 2]);
    for (std::size_t k = 0; k < 4; ++k)
      out += k <= bytes.size() - i ? digits[(group >> (18 - 6 * k)) & 63] : '=';
  }
  return out;
}

// Headers a receiver's protocol or the auth settings own: a config may not set them.
inline bool reserved_remote_write_header(std::string_view name) {
  static constexpr const char *reserved[] = {"authorization", "host", "content-encoding", "content-type", "content-length",
                                             "x-prometheus-remote-write-version", "user-agent", "connection",
                                             "transfer-encoding", "keep-alive", "te", "upgrade"};
  const std::string lower = lowercase(name);
  return std::any_of(std::begin(reserved), std::end(reserved), [&](const char *r) { return lower == r; });
}

// What a target's TLS client trusts and shows: its tls block, or the system's CAs.
inline TlsClientSettings remote_write_tls_settings(const RemoteWriteConfig &target) {
  TlsClientSettings settings;
  if (!target.tls) return settings;
  if (!target.tls->ca_file.empty()) settings.ca_file = target.tls->ca_file;
  settings.cert_file = target.tls->cert_file, settings.key_file = target.tls->key_file;
  settings.insecure_skip_verify = target.tls->insecure_skip_verify;
  return settings;
}

// Reads the "remote_write" list, or the one target of the environment; every error names
// the origin (the file, or the variable), the place and the problem. Files named are read
// here: a secret that cannot be read is a config error at start, not a failing send.
class RemoteWriteReader {
public:
  explicit RemoteWriteReader(std::string origin) : origin_(std::move(origin)) {}

  std::vector<RemoteWriteConfig> read_list(const picojson::value &value) {
    if (!value.is<picojson::array>()) fail("remote_write", std::string("expected a list of receivers, got ") + json_type_name(value));
    std::vector<RemoteWriteConfig> targets;
    const auto &items = value.get<picojson::array>();
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::string place = "remote_write[" + std::to_string(i) + "]";
      targets.push_back(read_target(items[i], place));
      for (std::size_t j = 0; j < i; ++j)
        if (targets[j].url == targets.back().url) fail(place + ".url", "the same URL as remote_write[" + std::to_string(j) + "]");
    }
    return targets;
  }

  RemoteWriteConfig read_target(const picojson::value &value, const std::string &place) {
    if (!value.is<picojson::object>()) fail(place, std::string("expected an object, got ") + json_type_name(value));
    const auto &object = value.get<picojson::object>();
    static constexpr const char *known[] = {"url", "interval_seconds", "timeout_seconds", "max_samples_per_send",
                                            "max_backoff_seconds", "bearer_token_file", "basic_auth", "headers",
                                            "external_labels", "tls"};
    reject_unknown(object, place, known);
    RemoteWriteConfig target;
    const auto *url = member(object, "url");
    if (!url) fail(place + ".url", "missing: the receiver's URL, such as http://prometheus:9090/api/v1/write");
    target.url = text_at(*url, place + ".url");
    check_url(target.url, place + ".url");
    read_seconds(object, place, "interval_seconds", target.interval_seconds);
    read_seconds(object, place, "timeout_seconds", target.timeout_seconds);
    read_seconds(object, place, "max_backoff_seconds", target.max_backoff_seconds);
    if (const auto *batch = member(object, "max_samples_per_send")) {
      const double n = batch->is<double>() ? batch->get<double>() : -1;
      if (!(n >= 1 && n <= 1e7 && n == std::floor(n)))
        fail(place + ".max_samples_per_send", quote_json(*batch) + " is not a whole number from 1 to 10000000");
      target.max_samples_per_send = static_cast<std::size_t>(n);
    }
    read_auth(object, place, target);
    if (const auto *headers = member(object, "headers")) target.headers = read_headers(*headers, place + ".headers");
    if (const auto *labels = member(object, "external_labels"))
      target.external_labels = read_external_labels(*labels, place + ".external_labels");
    if (const auto *tls = member(object, "tls")) target.tls = read_tls(*tls, place + ".tls");
#ifdef HERMES_TLS
    // The certificates, key and CAs as the sender will load them: a file that is no PEM,
    // a key that does not match, an expired certificate fail here, not at the first send.
    RemoteWriteUrl url_parts;
    parse_remote_write_url(target.url, url_parts);
    if (target.tls || url_parts.scheme == "https") {
      try {
        TlsContext::for_client(remote_write_tls_settings(target));
      } catch (const ConfigError &error) {
        fail(target.tls ? place + ".tls" : place + ".url", std::string(target.tls ? "" : "https trusts the system's CAs: ") + error.what());
      }
    }
#endif
    return target;
  }

  [[noreturn]] void fail(const std::string &place, const std::string &problem) const {
    throw ConfigError(origin_ + ": " + (place.empty() ? "" : place + ": ") + problem);
  }

  void check_url(const std::string &text, const std::string &place) const {
    RemoteWriteUrl url;
    if (const std::string problem = parse_remote_write_url(text, url); !problem.empty()) fail(place, "\"" + text + "\": " + problem);
#ifndef HERMES_TLS
    if (url.scheme == "https")
      fail(place, "\"" + text + "\": https needs TLS, which is not compiled into this build of Hermes (HERMES_TLS)");
#endif
  }

  // The secret of a file: its bytes without the line end that ends it, printable ASCII.
  std::string read_secret(const std::string &path, const std::string &place) const {
    std::string secret;
    const std::string problem = read_token_file(path, secret);
    if (!problem.empty()) fail(place, problem.substr(std::strlen("http ")));
    return secret;
  }

private:
  template <std::size_t N> void reject_unknown(const picojson::object &object, const std::string &place, const char *const (&known)[N]) const {
    for (const auto &entry : object) {
      if (std::any_of(known, known + N, [&](const char *k) { return entry.first == k; })) continue;
      std::string expected;
      for (const char *k : known) expected += (expected.empty() ? "" : ", ") + std::string(k);
      fail(place + "." + entry.first, "unknown key (expected one of: " + expected + ")");
    }
  }

  std::string text_at(const picojson::value &value, const std::string &place) const {
    if (!value.is<std::string>()) fail(place, std::string("expected a string, got ") + json_type_name(value));
    return value.get<std::string>();
  }

  void read_seconds(const picojson::object &object, const std::string &place, const char *key, double &seconds) const {
    const auto *value = member(object, key);
    if (!value) return;
    if (!value->is<double>() || !(value->get<double>() > 0) || !(value->get<double>() <= 86400))
      fail(place + "." + key, quote_json(*value) + " is not a number of seconds above 0 and at most 86400");
    seconds = value->get<double>();
  }

  // A basic_auth password: the file's bytes without the line end that ends it. Base64
  // carries any byte, so spaces and UTF-8 are kept, as Prometheus keeps them; only control
  // characters, which no password holds, are refused, as in the username.
  std::string read_password(const std::string &path, const std::string &place) const {
    std::string password;
    if (const int error = read_file(path.c_str(), HERMES_MAX_TOKEN_SIZE + 3, password))
      fail(place, "password file " + path + ": cannot read: " + std::strerror(error));
    while (!password.empty() && (password.back() == '\n' || password.back() == '\r')) password.pop_back();
    if (password.empty()) fail(place, "password file " + path + ": empty: it must hold the password");
    if (password.size() > HERMES_MAX_TOKEN_SIZE)
      fail(place, "password file " + path + ": longer than " + std::to_string(HERMES_MAX_TOKEN_SIZE) + " bytes");
    if (std::any_of(password.begin(), password.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }))
      fail(place, "password file " + path + ": holds a control character, which a password cannot");
    return password;
  }

  void read_auth(const picojson::object &object, const std::string &place, RemoteWriteConfig &target) const {
    if (const auto *file = member(object, "bearer_token_file")) {
      target.bearer_token_file = text_at(*file, place + ".bearer_token_file");
      target.authorization = "Bearer " + read_secret(target.bearer_token_file, place + ".bearer_token_file");
    }
    const auto *basic = member(object, "basic_auth");
    if (!basic) return;
    const std::string at = place + ".basic_auth";
    if (!target.bearer_token_file.empty()) fail(at, "beside bearer_token_file: a request carries one Authorization");
    if (!basic->is<picojson::object>()) fail(at, std::string("expected an object, got ") + json_type_name(*basic));
    const auto &fields = basic->get<picojson::object>();
    static constexpr const char *known[] = {"username", "password_file"};
    reject_unknown(fields, at, known);
    const auto *user = member(fields, "username");
    const auto *file = member(fields, "password_file");
    if (!user) fail(at + ".username", "missing");
    if (!file) fail(at + ".password_file", "missing: the password is read from a file, never from the config");
    target.basic_auth_username = text_at(*user, at + ".username");
    if (target.basic_auth_username.find(':') != std::string::npos || target.basic_auth_username.empty() ||
        !std::all_of(target.basic_auth_username.begin(), target.basic_auth_username.end(), [](char c) { return c >= 0x20 && c != 0x7f; }))
      fail(at + ".username", "must be non-empty, without ':' or control characters");
    target.basic_auth_password_file = text_at(*file, at + ".password_file");
    const std::string password = read_password(target.basic_auth_password_file, at + ".password_file");
    target.authorization = "Basic " + base64(target.basic_auth_username + ":" + password);
  }

  std::vector<std::pair<std::string, std::string>> read_headers(const picojson::value &value, const std::string &place) const {
    if (!value.is<picojson::object>()) fail(place, std::string("expected an object, got ") + json_type_name(value));
    std::vector<std::pair<std::string, std::string>> headers;
    for (const auto &[name, text] : value.get<picojson::object>()) {
      if (!is_token(name)) fail(place + "." + name, "not a header name");
      if (reserved_remote_write_header(name)) fail(place + "." + name, "set by Hermes itself; use bearer_token_file or basic_auth for Authorization");
      const std::string header_value = text_at(text, place + "." + name);
      if (!std::all_of(header_value.begin(), header_value.end(), [](char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }))
        fail(place + "." + name, "holds a control character, which a header cannot");
      headers.emplace_back(name, header_value);
    }
    return headers;
  }

  std::vector<std::pair<std::string, std::string>> read_external_labels(const picojson::value &value, const std::string &place) const {
    if (!value.is<picojson::object>()) fail(place, std::string("expected an object, got ") + json_type_name(value));
    std::vector<std::pair<std::string, std::string>> labels;
    for (const auto &[name, text] : value.get<picojson::object>()) { // picojson's object is a std::map: sorted
      if (!is_label_name(name) || name.rfind("__", 0) == 0) fail(place + "." + name, "not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not __*)");
      labels.emplace_back(name, text_at(text, place + "." + name));
      if (labels.back().second.empty()) fail(place + "." + name, "empty: a label with an empty value is no label");
    }
    return labels;
  }

  RemoteWriteTls read_tls(const picojson::value &value, const std::string &place) const {
    if (!value.is<picojson::object>()) fail(place, std::string("expected an object, got ") + json_type_name(value));
    const auto &fields = value.get<picojson::object>();
    static constexpr const char *known[] = {"ca_file", "cert_file", "key_file", "server_name", "insecure_skip_verify"};
    reject_unknown(fields, place, known);
    RemoteWriteTls tls;
    const auto file = [&](const char *key, std::string &path) {
      const auto *item = member(fields, key);
      if (!item) return;
      path = text_at(*item, place + "." + key);
      std::string ignored;
      if (const int error = read_file(path.c_str(), 1, ignored)) fail(place + "." + key, path + ": cannot read: " + std::strerror(error));
    };
    file("ca_file", tls.ca_file);
    file("cert_file", tls.cert_file);
    file("key_file", tls.key_file);
    if (tls.cert_file.empty() != tls.key_file.empty()) fail(place, "cert_file and key_file go together: a client certificate needs its key");
    if (const auto *name = member(fields, "server_name")) tls.server_name = text_at(*name, place + ".server_name");
    if (const auto *skip = member(fields, "insecure_skip_verify")) {
      if (!skip->is<bool>()) fail(place + ".insecure_skip_verify", std::string("expected true or false, got ") + json_type_name(*skip));
      tls.insecure_skip_verify = skip->get<bool>();
    }
#ifndef HERMES_TLS
    fail(place, "TLS is not compiled into this build of Hermes (HERMES_TLS); its settings cannot be used");
#endif
    return tls;
  }

  std::string origin_;
};

inline std::vector<RemoteWriteConfig> read_remote_write(const picojson::value &value, const std::string &origin) {
  return RemoteWriteReader(origin).read_list(value);
}

} // namespace detail

inline std::string parse_remote_write_url(std::string_view text, RemoteWriteUrl &url) {
  const std::size_t scheme_end = text.find("://");
  if (scheme_end == std::string_view::npos) return "not a URL (expected http://host[:port]/path)";
  RemoteWriteUrl parsed;
  parsed.scheme = detail::lowercase(text.substr(0, scheme_end));
  if (parsed.scheme != "http" && parsed.scheme != "https") return "scheme \"" + parsed.scheme + "\" is neither http nor https";
  std::string_view rest = text.substr(scheme_end + 3);
  const std::size_t path_start = std::min(rest.find('/'), rest.find('?'));
  std::string_view authority = rest.substr(0, path_start);
  parsed.path = path_start == std::string_view::npos ? "/" : std::string(rest.substr(path_start));
  if (parsed.path[0] == '?') parsed.path.insert(0, "/");
  if (const std::size_t hash = parsed.path.find('#'); hash != std::string::npos) parsed.path.resize(hash);
  if (authority.find('@') != std::string_view::npos) return "user info in the URL; use basic_auth with a password_file";
  std::string_view port_text;
  if (!authority.empty() && authority[0] == '[') {
    const std::size_t close = authority.find(']');
    if (close == std::string_view::npos) return "an IPv6 address without its closing ]";
    parsed.host = std::string(authority.substr(1, close - 1));
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty() && after[0] != ':') return "junk after the IPv6 address";
    if (!after.empty()) port_text = after.substr(1);
  } else {
    const std::size_t colon = authority.rfind(':');
    parsed.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (parsed.host.empty()) return "no host";
  if (!std::all_of(parsed.host.begin(), parsed.host.end(), [](char c) { return detail::is_ascii_alnum(c) || std::strchr("-._:%", c); }))
    return "host \"" + parsed.host + "\" holds a character a host name cannot";
  if (!std::all_of(parsed.path.begin(), parsed.path.end(), [](char c) { return c > 0x20 && c < 0x7f; }))
    return "the path holds a space, a control character or a byte past ASCII (percent-encode it)";
  const auto port = parse_port(port_text);
  if (!port_text.empty() && (!port || *port == 0)) return "port \"" + std::string(port_text) + "\" is not a number from 1 to 65535";
  parsed.port = !port_text.empty() ? *port : parsed.scheme == "https" ? 443 : 80;
  url = std::move(parsed);
  return "";
}

} // namespace hermes

// ===== DETAIL: PUSH GROUPING KEY ==========================================================
//
// The Pushgateway API's paths: /metrics/job/<JOB>{/<NAME>/<VALUE>}, where a name
// suffixed @base64 (job@base64 too) carries its value in base64url, as Pushgateway
// 1.5.1 reads them. Errors are worded as Pushgateway words them, so that a client's log
// says the same whichever gateway answered.

namespace hermes {
namespace detail {

// Label pairs sorted by name: a grouping key, or the labels of one pushed sample.
using PushLabels = std::vector<std::pair<std::string, std::string>>;

// A string as Go's %q writes it: double quotes, with \" \\ and the C escapes, other
// control bytes and bytes that are not UTF-8 as \xNN.
inline std::string go_quote(std::string_view text) {
  static constexpr char escapes[] = "\a\b\f\n\r\t\v", letters[] = "abfnrtv";
  std::string out = "\"";
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte == '"' || byte == '\\') {
      out += '\\', out += static_cast<char>(byte);
    } else if (byte != 0 && std::strchr(escapes, byte) != nullptr) {
      out += '\\', out += letters[std::strchr(escapes, byte) - escapes];
    } else if (byte >= 0x20 && byte < 0x7f) {
      out += static_cast<char>(byte);
    } else {
      std::size_t length = byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 1;
      if (byte >= 0x80 && i + length <= text.size() && is_valid_utf8(text.substr(i, length))) {
        out += text.substr(i, length);
        i += length - 1;
        continue;
      }
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", byte);
      out += hex;
    }
  }
  return out + '"';
}

// A byte as Go's %q writes a byte: a quoted character, read as the code point of that value.
inline std::string go_quote_byte(unsigned char byte) {
  if (byte == '\'') return "'\\''";
  if (byte == '"') return "'\"'";
  std::string quoted = go_quote(std::string(1, static_cast<char>(byte < 0x80 ? byte : 0)));
  if (byte >= 0x80) {
    char text[12];
    if (byte < 0xA0 || byte == 0xAD) {
      std::snprintf(text, sizeof text, "\\u%04x", byte);
    } else {
      text[0] = static_cast<char>(0xC0 | (byte >> 6)), text[1] = static_cast<char>(0x80 | (byte & 0x3F)), text[2] = '\0';
    }
    quoted = std::string("\"") + text + "\"";
  }
  quoted.front() = quoted.back() = '\'';
  return quoted;
}

// The path with %XX escapes decoded, as Go's net/url does before routing; nullopt for
// a bad escape.
inline std::optional<std::string> percent_decoded(std::string_view path) {
  std::string out;
  out.reserve(path.size());
  for (std::size_t i = 0; i < path.size(); ++i) {
    if (path[i] != '%') {
      out += path[i];
      continue;
    }
    const auto digit = [&](std::size_t at) -> int {
      if (at >= path.size()) return -1;
      const char c = path[at];
      return is_ascii_digit(c) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
    };
    const int high = digit(i + 1), low = digit(i + 2);
    if (high < 0 || low < 0) return std::nullopt;
    out += static_cast<char>(high * 16 + low);
    i += 2;
  }
  return out;
}

// base64url without padding (trailing '=' ignored), as Go's base64.RawURLEncoding
// decodes it: the bytes, or the offset of the first bad input byte as `bad_at`, with
// `out` then holding what came before the quantum that failed.
inline bool decode_base64url(std::string_view text, std::string &out, std::size_t &bad_at) {
  while (!text.empty() && text.back() == '=') text.remove_suffix(1);
  out.clear();
  std::uint32_t bits = 0;
  std::size_t held = 0;
  std::string quantum;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const int value = is_ascii_upper(c) ? c - 'A' : is_ascii_lower(c) ? c - 'a' + 26 : is_ascii_digit(c) ? c - '0' + 52
                      : c == '-' ? 62 : c == '_' ? 63 : -1;
    if (value < 0) return bad_at = i, false;
    bits = bits << 6 | static_cast<std::uint32_t>(value);
    if (++held == 4) {
      out += static_cast<char>(bits >> 16), out += static_cast<char>(bits >> 8), out += static_cast<char>(bits);
      bits = 0, held = 0;
    }
  }
  if (held == 1) return bad_at = text.size() - 1, false;
  if (held == 2) out += static_cast<char>(bits >> 4);
  if (held == 3) out += static_cast<char>(bits >> 10), out += static_cast<char>(bits >> 2);
  return true;
}

// A grouping key read from a push path: the labels, sorted by name with job among them,
// or what is wrong with the path.
struct GroupingKey {
  PushLabels labels;
  std::string problem; // empty when the key is good
};

inline bool is_push_path(std::string_view path) {
  return starts_with(path, "/metrics/job/") || starts_with(path, "/metrics/job@base64/");
}

// Pushgateway's splitLabels: name/value pairs after the job, each name a label name not
// starting with __, its value base64url when the name ends in @base64.
inline std::string read_grouping_labels(std::string_view rest, std::map<std::string, std::string> &labels) {
  if (rest.size() <= 1) return "";
  const std::vector<std::string_view> parts = split(rest, '/');
  if (parts.size() % 2 == 0) return "odd number of components in label string " + go_quote(rest);
  for (std::size_t i = 1; i + 1 < parts.size(); i += 2) {
    std::string_view name = parts[i];
    const bool base64 = ends_with(name, "@base64");
    if (base64) name.remove_suffix(sizeof "@base64" - 1);
    if (!is_label_name(name) || starts_with(name, "__")) return "improper label name " + go_quote(name);
    std::string value(parts[i + 1]);
    std::size_t bad_at = 0;
    if (base64 && !decode_base64url(parts[i + 1], value, bad_at))
      return "invalid base64 encoding for label " + std::string(name) + "=" + go_quote(parts[i + 1]) +
             ": illegal base64 data at input byte " + std::to_string(bad_at);
    labels[std::string(name)] = std::move(value);
  }
  return "";
}

// Whether path.Clean leaves the decoded path as it is, a trailing slash aside: no empty,
// "." or ".." segment. Pushgateway redirects any other path (301) without taking the
// push, and a client that does not follow (prom-client, whose '/' in a value arrives as
// a separator) loses it unknowingly; Hermes refuses it rather than read shifted labels.
inline bool is_clean_path(std::string_view path) {
  const std::vector<std::string_view> segments = split(path, '/');
  for (std::size_t i = 1; i < segments.size(); ++i)
    if ((segments[i].empty() && i + 1 < segments.size()) || segments[i] == "." || segments[i] == "..") return false;
  return true;
}

inline GroupingKey parse_grouping_key(std::string_view raw_path) {
  GroupingKey key;
  const auto path = percent_decoded(raw_path);
  if (!path) return key.problem = "invalid URL escape in " + go_quote(raw_path), key;
  if (!is_clean_path(*path))
    return key.problem = "the path " + go_quote(*path) + " has an empty, \".\" or \"..\" segment once decoded: " +
                         "send such a value as NAME@base64/BASE64URL", key;
  std::string_view rest = std::string_view(*path).substr(sizeof "/metrics/" - 1);
  const bool base64 = starts_with(rest, "job@base64/");
  rest.remove_prefix(base64 ? sizeof "job@base64/" - 1 : sizeof "job/" - 1);
  const std::size_t slash = rest.find('/');
  std::string job(rest.substr(0, slash));
  rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  std::size_t bad_at = 0;
  if (base64 && !decode_base64url(std::string(job), job, bad_at))
    return key.problem = "invalid base64 encoding in job name " + go_quote(job) + ": illegal base64 data at input byte " +
                         std::to_string(bad_at), key;
  if (job.empty()) return key.problem = "job name is required", key;
  std::map<std::string, std::string> labels;
  key.problem = read_grouping_labels(rest, labels);
  labels["job"] = job;
  key.labels.assign(labels.begin(), labels.end());
  return key;
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: PUSH TEXT FORMAT ===========================================================
//
// A body in the text format 0.0.4, read as Pushgateway 1.5.1 reads it (the Prometheus
// text parser of its time): the same families, samples and labels, and on a bad body
// the same "text format parsing error in line N: ..." message. A state machine over the
// body's bytes, one state per function as there; nothing is applied from a body that fails.

namespace hermes {
namespace detail {

// The families of the Pushgateway API, in the order of metrics.proto's MetricType.
enum class PushType { counter, gauge, summary, untyped, histogram, gauge_histogram, count_ };

inline const char *to_string(PushType type) {
  static constexpr const char *names[] = {"counter", "gauge", "summary", "untyped", "histogram", "gauge_histogram"};
  return name_of(type, names);
}

// One pushed sample: a counter's, gauge's or untyped value, or a summary's or
// histogram's count, sum, and quantiles (quantile, value) or buckets (upper bound,
// cumulative count).
struct PushedMetric {
  PushLabels labels; // sorted by name once the grouping labels are in
  double value = 0;
  double count = 0, sum = 0;
  std::vector<std::pair<double, double>> points;
  std::string native;          // a histogram's native fields (5 to 14 of metrics.proto's Histogram), as pushed
  PushType kind = PushType::count_; // the value it holds; count_: none
  bool has_timestamp = false;
};

struct PushedFamily {
  std::string name;
  std::optional<std::string> help; // absent: no HELP line, as Pushgateway writes it
  std::optional<PushType> type;    // absent until a TYPE line or a sample sets it
  std::vector<PushedMetric> metrics;
};

// Go's strconv.ParseFloat as the text parser calls it: decimal, Inf, Infinity or NaN in
// any case; no hexadecimal, no underscores; a finite number too large is an error.
inline std::optional<double> parse_go_float(std::string_view text) {
  if (text.find_first_of("pP_") != std::string_view::npos || text.empty()) return std::nullopt;
  const bool negative = text[0] == '-';
  std::string_view body = text[0] == '+' || text[0] == '-' ? text.substr(1) : text;
  const std::string word = lowercase(body);
  if (word == "inf" || word == "infinity") return negative ? -HUGE_VAL : HUGE_VAL;
  if (word == "nan" && body.size() == text.size()) return std::nan("");
  std::size_t i = 0, digits = 0;
  long order = 0; // digits before the point, leading zeros aside: how large the number is
  bool leading = true;
  for (; i < body.size() && is_ascii_digit(body[i]); ++i, ++digits)
    if (!(leading = leading && body[i] == '0')) ++order;
  if (i < body.size() && body[i] == '.')
    for (++i; i < body.size() && is_ascii_digit(body[i]); ++i) ++digits;
  if (digits == 0) return std::nullopt;
  long exponent = 0;
  if (i < body.size() && (body[i] == 'e' || body[i] == 'E')) {
    std::size_t k = i + 1;
    const bool minus = k < body.size() && body[k] == '-';
    if (k < body.size() && (body[k] == '+' || body[k] == '-')) ++k;
    if (k == body.size()) return std::nullopt;
    for (; k < body.size(); ++k) {
      if (!is_ascii_digit(body[k])) return std::nullopt;
      exponent = std::min(exponent * 10 + (body[k] - '0'), 100000L);
    }
    exponent = minus ? -exponent : exponent;
    i = body.size();
  }
  if (i != body.size()) return std::nullopt;
  double value = 0;
  const auto result = std::from_chars(body.data(), body.data() + body.size(), value);
  const bool out_of_range = result.ec == std::errc::result_out_of_range;
  if (out_of_range ? order + exponent > 0 : std::isinf(value)) return std::nullopt; // too large: Go says so
  if (out_of_range) value = 0; // below the smallest double: Go reads 0
  return negative ? -value : value;
}

// Go's strconv.ParseInt(text, 10, 64).
inline std::optional<std::int64_t> parse_go_int(std::string_view text) {
  if (!text.empty() && text[0] == '+') text.remove_prefix(1);
  std::int64_t value = 0;
  const auto result = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || result.ec != std::errc() || result.ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

class PushTextParser {
public:
  // The families of `body` by name, or nullopt and error() saying why.
  std::optional<std::map<std::string, PushedFamily>> parse(std::string_view body);
  const std::string &error() const { return error_; }

private:
  enum class Next { line, comment, metric_name, labels, label_name, label_value, value, timestamp, help, type, stop };
  enum class State { ok, end, failed }; // end: the body ended inside a line

  bool read() {
    if (at_ >= body_.size()) return state_ = State::end, false;
    byte_ = static_cast<unsigned char>(body_[at_++]);
    return true;
  }
  bool stopped() const { return state_ != State::ok; }
  Next fail(const std::string &message) {
    state_ = State::failed;
    error_ = "text format parsing error in line " + std::to_string(line_) + ": " + message;
    return Next::stop;
  }
  static bool blank(unsigned char c) { return c == ' ' || c == '\t'; }
  bool skip_blank() {
    while (read() && blank(byte_)) {
    }
    return !stopped();
  }
  bool skip_blank_if_blank() { return blank(byte_) ? skip_blank() : true; }
  bool token_until_white() {
    token_.clear();
    while (!stopped() && !blank(byte_) && byte_ != '\n') {
      token_ += static_cast<char>(byte_);
      read();
    }
    return !stopped();
  }
  bool token_until_newline(bool escapes);
  bool token_as_name(bool metric);
  bool token_as_label_value();
  void set_family();
  bool summary_or_histogram() const {
    return family_->type == PushType::summary || family_->type == PushType::histogram;
  }

  Next step(Next next);
  Next start_of_line();
  Next start_comment();
  Next metric_name();
  Next label_name();
  Next label_value();
  Next value();
  Next timestamp();
  Next help();
  Next type();

  std::string_view body_;
  std::size_t at_ = 0, line_ = 0;
  State state_ = State::ok;
  unsigned char byte_ = 0;
  std::string token_, error_;
  std::map<std::string, PushedFamily> families_;
  PushedFamily *family_ = nullptr;
  PushedMetric metric_;             // the sample being read
  PushedMetric *current_ = nullptr; // where its value goes: itself, or the summary or histogram it joins
  std::map<std::pair<std::string, PushLabels>, std::size_t> joined_; // summaries and histograms by labels but quantile and le
  std::map<std::string, std::string> signature_; // the labels of the sample being read but quantile and le
  std::string label_name_;
  bool special_ = false; // the label is a summary's quantile or a histogram's le
  double quantile_ = NAN, bucket_ = NAN;
  bool is_count_ = false, is_sum_ = false;
};

inline std::optional<std::map<std::string, PushedFamily>> PushTextParser::parse(std::string_view body) {
  body_ = body, at_ = 0, line_ = 0, state_ = State::ok;
  families_.clear(), joined_.clear(), family_ = nullptr;
  for (Next next = Next::line; next != Next::stop;) next = step(next);
  if (state_ == State::end) fail("unexpected end of input stream");
  if (state_ != State::ok) return std::nullopt;
  for (auto it = families_.begin(); it != families_.end();) it = it->second.metrics.empty() ? families_.erase(it) : std::next(it);
  return std::move(families_);
}

inline PushTextParser::Next PushTextParser::step(Next next) {
  switch (next) {
  case Next::line: return start_of_line();
  case Next::comment: return start_comment();
  case Next::metric_name: return metric_name();
  case Next::labels:
    if (summary_or_histogram()) signature_.clear(), quantile_ = NAN, bucket_ = NAN;
    return byte_ == '{' ? Next::label_name : value();
  case Next::label_name: return label_name();
  case Next::label_value: return label_value();
  case Next::value: return value();
  case Next::timestamp: return timestamp();
  case Next::help: return help();
  case Next::type: return type();
  case Next::stop: break;
  }
  return Next::stop;
}

inline PushTextParser::Next PushTextParser::start_of_line() {
  ++line_;
  if (!skip_blank()) {
    if (state_ == State::end) state_ = State::ok; // the body ends between lines: done
    return Next::stop;
  }
  if (byte_ == '#') return Next::comment;
  if (byte_ == '\n') return Next::line;
  return Next::metric_name;
}

// "# HELP name text", "# TYPE name type", or any other comment, skipped.
inline PushTextParser::Next PushTextParser::start_comment() {
  if (!skip_blank()) return Next::stop;
  if (byte_ == '\n') return Next::line;
  if (!token_until_white()) return Next::stop;
  if (byte_ == '\n') return Next::line;
  const std::string keyword = token_;
  if (keyword != "HELP" && keyword != "TYPE") {
    while (byte_ != '\n')
      if (!read()) return Next::stop;
    return Next::line;
  }
  if (!skip_blank() || !token_as_name(true)) return Next::stop;
  if (byte_ == '\n') return Next::line;
  if (!blank(byte_)) return fail("invalid metric name in comment");
  set_family();
  if (!skip_blank()) return Next::stop;
  if (byte_ == '\n') return Next::line;
  return keyword == "HELP" ? Next::help : Next::type;
}

inline PushTextParser::Next PushTextParser::metric_name() {
  if (!token_as_name(true)) return Next::stop;
  if (token_.empty()) return fail("invalid metric name");
  set_family();
  if (!family_->type) family_->type = PushType::untyped;
  metric_ = PushedMetric();
  if (!skip_blank_if_blank()) return Next::stop;
  return Next::labels;
}

inline PushTextParser::Next PushTextParser::label_name() {
  if (!skip_blank()) return Next::stop;
  if (byte_ == '}') return skip_blank() ? value() : Next::stop;
  if (!token_as_name(false)) return Next::stop;
  if (token_.empty()) return fail("invalid label name for metric " + go_quote(family_->name));
  label_name_ = token_;
  if (label_name_ == "__name__") return fail("label name \"__name__\" is reserved");
  const bool special = (family_->type == PushType::summary && label_name_ == "quantile") ||
                       (family_->type == PushType::histogram && label_name_ == "le");
  special_ = special;
  if (!special) metric_.labels.emplace_back(label_name_, std::string());
  if (!skip_blank_if_blank()) return Next::stop;
  if (byte_ != '=') return fail("expected '=' after label name, found " + go_quote_byte(byte_));
  for (std::size_t i = 0; !special && i + 1 < metric_.labels.size(); ++i)
    if (metric_.labels[i].first == label_name_) return fail("duplicate label names for metric " + go_quote(family_->name));
  return Next::label_value;
}

inline PushTextParser::Next PushTextParser::label_value() {
  const bool special = special_;
  if (!skip_blank()) return Next::stop;
  if (byte_ != '"') return fail("expected '\"' at start of label value, found " + go_quote_byte(byte_));
  if (!token_as_label_value()) return Next::stop;
  if (!is_valid_utf8(token_)) return fail("invalid label value " + go_quote(token_));
  if (!special) metric_.labels.back().second = token_;
  if (summary_or_histogram()) {
    if (special) {
      const auto bound = parse_go_float(token_);
      const char *label = family_->type == PushType::summary ? "quantile" : "le";
      if (!bound) return fail(std::string("expected float as value for '") + label + "' label, got " + go_quote(token_));
      (family_->type == PushType::summary ? quantile_ : bucket_) = *bound;
    } else {
      signature_[label_name_] = token_;
    }
  }
  if (!skip_blank()) return Next::stop;
  if (byte_ == ',') return Next::label_name;
  if (byte_ == '}') return skip_blank() ? value() : Next::stop;
  return fail("unexpected end of label value " + go_quote(token_));
}

// The sample's value; a summary's or histogram's line joins the series of the same
// labels read before, as the text parser joins them.
inline PushTextParser::Next PushTextParser::value() {
  current_ = nullptr;
  if (summary_or_histogram()) {
    const auto key = std::make_pair(family_->name, PushLabels(signature_.begin(), signature_.end()));
    const auto found = joined_.find(key);
    if (found != joined_.end()) {
      current_ = &family_->metrics[found->second];
    } else {
      joined_.emplace(key, family_->metrics.size());
    }
  }
  if (!current_) family_->metrics.push_back(std::move(metric_)), current_ = &family_->metrics.back();
  current_->kind = *family_->type;
  if (!token_until_white()) return Next::stop;
  const auto number = parse_go_float(token_);
  if (!number) return fail("expected float as value, got " + go_quote(token_));
  const double value = *number;
  const auto as_count = [](double v) { return v >= 0 ? std::min(v, 0x1p64 - 2048) : 0.0; }; // Go's uint64(v), within range
  switch (*family_->type) {
  case PushType::counter:
  case PushType::gauge:
  case PushType::untyped: current_->value = value; break;
  case PushType::summary:
  case PushType::histogram: {
    const bool summary = family_->type == PushType::summary;
    const double point = summary ? quantile_ : bucket_;
    if (is_count_) {
      current_->count = std::trunc(as_count(value));
    } else if (is_sum_) {
      current_->sum = value;
    } else if (!std::isnan(point)) {
      current_->points.emplace_back(point, summary ? value : std::trunc(as_count(value)));
    }
    break;
  }
  case PushType::gauge_histogram:
  case PushType::count_: return fail("unexpected type for metric name " + go_quote(family_->name));
  }
  return byte_ == '\n' ? Next::line : Next::timestamp;
}

inline PushTextParser::Next PushTextParser::timestamp() {
  if (!skip_blank() || !token_until_white()) return Next::stop;
  if (!parse_go_int(token_)) return fail("expected integer as timestamp, got " + go_quote(token_));
  current_->has_timestamp = true;
  if (!token_until_newline(false)) return Next::stop;
  if (!token_.empty()) return fail("spurious string after timestamp: " + go_quote(token_));
  return Next::line;
}

inline PushTextParser::Next PushTextParser::help() {
  if (family_->help) return fail("second HELP line for metric name " + go_quote(family_->name));
  if (!token_until_newline(true)) return Next::stop;
  family_->help = token_;
  return Next::line;
}

inline PushTextParser::Next PushTextParser::type() {
  if (family_->type) return fail("second TYPE line for metric name " + go_quote(family_->name) + ", or TYPE reported after samples");
  if (!token_until_newline(false)) return Next::stop;
  const std::string word = lowercase(token_);
  for (std::size_t i = 0; i < static_cast<std::size_t>(PushType::count_); ++i)
    if (word == to_string(static_cast<PushType>(i))) return family_->type = static_cast<PushType>(i), Next::line;
  return fail("unknown metric type " + go_quote(token_));
}

// The rest of the line; HELP text with its escapes \\ and \n read.
inline bool PushTextParser::token_until_newline(bool escapes) {
  token_.clear();
  bool escaped = false;
  while (!stopped()) {
    if (escapes && escaped) {
      if (byte_ != '\\' && byte_ != 'n') {
        fail(std::string("invalid escape sequence '\\") + static_cast<char>(byte_) + "'");
        return false;
      }
      token_ += byte_ == 'n' ? '\n' : '\\';
      escaped = false;
    } else if (byte_ == '\n') {
      return true;
    } else if (byte_ == '\\') {
      escaped = true;
    } else {
      token_ += static_cast<char>(byte_);
    }
    read();
  }
  return false;
}

// A metric name ([a-zA-Z_:][a-zA-Z0-9_:]*) or a label name (no colon), from the current
// byte on; empty when it does not start one.
inline bool PushTextParser::token_as_name(bool metric) {
  token_.clear();
  const auto fits = [metric](unsigned char c, bool first) {
    return is_ascii_upper(static_cast<char>(c)) || is_ascii_lower(static_cast<char>(c)) || c == '_' ||
           (metric && c == ':') || (!first && is_ascii_digit(static_cast<char>(c)));
  };
  if (!fits(byte_, true)) return true;
  do {
    token_ += static_cast<char>(byte_);
  } while (read() && fits(byte_, false));
  return !stopped();
}

inline bool PushTextParser::token_as_label_value() {
  token_.clear();
  bool escaped = false;
  while (read()) {
    if (escaped) {
      if (byte_ != '"' && byte_ != '\\' && byte_ != 'n') {
        fail(std::string("invalid escape sequence '\\") + static_cast<char>(byte_) + "'");
        return false;
      }
      token_ += byte_ == 'n' ? '\n' : static_cast<char>(byte_);
      escaped = false;
    } else if (byte_ == '"') {
      return true;
    } else if (byte_ == '\n') {
      fail("label value " + go_quote(token_) + " contains unescaped new-line");
      return false;
    } else if (byte_ == '\\') {
      escaped = true;
    } else {
      token_ += static_cast<char>(byte_);
    }
  }
  return false;
}

// The family a name belongs to: its own, or the summary or histogram whose _count, _sum
// (or _bucket) it is; else a new one.
inline void PushTextParser::set_family() {
  is_count_ = is_sum_ = false;
  if (const auto found = families_.find(token_); found != families_.end()) return void(family_ = &found->second);
  const bool count = token_.size() > 6 && ends_with(token_, "_count"), sum = token_.size() > 4 && ends_with(token_, "_sum");
  const bool bucket = token_.size() > 7 && ends_with(token_, "_bucket");
  const std::string base = token_.substr(0, token_.size() - (count ? 6 : sum ? 4 : bucket ? 7 : 0));
  if (const auto found = families_.find(base); (count || sum || bucket) && found != families_.end()) {
    const auto type = found->second.type;
    if ((type == PushType::summary && !bucket) || type == PushType::histogram) {
      is_count_ = count, is_sum_ = sum;
      return void(family_ = &found->second);
    }
  }
  family_ = &families_[token_];
  family_->name = token_;
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: PUSH PROTOBUF FORMAT =======================================================
//
// A push body in the delimited protobuf format that client_golang's push package sends:
// io.prometheus.client.MetricFamily messages, each after its varint length. Every type,
// native histograms included: a histogram's native fields (schema, zero bucket, spans and
// deltas or counts) are kept as they came and written back as client_golang writes them.
// Every read is bounded: a truncated or hostile body is an error, "unexpected EOF" as
// Pushgateway words a cut one, never a read past its end.

namespace hermes {
namespace detail {

class ProtobufReader {
public:
  explicit ProtobufReader(std::string_view bytes) : bytes_(bytes) {}
  bool done() const { return at_ == bytes_.size(); }
  std::size_t position() const { return at_; }
  std::string_view bytes_between(std::size_t from, std::size_t to) const { return bytes_.substr(from, to - from); }

  bool varint(std::uint64_t &value) {
    value = 0;
    for (unsigned shift = 0; shift < 64 && at_ < bytes_.size(); shift += 7) {
      const auto byte = static_cast<unsigned char>(bytes_[at_++]);
      value |= std::uint64_t{byte & 0x7Fu} << shift;
      if ((byte & 0x80) == 0) return true;
    }
    return false;
  }
  bool fixed(std::size_t size, std::uint64_t &value) {
    if (bytes_.size() - at_ < size) return false;
    value = 0;
    for (std::size_t i = 0; i < size; ++i) value |= std::uint64_t{static_cast<unsigned char>(bytes_[at_ + i])} << (8 * i);
    at_ += size;
    return true;
  }
  bool double_value(std::uint32_t wire, double &value) {
    std::uint64_t bits = 0;
    if (wire != 1 || !fixed(8, bits)) return false;
    std::memcpy(&value, &bits, sizeof value);
    return true;
  }
  bool bytes(std::string_view &out) {
    std::uint64_t length = 0;
    if (!varint(length) || length > bytes_.size() - at_) return false;
    out = bytes_.substr(at_, static_cast<std::size_t>(length));
    at_ += static_cast<std::size_t>(length);
    return true;
  }
  bool field(std::uint32_t &number, std::uint32_t &wire) {
    std::uint64_t tag = 0;
    if (!varint(tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1FFFFFFF) return false;
    number = static_cast<std::uint32_t>(tag >> 3), wire = static_cast<std::uint32_t>(tag & 7);
    return true;
  }
  bool skip(std::uint32_t wire) {
    std::uint64_t ignored = 0;
    std::string_view also_ignored;
    switch (wire) {
    case 0: return varint(ignored);
    case 1: return fixed(8, ignored);
    case 2: return bytes(also_ignored);
    case 5: return fixed(4, ignored);
    default: return false; // groups (3, 4) are not in metrics.proto
    }
  }

private:
  std::string_view bytes_;
  std::size_t at_ = 0;
};

// A field of a message, read by `read(number, wire, reader)` (false: the bytes are bad);
// fields it does not know it skips.
template <typename Read> bool read_message(std::string_view message, Read &&read) {
  ProtobufReader reader(message);
  std::uint32_t number = 0, wire = 0;
  while (!reader.done())
    if (!reader.field(number, wire) || !read(number, wire, reader)) return false;
  return true;
}

// Quantile {quantile = 1, value = 2} or Bucket {cumulative_count = 1, upper_bound = 2,
// cumulative_count_float = 4}: (quantile, value) or (upper bound, count).
inline bool read_point(std::string_view message, bool bucket, std::pair<double, double> &point) {
  return read_message(message, [&](std::uint32_t number, std::uint32_t wire, ProtobufReader &reader) {
    std::uint64_t count = 0;
    if (bucket && number == 1 && wire == 0) return reader.varint(count) && (point.second = static_cast<double>(count), true);
    if (bucket && number == 4) return reader.double_value(wire, point.second);
    if (number == 1 || number == 2) return reader.double_value(wire, (number == 1) != bucket ? point.first : point.second);
    return reader.skip(wire);
  });
}

// A packed repeated field as one field per element, as client_golang writes the deltas
// and counts of a native histogram (metrics.proto does not declare them packed).
inline bool unpack(std::string_view packed, std::uint32_t number, std::uint32_t wire, std::string &out) {
  ProtobufReader reader(packed);
  while (!reader.done()) {
    const std::size_t start = reader.position();
    if (!reader.skip(wire)) return false;
    append_tag(out, number, static_cast<WireType>(wire));
    out.append(reader.bytes_between(start, reader.position()));
  }
  return true;
}

// Summary {sample_count = 1, sample_sum = 2, quantile = 3} or Histogram {sample_count = 1,
// sample_sum = 2, bucket = 3, sample_count_float = 4, the native fields 5 to 14}.
inline bool read_distribution(std::string_view message, bool histogram, PushedMetric &metric) {
  return read_message(message, [&](std::uint32_t number, std::uint32_t wire, ProtobufReader &reader) {
    const std::size_t start = reader.position() - varint_size(std::uint64_t{number} << 3 | wire);
    std::uint64_t count = 0;
    std::string_view point;
    if (number == 1 && wire == 0) return reader.varint(count) && (metric.count = static_cast<double>(count), true);
    if (number == 2) return reader.double_value(wire, metric.sum);
    if (number == 3 && wire == 2) {
      metric.points.emplace_back();
      return reader.bytes(point) && read_point(point, histogram, metric.points.back());
    }
    if (histogram && number == 4) return reader.double_value(wire, metric.count);
    if (!histogram || number < 5 || number > 14) return reader.skip(wire);
    const bool repeated_number = number == 10 || number == 11 || number == 13 || number == 14; // deltas, counts
    if (repeated_number && wire == 2) return reader.bytes(point) && unpack(point, number, number == 11 || number == 14 ? 1 : 0, metric.native);
    if (!reader.skip(wire)) return false;
    metric.native.append(reader.bytes_between(start, reader.position()));
    return true;
  });
}

// Metric {label = 1, gauge = 2, counter = 3, summary = 4, untyped = 5, timestamp_ms = 6,
// histogram = 7}; LabelPair {name = 1, value = 2}.
inline bool read_metric(std::string_view message, PushedMetric &metric) {
  static constexpr PushType kinds[] = {PushType::gauge, PushType::counter, PushType::summary, PushType::untyped};
  return read_message(message, [&](std::uint32_t number, std::uint32_t wire, ProtobufReader &reader) {
    std::string_view inner;
    if (number == 6) return metric.has_timestamp = true, reader.skip(wire);
    if (number == 1 && wire == 2) {
      auto &label = metric.labels.emplace_back();
      return reader.bytes(inner) && read_message(inner, [&](std::uint32_t field, std::uint32_t type, ProtobufReader &pair) {
               std::string_view text;
               if ((field == 1 || field == 2) && type == 2)
                 return pair.bytes(text) && ((field == 1 ? label.first : label.second) = std::string(text), true);
               return pair.skip(type);
             });
    }
    if ((number < 2 || number > 5) && number != 7) return reader.skip(wire);
    if (wire != 2 || !reader.bytes(inner)) return false;
    metric.kind = number == 7 ? PushType::histogram : kinds[number - 2];
    if (metric.kind == PushType::summary || metric.kind == PushType::histogram)
      return read_distribution(inner, metric.kind == PushType::histogram, metric);
    return read_message(inner, [&](std::uint32_t field, std::uint32_t type, ProtobufReader &value) {
      return field == 1 ? value.double_value(type, metric.value) : value.skip(type);
    });
  });
}

// MetricFamily {name = 1, help = 2, type = 3, metric = 4}.
inline bool read_family(std::string_view message, PushedFamily &family) {
  family.type = PushType::counter; // the type's default in metrics.proto
  return read_message(message, [&](std::uint32_t number, std::uint32_t wire, ProtobufReader &reader) {
    std::string_view text;
    std::uint64_t type = 0;
    if ((number == 1 || number == 2) && wire == 2) {
      if (!reader.bytes(text)) return false;
      (number == 1 ? family.name : family.help.emplace()) = std::string(text);
      return true;
    }
    if (number == 3 && wire == 0) {
      if (!reader.varint(type)) return false;
      if (type < static_cast<std::uint64_t>(PushType::count_)) family.type = static_cast<PushType>(type);
      return true;
    }
    if (number == 4 && wire == 2) return reader.bytes(text) && read_metric(text, family.metrics.emplace_back());
    return reader.skip(wire);
  });
}

// The families of a delimited body by name (a later family of a name replaces an
// earlier one, as Pushgateway keeps them), or nullopt and `error`.
inline std::optional<std::map<std::string, PushedFamily>> parse_push_protobuf(std::string_view body, std::string &error) {
  std::map<std::string, PushedFamily> families;
  ProtobufReader stream(body);
  while (!stream.done()) {
    std::string_view message;
    PushedFamily family;
    if (!stream.bytes(message)) return error = "unexpected EOF", std::nullopt;
    if (!read_family(message, family)) return error = "unexpected EOF", std::nullopt; // what Pushgateway says of a cut message
    if (!family.metrics.empty()) families[family.name] = std::move(family);
  }
  return families;
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: PUSH GROUPS ================================================================
//
// The groups pushed over the Pushgateway API, with Pushgateway 1.5.1's semantics: PUT
// replaces a group's families, POST those of the same name, DELETE the group; every
// sample carries the grouping labels (over a pushed label of the same name) and
// instance="" when it has no instance; each group has its push_time_seconds and
// push_failure_time_seconds. A push that would make /metrics inconsistent is refused
// whole and only its failure time is kept. Each group takes its bytes and its room in
// the /metrics bodies from the memory budget, as a series does.

namespace hermes {
namespace detail {

constexpr const char *push_time_name = "push_time_seconds";
constexpr const char *push_failure_name = "push_failure_time_seconds";

// A held sample keeps only its own labels (those the grouping labels do not override,
// sorted): the grouping labels are the group's, once; shown_labels puts them together.
// Each family's samples are held in the order /metrics shows them (pushed_labels_less).
struct PushGroup {
  PushLabels key;                                          // the grouping labels, job among them, sorted
  std::map<std::string, PushedFamily, std::less<>> families; // with the two push_* gauges
  double last_push = 0;                                    // monotonic seconds: when its TTL starts
  std::size_t own_bytes = 0, body_bytes = 0;               // what it took from the budget
};

// What a push or delete answers: an HTTP status and, for a refusal, why.
struct PushOutcome {
  int status = 200;
  std::string message;
};

// A family as one group holds it.
struct HeldFamily {
  const PushGroup *group;
  const PushedFamily *family;
};

// Each family name over the groups: its type, the HELP of its latest push and the groups
// that hold it, so that a push is checked against the others without reading them.
struct PushFamilyIndex {
  PushType type = PushType::untyped;
  std::optional<std::string> help;
  std::vector<HeldFamily> groups;
};

// What a pushed family may add to one /metrics body, in the format that writes the most
// of it; defined with the formatting, which writes it.
inline std::size_t pushed_body_bytes(const PushGroup &group);

using PushLabelViews = std::vector<std::pair<std::string_view, std::string_view>>;

// A label set's FNV-1a hash: each name and value followed by 0xFF, a byte UTF-8 never holds.
inline std::uint64_t labels_hash(const PushLabelViews &labels) {
  std::uint64_t hash = 14695981039346656037ull;
  const auto add = [&](std::string_view text) {
    for (const char c : text) hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    hash = (hash ^ 0xffu) * 1099511628211ull;
  };
  for (const auto &[name, value] : labels) add(name), add(value);
  return hash;
}

// What a pushed sample keeps of its labels: those the grouping key does not override
// (the first of each name, as Pushgateway's sanitizeLabels overrides it), sorted, less
// an instance="" that its group shows anyway (as a state file has it).
inline void strip_grouping_labels(PushLabels &labels, const PushLabels &key) {
  const auto named = [&](const std::string &name) { return [&](const auto &pair) { return pair.first == name; }; };
  for (const auto &grouping : key) {
    const auto found = std::find_if(labels.begin(), labels.end(), named(grouping.first));
    if (found != labels.end()) labels.erase(found);
  }
  const std::string instance = "instance";
  const auto found = std::find_if(labels.begin(), labels.end(), named(instance));
  if (std::none_of(key.begin(), key.end(), named(instance)) && std::count_if(labels.begin(), labels.end(), named(instance)) == 1 &&
      found->second.empty())
    labels.erase(found);
  std::sort(labels.begin(), labels.end());
  if (labels.capacity() > labels.size()) labels.shrink_to_fit();
}

// The labels a held sample shows, as Pushgateway's sanitizeLabels makes them: its own and
// the grouping labels, instance="" when neither has an instance, sorted by name and value.
// A scrape makes them for each sample of a group with one GroupLabels.
class GroupLabels {
public:
  explicit GroupLabels(const PushLabels &key) {
    for (const auto &[name, value] : key) without_.emplace_back(name, value);
    with_ = without_;
    if (std::none_of(key.begin(), key.end(), is_instance<PushLabels::value_type>))
      with_.insert(std::lower_bound(with_.begin(), with_.end(), View(instance, "")), View(instance, ""));
  }
  // Both lists are sorted already: a merge, in std::merge's order (the key's first between equals).
  void shown(const PushLabels &own, PushLabelViews &out) const {
    const PushLabelViews &grouping = std::any_of(own.begin(), own.end(), is_instance<PushLabels::value_type>) ? without_ : with_;
    out.clear();
    auto k = grouping.begin();
    auto o = own.begin();
    while (k != grouping.end() || o != own.end()) {
      const bool from_key = k != grouping.end() && (o == own.end() || !(View(*o) < *k));
      out.push_back(from_key ? *k++ : View(*o++));
    }
  }

private:
  using View = std::pair<std::string_view, std::string_view>;
  static constexpr std::string_view instance = "instance";
  template <typename Pair> static bool is_instance(const Pair &pair) { return std::string_view(pair.first) == instance; }
  PushLabelViews without_, with_; // the key, and with instance="" when it has none
};

inline void shown_labels(const PushLabels &key, const PushLabels &own, PushLabelViews &out) { GroupLabels(key).shown(own, out); }

inline PushLabels shown_labels(const PushLabels &key, const PushLabels &own) {
  PushLabelViews views;
  shown_labels(key, own, views);
  PushLabels labels;
  for (const auto &[name, value] : views) labels.emplace_back(name, value);
  return labels;
}

// The order of samples on /metrics, client_golang's: fewer labels first, then by label
// values in the order of the label names.
inline bool pushed_labels_less(const PushLabelViews &a, const PushLabelViews &b) {
  if (a.size() != b.size()) return a.size() < b.size();
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].second != b[i].second) return a[i].second < b[i].second;
  return a < b; // the same values under other names: an order that does not depend on the groups'
}

// Puts a family's samples in the order /metrics shows them, once, when they are held, in
// vectors no larger than they need: a group's bytes do not depend on how it came.
inline void arrange_held_samples(PushedFamily &family, const PushLabels &key) {
  for (PushedMetric &metric : family.metrics) metric.points.shrink_to_fit();
  family.metrics.shrink_to_fit();
  std::vector<std::pair<PushLabelViews, std::size_t>> order(family.metrics.size());
  for (std::size_t i = 0; i < order.size(); ++i) shown_labels(key, family.metrics[i].labels, order[i].first), order[i].second = i;
  const auto less = [](const auto &a, const auto &b) { return pushed_labels_less(a.first, b.first); };
  if (std::is_sorted(order.begin(), order.end(), less)) return;
  std::sort(order.begin(), order.end(), less);
  std::vector<PushedMetric> sorted;
  sorted.reserve(order.size());
  for (const auto &entry : order) sorted.push_back(std::move(family.metrics[entry.second]));
  family.metrics = std::move(sorted);
}

// A push_time_seconds or push_failure_time_seconds family of one group.
inline PushedFamily push_time_family(const char *name, double seconds) {
  PushedFamily family;
  family.name = name;
  family.help = name == push_time_name ? "Last Unix time when changing this group in the Pushgateway succeeded."
                                       : "Last Unix time when changing this group in the Pushgateway failed.";
  family.type = PushType::gauge;
  family.metrics.emplace_back(); // the grouping labels only: none of its own
  family.metrics.back().value = seconds;
  family.metrics.back().kind = PushType::gauge;
  return family;
}

// Labels as the text format writes them, for messages: {a="1",b="2"}.
template <typename Labels> std::string labels_text(const Labels &labels) {
  std::string out = "{";
  for (const auto &[name, value] : labels) {
    if (out.size() > 1) out += ',';
    out.append(name).append("=").append(go_quote(value));
  }
  return out + '}';
}

inline bool is_push_time(std::string_view name) { return name == push_time_name || name == push_failure_name; }

// The names a family's samples take in the text format.
inline std::vector<std::string> sample_names(std::string_view name, PushType type) {
  const std::string base(name);
  if (type == PushType::histogram) return {base + "_bucket", base + "_sum", base + "_count"};
  if (type == PushType::summary) return {base, base + "_sum", base + "_count"};
  return {base};
}

class PushStore {
public:
  PushStore(std::shared_ptr<MemoryBudget> budget, std::size_t max_groups, double ttl_seconds)
      : budget_(std::move(budget)), max_groups_(max_groups), ttl_seconds_(ttl_seconds) {}
  PushStore(const PushStore &) = delete;
  PushStore &operator=(const PushStore &) = delete;
  ~PushStore() { wipe(); }

  // The sample names of the configured metrics and Hermes' own: no pushed family may
  // write one of them.
  void reserve_names(std::vector<std::string> names) {
    std::sort(names.begin(), names.end());
    reserved_ = std::move(names);
  }
  // And the names metrics made at run time (by StatsD lines) write.
  void reserve_names_of(std::function<bool(std::string_view)> taken) { taken_elsewhere_ = std::move(taken); }
  // Whether a pushed family writes `name`: as its family or one of its samples.
  bool writes(std::string_view name) const;

  // PUT (`replace`) or POST of `families` to the group of `key`.
  PushOutcome push(const PushLabels &key, std::map<std::string, PushedFamily> families, bool replace, Now now);
  // DELETE: the group goes, if there is one.
  void remove(const PushLabels &key);
  void wipe() {
    changes_ += groups_.empty() ? 0 : 1;
    while (!groups_.empty()) drop(groups_.begin());
  }
  // Drops the groups not pushed for the TTL; returns how many.
  std::size_t expire(double monotonic_now);
  // A group read back from the state file, its push_* families made from its times:
  // checked as a push is, and held within the same limits; "" or why it is not taken.
  std::string restore(PushGroup group, double push_time, double push_failure_time);

  using Groups = std::map<PushLabels, PushGroup>;
  const Groups &groups() const { return groups_; }
  std::size_t group_count() const { return groups_.size(); }
  std::size_t bytes() const { return bytes_; }
  const std::map<std::string, PushFamilyIndex, std::less<>> &families() const { return index_; }
  // Goes up whenever a group changes, goes or comes: the state file is written after a change.
  std::uint64_t changes() const { return changes_; }

private:
  std::string check(const PushGroup &candidate, const PushGroup *old) const;
  std::string check_family(const PushedFamily &family, const PushGroup &candidate, const PushGroup *old,
                           const std::vector<const PushGroup *> &overlapping) const;
  static bool keys_agree(const PushLabels &a, const PushLabels &b);
  std::optional<PushType> other_type(std::string_view name, const PushGroup &candidate, const PushGroup *old) const;
  static bool holds_sample(const PushGroup &group, const std::string &name, const PushLabelViews &labels);
  static std::string held_sample_of(const PushedFamily &family, const PushGroup &candidate,
                                    const std::vector<std::pair<std::uint64_t, std::size_t>> &hashes, const PushGroup &group);
  std::string commit(PushGroup &candidate, Groups::iterator old);
  void record_failure(const PushLabels &key, Now now);
  void index(const PushGroup &group);
  void unindex(const PushGroup &group);
  void drop(Groups::iterator group);
  static std::size_t own_bytes(const PushGroup &group);

  std::shared_ptr<MemoryBudget> budget_;
  std::size_t max_groups_;
  double ttl_seconds_;
  Groups groups_;
  std::map<std::string, PushFamilyIndex, std::less<>> index_;
  std::vector<std::string> reserved_; // sorted
  std::function<bool(std::string_view)> taken_elsewhere_;
  std::size_t bytes_ = 0;
  std::uint64_t changes_ = 0;
};

inline bool PushStore::writes(std::string_view name) const {
  const auto writes_as = [&](std::string_view family) {
    const auto found = index_.find(family);
    if (found == index_.end()) return false;
    const std::vector<std::string> samples = sample_names(family, found->second.type);
    return family == name || std::find(samples.begin(), samples.end(), name) != samples.end();
  };
  if (writes_as(name)) return true;
  for (const char *suffix : {"_bucket", "_sum", "_count"})
    if (ends_with(name, suffix) && writes_as(name.substr(0, name.size() - std::strlen(suffix)))) return true;
  return false;
}

inline PushOutcome PushStore::push(const PushLabels &key, std::map<std::string, PushedFamily> families, bool replace, Now now) {
  const auto old = groups_.find(key);
  PushGroup candidate;
  candidate.key = key;
  candidate.last_push = now.monotonic;
  if (old != groups_.end())
    for (const auto &[name, family] : old->second.families)
      if (!replace || is_push_time(name)) candidate.families.emplace(name, family);
  bool timestamps = false;
  for (auto &[name, family] : families) {
    if (is_push_time(name)) continue; // Pushgateway writes its own over them
    for (PushedMetric &metric : family.metrics) {
      strip_grouping_labels(metric.labels, key);
      timestamps = timestamps || metric.has_timestamp;
    }
    candidate.families[name] = std::move(family);
  }
  candidate.families[push_time_name] = push_time_family(push_time_name, now.wall);
  if (!candidate.families.count(push_failure_name))
    candidate.families[push_failure_name] = push_time_family(push_failure_name, 0);
  std::string problem = timestamps ? "pushed metrics must not have timestamps"
                                   : check(candidate, old == groups_.end() ? nullptr : &old->second);
  ++changes_; // a success, or a failure time kept
  if (!problem.empty()) {
    record_failure(key, now);
    return {400, "pushed metrics are invalid or inconsistent with existing metrics: " + problem};
  }
  problem = commit(candidate, old);
  if (!problem.empty()) return {507, problem};
  return {200, ""};
}

// Why `candidate` would make /metrics inconsistent, or "".
inline std::string PushStore::check(const PushGroup &candidate, const PushGroup *old) const {
  std::vector<const PushGroup *> overlapping;
  for (const auto &[key, group] : groups_)
    if (&group != old && keys_agree(key, candidate.key)) overlapping.push_back(&group);
  for (const auto &entry : candidate.families) {
    const std::string problem = check_family(entry.second, candidate, old, overlapping);
    if (!problem.empty()) return problem;
  }
  return "";
}

// Whether two grouping keys give no label two values: only then may a sample of one
// group show the same labels as a sample of the other (every sample shows its key). Keys
// differ in a value where groups differ by job, instance or another grouping label, so
// that a push is checked against the samples of few groups, without an index of them.
inline bool PushStore::keys_agree(const PushLabels &a, const PushLabels &b) {
  for (auto i = a.begin(), j = b.begin(); i != a.end() && j != b.end();) {
    if (i->first == j->first && i->second != j->second) return false;
    if (i->first <= j->first) ++i;
    else ++j;
  }
  return true;
}

// The type of another family named `name`: in the candidate, or in another group.
inline std::optional<PushType> PushStore::other_type(std::string_view name, const PushGroup &candidate,
                                                     const PushGroup *old) const {
  if (const auto found = candidate.families.find(name); found != candidate.families.end()) return found->second.type;
  const auto found = index_.find(name);
  if (found == index_.end()) return std::nullopt;
  const auto &groups = found->second.groups;
  if (groups.size() == 1 && groups.front().group == old) return std::nullopt;
  return found->second.type;
}

// A family against Hermes' own names, the other groups' families of the same or a
// colliding name (as client_golang's gatherer checks them), and each sample's labels.
inline std::string PushStore::check_family(const PushedFamily &family, const PushGroup &candidate, const PushGroup *old,
                                           const std::vector<const PushGroup *> &overlapping) const {
  const std::string &name = family.name;
  const PushType type = *family.type;
  if (!is_metric_name(name)) return "family " + go_quote(name) + ": not a metric name";
  if (type == PushType::gauge_histogram) return "family \"" + name + "\": gauge histograms are not supported";
  std::vector<std::string> written = sample_names(name, type);
  written.push_back(name);
  for (const std::string &sample : written)
    if (std::binary_search(reserved_.begin(), reserved_.end(), sample) || (taken_elsewhere_ && taken_elsewhere_(sample)))
      return "family \"" + name + "\" writes " + sample + ", a metric Hermes serves already";
  if (const auto found = index_.find(name); found != index_.end() && found->second.type != type) {
    const auto &groups = found->second.groups;
    if (!(groups.size() == 1 && groups.front().group == old))
      return "family \"" + name + "\" is pushed as " + to_string(type) + " but another group has it as " +
             to_string(found->second.type);
  }
  for (const char *suffix : {"_count", "_sum", "_bucket"}) {
    if (!ends_with(name, suffix) || name.size() == std::strlen(suffix)) continue;
    const auto base = other_type(std::string_view(name).substr(0, name.size() - std::strlen(suffix)), candidate, old);
    if ((base == PushType::summary && std::strcmp(suffix, "_bucket") != 0) || base == PushType::histogram)
      return "family \"" + name + "\" collides with the " + to_string(*base) + " \"" +
             name.substr(0, name.size() - std::strlen(suffix)) + "\"";
  }
  if (type == PushType::summary || type == PushType::histogram)
    for (const char *suffix : {"_count", "_sum", "_bucket"})
      if ((type == PushType::histogram || std::strcmp(suffix, "_bucket") != 0) && other_type(name + suffix, candidate, old))
        return "the " + std::string(to_string(type)) + " \"" + name + "\" collides with the family \"" + name + suffix + "\"";
  std::vector<std::pair<std::uint64_t, std::size_t>> hashes; // of each sample's labels, and the sample
  PushLabelViews labels;
  for (const PushedMetric &metric : family.metrics) {
    if (metric.kind != type) return "family \"" + name + "\": a sample that is not a " + to_string(type);
    shown_labels(candidate.key, metric.labels, labels);
    for (std::size_t i = 0; i + 1 < labels.size(); ++i)
      if (labels[i].first == labels[i + 1].first)
        return "family \"" + name + "\": two labels named \"" + std::string(labels[i].first) + "\" on one sample";
    for (const auto &[label, value] : labels) {
      if (!is_label_name(label) || starts_with(label, "__")) return "family \"" + name + "\": the label name " + go_quote(label) + " is not one";
      if ((type == PushType::summary && label == "quantile") || (type == PushType::histogram && label == "le"))
        return "family \"" + name + "\": a " + to_string(type) + " must not have an explicit \"" + std::string(label) + "\" label";
      if (!is_valid_utf8(value)) return "family \"" + name + "\": the value of label \"" + std::string(label) + "\" is not UTF-8";
    }
    hashes.emplace_back(labels_hash(labels), hashes.size());
  }
  std::sort(hashes.begin(), hashes.end());
  for (const PushGroup *group : overlapping) {
    const std::string held = held_sample_of(family, candidate, hashes, *group);
    if (!held.empty()) return "family \"" + name + "\": the labels " + held + " are another group's already";
  }
  PushLabelViews other;
  for (std::size_t i = 0; i + 1 < hashes.size(); ++i) {
    if (hashes[i].first != hashes[i + 1].first) continue;
    shown_labels(candidate.key, family.metrics[hashes[i].second].labels, labels);
    shown_labels(candidate.key, family.metrics[hashes[i + 1].second].labels, other);
    if (labels == other) return "family \"" + name + "\": two samples with the same labels";
  }
  return "";
}

// The labels of a sample of `family` (the candidate's, its samples' `hashes` sorted) that
// `group` holds too, as text; or "". The smaller side is walked and looked up in the
// other, so that a push costs at most the samples the other groups hold, however many
// small groups its key agrees with.
inline std::string PushStore::held_sample_of(const PushedFamily &family, const PushGroup &candidate,
                                             const std::vector<std::pair<std::uint64_t, std::size_t>> &hashes,
                                             const PushGroup &group) {
  const auto held = group.families.find(family.name);
  if (held == group.families.end()) return "";
  PushLabelViews labels, other;
  if (held->second.metrics.size() >= family.metrics.size()) {
    for (const PushedMetric &metric : family.metrics) {
      shown_labels(candidate.key, metric.labels, labels);
      if (holds_sample(group, family.name, labels)) return labels_text(labels);
    }
    return "";
  }
  for (const PushedMetric &metric : held->second.metrics) {
    shown_labels(group.key, metric.labels, labels);
    const std::uint64_t hash = labels_hash(labels);
    for (auto at = std::lower_bound(hashes.begin(), hashes.end(), std::make_pair(hash, std::size_t{0}));
         at != hashes.end() && at->first == hash; ++at) {
      shown_labels(candidate.key, family.metrics[at->second].labels, other);
      if (other == labels) return labels_text(labels);
    }
  }
  return "";
}

// Whether `group` holds a sample of the family `name` with these labels: a binary search,
// its samples being held in order.
inline bool PushStore::holds_sample(const PushGroup &group, const std::string &name, const PushLabelViews &labels) {
  const auto family = group.families.find(name);
  if (family == group.families.end()) return false;
  PushLabelViews held;
  const auto below = [&](const PushedMetric &metric, const PushLabelViews &wanted) {
    shown_labels(group.key, metric.labels, held);
    return pushed_labels_less(held, wanted);
  };
  const auto at = std::lower_bound(family->second.metrics.begin(), family->second.metrics.end(), labels, below);
  if (at == family->second.metrics.end()) return false;
  shown_labels(group.key, at->labels, held);
  return held == labels;
}

// Puts the candidate in place of the old group, within the budget and max_push_groups;
// "" or why it could not.
inline std::string PushStore::commit(PushGroup &candidate, Groups::iterator old) {
  const bool fresh = old == groups_.end();
  if (fresh && groups_.size() >= max_groups_)
    return "no room for one more group: max_push_groups (" + std::to_string(max_groups_) + ") groups are held";
  for (auto &entry : candidate.families) arrange_held_samples(entry.second, candidate.key);
  candidate.own_bytes = own_bytes(candidate);
  candidate.body_bytes = pushed_body_bytes(candidate);
  if (budget_) {
    if (!fresh) budget_->give_back_series(old->second.own_bytes, old->second.body_bytes);
    if (!budget_->take_for_series(candidate.own_bytes, candidate.body_bytes)) {
      // What it held fits again: nothing else changed since it was given back.
      if (!fresh && !budget_->take_for_series(old->second.own_bytes, old->second.body_bytes)) {
        bytes_ -= old->second.own_bytes; // a fault: the group goes rather than break the budget's rule
        old->second.own_bytes = old->second.body_bytes = 0;
        drop(old);
      }
      return "no room in the memory budget for this group: it needs " +
             std::to_string(candidate.own_bytes + candidate.body_bytes * HERMES_SCRAPE_BODIES) + " bytes";
    }
  }
  if (!fresh) {
    unindex(old->second);
    bytes_ -= old->second.own_bytes;
    old->second = std::move(candidate);
    bytes_ += old->second.own_bytes;
    index(old->second);
    return "";
  }
  const auto made = groups_.emplace(candidate.key, std::move(candidate)).first;
  bytes_ += made->second.own_bytes;
  index(made->second);
  return "";
}

// Pushgateway keeps the time of a refused push: in the group, made for it if need be
// (with push_time_seconds 0), when the limits leave room for that.
inline void PushStore::record_failure(const PushLabels &key, Now now) {
  const auto old = groups_.find(key);
  if (old != groups_.end()) {
    old->second.families[push_failure_name].metrics.front().value = now.wall; // same size: the budget holds
    return;
  }
  PushGroup group;
  group.key = key;
  group.last_push = now.monotonic;
  group.families[push_time_name] = push_time_family(push_time_name, 0);
  group.families[push_failure_name] = push_time_family(push_failure_name, now.wall);
  if (check(group, nullptr).empty()) commit(group, groups_.end());
}

inline void PushStore::remove(const PushLabels &key) {
  if (const auto found = groups_.find(key); found != groups_.end()) drop(found), ++changes_;
}

inline std::string PushStore::restore(PushGroup group, double push_time, double push_failure_time) {
  std::sort(group.key.begin(), group.key.end());
  group.key.shrink_to_fit();
  if (groups_.count(group.key)) return "the group is in the file twice";
  for (auto &[name, family] : group.families)
    for (PushedMetric &metric : family.metrics) strip_grouping_labels(metric.labels, group.key);
  group.families[push_time_name] = push_time_family(push_time_name, push_time);
  group.families[push_failure_name] = push_time_family(push_failure_name, push_failure_time);
  std::string problem = check(group, nullptr);
  if (problem.empty()) problem = commit(group, groups_.end());
  changes_ += problem.empty() ? 1 : 0;
  return problem;
}

inline std::size_t PushStore::expire(double monotonic_now) {
  if (ttl_seconds_ <= 0) return 0;
  std::size_t dropped = 0;
  for (auto it = groups_.begin(); it != groups_.end();) {
    const auto next = std::next(it);
    if (monotonic_now - it->second.last_push >= ttl_seconds_) drop(it), ++dropped;
    it = next;
  }
  changes_ += dropped;
  return dropped;
}

inline void PushStore::index(const PushGroup &group) {
  for (const auto &[name, family] : group.families) {
    PushFamilyIndex &entry = index_[name];
    entry.type = *family.type;
    entry.help = family.help;
    entry.groups.push_back({&group, &family});
  }
}

inline void PushStore::unindex(const PushGroup &group) {
  for (const auto &[name, family] : group.families) {
    const auto found = index_.find(name);
    PushFamilyIndex &entry = found->second;
    entry.groups.erase(std::find_if(entry.groups.begin(), entry.groups.end(), [&](const HeldFamily &held) { return held.group == &group; }));
    if (entry.groups.empty()) index_.erase(found);
  }
}

inline void PushStore::drop(Groups::iterator group) {
  unindex(group->second);
  if (budget_) budget_->give_back_series(group->second.own_bytes, group->second.body_bytes);
  bytes_ -= group->second.own_bytes;
  groups_.erase(group);
}

// The heap a group holds, its share of the index included: each allocation's bytes and
// malloc's header (strings past the small-string buffer, vectors by their capacity), and
// a map node's overhead.
inline std::size_t PushStore::own_bytes(const PushGroup &group) {
  constexpr std::size_t node = 64, small_string = 15, header = 16;
  const auto text = [](const std::string &s) { return s.size() > small_string ? s.size() + 1 + header : 0; };
  const auto labels = [&](const PushLabels &pairs) {
    std::size_t bytes = pairs.capacity() == 0 ? 0 : pairs.capacity() * sizeof(pairs[0]) + header;
    for (const auto &[label, value] : pairs) bytes += text(label) + text(value);
    return bytes;
  };
  std::size_t bytes = sizeof(PushGroup) + node + labels(group.key);
  for (const auto &[name, family] : group.families) {
    bytes += node + sizeof(PushedFamily) + 2 * text(name) + (family.help ? text(*family.help) : 0);
    bytes += node + sizeof(PushFamilyIndex) + sizeof(HeldFamily); // its share of the index
    bytes += family.metrics.capacity() * sizeof(PushedMetric) + header;
    for (const PushedMetric &metric : family.metrics) {
      bytes += labels(metric.labels) + text(metric.native);
      if (metric.points.capacity() > 0) bytes += metric.points.capacity() * sizeof(metric.points[0]) + header;
    }
  }
  return bytes;
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: LOGGING ====================================================================

namespace hermes {
namespace detail {

// A logfmt value: bare when it is a plain word, else quoted with \ " and controls escaped.
inline void append_logfmt_value(std::string &out, std::string_view value) {
  const bool plain = !value.empty() && std::all_of(value.begin(), value.end(), [](char c) {
    return static_cast<unsigned char>(c) > 0x20 && c != '=' && c != '"' && c != '\\' && c != 0x7f;
  });
  if (plain) {
    out += value;
    return;
  }
  out += '"';
  for (const char c : value) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\x%02x", static_cast<unsigned>(static_cast<unsigned char>(c)));
      out += escape;
    } else {
      out += c;
    }
  }
  out += '"';
}

using LogFields = std::vector<std::pair<std::string_view, std::string_view>>;

// Writes `level=info msg="..." key=value` lines to the sink, or to stderr.
class Logger {
public:
  Logger(LogLevel minimum, LogSink sink) : minimum_(minimum), sink_(std::move(sink)) {}
  bool enabled(LogLevel level) const { return level >= minimum_; }
  void log(LogLevel level, std::string_view message, LogFields fields = {}) const {
    if (!enabled(level)) return;
    std::string line = "level=";
    line += to_string(level);
    line += " msg=";
    append_logfmt_value(line, message);
    for (const auto &field : fields) {
      line += ' ';
      line += field.first;
      line += '=';
      append_logfmt_value(line, field.second);
    }
    if (sink_) {
      sink_(line);
    } else {
      line += '\n';
      std::fwrite(line.data(), 1, line.size(), stderr);
    }
  }

private:
  LogLevel minimum_;
  LogSink sink_;
};

} // namespace detail
} // namespace hermes

// ===== DETAIL: PROCESS ====================================================================

namespace hermes {
namespace detail {

// The process metrics of the standard Prometheus client libraries. A figure that /proc
// cannot tell is absent and left out of /metrics: a counter shown as 0 would look like
// a reset to rate().
struct ProcessStats {
  std::optional<double> cpu_seconds;
  std::optional<double> resident_memory_bytes;
  std::optional<double> virtual_memory_bytes;
  std::optional<double> start_time_seconds;
  std::optional<double> open_fds;
  std::optional<double> max_fds;
};

inline std::string read_small_file(const char *path) {
  std::string text;
  read_file(path, 65536, text);
  return text;
}

// The fields of /proc/self/stat from the third (state) on; the second, the command
// name in parentheses, may itself hold spaces and parentheses.
inline std::vector<std::string> proc_stat_fields() {
  const std::string text = read_small_file("/proc/self/stat");
  const std::size_t close = text.rfind(')');
  if (close == std::string::npos) return {};
  std::vector<std::string> fields;
  for (const std::string_view field : split(std::string_view(text).substr(close + 1), ' '))
    if (!field.empty()) fields.emplace_back(field);
  return fields;
}

// Field N of proc(5)'s numbering (1-based, counting pid and comm).
inline std::optional<double> proc_stat_field(const std::vector<std::string> &fields, std::size_t number) {
  const std::size_t index = number - 3;
  return index < fields.size() ? parse_decimal(fields[index]) : std::nullopt;
}

inline std::optional<double> boot_time_seconds() {
  const std::string text = read_small_file("/proc/stat");
  for (const std::string_view line : split(text, '\n'))
    if (starts_with(line, "btime ")) return parse_decimal(line.substr(6));
  return std::nullopt;
}

inline std::optional<double> process_start_time_seconds() {
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const auto started = proc_stat_field(proc_stat_fields(), 22);
  const auto boot = boot_time_seconds();
  if (ticks <= 0 || !started || !boot) return std::nullopt;
  return *boot + *started / ticks;
}

inline std::optional<double> count_open_fds() {
  DIR *dir = ::opendir("/proc/self/fd");
  if (!dir) return std::nullopt;
  double count = 0;
  while (const dirent *entry = ::readdir(dir))
    if (entry->d_name[0] != '.') ++count;
  ::closedir(dir);
  return count - 1; // the directory being read is itself open
}

// This process' figures now; the start time is read once, at start, by the caller.
inline ProcessStats read_process_stats(std::optional<double> start_time_seconds) {
  ProcessStats stats;
  const std::vector<std::string> fields = proc_stat_fields();
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const double page_size = static_cast<double>(::sysconf(_SC_PAGESIZE));
  const auto user = proc_stat_field(fields, 14), system = proc_stat_field(fields, 15);
  if (ticks > 0 && user && system) stats.cpu_seconds = (*user + *system) / ticks;
  stats.virtual_memory_bytes = proc_stat_field(fields, 23);
  if (const auto pages = proc_stat_field(fields, 24)) stats.resident_memory_bytes = *pages * page_size;
  stats.open_fds = count_open_fds();
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) stats.max_fds = static_cast<double>(limit.rlim_cur);
  stats.start_time_seconds = start_time_seconds;
  return stats;
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: DATAGRAM INPUT =============================================================

namespace hermes {
namespace detail {

using Clock = std::chrono::steady_clock;

// A time of Clock as monotonic_seconds() gives it.
inline double seconds_of(Clock::time_point time) { return std::chrono::duration<double>(time.time_since_epoch()).count(); }

// Rejected samples: each at debug with its datagram, and at most one warn line per
// HERMES_REJECT_LOG_INTERVAL_S that sums them up by reason.
class RejectLog {
public:
  explicit RejectLog(const Logger &logger) : logger_(logger) {}

  void note(const IngestResult &result, std::string_view datagram, Clock::time_point now) {
    if (result.rejected_total() == 0) return;
    constexpr std::size_t shown = 200; // of the datagram, in the debug line
    for (std::size_t i = 0; i < reject_reason_count; ++i) {
      if (result.rejected[i] == 0) continue;
      pending_[i] += result.rejected[i];
      if (logger_.enabled(LogLevel::debug))
        logger_.log(LogLevel::debug, "sample rejected",
                    {{"reason", to_string(static_cast<Reject>(i))}, {"count", std::to_string(result.rejected[i])},
                     {"datagram", datagram.substr(0, shown)}});
    }
    flush(now, false);
  }

  // Datagrams dropped as forbidden_source; at debug, each with its sender when known.
  void note_forbidden(std::uint64_t count, const sockaddr *source, Clock::time_point now) {
    pending_[static_cast<std::size_t>(Reject::forbidden_source)] += count;
    if (logger_.enabled(LogLevel::debug))
      logger_.log(LogLevel::debug, "datagram from a forbidden source dropped",
                  {{"count", std::to_string(count)}, {"source", source ? format_endpoint(source) : "?"}});
    flush(now, false);
  }

  // Writes the summary when it is due, or at once when `force`d.
  void flush(Clock::time_point now, bool force) {
    if (!force && now < next_log_) return;
    std::string counts;
    for (std::size_t i = 0; i < reject_reason_count; ++i)
      if (pending_[i] > 0)
        counts += (counts.empty() ? "" : " ") + std::string(to_string(static_cast<Reject>(i))) + "=" + std::to_string(pending_[i]);
    if (counts.empty()) return;
    logger_.log(LogLevel::warn, "samples rejected", {{"counts", counts}});
    pending_.fill(0);
    next_log_ = now + std::chrono::seconds(HERMES_REJECT_LOG_INTERVAL_S);
  }

  // When a summary waits to be written.
  std::optional<Clock::time_point> due() const {
    const bool pending = std::any_of(pending_.begin(), pending_.end(), [](std::uint64_t n) { return n > 0; });
    return pending ? std::optional<Clock::time_point>(next_log_) : std::nullopt;
  }

private:
  const Logger &logger_;
  std::array<std::uint64_t, reject_reason_count> pending_{};
  Clock::time_point next_log_{};
};

// The sockets samples arrive on, UDP and optionally a unix datagram socket, with the
// batch they are read into, the datagrams held while /metrics renders, and the counts.
class DatagramInput {
public:
  using Source = HeldDatagrams::Source;

  explicit DatagramInput(const Options &options)
      : udp_(open_udp_listener(options.udp_address, options.udp_port, options.udp_receive_buffer)),
        unix_socket_(options.unix_socket_path, options.unix_socket_mode), allow_(options.udp_allow), drops_(udp_.get()),
        receive_buffer_bytes_(receive_buffer_size(udp_.get())) {}

  int fd(Source source) const { return source == Source::udp ? udp_.get() : unix_socket_.get(); }
  const std::string &unix_path() const { return unix_socket_.path(); }

  // Reads and applies what waits on one socket, up to HERMES_DATAGRAMS_PER_STEP, all
  // at the time `now`: a step is short, and reading the clocks for each batch cost more
  // than a tenth of a datagram's CPU when the batches are small. False when more waits.
  bool receive(Source source, Registry &registry, RejectLog &rejects, Now now) {
    for (int taken = 0; taken < HERMES_DATAGRAMS_PER_STEP;) {
      const int got = batch_.receive(fd(source), HERMES_RECEIVE_BATCH, filtered(source), carries_drops(source));
      for (int i = 0; i < got; ++i) {
        count_carried_drops(source, i);
        if (!allowed(source, i)) {
          ++udp_packets_;
          registry.count_rejected(Reject::forbidden_source);
          rejects.note_forbidden(1, batch_.source(i), Clock::now());
          continue;
        }
        take(batch_.datagram(i), batch_.truncated(i), source, registry, rejects, now);
      }
      if (got < HERMES_RECEIVE_BATCH) return true; // all read
      taken += got;
    }
    return false;
  }

  // Takes what waits on both sockets into the hold, as far as its budget allows: the
  // step a server makes between parts of a long render, so that the kernel's buffer
  // does not overflow meanwhile. Forbidden datagrams are dropped and only counted, at
  // most as many as the hold had room for, so that a flood of them cannot stall the render.
  void hold_waiting() {
    for (const Source source : {Source::udp, Source::unix_socket}) {
      if (fd(source) < 0) continue;
      const std::uint64_t forbidden_limit = held_forbidden_ + held_.room();
      for (std::size_t room = held_.room(); room > 0 && held_forbidden_ < forbidden_limit; room = held_.room()) {
        const int wanted = static_cast<int>(std::min<std::size_t>(room, HERMES_RECEIVE_BATCH));
        const int got = batch_.receive(fd(source), wanted, filtered(source), carries_drops(source));
        for (int i = 0; i < got; ++i) {
          count_carried_drops(source, i);
          if (allowed(source, i)) held_.hold(batch_.datagram(i), batch_.truncated(i), source);
          else ++held_forbidden_;
        }
        if (got < wanted) break;
      }
    }
  }

  // Applies the held datagrams, once the registry is no longer being read.
  void apply_held(Registry &registry, RejectLog &rejects) {
    if (held_forbidden_ > 0) {
      udp_packets_ += held_forbidden_;
      for (std::uint64_t i = 0; i < held_forbidden_; ++i) registry.count_rejected(Reject::forbidden_source);
      rejects.note_forbidden(held_forbidden_, nullptr, Clock::now());
      held_forbidden_ = 0;
    }
    const Now now = Now::current();
    held_.release([&](std::string_view datagram, bool truncated, Source source) {
      take(datagram, truncated, source, registry, rejects, now);
    });
  }

  // Once a second: folds the kernel's drop counter in, so that no wrap of it goes unseen.
  void ask_kernel_drops() { drops_.ask(); }

  void add_stats(ServerStats &stats) const {
    stats.udp_packets = udp_packets_;
    stats.unix_datagrams = unix_datagrams_;
    stats.udp_receive_drops = drops_.total();
    stats.udp_receive_buffer_bytes = receive_buffer_bytes_;
  }

private:
  // Whether a socket's datagrams are held against the allow list: UDP ones, when there
  // is a list. Only then are their senders asked of the kernel.
  bool filtered(Source source) const { return source == Source::udp && !allow_.empty(); }

  // Whether datagram i of the batch may be taken.
  bool allowed(Source source, int i) const {
    return !filtered(source) || allow_.allows(batch_.source(i), batch_.source_length(i));
  }

  void take(std::string_view datagram, bool truncated, Source source, Registry &registry, RejectLog &rejects, Now now) {
    ++(source == Source::udp ? udp_packets_ : unix_datagrams_);
    IngestResult result;
    if (truncated) { // the kernel cut it to fit: never parse a cut datagram
      result.rejected[static_cast<std::size_t>(Reject::too_large)] = 1;
      registry.count_rejected(Reject::too_large);
    } else {
      result = registry.ingest(datagram, now);
    }
    if (result.rejected_total() > 0) rejects.note(result, datagram, Clock::now());
  }

  // Whether a socket's datagrams carry the kernel's drop counter: UDP ones, on old kernels.
  bool carries_drops(Source source) const { return source == Source::udp && drops_.carried(); }
  void count_carried_drops(Source source, int index_in_batch) {
    if (!carries_drops(source)) return;
    if (const auto counter = batch_.drop_counter(index_in_batch)) drops_.note_carried(*counter);
  }

  FileDescriptor udp_;
  UnixSocket unix_socket_;
  ReceiveBatch batch_;
  HeldDatagrams held_; // taken off the sockets during a render, applied after it
  std::uint64_t held_forbidden_ = 0; // forbidden datagrams dropped during a render, counted after it
  AllowList allow_; // UDP senders; empty: everyone
  KernelDrops drops_; // of the UDP socket
  std::uint64_t udp_packets_ = 0, unix_datagrams_ = 0;
  double receive_buffer_bytes_;
};

} // namespace detail
} // namespace hermes

// ===== DETAIL: STATSD OVER TCP ============================================================
//
// statsd_exporter's --statsd.listen-tcp: newline-separated StatsD lines over TCP, each
// applied as a line of a datagram is. Connections are non-blocking and read in the same
// poll() loop as UDP and HTTP, one read of at most HERMES_STATSD_TCP_READ_BYTES each per
// step when it has input. Each connection holds at most one line that is not whole yet, and takes the bytes
// of that buffer from the memory budget before it is admitted.

namespace hermes {

inline const char *to_string(TcpRefusal reason) {
  static constexpr const char *names[] = {"connection_limit", "memory_limit", "forbidden_source"};
  return detail::name_of(reason, names);
}

inline const char *to_string(TcpClose reason) {
  static constexpr const char *names[] = {"end", "error", "idle", "too_large"};
  return detail::name_of(reason, names);
}

namespace detail {

// Cuts a byte stream into StatsD lines as they arrive, holding the line not yet whole.
// A line is at most HERMES_MAX_DATAGRAM_SIZE bytes before its "\n" or "\r\n", as a
// datagram is; a longer one ends the stream. What the line buffer holds never passes
// `most_held` bytes of memory, so that a connection's budget is a bound, not a guess.
class StatsdStream {
public:
  static constexpr std::size_t longest_line = HERMES_MAX_DATAGRAM_SIZE;
  static constexpr std::size_t most_held = longest_line + 2; // and a '\r', and the string's NUL

  // Takes `bytes`: calls take(lines) with runs of whole lines, each ending in '\n', in the
  // order they came (the held line first, on its own and without its '\n'). False when a
  // line is too long: the lines before it were taken, nothing after it is.
  template <typename Take> bool feed(std::string_view bytes, Take &&take) {
    if (bytes.empty()) return true;
    if (!held_.empty()) {
      const std::size_t end = bytes.find('\n');
      if (end == std::string_view::npos) return hold(bytes);
      if (too_long(held_.size() + end, end > 0 ? bytes[end - 1] : held_.back())) return false;
      append(bytes.substr(0, end)); // without its '\n': a line taken alone needs none
      take(std::string_view(held_));
      held_.clear(); // keeps its memory, within most_held
      bytes.remove_prefix(end + 1);
    }
    std::size_t start = 0;
    for (const char *end; (end = static_cast<const char *>(std::memchr(bytes.data() + start, '\n', bytes.size() - start)));) {
      const std::size_t length = static_cast<std::size_t>(end - bytes.data()) - start;
      if (too_long(length, length > 0 ? end[-1] : '\n')) {
        if (start > 0) take(bytes.substr(0, start));
        return false;
      }
      start += length + 1;
    }
    if (start > 0) take(bytes.substr(0, start));
    return hold(bytes.substr(start));
  }

  // At the end of the stream: the held line, without a newline, taken as the last line,
  // as statsd_exporter's reader does.
  template <typename Take> void finish(Take &&take) {
    if (!held_.empty()) take(std::string_view(held_));
    held_.clear();
  }

  std::size_t held() const { return held_.size(); }
  std::size_t capacity() const { return held_.capacity(); }

private:
  // A line of `length` bytes before its '\n', ending in `last`: a '\r' there is not its own.
  static bool too_long(std::size_t length, char last) { return length > longest_line + (last == '\r' ? 1 : 0); }

  // Keeps the start of a line; false when it is too long already.
  bool hold(std::string_view part) {
    if (part.empty()) return true;
    if (too_long(held_.size() + part.size(), part.back())) return false;
    append(part);
    return true;
  }

  // Grows the buffer as a string would, but never past most_held bytes: a string's own
  // reserve() may double what it held, so the larger buffer is a new string's.
  void append(std::string_view part) {
    const std::size_t size = held_.size() + part.size();
    if (size > held_.capacity()) {
      std::string grown;
      grown.reserve(std::min(std::max(size, 2 * held_.capacity()), most_held - 1));
      grown.append(held_);
      held_.swap(grown);
    }
    held_.append(part.data(), part.size());
  }

  std::string held_;
};

// One StatsD TCP client.
struct StatsdConnection {
  FileDescriptor fd;
  StatsdStream stream;
  Clock::time_point deadline; // when it is closed unless a line completes first
};

// The StatsD TCP listener and its connections, when Options::statsd_tcp_port is set.
// The connections wait in an epoll set whose one descriptor is in the server's poll():
// poll() pays for each descriptor it watches at every step, which with 256 idle
// connections cost more than the datagram that woke it; epoll pays for those with input.
class StatsdTcpInput {
public:
  // What one connection takes from the budget while it is open: its line buffer and bookkeeping.
  static constexpr std::size_t connection_bytes = StatsdStream::most_held + sizeof(StatsdConnection) + 64;

  StatsdTcpInput(const Options &options, const Logger &logger, MemoryBudget &budget)
      : logger_(logger), budget_(budget), allow_(options.udp_allow), most_(options.statsd_tcp_max_connections),
        idle_(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.statsd_tcp_idle_seconds))) {
    if (!options.statsd_tcp_port) return;
    if (!budget_.take(HERMES_STATSD_TCP_READ_BYTES))
      throw UsageError("HERMES_MAX_MEMORY: no room for the StatsD TCP listener's read buffer");
    buffer_.reset(new char[HERMES_STATSD_TCP_READ_BYTES]);
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) throw SocketError(system_error_message("epoll_create1 statsd_tcp", errno));
    listener_ = open_tcp_listener(options.udp_address, *options.statsd_tcp_port, "statsd_tcp");
  }
  StatsdTcpInput(const StatsdTcpInput &) = delete;
  StatsdTcpInput &operator=(const StatsdTcpInput &) = delete;
  ~StatsdTcpInput() {
    if (buffer_) budget_.give_back(HERMES_STATSD_TCP_READ_BYTES + connections_.size() * connection_bytes);
  }

  int listener() const { return listener_.get(); }

  // The listener (unless off or accepting is paused) and the epoll set, for poll().
  void add_poll_fds(std::vector<pollfd> &fds, Clock::time_point now) const {
    if (!listener_) return;
    fds.push_back({now >= accept_paused_until_ ? listener_.get() : -1, POLLIN, 0});
    fds.push_back({epoll_.get(), POLLIN, 0});
  }

  // Reads what poll() found, from the listener's entry on, applying whole lines at
  // `received`, then accepts. close_idle() removes the connections that ended.
  void serve(const pollfd *fds, Registry &registry, RejectLog &rejects, Now received, Clock::time_point now) {
    if (!listener_) return;
    if (fds[1].revents) read_ready(registry, rejects, received, now);
    if (fds[0].revents) accept_connections(now);
  }

  // Closes the connections past their deadline, and forgets those that ended: every step.
  // The earliest deadline only moves later (a new or renewed one is now + the idle time),
  // so most steps look at none of them.
  void close_idle(Registry &registry, RejectLog &rejects, Clock::time_point now) {
    if (now >= earliest_deadline_) {
      earliest_deadline_ = Clock::time_point::max();
      for (const auto &connection : connections_) {
        if (now >= connection->deadline && !closing(*connection)) end(*connection, TcpClose::idle, registry, rejects, Now::current());
        if (!closing(*connection)) earliest_deadline_ = std::min(earliest_deadline_, connection->deadline);
      }
    }
    if (ended_) remove_closed();
  }

  // The earliest idle deadline, or the end of a pause in accepting.
  std::optional<Clock::time_point> due(Clock::time_point now) const {
    std::optional<Clock::time_point> due;
    if (earliest_deadline_ != Clock::time_point::max()) due = earliest_deadline_;
    if (accept_paused_until_ > now && (!due || accept_paused_until_ < *due)) due = accept_paused_until_;
    return due;
  }

  void add_stats(ServerStats &stats) const {
    stats.statsd_tcp = static_cast<bool>(listener_);
    stats.statsd_tcp_connections = connections_.size();
    stats.statsd_tcp_accepted = accepted_;
    stats.statsd_tcp_refused = refused_;
    stats.statsd_tcp_closed = closed_;
  }

private:
  static bool closing(const StatsdConnection &connection) { return !connection.fd; }
  Clock::time_point deadline(Clock::time_point now) const {
    return idle_ > Clock::duration::zero() ? now + idle_ : Clock::time_point::max();
  }
  void read_ready(Registry &registry, RejectLog &rejects, Now received, Clock::time_point now);
  void accept_connections(Clock::time_point now);
  std::optional<TcpRefusal> admission(const SocketAddress &peer);
  bool admit(FileDescriptor fd, Clock::time_point now);
  void refuse(TcpRefusal reason, const SocketAddress &peer, Clock::time_point now);
  void read(StatsdConnection &connection, Registry &registry, RejectLog &rejects, Now received, Clock::time_point now);
  void apply(std::string_view lines, Registry &registry, RejectLog &rejects, Now received);
  void end(StatsdConnection &connection, TcpClose reason, Registry &registry, RejectLog &rejects, Now received);
  void remove_closed();

  FileDescriptor listener_; // none: no TCP listener
  FileDescriptor epoll_;    // the connections, each with its StatsdConnection as data
  const Logger &logger_;
  MemoryBudget &budget_;
  AllowList allow_; // UDP's: the same senders may use TCP
  std::size_t most_;
  Clock::duration idle_; // zero: never
  std::unique_ptr<char[]> buffer_; // one read's bytes, shared by every connection
  std::vector<std::unique_ptr<StatsdConnection>> connections_; // each where epoll's data points
  std::array<epoll_event, HERMES_STATSD_TCP_READS> ready_{};
  Clock::time_point earliest_deadline_ = Clock::time_point::max(); // of the connections, or earlier
  bool ended_ = false; // a connection is closed and still to be forgotten
  std::uint64_t accepted_ = 0;
  std::array<std::uint64_t, tcp_refusal_count> refused_{};
  std::array<std::uint64_t, tcp_close_count> closed_{};
  Clock::time_point accept_paused_until_{};
  Clock::time_point next_warning_{};
};

// One read for each connection with input, at most HERMES_STATSD_TCP_READS of them; the
// others are next in line at the next step (a level-triggered epoll set goes round).
inline void StatsdTcpInput::read_ready(Registry &registry, RejectLog &rejects, Now received, Clock::time_point now) {
  const int ready = retry_on_eintr([&] { return ::epoll_wait(epoll_.get(), ready_.data(), HERMES_STATSD_TCP_READS, 0); });
  for (int i = 0; i < ready; ++i) {
    StatsdConnection &connection = *static_cast<StatsdConnection *>(ready_[static_cast<std::size_t>(i)].data.ptr);
    if (!closing(connection)) read(connection, registry, rejects, received, now);
  }
}

inline void StatsdTcpInput::accept_connections(Clock::time_point now) {
  for (int i = 0; i < HERMES_STATSD_TCP_ACCEPTS; ++i) {
    SocketAddress peer;
    FileDescriptor fd(retry_on_eintr([&] {
      peer.length = sizeof peer.storage;
      return ::accept4(listener_.get(), reinterpret_cast<sockaddr *>(&peer.storage), &peer.length, SOCK_NONBLOCK | SOCK_CLOEXEC);
    }));
    if (!fd) {
      if (errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // The pending connection stays queued and the listener readable: pause, or poll() spins.
        accept_paused_until_ = now + std::chrono::milliseconds(100);
        if (now >= next_warning_) {
          logger_.log(LogLevel::warn, "cannot accept StatsD TCP connections", {{"error", std::strerror(errno)}});
          next_warning_ = now + std::chrono::seconds(HERMES_REJECT_LOG_INTERVAL_S);
        }
      }
      return;
    }
    if (const auto reason = admission(peer)) {
      refuse(*reason, peer, now); // fd closes here, its input unread
      continue;
    }
    if (!admit(std::move(fd), now)) refuse(TcpRefusal::memory_limit, peer, now); // the kernel's memory for epoll
  }
}

// Puts an admitted connection, whose bytes are taken, in the epoll set; false, with the
// bytes given back, when the kernel has no room for it there.
inline bool StatsdTcpInput::admit(FileDescriptor fd, Clock::time_point now) {
  auto connection = std::make_unique<StatsdConnection>();
  connection->fd = std::move(fd);
  connection->deadline = deadline(now);
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.ptr = connection.get();
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, connection->fd.get(), &event) != 0) {
    budget_.give_back(connection_bytes);
    return false;
  }
  ++accepted_;
  earliest_deadline_ = std::min(earliest_deadline_, connection->deadline);
  connections_.push_back(std::move(connection));
  return true;
}

// Refused, in this order: a forbidden peer, a full house, no room in the budget.
// Taking the bytes is the last check, so that a refused connection holds none.
inline std::optional<TcpRefusal> StatsdTcpInput::admission(const SocketAddress &peer) {
  if (!allow_.allows(peer.get(), peer.length)) return TcpRefusal::forbidden_source;
  if (connections_.size() >= most_) return TcpRefusal::connection_limit;
  if (!budget_.take(connection_bytes)) return TcpRefusal::memory_limit;
  return std::nullopt;
}

inline void StatsdTcpInput::refuse(TcpRefusal reason, const SocketAddress &peer, Clock::time_point now) {
  ++refused_[static_cast<std::size_t>(reason)];
  if (logger_.enabled(LogLevel::debug))
    logger_.log(LogLevel::debug, "StatsD TCP connection refused", {{"reason", to_string(reason)}, {"peer", format_endpoint(peer.get())}});
  if (reason == TcpRefusal::forbidden_source || now < next_warning_) return;
  logger_.log(LogLevel::warn, "StatsD TCP connections refused",
              {{"reason", to_string(reason)}, {"open", std::to_string(connections_.size())},
               {"max_connections", std::to_string(most_)}});
  next_warning_ = now + std::chrono::seconds(HERMES_REJECT_LOG_INTERVAL_S);
}

// One read, at most HERMES_STATSD_TCP_READ_BYTES: the rest waits for the next step, so
// that every other socket gets its turn between.
inline void StatsdTcpInput::read(StatsdConnection &connection, Registry &registry, RejectLog &rejects, Now received,
                                 Clock::time_point now) {
  const ssize_t length = retry_on_eintr([&] { return ::recv(connection.fd.get(), buffer_.get(), HERMES_STATSD_TCP_READ_BYTES, 0); });
  if (length < 0 && is_not_now(errno)) return;
  if (length <= 0) return end(connection, length == 0 ? TcpClose::end : TcpClose::error, registry, rejects, received);
  bool whole = false;
  const bool fits = connection.stream.feed({buffer_.get(), static_cast<std::size_t>(length)}, [&](std::string_view lines) {
    apply(lines, registry, rejects, received);
    whole = true;
  });
  if (whole) connection.deadline = deadline(now);
  if (fits) return;
  IngestResult result; // the line is not parsed: its bytes may be anything
  result.rejected[static_cast<std::size_t>(Reject::too_large)] = 1;
  registry.count_rejected(Reject::too_large);
  rejects.note(result, std::string_view(buffer_.get(), static_cast<std::size_t>(length)), Clock::now());
  end(connection, TcpClose::too_large, registry, rejects, received);
}

inline void StatsdTcpInput::apply(std::string_view lines, Registry &registry, RejectLog &rejects, Now received) {
  const IngestResult result = registry.ingest_statsd_lines(lines, received);
  if (result.rejected_total() > 0) rejects.note(result, lines, Clock::now());
}

// Closes a connection, taking its last line unless it was too long; it is removed from
// the list by remove_closed(), after the step's reads.
inline void StatsdTcpInput::end(StatsdConnection &connection, TcpClose reason, Registry &registry, RejectLog &rejects,
                                Now received) {
  if (reason != TcpClose::too_large)
    connection.stream.finish([&](std::string_view line) { apply(line, registry, rejects, received); });
  ++closed_[static_cast<std::size_t>(reason)];
  connection.fd.reset(); // which takes it out of the epoll set
  ended_ = true;
}

inline void StatsdTcpInput::remove_closed() {
  const auto closed = std::remove_if(connections_.begin(), connections_.end(), [](const auto &c) { return closing(*c); });
  budget_.give_back(static_cast<std::size_t>(connections_.end() - closed) * connection_bytes);
  connections_.erase(closed, connections_.end());
  ended_ = false;
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: GZIP =======================================================================

namespace hermes {
namespace detail {

// Reads one Accept-Encoding header as golang/gddo's ParseAccept does: elements "coding"
// or "coding;q=N" (N: 0 or 1, either with decimals) separated by commas, up to the first
// one it cannot read; `note(coding, q)` for each.
template <typename Note> void read_accept_encoding(std::string_view text, Note &&note) {
  const auto skip_space = [&text] {
    while (!text.empty() && std::strchr(" \t\r\n", text.front()) != nullptr) text.remove_prefix(1);
  };
  const auto take = [&text](char c) { return !text.empty() && text.front() == c && (text.remove_prefix(1), true); };
  for (;;) {
    const auto coding_end = std::find_if(text.begin(), text.end(), [](char c) { return !is_token_char(c) && c != '/'; });
    const std::string_view coding = text.substr(0, static_cast<std::size_t>(coding_end - text.begin()));
    if (coding.empty()) return;
    text.remove_prefix(coding.size());
    skip_space();
    double q = 1;
    if (take(';')) {
      skip_space();
      if (!take('q') || !take('=') || text.empty() || (text.front() != '0' && text.front() != '1')) return;
      q = text.front() - '0';
      text.remove_prefix(1);
      if (take('.'))
        for (double scale = 0.1; !text.empty() && is_ascii_digit(text.front()); text.remove_prefix(1), scale /= 10)
          q += (text.front() - '0') * scale;
    }
    note(coding, q);
    skip_space();
    if (!take(',')) return;
    skip_space();
  }
}

// Whether a request wants its /metrics body in gzip, as client_golang's promhttp
// negotiates it (NegotiateContentEncoding over the offers identity, then gzip): gzip when
// its best q is above 0 and above those of identity and of "*". So no header,
// "identity", "*", "gzip;q=0", "gzip, identity" and "GZIP" (codings compare as written)
// get the plain body; "gzip", "deflate, gzip" and "br;q=1, gzip;q=0.8, *;q=0.1" gzip.
inline bool wants_gzip(const HttpRequest &request) {
  double gzip = -1, identity = -1, any = -1; // the best q of each; -1: not named
  for (const auto &[name, value] : request.headers) {
    if (name != "accept-encoding") continue;
    read_accept_encoding(value, [&](std::string_view coding, double q) {
      if (coding == "gzip") gzip = std::max(gzip, q);
      if (coding == "identity") identity = std::max(identity, q);
      if (coding == "*") any = std::max(any, q);
    });
  }
  return gzip > 0 && gzip > identity && gzip > any;
}

} // namespace detail
} // namespace hermes

#ifdef HERMES_GZIP

namespace hermes {
namespace detail {

// Makes gzip bodies with zlib, over the memory of the text they compress: the output
// trails the input it replaces, waiting in a small chunk when it runs ahead, so that a
// compressed body never needs more than its plain text had. One encoder serves every
// body in turn; what zlib allocates, and the chunk, are taken from the budget (when
// given) at construction and kept, so that compressing never allocates.
class GzipEncoder {
public:
  static constexpr std::size_t default_chunk_bytes = 64 * 1024; // the most the output may run ahead

  // Throws UsageError when the budget has no room for the compressor.
  GzipEncoder(int level, MemoryBudget *budget, std::size_t chunk_bytes = default_chunk_bytes)
      : budget_(budget), chunk_bytes_(chunk_bytes) {
    stream_.zalloc = allocate;
    stream_.zfree = release;
    stream_.opaque = this;
    chunk_ = static_cast<unsigned char *>(allocate(this, 1, static_cast<uInt>(chunk_bytes)));
    constexpr int gzip_window = 15 + 16, memory_level = 8; // zlib's defaults, with a gzip header and trailer
    if (!chunk_ || deflateInit2(&stream_, level, Z_DEFLATED, gzip_window, memory_level, Z_DEFAULT_STRATEGY) != Z_OK) {
      if (chunk_) release(this, chunk_);
      throw UsageError("HERMES_MAX_MEMORY: no room for the gzip compressor (about 300 KiB) beside Hermes' fixed buffers");
    }
  }
  GzipEncoder(const GzipEncoder &) = delete;
  GzipEncoder &operator=(const GzipEncoder &) = delete;
  ~GzipEncoder() {
    deflateEnd(&stream_);
    release(this, chunk_);
  }

  std::size_t bytes() const { return bytes_; } // what zlib and the chunk hold

  // Replaces `text` by one gzip member of it, written over the same memory; `pause` runs
  // after every HERMES_GZIP_PAUSE_BYTES of text. False when the output ran further ahead
  // of the input than the chunk holds (text that does not compress), or would not fit
  // the string's capacity at the end: the text is then spoilt, and must be made again.
  bool compress_in_place(std::string &text, const std::function<void()> &pause) {
    if (deflateReset(&stream_) != Z_OK) return false;
    const std::size_t size = text.size();
    written_ = 0, held_ = 0;
    for (std::size_t offset = 0;;) {
      const std::size_t piece = std::min<std::size_t>(HERMES_GZIP_PAUSE_BYTES, size - offset);
      stream_.next_in = reinterpret_cast<Bytef *>(text.data() + offset);
      stream_.avail_in = static_cast<uInt>(piece);
      offset += piece;
      const int result = deflate_piece(text, offset, offset == size ? Z_FINISH : Z_NO_FLUSH);
      if (result == Z_STREAM_END) return text.resize(written_), true;
      if (result != Z_OK) return false;
      if (pause) pause();
    }
  }

private:
  // Deflates what the stream holds of text[..end), moving the output behind the input
  // read so far; Z_STREAM_END when the member is whole, Z_OK when the piece is taken.
  int deflate_piece(std::string &text, std::size_t end, int flush) {
    for (;;) {
      stream_.next_out = chunk_ + held_;
      stream_.avail_out = static_cast<uInt>(chunk_bytes_ - held_);
      const int result = deflate(&stream_, flush);
      if (result != Z_OK && result != Z_STREAM_END && result != Z_BUF_ERROR) return result;
      held_ = chunk_bytes_ - stream_.avail_out;
      const bool input_read = stream_.avail_in == 0 && flush == Z_FINISH;
      const std::size_t limit = input_read ? text.capacity() : end - stream_.avail_in; // what may be overwritten
      const std::size_t moved = std::min(held_, limit - written_);
      if (written_ + moved > text.size()) text.resize(written_ + moved); // past the plain text, within its memory
      std::memcpy(&text[written_], chunk_, moved);
      std::memmove(chunk_, chunk_ + moved, held_ - moved);
      held_ -= moved, written_ += moved;
      if (result == Z_STREAM_END) return held_ == 0 ? Z_STREAM_END : Z_BUF_ERROR;
      if (held_ == chunk_bytes_) return Z_BUF_ERROR; // the output ran a whole chunk ahead
      if (stream_.avail_in == 0 && flush == Z_NO_FLUSH && stream_.avail_out > 0) return Z_OK;
    }
  }

  // zlib's allocator: each block takes its bytes from the budget, its size kept before it.
  static void *allocate(void *opaque, uInt items, uInt size) {
    auto &self = *static_cast<GzipEncoder *>(opaque);
    const std::size_t bytes = std::size_t{items} * size + sizeof(std::max_align_t);
    if (self.budget_ && !self.budget_->take(bytes)) return nullptr;
    auto *block = static_cast<unsigned char *>(std::malloc(bytes));
    if (!block) {
      if (self.budget_) self.budget_->give_back(bytes);
      return nullptr;
    }
    std::memcpy(block, &bytes, sizeof bytes);
    self.bytes_ += bytes;
    return block + sizeof(std::max_align_t);
  }
  static void release(void *opaque, void *address) {
    auto &self = *static_cast<GzipEncoder *>(opaque);
    unsigned char *block = static_cast<unsigned char *>(address) - sizeof(std::max_align_t);
    std::size_t bytes = 0;
    std::memcpy(&bytes, block, sizeof bytes);
    if (self.budget_) self.budget_->give_back(bytes);
    self.bytes_ -= bytes;
    std::free(block);
  }

  MemoryBudget *budget_;
  std::size_t chunk_bytes_;
  unsigned char *chunk_ = nullptr;
  std::size_t bytes_ = 0;
  std::size_t written_ = 0, held_ = 0; // output moved into the text, and waiting in the chunk
  z_stream stream_{};
};

} // namespace detail
} // namespace hermes

#endif // HERMES_GZIP

namespace hermes {
namespace detail {

// What the compressor of a server at gzip `level` takes from its budget at start; 0 off.
inline std::size_t gzip_compressor_bytes(int level) {
#ifdef HERMES_GZIP
  return level > 0 && level <= 9 ? GzipEncoder(level, nullptr).bytes() : 0;
#else
  (void)level; // a build without gzip has no compressor
  return 0;
#endif
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: HTTP FRONT END =============================================================

namespace hermes {
namespace detail {

class BudgetedBody;
// Brings the registry up to now, takes room in `body` for the most the body can be, and
// writes it there in a format, reusing the body's memory; false when the budget has no
// room for it.
using RenderBody = std::function<bool(Format, BudgetedBody &body)>;

// A /metrics body whose bytes are taken from the memory budget's room for bodies while
// it lives.
class BudgetedBody {
public:
  explicit BudgetedBody(MemoryBudget &budget) : budget_(budget) {}
  BudgetedBody(const BudgetedBody &) = delete;
  BudgetedBody &operator=(const BudgetedBody &) = delete;
  ~BudgetedBody() { budget_.resize_body(taken_, 0); }

  std::string text;
  bool gzip = false;           // the text is a gzip member of the body
  std::size_t plain_bytes = 0; // the body's size uncompressed

  // Takes room for a body of at most `bytes` with its terminating NUL, and makes the text
  // hold that much, so that writing it never allocates; false, with the text freed, when
  // the budget has no room. Memory of an earlier body is reused while it is not more
  // than twice what is needed.
  bool reserve(std::size_t bytes) {
    if (text.capacity() + 1 < bytes || text.capacity() / 2 > bytes) {
      free();
      if (!take(bytes)) return false;
      text.reserve(bytes - 1);
    }
    return settle();
  }
  // Matches what is taken to the memory the text holds; false, with the text freed, when
  // the budget has no room for it.
  bool settle() {
    const std::size_t holds = text.capacity() + 1;
    if (holds > taken_ && !take(holds - taken_)) return free(), false;
    if (holds < taken_) budget_.resize_body(taken_, holds), taken_ = holds;
    return true;
  }

private:
  void free() {
    std::string().swap(text); // assigning an empty string would keep the memory
    budget_.resize_body(taken_, 0);
    taken_ = 0;
  }
  bool take(std::size_t bytes) { return budget_.resize_body(taken_, taken_ + bytes) ? (taken_ += bytes, true) : false; }
  MemoryBudget &budget_;
  std::size_t taken_ = 0;
};

// The HTTP listener and its connections: accepts, reads request heads, answers, and
// lingers, each connection within its deadlines. Clients outside the allow list get
// 403, and when a token file is given, /metrics and / ask for its bearer token.
class HttpFrontEnd {
public:
  HttpFrontEnd(const Options &options, const Logger &logger, MemoryBudget &budget, RenderBody render, PushEndpoint push = {})
      : listener_(open_tcp_listener(options.http_address, options.http_port)), logger_(logger), budget_(budget),
        openmetrics_(options.openmetrics), protobuf_(options.protobuf), gzip_(options.gzip_level > 0), render_(std::move(render)),
        allow_(options.http_allow), token_file_(options.http_token_file),
        idle_timeout_(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.http_idle_timeout_seconds))),
        push_(std::move(push)) {
    start_tls(options);
    if (!push_.token_file.empty()) {
      const std::string problem = read_token_file(push_.token_file, push_token_, "push token file");
      if (!problem.empty()) throw ConfigError(problem);
    }
    if (token_file_.empty()) return;
    const std::string problem = read_token_file(token_file_, token_);
    if (!problem.empty()) throw ConfigError(problem);
  }

  // The budget every connection may take at most: its request head and response head.
  static constexpr std::size_t connection_bytes = HERMES_MAX_REQUEST_HEAD + 1 + sizeof(Connection) + 512;
  static constexpr std::size_t most_connections = HERMES_MAX_CONNECTIONS + HERMES_MAX_REFUSED_CONNECTIONS;

  int listener() const { return listener_.get(); }
  const std::string &token_file() const { return token_file_; }
  // Reads the token file again: "" when it now holds the token, or the problem, and
  // then the token in force stays.
  std::string reload_token() { return read_token_file(token_file_, token_); }
  const std::string &push_token_file() const { return push_.token_file; }
  std::string reload_push_token() { return read_token_file(push_.token_file, push_token_, "push token file"); }

  // The listener (unless accepting is paused) and each connection, for poll().
  void add_poll_fds(std::vector<pollfd> &fds, Clock::time_point now) const {
    fds.push_back({now >= accept_paused_until_ ? listener_.get() : -1, POLLIN, 0});
    for (const auto &connection : connections_)
      fds.push_back({connection->fd.get(), poll_events(*connection), 0});
  }

  // Serves what poll() found, from the listener's entry on, then drops finished connections.
  // While datagrams wait (`ingest_behind`), handshakes make way for them.
  void serve(const pollfd *fds, Clock::time_point now, bool ingest_behind = false) {
    const std::size_t polled = connections_.size();
    allow_handshakes(now, ingest_behind);
    for (std::size_t i = 0; i < polled; ++i) {
      Connection &connection = *connections_[i];
      if (fds[i + 1].revents) serve(connection, now);
      else if (connection.ready && connection.phase == Connection::Phase::reading) read_request(connection, now);
    }
    if (fds[0].revents) accept_connections(now);
    remove_finished(now);
  }

  // The next deadline of a connection, now for one with input to read, or the end of a
  // pause in accepting.
  std::optional<Clock::time_point> due(Clock::time_point now) const {
    std::optional<Clock::time_point> due;
    for (const auto &connection : connections_) {
      const Clock::time_point when = connection->ready ? now : connection->deadline;
      if (!due || when < *due) due = when;
    }
    if (accept_paused_until_ > now && (!due || accept_paused_until_ < *due)) due = accept_paused_until_;
    return due;
  }

  void add_stats(ServerStats &stats) const {
    stats.http_requests = requests_;
    stats.metrics_bytes_identity = sent_.identity;
    stats.metrics_bytes_gzip = sent_.gzip;
    stats.metrics_gzip_uncompressed_bytes = sent_.gzip_uncompressed;
    stats.push_requests = push_requests_;
    add_tls_stats(stats);
  }

  // The budget every TLS connection takes at start, beside connection_bytes.
  static constexpr std::size_t tls_connection_bytes = HERMES_TLS_CONNECTION_BYTES;
  bool tls() const;
  const std::string &tls_cert_file() const { return tls_settings_.cert_file; }
  // Reads the certificate and key again: "" when they are in force, or the problem, and
  // then the pair in force stays.
  std::string reload_tls();

private:
  void accept_connections(Clock::time_point now);
  void admit(FileDescriptor fd, bool forbidden, Clock::time_point now);
  bool close_oldest_reader(Clock::time_point now, bool forbidden_only = false);
  void note_waiting_bytes(Clock::time_point now);
  void serve(Connection &connection, Clock::time_point now);
  void read_request(Connection &connection, Clock::time_point now);
  enum class HeadStep { incomplete, answered, reading_body };
  HeadStep take_head(Connection &connection, std::size_t &searched, Clock::time_point now);
  HttpResponse answer(Connection &connection, std::string_view head, Clock::time_point now);
  enum class PushStart { not_push, answered, reading_body };
  PushStart begin_push(Connection &connection, std::string_view head, Clock::time_point now);
  std::optional<int> push_refusal(const HttpRequest &request, std::size_t &length, std::string &why);
  std::optional<HttpResponse> take_chunk_bytes(Connection &connection, std::size_t bytes);
  std::shared_ptr<const BudgetedBody> metrics_body(Format format, bool gzip, Clock::time_point now);
  std::shared_ptr<const BudgetedBody> refuse_body(std::size_t wanted);
  void respond(Connection &connection, HttpResponse response, Clock::time_point now);
  void write_response(Connection &connection, Clock::time_point now);
  void await_next_request(Connection &connection, Clock::time_point now);
  void drain(Connection &connection);
  void remove_finished(Clock::time_point now);

  // The hooks of TLS, which pass bytes through as they are on a plain port.
  void start_tls(const Options &options);
  void open_tls(Connection &connection);
  bool handshake(Connection &connection, Clock::time_point now);
  ssize_t receive(Connection &connection, char *buffer, std::size_t size);
  ssize_t send_parts(Connection &connection, const iovec *parts, std::size_t count);
  void end_output(Connection &connection);
  void count_unfinished(const Connection &connection);
  void add_tls_stats(ServerStats &stats) const;
  void allow_handshakes(Clock::time_point now, bool ingest_behind);
  static short poll_events(const Connection &connection);

  // The latest body of a format and encoding: shared by the scrapes that come within
  // HERMES_SHARED_BODY_MS of it while it is being sent, and its memory reused by the
  // next when nobody sends it.
  struct Latest {
    std::shared_ptr<BudgetedBody> body;
    Clock::time_point rendered{};
  };

  FileDescriptor listener_;
  const Logger &logger_;
  MemoryBudget &budget_;
  bool openmetrics_, protobuf_, gzip_;
  RenderBody render_;
  std::array<Latest, 2 * static_cast<std::size_t>(Format::count_)> latest_; // plain, then gzip
  struct {
    std::uint64_t identity = 0, gzip = 0, gzip_uncompressed = 0;
  } sent_; // bytes of /metrics bodies sent
  AllowList allow_;        // clients; empty: everyone
  std::string token_file_; // empty: no token asked for
  std::string token_;
  Clock::duration idle_timeout_; // of a connection kept open between requests; 0: none kept
  std::vector<std::unique_ptr<Connection>> connections_;
  std::map<int, std::uint64_t> requests_ = ServerStats().http_requests; // by status, every one from 0
  PushEndpoint push_;
  std::string push_token_;
  std::map<std::pair<std::string, int>, std::uint64_t> push_requests_ = ServerStats().push_requests; // by method and status
  std::uint64_t accepted_ = 0;
  std::size_t refusing_ = 0; // connections being told 503
  Clock::time_point accept_paused_until_{};
  Clock::time_point next_fd_warning_{};
  Clock::time_point next_memory_warning_{};
  TlsServerSettings tls_settings_; // cert_file empty: plain HTTP
#ifdef HERMES_TLS
  std::shared_ptr<const TlsContext> tls_;
  std::uint64_t tls_ok_ = 0, tls_failed_ = 0, tls_timeout_ = 0, tls_failures_unlogged_ = 0;
  int handshakes_left_ = 0; // in this step; a connection past them stays readable and waits for the next
  Clock::time_point handshakes_allowed_{}; // when a step last allowed handshakes
  Clock::time_point next_tls_warning_{};
#endif
};

inline void HttpFrontEnd::accept_connections(Clock::time_point now) {
  for (int i = 0; i < HERMES_MAX_CONNECTIONS; ++i) {
    SocketAddress peer;
    const int fd = retry_on_eintr([&] {
      peer.length = sizeof peer.storage;
      return ::accept4(listener_.get(), reinterpret_cast<sockaddr *>(&peer.storage), &peer.length, SOCK_NONBLOCK | SOCK_CLOEXEC);
    });
    if (fd >= 0) {
      admit(FileDescriptor(fd), !allow_.allows(peer.get(), peer.length), now);
      continue;
    }
    if (errno == EMFILE || errno == ENFILE) {
      // Out of descriptors: an idle client gives its own up for the newcomer.
      if (close_oldest_reader(now)) continue;
    }
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      // The pending connection stays queued and the socket stays readable: without a
      // pause, poll() would wake at once, again and again.
      accept_paused_until_ = now + std::chrono::milliseconds(100);
      if (now >= next_fd_warning_) {
        logger_.log(LogLevel::warn, "cannot accept HTTP connections", {{"error", std::strerror(errno)}});
        next_fd_warning_ = now + std::chrono::seconds(HERMES_REJECT_LOG_INTERVAL_S);
      }
    }
    if (errno != ECONNABORTED) return;
  }
}

// A full house that no idle client can make room in still reads the newcomer's request
// and answers 503, within HERMES_MAX_REFUSED_CONNECTIONS: closing at once, with its
// request unread, would reset the connection and the client would see no answer.
inline void HttpFrontEnd::admit(FileDescriptor fd, bool forbidden, Clock::time_point now) {
  bool refuse = false;
  if (connections_.size() - refusing_ >= HERMES_MAX_CONNECTIONS && !close_oldest_reader(now, forbidden)) {
    if (refusing_ >= HERMES_MAX_REFUSED_CONNECTIONS) return; // closes: no room even to refuse
    refuse = true;
    ++refusing_;
  }
  // An answer goes out as it is written, as Go's servers send theirs: with Nagle's
  // algorithm the last part of an answer on a kept-alive connection (over TLS, the body's
  // record after the head's) would wait for the client to acknowledge the first, which
  // it delays by up to 40 ms.
  const int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  auto connection = std::make_unique<Connection>();
  connection->fd = std::move(fd);
  connection->sequence = ++accepted_;
  connection->refused = refuse;
  connection->forbidden = forbidden;
  connection->deadline = now + std::chrono::milliseconds(HERMES_HTTP_READ_TIMEOUT_MS);
  open_tls(*connection);
  connections_.push_back(std::move(connection));
}

// A full house is most often idle or slow clients: one still sending its request head
// gives its place to the newcomer, a forbidden one first, then one kept open between
// requests (its client opens another when it needs one, while closing one mid-request
// loses the request), then one that has sent nothing
// (so that a flood of silent connections cannot push out a client mid-handshake), else
// the one silent longest: a client whose handshake waits its turn with Hermes is not
// pushed out by clients that sent a ClientHello and went quiet.
// A forbidden newcomer takes only a forbidden one's place: clients outside the allow
// list cannot push out those inside it.
inline bool HttpFrontEnd::close_oldest_reader(Clock::time_point now, bool forbidden_only) {
  note_waiting_bytes(now);
  Connection *oldest = nullptr;
  for (const auto &connection : connections_) {
    if (connection->phase != Connection::Phase::reading || connection->refused || (forbidden_only && !connection->forbidden))
      continue;
    const auto rank = [](const Connection &c) { return std::make_tuple(!c.forbidden, !c.idle, c.heard, c.last_heard, c.sequence); };
    if (!oldest || rank(*connection) < rank(*oldest)) oldest = connection.get();
  }
  if (!oldest) return false;
  count_unfinished(*oldest);
  const auto position = std::find_if(connections_.begin(), connections_.end(), [&](const auto &c) { return c.get() == oldest; });
  connections_.erase(position);
  return true;
}

// A connection accepted in this step, or waiting for its turn, has not been served yet;
// when its bytes (a ClientHello, a request head) already wait in the kernel it has spoken,
// and a burst of silent newcomers accepted before its turn must not push it out.
inline void HttpFrontEnd::note_waiting_bytes(Clock::time_point now) {
  for (const auto &connection : connections_) {
    if (connection->heard || connection->phase != Connection::Phase::reading) continue;
    int waiting = 0;
    if (::ioctl(connection->fd.get(), FIONREAD, &waiting) == 0 && waiting > 0)
      connection->heard = true, connection->last_heard = now;
  }
}

inline void HttpFrontEnd::serve(Connection &connection, Clock::time_point now) {
  switch (connection.phase) {
  case Connection::Phase::reading:
    connection.heard = true;
    connection.last_heard = now;
    read_request(connection, now);
    break;
  case Connection::Phase::writing: write_response(connection, now); break;
  case Connection::Phase::lingering: drain(connection); break;
  case Connection::Phase::done: break;
  }
}

// A push without Content-Length whose body comes in chunks (prom-client's, as Node sends
// a body written in parts).
inline bool is_chunked(const HttpRequest &request) {
  return header(request, "content-length").empty() && lowercase(header(request, "transfer-encoding")) == "chunked";
}

// The chunks received so far, decoded in place: each chunk's data moved to the end of
// the body decoded before it, its size line and CRLF dropped; chunk extensions and
// trailer fields are ignored, as Go's server ignores them. `done` once the zero chunk
// and the empty line after its trailer section have come.
enum class ChunkState { more, done, bad, too_large };

inline ChunkState decode_chunks(Connection &connection, std::size_t max_body) {
  std::string &input = connection.input;
  for (;;) {
    const std::size_t line_end = input.find("\r\n", connection.chunk_at);
    if (line_end == std::string::npos) // a line that never ends is searched again at each read: bounded, as Go's
      return input.size() - connection.chunk_at > HERMES_MAX_CHUNK_LINE ? ChunkState::bad : ChunkState::more;
    if (line_end - connection.chunk_at > HERMES_MAX_CHUNK_LINE) return ChunkState::bad;
    const std::string_view line = std::string_view(input).substr(connection.chunk_at, line_end - connection.chunk_at);
    if (connection.last_chunk) { // the trailer section: field lines until an empty one
      connection.chunk_at = line_end + 2;
      if (line.empty()) return ChunkState::done;
      continue;
    }
    std::string_view digits = line.substr(0, line.find(';'));
    while (!digits.empty() && (digits.back() == ' ' || digits.back() == '\t')) digits.remove_suffix(1);
    std::size_t size = 0;
    const auto parsed = std::from_chars(digits.data(), digits.data() + digits.size(), size, 16);
    if (digits.empty() || parsed.ptr != digits.data() + digits.size()) return ChunkState::bad;
    if (parsed.ec != std::errc() || size > max_body - connection.body_length) return ChunkState::too_large;
    const std::size_t data_at = line_end + 2;
    if (size > 0 && input.size() < data_at + size + 2) return ChunkState::more; // from this size line again
    if (size > 0 && input.compare(data_at + size, 2, "\r\n") != 0) return ChunkState::bad;
    const auto data = input.begin() + static_cast<std::ptrdiff_t>(data_at);
    std::copy(data, data + static_cast<std::ptrdiff_t>(size),
              input.begin() + static_cast<std::ptrdiff_t>(connection.body_start + connection.body_length));
    connection.body_length += size;
    connection.chunk_at = size > 0 ? data_at + size + 2 : data_at;
    connection.last_chunk = size == 0;
  }
}

// A push answered before its body is whole, with what to fix.
inline HttpResponse refusal_response(int status, const std::string &why) {
  HttpResponse response = error_response(status);
  if (!why.empty()) response.body = why + "\n";
  return response;
}

inline HttpResponse chunk_refusal(ChunkState state, std::size_t max_body) {
  if (state == ChunkState::bad) return refusal_response(400, "a chunked body whose chunk framing does not parse");
  return refusal_response(413, "a chunked body larger than the limit of " + std::to_string(max_body) +
                                   " bytes, its framing counted");
}

inline void HttpFrontEnd::read_request(Connection &connection, Clock::time_point now) {
  connection.ready = false;
  if (!handshake(connection, now)) return;
  char buffer[4096];
  std::size_t searched = 0; // where in the input a head's end may begin: bytes before were searched
  for (;;) {
    const std::size_t wanted = !connection.push ? HERMES_MAX_REQUEST_HEAD + 1
                               : connection.chunked ? connection.input.size() + sizeof buffer
                                                    : connection.body_start + connection.body_length;
    const ChunkState chunks = connection.chunked ? decode_chunks(connection, push_.max_body) : ChunkState::more;
    if (chunks == ChunkState::bad || chunks == ChunkState::too_large)
      return respond(connection, chunk_refusal(chunks, push_.max_body), now);
    if (connection.push && (connection.chunked ? chunks == ChunkState::done : connection.input.size() >= wanted)) {
      const std::string_view body = std::string_view(connection.input).substr(connection.body_start, connection.body_length);
      connection.keep_alive = idle_timeout_ > Clock::duration::zero() && keeps_connection(*connection.push, true);
      return respond(connection, push_.answer(*connection.push, body), now);
    }
    if (!connection.push) {
      const HeadStep step = take_head(connection, searched, now);
      if (step == HeadStep::answered) return;
      if (step == HeadStep::reading_body) continue;
    }
    const std::size_t room = std::min(sizeof buffer, wanted - connection.input.size());
    const ssize_t length = receive(connection, buffer, room);
    if (length <= 0) {
      // End of stream before a whole head or body, or an error: nobody to answer.
      if (length == 0 || !is_not_now(errno)) connection.phase = Connection::Phase::done;
      return;
    }
    if (connection.idle) { // the next request has begun: its head has the time a new connection's has
      connection.idle = false;
      connection.deadline = now + std::chrono::milliseconds(HERMES_HTTP_READ_TIMEOUT_MS);
    }
    if (connection.push && connection.chunked)
      if (auto refusal = take_chunk_bytes(connection, static_cast<std::size_t>(length)))
        return respond(connection, std::move(*refusal), now);
    connection.input.append(buffer, static_cast<std::size_t>(length));
  }
}

// Looks for a whole request head in the input, from `searched` on (moved past what has
// been searched when there is none yet), and answers it or starts reading its push body.
inline HttpFrontEnd::HeadStep HttpFrontEnd::take_head(Connection &connection, std::size_t &searched, Clock::time_point now) {
  // Empty lines before the request line are ignored (RFC 9112, section 2.2).
  if (const std::size_t start = connection.input.find_first_not_of("\r\n"); start != 0) {
    connection.input.erase(0, start);
    searched = 0;
  }
  if (connection.input.empty()) return HeadStep::incomplete;
  const std::size_t head_end = find_head_end(std::string_view(connection.input).substr(searched));
  if (head_end == std::string::npos && connection.input.size() <= HERMES_MAX_REQUEST_HEAD) {
    searched = connection.input.size() >= 2 ? connection.input.size() - 2 : 0;
    return HeadStep::incomplete;
  }
  if (head_end == std::string::npos || searched + head_end > HERMES_MAX_REQUEST_HEAD)
    return respond(connection, error_response(connection.forbidden ? 403 : 431), now), HeadStep::answered;
  const std::string_view head = std::string_view(connection.input).substr(0, searched + head_end);
  connection.body_start = head.size();
  const PushStart push = begin_push(connection, head, now);
  if (push == PushStart::answered) return HeadStep::answered;
  if (push == PushStart::reading_body) return HeadStep::reading_body;
  respond(connection, answer(connection, head, now), now);
  return HeadStep::answered;
}

// A Content-Length: decimal digits only.
inline std::optional<std::size_t> parse_decimal_size(std::string_view text) {
  std::size_t value = 0;
  const auto result = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || result.ec != std::errc() || result.ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

// Each read of a chunked body takes its bytes from the budget before they are kept,
// and counts them against the limit: the body's size is not known before its end.
inline std::optional<HttpResponse> HttpFrontEnd::take_chunk_bytes(Connection &connection, std::size_t bytes) {
  if (connection.body_taken + bytes > push_.max_body) return chunk_refusal(ChunkState::too_large, push_.max_body);
  if (!budget_.take(bytes))
    return refusal_response(507, "no room in the memory budget for " + std::to_string(connection.body_taken + bytes) +
                                     " bytes of a chunked body");
  connection.body_taken += bytes;
  return std::nullopt;
}

// A request of the Pushgateway API goes on to read its body, within HERMES_HTTP_READ_TIMEOUT_MS
// more, its bytes taken from the memory budget; or is answered at once when it lacks the
// push token, a length, or an encoding Hermes reads, or when its body is too large for
// the limit or the budget. Any other request, and one from a forbidden or refused
// client, is not a push.
inline HttpFrontEnd::PushStart HttpFrontEnd::begin_push(Connection &connection, std::string_view head, Clock::time_point now) {
  if (!push_.takes || connection.forbidden || connection.refused) return PushStart::not_push;
  auto request = parse_request_head(head);
  if (!request || request->version[5] != '1' || !push_.takes(*request)) return PushStart::not_push;
  connection.http11 = is_http11(*request); // a refused push closes the connection: its body is not read
  std::size_t length = 0;
  std::string why;
  const auto count = [&](int status) { ++push_requests_[{request->method, status}]; };
  if (const auto refusal = push_refusal(*request, length, why)) {
    count(*refusal);
    respond(connection, refusal_response(*refusal, why), now);
    return PushStart::answered;
  }
  connection.budget = &budget_;
  connection.body_taken = length;
  connection.body_start = head.size();
  connection.body_length = length;
  connection.chunked = is_chunked(*request);
  connection.chunk_at = head.size();
  connection.input.reserve(head.size() + length);
  connection.push = std::move(*request);
  connection.deadline = now + std::chrono::milliseconds(HERMES_HTTP_READ_TIMEOUT_MS);
  if (connection.chunked) // what came with the head
    if (auto refusal = take_chunk_bytes(connection, connection.input.size() - head.size())) {
      respond(connection, std::move(*refusal), now);
      return PushStart::answered;
    }
  return PushStart::reading_body;
}

// Why a push is answered before its body is read, with `why` for the client; or nullopt
// with `length` its body's and the bytes taken from the budget.
inline std::optional<int> HttpFrontEnd::push_refusal(const HttpRequest &request, std::size_t &length, std::string &why) {
  if (!push_token_.empty() && !bearer_matches(header(request, "authorization"), push_token_)) return 401;
  if (const std::string problem = framing_problem(request); !problem.empty()) return why = "a push with " + problem, 400;
  const std::string_view encoding = header(request, "content-encoding");
  if (!encoding.empty() && lowercase(encoding) != "identity")
    return why = "Content-Encoding " + std::string(encoding) + " is not supported: send the body as it is", 415;
  const std::string_view length_text = header(request, "content-length");
  if (length_text.empty() && request.method == "DELETE" && header(request, "transfer-encoding").empty()) return std::nullopt;
  if (length_text.empty() && is_chunked(request)) return std::nullopt; // each chunk's bytes are taken as they come
  if (length_text.empty()) return why = "a push needs a Content-Length or chunks", 411;
  const auto parsed = parse_decimal_size(length_text);
  if (!parsed) return why = "Content-Length " + std::string(length_text) + " is not a number of bytes", 400;
  if (*parsed > push_.max_body)
    return why = "a body of " + std::string(length_text) + " bytes is larger than the limit of " + std::to_string(push_.max_body), 413;
  if (!budget_.take(*parsed))
    return why = "no room in the memory budget for a body of " + std::string(length_text) + " bytes", 507;
  length = *parsed;
  return std::nullopt;
}

// A forbidden client learns nothing but 403, whatever it asked; a request without the
// token for a path that needs it gets 401, whatever its method. After a 403, a 400 or a
// 503 for a full house the connection closes.
inline HttpResponse HttpFrontEnd::answer(Connection &connection, std::string_view head, Clock::time_point now) {
  const auto request = parse_request_head(head);
  const bool head_only = request && request->method == "HEAD";
  connection.http11 = request && is_http11(*request);
  connection.keep_alive = request && !connection.forbidden && !connection.refused && idle_timeout_ > Clock::duration::zero() &&
                          keeps_connection(*request, false);
  if (connection.forbidden) return error_response(403, head_only);
  if (!request) return error_response(400);
  if (!framing_problem(*request).empty()) return connection.keep_alive = false, error_response(400);
  if (connection.refused) return error_response(503);
  if (!token_.empty() && needs_token(request->path) && !bearer_matches(header(*request, "authorization"), token_))
    return error_response(401, head_only);
  const bool gzip = gzip_ && wants_gzip(*request);
  std::shared_ptr<const BudgetedBody> body;
  HttpResponse response = route(*request, openmetrics_, protobuf_, [&](Format format) {
    body = metrics_body(format, gzip, now);
    return body ? std::shared_ptr<const std::string>(body, &body->text) : nullptr;
  });
  if (body && response.shared_body) {
    response.gzip = body->gzip;
    if (!response.head_only) {
      (body->gzip ? sent_.gzip : sent_.identity) += body->text.size();
      sent_.gzip_uncompressed += body->gzip ? body->plain_bytes : 0;
    }
  }
  return response;
}

// A scrape the budget has no room for, which only more bodies in flight at once than
// HERMES_SCRAPE_BODIES can meet: logged at most once per interval, answered 503.
inline std::shared_ptr<const BudgetedBody> HttpFrontEnd::refuse_body(std::size_t wanted) {
  const Clock::time_point now = Clock::now();
  if (now >= next_memory_warning_) {
    logger_.log(LogLevel::warn, "no room in the memory budget for one more /metrics body; answered 503",
                {{"wanted", std::to_string(wanted)}, {"used", std::to_string(budget_.used())},
                 {"room_for_bodies", std::to_string(budget_.body_room())}, {"budget", std::to_string(budget_.limit())}});
    next_memory_warning_ = now + std::chrono::seconds(HERMES_REJECT_LOG_INTERVAL_S);
  }
  return nullptr;
}

// The body of a scrape: the latest of its format and encoding while connections still
// send it and it is recent enough (scrapers that do not read, or read slowly, all share
// it), else a new one, written over the latest's memory when nobody sends that any more.
// It takes the most a body of the series can be, which the budget keeps room for; a gzip
// body is compressed within that memory. Idle bodies of the other formats and encodings
// are freed first, so that the room holds only bodies in flight. Null when more bodies
// are in flight than the room holds and the budget has no more.
inline std::shared_ptr<const BudgetedBody> HttpFrontEnd::metrics_body(Format format, bool gzip, Clock::time_point now) {
  Latest &latest = latest_[static_cast<std::size_t>(format) + (gzip ? static_cast<std::size_t>(Format::count_) : 0)];
  const bool in_flight = latest.body.use_count() > 1; // a connection is still sending it
  if (in_flight && now - latest.rendered < std::chrono::milliseconds(HERMES_SHARED_BODY_MS)) return latest.body;
  for (Latest &other : latest_)
    if (&other != &latest && other.body.use_count() == 1) other.body.reset();
  std::shared_ptr<BudgetedBody> body = latest.body.use_count() == 1 ? latest.body : std::make_shared<BudgetedBody>(budget_);
  latest.body.reset(); // connections still sending it keep it
  body->gzip = gzip;
  if (!render_(format, *body)) return refuse_body(budget_.body_bound());
  latest.body = body;
  latest.rendered = now;
  return body;
}

inline void HttpFrontEnd::respond(Connection &connection, HttpResponse response, Clock::time_point now) {
  ++requests_[response.status];
  if (connection.push) ++push_requests_[{connection.push->method, response.status}];
  connection.head = response_head(response, connection.http11, connection.keep_alive);
  if (!response.head_only) {
    connection.body = std::move(response.body);
    connection.shared_body = std::move(response.shared_body);
  }
  // Bytes the client sent after the request wait for their turn, in a string of their
  // size: a push body's memory goes back with its bytes.
  const std::size_t request_end = connection.chunked ? connection.chunk_at : connection.body_start + connection.body_length;
  connection.input = connection.keep_alive ? connection.input.substr(request_end) : std::string();
  if (connection.budget) connection.budget->give_back(connection.body_taken), connection.body_taken = 0;
  connection.phase = Connection::Phase::writing;
  connection.deadline = now + std::chrono::milliseconds(HERMES_HTTP_WRITE_TIMEOUT_MS);
  write_response(connection, now); // most responses fit the socket buffer at once
}

inline void HttpFrontEnd::write_response(Connection &connection, Clock::time_point now) {
  const std::string &head = connection.head;
  const std::string &body = connection.shared_body ? *connection.shared_body : connection.body;
  while (connection.sent < head.size() + body.size()) {
    std::array<iovec, 2> parts{};
    std::size_t count = 0;
    if (connection.sent < head.size())
      parts[count++] = {const_cast<char *>(head.data()) + connection.sent, head.size() - connection.sent};
    const std::size_t body_sent = connection.sent > head.size() ? connection.sent - head.size() : 0;
    if (body_sent < body.size()) parts[count++] = {const_cast<char *>(body.data()) + body_sent, body.size() - body_sent};
    const ssize_t length = send_parts(connection, parts.data(), count);
    if (length < 0) {
      if (!is_not_now(errno)) connection.phase = Connection::Phase::done; // the client went away
      return;
    }
    connection.sent += static_cast<std::size_t>(length);
  }
  connection.head = std::string();
  connection.body = std::string();
  connection.shared_body.reset(); // the last connection sending a body that is not the latest frees it
  if (connection.keep_alive) return await_next_request(connection, now);
  end_output(connection); // the end of the stream: the client reads the answer's end in it too
  connection.phase = Connection::Phase::lingering;
  connection.deadline = now + std::chrono::milliseconds(HERMES_HTTP_LINGER_MS);
}

// A connection kept open reads its next request in the next step, from the bytes it sent
// ahead or from the socket: one request at a time, so that a client that sends many at
// once holds the loop no longer than one that sends one. It waits
// Options::http_idle_timeout_seconds for the request's first byte.
inline void HttpFrontEnd::await_next_request(Connection &connection, Clock::time_point now) {
  connection.phase = Connection::Phase::reading;
  connection.sent = 0;
  connection.keep_alive = connection.http11 = false;
  connection.push.reset();
  connection.body_start = connection.body_length = connection.chunk_at = 0;
  connection.chunked = connection.last_chunk = false;
  connection.idle = connection.input.empty();
  connection.ready = true; // TLS may hold decrypted bytes that poll() cannot see
  connection.deadline = now + (connection.idle ? idle_timeout_ : std::chrono::milliseconds(HERMES_HTTP_READ_TIMEOUT_MS));
}

inline void HttpFrontEnd::drain(Connection &connection) {
  char buffer[4096];
  for (;;) {
    const ssize_t length = receive(connection, buffer, sizeof buffer);
    if (length > 0) continue;
    if (length == 0 || !is_not_now(errno)) connection.phase = Connection::Phase::done;
    return;
  }
}

inline void HttpFrontEnd::remove_finished(Clock::time_point now) {
  for (const auto &connection : connections_)
    if (now >= connection->deadline && connection->phase != Connection::Phase::done) {
      count_unfinished(*connection);
      connection->phase = Connection::Phase::done;
    }
  const auto finished = std::remove_if(connections_.begin(), connections_.end(), [this](const auto &c) {
    if (c->phase != Connection::Phase::done) return false;
    if (c->refused) --refusing_;
    return true;
  });
  connections_.erase(finished, connections_.end());
}

// ---- TLS hooks -------------------------------------------------------------------------------

// With a certificate and key, every connection speaks TLS, and each of the connections
// the front end may hold (refused ones too) takes its TLS state's bytes from the budget
// now, before any is accepted: a flood of handshakes cannot take memory from series.
inline void HttpFrontEnd::start_tls(const Options &options) {
  tls_settings_ = {options.tls_cert_file, options.tls_key_file, options.tls_client_ca_file};
  if (tls_settings_.cert_file.empty() && tls_settings_.key_file.empty() && tls_settings_.client_ca_file.empty()) return;
#ifndef HERMES_TLS
  throw ConfigError("HERMES_TLS_CERT_FILE (tls_server): TLS is not compiled in: build Hermes with -DHERMES_TLS and mbedTLS");
#else
  if (tls_settings_.cert_file.empty() || tls_settings_.key_file.empty())
    throw ConfigError("HERMES_TLS_CERT_FILE and HERMES_TLS_KEY_FILE (tls_server.cert_file and key_file) go together");
  tls_ = TlsContext::for_server(tls_settings_);
  if (!budget_.take(most_connections * tls_connection_bytes))
    throw UsageError("HERMES_MAX_MEMORY: " + std::to_string(budget_.limit()) + " bytes leave no room for the " +
                     std::to_string(most_connections * tls_connection_bytes) + " bytes of TLS connections");
#endif
}

inline bool HttpFrontEnd::tls() const {
#ifdef HERMES_TLS
  return tls_ != nullptr;
#else
  return false;
#endif
}

inline std::string HttpFrontEnd::reload_tls() {
#ifdef HERMES_TLS
  try {
    tls_ = TlsContext::for_server(tls_settings_); // open connections keep the pair they started with
    return "";
  } catch (const ConfigError &error) {
    return error.what();
  }
#else
  return "";
#endif
}

inline void HttpFrontEnd::open_tls([[maybe_unused]] Connection &connection) {
#ifdef HERMES_TLS
  if (tls_) connection.tls = std::make_unique<TlsStream>(tls_, connection.fd.get());
#endif
}

// Each handshake step may sign, for milliseconds: a loop step allows
// HERMES_TLS_HANDSHAKES_PER_STEP of them, none while datagrams wait unread, unless
// HERMES_TLS_HANDSHAKE_WAIT_MS have passed without any (so that a stream over Hermes'
// capacity slows handshakes down without stopping them).
inline void HttpFrontEnd::allow_handshakes([[maybe_unused]] Clock::time_point now, [[maybe_unused]] bool ingest_behind) {
#ifdef HERMES_TLS
  handshakes_left_ = 0;
  if (ingest_behind && now < handshakes_allowed_ + std::chrono::milliseconds(HERMES_TLS_HANDSHAKE_WAIT_MS)) return;
  handshakes_left_ = HERMES_TLS_HANDSHAKES_PER_STEP;
  handshakes_allowed_ = now;
#endif
}

// One step of a connection's handshake: true once its request may be read. A failed one
// is counted and logged, at most one line per interval, with mbedTLS' reason and the
// client's address; the alert mbedTLS sent says the same to the client.
inline bool HttpFrontEnd::handshake([[maybe_unused]] Connection &connection, [[maybe_unused]] Clock::time_point now) {
#ifdef HERMES_TLS
  if (!connection.tls || connection.tls->handshake_done()) return true;
  if (handshakes_left_ == 0) return false;
  --handshakes_left_;
  if (connection.tls->handshake()) return ++tls_ok_, true;
  if (!connection.tls->failed()) return false;
  ++tls_failed_;
  connection.phase = Connection::Phase::done;
  if (now < next_tls_warning_) return ++tls_failures_unlogged_, false;
  SocketAddress peer;
  peer.length = sizeof peer.storage;
  const bool known = ::getpeername(connection.fd.get(), reinterpret_cast<sockaddr *>(&peer.storage), &peer.length) == 0;
  logger_.log(LogLevel::warn, "TLS handshake failed",
              {{"client", known ? format_endpoint(peer.get()) : "?"}, {"error", connection.tls->error()},
               {"failed_unlogged", std::to_string(tls_failures_unlogged_)}});
  tls_failures_unlogged_ = 0;
  next_tls_warning_ = now + std::chrono::seconds(HERMES_REJECT_LOG_INTERVAL_S);
  return false;
#else
  return true; // a plain port has no handshake
#endif
}

// recv() as the callers know it: a count, 0 at the end, -1 with errno (EAGAIN: not now).
inline ssize_t HttpFrontEnd::receive(Connection &connection, char *buffer, std::size_t size) {
#ifdef HERMES_TLS
  if (connection.tls) {
    const std::ptrdiff_t length = connection.tls->read(buffer, size);
    if (length < 0) errno = connection.tls->failed() ? ECONNRESET : EAGAIN;
    return length;
  }
#endif
  return retry_on_eintr([&] { return ::recv(connection.fd.get(), buffer, size, 0); });
}

// sendmsg() as the callers know it. Over TLS, the first part goes as records; the
// caller comes back for the rest.
inline ssize_t HttpFrontEnd::send_parts(Connection &connection, const iovec *parts, std::size_t count) {
#ifdef HERMES_TLS
  if (connection.tls) {
    const std::ptrdiff_t length = connection.tls->write(static_cast<const char *>(parts[0].iov_base), parts[0].iov_len);
    if (length < 0) errno = connection.tls->failed() ? EPIPE : EAGAIN;
    return length;
  }
#endif
  msghdr message{};
  message.msg_iov = const_cast<iovec *>(parts);
  message.msg_iovlen = count;
  return retry_on_eintr([&] { return ::sendmsg(connection.fd.get(), &message, MSG_NOSIGNAL); });
}

// The end of the response: over TLS, close_notify first (sent if the socket takes it).
inline void HttpFrontEnd::end_output(Connection &connection) {
#ifdef HERMES_TLS
  if (connection.tls) connection.tls->close();
#endif
  ::shutdown(connection.fd.get(), SHUT_WR);
}

// A connection ended by its deadline or for a newcomer while its handshake was unfinished.
inline void HttpFrontEnd::count_unfinished([[maybe_unused]] const Connection &connection) {
#ifdef HERMES_TLS
  if (connection.tls && !connection.tls->handshake_done() && !connection.tls->failed()) ++tls_timeout_;
#endif
}

inline short HttpFrontEnd::poll_events(const Connection &connection) {
#ifdef HERMES_TLS
  if (connection.tls && connection.phase == Connection::Phase::reading) return connection.tls->poll_events();
#endif
  return connection.phase == Connection::Phase::writing ? short(POLLOUT) : short(POLLIN);
}

inline void HttpFrontEnd::add_tls_stats([[maybe_unused]] ServerStats &stats) const {
#ifdef HERMES_TLS
  if (!tls_) return;
  stats.tls = true;
  stats.tls_handshakes_ok = tls_ok_, stats.tls_handshakes_failed = tls_failed_, stats.tls_handshakes_timeout = tls_timeout_;
  stats.tls_certificate_expiry_seconds = tls_->certificate_expiry_seconds();
#endif
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: STATE ======================================================================
//
// The state file: every series as JSON text, one series a line, written by Hermes' own
// writer (no tree of 100k series in memory) and read back with picojson, as a stream of
// one series at a time. Numbers are
// written in their shortest round-trip form; infinities and NaN, which JSON has no
// numbers for, as the strings "+Inf", "-Inf" and "NaN". Times that must survive a reboot
// are ages: how long before the write a series was last pushed, how long until a summary
// window turned next. The monotonic clock starts again at every boot; the wall clock may
// be decades off on a board without a real-time clock.

namespace hermes {
namespace detail {

inline Series new_series(const MetricConfig &metric, Now now); // SAMPLES
inline bool same_shape(const MetricConfig &a, const MetricConfig &b); // REGISTRY

constexpr const char *state_format_name = "hermes-state";
// Version 2 keeps a summary window's buffer once, for its five streams; version 1 kept
// one in each stream, and is still read.
constexpr double state_format_version = 2;
constexpr std::size_t state_v1_stream_buffer_limit = 500; // observations a version 1 stream held unmerged
constexpr std::size_t state_json_depth = 10; // the deepest place: a quantile stream's entry

inline void append_state_number(std::string &out, double value) {
  if (std::isnan(value)) {
    out += "\"NaN\"";
  } else if (std::isinf(value)) {
    out += value > 0 ? "\"+Inf\"" : "\"-Inf\"";
  } else {
    char buffer[32];
    out.append(buffer, std::to_chars(buffer, buffer + sizeof buffer, value).ptr);
  }
}

inline void append_state_count(std::string &out, std::uint64_t value) {
  char buffer[24];
  out.append(buffer, std::to_chars(buffer, buffer + sizeof buffer, value).ptr);
}

// `"key": ` with the comma before it unless it is the first of its object.
inline void append_state_key(std::string &out, const char *key, bool first = false) {
  if (!first) out += ", ";
  out += '"';
  out += key;
  out += "\": ";
}

template <typename Items, typename Write> void append_state_list(std::string &out, const Items &items, Write write) {
  out += '[';
  bool first = true;
  for (const auto &item : items) {
    if (!first) out += ", ";
    first = false;
    write(item);
  }
  out += ']';
}

// A series of a state file, read and checked, waiting to be put in place.
struct RestoredSeries {
  std::vector<std::string> labels;
  Series series;
};
struct RestoredMetric {
  MetricConfig shape;
  std::vector<RestoredSeries> series;
};
// A pushed group of a state file, read and checked; its push_* families are made from
// its two times as it is put in place.
struct RestoredPushGroup {
  PushGroup group;
  double push_time = 0, push_failure_time = 0;
};

// Writes and reads the state file's text; a friend of Registry and the quantile
// classes, so that none of them needs a public surface for it.
class StateCodec {
public:
  // Makes room in `out` for `bytes` more; false stops the write.
  using MakeRoom = std::function<bool(std::string &out, std::size_t bytes)>;
  // Writes the state over `out`; `make_room`, when given, is asked before each part is
  // written for the most that part can be. False when it refused.
  // With `pushes`, their groups follow the series.
  static bool save(const Registry &registry, std::string &out, Now now, const std::function<void()> &pause,
                   const MakeRoom &make_room = {}, const PushStore *pushes = nullptr);
  static std::size_t text_bound(const Registry &registry); // the most save() writes now
  // With `pushes`, the file's groups go into them; without, they are read, checked and left.
  static Registry::RestoreSummary restore(Registry &registry, std::string_view text, double monotonic_now,
                                          PushStore *pushes = nullptr);

  // The reading side: every problem names its place in the file.
  explicit StateCodec(double monotonic_now) : monotonic_now_(monotonic_now) {}
  void check_format(const picojson::object &top) const;
  MetricConfig read_shape(const picojson::object &metric, const std::string &place) const;
  RestoredSeries read_series(const MetricConfig &shape, const picojson::value &value, const std::string &place) const;
  RestoredPushGroup read_push_group(const picojson::value &value, const std::string &place) const;
  [[noreturn]] void fail(const std::string &place, const std::string &problem) const;

private:
  static std::size_t header_bound(const Registry &registry);
  static std::size_t shape_bound(const MetricConfig &config);
  static std::size_t series_text_bound(const LabelValues &labels, const Series &series);

public:
  static std::size_t worst_series_text(const MetricConfig &config, std::size_t label_value_bytes);

private:
  static void write_shape(std::string &out, const MetricConfig &config);
  static void write_series(std::string &out, const MetricConfig &config, const LabelValues &labels,
                           const Series &series, double monotonic_now);
  static void write_window(std::string &out, const QuantileWindow &window, double monotonic_now);
  static void write_native(std::string &out, const NativeHistogram &native);
  static bool write_push_groups(std::string &out, const PushStore &pushes, double monotonic_now, const MakeRoom &make_room);
  static void write_push_group(std::string &out, const PushGroup &group, double monotonic_now);
  static std::size_t push_group_text_bound(const PushGroup &group);
  PushLabels read_push_labels(const picojson::value &value, const std::string &place) const;
  PushedFamily read_pushed_family(const picojson::value &value, const std::string &place) const;
  static void put_push_groups_in_place(PushStore &pushes, std::vector<RestoredPushGroup> &groups,
                                       Registry::RestoreSummary &summary);
  void read_native(const MetricConfig &shape, const picojson::value &value, NativeHistogram &native,
                   const std::string &place) const;
  static Registry::RestoreSummary put_in_place(Registry &registry, std::vector<RestoredMetric> &metrics);

  const picojson::value &at(const picojson::object &object, const std::string &key, const std::string &place) const;
  const picojson::array &list_at(const picojson::value &value, const std::string &place) const;
  const picojson::object &object_at(const picojson::value &value, const std::string &place) const;
  std::string text_at(const picojson::value &value, const std::string &place) const;
  double number_at(const picojson::value &value, const std::string &place) const;
  double finite_at(const picojson::value &value, const std::string &place, double low, double high) const;
  std::uint64_t count_at(const picojson::value &value, const std::string &place) const;
  void read_distribution(const MetricConfig &shape, const picojson::object &object, Distribution &seen,
                         const std::string &place) const;
  std::unique_ptr<QuantileWindow> read_window(const MetricConfig &shape, const picojson::value &value,
                                              const std::string &place) const;
  void read_stream(const picojson::value &value, QuantileStream &stream, std::size_t most, const std::string &place) const;
  void read_v1_stream(const picojson::value &value, QuantileStream &stream, const QuantileStream::Objectives &objectives,
                      const std::string &place) const;
  std::vector<double> read_values(const picojson::value &value, std::size_t fewer_than, const char *what,
                                  const std::string &place) const;

  double monotonic_now_;
};

// ---- writing ---------------------------------------------------------------------------

inline bool StateCodec::save(const Registry &registry, std::string &out, Now now, const std::function<void()> &pause,
                             const MakeRoom &make_room, const PushStore *pushes) {
  out.clear();
  const auto room = [&](std::size_t bytes) { return !make_room || make_room(out, bytes); };
  if (!room(header_bound(registry))) return false;
  out += "{\"format\": \"";
  out += state_format_name;
  out += "\", \"version\": ";
  append_state_number(out, state_format_version);
  append_state_key(out, "written_at");
  append_state_number(out, now.wall);
  append_state_key(out, "service_name");
  append_json_string(out, registry.service_name());
  out += ", \"metrics\": [";
  std::size_t since_pause = 0;
  std::vector<std::uint32_t> pending; // series made since the registry last sorted them
  for (std::size_t m = 0; m < registry.metrics_.size(); ++m) {
    const Metric &metric = registry.metrics_[m];
    if (!room(shape_bound(metric.config))) return false;
    out += m == 0 ? "\n" : ",\n";
    write_shape(out, metric.config);
    out += ", \"series\": [";
    bool first = true;
    for (SeriesTable::InOrder walk(metric.series, pending); !walk.done();) {
      const auto &[labels, series] = walk.next();
      if (!room(series_text_bound(labels, series))) return false;
      out += first ? "\n  " : ",\n  ";
      first = false;
      write_series(out, metric.config, labels, series, now.monotonic);
      if (pause && ++since_pause == HERMES_STATE_PAUSE_STRIDE) {
        since_pause = 0;
        pause();
      }
    }
    out += "]}";
  }
  out += ']';
  if (pushes && !write_push_groups(out, *pushes, now.monotonic, make_room)) return false;
  out += "}\n";
  return true;
}

// The bytes of a JSON string as append_json_string writes it.
inline std::size_t json_string_size(std::string_view text) {
  std::size_t size = 2 + text.size();
  for (const char c : text) size += c == '"' || c == '\\' ? 1 : static_cast<unsigned char>(c) < 0x20 ? 5 : 0;
  return size;
}

// What save() writes, at most, with every number as long as a number can be: walks the
// series, whose summary windows and native buckets vary, and nothing else.
constexpr std::size_t state_number = longest_number + 4; // with ", " or brackets around it
constexpr std::size_t state_keys = 256;                  // the keys and punctuation of one object

// The file's head and end, one metric's shape, one series: each at most.
inline std::size_t StateCodec::header_bound(const Registry &registry) {
  return state_keys + state_number + json_string_size(registry.service_name());
}

inline std::size_t StateCodec::shape_bound(const MetricConfig &config) {
  std::size_t bytes = state_keys + json_string_size(config.name) + (config.buckets.size() + 2 * config.objectives.size() + 4) * state_number;
  for (const std::string &label : config.labels) bytes += json_string_size(label) + 2;
  return bytes;
}

inline std::size_t StateCodec::series_text_bound(const LabelValues &labels, const Series &series) {
  std::size_t bytes = state_keys + 6 * state_number;
  for (const std::string_view value : labels) bytes += json_string_size(value) + 2;
  if (!series.distribution) return bytes;
  const Distribution &seen = *series.distribution;
  bytes += seen.bucket_counts.size() * state_number;
  if (seen.native) bytes += state_keys + (seen.native->buckets() + 2) * 2 * state_number;
  if (seen.quantiles) bytes += state_keys * (1 + QuantileWindow::streams) + seen.quantiles->memory_entries() * 3 * state_number;
  return bytes;
}

// series_text_bound of a series at its fullest: every bucket a native histogram can
// hold, every entry a summary's streams and buffer can hold.
inline std::size_t StateCodec::worst_series_text(const MetricConfig &config, std::size_t label_value_bytes) {
  std::size_t bytes = state_keys + 6 * state_number + config.labels.size() * (label_value_bytes + 4);
  if (config.type == MetricType::histogram) bytes += (config.buckets.size() + 1) * state_number;
  if (config.native)
    bytes += state_keys + (std::max(config.native_max_buckets, most_native_buckets_at_coarsest) + 2) * 2 * state_number;
  if (!config.objectives.empty()) {
    const std::size_t entries = QuantileWindow::streams * QuantileStream::entry_limit(config.objectives) + QuantileWindow::buffer_limit;
    bytes += state_keys * (1 + QuantileWindow::streams) + entries * 3 * state_number;
  }
  return bytes;
}

inline std::size_t StateCodec::text_bound(const Registry &registry) {
  std::size_t bytes = header_bound(registry);
  for (const Metric &metric : registry.metrics_) {
    bytes += shape_bound(metric.config);
    for (const auto &[labels, series] : metric.series) bytes += series_text_bound(labels, series);
  }
  return bytes;
}

// What a series must match to be restored: as Registry::reload, type, labels, buckets,
// objectives and max_age_seconds.
inline void StateCodec::write_shape(std::string &out, const MetricConfig &config) {
  append_state_key(out += '{', "name", true);
  append_json_string(out, config.name);
  append_state_key(out, "type");
  append_json_string(out, to_string(config.type));
  append_state_key(out, "labels");
  append_state_list(out, config.labels, [&](const std::string &label) { append_json_string(out, label); });
  if (config.type == MetricType::histogram) {
    append_state_key(out, "buckets");
    append_state_list(out, config.buckets, [&](double bound) { append_state_number(out, bound); });
  }
  if (config.native) {
    append_state_key(out, "native_bucket_factor");
    append_state_number(out, config.native_bucket_factor);
    append_state_key(out, "native_max_buckets");
    append_state_count(out, config.native_max_buckets);
    append_state_key(out, "native_zero_threshold");
    append_state_number(out, config.native_zero_threshold);
  }
  if (config.type == MetricType::summary) {
    append_state_key(out, "objectives");
    append_state_list(out, config.objectives, [&](const std::pair<double, double> &objective) {
      append_state_number(out += '[', objective.first);
      append_state_number(out += ", ", objective.second);
      out += ']';
    });
    append_state_key(out, "max_age_seconds");
    append_state_number(out, config.max_age_seconds);
  }
}

inline void StateCodec::write_series(std::string &out, const MetricConfig &config, const LabelValues &labels,
                                     const Series &series, double monotonic_now) {
  append_state_key(out += '{', "labels", true);
  append_state_list(out, labels, [&](std::string_view value) { append_json_string(out, value); });
  if (const Distribution *seen = series.distribution.get()) {
    append_state_key(out, "sum");
    append_state_number(out, seen->sum);
    append_state_key(out, "count");
    append_state_count(out, seen->count);
    if (config.type == MetricType::histogram) {
      append_state_key(out, "bucket_counts");
      append_state_list(out, seen->bucket_counts, [&](std::uint64_t count) { append_state_count(out, count); });
    }
    if (seen->quantiles) write_window(out, *seen->quantiles, monotonic_now);
    if (seen->native) write_native(out, *seen->native);
  } else {
    append_state_key(out, "value");
    append_state_number(out, series.value);
  }
  append_state_key(out, "created");
  append_state_number(out, series.created);
  append_state_key(out, "pushed_ago");
  append_state_number(out, std::max(0.0, monotonic_now - series.last_push));
  out += '}';
}

// A native histogram's schema, zero bucket and sparse buckets as [index, count] pairs.
inline void StateCodec::write_native(std::string &out, const NativeHistogram &native) {
  const auto side = [&](const NativeSide &buckets) {
    append_state_list(out, buckets, [&](const std::pair<std::int32_t, std::uint64_t> &bucket) {
      append_state_number(out += '[', bucket.first);
      append_state_count(out += ", ", bucket.second);
      out += ']';
    });
  };
  append_state_key(out, "native");
  append_state_key(out += '{', "schema", true);
  append_state_number(out, native.schema);
  append_state_key(out, "zero_count");
  append_state_count(out, native.zero_count);
  append_state_key(out, "positive");
  side(native.positive);
  append_state_key(out, "negative");
  side(native.negative);
  out += '}';
}

// The five streams and the buffer as they are, the buffer unmerged (the file must not
// change the window), with the stream that answers and how long until the next turn.
inline void StateCodec::write_window(std::string &out, const QuantileWindow &window, double monotonic_now) {
  append_state_key(out, "window");
  append_state_key(out += '{', "head", true);
  append_state_count(out, window.head_);
  append_state_key(out, "turns_in"); // below 0 when overdue: no observation or query has turned it yet
  append_state_number(out, window.head_expires_ - monotonic_now);
  append_state_key(out, "streams");
  append_state_list(out, window.streams_, [&](const QuantileStream &stream) {
    append_state_key(out += '{', "entries", true);
    append_state_list(out, stream.entries_, [&](const QuantileStream::Entry &entry) {
      append_state_number(out += '[', entry.value);
      append_state_number(out += ", ", entry.width);
      append_state_number(out += ", ", entry.delta);
      out += ']';
    });
    out += '}';
  });
  append_state_key(out, "buffer");
  append_state_list(out, window.buffer_, [&](double value) { append_state_number(out, value); });
  out += '}';
}

// ---- pushed groups ---------------------------------------------------------------------
//
// "push_groups": one group a line, with what Pushgateway's persistence file keeps of it
// (its families and two push times) and how long before the write it was last pushed,
// from which its TTL counts on. Older files have none, and still load; an older Hermes
// reads past them.

inline bool StateCodec::write_push_groups(std::string &out, const PushStore &pushes, double monotonic_now,
                                          const MakeRoom &make_room) {
  const auto room = [&](std::size_t bytes) { return !make_room || make_room(out, bytes); };
  if (!room(state_keys)) return false;
  append_state_key(out, "push_groups");
  out += '[';
  bool first = true;
  for (const auto &entry : pushes.groups()) {
    if (!room(push_group_text_bound(entry.second))) return false;
    out += first ? "\n" : ",\n";
    first = false;
    write_push_group(out, entry.second, monotonic_now);
  }
  out += ']';
  return true;
}

// Label pairs as one flat list of strings: name, value, name, value...
inline void append_state_labels(std::string &out, const PushLabels &labels) {
  out += '[';
  for (std::size_t i = 0; i < labels.size(); ++i) {
    append_json_string(out += i == 0 ? "" : ", ", labels[i].first);
    append_json_string(out += ", ", labels[i].second);
  }
  out += ']';
}

// A held sample with the labels it shows, as Pushgateway's persistence file keeps them.
inline void write_pushed_metric(std::string &out, PushType type, const PushedMetric &metric, const PushLabels &key) {
  append_state_key(out += '{', "labels", true);
  append_state_labels(out, shown_labels(key, metric.labels));
  if (type == PushType::summary || type == PushType::histogram) {
    append_state_key(out, "count");
    append_state_number(out, metric.count);
    append_state_key(out, "sum");
    append_state_number(out, metric.sum);
    append_state_key(out, "points"); // quantiles or buckets: bound, value, bound, value...
    out += '[';
    for (std::size_t i = 0; i < metric.points.size(); ++i) {
      append_state_number(out += i == 0 ? "" : ", ", metric.points[i].first);
      append_state_number(out += ", ", metric.points[i].second);
    }
    out += ']';
  } else {
    append_state_key(out, "value");
    append_state_number(out, metric.value);
  }
  if (!metric.native.empty()) { // metrics.proto's bytes, in hexadecimal
    static constexpr char digits[] = "0123456789abcdef";
    append_state_key(out, "native");
    out += '"';
    for (const char c : metric.native) out.append(1, digits[static_cast<unsigned char>(c) >> 4]).append(1, digits[c & 15]);
    out += '"';
  }
  out += '}';
}

inline void StateCodec::write_push_group(std::string &out, const PushGroup &group, double monotonic_now) {
  append_state_key(out += '{', "key", true);
  append_state_labels(out, group.key);
  append_state_key(out, "pushed_ago");
  append_state_number(out, monotonic_now - group.last_push);
  for (const char *name : {push_time_name, push_failure_name}) {
    append_state_key(out, name == push_time_name ? "push_time" : "push_failure_time");
    append_state_number(out, group.families.at(name).metrics.front().value);
  }
  append_state_key(out, "families");
  out += '[';
  bool first = true;
  for (const auto &[name, family] : group.families) {
    if (is_push_time(name)) continue;
    out += first ? "" : ", ";
    first = false;
    append_state_key(out += '{', "name", true);
    append_json_string(out, name);
    if (family.help) {
      append_state_key(out, "help");
      append_json_string(out, *family.help);
    }
    append_state_key(out, "type");
    append_json_string(out, to_string(*family.type));
    append_state_key(out, "metrics");
    const PushType type = *family.type; // a lambda may not capture a structured binding in C++17
    append_state_list(out, family.metrics, [&](const PushedMetric &metric) { write_pushed_metric(out, type, metric, group.key); });
    out += '}';
  }
  out += "]}";
}

inline std::size_t StateCodec::push_group_text_bound(const PushGroup &group) {
  const auto labels_bound = [](const PushLabels &labels) {
    std::size_t bytes = 2;
    for (const auto &[name, value] : labels) bytes += json_string_size(name) + json_string_size(value) + 4;
    return bytes;
  };
  // A sample's labels are its own, the grouping labels and at most instance="".
  const std::size_t grouping = labels_bound(group.key) + labels_bound({{"instance", ""}});
  std::size_t bytes = state_keys + labels_bound(group.key) + 3 * state_number;
  for (const auto &[name, family] : group.families) {
    bytes += state_keys + json_string_size(name) + (family.help ? json_string_size(*family.help) : 0);
    for (const PushedMetric &metric : family.metrics)
      bytes += state_keys + grouping + labels_bound(metric.labels) + (3 + 2 * metric.points.size()) * state_number +
               2 * metric.native.size();
  }
  return bytes;
}

// ---- reading ---------------------------------------------------------------------------

inline void StateCodec::fail(const std::string &place, const std::string &problem) const {
  throw StateError((place.empty() ? "" : place + ": ") + problem);
}

inline const picojson::value &StateCodec::at(const picojson::object &object, const std::string &key,
                                             const std::string &place) const {
  const auto found = object.find(key);
  if (found == object.end()) fail(place + (place.empty() ? "" : ".") + key, "missing");
  return found->second;
}

inline const picojson::array &StateCodec::list_at(const picojson::value &value, const std::string &place) const {
  if (!value.is<picojson::array>()) fail(place, std::string("expected a list, got ") + json_type_name(value));
  return value.get<picojson::array>();
}

inline const picojson::object &StateCodec::object_at(const picojson::value &value, const std::string &place) const {
  if (!value.is<picojson::object>()) fail(place, std::string("expected an object, got ") + json_type_name(value));
  return value.get<picojson::object>();
}

inline std::string StateCodec::text_at(const picojson::value &value, const std::string &place) const {
  if (!value.is<std::string>() || !is_valid_utf8(value.get<std::string>()))
    fail(place, std::string("expected a UTF-8 string, got ") + json_type_name(value));
  return value.get<std::string>();
}

// A number, or one of the strings "+Inf", "-Inf", "NaN".
inline double StateCodec::number_at(const picojson::value &value, const std::string &place) const {
  if (value.is<double>()) return value.get<double>();
  if (value.is<std::string>()) {
    const std::string &text = value.get<std::string>();
    if (text == "+Inf") return HUGE_VAL;
    if (text == "-Inf") return -HUGE_VAL;
    if (text == "NaN") return std::nan("");
  }
  fail(place, quote_json(value) + " is not a number");
}

inline double StateCodec::finite_at(const picojson::value &value, const std::string &place, double low, double high) const {
  const double number = number_at(value, place);
  if (!std::isfinite(number) || number < low || number > high) fail(place, quote_json(value) + " is out of range");
  return number;
}

inline std::uint64_t StateCodec::count_at(const picojson::value &value, const std::string &place) const {
  const double number = finite_at(value, place, 0, 18446744073709549568.0); // the largest double below 2^64
  if (number != std::floor(number)) fail(place, quote_json(value) + " is not a whole number");
  return static_cast<std::uint64_t>(number);
}

inline void StateCodec::check_format(const picojson::object &top) const {
  const auto format = top.find("format");
  if (format == top.end() || !format->second.is<std::string>() || format->second.get<std::string>() != state_format_name)
    fail("format", std::string("not a Hermes state file (no \"format\": \"") + state_format_name + "\")");
  const picojson::value &version = at(top, "version", "");
  if (!version.is<double>() || !(version.get<double>() == 1 || version.get<double>() == state_format_version))
    fail("version", "format version " + quote_json(version) + ", this Hermes reads versions 1 and 2");
}

inline MetricConfig StateCodec::read_shape(const picojson::object &metric, const std::string &place) const {
  MetricConfig shape;
  shape.name = text_at(at(metric, "name", place), place + ".name");
  const std::string type = text_at(at(metric, "type", place), place + ".type");
  const auto types = {MetricType::counter, MetricType::gauge, MetricType::histogram, MetricType::summary};
  const auto found = std::find_if(types.begin(), types.end(), [&](MetricType t) { return type == to_string(t); });
  if (found == types.end()) fail(place + ".type", "\"" + type + "\" is not a metric type");
  shape.type = *found;
  const picojson::array &labels = list_at(at(metric, "labels", place), place + ".labels");
  for (std::size_t i = 0; i < labels.size(); ++i)
    shape.labels.push_back(text_at(labels[i], place + ".labels[" + std::to_string(i) + "]"));
  if (shape.type == MetricType::histogram) {
    const picojson::array &buckets = list_at(at(metric, "buckets", place), place + ".buckets");
    for (std::size_t i = 0; i < buckets.size(); ++i)
      shape.buckets.push_back(finite_at(buckets[i], place + ".buckets[" + std::to_string(i) + "]", -HUGE_VAL, HUGE_VAL));
    if (member(metric, "native_bucket_factor")) { // a native histogram
      shape.native = true;
      shape.native_bucket_factor = finite_at(at(metric, "native_bucket_factor", place), place + ".native_bucket_factor", 1, HUGE_VAL);
      shape.native_max_buckets = static_cast<std::size_t>(count_at(at(metric, "native_max_buckets", place), place + ".native_max_buckets"));
      shape.native_zero_threshold =
          finite_at(at(metric, "native_zero_threshold", place), place + ".native_zero_threshold", 0, HUGE_VAL);
    }
  }
  if (shape.type == MetricType::summary) {
    const picojson::array &objectives = list_at(at(metric, "objectives", place), place + ".objectives");
    for (std::size_t i = 0; i < objectives.size(); ++i) {
      const std::string where = place + ".objectives[" + std::to_string(i) + "]";
      const picojson::array &pair = list_at(objectives[i], where);
      if (pair.size() != 2) fail(where, "expected [quantile, error]");
      shape.objectives.emplace_back(finite_at(pair[0], where, 0, 1), finite_at(pair[1], where, 0, 1));
    }
    shape.max_age_seconds = finite_at(at(metric, "max_age_seconds", place), place + ".max_age_seconds", 0, HUGE_VAL);
  }
  return shape;
}

inline RestoredSeries StateCodec::read_series(const MetricConfig &shape, const picojson::value &value,
                                              const std::string &place) const {
  const picojson::object &object = object_at(value, place);
  RestoredSeries restored;
  const picojson::array &labels = list_at(at(object, "labels", place), place + ".labels");
  if (labels.size() != shape.labels.size())
    fail(place + ".labels", std::to_string(labels.size()) + " values for " + std::to_string(shape.labels.size()) + " labels");
  for (std::size_t i = 0; i < labels.size(); ++i)
    restored.labels.push_back(text_at(labels[i], place + ".labels[" + std::to_string(i) + "]"));
  const double created = finite_at(at(object, "created", place), place + ".created", -HUGE_VAL, HUGE_VAL);
  const double pushed_ago = finite_at(at(object, "pushed_ago", place), place + ".pushed_ago", 0, HUGE_VAL);
  restored.series = new_series(shape, Now(monotonic_now_ - pushed_ago, created));
  if (restored.series.distribution) read_distribution(shape, object, *restored.series.distribution, place);
  else restored.series.value = number_at(at(object, "value", place), place + ".value");
  return restored;
}

inline void StateCodec::read_distribution(const MetricConfig &shape, const picojson::object &object, Distribution &seen,
                                          const std::string &place) const {
  seen.sum = number_at(at(object, "sum", place), place + ".sum");
  seen.count = count_at(at(object, "count", place), place + ".count");
  if (shape.type == MetricType::histogram) {
    const picojson::array &counts = list_at(at(object, "bucket_counts", place), place + ".bucket_counts");
    if (counts.size() != seen.bucket_counts.size())
      fail(place + ".bucket_counts", std::to_string(counts.size()) + " counts for " +
                                         std::to_string(seen.bucket_counts.size()) + " buckets with +Inf");
    for (std::size_t i = 0; i < counts.size(); ++i)
      seen.bucket_counts[i] = count_at(counts[i], place + ".bucket_counts[" + std::to_string(i) + "]");
  }
  if (seen.quantiles) seen.quantiles = read_window(shape, at(object, "window", place), place + ".window");
  if (seen.native) read_native(shape, at(object, "native", place), *seen.native, place + ".native");
}

// Buckets as Hermes writes them: indexes that increase, counts above 0, no more than the
// metric may hold, so that a file cannot make a series larger than its budget allows.
inline void StateCodec::read_native(const MetricConfig &shape, const picojson::value &value, NativeHistogram &native,
                                    const std::string &place) const {
  const picojson::object &object = object_at(value, place);
  native.schema = static_cast<std::int32_t>(finite_at(at(object, "schema", place), place + ".schema", native_schema_min,
                                                      native_schema_max));
  native.zero_count = count_at(at(object, "zero_count", place), place + ".zero_count");
  const std::size_t most = std::max<std::size_t>(shape.native_max_buckets, 130) + 1;
  for (const char *name : {"positive", "negative"}) {
    const std::string where = place + "." + name;
    const picojson::array &buckets = list_at(at(object, name, place), where);
    if (buckets.size() > most) fail(where, "more buckets than the metric may hold");
    NativeSide &side = std::string_view(name) == "positive" ? native.positive : native.negative;
    for (std::size_t i = 0; i < buckets.size(); ++i) {
      const std::string item = where + "[" + std::to_string(i) + "]";
      const picojson::array &pair = list_at(buckets[i], item);
      if (pair.size() != 2) fail(item, "expected [index, count]");
      const auto index = static_cast<std::int32_t>(finite_at(pair[0], item, INT32_MIN, INT32_MAX));
      if (!side.empty() && index <= side.back().first) fail(item, "indexes must increase");
      const std::uint64_t count = count_at(pair[1], item);
      if (count == 0) fail(item, "a bucket holds at least one observation");
      side.emplace_back(index, count);
    }
  }
}

inline std::unique_ptr<QuantileWindow> StateCodec::read_window(const MetricConfig &shape, const picojson::value &value,
                                                               const std::string &place) const {
  const picojson::object &object = object_at(value, place);
  auto window = std::make_unique<QuantileWindow>(shape, monotonic_now_);
  window->head_ = static_cast<std::size_t>(count_at(at(object, "head", place), place + ".head"));
  if (window->head_ >= QuantileWindow::streams) fail(place + ".head", "not a stream of the window");
  // Never later than one step from now: a longer wait was not written by Hermes, or only
  // by a rounding error (502.2 + 20 - 502.2 > 20).
  const double turns_in = finite_at(at(object, "turns_in", place), place + ".turns_in", -HUGE_VAL, HUGE_VAL);
  window->head_expires_ = monotonic_now_ + std::min(turns_in, window->step_);
  const picojson::array &streams = list_at(at(object, "streams", place), place + ".streams");
  if (streams.size() != QuantileWindow::streams) fail(place + ".streams", "a window has 5 streams");
  // Series are read as they come, before the file's version may have been: the window's
  // own buffer tells version 2 from version 1, whose streams each kept one.
  const auto buffer = object.find("buffer");
  for (std::size_t i = 0; i < streams.size(); ++i) {
    const std::string where = place + ".streams[" + std::to_string(i) + "]";
    if (buffer != object.end()) read_stream(streams[i], window->streams_[i], QuantileStream::entry_limit(shape.objectives), where);
    else read_v1_stream(streams[i], window->streams_[i], shape.objectives, where);
  }
  if (buffer != object.end())
    window->buffer_ = read_values(buffer->second, QuantileWindow::buffer_limit, "a window's", place + ".buffer");
  return window;
}

// A stream's entries, at most `most` of them: more would pass the worst case the budget
// counts for the series.
inline void StateCodec::read_stream(const picojson::value &value, QuantileStream &stream, std::size_t most,
                                    const std::string &place) const {
  const picojson::object &object = object_at(value, place);
  const picojson::array &entries = list_at(at(object, "entries", place), place + ".entries");
  if (entries.size() > most)
    fail(place + ".entries", std::to_string(entries.size()) + " entries, more than a stream keeps (" + std::to_string(most) + ")");
  stream.entries_.reserve(entries.size()); // no more room than they take: a grown vector could pass the worst case
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const std::string where = place + ".entries[" + std::to_string(i) + "]";
    const picojson::array &entry = list_at(entries[i], where);
    if (entry.size() != 3) fail(where, "expected [value, width, delta]");
    const QuantileStream::Entry read{number_at(entry[0], where), finite_at(entry[1], where, 1, HUGE_VAL),
                                     finite_at(entry[2], where, 0, HUGE_VAL)};
    if (!stream.entries_.empty() && !(stream.entries_.back().value <= read.value)) fail(where, "entries out of order");
    stream.entries_.push_back(read);
    stream.count_ += read.width;
  }
}

// A version 1 stream: its entries (that version kept up to 32 plus 1 / (2 error) for
// each objective) and its own buffer, merged now in runs. Brought within this version's
// limit as a merge would, it then holds no more than the worst case.
inline void StateCodec::read_v1_stream(const picojson::value &value, QuantileStream &stream,
                                       const QuantileStream::Objectives &objectives, const std::string &place) const {
  // Its entries, however many: the tree of the file's text that holds them is larger still.
  read_stream(value, stream, std::numeric_limits<std::size_t>::max(), place);
  std::vector<double> buffer =
      read_values(at(object_at(value, place), "buffer", place), state_v1_stream_buffer_limit, "a stream's", place + ".buffer");
  std::sort(buffer.begin(), buffer.end());
  for (std::size_t run = 0; run < buffer.size(); run += QuantileStream::run_limit)
    stream.merge(buffer.data() + run, std::min(QuantileStream::run_limit, buffer.size() - run), objectives);
  stream.keep_within_limit(objectives);
  const std::size_t most = QuantileStream::entry_limit(objectives), kept = stream.entries_.size();
  if (kept > most)
    fail(place + ".entries", std::to_string(kept) + " entries, more than a stream keeps (" + std::to_string(most) + ")");
  if (stream.entries_.capacity() > most + QuantileStream::run_limit) // no more room than they take
    stream.entries_ = std::vector<QuantileStream::Entry>(stream.entries_.begin(), stream.entries_.end());
}

// A list of at most `fewer_than` - 1 numbers: a buffer is merged once full.
inline std::vector<double> StateCodec::read_values(const picojson::value &value, std::size_t fewer_than, const char *what,
                                                   const std::string &place) const {
  const picojson::array &list = list_at(value, place);
  if (list.size() >= fewer_than) fail(place, std::string("longer than ") + what + " buffer");
  std::vector<double> values;
  values.reserve(list.size());
  for (std::size_t i = 0; i < list.size(); ++i) values.push_back(number_at(list[i], place + "[" + std::to_string(i) + "]"));
  return values;
}

inline PushLabels StateCodec::read_push_labels(const picojson::value &value, const std::string &place) const {
  const picojson::array &list = list_at(value, place);
  if (list.size() % 2 != 0) fail(place, "expected name, value, name, value...");
  PushLabels labels;
  for (std::size_t i = 0; i < list.size(); i += 2) {
    labels.emplace_back(text_at(list[i], place + "[" + std::to_string(i) + "]"),
                        text_at(list[i + 1], place + "[" + std::to_string(i + 1) + "]"));
    if (!is_label_name(labels.back().first)) fail(place + "[" + std::to_string(i) + "]", "not a label name");
  }
  return labels;
}

inline std::optional<std::string> read_native_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  std::string bytes;
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    unsigned byte = 0;
    if (std::from_chars(hex.data() + i, hex.data() + i + 2, byte, 16).ptr != hex.data() + i + 2) return std::nullopt;
    bytes += static_cast<char>(byte);
  }
  return bytes;
}

inline PushedFamily StateCodec::read_pushed_family(const picojson::value &value, const std::string &place) const {
  static constexpr PushType types[] = {PushType::counter, PushType::gauge, PushType::summary, PushType::untyped, PushType::histogram};
  const picojson::object &object = object_at(value, place);
  PushedFamily family;
  family.name = text_at(at(object, "name", place), place + ".name");
  if (object.count("help")) family.help = text_at(object.at("help"), place + ".help");
  const std::string type = text_at(at(object, "type", place), place + ".type");
  for (const PushType known : types)
    if (type == to_string(known)) family.type = known;
  if (!family.type) fail(place + ".type", quote_json(object.at("type")) + " is not a pushed type");
  const picojson::array &metrics = list_at(at(object, "metrics", place), place + ".metrics");
  const bool distribution = family.type == PushType::summary || family.type == PushType::histogram;
  for (std::size_t m = 0; m < metrics.size(); ++m) {
    const std::string where = place + ".metrics[" + std::to_string(m) + "]";
    const picojson::object &fields = object_at(metrics[m], where);
    PushedMetric &metric = family.metrics.emplace_back();
    metric.kind = *family.type;
    metric.labels = read_push_labels(at(fields, "labels", where), where + ".labels");
    if (!distribution) {
      metric.value = number_at(at(fields, "value", where), where + ".value");
    } else {
      metric.count = number_at(at(fields, "count", where), where + ".count");
      metric.sum = number_at(at(fields, "sum", where), where + ".sum");
      const picojson::array &points = list_at(at(fields, "points", where), where + ".points");
      if (points.size() % 2 != 0) fail(where + ".points", "expected bound, value, bound, value...");
      for (std::size_t i = 0; i < points.size(); i += 2)
        metric.points.emplace_back(number_at(points[i], where + ".points"), number_at(points[i + 1], where + ".points"));
    }
    if (!fields.count("native")) continue;
    const std::optional<std::string> native = read_native_hex(text_at(fields.at("native"), where + ".native"));
    if (!native || family.type != PushType::histogram) fail(where + ".native", "not a histogram's bytes in hexadecimal");
    metric.native = *native;
  }
  return family;
}

inline RestoredPushGroup StateCodec::read_push_group(const picojson::value &value, const std::string &place) const {
  const picojson::object &object = object_at(value, place);
  RestoredPushGroup restored;
  PushGroup &group = restored.group;
  group.key = read_push_labels(at(object, "key", place), place + ".key");
  if (std::none_of(group.key.begin(), group.key.end(), [](const auto &label) { return label.first == "job"; }))
    fail(place + ".key", "no job");
  group.last_push = monotonic_now_ - finite_at(at(object, "pushed_ago", place), place + ".pushed_ago", 0, HUGE_VAL);
  restored.push_time = number_at(at(object, "push_time", place), place + ".push_time");
  restored.push_failure_time = number_at(at(object, "push_failure_time", place), place + ".push_failure_time");
  const picojson::array &families = list_at(at(object, "families", place), place + ".families");
  for (std::size_t f = 0; f < families.size(); ++f) {
    const std::string where = place + ".families[" + std::to_string(f) + "]";
    PushedFamily family = read_pushed_family(families[f], where);
    if (is_push_time(family.name)) fail(where + ".name", "made from the group's times, not kept as a family");
    const std::string name = family.name;
    if (!group.families.emplace(name, std::move(family)).second) fail(where + ".name", "a second family " + go_quote(name));
  }
  return restored;
}

// Each group is checked as a push is, and held within the budget and max_push_groups;
// one that is not taken is counted and named.
inline void StateCodec::put_push_groups_in_place(PushStore &pushes, std::vector<RestoredPushGroup> &groups,
                                                 Registry::RestoreSummary &summary) {
  for (RestoredPushGroup &restored : groups) {
    const std::string key = labels_text(restored.group.key);
    const std::string problem = pushes.restore(std::move(restored.group), restored.push_time, restored.push_failure_time);
    if (problem.empty()) {
      ++summary.push_groups_restored;
      continue;
    }
    ++summary.push_groups_skipped;
    summary.push_group_problems.push_back(key + ": " + problem);
  }
}

// Every metric of the file that is configured with the same shape takes its series, up
// to max_series; the rest are counted and named once each.
inline Registry::RestoreSummary StateCodec::put_in_place(Registry &registry, std::vector<RestoredMetric> &metrics) {
  Registry::RestoreSummary summary;
  for (RestoredMetric &restored : metrics) {
    Metric *metric = registry.find(restored.shape.name);
    if (!metric) metric = registry.restore_line_metric(restored.shape);
    const char *problem = !metric ? "no longer configured"
                          : !same_shape(metric->config, restored.shape) ? "type, labels, buckets or objectives changed"
                                                                        : nullptr;
    std::size_t skipped = problem ? restored.series.size() : 0, over_budget = 0;
    for (std::size_t i = 0; !problem && i < restored.series.size(); ++i) {
      RestoredSeries &series = restored.series[i];
      Series *existing = metric->series.find(series.labels);
      const bool is_new = !existing;
      if (is_new && metric->series.size() >= metric->config.max_series) {
        ++skipped;
        continue;
      }
      const SeriesCost cost = series_cost(metric->config, series.labels);
      if (is_new && !registry.budget_->take_for_series(cost.own, cost.body)) {
        ++skipped, ++over_budget;
        continue;
      }
      if (existing) *existing = std::move(series.series);
      else metric->series.add(std::move(series.labels), std::move(series.series));
      ++summary.restored;
    }
    if (skipped == 0) continue;
    summary.skipped += skipped;
    const char *why = problem ? problem : over_budget ? "no room in the memory budget" : "more series than max_series";
    summary.problems.push_back(restored.shape.name + ": " + why + ", " + std::to_string(skipped) + " series not restored");
  }
  registry.changes_ += summary.restored;
  return summary;
}

// ---- reading as a stream ------------------------------------------------------------------

// What a state file holds, read: its top-level members but the metrics, and the metrics.
struct StateDocument {
  picojson::object top;
  std::vector<RestoredMetric> metrics;
  std::vector<RestoredPushGroup> push_groups;
};

// A picojson parse context for one place of a state file: the whole file, its list of
// metrics, one metric, or a metric's list of series. Only one series, or a metric's
// members before its series, is ever a tree: restoring 100k series takes little more
// memory than they do. A metric's "series" comes after its shape, as Hermes writes it.
// A problem throws StateError naming its place.
class StateReader {
public:
  enum class Place { root, metrics, metric, series, push_groups };

  StateReader(Place place, std::string where, const StateCodec &codec, StateDocument &document)
      : place_(place), where_(std::move(where)), codec_(codec), document_(document) {}

  bool set_null() { return wrong("null"); }
  bool set_bool(bool) { return wrong("a boolean"); }
  bool set_number(double) { return wrong("a number"); }
  template <typename Iter> bool parse_string(picojson::input<Iter> &) { return wrong("a string"); }
  bool parse_array_start() { return is_list() || wrong("a list"); }
  template <typename Iter> bool parse_array_item(picojson::input<Iter> &in, std::size_t index) {
    const std::string where = where_ + "[" + std::to_string(index) + "]";
    if (place_ == Place::metrics) {
      document_.metrics.emplace_back();
      StateReader metric(Place::metric, where, codec_, document_);
      if (!picojson::_parse(metric, in)) return false;
      if (!metric.seen_series_) codec_.fail(where + ".series", "missing");
      return true;
    }
    picojson::value tree; // one series, or one pushed group: each as deep as a series' quantile entry at most
    std::optional<std::string> out_of_range;
    BoundedJsonContext context(&tree, NestingBudget{state_json_depth - 4}, where, &out_of_range);
    if (!picojson::_parse(context, in)) return false;
    if (out_of_range) codec_.fail(*out_of_range, "a number beyond the range of a double");
    if (place_ == Place::push_groups) return document_.push_groups.push_back(codec_.read_push_group(tree, where)), true;
    RestoredMetric &metric = document_.metrics.back();
    metric.series.push_back(codec_.read_series(metric.shape, tree, where));
    return true;
  }
  bool parse_array_stop(std::size_t) { return true; }
  bool parse_object_start() { return place_ == Place::root || place_ == Place::metric || wrong("an object"); }
  template <typename Iter> bool parse_object_item(picojson::input<Iter> &in, const std::string &key) {
    if (place_ == Place::root && key == "metrics") {
      document_.top[key] = picojson::value(true); // present; its content is in document_.metrics
      StateReader metrics(Place::metrics, "metrics", codec_, document_);
      return picojson::_parse(metrics, in);
    }
    if (place_ == Place::root && key == "push_groups") {
      document_.top[key] = picojson::value(true);
      StateReader groups(Place::push_groups, "push_groups", codec_, document_);
      return picojson::_parse(groups, in);
    }
    if (place_ == Place::metric && key == "series") {
      seen_series_ = true;
      document_.metrics.back().shape = codec_.read_shape(header_, where_);
      StateReader series(Place::series, where_ + ".series", codec_, document_);
      return picojson::_parse(series, in);
    }
    std::optional<std::string> out_of_range;
    BoundedJsonContext member(&(place_ == Place::root ? document_.top : header_)[key], NestingBudget{state_json_depth - 2},
                              where_ + "." + key, &out_of_range);
    if (!picojson::_parse(member, in)) return false;
    if (out_of_range) codec_.fail(*out_of_range, "a number beyond the range of a double");
    return true;
  }
  bool parse_object_stop() { return true; }

private:
  bool is_list() const { return place_ == Place::metrics || place_ == Place::series || place_ == Place::push_groups; }
  bool wrong(const char *got) const {
    codec_.fail(where_, std::string(is_list() ? "expected a list, got " : "expected an object, got ") + got);
  }

  Place place_;
  std::string where_;
  const StateCodec &codec_;
  StateDocument &document_;
  picojson::object header_; // a metric's members before its series
  bool seen_series_ = false;
};

inline Registry::RestoreSummary StateCodec::restore(Registry &registry, std::string_view text, double monotonic_now,
                                                   PushStore *pushes) {
  const StateCodec codec(monotonic_now);
  StateDocument document;
  StateReader reader(StateReader::Place::root, "", codec, document);
  std::string error;
  if (!parse_json_into(reader, text, &error)) throw StateError(error);
  codec.check_format(document.top);
  if (document.top.find("metrics") == document.top.end()) codec.fail("metrics", "missing");
  Registry::RestoreSummary summary = put_in_place(registry, document.metrics);
  if (pushes) put_push_groups_in_place(*pushes, document.push_groups, summary);
  return summary;
}

// ---- files -----------------------------------------------------------------------------

inline std::string directory_of(const std::string &path) {
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Writes `bytes` to `path` so that a crash at any moment leaves the old file or the new
// one, whole: a new file beside it, written and fsynced, renamed over it, and the
// directory fsynced so that the rename itself is on disk. Returns "" on success, else
// the call that failed, its file and the system error; the old file is then untouched.
inline bool write_all(int fd, std::string_view bytes) {
  for (std::size_t written = 0; written < bytes.size();) {
    const ssize_t length = retry_on_eintr([&] { return ::write(fd, bytes.data() + written, bytes.size() - written); });
    if (length < 0) return false;
    written += static_cast<std::size_t>(length);
  }
  return true;
}

inline std::string write_file_atomically(const std::string &path, const std::string &bytes) {
  const std::string pattern = path + ".XXXXXX"; // mkstemp: a new name, never another file's
  std::string temporary = pattern;
  const int fd = ::mkostemp(&temporary[0], O_CLOEXEC);
  if (fd < 0) return system_error_message("create " + pattern, errno);
  const auto failed = [&](const char *call, const std::string &file, int error) {
    ::unlink(temporary.c_str());
    return system_error_message(std::string(call) + " " + file, error);
  };
  const bool written = write_all(fd, bytes);
  const bool synced = written && ::fsync(fd) == 0;
  const int error = errno;
  if (::close(fd) != 0 && synced) return failed("close", temporary, errno);
  if (!synced) return failed(written ? "fsync" : "write", temporary, error);
  if (::rename(temporary.c_str(), path.c_str()) != 0) return failed("rename", temporary + " to " + path, errno);
  const std::string directory = directory_of(path);
  FileDescriptor dir(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  // Some file systems cannot fsync a directory (EINVAL); the rename is then as durable as they make it.
  if (!dir || (::fsync(dir.get()) != 0 && errno != EINVAL))
    return system_error_message("fsync directory " + directory + " (the new state is in place, perhaps not yet on disk)", errno);
  return "";
}

// Moves a file that is not state out of the way, to "<path>.corrupt-<seconds since the
// epoch>" (with "-2", "-3"... while that name is taken), never over another file.
// Returns the new name; throws StateError when it cannot be moved.
inline std::string set_aside(const std::string &path) {
  const std::string base = path + ".corrupt-" + std::to_string(static_cast<long long>(wall_clock_seconds()));
  for (int attempt = 1; attempt <= 100; ++attempt) {
    const std::string aside = attempt == 1 ? base : base + "-" + std::to_string(attempt);
    if (::renameat2(AT_FDCWD, path.c_str(), AT_FDCWD, aside.c_str(), RENAME_NOREPLACE) == 0) return aside;
    if (errno == EINVAL && ::link(path.c_str(), aside.c_str()) == 0) { // a file system without RENAME_NOREPLACE
      ::unlink(path.c_str());
      return aside;
    }
    if (errno != EEXIST) break;
  }
  throw StateError(system_error_message("cannot set " + path + " aside (nothing was written over it; move it away and start again)", errno));
}

// ---- the keeper ------------------------------------------------------------------------

// A message that quotes a file's bytes, safe for a log line: other bytes become '?'.
inline std::string printable_ascii(std::string_view text) {
  std::string out(text);
  for (char &c : out)
    if (c < 0x20 || c > 0x7e) c = '?';
  return out;
}

// The state file of a server: restores it at start, writes it every interval when the
// registry or the pushed groups changed, and once more at stop. The slow part of a write (write, fsync,
// rename) runs on a thread of its own that owns only a finished buffer, so that the
// loop never waits for a disk; the text is made on the loop, between looks at the sockets.
// The file read at start and each text written take their bytes from the memory budget
// while they live; a text the budget has no room for is a failed write, tried again
// at the next interval.
class StateKeeper {
public:
  StateKeeper(const Options &options, const Logger &logger, MemoryBudget &budget, PushStore &pushes)
      : path_(options.state_file), interval_(options.state_interval_seconds), logger_(logger), budget_(budget),
        pushes_(pushes) {}
  StateKeeper(const StateKeeper &) = delete;
  StateKeeper &operator=(const StateKeeper &) = delete;
  ~StateKeeper() {
    if (has_state) wait(); // without the part no write starts: no std::thread, nor the C library's threads, linked
  }

  bool enabled() const { return !path_.empty(); }
  void restore(Registry &registry, double monotonic_now);
  // Takes the result of a finished write; true when a write is due: the interval has
  // passed, the registry changed since the last write and none is in flight.
  bool due(const Registry &registry, double monotonic_now);
  bool changed(const Registry &registry) const { return enabled() && changes(registry) != written_changes_; }
  // What the state has seen so far: both counts only go up, so their sum moves with either.
  std::uint64_t changes(const Registry &registry) const { return registry.changes() + pushes_.changes(); }
  // Makes the text of the next write, taking its memory from the budget as it grows;
  // false, and the write counted as failed, when the budget has no room for it.
  // `pause` runs between parts, as for Registry::save_state.
  bool make_text(const Registry &registry, Now now, const std::function<void()> &pause);
  // Hands the text to the writing thread; `changes` is changes() as it was made.
  void write(std::uint64_t changes, double monotonic_now);
  // Waits for the write in flight, if any, and takes its result.
  void wait();
  void add_stats(ServerStats &stats) const {
    stats.state_writes_succeeded = stats_.state_writes_succeeded;
    stats.state_writes_failed = stats_.state_writes_failed;
    stats.state_last_write_seconds = stats_.state_last_write_seconds;
    stats.state_restored_series = stats_.state_restored_series;
  }

private:
  void take_result();
  bool grow(std::string &text, std::size_t bytes);
  void free_buffer();
  void count_failure(const std::string &error);
  void put_aside(const std::string &why, const std::string &problem);

  std::string path_;
  double interval_;
  ServerStats stats_; // only its state_* figures, which add_stats() hands on
  const Logger &logger_;
  MemoryBudget &budget_;
  PushStore &pushes_;            // written beside the registry, and restored into
  std::size_t taken_ = 0;        // of the budget, for bytes_ or job_
  std::string bytes_;            // the loop's; moved to job_ for a write, and back after it
  std::string job_;              // the writing thread's while it runs
  std::string error_;            // its result: "" or what failed
  std::atomic<bool> done_{false}; // set by the thread when job_ and error_ are the loop's again
  std::thread writer_;
  std::uint64_t written_changes_ = 0, pending_changes_ = 0;
  double next_write_ = 0;
};

inline void StateKeeper::restore(Registry &registry, double monotonic_now) {
  next_write_ = monotonic_now + interval_;
  written_changes_ = changes(registry);
  if (!enabled()) return;
  struct stat info {};
  // No file at the path, a directory of it missing, or a file where a directory should
  // be (ENOTDIR): no state to read and nothing to set aside. Until the path is fixed,
  // writes fail, and each failure is counted and logged.
  const int missing = ::stat(path_.c_str(), &info) != 0 ? errno : 0;
  if (missing == ENOENT) return logger_.log(LogLevel::info, "no state file yet; starting empty", {{"path", path_}});
  if (missing == ENOTDIR)
    return logger_.log(LogLevel::warn, "no state file yet; starting empty",
                       {{"path", path_}, {"error", std::string("stat: ") + std::strerror(missing)}});
  const auto size = static_cast<std::size_t>(std::max<off_t>(info.st_size, 0));
  if (info.st_size > HERMES_MAX_STATE_SIZE) // not read at all
    return put_aside("state file is not state", "larger than " + std::to_string(HERMES_MAX_STATE_SIZE) + " bytes");
  // The text with a byte more, to see a file that grew: exactly that much, taken first.
  // A file the budget cannot hold is kept aside too: the next write would replace it.
  const std::size_t taken = size + 2;
  if (!budget_.take(taken))
    return put_aside("state file larger than the memory budget has room for", std::to_string(size) + " bytes");
  std::string text;
  text.reserve(size + 1);
  try {
    if (const int error = read_file(path_.c_str(), size + 1, text)) throw StateError(std::string("cannot read: ") + std::strerror(error));
    if (text.size() > size) throw StateError("grew while it was read");
    const Registry::RestoreSummary summary = StateCodec::restore(registry, text, monotonic_now, &pushes_);
    for (const std::string &problem : summary.problems) logger_.log(LogLevel::warn, "state not restored", {{"path", path_}, {"metric", problem}});
    for (const std::string &problem : summary.push_group_problems)
      logger_.log(LogLevel::warn, "state not restored", {{"path", path_}, {"push_group", problem}});
    stats_.state_restored_series = summary.restored;
    const std::string series = std::to_string(summary.restored), skipped = std::to_string(summary.skipped),
                      groups = std::to_string(summary.push_groups_restored), groups_skipped = std::to_string(summary.push_groups_skipped);
    LogFields fields = {{"path", path_}, {"series", series}, {"skipped", skipped}};
    if (summary.push_groups_restored + summary.push_groups_skipped > 0) // a file with groups names them
      fields.insert(fields.end(), {{"push_groups", groups}, {"push_groups_skipped", groups_skipped}});
    logger_.log(LogLevel::info, "state restored", fields);
  } catch (const StateError &problem) {
    put_aside("state file is not state", problem.what());
  }
  std::string().swap(text);
  budget_.give_back(taken);
  written_changes_ = changes(registry);
}

// Renames the file aside, never deleting it, and logs why; Hermes starts empty.
inline void StateKeeper::put_aside(const std::string &why, const std::string &problem) {
  const std::string aside = set_aside(path_);
  logger_.log(LogLevel::error, why + "; set aside, starting empty",
              {{"path", path_}, {"error", printable_ascii(problem)}, {"moved_to", aside}});
}

inline bool StateKeeper::make_text(const Registry &registry, Now now, const std::function<void()> &pause) {
  wait();
  free_buffer();
  if (StateCodec::save(registry, bytes_, now, pause, [this](std::string &text, std::size_t bytes) { return grow(text, bytes); },
                       &pushes_))
    return true;
  free_buffer();
  next_write_ = now.monotonic + interval_;
  count_failure("no room in the memory budget for its text");
  return false;
}

// Room for `bytes` more in the text, taken before it is allocated: a new buffer half as
// large again (or what is asked, if more), the text moved into it, the old one given back.
inline bool StateKeeper::grow(std::string &text, std::size_t bytes) {
  if (text.capacity() - text.size() >= bytes) return true;
  const std::size_t capacity = std::max(text.size() + bytes, text.capacity() + text.capacity() / 2);
  if (!budget_.take(capacity + 1)) return false;
  std::string larger;
  larger.reserve(capacity); // from empty: exactly that, where growing the text would double it
  larger += text;
  text.swap(larger);
  std::string().swap(larger);
  budget_.give_back(taken_);
  taken_ = capacity + 1;
  return true;
}

inline void StateKeeper::count_failure(const std::string &error) {
  ++stats_.state_writes_failed;
  logger_.log(LogLevel::error, "state write failed; the previous file stays, retrying next interval",
              {{"path", path_}, {"error", error}});
}

// Between writes the text holds no memory: a registry that shrank needs less next time.
inline void StateKeeper::free_buffer() {
  std::string().swap(bytes_);
  budget_.give_back(taken_);
  taken_ = 0;
}

inline bool StateKeeper::due(const Registry &registry, double monotonic_now) {
  if (!enabled()) return false;
  if (writer_.joinable() && done_.load(std::memory_order_acquire)) take_result();
  return !writer_.joinable() && monotonic_now >= next_write_ && changed(registry);
}

inline void StateKeeper::write(std::uint64_t changes, double monotonic_now) {
  wait();
  next_write_ = monotonic_now + interval_;
  pending_changes_ = changes;
  job_ = std::move(bytes_);
  done_.store(false, std::memory_order_relaxed);
  try {
    writer_ = std::thread([this] {
      error_ = write_file_atomically(path_, job_);
      done_.store(true, std::memory_order_release);
    });
  } catch (const std::system_error &problem) { // no thread to be had: a failed write, tried again later
    std::string().swap(job_);
    free_buffer();
    count_failure(std::string("cannot start a thread: ") + problem.what());
  }
}

inline void StateKeeper::wait() {
  if (writer_.joinable()) take_result();
}

// One line per failed write, and writes come at most once per interval.
inline void StateKeeper::take_result() {
  writer_.join();
  std::string().swap(job_);
  free_buffer();
  if (error_.empty()) {
    written_changes_ = pending_changes_;
    ++stats_.state_writes_succeeded;
    stats_.state_last_write_seconds = wall_clock_seconds();
    logger_.log(LogLevel::debug, "state written", {{"path", path_}});
  } else {
    count_failure(error_);
  }
}

} // namespace detail
} // namespace hermes

// ===== CONFIG =============================================================================

namespace hermes {

inline const char *to_string(MetricType type) {
  static constexpr const char *names[] = {"counter", "gauge", "histogram", "summary"};
  return detail::name_of(type, names);
}

inline Config parse_config(std::string_view json, const std::string &origin) {
  picojson::value root;
  std::string error;
  if (!detail::parse_json(json, root, &error)) throw ConfigError(origin + ": " + error);
  return detail::ConfigReader(origin).read(root);
}

inline Config load_config(const std::string &path) {
  std::string text;
  if (const int error = detail::read_file(path.c_str(), HERMES_MAX_CONFIG_SIZE + 1, text))
    throw ConfigError(path + ": cannot read: " + std::strerror(error));
  if (text.size() > HERMES_MAX_CONFIG_SIZE)
    throw ConfigError(path + ": larger than " + std::to_string(HERMES_MAX_CONFIG_SIZE) + " bytes");
  return parse_config(text, path);
}

inline std::size_t worst_case_series_bytes(const MetricConfig &metric) {
  constexpr std::size_t allocation = 16;  // what malloc adds to each block
  std::size_t bytes = detail::SeriesTable::bytes_per_series; // label values beyond the string's own room: series_cost
  if (metric.type == MetricType::histogram)
    bytes += sizeof(detail::Distribution) + (metric.buckets.size() + 1) * sizeof(std::uint64_t) + 2 * allocation;
  if (metric.type == MetricType::summary) bytes += sizeof(detail::Distribution) + allocation;
  if (metric.native) { // each side's vector may hold twice the buckets it has; at schema -4 merging stops near 130
    const std::size_t buckets = std::max<std::size_t>(metric.native_max_buckets, 130) + 1;
    bytes += sizeof(detail::NativeHistogram) + allocation + 2 * (2 * buckets * sizeof(detail::NativeSide::value_type) + allocation);
  }
  if (!metric.objectives.empty())
    bytes += detail::QuantileWindow::worst_case_bytes(metric.objectives) + detail::QuantileWindow::allocations * allocation;
  return bytes;
}

inline std::size_t worst_case_body_bytes(const MetricConfig &metric, std::size_t label_value_bytes) {
  const std::vector<std::string> values(metric.labels.size(), std::string(label_value_bytes, 'x'));
  return detail::series_cost(metric, values).body;
}

inline std::size_t worst_case_state_bytes(const MetricConfig &metric, std::size_t label_value_bytes) {
  return detail::StateCodec::worst_series_text(metric, label_value_bytes);
}

inline std::vector<std::string> lint_config(const Config &config) {
  std::vector<std::string> advice;
  for (const MetricConfig &metric : config.metrics)
    for (const std::string &problem : detail::lint_names(metric)) advice.push_back(metric.name + ": " + problem);
  return advice;
}

// ===== OPTIONS ============================================================================

inline const char *to_string(LogLevel level) {
  static constexpr const char *names[] = {"debug", "info", "warn", "error"};
  return detail::name_of(level, names);
}

inline std::optional<LogLevel> parse_log_level(std::string_view text) {
  const std::string name = detail::lowercase(text);
  for (const LogLevel level : {LogLevel::debug, LogLevel::info, LogLevel::warn, LogLevel::error})
    if (name == to_string(level)) return level;
  if (name == "warning") return LogLevel::warn;
  return std::nullopt;
}

namespace detail {

// The whole text as a number in `base` from `low` to `high`; nothing else.
template <typename Number> std::optional<Number> parse_number(std::string_view text, int base, Number low, Number high) {
  Number value{};
  const auto result = std::from_chars(text.data(), text.data() + text.size(), value, base);
  if (text.empty() || result.ec != std::errc() || result.ptr != text.data() + text.size() || value < low || value > high)
    return std::nullopt;
  return value;
}

} // namespace detail

inline std::optional<std::uint16_t> parse_port(std::string_view text) {
  return detail::parse_number<std::uint16_t>(text, 10, 0, 65535);
}

inline std::optional<std::size_t> parse_bytes(std::string_view text) {
  static constexpr std::pair<const char *, std::size_t> suffixes[] = {{"KiB", 1024}, {"MiB", 1024 * 1024}, {"GiB", 1024 * 1024 * 1024}};
  std::size_t unit = 1;
  for (const auto &[suffix, size] : suffixes)
    if (detail::ends_with(text, suffix)) {
      text = detail::trim(text.substr(0, text.size() - std::strlen(suffix)));
      unit = size;
    }
  const auto number = detail::parse_number<std::size_t>(text, 10, 0, SIZE_MAX / unit);
  if (!number) return std::nullopt;
  return *number * unit;
}

inline std::optional<bool> parse_switch(std::string_view text) {
  const std::string word = detail::lowercase(text);
  if (word == "on" || word == "true" || word == "yes" || word == "1") return true;
  if (word == "off" || word == "false" || word == "no" || word == "0") return false;
  return std::nullopt;
}

namespace detail {

// The first of `names` that is set and not empty, with the name it was found under.
inline std::optional<std::pair<std::string, std::string>> first_set(const Environment &env,
                                                                    std::initializer_list<const char *> names) {
  for (const char *name : names) {
    const char *value = env(name);
    if (value && *value) return std::make_pair(std::string(name), std::string(value));
  }
  return std::nullopt;
}

// Sets `option` from the first of `names` that is set, read by `parse`; a value it
// cannot read stops start-up with the variable's name and what was `expected`.
template <typename Option, typename Parse>
void override_from(Option &option, const Environment &env, std::initializer_list<const char *> names, Parse parse,
                   const char *expected) {
  const auto found = first_set(env, names);
  if (!found) return;
  const auto parsed = parse(found->second);
  if (!parsed) throw UsageError(found->first + ": \"" + found->second + "\" is not " + expected);
  option = *parsed;
}

inline std::optional<std::string> any_text(const std::string &text) { return text; }

// HERMES_COMPRESSION: off (0), on (the default level), or a gzip level 1-9; only off
// in a build without gzip.
inline std::optional<int> parse_compression(const std::string &text) {
  const std::optional<int> level = parse_number<int>(text, 10, 0, 9);
  const std::optional<bool> on = parse_switch(text);
  const std::optional<int> chosen = level ? level : on ? std::optional<int>(*on ? HERMES_GZIP_LEVEL : 0) : std::nullopt;
  if (chosen && *chosen > 0 && default_gzip_level == 0) return std::nullopt;
  return chosen;
}

inline std::optional<double> positive_seconds(const std::string &text) {
  double value = 0;
  const auto result = std::from_chars(text.data(), text.data() + text.size(), value);
  if (result.ec != std::errc() || result.ptr != text.data() + text.size() || !(value > 0) || !std::isfinite(value))
    return std::nullopt;
  return value;
}

// 0 or more seconds, where 0 means never.
inline std::optional<double> seconds_or_never(const std::string &text) {
  return text == "0" ? std::optional<double>(0) : positive_seconds(text);
}

// Replaces `list` with the comma-separated ranges of variable `name`, when it is set.
inline void allow_list_from(AllowList &list, const Environment &env, const char *name) {
  const auto found = first_set(env, {name});
  if (!found) return;
  AllowList read;
  const std::vector<std::string_view> items = split(found->second, ',');
  for (std::size_t i = 0; i < items.size(); ++i) {
    const std::string text(trim(items[i])), item = "(item " + std::to_string(i + 1) + ")";
    if (text.empty())
      throw UsageError(std::string(name) + ": \"" + found->second + "\": " + item + " is empty; separate ranges by single commas");
    AddressRange range;
    const std::string problem = parse_address_range(text, range);
    if (!problem.empty()) throw UsageError(std::string(name) + ": \"" + text + "\" " + item + " is not a CIDR range: " + problem);
    read.add(range, text);
  }
  list = std::move(read);
}

// HERMES_REMOTE_WRITE_URL, with HERMES_REMOTE_WRITE_INTERVAL and
// HERMES_REMOTE_WRITE_BEARER_TOKEN_FILE: one more target; an error names the variable.
inline std::optional<RemoteWriteConfig> remote_write_from_environment(const Environment &env) {
  const auto url = first_set(env, {"HERMES_REMOTE_WRITE_URL"});
  const auto interval = first_set(env, {"HERMES_REMOTE_WRITE_INTERVAL"});
  const auto token = first_set(env, {"HERMES_REMOTE_WRITE_BEARER_TOKEN_FILE"});
  if (!url) {
    if (interval || token) throw UsageError((interval ? interval : token)->first + ": set without HERMES_REMOTE_WRITE_URL");
    return std::nullopt;
  }
  RemoteWriteConfig target;
  target.url = url->second;
  try {
    RemoteWriteReader("HERMES_REMOTE_WRITE_URL").check_url(target.url, "");
    if (token) {
      target.bearer_token_file = token->second;
      target.authorization = "Bearer " + RemoteWriteReader("HERMES_REMOTE_WRITE_BEARER_TOKEN_FILE").read_secret(token->second, "");
    }
  } catch (const ConfigError &error) {
    throw UsageError(error.what());
  }
  if (interval) {
    const auto seconds = positive_seconds(interval->second);
    if (!seconds || *seconds > 86400)
      throw UsageError("HERMES_REMOTE_WRITE_INTERVAL: \"" + interval->second + "\" is not a number of seconds above 0 and at most 86400");
    target.interval_seconds = *seconds;
  }
  return target;
}

// The Pushgateway API's: HERMES_PUSH (on or off), HERMES_MAX_PUSH_BYTES,
// HERMES_MAX_PUSH_GROUPS and HERMES_PUSH_TTL (over the config's keys),
// HERMES_PUSH_TOKEN_FILE, HERMES_PUSH_ADMIN.
inline void push_options_from(Options &options, const Config &config, const Environment &env) {
  if (config.max_push_groups) options.max_push_groups = *config.max_push_groups;
  if (config.push_ttl_seconds) options.push_ttl_seconds = *config.push_ttl_seconds;
  override_from(options.push, env, {"HERMES_PUSH"}, parse_switch, "on or off");
  override_from(options.max_push_bytes, env, {"HERMES_MAX_PUSH_BYTES"}, parse_bytes, "a number of bytes (such as 4MiB)");
  override_from(
      options.max_push_groups, env, {"HERMES_MAX_PUSH_GROUPS"},
      [](std::string_view text) { return parse_number<std::size_t>(text, 10, 1, 1000000000); }, "a number of groups from 1");
  override_from(
      options.push_ttl_seconds, env, {"HERMES_PUSH_TTL"},
      [](const std::string &text) { return text == "0" ? std::optional<double>(0) : positive_seconds(text); },
      "a number of seconds (0: never)");
  override_from(options.push_token_file, env, {"HERMES_PUSH_TOKEN_FILE"}, any_text, "");
  override_from(options.push_admin, env, {"HERMES_PUSH_ADMIN"}, parse_switch, "on or off");
}

} // namespace detail

inline Options options_from_environment(const Config &config, const Environment &env) {
  using detail::override_from;
  for (const detail::PartSetting &variable : detail::part_variables)
    if (!variable.part.built && detail::first_set(env, {variable.name}))
      throw UsageError(std::string(variable.name) + ": " + detail::not_built(variable.part));
  Options options;
  if (!config.listen_address.empty()) options.udp_address = config.listen_address;
  if (config.listen_port) options.udp_port = *config.listen_port;
  options.state_file = config.state_file;
  if (config.state_interval_seconds) options.state_interval_seconds = *config.state_interval_seconds;
  override_from(options.udp_address, env, {"HERMES_UDP_ADDRESS", "LISTEN_ADDRESS"}, detail::any_text, "");
  override_from(options.udp_port, env, {"HERMES_UDP_PORT", "LISTEN_PORT"}, parse_port, "a port number (0-65535)");
  override_from(options.http_address, env, {"HERMES_HTTP_ADDRESS"}, detail::any_text, "");
  override_from(options.http_port, env, {"HERMES_HTTP_PORT"}, parse_port, "a port number (0-65535)");
  override_from(options.log_level, env, {"HERMES_LOG_LEVEL", "LOG_LEVEL"}, parse_log_level,
                "a log level (debug, info, warn, error)");
  override_from(options.openmetrics, env, {"HERMES_OPENMETRICS"}, parse_switch, "on or off");
  override_from(options.protobuf, env, {"HERMES_PROTOBUF"}, parse_switch, "on or off");
  override_from(options.gzip_level, env, {"HERMES_COMPRESSION"}, detail::parse_compression,
                default_gzip_level > 0 ? "off, on or a gzip level from 1 to 9" : "off: this build has no gzip (HERMES_GZIP)");
  override_from(
      options.udp_receive_buffer, env, {"HERMES_UDP_RECEIVE_BUFFER"},
      [](std::string_view text) { return detail::parse_number<int>(text, 10, 4096, INT32_MAX); }, "a number of bytes (4096 or more)");
  override_from(options.unix_socket_path, env, {"HERMES_UNIX_SOCKET"}, detail::any_text, "");
  override_from(
      options.unix_socket_mode, env, {"HERMES_UNIX_SOCKET_MODE"},
      [](std::string_view text) { return detail::parse_number<unsigned>(text, 8, 0, 0777); }, "an octal file mode (such as 660)");
  override_from(options.statsd, env, {"HERMES_STATSD"}, parse_switch, "on or off");
  if (config.max_memory_bytes) options.max_memory = *config.max_memory_bytes;
  override_from(options.max_memory, env, {"HERMES_MAX_MEMORY"}, parse_bytes, "a number of bytes (such as 67108864 or 64MiB)");
  override_from(options.state_file, env, {"HERMES_STATE_FILE"}, detail::any_text, "");
  override_from(options.state_interval_seconds, env, {"HERMES_STATE_INTERVAL"}, detail::positive_seconds,
                "a number of seconds above 0");
  options.udp_allow = config.udp_allow;
  options.http_allow = config.http_allow;
  detail::allow_list_from(options.udp_allow, env, "HERMES_UDP_ALLOW");
  detail::allow_list_from(options.http_allow, env, "HERMES_HTTP_ALLOW");
  override_from(options.http_token_file, env, {"HERMES_HTTP_TOKEN_FILE"}, detail::any_text, "");
  override_from(options.http_idle_timeout_seconds, env, {"HERMES_HTTP_IDLE_TIMEOUT_SECONDS"}, detail::seconds_or_never,
                "a number of seconds (0: no persistent connections)");
  override_from(options.statsd_tcp_port, env, {"HERMES_STATSD_TCP_PORT"}, parse_port, "a port number (0-65535)");
  override_from(
      options.statsd_tcp_max_connections, env, {"HERMES_MAX_STATSD_CONNECTIONS"},
      [](std::string_view text) { return detail::parse_number<std::size_t>(text, 10, 1, 1000000); }, "a number from 1 to 1000000");
  override_from(options.statsd_tcp_idle_seconds, env, {"HERMES_STATSD_TCP_IDLE_SECONDS"}, detail::seconds_or_never,
                "a number of seconds (0: never)");
  options.tls_cert_file = config.tls_server.cert_file;
  options.tls_key_file = config.tls_server.key_file;
  options.tls_client_ca_file = config.tls_server.client_ca_file;
  override_from(options.tls_cert_file, env, {"HERMES_TLS_CERT_FILE"}, detail::any_text, "");
  override_from(options.tls_key_file, env, {"HERMES_TLS_KEY_FILE"}, detail::any_text, "");
  override_from(options.tls_client_ca_file, env, {"HERMES_TLS_CLIENT_CA_FILE"}, detail::any_text, "");
  override_from(options.statsd_mapping_file, env, {"HERMES_STATSD_MAPPING"}, detail::any_text, "");
  options.remote_write = config.remote_write;
  if (auto target = has_remote_write ? detail::remote_write_from_environment(env) : std::nullopt)
    options.remote_write.push_back(std::move(*target));
  detail::push_options_from(options, config, env);
  return options;
}

namespace detail {

// A paragraph of environment_help, shown where the build has its part.
struct HelpSection {
  bool built;
  const char *text;
};
inline constexpr HelpSection environment_help_sections[] = {
    {true, "Environment:\n"
           "  HERMES_UDP_ADDRESS (LISTEN_ADDRESS), HERMES_UDP_PORT (LISTEN_PORT)\n"
           "  HERMES_HTTP_ADDRESS, HERMES_HTTP_PORT, HERMES_LOG_LEVEL (LOG_LEVEL), HERMES_OPENMETRICS\n"
           "  HERMES_MAX_MEMORY (bytes, or with KiB, MiB, GiB)\n"
           "  HERMES_UNIX_SOCKET, HERMES_UNIX_SOCKET_MODE, HERMES_UDP_RECEIVE_BUFFER\n"
           "  HERMES_HTTP_IDLE_TIMEOUT_SECONDS (how long a kept-alive HTTP connection waits for its\n"
           "    next request; default 90, 0: every answer closes its connection)\n"},
    {has_protobuf, "  HERMES_PROTOBUF (off: scrapers that ask for protobuf get text or OpenMetrics)\n"},
    {has_gzip, "  HERMES_COMPRESSION (off, on, or a gzip level 1-9 for scrapers that ask for gzip)\n"},
    {has_state, "  HERMES_STATE_FILE (the config's state_file: keep the series there across restarts)\n"
                "  HERMES_STATE_INTERVAL (state_interval_seconds: seconds between writes, default 10)\n"},
    {has_statsd, "  HERMES_STATSD (off: every datagram is JSON)\n"
                 "  HERMES_STATSD_TCP_PORT (StatsD lines over TCP too; off unless set)\n"
                 "  HERMES_MAX_STATSD_CONNECTIONS (default 256)\n"
                 "  HERMES_STATSD_TCP_IDLE_SECONDS (seconds without a whole line; default 300, 0: never)\n"},
    {has_statsd && has_yaml, "  HERMES_STATSD_MAPPING (the config's statsd_mapping_file: statsd_exporter's YAML mapping)\n"},
    {has_remote_write, "\n"
                       "Remote write (one receiver; the config's \"remote_write\" list takes more):\n"
                       "  HERMES_REMOTE_WRITE_URL                http://host:port/api/v1/write\n"
                       "  HERMES_REMOTE_WRITE_INTERVAL           seconds between snapshots (default 15)\n"
                       "  HERMES_REMOTE_WRITE_BEARER_TOKEN_FILE  a file holding its bearer token\n"},
    {true, "\n"
           "Access control:\n"
           "  HERMES_UDP_ALLOW        CIDR ranges, comma-separated (10.0.0.0/8,2001:db8::/32,::1):\n"
           "                          datagrams from elsewhere are dropped (forbidden_source);\n"
           "                          over the config's \"udp_allow\"; unset: everyone\n"
           "  HERMES_HTTP_ALLOW       the same for HTTP clients, answered 403; over \"http_allow\"\n"
           "  HERMES_HTTP_TOKEN_FILE  a file holding a token that /metrics and / then ask for\n"
           "                          as \"Authorization: Bearer TOKEN\" (else 401)\n"},
    {has_tls, "  HERMES_TLS_CERT_FILE, HERMES_TLS_KEY_FILE  a PEM certificate chain and its key: the\n"
              "                          HTTP port then speaks only TLS; over the config's \"tls_server\"\n"
              "  HERMES_TLS_CLIENT_CA_FILE  clients must show a certificate these CAs signed\n"},
    {has_push, "\n"
               "Pushgateway API (PUT, POST, DELETE on /metrics/job/JOB/NAME/VALUE...):\n"
               "  HERMES_PUSH             off: no push API (default on)\n"
               "  HERMES_MAX_PUSH_BYTES   the largest push body (default 4MiB); more is 413\n"
               "  HERMES_MAX_PUSH_GROUPS  groups at most (the config's max_push_groups, default 10000)\n"
               "  HERMES_PUSH_TTL         seconds a group lives without a push (push_ttl_seconds; 0: ever)\n"
               "  HERMES_PUSH_TOKEN_FILE  a file holding a token that pushes and deletes must carry\n"
               "  HERMES_PUSH_ADMIN       on: PUT /api/v1/admin/wipe deletes every group\n"}};

} // namespace detail

inline std::string environment_help() {
  std::string text;
  for (const detail::HelpSection &section : detail::environment_help_sections)
    if (section.built) text += section.text;
  return text;
}

// ===== ACCESS =============================================================================

namespace detail {

// IPv4 addresses are ::ffff:a.b.c.d: the high half 0, the low half 0000ffff a.b.c.d.
constexpr std::uint64_t ipv4_mapped_low = 0xffff00000000u;

// Eight bytes, most significant first, as a number.
inline std::uint64_t load_big_endian(const unsigned char *bytes) {
  std::uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value = (value << 8) | bytes[i];
  return value;
}

// The first `bits` bits of a 64-bit half set, for bits from 0 to 64.
inline std::uint64_t leading_bits(unsigned bits) { return bits == 0 ? 0 : ~std::uint64_t{0} << (64 - bits); }

// "10.0.0.0/8" or "2001:db8::/32": the network of a range with its prefix length.
inline std::string format_range(const unsigned char (&bytes)[16], bool v4, unsigned prefix) {
  char text[INET6_ADDRSTRLEN] = "?";
  ::inet_ntop(v4 ? AF_INET : AF_INET6, v4 ? bytes + 12 : bytes, text, sizeof text);
  return std::string(text) + "/" + std::to_string(prefix);
}

} // namespace detail

inline std::string parse_address_range(std::string_view text, AddressRange &range) {
  const std::size_t slash = text.find('/');
  const std::string address(text.substr(0, slash));
  // inet_pton stops at a NUL and knows no zone (fe80::1%eth0): only address characters pass.
  const bool plain = !address.empty() && address.find_first_not_of("0123456789abcdefABCDEF:.") == std::string::npos;
  unsigned char bytes[16] = {};
  const bool v4 = plain && ::inet_pton(AF_INET, address.c_str(), bytes + 12) == 1;
  if (!v4 && !(plain && ::inet_pton(AF_INET6, address.c_str(), bytes) == 1))
    return "\"" + address + "\" is not an IPv4 or IPv6 address";
  if (v4) bytes[10] = bytes[11] = 0xff; // ::ffff:a.b.c.d
  const unsigned longest = v4 ? 32 : 128;
  unsigned prefix = longest;
  if (slash != std::string_view::npos) {
    const std::string_view digits = text.substr(slash + 1);
    const auto parsed = detail::parse_number<unsigned>(digits, 10, 0, longest);
    if (!parsed) return "the prefix length \"" + std::string(digits) + "\" is not a number from 0 to " + std::to_string(longest);
    prefix = *parsed;
  }
  const unsigned bits = prefix + (v4 ? 96 : 0);
  AddressRange read;
  read.high_mask = detail::leading_bits(std::min(bits, 64u));
  read.low_mask = detail::leading_bits(bits > 64 ? bits - 64 : 0);
  read.high = detail::load_big_endian(bytes);
  read.low = detail::load_big_endian(bytes + 8);
  if ((read.high & ~read.high_mask) != 0 || (read.low & ~read.low_mask) != 0) {
    for (unsigned i = 0; i < 16; ++i)
      if (8 * i + 8 > bits) bytes[i] &= static_cast<unsigned char>(8 * i >= bits ? 0 : 0xff00 >> (bits - 8 * i));
    return "bits are set past the /" + std::to_string(prefix) + " prefix (the network is " + detail::format_range(bytes, v4, prefix) + ")";
  }
  range = read;
  return "";
}

inline void AllowList::add(const AddressRange &range, std::string text) {
  ranges_.push_back(range);
  texts_.push_back(std::move(text));
  const bool holds_ipv4 = (range.high & range.high_mask) == 0 && ((detail::ipv4_mapped_low ^ range.low) & range.low_mask) >> 32 == 0;
  const bool only_ipv4 = holds_ipv4 && range.high_mask == ~std::uint64_t{0} && range.low_mask >> 32 == 0xffffffff;
  if (!only_ipv4) v6_ranges_.push_back(range);
  if (!holds_ipv4) return;
  // Fills the last block with copies of this range, which change no answer. A range
  // wider than ::ffff:0:0/96 holds every IPv4 address: its mask's low 32 bits are 0.
  const auto network = static_cast<std::uint32_t>(range.low), mask = static_cast<std::uint32_t>(range.low_mask);
  if (v4_count_ % v4_block == 0) {
    v4_networks_.resize(v4_count_ + v4_block, network);
    v4_masks_.resize(v4_count_ + v4_block, mask);
  }
  v4_networks_[v4_count_] = network;
  v4_masks_[v4_count_] = mask;
  ++v4_count_;
}

inline bool AllowList::listed_v4(std::uint32_t address) const {
  // No early exit and a number, not a bool, to gather in, over blocks of a fixed size:
  // so the compiler vectorises the inner loop.
  std::uint32_t found = 0;
  for (std::size_t block = 0; block < v4_masks_.size(); block += v4_block) {
    const std::uint32_t *networks = &v4_networks_[block], *masks = &v4_masks_[block];
    for (std::size_t i = 0; i < v4_block; ++i) found |= static_cast<std::uint32_t>(((address ^ networks[i]) & masks[i]) == 0);
  }
  return found != 0;
}

inline bool AllowList::listed(const sockaddr *address, socklen_t length) const {
  if (address->sa_family == AF_INET && length >= sizeof(sockaddr_in))
    return listed_v4(ntohl(reinterpret_cast<const sockaddr_in *>(address)->sin_addr.s_addr));
  if (address->sa_family != AF_INET6 || length < sizeof(sockaddr_in6)) return false; // no address the list can speak for
  const unsigned char *bytes = reinterpret_cast<const sockaddr_in6 *>(address)->sin6_addr.s6_addr;
  const std::uint64_t high = detail::load_big_endian(bytes), low = detail::load_big_endian(bytes + 8);
  if (high == 0 && low >> 32 == 0xffff) return listed_v4(static_cast<std::uint32_t>(low));
  bool found = false; // no early exit: no branch to mispredict
  for (const AddressRange &range : v6_ranges_) found |= range.contains(high, low);
  return found;
}

// ===== SAMPLES ============================================================================

inline const char *to_string(Reject reason) {
  static constexpr const char *names[] = {"malformed_json",      "malformed_sample", "unknown_metric",
                                          "label_mismatch",      "invalid_label_value", "invalid_value",
                                          "invalid_operation",   "series_limit",     "too_large",
                                          "unsupported_type",    "memory_limit",     "forbidden_source",
                                          "dropped",             "type_mismatch",    "metric_limit"};
  return detail::name_of(reason, names);
}

inline const char *to_string(Wire wire) {
  static constexpr const char *names[] = {"json", "statsd"};
  return detail::name_of(wire, names);
}

inline const char *to_string(RemoteWriteFailure reason) {
  static constexpr const char *names[] = {"resolve", "connect", "tls_handshake", "connection", "timeout", "given_up"};
  return detail::name_of(reason, names);
}

inline double wall_clock_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

inline double monotonic_seconds() { return detail::seconds_of(detail::Clock::now()); }

inline std::size_t IngestResult::rejected_total() const {
  std::size_t total = 0;
  for (const std::size_t count : rejected) total += count;
  return total;
}

namespace detail {

// How a sample changes its series.
struct Update {
  enum class Kind { add, set, observe } kind = Kind::add;
  double amount = 0;
  std::uint64_t times = 1; // observations this one stands for: a StatsD sample rate's int(1 / rate)
};

// The label values of a sample in the configured order, as views into the sample.
inline std::optional<Reject> read_label_values(const MetricConfig &metric, const ReadSample &sample,
                                               std::vector<std::string_view> &values) {
  values.clear();
  const bool has_labels = sample.payload == JsonKind::object && sample.labels != JsonKind::absent && sample.labels != JsonKind::null;
  if (has_labels && sample.labels != JsonKind::object) return Reject::malformed_sample;
  const std::size_t given = has_labels ? sample.label_count : 0;
  if (given != metric.labels.size()) return Reject::label_mismatch;
  for (const std::string &name : metric.labels) {
    const ReadValue *found = sample.find_label(name);
    if (!found || found->kind != JsonKind::string) return Reject::label_mismatch;
    if (!is_valid_utf8(found->text.get())) return Reject::invalid_label_value;
    values.push_back(found->text.get());
  }
  return std::nullopt;
}

inline std::optional<Reject> read_counter_update(const ReadValue *value, Update &update) {
  update.amount = value ? value->number : 1;
  if (update.amount < 0) return Reject::invalid_value; // counters only go up
  return std::nullopt;
}

inline std::optional<Reject> read_gauge_update(const ReadValue *value, const ReadValue *operation, Update &update) {
  if (operation && operation->kind != JsonKind::string) return Reject::invalid_operation;
  const std::string_view name = operation ? operation->text.get() : "set";
  const double by = value ? value->number : 1;
  if (name == "set") {
    if (!value) return Reject::invalid_value;
    update = {Update::Kind::set, by};
  } else if (name == "increment") {
    update = {Update::Kind::add, by};
  } else if (name == "decrement") {
    update = {Update::Kind::add, -by};
  } else {
    return Reject::invalid_operation;
  }
  return std::nullopt;
}

inline std::optional<Reject> read_update(MetricType type, const ReadSample &sample, Update &update) {
  const bool has_payload = sample.payload == JsonKind::object;
  const auto field = [&](const ReadValue &value) { return has_payload && value.present() ? &value : nullptr; };
  // Histograms and summaries take an observation, under the original's name or as value.
  const bool observes = type == MetricType::histogram || type == MetricType::summary;
  const ReadValue *value = observes && field(sample.observation) ? field(sample.observation) : field(sample.value);
  if (value && value->kind != JsonKind::number) return Reject::invalid_value; // also numbers beyond double
  if (type == MetricType::counter) return read_counter_update(value, update);
  if (type == MetricType::gauge) return read_gauge_update(value, field(sample.operation), update);
  if (!value) return Reject::invalid_value;
  update = {Update::Kind::observe, value->number};
  return std::nullopt;
}

// The observations one sampled at `rate` stands for: int(1 / rate), as statsd_exporter
// counts them, held at the largest count for rates too small to count.
inline std::uint64_t statsd_multiplicity(double rate) {
  const double times = std::floor(1 / rate);
  return times >= 18446744073709551616.0 ? UINT64_MAX : static_cast<std::uint64_t>(times);
}

// How one value of a StatsD line changes its series, with statsd_exporter's meaning of
// each type. `text` is the value as sent: a gauge value with a sign moves the gauge.
inline std::optional<Reject> statsd_update(const StatsdLine &line, std::string_view text, Update &update) {
  double value = 0;
  if (!parse_statsd_number(text, value)) return Reject::invalid_value;
  if (line.type == StatsdType::counter) {
    const double amount = value / line.rate;
    if (value < 0 || !std::isfinite(amount)) return Reject::invalid_value;
    update = {Update::Kind::add, amount};
  } else if (line.type == StatsdType::gauge) {
    const bool moves = text.front() == '+' || text.front() == '-';
    update = {moves ? Update::Kind::add : Update::Kind::set, value};
  } else {
    const double seconds = line.type == StatsdType::timer ? value / 1000 : value; // timers speak milliseconds
    update = {Update::Kind::observe, seconds, statsd_multiplicity(line.rate)};
  }
  return std::nullopt;
}

// A new series of `metric`, first pushed at `now`.
inline Series new_series(const MetricConfig &metric, Now now) {
  Series series;
  series.created = now.wall;
  series.last_push = now.monotonic;
  if (metric.type == MetricType::histogram || metric.type == MetricType::summary) {
    series.distribution = std::make_unique<Distribution>();
    if (metric.type == MetricType::histogram) series.distribution->bucket_counts.assign(metric.buckets.size() + 1, 0);
    if (metric.native) {
      series.distribution->native = std::make_unique<NativeHistogram>();
      series.distribution->native->schema = native_schema(metric.native_bucket_factor);
    }
    if (!metric.objectives.empty()) series.distribution->quantiles = std::make_unique<QuantileWindow>(metric, now.monotonic);
  }
  return series;
}

inline std::uint64_t saturating_add(std::uint64_t a, std::uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

// An observation that stands for `times` of them counts and sums that many, at the cost
// of one. The quantile stream takes it once: a series sampled at one rate has the same
// quantiles either way, and a stream entry as wide as a large multiplicity would
// overstep the rank error the stream's query relies on.
// `now` on the monotonic clock.
inline void apply_update(const MetricConfig &metric, Series &series, const Update &update, double now) {
  series.last_push = now;
  if (update.kind == Update::Kind::set) {
    series.value = update.amount;
  } else if (update.kind == Update::Kind::add) {
    series.value += update.amount;
  } else {
    Distribution &seen = *series.distribution;
    seen.sum += update.amount * static_cast<double>(update.times);
    seen.count = saturating_add(seen.count, update.times);
    if (!seen.bucket_counts.empty()) { // the first bucket whose upper bound holds it; else +Inf
      const auto bucket = std::lower_bound(metric.buckets.begin(), metric.buckets.end(), update.amount);
      std::uint64_t &count = seen.bucket_counts[static_cast<std::size_t>(bucket - metric.buckets.begin())];
      count = saturating_add(count, update.times);
    }
    if (seen.native) observe_native(*seen.native, metric, update.amount);
    if (seen.quantiles) seen.quantiles->observe(update.amount, now);
  }
}

// Applies `update` to the series of `metric` with `label_values`, making the series when
// it is new. JSON samples and StatsD lines both end here.
inline std::optional<Reject> apply_to_series(Metric &metric, const std::vector<std::string_view> &label_values,
                                             const Update &update, Now now, MemoryBudget &budget) {
  Series *series = metric.series.find(label_values);
  if (!series) {
    if (metric.series.size() >= metric.config.max_series) return Reject::series_limit;
    const SeriesCost cost = series_cost(metric.config, label_values);
    if (!budget.take_for_series(cost.own, cost.body)) return Reject::memory_limit;
    series = &metric.series.add(label_values, new_series(metric.config, now));
  }
  apply_update(metric.config, *series, update, now.monotonic);
  return std::nullopt;
}

} // namespace detail

// ===== REGISTRY ===========================================================================

inline Registry::Registry(const Config &config, std::shared_ptr<MemoryBudget> budget)
    : service_name_(config.service_name), budget_(budget ? std::move(budget) : std::make_shared<MemoryBudget>()),
      reading_(std::make_unique<detail::Reading>()), statsd_reading_(std::make_unique<detail::StatsdReading>()),
      line_metrics_(std::make_unique<detail::LineMetrics>()) {
  line_metrics_->settings = config.statsd;
  for (const MetricConfig &metric_config : config.metrics) {
    detail::Metric metric{metric_config, {}};
    // A metric without labels has exactly one series; it shows 0 before the first push.
    if (metric_config.labels.empty()) metric.series.add({}, detail::new_series(metric_config, 0));
    metrics_.push_back(std::move(metric));
  }
  std::sort(metrics_.begin(), metrics_.end(),
            [](const detail::Metric &a, const detail::Metric &b) { return a.config.name < b.config.name; });
  fixed_body_bytes_ = detail::fixed_body_bound(*this);
  const detail::SeriesCost wanted = standing_cost();
  if (!budget_->take_for_series(wanted.own, wanted.body)) throw ConfigError(no_room_for(wanted));
  holds_budget_ = true;
}

// What the registry takes from its budget before any push: room for the families' heads
// and Hermes' own families in each body, and the series of the metrics without labels.
inline detail::SeriesCost Registry::standing_cost() const {
  detail::SeriesCost cost{0, fixed_body_bytes_};
  for (const detail::Metric &metric : metrics_) detail::add_series_costs(cost, metric);
  return cost;
}

inline std::string Registry::no_room_for(const detail::SeriesCost &wanted) const {
  return "the memory budget of " + std::to_string(budget_->limit()) + " bytes has no room for the config's metrics: " +
         std::to_string(wanted.own) + " bytes of series without labels, and " + std::to_string(budget_->bodies()) +
         " times " + std::to_string(wanted.body) + " bytes of room for /metrics bodies, beside the " +
         std::to_string(budget_->used()) + " bytes in use";
}

inline Registry::Registry(Registry &&other) noexcept
    : service_name_(std::move(other.service_name_)), metrics_(std::move(other.metrics_)), budget_(std::move(other.budget_)),
      reading_(std::move(other.reading_)), statsd_reading_(std::move(other.statsd_reading_)), statsd_(other.statsd_),
      line_metrics_(std::move(other.line_metrics_)),
      fixed_body_bytes_(other.fixed_body_bytes_), holds_budget_(std::exchange(other.holds_budget_, false)),
      accepted_(other.accepted_), expired_(other.expired_), changes_(other.changes_), rejected_(other.rejected_),
      received_(other.received_) {}
inline Registry &Registry::operator=(Registry &&other) noexcept {
  if (this != &other) {
    give_back_budget();
    service_name_ = std::move(other.service_name_);
    metrics_ = std::move(other.metrics_);
    budget_ = std::move(other.budget_);
    fixed_body_bytes_ = other.fixed_body_bytes_;
    holds_budget_ = std::exchange(other.holds_budget_, false);
    reading_ = std::move(other.reading_);
    statsd_reading_ = std::move(other.statsd_reading_);
    statsd_ = other.statsd_;
    line_metrics_ = std::move(other.line_metrics_);
    accepted_ = other.accepted_, expired_ = other.expired_, rejected_ = other.rejected_, received_ = other.received_;
  }
  return *this;
}
inline Registry::~Registry() { give_back_budget(); }

// Gives everything the registry took back to its budget: the series, and their room.
inline void Registry::give_back_budget() {
  if (!holds_budget_) return; // moved from
  for (detail::Metric &metric : metrics_) release(metric);
  budget_->give_back_series(0, fixed_body_bytes_);
#ifdef HERMES_YAML
  line_metrics_->cache.clear(*budget_);
#endif
  holds_budget_ = false;
}

// Gives the memory of every series of `metric` back to the budget.
inline void Registry::release(detail::Metric &metric) {
  for (const auto &entry : metric.series) {
    const detail::SeriesCost cost = detail::series_cost(metric.config, entry.first);
    budget_->give_back_series(cost.own, cost.body);
  }
  metric.series.clear();
}

inline const detail::Metric *Registry::find(std::string_view name) const {
  const auto found = std::lower_bound(metrics_.begin(), metrics_.end(), name,
                                      [](const detail::Metric &m, std::string_view n) { return m.config.name < n; });
  return found != metrics_.end() && found->config.name == name ? &*found : nullptr;
}

inline detail::Metric *Registry::find(std::string_view name) {
  return const_cast<detail::Metric *>(static_cast<const Registry *>(this)->find(name));
}

inline IngestResult Registry::ingest(std::string_view datagram, Now now) {
  IngestResult result;
  const Wire wire = has_statsd && statsd_ && detail::is_statsd(datagram) ? Wire::statsd : Wire::json;
  if (wire == Wire::statsd) ingest_statsd(datagram, now, result);
  else ingest_json(datagram, now, result);
  received_[static_cast<std::size_t>(wire)] += result.accepted + result.rejected_total();
  return result;
}

inline void Registry::tally(IngestResult &result, std::optional<Reject> reason, std::size_t samples) {
  if (reason) {
    result.rejected[static_cast<std::size_t>(*reason)] += samples;
    rejected_[static_cast<std::size_t>(*reason)] += samples;
  } else {
    result.accepted += samples;
    accepted_ += samples;
    changes_ += samples; // the state file is written again only after a change
  }
}

inline void Registry::ingest_json(std::string_view datagram, Now now, IngestResult &result) {
  detail::ReadBatch &batch = reading_->batch;
  if (!detail::read_datagram(datagram, batch)) {
    tally(result, Reject::malformed_json); // nothing of a datagram that is not JSON as a whole is applied
  } else if (batch.is_array && batch.count == 0) {
    tally(result, Reject::malformed_sample); // a batch of nothing is still counted
  } else {
    for (std::size_t i = 0; i < batch.count; ++i) tally(result, apply(batch.slots[i], now));
  }
}

// Each line on its own: a bad line is counted under its reason and never touches the others.
inline void Registry::ingest_statsd(std::string_view datagram, Now now, IngestResult &result) {
  detail::StatsdReading &reading = *statsd_reading_;
  for (std::size_t position = 0; position < datagram.size();) {
    const std::string_view text = detail::next_statsd_line(datagram, position);
    if (text.empty()) continue;
    if (const auto reason = detail::parse_statsd_line(text, reading.line)) tally(result, reason, reading.line.value_count);
    else apply_statsd(reading, now, result);
  }
}

// The metric a StatsD line names: its escaped name, or for a counter also that name with
// _total, of a type that takes the line's type.
inline detail::Metric *Registry::find_statsd(detail::StatsdReading &reading) {
  const detail::StatsdLine &line = reading.line;
  reading.name.clear();
  detail::append_statsd_name(reading.name, line.name, line.name_rest);
  return find_statsd_named(reading);
}

// The metric of the escaped name in reading.name, as find_statsd.
inline detail::Metric *Registry::find_statsd_named(detail::StatsdReading &reading) {
  const detail::StatsdLine &line = reading.line;
  detail::Metric *metric = find(reading.name);
  if (metric && detail::takes(metric->config.type, line.type)) return metric;
  if (line.type != detail::StatsdType::counter) return nullptr;
  reading.name += "_total";
  metric = find(reading.name);
  return metric && metric->config.type == MetricType::counter ? metric : nullptr;
}

inline void Registry::apply_statsd(detail::StatsdReading &reading, Now now, IngestResult &result) {
  const detail::StatsdLine &line = reading.line;
  std::optional<Reject> refused;
  detail::Metric *metric = line_metrics_->active() ? find_or_make_statsd(reading, refused) : find_statsd(reading);
  if (!metric) return tally(result, refused.value_or(Reject::unknown_metric), line.value_count);
  if (const auto reason = detail::statsd_label_values(metric->config, line, reading.name, reading.label_values))
    return tally(result, reason, line.value_count);
  for (std::size_t start = 0; start <= line.values.size();) { // each of a multi-value line's values on its own
    const std::size_t end = std::min(line.values.find(':', start), line.values.size());
    detail::Update update;
    auto reason = detail::statsd_update(line, line.values.substr(start, end - start), update);
    if (!reason) reason = detail::apply_to_series(*metric, reading.label_values, update, now, *budget_);
    tally(result, reason);
    start = end + 1;
  }
}

inline void Registry::count_rejected(Reject reason) { ++rejected_[static_cast<std::size_t>(reason)]; }

inline IngestResult Registry::ingest_statsd_lines(std::string_view lines, Now now) {
  IngestResult result;
  ingest_statsd(lines, now, result);
  received_[static_cast<std::size_t>(Wire::statsd)] += result.accepted + result.rejected_total();
  return result;
}

namespace detail {
inline bool same_shape(const MetricConfig &a, const MetricConfig &b) {
  return a.type == b.type && a.labels == b.labels && a.buckets == b.buckets && a.objectives == b.objectives &&
         a.max_age_seconds == b.max_age_seconds && a.native == b.native &&
         a.native_bucket_factor == b.native_bucket_factor && a.native_max_buckets == b.native_max_buckets &&
         a.native_zero_threshold == b.native_zero_threshold;
}
} // namespace detail

// The new metrics are made on a budget of their own first, so that what the exchange
// takes and gives back can be weighed before anything changes.
inline Registry::ReloadSummary Registry::reload(const Config &config) {
  ReloadSummary summary;
  Config with_lines = config;
  carry_line_metrics(with_lines);
  Registry next(with_lines);
  std::vector<detail::Metric *> kept_from(next.metrics_.size(), nullptr);
  for (std::size_t i = 0; i < next.metrics_.size(); ++i) {
    detail::Metric *before = find(next.metrics_[i].config.name);
    if (before && detail::same_shape(before->config, next.metrics_[i].config)) kept_from[i] = before;
  }
  detail::SeriesCost freed{0, fixed_body_bytes_}, wanted{0, next.fixed_body_bytes_};
  for (std::size_t i = 0; i < next.metrics_.size(); ++i)
    if (!kept_from[i]) detail::add_series_costs(wanted, next.metrics_[i]);
  for (const detail::Metric &metric : metrics_)
    if (std::find(kept_from.begin(), kept_from.end(), &metric) == kept_from.end()) detail::add_series_costs(freed, metric);
  if (!budget_->can_exchange(freed.own, freed.body, wanted.own, wanted.body)) throw ConfigError(no_room_for(wanted));

  for (std::size_t i = 0; i < next.metrics_.size(); ++i) {
    if (!kept_from[i]) continue;
    next.metrics_[i].series = std::move(kept_from[i]->series); // the fresh label-less series goes with next's budget
    kept_from[i]->series.clear();
  }
  summary.kept = static_cast<std::size_t>(std::count_if(kept_from.begin(), kept_from.end(), [](const detail::Metric *m) { return m != nullptr; }));
  summary.fresh = next.metrics_.size() - summary.kept;
  summary.removed = metrics_.size() - summary.kept;
  give_back_budget(); // what was not kept, and the old room
  budget_->take_for_series(wanted.own, wanted.body); // fits: weighed above
  holds_budget_ = true;
  service_name_ = next.service_name_;
  fixed_body_bytes_ = next.fixed_body_bytes_;
  metrics_ = std::move(next.metrics_);
  line_metrics_->settings = config.statsd;
  line_metrics_->made = 0;
  for (detail::Metric &metric : metrics_) {
    metric.from_line = std::none_of(config.metrics.begin(), config.metrics.end(),
                                    [&](const MetricConfig &m) { return m.name == metric.config.name; });
    line_metrics_->made += metric.from_line ? 1 : 0;
  }
  return summary;
}

inline std::size_t Registry::expire(double monotonic_now) {
  std::size_t dropped = 0;
  for (detail::Metric &metric : metrics_) {
    if (!metric.config.objectives.empty())
      for (auto &entry : metric.series) entry.second.distribution->quantiles->advance(monotonic_now);
    if (metric.config.ttl_seconds <= 0 || metric.config.labels.empty()) continue;
    const double stale_before = monotonic_now - metric.config.ttl_seconds;
    dropped += metric.series.drop_if([&](const detail::SeriesTable::Entry &series) {
      if (series.second.last_push > stale_before) return false;
      const detail::SeriesCost cost = detail::series_cost(metric.config, series.first);
      budget_->give_back_series(cost.own, cost.body);
      return true;
    });
  }
  for (detail::Metric &metric : metrics_) metric.series.sort(); // so that a render reads the order made here
  expired_ += dropped;
  changes_ += dropped;
  return dropped;
}

inline std::optional<Reject> Registry::apply(const detail::ReadSample &sample, Now now) {
  using detail::JsonKind;
  const bool payload_ok = sample.payload == JsonKind::absent || sample.payload == JsonKind::null || sample.payload == JsonKind::object;
  if (sample.shape != JsonKind::object || sample.metric_name.kind != JsonKind::string || !payload_ok)
    return Reject::malformed_sample;
  detail::Metric *metric = find(sample.metric_name.text.get());
  if (!metric) return Reject::unknown_metric;
  std::vector<std::string_view> &label_values = reading_->label_values;
  if (const auto reason = detail::read_label_values(metric->config, sample, label_values)) return reason;
  detail::Update update;
  if (const auto reason = detail::read_update(metric->config.type, sample, update)) return reason;
  return detail::apply_to_series(*metric, label_values, update, now, *budget_);
}

inline std::optional<double> Registry::value(std::string_view metric, const std::vector<std::string> &label_values) const {
  const detail::Metric *found = find(metric);
  if (!found) return std::nullopt;
  const detail::Series *series = found->series.find(label_values);
  if (!series) return std::nullopt;
  return series->value;
}

inline std::size_t Registry::series_count() const {
  std::size_t count = 0;
  for (const detail::Metric &metric : metrics_) count += metric.series.size();
  return count;
}

inline std::size_t Registry::metric_count() const { return metrics_.size(); }

inline Registry::MetricFill Registry::metric_fill(std::size_t index) const {
  const detail::Metric &metric = metrics_[index];
  return {metric.config.name, metric.series.size(), metric.config.max_series};
}

} // namespace hermes

// ===== REGISTRY: METRICS FROM STATSD LINES ================================================

namespace hermes {

inline void Registry::use_statsd_mapping(std::shared_ptr<const detail::StatsdMapping> mapping) {
#ifdef HERMES_YAML
  line_metrics_->cache.clear(*budget_);
#endif
  line_metrics_->mapping = std::move(mapping);
}

// A line's metric when lines may make metrics: the name a mapping rule gives it (kept
// per name), or its own; the metric of that name, or else a new one, when a rule matched
// or undeclared metrics are accepted.
inline detail::Metric *Registry::find_or_make_statsd(detail::StatsdReading &reading, std::optional<Reject> &refused) {
  detail::LineMetrics &lines = *line_metrics_;
  detail::StatsdLine &line = reading.line;
  const detail::LineMetricShape *shape = nullptr;
#ifdef HERMES_YAML
  if (lines.mapping) {
    static constexpr char letters[] = {'c', 'g', 'm', 'h', 'd', 's'}; // by StatsdType
    lines.key.assign(line.name).append(line.name_rest).append(1, '|').append(1, letters[static_cast<int>(line.type)]);
    const std::string_view name(lines.key.data(), lines.key.size() - 2);
    const detail::MappingResult &mapped =
        lines.cache.get(lines.key, *budget_, [&] { return lines.mapping->map(name, line.type); });
    if (mapped.action == detail::MappingResult::Action::drop) return refused = Reject::dropped, nullptr;
    if (mapped.action == detail::MappingResult::Action::map) {
      if (mapped.name.empty()) return refused = Reject::malformed_sample, nullptr; // statsd_exporter's empty_metric_name
      for (const auto &label : mapped.labels) line.tags.push_back({label.first, label.second}); // the rule's win
      reading.name = mapped.name;
      shape = &mapped.rule->shape;
    }
  }
#endif
  if (!shape) {
    reading.name.clear();
    detail::append_statsd_name(reading.name, line.name, line.name_rest);
  }
  const std::size_t name_size = reading.name.size();
  if (detail::Metric *metric = find_statsd_named(reading)) {
    if (shape && metric->from_line) metric->config.ttl_seconds = shape->ttl_seconds.value_or(lines.settings.ttl_seconds);
    return metric;
  }
  if (!shape && !lines.settings.accept_undeclared) return nullptr;
  reading.name.resize(name_size);
  const detail::LineMetricShape undeclared{lines.settings.observe_as_summary, default_buckets(), detail::statsd_default_objectives(),
                                           600, std::nullopt, {}};
  return make_line_metric(detail::line_metric_config(reading.name, line, shape ? *shape : undeclared, lines.settings), refused);
}

// Adds a metric a line makes, with its family's room in the bodies, or says why not.
inline detail::Metric *Registry::make_line_metric(MetricConfig config, std::optional<Reject> &refused) {
  if ((refused = detail::line_metric_conflict(config, metrics_))) return nullptr;
  if (taken_elsewhere_)
    for (const std::string &name : detail::names_taken(config))
      if (taken_elsewhere_(name)) return refused = Reject::type_mismatch, nullptr;
  if (line_metrics_->made >= line_metrics_->settings.max_metrics) return refused = Reject::metric_limit, nullptr;
  const auto at = std::lower_bound(metrics_.begin(), metrics_.end(), config.name,
                                   [](const detail::Metric &m, const std::string &n) { return m.config.name < n; });
  const auto made = metrics_.insert(at, detail::Metric{std::move(config), {}, true});
  const std::size_t bound = detail::fixed_body_bound(*this);
  if (!budget_->take_for_series(0, bound - fixed_body_bytes_)) {
    metrics_.erase(made);
    return refused = Reject::memory_limit, nullptr;
  }
  fixed_body_bytes_ = bound;
  ++line_metrics_->made;
  return &*made;
}

inline bool Registry::uses_name(std::string_view name) const {
  const auto writes = [&](const std::string &base) {
    const detail::Metric *metric = find(base);
    if (!metric) return false;
    const std::vector<std::string> names = detail::names_taken(metric->config);
    return std::find(names.begin(), names.end(), name) != names.end();
  };
  const std::string whole(name);
  if (writes(whole) || writes(whole + "_total")) return true;
  for (const char *suffix : {"_total", "_created", "_bucket", "_sum", "_count"})
    if (detail::ends_with(name, suffix)) {
      const std::string base(name.substr(0, name.size() - std::strlen(suffix)));
      if (writes(base) || writes(base + "_total")) return true;
    }
  return false;
}

// A reload keeps the metrics lines made, as if configured, while lines may still make
// metrics; one whose names the new config uses gives way to it.
inline void Registry::carry_line_metrics(Config &next) const {
  const StatsdSettings &settings = next.statsd;
  if (!settings.accept_undeclared && settings.mapping_file.empty()) return;
  const std::size_t configured = next.metrics.size();
  for (const detail::Metric &metric : metrics_) {
    if (!metric.from_line) continue;
    const std::vector<std::string> mine = detail::names_taken(metric.config);
    const bool clash = std::any_of(next.metrics.begin(), next.metrics.begin() + static_cast<std::ptrdiff_t>(configured),
                                   [&](const MetricConfig &other) {
                                     for (const std::string &name : detail::names_taken(other))
                                       if (std::find(mine.begin(), mine.end(), name) != mine.end()) return true;
                                     return false;
                                   });
    if (!clash) next.metrics.push_back(metric.config);
  }
}

// A metric of the state file that the config does not name, made again as a line would
// make it, while lines may make metrics.
inline detail::Metric *Registry::restore_line_metric(const MetricConfig &shape) {
  if (!line_metrics_->active()) return nullptr;
  MetricConfig config = shape;
  config.ttl_seconds = line_metrics_->settings.ttl_seconds; // a rule's ttl comes back with its next line
  config.max_series = line_metrics_->settings.max_series;
  std::optional<Reject> refused;
  return make_line_metric(std::move(config), refused);
}

// ---- StatsD mapping files ----

inline std::string statsd_mapping_path(const Config &config, const Options &options) {
  return options.statsd_mapping_file.empty() ? config.statsd.mapping_file : options.statsd_mapping_file;
}

inline StatsdMappingFile parse_statsd_mapping(std::string_view yaml, const std::string &origin) {
#ifdef HERMES_YAML
  detail::MappingReader reader(origin);
  StatsdMappingFile file;
  std::shared_ptr<detail::StatsdMapping> mapping = reader.read(detail::parse_yaml(yaml, origin));
  file.rules = mapping->rules.size();
  file.mapping = std::move(mapping);
  file.warnings = std::move(reader.warnings);
  return file;
#else
  (void)yaml;
  throw ConfigError(origin + ": a StatsD mapping file is YAML, which this build of Hermes does not read "
                             "(build it with -DHERMES_YAML and -lyaml)");
#endif
}

inline StatsdMappingFile load_statsd_mapping(const std::string &path) {
#ifndef HERMES_YAML
  return parse_statsd_mapping({}, path); // says what this build lacks before looking for the file
#endif
  std::string text;
  if (const int error = detail::read_file(path.c_str(), HERMES_MAX_MAPPING_SIZE + 1, text))
    throw ConfigError(path + ": cannot read: " + std::strerror(error));
  if (text.size() > HERMES_MAX_MAPPING_SIZE)
    throw ConfigError(path + ": larger than " + std::to_string(HERMES_MAX_MAPPING_SIZE) + " bytes");
  return parse_statsd_mapping(text, path);
}

} // namespace hermes

// ===== STATE ==============================================================================

namespace hermes {

inline void Registry::save_state(std::string &out, Now now, const std::function<void()> &pause) const {
  detail::StateCodec::save(*this, out, now, pause);
}

inline std::size_t Registry::state_size_bound() const { return detail::StateCodec::text_bound(*this); }

inline Registry::RestoreSummary Registry::restore_state(std::string_view text, double monotonic_now) {
  return detail::StateCodec::restore(*this, text, monotonic_now);
}

} // namespace hermes

// ===== FORMATTING =========================================================================

namespace hermes {

inline const char *content_type(Format format) {
  static constexpr const char *types[] = {"text/plain; version=0.0.4; charset=utf-8",
                                          "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                          "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"};
  return detail::name_of(format, types);
}

namespace detail {

// A parameter of one media range of an Accept header ("type/sub;version=1.0.0;q=0.5").
inline std::optional<std::string_view> media_parameter(std::string_view range, std::string_view name) {
  for (std::size_t semicolon = range.find(';'); semicolon != std::string_view::npos;) {
    const std::size_t next = range.find(';', semicolon + 1);
    const std::string_view parameter = trim(range.substr(semicolon + 1, next - semicolon - 1));
    const std::size_t equals = parameter.find('=');
    if (equals != std::string_view::npos && lowercase(trim(parameter.substr(0, equals))) == name)
      return trim(parameter.substr(equals + 1));
    semicolon = next;
  }
  return std::nullopt;
}

inline double accept_quality(std::string_view range) {
  const auto quality = media_parameter(range, "q");
  return quality ? parse_decimal(*quality).value_or(0) : 1;
}

// The format a media range names, if any; the protobuf type only with the parameters
// that make it the delimited MetricFamily stream, as client_golang asks for them.
inline std::optional<Format> media_format(std::string_view range) {
  const std::string type = lowercase(trim(range.substr(0, range.find(';'))));
  if (type == "text/plain" || type == "text/*" || type == "*/*") return Format::text;
  if (type == "application/openmetrics-text") return Format::openmetrics;
  if (type == "application/vnd.google.protobuf" && media_parameter(range, "proto") == "io.prometheus.client.MetricFamily" &&
      media_parameter(range, "encoding") == "delimited")
    return Format::protobuf;
  return std::nullopt;
}

} // namespace detail

inline Format negotiate_format(std::string_view accept, bool openmetrics, bool protobuf) {
  std::array<double, static_cast<std::size_t>(Format::count_)> quality{};
  while (!accept.empty()) {
    const std::size_t comma = accept.find(',');
    const std::string_view range = detail::trim(accept.substr(0, comma));
    if (const auto format = detail::media_format(range)) {
      double &best = quality[static_cast<std::size_t>(*format)];
      best = std::max(best, detail::accept_quality(range));
    }
    accept = comma == std::string_view::npos ? std::string_view() : accept.substr(comma + 1);
  }
  Format chosen = Format::text;
  const auto consider = [&](Format format, bool allowed) {
    if (allowed && quality[static_cast<std::size_t>(format)] > quality[static_cast<std::size_t>(chosen)]) chosen = format;
  };
  consider(Format::openmetrics, openmetrics);
  consider(Format::protobuf, has_protobuf && protobuf);
  return chosen;
}

namespace detail {

// Label values escape backslash, newline and double quote; HELP text escapes the first
// two in text 0.0.4 and all three in OpenMetrics.
inline void append_escaped(std::string &out, std::string_view text, bool escape_quote) {
  if (text.find_first_of(escape_quote ? "\\\n\"" : "\\\n") == std::string_view::npos) {
    out += text; // the common case: nothing to escape
    return;
  }
  for (const char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && escape_quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

// What the body is written through, one family after another: the text formats or
// protobuf. `series` writes one series of a configured metric (label values in
// configured order); `sample` one series of Hermes' own families.
using LabelPairs = std::initializer_list<std::pair<std::string_view, std::string_view>>;

class Writer {
public:
  virtual void family(std::string_view name, std::string_view help, MetricType type) = 0;
  virtual void series(const MetricConfig &config, const LabelValues &labels, const Series &series) = 0;
  virtual void sample(std::string_view name, LabelPairs labels, double value) = 0;
  virtual void finish() = 0;
  // A sample of a pushed group, its labels known only as it is written, and `extra` (le,
  // quantile) after them: what a remote-write snapshot takes. The bodies write pushed
  // families as text or protobuf directly, and never call it.
  virtual void pushed_sample(std::string_view name, const PushLabels &labels, LabelPairs extra, double value) {
    (void)name, (void)labels, (void)extra, (void)value;
  }

protected:
  ~Writer() = default;
};

// Writes families in one of the text formats. In OpenMetrics a counter named *_total is
// the family without the suffix; a counter without the suffix cannot be an OpenMetrics
// counter under its name, so it is typed unknown; and counters, histograms and summaries
// add *_created to each series a push made. Either way every sample keeps its
// text-format name, so Prometheus stores the same series.
class Exposition final : public Writer {
public:
  Exposition(std::string &out, Format format) : out_(out), format_(format) {}

  Format format() const { return format_; }

  void family(std::string_view name, std::string_view help, MetricType type) override {
    const bool openmetrics = format_ == Format::openmetrics;
    family_ = openmetrics ? openmetrics_family(name, type) : name;
    const bool total = type == MetricType::counter && family_.size() != name.size();
    const char *type_name = openmetrics && type == MetricType::counter && !total ? "unknown" : to_string(type);
    with_created_ = openmetrics && (total || type == MetricType::histogram || type == MetricType::summary);
    out_ += "# HELP ";
    out_ += family_;
    out_ += ' '; // OpenMetrics wants the space even before an empty text
    append_escaped(out_, help, openmetrics);
    out_ += "\n# TYPE ";
    out_ += family_;
    out_ += ' ';
    out_ += type_name;
    out_ += '\n';
  }

  void series(const MetricConfig &config, const LabelValues &labels, const Series &series) override;

  void sample(std::string_view name, LabelPairs labels, double value) override {
    out_ += name;
    const char *separator = "{";
    for (const auto &label : labels) {
      out_ += separator;
      append_label(label.first, label.second);
      separator = ",";
    }
    if (labels.size() > 0) out_ += '}';
    out_ += ' ';
    append_double(out_, value);
    out_ += '\n';
  }

  // One line; `extra` is a last label of its own, such as a bucket's le. Made on the
  // stack and appended once where it surely fits: a dozen appends to the body cost a
  // dozen checks of its room and calls into the library, half a scrape's time.
  template <typename Values>
  void line(std::string_view name, const std::vector<std::string> &label_names, const Values &label_values, double value,
            std::pair<std::string_view, std::string_view> extra = {}) {
    char buffer[line_room];
    if (char *end = put_line(buffer, name, label_names, label_values, value, extra)) return (void)out_.append(buffer, static_cast<std::size_t>(end - buffer));
    out_ += name;
    append_labels(label_names, label_values, extra);
    out_ += ' ';
    append_double(out_, value);
    out_ += '\n';
  }

  // The series' creation time, where the format has a place for it.
  template <typename Values>
  void created(const std::vector<std::string> &label_names, const Values &label_values, double seconds) {
    if (!with_created_ || seconds <= 0) return;
    const std::string name = std::string(family_) + "_created";
    line(name, label_names, label_values, seconds);
  }

  void finish() override {
    if (format_ == Format::openmetrics) out_ += "# EOF\n";
  }

private:
  static constexpr std::size_t line_room = 512;

  // The line at `at`, or nothing (null) when it might not fit in line_room bytes.
  template <typename Values>
  static char *put_line(char *at, std::string_view name, const std::vector<std::string> &names, const Values &values,
                        double value, std::pair<std::string_view, std::string_view> extra) {
    std::size_t most = name.size() + 2 + extra.first.size() + 4 + 2 * extra.second.size() + 1 + number_room + 1;
    for (std::size_t i = 0; i < names.size(); ++i) most += names[i].size() + 4 + 2 * std::string_view(values[i]).size();
    if (most > line_room) return nullptr;
    at = std::copy(name.begin(), name.end(), at);
    if (!names.empty() || !extra.first.empty()) {
      *at++ = '{';
      for (std::size_t i = 0; i < names.size(); ++i) at = put_label(i > 0 ? put_char(at, ',') : at, names[i], values[i]);
      if (!extra.first.empty()) at = put_label(names.empty() ? at : put_char(at, ','), extra.first, extra.second);
      *at++ = '}';
    }
    *at++ = ' ';
    at = put_double(at, value);
    *at++ = '\n';
    return at;
  }
  static char *put_char(char *at, char c) { return *at = c, at + 1; }
  static char *put_label(char *at, std::string_view name, std::string_view value) {
    at = std::copy(name.begin(), name.end(), at);
    *at++ = '=', *at++ = '"';
    const auto needs_escape = [](char c) { return c == '\\' || c == '\n' || c == '"'; };
    if (std::none_of(value.begin(), value.end(), needs_escape)) {
      at = std::copy(value.begin(), value.end(), at); // the common case
    } else {
      for (const char c : value) { // escaped as append_escaped does
        if (needs_escape(c)) *at++ = '\\';
        *at++ = c == '\n' ? 'n' : c;
      }
    }
    *at++ = '"';
    return at;
  }

  template <typename Values>
  void append_labels(const std::vector<std::string> &names, const Values &values,
                     std::pair<std::string_view, std::string_view> extra) {
    if (names.empty() && extra.first.empty()) return;
    out_ += '{';
    for (std::size_t i = 0; i < names.size(); ++i) {
      if (i > 0) out_ += ',';
      append_label(names[i], values[i]);
    }
    if (!extra.first.empty()) {
      if (!names.empty()) out_ += ',';
      append_label(extra.first, extra.second);
    }
    out_ += '}';
  }

  void append_label(std::string_view name, std::string_view value) {
    out_ += name;
    out_ += "=\"";
    append_escaped(out_, value, true);
    out_ += '"';
  }

  std::string &out_;
  Format format_;
  bool with_created_ = false;
  std::string_view family_;
};

// Cumulative buckets with their upper bound as le, then _sum and _count. A native
// histogram without classic buckets shows the +Inf bucket alone, as client_golang does.
// OpenMetrics 1.0 holds a histogram's sum to be a counter, never negative, and allows
// none beside a negative bucket bound; and it writes _count if and only if it writes
// _sum (gaugehistogram's _gsum and _gcount belong to another type, with other series
// names). So in OpenMetrics a histogram with a negative bound has neither, nor has a
// series while its sum is below zero (or NaN); its +Inf bucket still counts every
// observation. Text and protobuf always carry both, as client_golang writes them.
inline bool openmetrics_sum_allowed(const MetricConfig &config, const Distribution &seen) {
  const bool negative_bound = !config.buckets.empty() && config.buckets.front() < 0;
  return !negative_bound && seen.sum >= 0;
}

inline void write_histogram(Exposition &out, const MetricConfig &config, const LabelValues &labels,
                            const Distribution &seen) {
  const std::string bucket = config.name + "_bucket";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < seen.bucket_counts.size(); ++i) {
    cumulative += seen.bucket_counts[i];
    const std::string le = i < config.buckets.size() ? format_double(config.buckets[i]) : "+Inf";
    out.line(bucket, config.labels, labels, static_cast<double>(cumulative), {"le", le});
  }
  if (out.format() == Format::openmetrics && !openmetrics_sum_allowed(config, seen)) return;
  out.line(config.name + "_sum", config.labels, labels, seen.sum);
  out.line(config.name + "_count", config.labels, labels, static_cast<double>(seen.count));
}

// Each objective's quantile over the window (NaN while it is empty), then _sum and _count.
inline void write_summary(Exposition &out, const MetricConfig &config, const LabelValues &labels,
                          const Distribution &seen) {
  for (const auto &objective : config.objectives)
    out.line(config.name, config.labels, labels, seen.quantiles->query(objective.first),
             {"quantile", format_double(objective.first)});
  out.line(config.name + "_sum", config.labels, labels, seen.sum);
  out.line(config.name + "_count", config.labels, labels, static_cast<double>(seen.count));
}

inline void Exposition::series(const MetricConfig &config, const LabelValues &labels, const Series &series) {
  if (config.type == MetricType::histogram) {
    write_histogram(*this, config, labels, *series.distribution);
  } else if (config.type == MetricType::summary) {
    write_summary(*this, config, labels, *series.distribution);
  } else {
    line(config.name, config.labels, labels, series.value);
  }
  created(config.labels, labels, series.created);
}

// ---- Protobuf ------------------------------------------------------------------------------

// The MetricType enum of metrics.proto.
inline std::uint64_t protobuf_type(MetricType type) {
  static constexpr std::uint64_t numbers[] = {0 /* COUNTER */, 1 /* GAUGE */, 4 /* HISTOGRAM */, 2 /* SUMMARY */};
  static_assert(std::size(numbers) == static_cast<std::size_t>(MetricType::count_), "one number per type");
  return numbers[static_cast<std::size_t>(type)];
}

// One side of a native histogram: its spans (BucketSpan {offset = 1, length = 2}), where
// gaps of up to two empty buckets stay inside a span as client_golang keeps them, then
// the packed count deltas from bucket to bucket.
inline void append_native_side(std::string &out, std::string &deltas, const NativeSide &side, std::uint32_t span_field,
                               std::uint32_t delta_field) {
  if (side.empty()) return;
  const auto append_span = [&](std::int32_t offset, std::uint32_t length) {
    std::string span; // a few bytes, within the small-string buffer
    append_sint_field(span, 1, offset);
    append_uint_field(span, 2, length);
    append_bytes_field(out, span_field, span);
  };
  const auto append_delta = [&](std::uint64_t count, std::uint64_t &previous) {
    const std::int64_t delta = static_cast<std::int64_t>(count) - static_cast<std::int64_t>(previous);
    append_varint(deltas, zigzag(delta));
    previous = count;
  };
  deltas.clear();
  std::int32_t offset = 0, next = 0;
  std::uint32_t length = 0;
  std::uint64_t previous = 0;
  for (std::size_t i = 0; i < side.size(); ++i) {
    const std::int32_t gap = side[i].first - next;
    if (i == 0 || gap > 2) {
      if (i > 0) append_span(offset, length);
      offset = gap, length = 0;
    } else {
      for (std::int32_t empty = 0; empty < gap; ++empty, ++length) append_delta(0, previous);
    }
    append_delta(side[i].second, previous);
    ++length;
    next = side[i].first + 1;
  }
  append_span(offset, length);
  append_bytes_field(out, delta_field, deltas);
}

// Writes the delimited protobuf exposition: each family a varint length and a
// MetricFamily {name = 1, help = 2, type = 3, metric = 4}. A family is written in place
// after room for the largest length it can have; once whole, it moves up to its length.
class ProtobufExposition final : public Writer {
public:
  explicit ProtobufExposition(std::string &out) : out_(out) {}

  void family(std::string_view name, std::string_view help, MetricType type) override {
    end_family();
    family_start_ = out_.size();
    out_.append(length_room, '\0');
    append_bytes_field(out_, 1, name);
    append_bytes_field(out_, 2, help);
    append_uint_field(out_, 3, protobuf_type(type));
    type_ = type;
    open_ = true;
  }

  // A Metric {label = 1, gauge = 2, counter = 3, summary = 4, histogram = 7}.
  void series(const MetricConfig &config, const LabelValues &labels, const Series &series) override {
    if (config.type == MetricType::counter || config.type == MetricType::gauge) {
      const double created = config.type == MetricType::counter ? series.created : 0;
      return scalar([&](auto &&label) { for (std::size_t i = 0; i < labels.size(); ++i) label(config.labels[i], labels[i]); },
                    series.value, created);
    }
    metric_.clear();
    for (std::size_t i = 0; i < labels.size(); ++i) append_label_pair(metric_, 1, config.labels[i], labels[i]);
    inner_.clear();
    if (config.type == MetricType::histogram) {
      histogram(config, *series.distribution, series.created);
    } else {
      summary(config, *series.distribution, series.created);
    }
    append_bytes_field(metric_, type_ == MetricType::histogram ? 7 : 4, inner_);
    append_bytes_field(out_, 4, metric_);
  }

  void sample(std::string_view, LabelPairs labels, double value) override {
    scalar([&](auto &&label) { for (const auto &pair : labels) label(pair.first, pair.second); }, value, 0);
  }

  void finish() override { end_family(); }

private:
  static constexpr std::size_t length_room = 5; // a varint of up to 2^35 - 1 bytes

  // A counter's or gauge's Metric, sized first and then written in place: the common
  // case, a hundred thousand times in a large scrape. `each_label(f)` calls f(name, value).
  template <typename EachLabel> void scalar(EachLabel &&each_label, double value, double created_seconds) {
    const Timestamp created(created_seconds);
    std::size_t labels_size = 0;
    each_label([&](std::string_view name, std::string_view text) {
      const std::size_t pair = label_pair_size(name, text);
      labels_size += 1 + varint_size(pair) + pair;
    });
    const std::size_t inner = 9 + (created_seconds > 0 ? 2 + created.size() : 0); // value, created_timestamp
    const std::size_t metric = labels_size + 1 + varint_size(inner) + inner;
    const std::size_t start = out_.size();
    out_.resize(start + 1 + varint_size(metric) + metric);
    char *at = put_varint(put_tag(&out_[start], 4, WireType::length_delimited), metric);
    each_label([&](std::string_view name, std::string_view text) { at = put_label_pair(at, 1, name, text); });
    at = put_varint(put_tag(at, type_ == MetricType::counter ? 3 : 2, WireType::length_delimited), inner);
    at = put_double_field(at, 1, value);
    if (created_seconds > 0) put_timestamp_field(at, 3, created);
  }

  void end_family() {
    if (!open_) return;
    const std::size_t body = out_.size() - family_start_ - length_room;
    char length[length_room];
    const std::size_t length_size = static_cast<std::size_t>(put_varint(length, body) - length);
    char *family = &out_[family_start_];
    std::memmove(family + length_size, family + length_room, body);
    std::memcpy(family, length, length_size);
    out_.resize(out_.size() - (length_room - length_size));
    open_ = false;
  }

  // Summary {sample_count = 1, sample_sum = 2, quantile = 3 {quantile = 1, value = 2},
  // created_timestamp = 4}.
  void summary(const MetricConfig &config, const Distribution &seen, double created) {
    append_uint_field(inner_, 1, seen.count);
    append_double_field(inner_, 2, seen.sum);
    for (const auto &objective : config.objectives) {
      append_tag(inner_, 3, WireType::length_delimited);
      append_varint(inner_, 18);
      append_double_field(inner_, 1, objective.first);
      append_double_field(inner_, 2, seen.quantiles->query(objective.first));
    }
    if (created > 0) append_timestamp_field(inner_, 4, created);
  }

  // Histogram {sample_count = 1, sample_sum = 2, bucket = 3 {cumulative_count = 1,
  // upper_bound = 2}, schema = 5, zero_threshold = 6, zero_count = 7, negative_span = 9,
  // negative_delta = 10, positive_span = 12, positive_delta = 13, created_timestamp = 15}.
  // The +Inf bucket is left out, as client_golang leaves it: sample_count is its count.
  void histogram(const MetricConfig &config, const Distribution &seen, double created) {
    append_uint_field(inner_, 1, seen.count);
    append_double_field(inner_, 2, seen.sum);
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < config.buckets.size(); ++i) {
      cumulative += seen.bucket_counts[i];
      append_tag(inner_, 3, WireType::length_delimited);
      append_varint(inner_, 1 + varint_size(cumulative) + 9);
      append_uint_field(inner_, 1, cumulative);
      append_double_field(inner_, 2, config.buckets[i]);
    }
    if (seen.native) native(config, *seen.native);
    if (created > 0) append_timestamp_field(inner_, 15, created);
  }

  void native(const MetricConfig &config, const NativeHistogram &native) {
    append_sint_field(inner_, 5, native.schema);
    append_double_field(inner_, 6, config.native_zero_threshold);
    append_uint_field(inner_, 7, native.zero_count);
    append_native_side(inner_, deltas_, native.negative, 9, 10);
    append_native_side(inner_, deltas_, native.positive, 12, 13);
    // Without a zero threshold and observations, a no-op span tells it from a classic one.
    if (config.native_zero_threshold == 0 && native.zero_count == 0 && native.buckets() == 0) {
      append_tag(inner_, 12, WireType::length_delimited);
      append_varint(inner_, 4);
      append_sint_field(inner_, 1, 0);
      append_uint_field(inner_, 2, 0);
    }
  }

  std::string &out_;
  std::string metric_, inner_, deltas_; // messages of histograms and summaries being made
  std::size_t family_start_ = 0;
  MetricType type_ = MetricType::gauge;
  bool open_ = false;
};

// ---- Hermes' own figures -------------------------------------------------------------------

// What Hermes' own families are read from: the registry always; a server's figures and
// the process' when a server renders, null for a bare registry.
struct SelfView {
  const Registry &registry;
  const ServerStats *server;
  const ProcessStats *process;
  const PushStore *pushed = nullptr; // the groups pushed over the Pushgateway API, when a server has them
};

using Figure = std::optional<double>; // absent: the family is left out

// One family of Hermes' own: either one series without labels (`value`), or labelled
// series that `write` adds after the family's HELP and TYPE lines.
struct SelfMetric {
  enum class Scope { registry, server, process, statsd_tcp, tls, remote_write, push, state, gzip }; // statsd_tcp: a server's, when its TCP listener is on; tls: a server whose HTTP port speaks TLS; remote_write: one with a target; push, state, gzip: a server's, in a build with that part
  const char *name;
  const char *help;
  MetricType type;
  Scope scope;
  Figure (*value)(const SelfView &);
  void (*write)(Writer &, const char *name, const SelfView &);
};

inline void write_build_info(Writer &out, const char *name, const SelfView &view) {
  out.sample(name, {{"version", HERMES_VERSION_STR}, {"service", view.registry.service_name()}}, 1);
}

// The reasons only StatsD lines are refused for: a build without StatsD never shows them.
inline bool statsd_only(Reject reason) {
  return reason == Reject::unsupported_type || reason == Reject::dropped || reason == Reject::type_mismatch ||
         reason == Reject::metric_limit;
}

inline void write_rejects(Writer &out, const char *name, const SelfView &view) {
  for (std::size_t i = 0; i < reject_reason_count; ++i) {
    const auto reason = static_cast<Reject>(i);
    if (!has_statsd && statsd_only(reason)) continue;
    out.sample(name, {{"reason", to_string(reason)}}, static_cast<double>(view.registry.rejected(reason)));
  }
}

inline void write_received(Writer &out, const char *name, const SelfView &view) {
  for (std::size_t i = 0; i < wire_count; ++i) {
    const auto wire = static_cast<Wire>(i);
    if (!has_statsd && wire == Wire::statsd) continue;
    out.sample(name, {{"format", to_string(wire)}}, static_cast<double>(view.registry.received(wire)));
  }
}

inline void write_reloads(Writer &out, const char *name, const SelfView &view) {
  out.sample(name, {{"result", "success"}}, static_cast<double>(view.server->reloads_succeeded));
  out.sample(name, {{"result", "failure"}}, static_cast<double>(view.server->reloads_failed));
}

inline void write_state_writes(Writer &out, const char *name, const SelfView &view) {
  out.sample(name, {{"result", "success"}}, static_cast<double>(view.server->state_writes_succeeded));
  out.sample(name, {{"result", "failure"}}, static_cast<double>(view.server->state_writes_failed));
}

inline void write_metrics_bytes(Writer &out, const char *name, const SelfView &view) {
  if (has_gzip) out.sample(name, {{"encoding", "gzip"}}, static_cast<double>(view.server->metrics_bytes_gzip));
  out.sample(name, {{"encoding", "identity"}}, static_cast<double>(view.server->metrics_bytes_identity));
}

inline void write_tls_handshakes(Writer &out, const char *name, const SelfView &view) {
  out.sample(name, {{"result", "ok"}}, static_cast<double>(view.server->tls_handshakes_ok));
  out.sample(name, {{"result", "failed"}}, static_cast<double>(view.server->tls_handshakes_failed));
  out.sample(name, {{"result", "timeout"}}, static_cast<double>(view.server->tls_handshakes_timeout));
}

inline void write_http_requests(Writer &out, const char *name, const SelfView &view) {
  for (const auto &[code, count] : view.server->http_requests) {
    const std::string code_text = std::to_string(code);
    out.sample(name, {{"code", code_text}}, static_cast<double>(count));
  }
}

inline void write_push_requests(Writer &out, const char *name, const SelfView &view) {
  for (const auto &[key, count] : view.server->push_requests) {
    const std::string code_text = std::to_string(key.second);
    out.sample(name, {{"method", key.first}, {"code", code_text}}, static_cast<double>(count));
  }
}

// One series per configured metric, labelled with its name, showing one Field of its
// fill: no allocation, and a line of bounded length each (see fixed_body_bound).
template <std::size_t Registry::MetricFill::*Field>
inline void write_per_metric(Writer &out, const char *name, const SelfView &view) {
  for (std::size_t i = 0; i < view.registry.metric_count(); ++i) {
    const Registry::MetricFill fill = view.registry.metric_fill(i);
    out.sample(name, {{"metric", fill.name}}, static_cast<double>(fill.*Field));
  }
}

inline Figure count(std::uint64_t n) { return static_cast<double>(n); }

// A server's counts by the reasons of Reason, one series each: every reason, from 0.
template <typename Reason, std::size_t N, std::array<std::uint64_t, N> ServerStats::*Counts>
inline void write_by_reason(Writer &out, const char *name, const SelfView &view) {
  for (std::size_t i = 0; i < N; ++i)
    out.sample(name, {{"reason", to_string(static_cast<Reason>(i))}}, static_cast<double>((view.server->*Counts)[i]));
}

// Remote write's figures, one series per target, as Prometheus' remote_storage ones.
template <typename Field, Field RemoteWriteStats::*Member>
inline void write_remote_write(Writer &out, const char *name, const SelfView &view) {
  for (const RemoteWriteStats &target : view.server->remote_write)
    out.sample(name, {{"url", target.url}}, static_cast<double>(target.*Member));
}

inline void write_remote_write_failures(Writer &out, const char *name, const SelfView &view) {
  for (const RemoteWriteStats &target : view.server->remote_write)
    for (std::size_t i = 0; i < remote_write_failure_count; ++i)
      out.sample(name, {{"reason", to_string(static_cast<RemoteWriteFailure>(i))}, {"url", target.url}},
                 static_cast<double>(target.failures[i]));
}

inline void write_remote_write_requests(Writer &out, const char *name, const SelfView &view) {
  for (const RemoteWriteStats &target : view.server->remote_write)
    for (const auto &[code, count] : target.requests) {
      const std::string code_text = std::to_string(code);
      out.sample(name, {{"code", code_text}, {"url", target.url}}, static_cast<double>(count));
    }
}

template <std::uint64_t RemoteWriteStats::*Member> constexpr auto remote_count = write_remote_write<std::uint64_t, Member>;
template <double RemoteWriteStats::*Member> constexpr auto remote_figure = write_remote_write<double, Member>;

// Hermes' own families, sorted by name as the body is.
constexpr MetricType self_counter = MetricType::counter, self_gauge = MetricType::gauge;
using Scope = SelfMetric::Scope;
inline const SelfMetric self_metrics[] = {
    {"hermes_build_info", "Hermes version and the configured service, always 1.", self_gauge, Scope::registry, nullptr,
     write_build_info},
    {"hermes_config_last_reload_success_timestamp_seconds", "When the config in force was loaded, in seconds since the epoch.",
     self_gauge, Scope::server, [](const SelfView &v) -> Figure { return v.server->last_reload_success_seconds; }, nullptr},
    {"hermes_config_reloads_total", "Config reloads, by result.", self_counter, Scope::server, nullptr, write_reloads},
    {"hermes_http_metrics_bytes_total", "Bytes of /metrics bodies sent, by Content-Encoding.", self_counter, Scope::server,
     nullptr, write_metrics_bytes},
    {"hermes_http_metrics_gzip_uncompressed_bytes_total", "Bytes the gzip /metrics bodies sent hold uncompressed.",
     self_counter, Scope::gzip, [](const SelfView &v) { return count(v.server->metrics_gzip_uncompressed_bytes); }, nullptr},
    {"hermes_http_requests_total", "HTTP requests answered, by status code.", self_counter, Scope::server, nullptr,
     write_http_requests},
    {"hermes_memory_budget_bytes", "The memory budget: bytes Hermes may hold for what input can grow.", self_gauge,
     Scope::server, [](const SelfView &v) -> Figure { return v.server->memory_budget_bytes; }, nullptr},
    {"hermes_memory_committed_bytes",
     "Bytes of the memory budget in use or kept for the /metrics bodies of the series that exist; a new series that "
     "would take it past the budget is refused.",
     self_gauge, Scope::server, [](const SelfView &v) -> Figure { return v.server->memory_committed_bytes; }, nullptr},
    {"hermes_memory_used_bytes", "Bytes of the memory budget in use.", self_gauge, Scope::server,
     [](const SelfView &v) -> Figure { return v.server->memory_used_bytes; }, nullptr},
    {"hermes_metric_max_series", "The max_series of each configured metric: a push for one series more is series_limit.",
     self_gauge, Scope::registry, nullptr, write_per_metric<&Registry::MetricFill::max_series>},
    {"hermes_metric_series", "Live series of each configured metric.", self_gauge, Scope::registry, nullptr,
     write_per_metric<&Registry::MetricFill::series>},
    {"hermes_push_group_bytes", "Bytes of the memory budget that the groups pushed over the Pushgateway API hold.",
     self_gauge, Scope::push, [](const SelfView &v) -> Figure { return v.server->push_group_bytes; }, nullptr},
    {"hermes_push_groups", "Groups pushed over the Pushgateway API.", self_gauge, Scope::push,
     [](const SelfView &v) -> Figure { return v.server->push_groups; }, nullptr},
    {"hermes_push_requests_total", "Requests of the Pushgateway API answered, by method and status code.", self_counter,
     Scope::push, nullptr, write_push_requests},
    {"hermes_remote_storage_connections_total",
     "Connections opened to a remote-write receiver (with a TLS handshake over https); one serves requests while the receiver keeps it.",
     self_counter, Scope::remote_write, nullptr, remote_count<&RemoteWriteStats::connections>},
    {"hermes_remote_storage_last_send_timestamp_seconds",
     "When a remote-write request last succeeded, in seconds since the epoch; 0 before the first.", self_gauge,
     Scope::remote_write, nullptr, remote_figure<&RemoteWriteStats::last_send_seconds>},
    {"hermes_remote_storage_pending_bytes", "Bytes of the memory budget held by remote-write snapshots waiting to be sent.",
     self_gauge, Scope::remote_write, nullptr, remote_figure<&RemoteWriteStats::pending_bytes>},
    {"hermes_remote_storage_pending_snapshots", "Remote-write snapshots waiting to be sent, the one being sent included.",
     self_gauge, Scope::remote_write, nullptr, remote_figure<&RemoteWriteStats::pending_snapshots>},
    {"hermes_remote_storage_queue_highest_sent_timestamp_seconds",
     "Timestamp of the newest snapshot a receiver accepted, in seconds since the epoch.", self_gauge, Scope::remote_write,
     nullptr, remote_figure<&RemoteWriteStats::highest_sent_timestamp_seconds>},
    {"hermes_remote_storage_requests_total", "Remote-write requests, by status code; 0: no answer (connection error, timeout).",
     self_counter, Scope::remote_write, nullptr, write_remote_write_requests},
    {"hermes_remote_storage_samples_dropped_total",
     "Samples given up unsent: snapshots dropped for memory, or left at stop.", self_counter, Scope::remote_write, nullptr,
     remote_count<&RemoteWriteStats::samples_dropped>},
    {"hermes_remote_storage_samples_failed_total", "Samples a receiver refused for good (a 4xx other than 429), not retried.",
     self_counter, Scope::remote_write, nullptr, remote_count<&RemoteWriteStats::samples_failed>},
    {"hermes_remote_storage_samples_in_total", "Samples in the remote-write snapshots taken, stale markers included.",
     self_counter, Scope::remote_write, nullptr, remote_count<&RemoteWriteStats::samples_in>},
    {"hermes_remote_storage_samples_retried_total", "Samples sent again after a failure that may pass (5xx, 429, no answer).",
     self_counter, Scope::remote_write, nullptr, remote_count<&RemoteWriteStats::samples_retried>},
    {"hermes_remote_storage_samples_total", "Samples a remote-write receiver accepted.", self_counter, Scope::remote_write,
     nullptr, remote_count<&RemoteWriteStats::samples_sent>},
    {"hermes_remote_storage_snapshots_failed_total", "Remote-write snapshots the memory budget had no room for.",
     self_counter, Scope::remote_write, nullptr, remote_count<&RemoteWriteStats::snapshots_failed>},
    {"hermes_remote_storage_unanswered_requests_total",
     "Remote-write requests without an HTTP answer (code 0), by reason: resolve, connect, tls_handshake (nothing sent), "
     "connection, timeout, given_up.",
     self_counter, Scope::remote_write, nullptr, write_remote_write_failures},
    {"hermes_samples_accepted_total", "Samples applied to the registry.", self_counter, Scope::registry,
     [](const SelfView &v) { return count(v.registry.accepted()); }, nullptr},
    {"hermes_samples_received_total", "Samples received, applied or not, by wire format.", self_counter, Scope::registry,
     nullptr, write_received},
    {"hermes_samples_rejected_total",
     "Samples dropped, by reason; for malformed_json, too_large and forbidden_source, whole datagrams.", self_counter, Scope::registry,
     nullptr, write_rejects},
    {"hermes_series", "Live series of the configured metrics.", self_gauge, Scope::registry,
     [](const SelfView &v) { return count(v.registry.series_count()); }, nullptr},
    {"hermes_series_expired_total", "Series dropped after ttl_seconds without a push.", self_counter, Scope::registry,
     [](const SelfView &v) { return count(v.registry.expired()); }, nullptr},
    {"hermes_state_last_write_timestamp_seconds",
     "When the state file was last written, in seconds since the epoch; 0 before the first write.", self_gauge,
     Scope::state, [](const SelfView &v) -> Figure { return v.server->state_last_write_seconds; }, nullptr},
    {"hermes_state_restored_series", "Series restored from the state file at start.", self_gauge, Scope::state,
     [](const SelfView &v) { return count(v.server->state_restored_series); }, nullptr},
    {"hermes_state_writes_total", "Writes of the state file, by result.", self_counter, Scope::state, nullptr,
     write_state_writes},
    {"hermes_statsd_tcp_connections", "Open StatsD TCP connections.", self_gauge, Scope::statsd_tcp,
     [](const SelfView &v) { return count(v.server->statsd_tcp_connections); }, nullptr},
    {"hermes_statsd_tcp_connections_accepted_total", "StatsD TCP connections accepted.", self_counter, Scope::statsd_tcp,
     [](const SelfView &v) { return count(v.server->statsd_tcp_accepted); }, nullptr},
    {"hermes_statsd_tcp_connections_closed_total", "StatsD TCP connections closed after they were accepted, by reason.",
     self_counter, Scope::statsd_tcp, nullptr, write_by_reason<TcpClose, tcp_close_count, &ServerStats::statsd_tcp_closed>},
    {"hermes_statsd_tcp_connections_refused_total", "StatsD TCP connections closed as soon as they came, by reason.",
     self_counter, Scope::statsd_tcp, nullptr, write_by_reason<TcpRefusal, tcp_refusal_count, &ServerStats::statsd_tcp_refused>},
    {"hermes_tls_certificate_expiry_timestamp_seconds",
     "When the certificate the HTTP port serves expires, in seconds since the epoch.", self_gauge, Scope::tls,
     [](const SelfView &v) -> Figure { return v.server->tls_certificate_expiry_seconds; }, nullptr},
    {"hermes_tls_handshakes_total", "TLS handshakes on the HTTP port, by result.", self_counter, Scope::tls, nullptr,
     write_tls_handshakes},
    {"hermes_udp_packets_total", "UDP datagrams received.", self_counter, Scope::server,
     [](const SelfView &v) { return count(v.server->udp_packets); }, nullptr},
    {"hermes_udp_receive_buffer_bytes", "The UDP socket's receive buffer, as the kernel granted it.", self_gauge, Scope::server,
     [](const SelfView &v) -> Figure { return v.server->udp_receive_buffer_bytes; }, nullptr},
    {"hermes_udp_receive_drops_total", "UDP datagrams the kernel dropped because the receive buffer was full.", self_counter,
     Scope::server, [](const SelfView &v) { return count(v.server->udp_receive_drops); }, nullptr},
    {"hermes_unix_datagrams_total", "Datagrams received on the unix socket.", self_counter, Scope::server,
     [](const SelfView &v) { return count(v.server->unix_datagrams); }, nullptr},
    {"process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", self_counter, Scope::process,
     [](const SelfView &v) { return v.process->cpu_seconds; }, nullptr},
    {"process_max_fds", "Maximum number of open file descriptors.", self_gauge, Scope::process,
     [](const SelfView &v) { return v.process->max_fds; }, nullptr},
    {"process_open_fds", "Number of open file descriptors.", self_gauge, Scope::process,
     [](const SelfView &v) { return v.process->open_fds; }, nullptr},
    {"process_resident_memory_bytes", "Resident memory size in bytes.", self_gauge, Scope::process,
     [](const SelfView &v) { return v.process->resident_memory_bytes; }, nullptr},
    {"process_start_time_seconds", "Start time of the process since unix epoch in seconds.", self_gauge, Scope::process,
     [](const SelfView &v) { return v.process->start_time_seconds; }, nullptr},
    {"process_virtual_memory_bytes", "Virtual memory size in bytes.", self_gauge, Scope::process,
     [](const SelfView &v) { return v.process->virtual_memory_bytes; }, nullptr},
};

inline bool has_scope(const SelfView &view, SelfMetric::Scope scope) {
  switch (scope) {
  case Scope::registry: return true;
  case Scope::server: return view.server != nullptr;
  case Scope::process: return view.process != nullptr;
  case Scope::statsd_tcp: return view.server != nullptr && view.server->statsd_tcp;
  case Scope::remote_write: return view.server != nullptr && !view.server->remote_write.empty();
  case Scope::tls: return view.server != nullptr && view.server->tls;
  case Scope::push: return view.server != nullptr && has_push;
  case Scope::state: return view.server != nullptr && has_state;
  case Scope::gzip: return view.server != nullptr && has_gzip;
  }
  return false;
}

// Writes one of Hermes' own families, or nothing when the view has no figure for it.
inline void write_self_metric(Writer &out, const SelfMetric &metric, const SelfView &view) {
  if (!has_scope(view, metric.scope)) return;
  if (metric.write) {
    out.family(metric.name, metric.help, metric.type);
    metric.write(out, metric.name, view);
  } else if (const Figure figure = metric.value(view)) {
    out.family(metric.name, metric.help, metric.type);
    out.sample(metric.name, {}, *figure);
  }
}

// ---- Pushed groups -------------------------------------------------------------------------

// Pushed families are written as Pushgateway writes them with client_golang: a HELP line
// only when one was pushed, the samples of every group that holds the family together,
// sorted as client_golang sorts them (fewer labels first, then by label values in the
// order of the label names), and a histogram's +Inf bucket added when it was not pushed.

// A label value as the text formats write it, into room enough (escaped_size).
inline char *put_escaped(char *at, std::string_view text) {
  for (const char c : text) {
    const bool escaped = c == '\\' || c == '\n' || c == '"';
    if (escaped) *at++ = '\\';
    *at++ = escaped && c == '\n' ? 'n' : c;
  }
  return at;
}

// One line, its length counted first and written in place: a scrape writes a line a
// pushed sample, where appending piece by piece took most of its time.
inline void append_pushed_line(std::string &out, std::string_view name, std::string_view suffix, const PushLabelViews &labels,
                               double value, std::string_view extra_name = {}, double extra = 0) {
  char number[number_room], extra_number[number_room]; // -0 as 0: client_golang's text writer spells every zero 0
  const std::size_t number_size = static_cast<std::size_t>(put_double(number, value == 0 ? 0.0 : value) - number);
  const std::size_t extra_size =
      extra_name.empty() ? 0 : static_cast<std::size_t>(put_double(extra_number, extra == 0 ? 0.0 : extra) - extra_number);
  const bool braces = !labels.empty() || !extra_name.empty();
  std::size_t size = name.size() + suffix.size() + (braces ? 2 : 0) + 1 + number_size + 1;
  for (const auto &[label, text] : labels) size += label.size() + escaped_size(text) + sizeof ",=\"\"" - 1;
  if (!extra_name.empty()) size += extra_name.size() + extra_size + sizeof ",=\"\"" - 1;
  if (braces) --size; // one comma fewer than pairs
  const std::size_t start = out.size();
  out.resize(start + size);
  char *at = &out[start];
  const auto put = [&](std::string_view text) { at = std::copy(text.begin(), text.end(), at); };
  put(name), put(suffix);
  char separator = '{';
  for (const auto &[label, text] : labels) {
    *at++ = separator, put(label), put("=\""), at = put_escaped(at, text), *at++ = '"';
    separator = ',';
  }
  if (!extra_name.empty()) *at++ = separator, put(extra_name), put("=\""), put({extra_number, extra_size}), *at++ = '"';
  if (braces) *at++ = '}';
  *at++ = ' ';
  put({number, number_size});
  *at = '\n';
}

inline void append_pushed_text(std::string &out, std::string_view name, PushType type, const PushedMetric &metric,
                               const PushLabelViews &labels) {
  if (type == PushType::summary) {
    for (const auto &[quantile, value] : metric.points) append_pushed_line(out, name, "", labels, value, "quantile", quantile);
  } else if (type == PushType::histogram) {
    bool infinity = false;
    for (const auto &[bound, count] : metric.points) {
      append_pushed_line(out, name, "_bucket", labels, count, "le", bound);
      infinity = infinity || (std::isinf(bound) && bound > 0);
    }
    if (!infinity) append_pushed_line(out, name, "_bucket", labels, metric.count, "le", HUGE_VAL);
  } else {
    return append_pushed_line(out, name, "", labels, metric.value);
  }
  append_pushed_line(out, name, "_sum", labels, metric.sum);
  append_pushed_line(out, name, "_count", labels, metric.count);
}

// A pushed metric's samples through a writer, as append_pushed_text writes them: the
// series a scrape of the text makes.
inline void write_pushed_samples(Writer &out, const std::string &name, PushType type, const PushedMetric &metric,
                                 const PushLabels &labels) {
  std::string suffixed, bound;
  const auto with = [&](const char *suffix) -> const std::string & { return suffixed = name + suffix; };
  const auto number = [&](double value) -> const std::string & { return bound.clear(), append_double(bound, value == 0 ? 0.0 : value), bound; };
  if (type == PushType::summary) {
    for (const auto &[quantile, value] : metric.points) out.pushed_sample(name, labels, {{"quantile", number(quantile)}}, value);
  } else if (type == PushType::histogram) {
    bool infinity = false;
    for (const auto &[le, count] : metric.points) {
      out.pushed_sample(with("_bucket"), labels, {{"le", number(le)}}, count);
      infinity = infinity || (std::isinf(le) && le > 0);
    }
    if (!infinity) out.pushed_sample(with("_bucket"), labels, {{"le", number(HUGE_VAL)}}, metric.count);
  } else {
    return out.pushed_sample(name, labels, {}, metric.value);
  }
  out.pushed_sample(with("_sum"), labels, {}, metric.sum);
  out.pushed_sample(with("_count"), labels, {}, metric.count);
}

// HELP and TYPE. In OpenMetrics a counter named *_total is the family without the
// suffix, other counters and untyped families are unknown, as for the configured metrics.
inline void append_pushed_head(std::string &out, Format format, std::string_view name, PushType type,
                               const std::optional<std::string> &help) {
  const bool openmetrics = format == Format::openmetrics;
  const bool total = type == PushType::counter && ends_with(name, "_total");
  const std::string_view family = openmetrics && total ? name.substr(0, name.size() - 6) : name;
  const char *type_name = to_string(type);
  if (openmetrics && (type == PushType::untyped || (type == PushType::counter && !total))) type_name = "unknown";
  if (help) {
    out.append("# HELP ").append(family).append(" ");
    append_escaped(out, *help, openmetrics);
    out += '\n';
  }
  out.append("# TYPE ").append(family).append(" ").append(type_name).append("\n");
}

// A Metric {label = 1, gauge = 2, counter = 3, summary = 4, untyped = 5, histogram = 7}.
inline void append_pushed_protobuf(std::string &out, PushType type, const PushedMetric &metric, const PushLabelViews &labels,
                                   std::string &inner) {
  for (const auto &[label, text] : labels) append_label_pair(out, 1, label, text);
  inner.clear();
  if (type == PushType::summary || type == PushType::histogram) {
    append_uint_field(inner, 1, static_cast<std::uint64_t>(metric.count));
    append_double_field(inner, 2, metric.sum);
    for (const auto &[point, value] : metric.points) {
      std::string pair; // Quantile {quantile = 1, value = 2} or Bucket {cumulative_count = 1, upper_bound = 2}
      if (type == PushType::summary) {
        append_double_field(pair, 1, point), append_double_field(pair, 2, value);
      } else {
        append_uint_field(pair, 1, static_cast<std::uint64_t>(value)), append_double_field(pair, 2, point);
      }
      append_bytes_field(inner, 3, pair);
    }
    inner += metric.native; // fields 5 to 14, after the buckets, as client_golang orders them
  } else {
    append_double_field(inner, 1, metric.value);
  }
  static constexpr std::uint32_t fields[] = {3, 2, 4, 5, 7, 8}; // by PushType
  append_bytes_field(out, fields[static_cast<std::size_t>(type)], inner);
}

// Calls `visit(metric, labels)` for each sample of the parts (a family as groups hold
// it) in the order /metrics shows them. Each part holds its samples in that order: where
// the parts, ordered by their first sample, follow one another without overlapping (as
// groups that differ in a grouping label's value do), they are read one after another;
// otherwise every sample is sorted.
template <typename Visit> void visit_pushed_samples(const std::vector<HeldFamily> &held, Visit visit) {
  struct Shown {
    const PushedFamily *family;
    GroupLabels grouping;
    PushLabelViews first; // the labels of its first sample
  };
  std::vector<Shown> parts;
  parts.reserve(held.size());
  for (const HeldFamily &part : held) {
    if (part.family->metrics.empty()) continue;
    parts.push_back({part.family, GroupLabels(part.group->key), {}});
    parts.back().grouping.shown(part.family->metrics.front().labels, parts.back().first);
  }
  std::sort(parts.begin(), parts.end(), [](const Shown &x, const Shown &y) { return pushed_labels_less(x.first, y.first); });
  PushLabelViews labels;
  bool apart = true;
  for (std::size_t i = 0; apart && i + 1 < parts.size(); ++i) {
    parts[i].grouping.shown(parts[i].family->metrics.back().labels, labels);
    apart = pushed_labels_less(labels, parts[i + 1].first);
  }
  if (apart) {
    for (const Shown &part : parts) {
      const std::vector<PushedMetric> &metrics = part.family->metrics;
      for (std::size_t i = 0; i < metrics.size(); ++i) {
        // Each sample's labels are an allocation of their own: ask for the next ones early.
        if (i + 4 < metrics.size()) __builtin_prefetch(metrics[i + 4].labels.data());
        part.grouping.shown(metrics[i].labels, labels);
        visit(metrics[i], labels);
      }
    }
    return;
  }
  std::vector<std::pair<PushLabelViews, const PushedMetric *>> samples;
  for (const Shown &part : parts)
    for (const PushedMetric &metric : part.family->metrics) {
      samples.emplace_back(PushLabelViews(), &metric);
      part.grouping.shown(metric.labels, samples.back().first);
    }
  std::sort(samples.begin(), samples.end(), [](const auto &x, const auto &y) { return pushed_labels_less(x.first, y.first); });
  for (const auto &[sample_labels, metric] : samples) visit(*metric, sample_labels);
}

// One family with the samples of the parts, in the order /metrics shows them, in a
// format; `scratch` holds a protobuf family while it is made. Returns how many samples.
inline std::size_t write_pushed_family(std::string &out, Format format, std::string_view name, PushType type,
                                       const std::optional<std::string> &help, const std::vector<HeldFamily> &parts,
                                       std::string &scratch) {
  std::size_t samples = 0;
  if (!has_protobuf || format != Format::protobuf) {
    append_pushed_head(out, format, name, type, help);
    visit_pushed_samples(parts, [&](const PushedMetric &metric, const PushLabelViews &labels) {
      append_pushed_text(out, name, type, metric, labels), ++samples;
    });
    return samples;
  }
  scratch.clear();
  append_bytes_field(scratch, 1, name);
  if (help) append_bytes_field(scratch, 2, *help);
  append_uint_field(scratch, 3, static_cast<std::uint64_t>(type));
  std::string metric_message, inner;
  visit_pushed_samples(parts, [&](const PushedMetric &metric, const PushLabelViews &labels) {
    metric_message.clear();
    append_pushed_protobuf(metric_message, type, metric, labels, inner);
    append_bytes_field(scratch, 4, metric_message), ++samples;
  });
  append_varint(out, scratch.size());
  out += scratch;
  return samples;
}

// A family of the pushed groups, its samples from every group that holds it.
inline std::size_t write_pushed_family(std::string &out, Format format, const std::string &name, const PushFamilyIndex &index,
                                       std::string &scratch) {
  return write_pushed_family(out, format, name, index.type, index.help, index.groups, scratch);
}

// Each family of a group written alone, in the format that writes the most of it: what
// the group may add to a body, where a family's head is written once for all groups.
inline std::size_t pushed_body_bytes(const PushGroup &group) {
  std::string out, scratch;
  std::size_t bytes = 0;
  for (const auto &[name, family] : group.families) {
    std::size_t most = 0;
    for (const Format format : {Format::text, Format::openmetrics, Format::protobuf}) {
      out.clear();
      write_pushed_family(out, format, name, *family.type, family.help, {{&group, &family}}, scratch);
      most = std::max(most, out.size());
    }
    bytes += most + (is_push_time(name) ? longest_number : 0); // a later push may write a longer time
  }
  return bytes;
}

// ---- The body, a few series at a time ------------------------------------------------------

// Writes the /metrics body in steps of a bounded number of series, so that the caller
// can do other work between steps (a server takes waiting datagrams off its sockets).
// The registry must not change until the body is whole.
class Renderer {
public:
  Renderer(std::string &out, const Registry &registry, SelfView self, Format format)
      : metrics_(registry.metrics_), self_(self), text_(out, format), protobuf_(protobuf_writer(out, format)),
        writer_(protobuf_ ? static_cast<Writer &>(*protobuf_) : text_), out_(out), format_(format) {
    out.clear(); // its memory is the caller's: a server takes it from the budget first
    if (self.pushed) pushed_ = self.pushed->families().begin(), pushed_end_ = self.pushed->families().end();
  }
  // Every series through a writer of the caller's (a remote-write snapshot).
  Renderer(Writer &writer, const Registry &registry, SelfView self)
      : metrics_(registry.metrics_), self_(self), text_(unused_, Format::text), writer_(writer),
        out_(unused_), format_(Format::text) {
    if (self.pushed) pushed_ = self.pushed->families().begin(), pushed_end_ = self.pushed->families().end();
  }

  // The most a body of `registry` can take, its NUL included: the budget's count of it,
  // kept as series come and go.
  static std::size_t bound(const Registry &registry) { return registry.budget_->body_bound(); }

  // Writes up to `max_series` more series of configured metrics, and Hermes' own
  // families that fall between them; true once the body is whole.
  bool write_some(std::size_t max_series) {
    for (std::size_t written = 0; written < max_series;) {
      if (current_ && !walk_->done()) {
        const SeriesTable::Entry &entry = walk_->next();
        writer_.series(current_->config, entry.first, entry.second);
        ++written;
      } else if (pushed_comes_next() && &out_ == &unused_) { // a snapshot: through the caller's writer
        for (const HeldFamily &part : pushed_->second.groups)
          for (const PushedMetric &metric : part.family->metrics)
            write_pushed_samples(writer_, pushed_->first, pushed_->second.type, metric, shown_labels(part.group->key, metric.labels)),
                ++written;
        ++pushed_;
      } else if (pushed_comes_next()) {
        if (protobuf_) protobuf_->finish(); // closes the family before, if open
        written += write_pushed_family(out_, format_, pushed_->first, pushed_->second, scratch_) + 1;
        ++pushed_;
      } else if (next_self_ < std::size(self_metrics) && (next_metric_ == metrics_.size() || self_comes_next())) {
        write_self_metric(writer_, self_metrics[next_self_++], self_);
      } else if (next_metric_ < metrics_.size()) {
        current_ = &metrics_[next_metric_++];
        writer_.family(current_->config.name, current_->config.help, current_->config.type);
        walk_.emplace(current_->series, pending_);
      } else {
        if (!done_) writer_.finish();
        return done_ = true;
      }
    }
    return false;
  }

  // What a body of `registry` holds besides its series, at most (fixed_body_bound).
  static std::size_t fixed_bound(const Registry &registry);

private:
  // The writer of a protobuf body. A build without the format (HERMES_NO_PROTOBUF) names
  // the text writer here and never makes one: a protobuf writer merely declared would
  // keep all its code, through its destructor's vtable.
  using ProtobufWriter = std::conditional_t<has_protobuf, ProtobufExposition, Exposition>;
  template <typename Protobuf = ProtobufWriter> static std::optional<Protobuf> protobuf_writer(std::string &out, Format format) {
    if constexpr (has_protobuf) {
      if (format == Format::protobuf) return std::optional<Protobuf>(std::in_place, out);
    }
    return std::nullopt;
  }
  bool self_comes_next() const { return std::string_view(self_metrics[next_self_].name) < metrics_[next_metric_].config.name; }
  // Whether a family of the pushed groups comes before the next of the others: names
  // never clash (PushStore keeps Hermes' names out).
  bool pushed_comes_next() const {
    if (!self_.pushed || pushed_ == pushed_end_) return false;
    const std::string &name = pushed_->first;
    return (next_self_ == std::size(self_metrics) || name < self_metrics[next_self_].name) &&
           (next_metric_ == metrics_.size() || name < metrics_[next_metric_].config.name);
  }

  const std::vector<Metric> &metrics_;
  SelfView self_;
  std::string unused_; // the text writers' target when the caller's writer is used
  Exposition text_;
  std::optional<ProtobufWriter> protobuf_;
  Writer &writer_; // one of the two
  std::size_t next_metric_ = 0, next_self_ = 0;
  const Metric *current_ = nullptr;
  std::optional<SeriesTable::InOrder> walk_; // current_'s series
  std::vector<std::uint32_t> pending_;       // its series made since the registry last sorted them
  std::string &out_;
  Format format_;
  std::map<std::string, PushFamilyIndex, std::less<>>::const_iterator pushed_{}, pushed_end_{};
  std::string scratch_; // a pushed family in protobuf while it is made
  bool done_ = false;
};

// Adds up the bounds of what it is given instead of writing it: Hermes' own families
// with each number as long as a number can be.
class BoundWriter final : public Writer {
public:
  void family(std::string_view name, std::string_view help, MetricType) override { bytes += family_bound(name, help); }
  void series(const MetricConfig &config, const LabelValues &labels, const Series &) override {
    bytes += series_cost(config, labels).body;
  }
  void sample(std::string_view name, LabelPairs labels, double) override {
    std::size_t text = name.size() + 2 + 1 + longest_number + 1, protobuf = message_head + message_head + double_field;
    for (const auto &[label, value] : labels) {
      text += label.size() + sizeof "=\"\"," - 1 + escaped_size(value);
      const std::size_t pair = label_pair_size(label, value);
      protobuf += 1 + varint_size(pair) + pair;
    }
    bytes += std::max(text, protobuf);
  }
  void finish() override { bytes += body_end_bytes + 1; } // and the string's terminating NUL
  std::size_t bytes = 0;
};

// Every family a server shows, with every figure present: the bound cannot depend on
// which figures /proc gives at the moment.
inline std::size_t Renderer::fixed_bound(const Registry &registry) {
  BoundWriter out;
  ServerStats server;
  server.statsd_tcp = true; // its families too: the bound cannot depend on the options
  server.tls = true;
  const ProcessStats process{0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  const SelfView view{registry, &server, &process};
  for (const SelfMetric &metric : self_metrics) write_self_metric(out, metric, view);
  for (const Metric &metric : registry.metrics_) out.family(metric.config.name, metric.config.help, metric.config.type);
  out.finish();
  return out.bytes;
}

inline std::size_t fixed_body_bound(const Registry &registry) { return Renderer::fixed_bound(registry); }

} // namespace detail

inline std::string render_metrics(const Registry &registry, Format format) {
  std::string out;
  render_metrics(out, registry, format);
  return out;
}

inline void render_metrics(std::string &out, const Registry &registry, Format format) {
  if (const std::size_t bound = detail::Renderer::bound(registry); out.capacity() + 1 < bound) {
    std::string room; // exactly the bound, with the NUL, where reserving over the old memory would double it
    room.reserve(bound - 1);
    out.swap(room);
  }
  detail::Renderer renderer(out, registry, {registry, nullptr, nullptr}, format);
  while (!renderer.write_some(SIZE_MAX)) {
  }
}

} // namespace hermes

#ifndef HERMES_NO_REMOTE_WRITE

// ===== DETAIL: REMOTE WRITE SNAPSHOT ======================================================
//
// Every interval, one snapshot of every series a scrape would show, as the timeseries
// fields of a WriteRequest (prompb: WriteRequest {timeseries = 1}, TimeSeries {labels = 1,
// samples = 2, histograms = 4}, Label {name = 1, value = 2}, Sample {value = 1, timestamp = 2}),
// one sample each, all at the snapshot's time. A batch of N samples is then N fields in a
// row: the bytes of a WriteRequest as they are. Made on the loop, as a scrape's body is,
// its memory taken from the budget as it grows.

namespace hermes {
namespace detail {

// The value Prometheus writes to end a series: a NaN that no arithmetic makes.
constexpr std::uint64_t stale_nan_bits = 0x7ff0000000000002ull;

inline double stale_nan() {
  double value;
  std::memcpy(&value, &stale_nan_bits, sizeof value);
  return value;
}

inline std::int64_t milliseconds_of(double seconds) { return static_cast<std::int64_t>(std::llround(seconds * 1000)); }

// Where one series' label set, encoded, lies in the key text: what tells a series gone
// since the last snapshot.
struct SeriesKey {
  std::uint32_t offset, size;
};

// A snapshot on its way: its bytes and where each batch ends.
struct PendingSnapshot {
  std::string series;                   // TimeSeries fields, one sample each
  std::vector<std::size_t> batch_ends;  // offsets in `series`
  std::vector<std::size_t> batch_samples;
  std::int64_t timestamp_ms = 0;
  std::size_t samples = 0;
  std::size_t taken = 0;      // of the memory budget, for all of the above and its sending
  std::size_t next_batch = 0; // the sender's
};

// Asks for `bytes` more of the budget; false when there is no room even after dropping
// older snapshots.
using MakeRoom = std::function<bool(std::size_t bytes)>;

class SnapshotWriter final : public Writer {
public:
  struct Context {
    const std::string *job, *instance;
    const std::vector<std::pair<std::string, std::string>> *external_labels;
    std::size_t max_samples_per_send;
    std::size_t expected_bytes = 0, expected_series = 0; // the last snapshot's: room taken at once
    // The last snapshot's keys, kept by the caller: this one's are compared with them as
    // they come, and copied only from where they differ (most snapshots, never).
    const std::string *previous_text = nullptr;
    const std::vector<SeriesKey> *previous_keys = nullptr;
  };
  SnapshotWriter(Context context, std::int64_t timestamp_ms, MakeRoom make_room)
      : context_(context), make_room_(std::move(make_room)), comparing_(context.previous_keys != nullptr) {
    snapshot_.timestamp_ms = timestamp_ms;
    append_double_field(sample_, 1, 0);
    append_uint_field(sample_, 2, static_cast<std::uint64_t>(timestamp_ms));
    // As large as the last one, so that a snapshot is not copied as it grows.
    if (context.expected_bytes > 0 && fit(snapshot_.series, context.expected_bytes + context.expected_bytes / 16) && !comparing_) {
      const std::size_t keys = context.expected_series + context.expected_series / 16;
      if (make_room_(keys * sizeof(SeriesKey))) snapshot_.taken += keys * sizeof(SeriesKey), keys_.reserve(keys);
      else failed_ = true;
    }
  }

  void family(std::string_view, std::string_view, MetricType) override {}
  void series(const MetricConfig &config, const LabelValues &labels, const Series &series) override;
  void sample(std::string_view name, LabelPairs labels, double value) override {
    pairs_.clear();
    for (const auto &pair : labels) pairs_.push_back({pair.first, pair.second});
    encode_labels(name);
    add_float(value);
  }
  void pushed_sample(std::string_view name, const PushLabels &labels, LabelPairs extra, double value) override {
    pairs_.clear();
    for (const auto &pair : labels) pairs_.push_back({pair.first, pair.second});
    for (const auto &pair : extra) pairs_.push_back({pair.first, pair.second});
    pushed_ = true;
    encode_labels(name);
    pushed_ = false;
    add_float(value);
  }
  void finish() override {}

  // Adds a stale marker for each series of `previous_keys` that this snapshot lacks;
  // false when the memory for them was not to be had.
  bool add_stale_markers(const std::string &previous_text, const std::vector<SeriesKey> &previous);
  bool failed() const { return failed_; }
  // After add_stale_markers: the keys are the previous_keys of the context, not key_text() and keys().
  bool same_keys() const { return same_keys_; }
  PendingSnapshot &snapshot() { return snapshot_; }
  std::string &key_text() { return key_text_; }
  std::vector<SeriesKey> &keys() { return keys_; }

private:
  static constexpr std::uint32_t constant = UINT32_MAX;
  // One label: its name and value, and in a family's layout which of the series' own
  // values it stands for (constant: none, its value is known).
  struct Label {
    std::string_view name, value;
    std::uint32_t source = constant;
  };
  // The samples series() writes for one series: each has its own name and extra label.
  enum class Part : std::uint8_t { value, bucket, quantile, sum, count };
  // The labels of a family's series in the order they are sent, worked out once per
  // family, part and snapshot: sorting each series' labels again was a third of a
  // snapshot's time. Runs of constant pairs, encoded, each followed by one of the
  // series' own labels (none after the last run).
  struct LabelLayout {
    const MetricConfig *config = nullptr;
    Part part = Part::value;
    std::string name; // the samples' __name__
    struct Step {
      std::string constant_pairs;
      std::string_view name;
      std::uint32_t source = constant;
    };
    std::vector<Step> steps;
    bool each_sorted = false; // a name twice after renaming: each series sorted on its own
  };
  void add_float(double value);
  void add_native(const MetricConfig &config, const Distribution &seen);
  void add_part(const MetricConfig &config, Part part, std::string_view extra, double value);
  const LabelLayout &layout(const MetricConfig &config, Part part);
  void with_series_labels(const MetricConfig &config, Part part, std::string_view extra);
  void order_labels(std::string_view name);
  void encode_labels(std::string_view name);
  char *open_series(std::size_t labels_size, std::size_t message_size);
  void count_sample();
  void append_series(std::string_view labels_bytes, std::uint32_t field, std::string_view message);
  bool fit(std::string &text, std::size_t more);
  void add_key(std::string_view labels);
  bool copy_matched_keys();
  void close_batch();

  Context context_;
  MakeRoom make_room_;
  PendingSnapshot snapshot_;
  std::string key_text_;
  std::vector<SeriesKey> keys_;
  std::vector<Label> pairs_;                 // one series' labels, before sorting
  std::vector<std::string_view> values_;     // the series' own label values, in configured order
  std::vector<LabelLayout> layouts_;         // of the families seen last, a few at most
  std::size_t last_layout_ = 0;
  std::string sample_; // a Sample at the snapshot's time, its value written for each series
  std::string labels_, message_, deltas_, le_; // scratch, reused
  std::size_t in_batch_ = 0;
  bool comparing_ = false;   // every key so far as the previous snapshot's
  std::size_t matched_ = 0;  // how many of its keys came again, in its order
  bool same_keys_ = false;
  bool failed_ = false;
  bool pushed_ = false; // the sample being added is a pushed group's
};

// A label set's hash, eight bytes at a time: it only tells candidates apart, the bytes
// decide. Worked out only for the series that changed since the last snapshot.
inline std::uint64_t label_set_hash(std::string_view bytes) {
  std::uint64_t hash = bytes.size() * 0x9e3779b97f4a7c15ull;
  std::size_t at = 0;
  for (; at + 8 <= bytes.size(); at += 8) {
    std::uint64_t word;
    std::memcpy(&word, bytes.data() + at, sizeof word);
    hash = (hash ^ word) * 0xff51afd7ed558ccdull;
    hash ^= hash >> 32;
  }
  for (; at < bytes.size(); ++at) hash = (hash ^ static_cast<unsigned char>(bytes[at])) * 0x100000001b3ull;
  return hash ^ (hash >> 29);
}

// Room for `more` bytes: a larger buffer taken from the budget first, as the state's text.
inline bool SnapshotWriter::fit(std::string &text, std::size_t more) {
  if (failed_) return false;
  if (text.capacity() - text.size() >= more) return true;
  const std::size_t capacity = std::max({text.size() + more, text.capacity() * 2, std::size_t{4096}});
  if (!make_room_(capacity - text.capacity())) return failed_ = true, false;
  snapshot_.taken += capacity - text.capacity();
  text.reserve(capacity);
  return true;
}

// Remembers the label set just written, for the stale markers of the next snapshot.
inline void SnapshotWriter::add_key(std::string_view labels) {
  if (failed_) return;
  if (comparing_) {
    const std::vector<SeriesKey> &previous = *context_.previous_keys;
    if (matched_ < previous.size() &&
        std::string_view(context_.previous_text->data() + previous[matched_].offset, previous[matched_].size) == labels)
      return void(++matched_);
    if (!copy_matched_keys()) return;
  }
  if (!fit(key_text_, labels.size())) return;
  if (keys_.size() == keys_.capacity()) {
    const std::size_t more = std::max<std::size_t>(keys_.capacity(), 256);
    if (!make_room_(more * sizeof(SeriesKey))) return void(failed_ = true);
    snapshot_.taken += more * sizeof(SeriesKey);
    keys_.reserve(keys_.capacity() + more);
  }
  keys_.push_back({static_cast<std::uint32_t>(key_text_.size()), static_cast<std::uint32_t>(labels.size())});
  key_text_ += labels;
}

// The keys matched so far, copied from the previous snapshot's once this one's differ,
// with room for as many keys as it had.
inline bool SnapshotWriter::copy_matched_keys() {
  comparing_ = false;
  const std::vector<SeriesKey> &previous = *context_.previous_keys;
  const std::size_t keys = previous.size() + previous.size() / 16 + 1, text = context_.previous_text->size();
  if (!make_room_(keys * sizeof(SeriesKey))) return failed_ = true, false;
  snapshot_.taken += keys * sizeof(SeriesKey);
  keys_.reserve(keys);
  if (!fit(key_text_, text + text / 16)) return false;
  keys_.assign(previous.begin(), previous.begin() + static_cast<std::ptrdiff_t>(matched_));
  key_text_.assign(*context_.previous_text, 0, matched_ == 0 ? 0 : previous[matched_ - 1].offset + previous[matched_ - 1].size);
  return true;
}

// The labels a scrape gives: the series' own (job and instance renamed exported_*, as a
// scrape without honor_labels does; a pushed group's kept, as Pushgateway is scraped
// with honor_labels), job and instance, then external labels for names still free (job
// and instance among them); sorted by name. Only names decide the order.
inline void SnapshotWriter::order_labels(std::string_view name) {
  static const std::string exported_job = "exported_job", exported_instance = "exported_instance";
  bool own_job = false, own_instance = false;
  for (Label &label : pairs_) {
    if (label.name != "job" && label.name != "instance") continue;
    if (pushed_) (label.name == "job" ? own_job : own_instance) = true;
    else label.name = label.name == "job" ? exported_job : exported_instance;
  }
  std::string_view job = *context_.job, instance = *context_.instance;
  const std::size_t own = pairs_.size();
  for (const auto &external : *context_.external_labels) {
    const std::string &name_of_external = external.first;
    if (name_of_external == "job") job = external.second;
    else if (name_of_external == "instance") instance = external.second;
    else if (std::none_of(pairs_.begin(), pairs_.begin() + static_cast<std::ptrdiff_t>(own),
                          [&](const Label &l) { return l.name == name_of_external; }))
      pairs_.push_back({name_of_external, external.second});
  }
  pairs_.push_back({"__name__", name});
  if (!own_job) pairs_.push_back({"job", job});
  if (!own_instance) pairs_.push_back({"instance", instance});
  std::sort(pairs_.begin(), pairs_.end(), [](const Label &a, const Label &b) { return a.name < b.name; });
}

// The labels of pairs_ into labels_, empty values left out.
inline void SnapshotWriter::encode_labels(std::string_view name) {
  order_labels(name);
  labels_.clear();
  for (const Label &label : pairs_)
    if (!label.value.empty()) append_label_pair(labels_, 1, label.name, label.value);
}

// The layout of the family's part, made the first time it is asked for.
inline const SnapshotWriter::LabelLayout &SnapshotWriter::layout(const MetricConfig &config, Part part) {
  const auto is_it = [&](const LabelLayout &made) { return made.config == &config && made.part == part; };
  if (last_layout_ < layouts_.size() && is_it(layouts_[last_layout_])) return layouts_[last_layout_];
  for (std::size_t i = 0; i < layouts_.size(); ++i)
    if (is_it(layouts_[i])) return layouts_[last_layout_ = i];
  constexpr std::size_t kept = 8; // a histogram's series use three, a summary's three
  if (layouts_.size() == kept) layouts_.clear();
  static constexpr std::string_view suffixes[] = {"", "_bucket", "", "_sum", "_count"};
  LabelLayout made{&config, part, config.name + std::string(suffixes[static_cast<int>(part)]), {}, false};
  pairs_.clear();
  for (std::uint32_t i = 0; i < config.labels.size(); ++i) pairs_.push_back({config.labels[i], {}, i});
  const auto extra = static_cast<std::uint32_t>(config.labels.size());
  if (part == Part::bucket) pairs_.push_back({"le", {}, extra});
  if (part == Part::quantile) pairs_.push_back({"quantile", {}, extra});
  order_labels(made.name);
  for (std::size_t i = 1; i < pairs_.size(); ++i) made.each_sorted = made.each_sorted || pairs_[i - 1].name == pairs_[i].name;
  made.steps.emplace_back();
  for (const Label &label : pairs_) {
    if (label.source == constant) {
      if (!label.value.empty()) append_label_pair(made.steps.back().constant_pairs, 1, label.name, label.value);
      continue;
    }
    made.steps.back().name = label.name, made.steps.back().source = label.source;
    made.steps.emplace_back();
  }
  layouts_.push_back(std::move(made));
  return layouts_[last_layout_ = layouts_.size() - 1];
}

// The sample of a series of values_ (and `extra`, its le or quantile), written in place
// as the family's layout orders its labels.
inline void SnapshotWriter::add_part(const MetricConfig &config, Part part, std::string_view extra, double value) {
  const LabelLayout &made = layout(config, part);
  if (made.each_sorted) {
    with_series_labels(config, part, extra);
    encode_labels(made.name);
    return add_float(value);
  }
  const auto value_of = [&](const LabelLayout::Step &step) { return step.source < values_.size() ? values_[step.source] : extra; };
  std::size_t size = 0;
  for (const LabelLayout::Step &step : made.steps) {
    size += step.constant_pairs.size();
    if (step.source == constant || value_of(step).empty()) continue;
    const std::size_t pair = label_pair_size(step.name, value_of(step));
    size += 1 + varint_size(pair) + pair;
  }
  put_double_field(&sample_[0], 1, value);
  char *at = open_series(size, sample_.size());
  if (at == nullptr) return;
  const char *labels = at;
  for (const LabelLayout::Step &step : made.steps) {
    at = std::copy(step.constant_pairs.begin(), step.constant_pairs.end(), at);
    if (step.source != constant && !value_of(step).empty()) at = put_label_pair(at, 1, step.name, value_of(step));
  }
  put_bytes_field(at, 2, sample_);
  count_sample();
  add_key({labels, size});
}

inline void SnapshotWriter::with_series_labels(const MetricConfig &config, Part part, std::string_view extra) {
  pairs_.clear();
  for (std::size_t i = 0; i < values_.size(); ++i) pairs_.push_back({config.labels[i], values_[i]});
  if (part == Part::bucket) pairs_.push_back({"le", extra});
  if (part == Part::quantile) pairs_.push_back({"quantile", extra});
}

// Room for a TimeSeries field (labels, then one Sample as field 2 or Histogram as field 4)
// of `labels_size` bytes of labels and a message of `message_size`: its head written, and
// where the labels go returned; nullptr where there is no room.
inline char *SnapshotWriter::open_series(std::size_t labels_size, std::size_t message_size) {
  const std::size_t body = labels_size + 1 + varint_size(message_size) + message_size;
  std::string &out = snapshot_.series;
  if (!fit(out, 1 + varint_size(body) + body)) return nullptr;
  const std::size_t start = out.size();
  out.resize(start + 1 + varint_size(body) + body);
  return put_varint(put_tag(&out[start], 1, WireType::length_delimited), body);
}

inline void SnapshotWriter::count_sample() {
  ++snapshot_.samples;
  if (++in_batch_ == context_.max_samples_per_send) {
    snapshot_.batch_ends.push_back(snapshot_.series.size());
    snapshot_.batch_samples.push_back(in_batch_);
    in_batch_ = 0;
  }
}

inline void SnapshotWriter::append_series(std::string_view labels_bytes, std::uint32_t field, std::string_view message) {
  char *at = open_series(labels_bytes.size(), message.size());
  if (at == nullptr) return;
  put_bytes_field(std::copy(labels_bytes.begin(), labels_bytes.end(), at), field, message);
  count_sample();
}

// A Sample of the labels in labels_.
inline void SnapshotWriter::add_float(double value) {
  put_double_field(&sample_[0], 1, value);
  append_series(labels_, 2, sample_);
  add_key(labels_);
}

// As the text format writes them: buckets with le, the +Inf one, _sum and _count; a
// summary's quantiles, _sum and _count. A native histogram is one Histogram, beside
// its classic buckets where it has any.
inline void SnapshotWriter::series(const MetricConfig &config, const LabelValues &labels, const Series &series) {
  values_.clear();
  for (const std::string_view value : labels) values_.push_back(value);
  if (config.type == MetricType::counter || config.type == MetricType::gauge) return add_part(config, Part::value, {}, series.value);
  const Distribution &seen = *series.distribution;
  if (config.type == MetricType::summary) {
    for (const auto &objective : config.objectives) {
      le_ = format_double(objective.first);
      add_part(config, Part::quantile, le_, seen.quantiles->query(objective.first));
    }
  } else {
    if (seen.native) add_native(config, seen);
    if (seen.native && config.buckets.empty()) return;
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < seen.bucket_counts.size(); ++i) {
      cumulative += seen.bucket_counts[i];
      le_ = i < config.buckets.size() ? format_double(config.buckets[i]) : "+Inf";
      add_part(config, Part::bucket, le_, static_cast<double>(cumulative));
    }
  }
  add_part(config, Part::sum, {}, seen.sum);
  add_part(config, Part::count, {}, static_cast<double>(seen.count));
}

// Histogram {count_int = 1, sum = 3, schema = 4, zero_threshold = 5, zero_count_int = 6,
// negative_spans = 8, negative_deltas = 9, positive_spans = 11, positive_deltas = 12,
// timestamp = 15}: the spans and deltas as the exposition writes them.
inline void SnapshotWriter::add_native(const MetricConfig &config, const Distribution &seen) {
  const LabelLayout &made = layout(config, Part::value);
  with_series_labels(config, Part::value, {});
  encode_labels(made.name);
  const NativeHistogram &native = *seen.native;
  message_.clear();
  append_uint_field(message_, 1, seen.count);
  append_double_field(message_, 3, seen.sum);
  append_sint_field(message_, 4, native.schema);
  append_double_field(message_, 5, config.native_zero_threshold);
  append_uint_field(message_, 6, native.zero_count);
  append_native_side(message_, deltas_, native.negative, 8, 9);
  append_native_side(message_, deltas_, native.positive, 11, 12);
  append_uint_field(message_, 15, static_cast<std::uint64_t>(snapshot_.timestamp_ms));
  append_series(labels_, 4, message_);
  add_key(labels_);
}

// Both lists of keys are in the order the renders wrote them, which stays from one
// snapshot to the next while the series do: the run they share is passed over a
// neighbour at a time, and only the last snapshot's keys after it are looked up, in an
// index of this one's made for them. Markers go out in the order of the label sets' hashes.
inline bool SnapshotWriter::add_stale_markers(const std::string &previous_text, const std::vector<SeriesKey> &previous) {
  const auto old_labels = [&](std::size_t at) { return std::string_view(previous_text.data() + previous[at].offset, previous[at].size); };
  const auto new_labels = [&](std::size_t at) { return std::string_view(key_text_.data() + keys_[at].offset, keys_[at].size); };
  if (comparing_ && matched_ == previous.size()) return same_keys_ = true, close_batch(), !failed_;
  if (comparing_ && !copy_matched_keys()) return false;
  std::size_t shared = matched_;
  while (shared < previous.size() && shared < keys_.size() && old_labels(shared) == new_labels(shared)) ++shared;
  if (shared == previous.size() || failed_) return close_batch(), !failed_;
  std::size_t slot_count = 16;
  while (slot_count < 2 * (keys_.size() - shared)) slot_count *= 2;
  using Gone = std::pair<std::uint64_t, std::uint32_t>; // hash, place in previous
  const std::size_t bytes = slot_count * sizeof(std::uint64_t) + (previous.size() - shared) * sizeof(Gone);
  if (!make_room_(bytes)) return failed_ = true, false;
  snapshot_.taken += bytes;
  std::vector<std::uint64_t> slots(slot_count, 0); // the hash's upper half, and the key's place + 1
  const std::size_t mask = slot_count - 1;
  for (std::size_t at = shared; at < keys_.size(); ++at) {
    const std::uint64_t hash = label_set_hash(new_labels(at));
    std::size_t slot = static_cast<std::size_t>(hash) & mask;
    while (slots[slot] != 0) slot = (slot + 1) & mask;
    slots[slot] = (hash >> 32 << 32) | (at + 1);
  }
  std::vector<Gone> gone;
  gone.reserve(previous.size() - shared);
  for (std::size_t at = shared; at < previous.size(); ++at) {
    const std::uint64_t hash = label_set_hash(old_labels(at));
    bool present = false;
    for (std::size_t slot = static_cast<std::size_t>(hash) & mask; !present && slots[slot] != 0; slot = (slot + 1) & mask)
      present = slots[slot] >> 32 == hash >> 32 && new_labels(static_cast<std::size_t>(slots[slot] & 0xffffffffu) - 1) == old_labels(at);
    if (!present) gone.emplace_back(hash, static_cast<std::uint32_t>(at));
  }
  std::sort(gone.begin(), gone.end());
  put_double_field(&sample_[0], 1, stale_nan());
  for (const Gone &old : gone) append_series(old_labels(old.second), 2, sample_);
  close_batch();
  return !failed_;
}

// The last batch, however few samples it holds.
inline void SnapshotWriter::close_batch() {
  if (in_batch_ > 0) {
    snapshot_.batch_ends.push_back(snapshot_.series.size());
    snapshot_.batch_samples.push_back(in_batch_);
    in_batch_ = 0;
  }
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: REMOTE WRITE SENDER ========================================================
//
// Each target has a thread of its own that sends its snapshots, oldest first, batch by
// batch, as the state file's writer has: the loop never waits for a receiver, a DNS
// lookup or a retry. The loop and the thread share only the queue and the figures,
// under one mutex; the memory budget stays the loop's, which frees what the thread is done with.

namespace hermes {
namespace detail {

// How a connection moves bytes: plain TCP, or TLS over it. Each call is non-blocking:
// `want_read`/`want_write` ask the caller to poll fd() and call again.
enum class IoStatus { done, want_read, want_write, closed, failed };
struct IoResult {
  IoStatus status;
  std::size_t bytes = 0;
};

class Transport {
public:
  virtual ~Transport() = default;
  // Starts connecting to one resolved address; then finish_open() until done.
  virtual IoResult open(const sockaddr *address, socklen_t length) = 0;
  virtual IoResult finish_open() = 0;
  virtual IoResult write(const char *bytes, std::size_t length) = 0;
  virtual IoResult read(char *bytes, std::size_t length) = 0;
  virtual int fd() const = 0;
  virtual std::string error() const = 0; // what failed, as "call: strerror"
  virtual void close() = 0;
  // Whether finish_open() failed in the TLS handshake rather than in connect().
  virtual bool handshake_failed() const { return false; }
};

class PlainTransport final : public Transport {
public:
  IoResult open(const sockaddr *address, socklen_t length) override {
    socket_ = FileDescriptor(::socket(address->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!socket_) return failure("socket");
    if (::connect(socket_.get(), address, length) == 0) return {IoStatus::done};
    return errno == EINPROGRESS ? IoResult{IoStatus::want_write} : failure("connect");
  }
  IoResult finish_open() override {
    int problem = 0;
    socklen_t size = sizeof problem;
    if (::getsockopt(socket_.get(), SOL_SOCKET, SO_ERROR, &problem, &size) != 0) return failure("getsockopt");
    if (problem != 0) return errno = problem, failure("connect");
    return {IoStatus::done};
  }
  IoResult write(const char *bytes, std::size_t length) override {
    const ssize_t sent = ::send(socket_.get(), bytes, length, MSG_NOSIGNAL);
    if (sent >= 0) return {IoStatus::done, static_cast<std::size_t>(sent)};
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return {IoStatus::want_write};
    return failure("send");
  }
  IoResult read(char *bytes, std::size_t length) override {
    const ssize_t got = ::recv(socket_.get(), bytes, length, 0);
    if (got > 0) return {IoStatus::done, static_cast<std::size_t>(got)};
    if (got == 0) return {IoStatus::closed};
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return {IoStatus::want_read};
    return failure("recv");
  }
  int fd() const override { return socket_.get(); }
  std::string error() const override { return error_; }
  void close() override { socket_ = FileDescriptor(); }

private:
  IoResult failure(const char *call) {
    error_ = std::string(call) + ": " + std::strerror(errno);
    return {IoStatus::failed};
  }
  FileDescriptor socket_;
  std::string error_;
};

#ifdef HERMES_TLS
// TLS over a PlainTransport: open() connects, finish_open() then steps the handshake,
// which checks the certificate and the name before a byte of the request is written.
class TlsTransport final : public Transport {
public:
  TlsTransport(std::shared_ptr<const TlsContext> context, std::string host) : context_(std::move(context)), host_(std::move(host)) {}
  ~TlsTransport() override { close(); }

  IoResult open(const sockaddr *address, socklen_t length) override {
    close();
    const IoResult step = tcp_.open(address, length);
    return step.status == IoStatus::done ? finish_open() : step;
  }
  IoResult finish_open() override {
    if (!stream_) {
      const IoResult connected = tcp_.finish_open();
      if (connected.status != IoStatus::done) return connected;
      stream_ = std::make_unique<TlsStream>(context_, tcp_.fd(), host_);
    }
    if (stream_->handshake()) return {IoStatus::done};
    return settled(-1);
  }
  IoResult write(const char *bytes, std::size_t length) override {
    return settled(stream_->write(bytes, std::min<std::size_t>(length, INT_MAX)));
  }
  IoResult read(char *bytes, std::size_t length) override { return settled(stream_->read(bytes, length)); }
  int fd() const override { return tcp_.fd(); }
  std::string error() const override {
    if (!stream_ || !stream_->failed()) return tcp_.error();
    return (stream_->handshake_done() ? "TLS: " : "TLS handshake with " + host_ + ": ") + stream_->error();
  }
  bool handshake_failed() const override { return stream_ && stream_->failed() && !stream_->handshake_done(); }
  // close_notify if the socket takes it at once, as a courtesy; the socket closes anyway.
  void close() override {
    if (stream_ && stream_->handshake_done()) stream_->close();
    stream_.reset();
    tcp_.close();
  }

private:
  IoResult settled(std::ptrdiff_t result) {
    if (result > 0) return {IoStatus::done, static_cast<std::size_t>(result)};
    if (result == 0) return {IoStatus::closed};
    if (stream_->failed()) return {IoStatus::failed};
    return {stream_->wait() == TlsWait::writable ? IoStatus::want_write : IoStatus::want_read};
  }

  std::shared_ptr<const TlsContext> context_;
  std::string host_; // checked against the certificate: the URL's, or tls.server_name
  PlainTransport tcp_;
  std::unique_ptr<TlsStream> stream_; // before the socket closes, as it writes to it
};
#endif

// What one request came to: a status (0 when none came, and why), Retry-After in seconds
// (0: none) and the start of the receiver's message, or what failed on the way.
struct SendOutcome {
  int status = 0;
  RemoteWriteFailure failure = RemoteWriteFailure::connection; // when status is 0
  double retry_after = 0;
  std::string message;
};

// How a response ends: its body's length when the head says it (Content-Length, or none
// for 204 and 304), and whether the connection then serves the next request (HTTP/1.1
// without "Connection: close"). Without a length the body ends when the receiver closes.
struct ResponseFraming {
  std::optional<std::size_t> body_length;
  bool keep_alive = false;
};

inline ResponseFraming response_framing(std::string_view head, int status) {
  ResponseFraming framing;
  const std::vector<std::string_view> lines = head_lines(head);
  framing.keep_alive = !lines.empty() && lines[0].substr(0, 9) == "HTTP/1.1 ";
  if (status == 204 || status == 304) framing.body_length = 0;
  for (std::size_t i = 1; i < lines.size(); ++i) {
    const std::size_t colon = lines[i].find(':');
    if (colon == std::string_view::npos) continue;
    const std::string name = lowercase(trim(lines[i].substr(0, colon)));
    const std::string value = lowercase(trim(lines[i].substr(colon + 1)));
    if (name == "connection" && value.find("close") != std::string::npos) framing.keep_alive = false;
    else if (name == "transfer-encoding") framing.body_length.reset(), framing.keep_alive = false; // chunked: read to the end
    else if (name == "content-length" && !framing.body_length)
      if (const auto length = parse_number<std::size_t>(value, 10, 0, SIZE_MAX)) framing.body_length = *length;
  }
  if (!framing.body_length) framing.keep_alive = false;
  return framing;
}

// The status, Retry-After (seconds, or an HTTP date) and the body of an HTTP response.
inline SendOutcome read_response(std::string_view response) {
  SendOutcome outcome;
  const std::size_t head_end = find_head_end(response);
  const std::vector<std::string_view> lines = head_lines(response.substr(0, head_end));
  if (lines.empty() || lines[0].substr(0, 5) != "HTTP/" || lines[0].size() < 12) return outcome.message = "not an HTTP response", outcome;
  outcome.status = parse_number<int>(lines[0].substr(9, 3), 10, 100, 599).value_or(0);
  for (std::size_t i = 1; i < lines.size(); ++i) {
    const std::size_t colon = lines[i].find(':');
    if (colon == std::string_view::npos || lowercase(trim(lines[i].substr(0, colon))) != "retry-after") continue;
    const std::string_view value = trim(lines[i].substr(colon + 1));
    if (const auto seconds = parse_number<std::uint32_t>(value, 10, 0, UINT32_MAX)) outcome.retry_after = *seconds;
  }
  if (head_end != std::string_view::npos) outcome.message = printable_ascii(trim(response.substr(head_end)).substr(0, 512));
  if (outcome.status == 0) outcome.message = "not an HTTP response";
  return outcome;
}

// POSTs within a deadline over a connection it keeps while the receiver allows: one TCP
// connect, and one TLS handshake over https, serve every request until the receiver
// closes. A kept connection the receiver closed meanwhile is noticed before the request
// goes, or by an answer that never starts, and the request goes once more over a new
// one. `abort` ends a request early.
class HttpPoster {
public:
  HttpPoster(RemoteWriteUrl url, std::unique_ptr<Transport> transport, const std::atomic<bool> &abort,
             const std::atomic<Clock::rep> &hard_deadline)
      : url_(std::move(url)), transport_(std::move(transport)), abort_(abort), hard_deadline_(hard_deadline) {}
  HttpPoster(const HttpPoster &) = delete;
  HttpPoster &operator=(const HttpPoster &) = delete;
  ~HttpPoster() { transport_->close(); }

  SendOutcome post(const std::string &request, Clock::time_point deadline) {
    if (open_ && closed_by_peer()) disconnect();
    const bool reused = open_;
    SendOutcome outcome;
    std::optional<RemoteWriteFailure> failure = exchange(request, deadline, outcome.message);
    if (failure == RemoteWriteFailure::connection && reused && response_.empty()) {
      disconnect();
      failure = exchange(request, deadline, outcome.message);
    }
    if (failure) {
      disconnect();
      outcome.failure = *failure;
      return outcome;
    }
    outcome = read_response(response_);
    if (!keep_alive_) disconnect();
    return outcome;
  }

  std::uint64_t connections() const { return connections_; } // opened so far

private:
  using Failure = std::optional<RemoteWriteFailure>;

  void disconnect() {
    transport_->close();
    open_ = false;
  }

  // An idle kept connection is readable only when the receiver closed it (or sent what
  // it should not have): either way it serves no more.
  bool closed_by_peer() const {
    pollfd slot{transport_->fd(), POLLIN, 0};
    return ::poll(&slot, 1, 0) != 0;
  }

  Failure connect(Clock::time_point deadline, std::string &problem) {
    addrinfo hints{}, *found = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    const std::string port = std::to_string(url_.port);
    if (const int error = ::getaddrinfo(url_.host.c_str(), port.c_str(), &hints, &found))
      return problem = "resolve " + url_.host + ": " + ::gai_strerror(error), RemoteWriteFailure::resolve;
    std::unique_ptr<addrinfo, void (*)(addrinfo *)> addresses(found, ::freeaddrinfo);
    IoResult step = transport_->open(found->ai_addr, found->ai_addrlen);
    while (step.status == IoStatus::want_write || step.status == IoStatus::want_read) {
      if (const Failure waited = wait(step.status, deadline, "connect", problem)) return waited;
      step = transport_->finish_open();
    }
    if (step.status != IoStatus::done)
      return problem = transport_->error(), transport_->handshake_failed() ? RemoteWriteFailure::tls_handshake : RemoteWriteFailure::connect;
    ++connections_, open_ = true;
    return std::nullopt;
  }

  Failure exchange(const std::string &request, Clock::time_point deadline, std::string &problem) {
    response_.clear();
    if (!open_)
      if (const Failure failed = connect(deadline, problem)) return failed;
    for (std::size_t sent = 0; sent < request.size();) {
      const IoResult step = transport_->write(request.data() + sent, request.size() - sent);
      if (step.status == IoStatus::failed || step.status == IoStatus::closed)
        return problem = transport_->error(), RemoteWriteFailure::connection;
      if (step.status != IoStatus::done) {
        if (const Failure waited = wait(step.status, deadline, "send", problem)) return waited;
      }
      sent += step.bytes;
    }
    return read_answer(deadline, problem);
  }

  // The head, then the body as long as the head says, or until the receiver closes.
  Failure read_answer(Clock::time_point deadline, std::string &problem) {
    char buffer[1024];
    std::optional<std::size_t> complete; // the response's whole length, once the head says
    keep_alive_ = false;
    while (response_.size() < HERMES_REMOTE_WRITE_MAX_RESPONSE && (!complete || response_.size() < *complete)) {
      const IoResult step = transport_->read(buffer, sizeof buffer);
      if (step.status == IoStatus::closed || step.status == IoStatus::failed) { // the answer ends here, if it began
        keep_alive_ = false;
        if (head_read()) return std::nullopt;
        problem = step.status == IoStatus::closed ? "closed without an answer" : transport_->error();
        return RemoteWriteFailure::connection;
      }
      if (step.status == IoStatus::done) {
        response_.append(buffer, step.bytes);
        if (!complete && head_read()) {
          const std::size_t head_end = find_head_end(response_);
          const ResponseFraming framing = response_framing(std::string_view(response_).substr(0, head_end), read_response(response_).status);
          if (framing.body_length) complete = head_end + *framing.body_length;
          keep_alive_ = framing.keep_alive;
        }
        continue;
      }
      if (const Failure waited = wait(step.status, deadline, "answer", problem)) {
        keep_alive_ = false;
        return head_read() ? std::nullopt : waited;
      }
    }
    if (!complete || response_.size() != *complete) keep_alive_ = false; // cut short, or more than was said
    return std::nullopt;
  }

  bool head_read() const { return find_head_end(response_) != std::string::npos; }

  // Polls in short slices, so that an abort is seen within 100 ms.
  Failure wait(IoStatus status, Clock::time_point deadline, const char *step, std::string &problem) {
    for (;;) {
      if (abort_.load()) return problem = std::string(step) + ": given up", RemoteWriteFailure::given_up;
      const auto hard = Clock::time_point(Clock::duration(hard_deadline_.load()));
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(std::min(deadline, hard) - Clock::now()).count();
      if (left <= 0) return problem = std::string(step) + ": timed out", RemoteWriteFailure::timeout;
      pollfd slot{transport_->fd(), static_cast<short>(status == IoStatus::want_read ? POLLIN : POLLOUT), 0};
      const int ready = ::poll(&slot, 1, static_cast<int>(std::min<std::int64_t>(left, 100)));
      if (ready > 0) return std::nullopt;
      if (ready < 0 && errno != EINTR) return problem = std::string(step) + ": poll: " + std::strerror(errno), RemoteWriteFailure::connection;
    }
  }

  RemoteWriteUrl url_;
  std::unique_ptr<Transport> transport_;
  const std::atomic<bool> &abort_;
  const std::atomic<Clock::rep> &hard_deadline_;
  std::string response_;
  bool open_ = false, keep_alive_ = false;
  std::uint64_t connections_ = 0;
};

// What the thread leaves for the loop to log, once per interval at most.
struct SendTroubles {
  std::uint64_t refused_batches = 0, failed_requests = 0;
  std::string refused, failed; // the last of each: status and the receiver's message, or the error
};

// One target: its queue of snapshots, its figures and its sending thread.
class RemoteTarget {
public:
  RemoteTarget(const RemoteWriteConfig &config, const std::string &job, const std::string &instance)
      : config_(config), job_(job), instance_(instance) {
    parse_remote_write_url(config.url, url_);
    stats_.url = config.url;
    for (const int code : request_codes) stats_.requests[code] = 0;
    head_ = "POST " + url_.path + " HTTP/1.1\r\nHost: " + host_header() + "\r\nUser-Agent: Hermes/" HERMES_VERSION_STR
            "\r\nContent-Encoding: snappy\r\nContent-Type: application/x-protobuf\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\n";
    if (!config.authorization.empty()) head_ += "Authorization: " + config.authorization + "\r\n";
    for (const auto &[name, value] : config.headers) head_ += name + ": " + value + "\r\n";
    poster_ = std::make_unique<HttpPoster>(url_, make_transport(), abort_now_, hard_deadline_);
  }
  RemoteTarget(const RemoteTarget &) = delete;
  RemoteTarget &operator=(const RemoteTarget &) = delete;
  ~RemoteTarget() { stop(Clock::now()); }

  // The status codes counted one by one; others count under the nearest class' first code.
  static constexpr int request_codes[] = {0, 200, 204, 400, 401, 403, 404, 413, 429, 500, 502, 503, 504};

  const RemoteWriteConfig &config() const { return config_; }
  // The memory its TLS state takes at most, for the budget: the context (CAs, the client
  // certificate) and one connection's records and handshake; 0 over plain HTTP.
  std::size_t tls_bytes() const {
#ifdef HERMES_TLS
    if (tls_) return tls_->held_bytes() + HERMES_TLS_CONNECTION_BYTES;
#endif
    return 0;
  }
  SnapshotWriter::Context context() const { return {&job_, &instance_, &config_.external_labels, config_.max_samples_per_send}; }

  void start() { sender_ = std::thread([this] { send_loop(); }); }

  // The loop's side. Queues a snapshot; the thread takes it from there.
  void enqueue(std::unique_ptr<PendingSnapshot> snapshot) {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.samples_in += snapshot->samples;
    pending_bytes_ += snapshot->taken;
    queue_.push_back(std::move(snapshot));
    wake_.notify_all();
  }
  // Drops the oldest snapshot not being sent, or asks the thread to give up the one it
  // sends; returns the bytes freed at once (0: none).
  std::size_t drop_oldest() {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::size_t first = in_flight_ ? 1 : 0;
    if (queue_.size() > first) {
      PendingSnapshot &dropped = *queue_[first];
      stats_.samples_dropped += dropped.samples;
      const std::size_t freed = dropped.taken;
      pending_bytes_ -= freed;
      queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(first));
      return freed;
    }
    if (in_flight_) abandon_ = true, abort_now_ = true, wake_.notify_all();
    return 0;
  }
  // The bytes of the snapshots the thread is done with, now freed.
  std::size_t collect_freed() {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::size_t freed = freed_;
    freed_ = 0;
    return freed;
  }
  std::size_t pending_bytes() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return pending_bytes_;
  }
  RemoteWriteStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    RemoteWriteStats copy = stats_;
    copy.pending_snapshots = static_cast<double>(queue_.size());
    copy.pending_bytes = static_cast<double>(pending_bytes_);
    return copy;
  }
  SendTroubles take_troubles() {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(troubles_, SendTroubles{});
  }
  // At stop: every snapshot but the newest is dropped, the one in flight given up, and
  // the thread has until `deadline` to send what is left; then it ends.
  void stop(Clock::time_point deadline) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!sender_.joinable()) return;
      while (queue_.size() > 1 + (in_flight_ ? 1 : 0)) {
        const std::size_t at = in_flight_ ? 1 : 0;
        stats_.samples_dropped += queue_[at]->samples;
        pending_bytes_ -= queue_[at]->taken, freed_ += queue_[at]->taken;
        queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(at));
      }
      if (in_flight_ && queue_.size() > 1) abandon_ = true, abort_now_ = true;
      stopping_ = true, deadline_ = deadline;
      hard_deadline_ = deadline.time_since_epoch().count();
      wake_.notify_all();
    }
    sender_.join();
  }

private:
  std::unique_ptr<Transport> make_transport() {
#ifdef HERMES_TLS
    if (url_.scheme == "https") {
      tls_ = TlsContext::for_client(remote_write_tls_settings(config_));
      const std::string &name = config_.tls && !config_.tls->server_name.empty() ? config_.tls->server_name : url_.host;
      return std::make_unique<TlsTransport>(tls_, name);
    }
#endif
    return std::make_unique<PlainTransport>();
  }

  std::string host_header() const {
    const bool v6 = url_.host.find(':') != std::string::npos;
    const bool default_port = url_.port == (url_.scheme == "https" ? 443 : 80);
    return (v6 ? "[" + url_.host + "]" : url_.host) + (default_port ? "" : ":" + std::to_string(url_.port));
  }

  void send_loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty() || (stopping_ && Clock::now() >= deadline_)) break;
      in_flight_ = true, abandon_ = false, abort_now_ = false;
      PendingSnapshot &snapshot = *queue_.front();
      lock.unlock();
      send_snapshot(snapshot);
      lock.lock();
      if (snapshot.next_batch < snapshot.batch_ends.size()) // given up: the rest is dropped
        for (std::size_t b = snapshot.next_batch; b < snapshot.batch_ends.size(); ++b) stats_.samples_dropped += snapshot.batch_samples[b];
      pending_bytes_ -= snapshot.taken, freed_ += snapshot.taken;
      queue_.pop_front();
      in_flight_ = false;
    }
    for (const auto &left : queue_) { // past the deadline at stop
      stats_.samples_dropped += left->samples;
      pending_bytes_ -= left->taken, freed_ += left->taken;
    }
    queue_.clear();
  }

  // Batch after batch; a failure that may pass is retried after a backoff that starts at
  // 0.5 s and doubles up to max_backoff_seconds, or after the receiver's Retry-After.
  void send_snapshot(PendingSnapshot &snapshot) {
    HttpPoster &poster = *poster_;
    double backoff = 0.5;
    bool retrying = false;
    while (snapshot.next_batch < snapshot.batch_ends.size()) {
      const std::size_t batch = snapshot.next_batch;
      const std::size_t start = batch == 0 ? 0 : snapshot.batch_ends[batch - 1], samples = snapshot.batch_samples[batch];
      snappy_compress(std::string_view(snapshot.series).substr(start, snapshot.batch_ends[batch] - start), body_);
      request_ = head_ + "Content-Length: " + std::to_string(body_.size()) + "\r\n\r\n";
      request_ += body_;
      auto deadline = Clock::now() + std::chrono::milliseconds(milliseconds_of(config_.timeout_seconds));
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_) deadline = std::min(deadline, deadline_);
        if (retrying) stats_.samples_retried += samples;
      }
      const SendOutcome outcome = poster.post(request_, deadline);
      std::unique_lock<std::mutex> lock(mutex_);
      ++stats_.requests[counted_code(outcome.status)];
      if (outcome.status == 0) ++stats_.failures[static_cast<std::size_t>(outcome.failure)];
      stats_.connections = poster.connections();
      if (outcome.status >= 200 && outcome.status < 300) {
        stats_.samples_sent += samples;
        stats_.last_send_seconds = wall_clock_seconds();
        stats_.highest_sent_timestamp_seconds = std::max(stats_.highest_sent_timestamp_seconds, static_cast<double>(snapshot.timestamp_ms) / 1000);
        ++snapshot.next_batch, backoff = 0.5, retrying = false;
        continue;
      }
      if (outcome.status >= 300 && outcome.status < 500 && outcome.status != 429) { // will not pass: dropped
        stats_.samples_failed += samples;
        ++troubles_.refused_batches;
        troubles_.refused = std::to_string(outcome.status) + " " + outcome.message;
        ++snapshot.next_batch, retrying = false;
        continue;
      }
      ++troubles_.failed_requests;
      troubles_.failed = outcome.status ? std::to_string(outcome.status) + " " + outcome.message : outcome.message;
      const double sleep = outcome.retry_after > 0 ? std::min<double>(outcome.retry_after, HERMES_REMOTE_WRITE_MAX_RETRY_AFTER_S) : backoff;
      backoff = std::min(sleep * 2, std::max(config_.max_backoff_seconds, 0.5));
      retrying = true;
      // At stop, a retry that would come after the deadline is not waited for.
      const auto until = Clock::now() + std::chrono::milliseconds(milliseconds_of(sleep));
      const auto give_up = [&] { return abandon_ || (stopping_ && until > deadline_); };
      wake_.wait_until(lock, until, give_up);
      if (give_up()) return;
    }
  }

  static int counted_code(int status) {
    for (const int code : request_codes)
      if (code == status) return code;
    return status >= 500 ? 500 : status >= 400 ? 400 : status >= 200 && status < 300 ? 200 : 0;
  }

  RemoteWriteConfig config_;
  RemoteWriteUrl url_;
  std::string job_, instance_, head_;
  std::string body_, request_; // the thread's
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<PendingSnapshot>> queue_; // the front is in flight while in_flight_
  bool in_flight_ = false, abandon_ = false, stopping_ = false;
  std::atomic<bool> abort_now_{false};
  std::atomic<Clock::rep> hard_deadline_{std::numeric_limits<Clock::rep>::max()}; // at stop, for the request in flight
#ifdef HERMES_TLS
  std::shared_ptr<const TlsContext> tls_; // over https
#endif
  std::unique_ptr<HttpPoster> poster_;    // the thread's: its connection lasts from send to send
  Clock::time_point deadline_{};
  std::size_t pending_bytes_ = 0, freed_ = 0;
  RemoteWriteStats stats_;
  SendTroubles troubles_;
  std::thread sender_;
};

} // namespace detail
} // namespace hermes

// ===== DETAIL: REMOTE WRITE ===============================================================

namespace hermes {
namespace detail {

inline std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return "localhost";
  return name;
}

// The loop's side of remote write: when each target's snapshot is due, the memory that
// snapshots take (at most 1/HERMES_REMOTE_WRITE_PENDING_SHARE of the budget, oldest
// dropped first), the stale markers, the log lines, and the room its own figures take in
// every /metrics body.
class RemoteWriter {
public:
  using Render = std::function<void(Writer &)>;

  RemoteWriter(const std::vector<RemoteWriteConfig> &targets, const std::string &job, const Registry &registry,
               const Logger &logger, MemoryBudget &budget)
      : logger_(logger), budget_(budget) {
    const std::string instance = host_name();
    for (const RemoteWriteConfig &config : targets) { // Options made in code, not read from a config, are checked too
      RemoteWriteReader("remote_write").check_url(config.url, "url");
      slots_.emplace_back();
      slots_.back().target = std::make_unique<RemoteTarget>(config, job, instance);
    }
    take_figures_room(registry);
    take_tls_room();
    for (Slot &slot : slots_) slot.target->start();
  }
  RemoteWriter(const RemoteWriter &) = delete;
  RemoteWriter &operator=(const RemoteWriter &) = delete;
  ~RemoteWriter() {
    for (Slot &slot : slots_) slot.target->stop(Clock::now());
    give_back_all();
  }

  bool enabled() const { return !slots_.empty(); }
  std::optional<Clock::time_point> next_due() const {
    std::optional<Clock::time_point> next;
    for (const Slot &slot : slots_)
      if (!next || slot.next_due < *next) next = slot.next_due;
    return next;
  }
  // Frees what the threads are done with, logs their troubles once per interval, and
  // takes each snapshot that is due.
  void step(Clock::time_point now, const Render &render) {
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      give_back(slots_[i].target->collect_freed());
      if (now < slots_[i].next_due) continue;
      slots_[i].next_due = now + std::chrono::milliseconds(milliseconds_of(slots_[i].target->config().interval_seconds));
      log_troubles(*slots_[i].target);
      take_snapshot(slots_[i], render);
    }
  }
  // At stop: one last snapshot of each target, sent within its timeout_seconds.
  void stop(const Render &render) {
    for (Slot &slot : slots_) {
      take_snapshot(slot, render);
      slot.target->stop(Clock::now() + std::chrono::milliseconds(milliseconds_of(slot.target->config().timeout_seconds)));
      log_troubles(*slot.target);
      give_back(slot.target->collect_freed());
    }
  }
  void add_stats(ServerStats &stats) const {
    for (const Slot &slot : slots_) {
      stats.remote_write.push_back(slot.target->stats());
      stats.remote_write.back().snapshots_failed = slot.snapshots_failed;
    }
  }

private:
  struct Slot {
    std::unique_ptr<RemoteTarget> target;
    Clock::time_point next_due{};      // the first snapshot at the first step
    std::string key_text;              // the label sets of the last snapshot taken
    std::vector<SeriesKey> keys;
    std::size_t keys_taken = 0;        // of the budget, for those two
    std::size_t last_bytes = 0;        // of the last snapshot's series
    std::uint64_t snapshots_failed = 0;
  };

  // Every /metrics body shows the targets' figures: their room is kept as a series' is.
  void take_figures_room(const Registry &registry) {
    if (slots_.empty()) return;
    ServerStats figures;
    for (const Slot &slot : slots_) figures.remote_write.push_back(slot.target->stats());
    BoundWriter bound;
    const SelfView view{registry, &figures, nullptr};
    for (const SelfMetric &metric : self_metrics)
      if (metric.scope == SelfMetric::Scope::remote_write) write_self_metric(bound, metric, view);
    if (!budget_.take_for_series(0, bound.bytes))
      throw ConfigError("remote_write: no room in the memory budget for its figures in /metrics (" + std::to_string(bound.bytes) + " bytes)");
    figures_room_ = bound.bytes;
  }

  // What https targets' TLS state takes is taken at start, as the HTTPS port's is.
  void take_tls_room() {
    std::size_t bytes = 0;
    for (const Slot &slot : slots_) bytes += slot.target->tls_bytes();
    if (!budget_.take(bytes)) {
      give_back_all();
      throw ConfigError("remote_write: no room in the memory budget for TLS (" + std::to_string(bytes) + " bytes)");
    }
    tls_room_ = bytes;
  }

  void take_snapshot(Slot &slot, const Render &render) {
    RemoteTarget &target = *slot.target;
    const std::size_t share = budget_.limit() / HERMES_REMOTE_WRITE_PENDING_SHARE;
    std::size_t taking = 0; // by this snapshot so far
    const auto make_room = [&](std::size_t bytes) {
      for (;;) {
        const bool within_share = pending_total() + slot.keys_taken + taking + bytes <= share;
        if (within_share && budget_.take(bytes)) return taking += bytes, taken_ += bytes, true;
        const std::size_t freed = drop_oldest_anywhere();
        if (freed == 0) return false;
      }
    };
    SnapshotWriter::Context context = target.context();
    context.expected_bytes = slot.last_bytes, context.expected_series = slot.keys.size();
    context.previous_text = &slot.key_text, context.previous_keys = &slot.keys;
    SnapshotWriter writer(context, milliseconds_of(wall_clock_seconds()), make_room);
    render(writer);
    const bool whole = !writer.failed() && writer.add_stale_markers(slot.key_text, slot.keys);
    PendingSnapshot &made = writer.snapshot();
    // Sending it takes a compressed batch and its request at most, beside the snapshot.
    std::size_t largest = 0;
    for (std::size_t b = 0; b < made.batch_ends.size(); ++b)
      largest = std::max(largest, made.batch_ends[b] - (b == 0 ? 0 : made.batch_ends[b - 1]));
    const std::size_t sending = 2 * snappy_max_compressed_length(largest) + snappy_table_size * 2 + 4096;
    if (!whole || !make_room(sending)) {
      ++slot.snapshots_failed;
      give_back(taking);
      return logger_.log(LogLevel::warn, "remote write snapshot skipped: no room in the memory budget", {{"url", target.config().url}});
    }
    const std::size_t keys_taken = writer.same_keys() ? 0 : writer.key_text().capacity() + writer.keys().capacity() * sizeof(SeriesKey);
    if (!writer.same_keys()) {
      give_back(slot.keys_taken);
      slot.key_text = std::move(writer.key_text());
      slot.keys = std::move(writer.keys());
      slot.keys_taken = keys_taken;
    }
    slot.last_bytes = made.series.size();
    made.taken = taking - std::min(keys_taken, taking);
    target.enqueue(std::make_unique<PendingSnapshot>(std::move(made)));
  }

  // The oldest snapshot of the target that holds the most: what pressure costs first.
  std::size_t drop_oldest_anywhere() {
    std::size_t freed = 0;
    for (Slot &slot : slots_) {
      give_back(slot.target->collect_freed());
      if (freed == 0) freed = slot.target->drop_oldest();
    }
    give_back(freed);
    return freed;
  }

  std::size_t pending_total() const {
    std::size_t total = 0;
    for (const Slot &slot : slots_) total += slot.target->pending_bytes();
    return total;
  }

  void log_troubles(RemoteTarget &target) {
    const SendTroubles troubles = target.take_troubles();
    const std::string &url = target.config().url;
    if (troubles.refused_batches > 0)
      logger_.log(LogLevel::error, "remote write batches refused by the receiver; dropped",
                  {{"url", url}, {"batches", std::to_string(troubles.refused_batches)}, {"last", troubles.refused}});
    if (troubles.failed_requests > 0)
      logger_.log(LogLevel::warn, "remote write failing; retrying with backoff",
                  {{"url", url}, {"failures", std::to_string(troubles.failed_requests)}, {"last", troubles.failed}});
  }

  void give_back(std::size_t bytes) {
    bytes = std::min(bytes, taken_);
    budget_.give_back(bytes);
    taken_ -= bytes;
  }
  void give_back_all() {
    budget_.give_back(taken_);
    taken_ = 0;
    budget_.give_back_series(0, figures_room_);
    figures_room_ = 0;
    budget_.give_back(tls_room_);
    tls_room_ = 0;
  }

  const Logger &logger_;
  MemoryBudget &budget_;
  std::vector<Slot> slots_;
  std::size_t taken_ = 0;       // of the budget, by snapshots and key sets
  std::size_t figures_room_ = 0; // kept in each body for the figures
  std::size_t tls_room_ = 0;     // for the https targets' TLS state
};

} // namespace detail
} // namespace hermes

#else // HERMES_NO_REMOTE_WRITE: the server's side of remote write, with no targets

namespace hermes {
namespace detail {

class RemoteWriter {
public:
  using Render = std::function<void(Writer &)>;

  RemoteWriter(const std::vector<RemoteWriteConfig> &, const std::string &, const Registry &, const Logger &, MemoryBudget &) {}
  bool enabled() const { return false; }
  std::optional<Clock::time_point> next_due() const { return std::nullopt; }
  void step(Clock::time_point, const Render &) {}
  void stop(const Render &) {}
  void add_stats(ServerStats &) const {}
};

} // namespace detail
} // namespace hermes

#endif // HERMES_NO_REMOTE_WRITE

// ===== SERVER =============================================================================

namespace hermes {

inline ServerStats::ServerStats() {
  // Every status Hermes may send; those only the Pushgateway API answers where the build has it.
  constexpr int push_only[] = {202, 411, 413, 415, 507};
  for (const detail::HttpStatus &status : detail::http_statuses)
    if (has_push || std::find(std::begin(push_only), std::end(push_only), status.code) == std::end(push_only))
      http_requests[status.code] = 0;
  // Each answer a method can get: a push 200, a delete (or the PUT of a wipe) 202.
  for (const char *method : {"POST", "PUT"})
    for (const int code : {200, 400, 401, 411, 413, 415, 507}) push_requests[{method, code}] = 0;
  for (const char *method : {"DELETE", "PUT"})
    for (const int code : {202, 400, 401, 411, 413, 415}) push_requests[{method, code}] = 0;
}

// The server's parts, each owning its sockets and state: datagram input, the HTTP front
// end, the reject log; and what ties them together: the registry, reloads, the sweep.
namespace detail {

// Buffers of a fixed size, taken from the budget at start: the receive batch, the
// datagrams a render may hold, every connection's request head, and room for the short
// lived copies a summary makes as it merges.
constexpr std::size_t fixed_buffer_bytes = std::size_t{HERMES_RECEIVE_BATCH} * HERMES_MAX_DATAGRAM_SIZE +
                                           HERMES_RENDER_HOLD_BYTES +
                                           HttpFrontEnd::most_connections * HttpFrontEnd::connection_bytes + 256 * 1024;

inline std::shared_ptr<MemoryBudget> budget_with_fixed_buffers(std::size_t limit) {
  auto budget = std::make_shared<MemoryBudget>(limit, HERMES_SCRAPE_BODIES);
  if (!budget->take(fixed_buffer_bytes))
    throw UsageError("HERMES_MAX_MEMORY: " + std::to_string(limit) + " bytes is less than the " +
                     std::to_string(fixed_buffer_bytes) + " bytes of Hermes' fixed buffers");
  return budget;
}

// Options (or a Config built in code) that ask for a part this build leaves out: an
// error at start, where a setting of the part would otherwise do nothing.
inline void check_parts_built(const Config &config, const Options &options) {
  const std::pair<bool, const char *> wanted[] = {
      {options.statsd, "Options::statsd"},
      {options.statsd_tcp_port.has_value(), "Options::statsd_tcp_port"},
      {!options.statsd_mapping_file.empty() || !config.statsd.mapping_file.empty(), "statsd_mapping_file"}};
  for (const auto &[set, name] : wanted)
    if (set && !has_statsd) throw UsageError(std::string(name) + ": " + not_built(statsd_part));
  if (options.protobuf && !has_protobuf) throw UsageError("Options::protobuf: " + not_built(protobuf_part));
  if (!options.state_file.empty() && !has_state) throw UsageError("Options::state_file: " + not_built(state_part));
  if (options.push && !has_push) throw UsageError("Options::push: " + not_built(push_part));
  if (!options.remote_write.empty() && !has_remote_write)
    throw UsageError("Options::remote_write: " + not_built(remote_write_part));
}

} // namespace detail

namespace detail {

// The sample names of the configured metrics in every format, and Hermes' own families:
// what no pushed family may write.
inline std::vector<std::string> reserved_push_names(const Config &config) {
  std::vector<std::string> names;
  for (const MetricConfig &metric : config.metrics) {
    const std::string &name = metric.name;
    names.push_back(name);
    if (metric.type == MetricType::counter && ends_with(name, "_total"))
      names.push_back(name.substr(0, name.size() - 6)), names.push_back(name.substr(0, name.size() - 6) + "_created");
    if (metric.type == MetricType::histogram) names.push_back(name + "_bucket");
    if (metric.type == MetricType::histogram || metric.type == MetricType::summary)
      for (const char *suffix : {"_sum", "_count", "_created"}) names.push_back(name + suffix);
  }
  for (const SelfMetric &metric : self_metrics) names.emplace_back(metric.name);
  return names;
}

inline HttpResponse push_response(int status, const std::string &message) {
  HttpResponse response;
  response.status = status;
  response.body = message.empty() ? "" : message + "\n";
  return response;
}

} // namespace detail

struct Server::Impl {
  using Clock = detail::Clock;
  using Source = detail::DatagramInput::Source;

  Impl(const Config &config, Options &options)
      : budget(detail::budget_with_fixed_buffers(options.max_memory)), registry(config, budget),
        pushes(budget, options.max_push_groups, options.push_ttl_seconds),
        logger(options.log_level, std::move(options.log_sink)), config_path(options.config_path), input(options),
        http(options, logger, *budget, [this](Format format, detail::BudgetedBody &body) { return render(format, body); },
             push_endpoint(options)),
        statsd_tcp(options, logger, *budget), rejects(logger), start_time_seconds(detail::process_start_time_seconds()),
        statsd_mapping_file(options.statsd_mapping_file), state(options, logger, *budget, pushes),
        remote(options.remote_write, config.service_name, registry, logger, *budget) {
    registry.accept_statsd(options.statsd);
    start_gzip(options.gzip_level);
    pushes.reserve_names(detail::reserved_push_names(config));
    pushes.reserve_names_of([this](std::string_view name) { return registry.uses_name(name); });
    registry.keep_line_metrics_off([this](std::string_view name) { return pushes.writes(name); });
    mapping_at_start = load_statsd_mapping(config);
    registry.use_statsd_mapping(mapping_at_start.mapping);
  }

  // The mapping file the config (or HERMES_STATSD_MAPPING) names; none: an empty one.
  StatsdMappingFile load_statsd_mapping(const Config &config) {
    Options named;
    named.statsd_mapping_file = statsd_mapping_file;
    const std::string path = statsd_mapping_path(config, named);
    return !has_statsd || path.empty() ? StatsdMappingFile{} : hermes::load_statsd_mapping(path);
  }

  void log_statsd_mapping(const StatsdMappingFile &file) {
    if (!file.mapping) return;
    for (const std::string &warning : file.warnings) logger.log(LogLevel::warn, "statsd mapping", {{"warning", warning}});
    logger.log(LogLevel::info, "statsd mapping loaded", {{"rules", std::to_string(file.rules)}});
  }

  detail::PushEndpoint push_endpoint(const Options &options);
  detail::HttpResponse answer_push(const detail::HttpRequest &request, std::string_view body);

  void poll_once(int timeout_ms);
  bool reload_config();
  bool reload_token();
  bool reload_push_token();
  bool reload_tls();
  int poll_timeout(int timeout_ms, Clock::time_point now) const;
  void sweep(Clock::time_point now);
  bool render(Format format, detail::BudgetedBody &body);
  void write_body(Format format, std::string &body);
  void start_gzip(int level);
  bool compress(detail::BudgetedBody &body);
  ServerStats stats() const;

  void save_state();
  void save_state_at_stop();

  std::shared_ptr<MemoryBudget> budget; // before all that takes from it, so that it goes last
  Registry registry;
  detail::PushStore pushes;
  detail::PushTextParser push_parser;
  detail::Logger logger;
  std::string config_path;
  detail::DatagramInput input;
  detail::HttpFrontEnd http;
  detail::StatsdTcpInput statsd_tcp;
  detail::RejectLog rejects;
#ifdef HERMES_GZIP
  std::unique_ptr<detail::GzipEncoder> gzip; // null when Options::gzip_level is 0
#endif
  std::optional<double> start_time_seconds;
  std::uint64_t reloads_succeeded = 0, reloads_failed = 0;
  double last_reload_success_seconds = wall_clock_seconds();
  std::vector<pollfd> poll_fds;
  Clock::time_point next_sweep{};
  std::string statsd_mapping_file; // HERMES_STATSD_MAPPING, over the config's at each reload
  StatsdMappingFile mapping_at_start; // logged once the server says where it listens
  detail::StateKeeper state; // its writing thread ends before what is above goes
  detail::RemoteWriter remote; // last: its sending threads end first

  void remote_write_step(Clock::time_point now);
  void render_snapshot(detail::Writer &writer);
};

inline Server::Server(const Config &config, Options options)
    : impl_((detail::check_parts_built(config, options), std::make_unique<Impl>(config, options))) {
  const std::string udp = udp_endpoint(), http = http_endpoint();
  detail::LogFields fields = {{"udp", udp}, {"http", http}};
  if (impl_->input.fd(Impl::Source::unix_socket) >= 0) fields.emplace_back("unix", impl_->input.unix_path());
  const std::string statsd_tcp = impl_->statsd_tcp.listener() >= 0 ? detail::local_endpoint(impl_->statsd_tcp.listener()) : "";
  if (!statsd_tcp.empty()) fields.emplace_back("statsd_tcp", statsd_tcp);
  std::string udp_allow, http_allow;
  for (const std::string &range : options.udp_allow.texts()) udp_allow += (udp_allow.empty() ? "" : ",") + range;
  for (const std::string &range : options.http_allow.texts()) http_allow += (http_allow.empty() ? "" : ",") + range;
  if (!udp_allow.empty()) fields.emplace_back("udp_allow", udp_allow);
  if (!http_allow.empty()) fields.emplace_back("http_allow", http_allow);
  if (!options.http_token_file.empty()) fields.emplace_back("http_token_file", options.http_token_file);
  if (impl_->http.tls()) fields.emplace_back("tls_cert_file", options.tls_cert_file);
  if (impl_->http.tls() && !options.tls_client_ca_file.empty()) fields.emplace_back("tls_client_ca_file", options.tls_client_ca_file);
  fields.insert(fields.end(), {{"service", config.service_name}, {"version", HERMES_VERSION_STR}});
  impl_->logger.log(LogLevel::info, "hermes listening", fields);
  impl_->log_statsd_mapping(std::exchange(impl_->mapping_at_start, {}));
  if (has_state) impl_->state.restore(impl_->registry, monotonic_seconds());
}

inline Server::Server(Server &&) noexcept = default;
inline Server &Server::operator=(Server &&) noexcept = default;
inline Server::~Server() = default;

inline void Server::poll_once(int timeout_ms) { impl_->poll_once(timeout_ms); }

inline void Server::run(const std::atomic<bool> &stop, std::atomic<bool> *reload_requested) {
  while (!stop.load()) {
    impl_->poll_once(HERMES_POLL_INTERVAL_MS);
    if (reload_requested && reload_requested->exchange(false)) reload();
  }
  impl_->save_state_at_stop();
  impl_->remote.stop([this](detail::Writer &writer) { impl_->render_snapshot(writer); });
  impl_->rejects.flush(Impl::Clock::now(), true);
  impl_->logger.log(LogLevel::info, "hermes stopped");
}

// The config and the token files, each taken on its own: one that fails to load keeps
// what is in force, and makes the reload count as failed.
inline bool Server::reload() {
  Impl &impl = *impl_;
  const bool config = impl.reload_config();
  const bool scrape_token = impl.reload_token(), push_token = impl.reload_push_token(); // both, whatever the first did
  const bool token = scrape_token && push_token;
  const bool tls = impl.reload_tls();
  ++(config && token && tls ? impl.reloads_succeeded : impl.reloads_failed);
  if (config && token && tls) impl.last_reload_success_seconds = wall_clock_seconds();
  return config && token && tls;
}

inline bool Server::Impl::reload_config() {
  try {
    if (config_path.empty()) throw ConfigError("no config file to reload");
    Config next = load_config(config_path);
    if (!statsd_mapping_file.empty()) next.statsd.mapping_file = statsd_mapping_file; // the variable wins
    StatsdMappingFile mapping = load_statsd_mapping(next); // a bad one fails the reload, as a bad config
    for (const std::string &name : detail::reserved_push_names(next))
      if (pushes.writes(name))
        throw ConfigError(config_path + ": metric name " + name + " is written by a pushed group; delete the group first");
    const Registry::ReloadSummary summary = registry.reload(next);
    registry.use_statsd_mapping(mapping.mapping);
    log_statsd_mapping(mapping);
    pushes.reserve_names(detail::reserved_push_names(next));
    logger.log(LogLevel::info, "config reloaded",
               {{"path", config_path}, {"kept", std::to_string(summary.kept)},
                {"fresh", std::to_string(summary.fresh)}, {"removed", std::to_string(summary.removed)}});
    return true;
  } catch (const ConfigError &error) {
    logger.log(LogLevel::error, "config reload failed; the config in force stays", {{"error", error.what()}});
    return false;
  }
}

inline bool Server::Impl::reload_token() {
  if (http.token_file().empty()) return true;
  const std::string problem = http.reload_token();
  if (!problem.empty()) {
    logger.log(LogLevel::error, "token reload failed; the token in force stays", {{"error", problem}});
    return false;
  }
  logger.log(LogLevel::info, "token reloaded", {{"path", http.token_file()}});
  return true;
}

// The push token, rotated apart from the /metrics token: the jobs that push hold it.
inline bool Server::Impl::reload_push_token() {
  if (http.push_token_file().empty()) return true;
  const std::string problem = http.reload_push_token();
  if (!problem.empty()) {
    logger.log(LogLevel::error, "push token reload failed; the push token in force stays", {{"error", problem}});
    return false;
  }
  logger.log(LogLevel::info, "push token reloaded", {{"path", http.push_token_file()}});
  return true;
}

// The TLS certificate and key, read again as cert-manager or an ACME client rotates them.
inline bool Server::Impl::reload_tls() {
  if (!http.tls()) return true;
  const std::string problem = http.reload_tls();
  if (!problem.empty()) {
    logger.log(LogLevel::error, "TLS certificate reload failed; the certificate in force stays", {{"error", problem}});
    return false;
  }
  logger.log(LogLevel::info, "TLS certificate reloaded", {{"path", http.tls_cert_file()}});
  return true;
}

inline std::uint16_t Server::udp_port() const { return detail::local_port(impl_->input.fd(Impl::Source::udp)); }
inline std::uint16_t Server::http_port() const { return detail::local_port(impl_->http.listener()); }
inline std::string Server::udp_endpoint() const { return detail::local_endpoint(impl_->input.fd(Impl::Source::udp)); }
inline std::string Server::http_endpoint() const { return detail::local_endpoint(impl_->http.listener()); }
inline std::uint16_t Server::statsd_tcp_port() const {
  return impl_->statsd_tcp.listener() >= 0 ? detail::local_port(impl_->statsd_tcp.listener()) : 0;
}
inline const Registry &Server::registry() const { return impl_->registry; }
inline ServerStats Server::stats() const { return impl_->stats(); }

inline std::string Server::render(Format format) {
  impl_->registry.expire(); // a scrape never shows a series past its ttl
  impl_->pushes.expire(monotonic_seconds());
  std::string body;
  body.reserve(impl_->budget->body_bound() - 1); // the bound counts the NUL
  impl_->write_body(format, body);
  return body;
}

inline ServerStats Server::Impl::stats() const {
  ServerStats stats;
  input.add_stats(stats);
  http.add_stats(stats);
  statsd_tcp.add_stats(stats);
  stats.reloads_succeeded = reloads_succeeded;
  stats.reloads_failed = reloads_failed;
  stats.last_reload_success_seconds = last_reload_success_seconds;
  state.add_stats(stats);
  remote.add_stats(stats);
  stats.memory_budget_bytes = static_cast<double>(budget->limit());
  stats.memory_used_bytes = static_cast<double>(budget->used());
  stats.memory_committed_bytes = static_cast<double>(budget->committed());
  stats.push_groups = static_cast<double>(pushes.group_count());
  stats.push_group_bytes = static_cast<double>(pushes.bytes());
  return stats;
}

// The scrape: bring the registry up to now, take room for the body and the figures,
// then write the body, which only reads them. The series that expire are gone before
// the bound is read, so that the body is sized for the series it shows; a bound that
// fell short (a fault) is a body with no room.
inline bool Server::Impl::render(Format format, detail::BudgetedBody &body) {
  registry.expire(); // a scrape never shows a series past its ttl
  pushes.expire(monotonic_seconds());
  if (!body.reserve(budget->body_bound())) return false;
  write_body(format, body.text);
  body.plain_bytes = body.text.size();
  if (body.gzip && !compress(body)) return body.gzip = false, render(format, body); // made again, plain
  return body.settle();
}

// A long body is written HERMES_RENDER_PAUSE_STRIDE series at a time; between the parts,
// datagrams waiting on the sockets are taken into the hold, and applied once the body
// is whole.
inline void Server::Impl::write_body(Format format, std::string &body) {
  const ServerStats figures = stats();
  const detail::ProcessStats process = detail::read_process_stats(start_time_seconds);
  detail::Renderer renderer(body, registry, {registry, &figures, &process, &pushes}, format);
  while (!renderer.write_some(HERMES_RENDER_PAUSE_STRIDE)) input.hold_waiting();
  input.apply_held(registry, rejects);
}

// ----- gzip ----------------------------------------------------------------------------------

// The compressor, when Options ask for gzip: taken from the budget at start, as the
// fixed buffers are. A build without HERMES_GZIP takes only level 0.
inline void Server::Impl::start_gzip(int level) {
  if (level < 0 || level > 9) throw UsageError("Options::gzip_level: " + std::to_string(level) + " is not 0 (off) or a zlib level from 1 to 9");
#ifdef HERMES_GZIP
  if (level > 0) gzip = std::make_unique<detail::GzipEncoder>(level, budget.get());
#else
  if (level > 0) throw UsageError("Options::gzip_level: this build has no gzip; define HERMES_GZIP and link zlib (-lz)");
#endif
}

// Compresses a whole body over its own memory, taking and applying the datagrams that
// wait on the sockets between pieces: the registry is no longer read. False, with the
// body spoilt, for text that does not compress (never a real body): it is then made
// again and sent plain.
inline bool Server::Impl::compress(detail::BudgetedBody &body) {
#ifdef HERMES_GZIP
  if (gzip->compress_in_place(body.text, [this] { input.hold_waiting(), input.apply_held(registry, rejects); })) return true;
  logger.log(LogLevel::warn, "a /metrics body did not compress within its own memory; sent plain",
             {{"bytes", std::to_string(body.plain_bytes)}});
#else
  (void)body;
#endif
  return false;
}

// One step: wait for any socket, then UDP first (it cannot wait), the unix socket, StatsD
// over TCP, and HTTP last.
inline void Server::Impl::poll_once(int timeout_ms) {
  enum { udp_slot, unix_slot, http_slot };
  Clock::time_point now = Clock::now();
  poll_fds.clear();
  // A negative descriptor is skipped by poll(): no unix socket, or accepting paused.
  poll_fds.push_back({input.fd(Source::udp), POLLIN, 0});
  poll_fds.push_back({input.fd(Source::unix_socket), POLLIN, 0});
  http.add_poll_fds(poll_fds, now);
  const std::size_t statsd_tcp_slot = poll_fds.size();
  if (has_statsd) statsd_tcp.add_poll_fds(poll_fds, now);
  const int ready = detail::wait_for_events(poll_fds, poll_timeout(timeout_ms, now));
  now = Clock::now();
  const double monotonic_now = detail::seconds_of(now); // the clock monotonic_seconds() reads
  bool ingest_behind = false; // datagrams left waiting: handshakes wait, up to HERMES_TLS_HANDSHAKE_WAIT_MS
  if (ready > 0) {
    const Now received{monotonic_now, wall_clock_seconds()}; // ttl and windows on the first, _created on the second
    if (poll_fds[udp_slot].revents) ingest_behind = !input.receive(Source::udp, registry, rejects, received);
    if (poll_fds[unix_slot].revents) ingest_behind |= !input.receive(Source::unix_socket, registry, rejects, received);
    if (has_statsd) statsd_tcp.serve(poll_fds.data() + statsd_tcp_slot, registry, rejects, received, now);
  }
  if (has_statsd) statsd_tcp.close_idle(registry, rejects, now);
  http.serve(&poll_fds[http_slot], now, ingest_behind); // also ends connections past their deadline
  rejects.flush(now, false);
  sweep(now);
  if (has_state && state.due(registry, monotonic_now)) save_state();
  if (remote.enabled()) remote_write_step(now);
}

// ----- Remote write ----------------------------------------------------------------------------

// A snapshot is made as a scrape's body is: the registry brought up to now, every series
// through the writer, datagrams held between parts.
inline void Server::Impl::render_snapshot(detail::Writer &writer) {
  registry.expire();
  const ServerStats figures = stats();
  const detail::ProcessStats process = detail::read_process_stats(start_time_seconds);
  detail::Renderer renderer(writer, registry, {registry, &figures, &process, &pushes});
  while (!renderer.write_some(HERMES_RENDER_PAUSE_STRIDE)) input.hold_waiting();
  input.apply_held(registry, rejects);
}

inline void Server::Impl::remote_write_step(Clock::time_point now) {
  remote.step(now, [this](detail::Writer &writer) { render_snapshot(writer); });
}

// ----- Pushgateway API -----------------------------------------------------------------------

// PUT, POST and DELETE on /metrics/job/..., and PUT /api/v1/admin/wipe when allowed.
inline detail::PushEndpoint Server::Impl::push_endpoint(const Options &options) {
  if (!has_push || !options.push) return {};
  const bool admin = options.push_admin;
  detail::PushEndpoint endpoint;
  endpoint.takes = [admin](const detail::HttpRequest &request) {
    const std::string &method = request.method;
    if (admin && request.path == "/api/v1/admin/wipe") return method == "PUT";
    return detail::is_push_path(request.path) && (method == "PUT" || method == "POST" || method == "DELETE");
  };
  endpoint.answer = [this](const detail::HttpRequest &request, std::string_view body) { return answer_push(request, body); };
  endpoint.max_body = options.max_push_bytes;
  endpoint.token_file = options.push_token_file;
  return endpoint;
}

// A push as Pushgateway answers it: 400 with its message for a bad path or body, 200 for
// a push, 202 for a delete or a wipe; 507 when the budget or max_push_groups has no room.
inline detail::HttpResponse Server::Impl::answer_push(const detail::HttpRequest &request, std::string_view body) {
  if (request.path == "/api/v1/admin/wipe") return pushes.wipe(), detail::push_response(202, "");
  const detail::GroupingKey key = detail::parse_grouping_key(request.path);
  if (!key.problem.empty()) return detail::push_response(400, key.problem);
  if (request.method == "DELETE") return pushes.remove(key.labels), detail::push_response(202, "");
  // Pushgateway reads the delimited MetricFamily stream when the Content-Type names it
  // with both parameters, and the text format otherwise.
  const std::string_view type = detail::header(request, "content-type");
  const bool protobuf = detail::lowercase(detail::trim(type.substr(0, type.find(';')))) == "application/vnd.google.protobuf" &&
                        detail::media_parameter(type, "proto") == "io.prometheus.client.MetricFamily" &&
                        detail::media_parameter(type, "encoding") == "delimited";
  std::string error;
  auto families = protobuf ? detail::parse_push_protobuf(body, error) : push_parser.parse(body);
  if (!families) return detail::push_response(400, protobuf ? error : push_parser.error());
  const detail::PushOutcome outcome = pushes.push(key.labels, std::move(*families), request.method == "PUT", Now::current());
  return detail::push_response(outcome.status, outcome.message);
}

// ----- State file ----------------------------------------------------------------------------

// The text is made on the loop, taking waiting datagrams off the sockets every
// HERMES_STATE_PAUSE_STRIDE series as a render does; its writing runs on the keeper's thread.
inline void Server::Impl::save_state() {
  const std::uint64_t changes = state.changes(registry); // what the text holds; held datagrams come after it
  const bool made = state.make_text(registry, Now::current(), [this] { input.hold_waiting(); });
  input.apply_held(registry, rejects);
  if (made) state.write(changes, monotonic_seconds());
}

// At stop: the samples still queued on the sockets are applied, then the state is
// written, and run() returns once it is on disk.
inline void Server::Impl::save_state_at_stop() {
  if (!has_state || !state.enabled()) return;
  constexpr int most_rounds = 1024; // of HERMES_DATAGRAMS_PER_STEP: more than a receive buffer holds
  for (int round = 0; round < most_rounds; ++round) {
    const ServerStats before = stats();
    input.receive(Source::udp, registry, rejects, Now::current());
    if (input.fd(Source::unix_socket) >= 0) input.receive(Source::unix_socket, registry, rejects, Now::current());
    const ServerStats after = stats();
    if (after.udp_packets + after.unix_datagrams == before.udp_packets + before.unix_datagrams) break;
  }
  state.wait();
  if (!state.changed(registry)) return;
  const std::uint64_t changes = state.changes(registry);
  if (!state.make_text(registry, Now::current(), {})) return;
  state.write(changes, monotonic_seconds());
  state.wait();
}

// Once a second, whether or not anyone scrapes: frees the memory of stale series and
// moves summary windows on.
inline void Server::Impl::sweep(Clock::time_point now) {
  if (now < next_sweep) return;
  registry.expire();
  pushes.expire(detail::seconds_of(now));
  input.ask_kernel_drops();
  next_sweep = now + std::chrono::seconds(1);
}

// How long poll() may sleep: the caller's timeout (negative: no limit), or less when a
// connection deadline, the end of an accept pause or the next reject summary falls due.
inline int Server::Impl::poll_timeout(int timeout_ms, Clock::time_point now) const {
  std::optional<Clock::time_point> due = http.due(now);
  if (const auto idle = statsd_tcp.due(now); idle && (!due || *idle < *due)) due = idle;
  if (const auto summary = rejects.due(); summary && (!due || *summary < *due)) due = summary;
  if (const auto snapshot = remote.next_due(); snapshot && (!due || *snapshot < *due)) due = snapshot;
  if (!due) return timeout_ms;
  const auto until_due = std::chrono::ceil<std::chrono::milliseconds>(*due - now).count();
  const int wait = static_cast<int>(std::clamp<std::int64_t>(until_due, 0, INT32_MAX));
  return timeout_ms < 0 ? wait : std::min(timeout_ms, wait);
}

} // namespace hermes

// ===== CLIENT =============================================================================

namespace hermes {

namespace detail {

// One sample as the original's clients write it: `operation` is a gauge's (set,
// increment, decrement), "observe" for an observation, or null for a counter.
inline void append_sample_json(std::string &out, std::string_view metric, const Labels &labels, double value,
                               const char *operation) {
  const bool observation = operation && std::string_view(operation) == "observe";
  out += "{\"metric_name\":";
  append_json_string(out, metric);
  out += ",\"payload\":{\"labels\":{";
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (i > 0) out += ',';
    append_json_string(out, labels[i].first);
    out += ':';
    append_json_string(out, labels[i].second);
  }
  out += observation ? "},\"observation\":" : "},\"value\":";
  append_double(out, value);
  if (operation && !observation) {
    out += ",\"operation\":";
    append_json_string(out, operation);
  }
  out += "}}";
}

} // namespace detail

inline Batch &Batch::add(std::string_view metric, const Labels &labels, double value, const char *operation) {
  if (!std::isfinite(value)) return *this;
  if (samples_++ > 0) json_ += ',';
  detail::append_sample_json(json_, metric, labels, value, operation);
  return *this;
}
inline Batch &Batch::increment_counter(std::string_view metric, const Labels &labels, double by) {
  return add(metric, labels, by, nullptr);
}
inline Batch &Batch::set_gauge(std::string_view metric, const Labels &labels, double value) {
  return add(metric, labels, value, "set");
}
inline Batch &Batch::increment_gauge(std::string_view metric, const Labels &labels, double by) {
  return add(metric, labels, by, "increment");
}
inline Batch &Batch::decrement_gauge(std::string_view metric, const Labels &labels, double by) {
  return add(metric, labels, by, "decrement");
}
inline Batch &Batch::observe(std::string_view metric, const Labels &labels, double value) {
  return add(metric, labels, value, "observe");
}

struct Client::Impl {
  detail::FileDescriptor socket;
};

inline Client::Client(const std::string &host, std::uint16_t port) : impl_(std::make_unique<Impl>()) {
  const detail::SocketAddress address = detail::resolve(host, port, SOCK_DGRAM, false);
  impl_->socket = detail::open_socket(address, SOCK_DGRAM, "client");
  // Connected, so each send names no address and the kernel checks it once.
  if (::connect(impl_->socket.get(), address.get(), address.length) != 0)
    throw SocketError(detail::system_error_message("connect " + detail::format_endpoint(address.get()), errno));
}

inline Client::Client(Client &&) noexcept = default;
inline Client &Client::operator=(Client &&) noexcept = default;
inline Client::~Client() = default;

inline bool Client::send(std::string_view datagram) {
  const ssize_t sent = detail::retry_on_eintr(
      [&] { return ::send(impl_->socket.get(), datagram.data(), datagram.size(), MSG_NOSIGNAL | MSG_DONTWAIT); });
  return sent == static_cast<ssize_t>(datagram.size());
}

inline bool Client::send(const Batch &batch) { return batch.size() > 0 && send(batch.json()); }

inline bool Client::send_sample(std::string_view metric, const Labels &labels, double value, const char *operation) {
  if (!std::isfinite(value)) return false;
  std::string json;
  detail::append_sample_json(json, metric, labels, value, operation);
  return send(json);
}

inline bool Client::increment_counter(std::string_view metric, const Labels &labels, double by) {
  return send_sample(metric, labels, by, nullptr);
}
inline bool Client::set_gauge(std::string_view metric, const Labels &labels, double value) {
  return send_sample(metric, labels, value, "set");
}
inline bool Client::increment_gauge(std::string_view metric, const Labels &labels, double by) {
  return send_sample(metric, labels, by, "increment");
}
inline bool Client::decrement_gauge(std::string_view metric, const Labels &labels, double by) {
  return send_sample(metric, labels, by, "decrement");
}
inline bool Client::observe(std::string_view metric, const Labels &labels, double value) {
  return send_sample(metric, labels, value, "observe");
}

} // namespace hermes

#endif // HERMES_HPP
