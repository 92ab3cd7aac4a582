# Hermes. `make run` builds and starts the gateway on config.json; `make test` builds and
# runs every test and ends with one line "N passed, N failed"; `make check` builds and
# runs only the doctest suite, for the edit-compile-test loop.
#
# CXXFLAGS (such as -DHERMES_MAX_CONNECTIONS=256), CPPFLAGS and LDFLAGS reach every
# build: the daemon, the static binary that ships, the cross builds and the tests.
# `make help` lists the targets.

# As many jobs as cores unless the command line says -j (GNU make 4.3 lets a -j given
# there win over this line, 4.4 also shows it in MAKEFLAGS); a sub-make shares its
# parent's jobs. The test files, each its own translation unit, then compile side by side.
ifeq ($(MAKELEVEL)$(filter -j%,$(MAKEFLAGS)),0)
MAKEFLAGS += -j$(shell nproc 2>/dev/null || echo 1)
endif

CXX ?= g++
CXXFLAGS ?= -O2
WARNINGS := -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Werror
HERMES_FLAGS := -std=c++17 $(WARNINGS) $(CPPFLAGS)
# Optional parts, one line each: the macro that compiles a part in and the libraries it
# links. The daemon, the static build and the tests take them; the cross builds take
# those of CROSS_FEATURE_FLAGS.
FEATURE_FLAGS :=
FEATURE_LIBS :=
# gzip /metrics bodies for scrapers that ask, with zlib (zlib1g-dev)
FEATURE_FLAGS += -DHERMES_GZIP
FEATURE_LIBS += -lz
# HTTPS on the HTTP port, with mbedTLS (libmbedtls-dev)
FEATURE_FLAGS += -DHERMES_TLS
FEATURE_LIBS += -lmbedtls -lmbedx509 -lmbedcrypto
# StatsD mapping files (statsd_exporter's YAML), with libyaml (libyaml-dev)
FEATURE_FLAGS += -DHERMES_YAML
FEATURE_LIBS += -lyaml
BUILD := build

# Largest first, so that the longest compiles start first and the jobs end together.
UNIT_SOURCES := $(shell ls -S tests/test_*.cpp) tests/doctest_main.cpp
UNIT_OBJECTS := $(UNIT_SOURCES:tests/%.cpp=$(BUILD)/%.o)
# The test programs build at -Og, after CXXFLAGS: each test file compiles most of the
# header again, and -Og takes about half of -O2's time, for a suite that runs in 3 s.
# The binaries the Python suites run keep CXXFLAGS' -O, the sanitizer and fuzz builds
# their -O1. `make check UNIT_OPT=` builds the tests with CXXFLAGS alone.
UNIT_OPT ?= -Og

.PHONY: all help run test check bench soak clean deps check-deps test-deps statsd-clients push-clients npm-clients bench-deps fuzz fuzz-smoke fuzz-deps sanitize valgrind valgrind-deps static tiny cross cross-deps

all: hermes

