// main() of the Google Benchmark programs in bench/: BENCHMARK_MAIN, after the restart with
// vector OpenBLAS kernels that lorafit itself does (lorafit/blas_restart.h).
#pragma once
#include <benchmark/benchmark.h>

#include "lorafit/blas_restart.h"

#define LORAFIT_BENCHMARK_MAIN()                                            \
  int main(int argc, char** argv) {                                         \
    lorafit::kernels::restart_with_vector_blas(argv);                       \
    benchmark::Initialize(&argc, argv);                                     \
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;       \
    benchmark::RunSpecifiedBenchmarks();                                    \
    benchmark::Shutdown();                                                  \
    return 0;                                                               \
  }
