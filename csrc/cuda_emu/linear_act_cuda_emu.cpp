// csrc/cuda/linear_act_cuda.cu compiled by the host compiler for the CUDA emulator (runtime.cuh, DLKERNELS_CUDA_EMU).
#include "cuda/linear_act_cuda.cu"
