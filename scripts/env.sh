# Sourced by the scripts: one BLAS thread. PyTensor's small matrix products are far slower with
# OpenBLAS threads fighting over 2 busy cores (170 ms vs 1.6 ms per step measured here).
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export MPLBACKEND=Agg
# Keep glibc from returning the step's MiB-sized temporaries to the OS and re-faulting them every
# step (measured: a full-batch step 5.3 ms -> 1.7 ms; benchmarks/perf/README.md, section 6).
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=536870912
