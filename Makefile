# Hermes. `make run` builds and starts the gateway on config.json; `make test` builds and
# runs every test and ends with one line "N passed, N failed".

CXX ?= g++
CXXFLAGS ?= -O2
WARNINGS := -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Werror
HERMES_FLAGS := -std=c++17 $(WARNINGS)
BUILD := build

UNIT_SOURCES := $(wildcard tests/test_*.cpp) tests/doctest_main.cpp
UNIT_OBJECTS := $(UNIT_SOURCES:tests/%.cpp=$(BUILD)/%.o)

.PHONY: all run test clean deps test-deps fuzz fuzz-smoke fuzz-deps sanitize valgrind valgrind-deps

all: hermes

hermes: main.cpp hermes.hpp | deps
	$(CXX) $(HERMES_FLAGS) $(CXXFLAGS) -o $@ main.cpp

run: hermes
	./hermes config.json

test: hermes $(BUILD)/unit_tests | test-deps
	@tests/run.sh

# Each test file is its own translation unit including hermes.hpp, so a definition that
# is not inline fails the link.
$(BUILD)/unit_tests: $(UNIT_OBJECTS)
	$(CXX) $(CXXFLAGS) -o $@ $^

$(BUILD)/%.o: tests/%.cpp hermes.hpp tests/helpers.hpp | test-deps
	@mkdir -p $(BUILD)
	$(CXX) $(HERMES_FLAGS) $(CXXFLAGS) -I. -DHERMES_TEST_DIR='"$(CURDIR)/tests"' -c -o $@ $<

# ---- the heavier gates, run by CI after make test -----------------------------------------

# libFuzzer targets for the datagram path, the config loader and the HTTP parser. Each
# first replays its committed seeds and regressions, then explores for FUZZ_SECONDS.
FUZZ_CXX ?= clang++-14
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := datagram config http
FUZZ_FLAGS := -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I.

$(BUILD)/fuzz_%: tests/fuzz/fuzz_%.cpp hermes.hpp | fuzz-deps
	@mkdir -p $(BUILD)
	$(FUZZ_CXX) $(FUZZ_FLAGS) -o $@ $<

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

# The unit tests and the black-box test again, built with AddressSanitizer and
# UndefinedBehaviorSanitizer: any finding fails the run.
SANITIZE_FLAGS := -std=c++17 -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

sanitize: | test-deps
	@mkdir -p $(BUILD)/sanitize
	$(CXX) $(SANITIZE_FLAGS) $(WARNINGS) -I. -DHERMES_TEST_DIR='"$(CURDIR)/tests"' -o $(BUILD)/sanitize/unit_tests $(UNIT_SOURCES)
	$(CXX) $(SANITIZE_FLAGS) $(WARNINGS) -o $(BUILD)/sanitize/hermes main.cpp
	$(BUILD)/sanitize/unit_tests --no-intro=true
	python3 tests/blackbox.py $(BUILD)/sanitize/hermes

# The integration tests (a real Server over loopback sockets) under valgrind memcheck:
# any error or leak fails the run.
valgrind: $(BUILD)/unit_tests | valgrind-deps
	valgrind --quiet --error-exitcode=99 --leak-check=full --show-leak-kinds=all --errors-for-leak-kinds=all \
	  $(BUILD)/unit_tests --no-intro=true --source-file='*test_server.cpp'

deps:
	@tests/ensure.sh header:picojson.h:picojson-dev

fuzz-deps: deps
	@tests/ensure.sh command:$(FUZZ_CXX):clang-14 fuzzer:$(FUZZ_CXX):libclang-rt-14-dev

valgrind-deps:
	@tests/ensure.sh command:valgrind:valgrind

test-deps: deps
	@tests/ensure.sh header:doctest/doctest.h:doctest-dev command:python3:python3 command:promtool:prometheus command:prometheus:prometheus

clean:
	rm -rf hermes $(BUILD)
