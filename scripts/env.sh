# Sourced by the scripts: one BLAS thread. PyTensor's small matrix products are far slower with
# OpenBLAS threads fighting over 2 busy cores (170 ms vs 1.6 ms per step measured here).
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export MPLBACKEND=Agg
