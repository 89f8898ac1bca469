// csrc/cuda/ptx_probe_cuda.cu compiled by the host compiler for the CUDA emulator (runtime.cuh, DLKERNELS_CUDA_EMU).
#include "cuda/ptx_probe_cuda.cu"
