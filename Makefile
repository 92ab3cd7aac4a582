# Hermes. `make run` builds and starts the gateway on config.json; `make test` builds and
# runs every test and ends with one line "N passed, N failed".

CXX ?= g++
CXXFLAGS ?= -O2
WARNINGS := -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Werror
HERMES_FLAGS := -std=c++17 $(WARNINGS)
BUILD := build

UNIT_SOURCES := $(wildcard tests/test_*.cpp) tests/doctest_main.cpp
UNIT_OBJECTS := $(UNIT_SOURCES:tests/%.cpp=$(BUILD)/%.o)

.PHONY: all run test clean deps test-deps

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

deps:
	@tests/ensure.sh header:picojson.h:picojson-dev

test-deps: deps
	@tests/ensure.sh header:doctest/doctest.h:doctest-dev command:python3:python3 command:promtool:prometheus command:prometheus:prometheus

clean:
	rm -rf hermes $(BUILD)
