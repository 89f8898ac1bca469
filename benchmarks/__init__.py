"""The dlkernels roofline benchmark suite.

    python -m benchmarks [--quick] [--op OP,...] [--dtype DT,...] [--device cpu|cuda] [--provider P,...]
                         [--mode MODE,...] [--shapes SUBSTR,...] [--out DIR]

For every op, shape, dtype and mode (forward, backward, fwd+bwd) it checks each provider (torch eager,
torch.compile, dlkernels native, dlkernels triton) against a float64 reference, times the correct ones, and
places each result on the roofline measured on this machine at the start of the run (bandwidth from a large
copy, compute from a large matmul per dtype). Modules:

    ceilings   measured ceilings and the datasheet table (SI units: bytes/s and FLOP/s)
    cases      the cases and their FLOP and minimal-byte formulas
    models     TinyVGG (the seed's model) and torchvision's vgg11 for the model-level cases
    providers  the implementations under test, each skipped with a reason when unavailable
    timing     do_bench / CUDA events on GPU, torch.utils.benchmark on CPU
    report     the terminal table, CSV/JSON files and the roofline plot
    run        the command line and the loop
"""
