#pragma once
// A decoder of the test's own for what remote write sends.
#include "hermes.hpp"