help:
	@echo 'make              build ./hermes (dynamic, against libc and libstdc++)'
	@echo 'make run          build ./hermes and start it on config.json: UDP 7789, HTTP 8080'
	@echo 'make check        build and run the doctest suite only: the edit-compile-test loop'
	@echo 'make test         build and run every test suite; ends with "N passed, N failed"'
	@echo 'make bench        the benchmark: ingest against a bare receiver, scrapes, state file, Pushgateway beside'
	@echo 'make soak         10 minutes (SOAK_SECONDS) of mixed load, scrapes and SIGHUPs; memory and latency'
	@echo 'make static       build/static/hermes: static, stripped, for FROM scratch and boards'
	@echo 'make tiny         build/tiny/hermes: static, every HERMES_NO_* part left out: JSON over UDP, text /metrics'
	@echo 'make cross        ARCH=aarch64 or armhf: static hermes and the doctest suite under qemu'
	@echo 'make sanitize     the unit and black-box tests under AddressSanitizer and UBSan'
	@echo 'make valgrind     the integration and state tests under valgrind memcheck'
	@echo 'make fuzz         every libFuzzer target: replay seeds, then FUZZ_SECONDS (60) each'
	@echo 'make fuzz-smoke   make fuzz for 20 seconds a target, as CI runs it'
	@echo 'make clean        remove ./hermes and build/'
	@echo 'make help         this list'
	@echo 'make deps         install what ./hermes needs to build (picojson-dev, zlib1g-dev, libmbedtls-dev, libyaml-dev; as root on Debian)'
	@echo 'make check-deps   install what make check needs too (doctest-dev, openssl)'
	@echo 'make test-deps    install what make test needs (prometheus, clang, faketime, ...)'
	@echo 'make statsd-clients  install the StatsD clients make test pushes with'
	@echo 'make push-clients    install prom-client and build the push package of client_golang, which make test pushes with'
	@echo 'make npm-clients     install the npm clients (hot-shots, prom-client) into build/npm in one npm run'
	@echo 'make fuzz-deps, valgrind-deps, cross-deps, bench-deps  install what those gates need'
	@echo 'Builds run as many jobs as cores unless -j is given; CXXFLAGS, CPPFLAGS, LDFLAGS reach all.'

hermes: main.cpp hermes.hpp | deps
	$(CXX) $(HERMES_FLAGS) $(FEATURE_FLAGS) $(CXXFLAGS) $(LDFLAGS) -o $@ main.cpp $(FEATURE_LIBS)

run: hermes
	./hermes config.json

test: hermes $(BUILD)/unit_tests $(BUILD)/allocation_tests $(BUILD)/static/hermes $(BUILD)/tiny/hermes $(BUILD)/statsd_send | test-deps statsd-clients push-clients
	@tests/run.sh

check: $(BUILD)/unit_tests
	$(BUILD)/unit_tests --no-intro=true

# Each test file is its own translation unit including hermes.hpp, so a definition that
# is not inline fails the link.
$(BUILD)/unit_tests: $(UNIT_OBJECTS)
	$(CXX) $(CXXFLAGS) $(LDFLAGS) -pthread -o $@ $^ $(FEATURE_LIBS)

$(BUILD)/allocation_tests: $(BUILD)/allocations.o $(BUILD)/doctest_main.o
	$(CXX) $(CXXFLAGS) $(LDFLAGS) -pthread -o $@ $^ $(FEATURE_LIBS)

$(BUILD)/%.o: tests/%.cpp hermes.hpp tests/helpers.hpp tests/reading.hpp | check-deps
	@mkdir -p $(BUILD)
	$(CXX) $(HERMES_FLAGS) $(FEATURE_FLAGS) $(CXXFLAGS) $(UNIT_OPT) -pthread -I. -DHERMES_TEST_DIR='"$(CURDIR)/tests"' -c -o $@ $<

$(BUILD)/test_remote_write.o: tests/remote_write_decode.hpp

# The C example of a StatsD sender, built as a board's C compiler would take it;
# tests/statsd_clients.py runs it against ./hermes.
$(BUILD)/statsd_send: example/statsd_send.c
	@mkdir -p $(BUILD)
	$(CC) -std=c99 $(WARNINGS) -O2 -o $@ $<

# Real StatsD clients for tests/statsd_clients.py and tests/statsd_tcp.py: Debian's python3-statsd, hot-shots
# (DogStatsD and telegraf tags) from npm, and nc for the README's one-liner.
statsd-clients: npm-clients
	@tests/ensure.sh debian-python:statsd:python3-statsd command:nc:netcat-openbsd

# Real Pushgateway clients for tests/push_clients.py: prom-client from npm, and
# client_golang's push package from Debian (test-deps installs it), built in GOPATH mode.
push-clients: npm-clients $(BUILD)/push_golang

# The clients from npm, into build/npm in one run: npm removes from its directory what
# a run does not name.
HOT_SHOTS := hot-shots@17.1.1
PROM_CLIENT := prom-client@15.1.3

