// csrc/cuda/max_pool2d_cuda.cu compiled by the host compiler for the CUDA emulator (runtime.cuh, DLKERNELS_CUDA_EMU).
#include "cuda/max_pool2d_cuda.cu"
