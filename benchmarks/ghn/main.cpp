/// \file
/// \brief main() of bench_ghn: the benchmarks of benchmarks/ghn/*.cpp register themselves at static
/// initialisation; this file only runs them.
#include <benchmark/benchmark.h>

BENCHMARK_MAIN();