npm-clients:
	@tests/ensure.sh command:node:nodejs command:npm:npm
	@test -f $(BUILD)/npm/node_modules/hot-shots/package.json && test -f $(BUILD)/npm/node_modules/prom-client/package.json || \
	  npm install --prefix $(BUILD)/npm --no-save --no-audit --no-fund --omit=optional $(HOT_SHOTS) $(PROM_CLIENT)

# Built once; its cache in build/go-cache. GOPROXY=off: Debian's sources, nothing fetched.
$(BUILD)/push_golang: tests/clients/push_golang.go | test-deps
	@mkdir -p $(BUILD)
	GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$(CURDIR)/$(BUILD)/go-cache GOPROXY=off GOFLAGS= go build -o $@ $<

# The benchmark: hermes against a bare UDP receiver, scrapes of up to 100k series, and
# state writes of 100k series against ingest.
$(BUILD)/bench: tests/bench/bench.cpp hermes.hpp | deps
	@mkdir -p $(BUILD)
	$(CXX) -std=c++17 -O2 $(WARNINGS) $(CPPFLAGS) $(FEATURE_FLAGS) $(CXXFLAGS) $(LDFLAGS) -pthread -I. -o $@ $< $(FEATURE_LIBS)

bench: hermes $(BUILD)/static/hermes $(BUILD)/bench | bench-deps
	$(BUILD)/bench ./hermes $(BUILD)/static/hermes

# What the bench measures hermes beside: Debian's Pushgateway (its --peers part) and
# Prometheus in agent mode (its remote-write part).
bench-deps:
	@tests/ensure.sh file:/usr/bin/prometheus-pushgateway:prometheus-pushgateway file:/usr/bin/prometheus:prometheus

# The soak, not part of make test: the mixed workload of tests/pressure.py for
# SOAK_SECONDS, a scrape every second and a SIGHUP every 30 s, reported per minute.
SOAK_SECONDS ?= 600

soak: hermes
	@tests/ensure.sh command:python3:python3
	python3 tests/soak.py ./hermes $(SOAK_SECONDS)

# ---- shipping ------------------------------------------------------------------------------

# A static, stripped binary for FROM scratch images and small boards. picojson includes
# <iostream> for stream operators Hermes never calls; in GCC 12 that header carries a
# static initializer that links all of iostreams and locales (600 KB). Its guard macro,
# predefined here with <istream> and <ostream> included in its place, keeps it out.
# The linker's warning about getaddrinfo is true: without a resolver in the image,
# addresses must be numeric. mbedTLS (HERMES_TLS) adds about 670 KiB, libyaml and the C
# library's regex (HERMES_YAML) about 210 KiB, zlib (HERMES_GZIP) 50 KiB: 1.3 MiB without
# them. The goal is 2 MiB with everything in; the limit holds the size where it is
# (2.37 MiB) until the parts are trimmed.
STATIC_LIMIT := 2621440
# CXXFLAGS come before these, so a -D in them reaches the binary that ships while -Os
# still wins over their -O2.
STATIC_FLAGS := -Os -static -s -ffunction-sections -fdata-sections -Wl,--gc-sections \
  -include istream -include ostream -D_GLIBCXX_IOSTREAM=1

# The smallest daemon: JSON datagrams over UDP (and the unix socket) in, /metrics as text
# and OpenMetrics out, numeric addresses only. Each HERMES_NO_* macro, one line each,
# leaves a part out (see the doc block of hermes.hpp), and no optional library is linked.
# The goal was 600 KiB, but glibc's static C library alone is 667 KiB for a C program
# that calls printf, and libstdc++'s strings, maps and number conversions add
# 150 KiB more: the limit holds the size where it is. A smaller binary needs a C++
# runtime built on musl, which Debian does not ship.
TINY_FLAGS :=
TINY_FLAGS += -DHERMES_NO_STATSD
TINY_FLAGS += -DHERMES_NO_PROTOBUF
TINY_FLAGS += -DHERMES_NO_STATE
TINY_FLAGS += -DHERMES_NO_PUSH
TINY_FLAGS += -DHERMES_NO_REMOTE_WRITE
TINY_FLAGS += -DHERMES_NO_RESOLVER
TINY_LIMIT := 1310720

