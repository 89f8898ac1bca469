// csrc/cuda/conv2d_maxpool_cuda.cu compiled by the host compiler for the CUDA emulator (runtime.cuh,
// DLKERNELS_CUDA_EMU).
#include "cuda/conv2d_maxpool_cuda.cu"
