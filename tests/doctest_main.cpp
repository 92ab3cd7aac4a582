// The doctest runner. Every tests/test_*.cpp is its own translation unit that includes
// hermes.hpp, so the link also checks that the header defines nothing twice.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