$(BUILD)/tiny/hermes: main.cpp hermes.hpp | deps
	@mkdir -p $(BUILD)/tiny
	$(CXX) $(HERMES_FLAGS) $(TINY_FLAGS) $(CXXFLAGS) $(STATIC_FLAGS) $(LDFLAGS) -o $@ main.cpp

tiny: $(BUILD)/tiny/hermes
	@size=$$(stat -c %s $<); echo "$<: static, stripped, without $(TINY_FLAGS:-DHERMES_NO_%=%), $$size bytes (limit $(TINY_LIMIT))"; \
	  test $$size -le $(TINY_LIMIT) || { echo "$< is larger than $(TINY_LIMIT) bytes"; exit 1; }

$(BUILD)/static/hermes: main.cpp hermes.hpp | deps
	@mkdir -p $(BUILD)/static
	$(CXX) $(HERMES_FLAGS) $(FEATURE_FLAGS) $(CXXFLAGS) $(STATIC_FLAGS) $(LDFLAGS) -o $@ main.cpp $(FEATURE_LIBS)

static: $(BUILD)/static/hermes
	@size=$$(stat -c %s $<); echo "$<: static, stripped, $$size bytes (limit $(STATIC_LIMIT))"; \
	  test $$size -le $(STATIC_LIMIT) || { echo "$< is larger than $(STATIC_LIMIT) bytes"; exit 1; }

# Cross builds for embedded Linux, static so that qemu-user runs them without a sysroot:
# make cross ARCH=aarch64 (or armhf) builds hermes and the doctest suite for the board
# and runs the suite under qemu.
ARCH ?= aarch64
CROSS_aarch64 := aarch64-linux-gnu
CROSS_armhf := arm-linux-gnueabihf
QEMU_aarch64 := qemu-aarch64
QEMU_armhf := qemu-arm
CROSS := $(CROSS_$(ARCH))
CROSS_BUILD := $(BUILD)/$(ARCH)
CROSS_FLAGS := $(HERMES_FLAGS) -Wno-psabi -isystem $(CROSS_BUILD)/include # psabi: notes on an ABI change of GCC 7
# A board reached over a network it does not trust needs TLS most: the cross builds have
# it, with Debian's mbedTLS for the board's architecture (multiarch).
DEB_ARCH_aarch64 := arm64
DEB_ARCH_armhf := armhf
DEB_ARCH := $(DEB_ARCH_$(ARCH))
CROSS_FEATURE_FLAGS := -DHERMES_TLS
CROSS_FEATURE_LIBS := -lmbedtls -lmbedx509 -lmbedcrypto

cross: | cross-deps
	@test -n "$(CROSS)" || { echo "ARCH must be aarch64 or armhf"; exit 1; }
	@mkdir -p $(CROSS_BUILD)/include && cp /usr/include/picojson.h $(CROSS_BUILD)/include/ && cp -r /usr/include/doctest $(CROSS_BUILD)/include/
	$(CROSS)-g++ $(CROSS_FLAGS) $(CROSS_FEATURE_FLAGS) $(CXXFLAGS) $(STATIC_FLAGS) $(LDFLAGS) -o $(CROSS_BUILD)/hermes main.cpp \
	  $(CROSS_FEATURE_LIBS)
	$(CROSS)-g++ $(CROSS_FLAGS) $(CROSS_FEATURE_FLAGS) $(CXXFLAGS) -O1 -static -pthread -I. -DHERMES_TEST_DIR='"$(CURDIR)/tests"' \
	  $(LDFLAGS) -o $(CROSS_BUILD)/unit_tests $(UNIT_SOURCES) $(CROSS_FEATURE_LIBS)
	@file $(CROSS_BUILD)/hermes | grep -q "statically linked" && echo "$(CROSS_BUILD)/hermes: $$(stat -c %s $(CROSS_BUILD)/hermes) bytes"
	$(QEMU_$(ARCH)) $(CROSS_BUILD)/hermes --version
	$(QEMU_$(ARCH)) $(CROSS_BUILD)/unit_tests --no-intro=true --test-case-exclude='*the kernel drops*'
