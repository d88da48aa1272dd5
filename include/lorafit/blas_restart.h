// Start the process again with OpenBLAS kernels the CPU can run, where OpenBLAS fell back to
// slower ones (kernels.h: blas_core, blas_core_suggested). For the main() of a program: it may
// exec, so call it first, before threads, files or MPI.
#pragma once

namespace lorafit::kernels {

// OpenBLAS chooses its kernels from the CPU model when it is loaded, before main, and reads
// OPENBLAS_CORETYPE only then; on a CPU model newer than the library (Debian 12's 0.3.21 on an
// Emerald Rapids Xeon) it falls back to SSE3 kernels, about 5x slower. Then this starts the
// process again, once, with OPENBLAS_CORETYPE set to what the CPU can run (and
// LORAFIT_BLAS_FALLBACK naming the core OpenBLAS had chosen, for `lorafit --version`). A user's
// own OPENBLAS_CORETYPE, and LORAFIT_BLAS_KEEP=1, leave OpenBLAS's choice alone; so does
// valgrind (its preload in LD_PRELOAD), whose exec would leave the tool. Where it does not
// restart although it would help, it prints a warning with the setting to use.
void restart_with_vector_blas(char** argv);

}  // namespace lorafit::kernels