# qemu-user passes on the kernel's drop count neither way (getsockopt SO_MEMINFO, the
# SO_RXQ_OVFL data on datagrams), so the tests of it run natively (make test), not under
# emulation.

cross-deps:
	@tests/ensure.sh command:$(CROSS)-g++:g++-$(CROSS) command:$(QEMU_$(ARCH)):qemu-user command:file:file
	@test -e /usr/lib/$(CROSS)/libmbedtls.a || dpkg --print-foreign-architectures | grep -qx $(DEB_ARCH) || \
	  dpkg --add-architecture $(DEB_ARCH) # root's, as ensure.sh's apt-get is
	@tests/ensure.sh file:/usr/lib/$(CROSS)/libmbedtls.a:libmbedtls-dev:$(DEB_ARCH)

# ---- the heavier gates, run by CI after make test -----------------------------------------

# libFuzzer targets for the JSON and StatsD datagram paths, the config loader, the HTTP
# parser, the state file reader, the StatsD mapping file and mapped ingest, and remote write's
# snappy and WriteRequest encoders. Each first replays its committed seeds and
# regressions, then explores for FUZZ_SECONDS.
FUZZ_CXX ?= clang++-14
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := datagram statsd config http state mapping mapped remote_write push
FUZZ_FLAGS := -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I.

$(BUILD)/fuzz_%: tests/fuzz/fuzz_%.cpp hermes.hpp tests/reading.hpp | fuzz-deps
	@mkdir -p $(BUILD)
	$(FUZZ_CXX) $(FUZZ_FLAGS) $(FEATURE_FLAGS) -o $@ $< $(FEATURE_LIBS)

$(BUILD)/fuzz_remote_write: tests/remote_write_decode.hpp

fuzz: $(FUZZ_TARGETS:%=$(BUILD)/fuzz_%)
	@for target in $(FUZZ_TARGETS); do \
	  mkdir -p $(BUILD)/corpus/$$target tests/fuzz/regressions/$$target; \
	  log=$(BUILD)/fuzz_$$target.log; \
	  echo "== fuzz_$$target: replay tests/fuzz/corpus/$$target and tests/fuzz/regressions/$$target, then $(FUZZ_SECONDS)s"; \
	  if ! $(BUILD)/fuzz_$$target -runs=0 -artifact_prefix=$(BUILD)/ \
	         tests/fuzz/corpus/$$target tests/fuzz/regressions/$$target >$$log 2>&1 || \
	     ! $(BUILD)/fuzz_$$target -max_total_time=$(FUZZ_SECONDS) -timeout=5 -rss_limit_mb=1024 -print_final_stats=1 \
	         -artifact_prefix=$(BUILD)/ $(BUILD)/corpus/$$target tests/fuzz/corpus/$$target >>$$log 2>&1; then \
	    tail -n 40 $$log; echo "fuzz_$$target FAILED: the input is in $(BUILD)/; add it to tests/fuzz/regressions/$$target"; \
	    exit 1; \
	  fi; \
	  grep -E '^stat::number_of_executed_units' $$log; \
	done

fuzz-smoke:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=20

# Tests that measure the heap with mallinfo2(), which sees nothing of the allocators
# AddressSanitizer and valgrind put in the C library's place; make check and make test run them.
HEAP_MEASURES := *per TLS connection memory*

# The unit tests and the black-box test again, built with AddressSanitizer and
# UndefinedBehaviorSanitizer: any finding fails the run.
SANITIZE_FLAGS := -std=c++17 -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

# Each test file its own object, as for make check, so that they compile side by side.
SANITIZE_OBJECTS := $(UNIT_SOURCES:tests/%.cpp=$(BUILD)/sanitize/%.o)

$(BUILD)/sanitize/%.o: tests/%.cpp hermes.hpp tests/helpers.hpp tests/reading.hpp tests/remote_write_decode.hpp | test-deps
	@mkdir -p $(BUILD)/sanitize
	$(CXX) $(SANITIZE_FLAGS) $(WARNINGS) $(CPPFLAGS) $(FEATURE_FLAGS) -pthread -I. -DHERMES_TEST_DIR='"$(CURDIR)/tests"' -c -o $@ $<

$(BUILD)/sanitize/unit_tests: $(SANITIZE_OBJECTS)
	$(CXX) $(SANITIZE_FLAGS) -pthread -o $@ $^ $(FEATURE_LIBS)

$(BUILD)/sanitize/hermes: main.cpp hermes.hpp | test-deps
	@mkdir -p $(BUILD)/sanitize
	$(CXX) $(SANITIZE_FLAGS) $(WARNINGS) $(CPPFLAGS) $(FEATURE_FLAGS) -o $@ main.cpp $(FEATURE_LIBS)

sanitize: $(BUILD)/sanitize/unit_tests $(BUILD)/sanitize/hermes | test-deps
	$(BUILD)/sanitize/unit_tests --no-intro=true --test-case-exclude='$(HEAP_MEASURES)'
	python3 tests/blackbox.py $(BUILD)/sanitize/hermes
	python3 tests/tls.py $(BUILD)/sanitize/hermes

# The integration tests (a real Server over loopback sockets), the state file's and
# TLS's under valgrind memcheck: any error or leak fails the run.
valgrind: $(BUILD)/unit_tests | valgrind-deps
	valgrind --quiet --error-exitcode=99 --leak-check=full --show-leak-kinds=all --errors-for-leak-kinds=all \
	  $(BUILD)/unit_tests --no-intro=true --source-file='*test_server.cpp,*test_state.cpp,*test_tls.cpp' \
	  --test-case-exclude='$(HEAP_MEASURES)'

deps:
	@tests/ensure.sh header:picojson.h:picojson-dev header:zlib.h:zlib1g-dev header:mbedtls/ssl.h:libmbedtls-dev header:yaml.h:libyaml-dev

# What `make check` needs, and no more, so that the edit loop installs nothing else.
check-deps: deps
	@tests/ensure.sh header:doctest/doctest.h:doctest-dev command:openssl:openssl \
	  file:/etc/ssl/certs/ca-certificates.crt:ca-certificates # openssl makes test_tls' certificates; the bundle, remote write's default CAs

fuzz-deps: deps
	@tests/ensure.sh command:$(FUZZ_CXX):clang-14 fuzzer:$(FUZZ_CXX):libclang-rt-14-dev

valgrind-deps:
	@tests/ensure.sh command:valgrind:valgrind

test-deps: deps
	@tests/ensure.sh header:doctest/doctest.h:doctest-dev command:python3:python3 command:promtool:prometheus \
	  command:prometheus:prometheus command:clang++:clang python:yaml:python3-yaml \
	  file:/usr/share/i18n/locales/de_DE:locales command:localedef:libc-bin command:faketime:faketime \
	  command:stunnel4:stunnel4 command:openssl:openssl \
	  debian-python:prometheus_client.openmetrics.parser:python3-prometheus-client debian-python:snappy:python3-snappy debian-python:bcrypt:python3-bcrypt \
	  file:/usr/bin/prometheus-pushgateway:prometheus-pushgateway
	@tests/ensure.sh command:go:golang-go \
	  file:/usr/share/gocode/src/github.com/prometheus/client_golang/prometheus/push/push.go:golang-github-prometheus-client-golang-dev
	@tests/ensure.sh command:curl:curl # the README's examples, run by tests/docs.py

clean:
	rm -rf hermes $(BUILD)
