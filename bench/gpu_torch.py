"""Baselines for bench/gpu.ts, measured with PyTorch on the GPU machine (not a dependency).

For each benchmark shape, a dense torch.matmul of equal FLOPs (2·M·N·K) in float32 with TF32
on, in float32 with TF32 off, and in bf16; torch._grouped_mm in bf16 on the same grouped
problem where this torch has it, once on bf16 tensors and once as a float32 user calls it (x and
w cast to bf16, the product cast back to float32, all inside the timing); and torch.bmm over the
E experts in TF32 and bf16 for each of forward, dX and dW, with the same operand layouts (the
problem itself, which uniform routing, M/E rows an expert, lets a batched cuBLAS GEMM do).
Medians of CUDA-event timings after warm-up, inputs rotated over three sets, each timed call
queued behind a GPU sleep so that the host's launch latency falls outside its events. Writes
JSON {key: TFLOP/s} to the path given, and prints a table.

    python3 bench/gpu_torch.py out.json
"""
import json
import os
import sys

import torch

E = 128
SHAPES = [(2048, 768), (768, 2048), (2048, 16), (16, 768)]
ROWS = [16384, 65536]
REPS, SETS = 25, 3
BUSY_CYCLES = 400_000  # torch.cuda._sleep before each timed call: ≥ 200 µs at ≤ 2 GHz


def median_ms(fn, sets):
    for s in sets:
        fn(*s)
    torch.cuda.synchronize()
    times = []
    for r in range(REPS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(BUSY_CYCLES)
        start.record()
        fn(*sets[r % len(sets)])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def tflops(flops, ms):
    return flops / (ms * 1e-3) / 1e12


def dense(M, K, N, dtype, tf32):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    sets = [(torch.randn(M, K, device="cuda", dtype=dtype), torch.randn(K, N, device="cuda", dtype=dtype))
            for _ in range(SETS)]
    return tflops(2 * M * N * K, median_ms(torch.matmul, sets))


def grouped_mm(M, K, N, cast):
    """bf16 tensors (cast False), or float32 ones cast to bf16 and back inside the timing (cast True)."""
    if not hasattr(torch, "_grouped_mm"):
        return None
    counts = torch.bincount(torch.randint(0, E, (M,), device="cuda"), minlength=E)
    offs = torch.cumsum(counts, 0).to(torch.int32)
    dtype = torch.float32 if cast else torch.bfloat16
    sets = [(torch.randn(M, K, device="cuda", dtype=dtype), torch.randn(E, N, K, device="cuda", dtype=dtype), offs)
            for _ in range(SETS)]
    if cast:
        fn = lambda x, w, o: torch._grouped_mm(x.bfloat16(), w.bfloat16().transpose(1, 2), offs=o).float()
    else:
        fn = lambda x, w, o: torch._grouped_mm(x, w.transpose(1, 2), offs=o)
    try:
        return tflops(2 * M * N * K, median_ms(fn, sets))
    except RuntimeError as e:  # shapes this torch rejects (e.g. dims not multiples of 16)
        print(f"_grouped_mm K={K} N={N}: {e}", file=sys.stderr)
        return None


def bmm(M, K, N, op, dtype):
    """The grouped problem as E batched GEMMs of M/E rows (uniform routing), operands laid out as ours:
    forward x[e] · w[e]ᵀ, dX dy[e] · w[e], dW dy[e]ᵀ · x[e]; x [E, m, K], dy [E, m, N], w [E, N, K]."""
    torch.backends.cuda.matmul.allow_tf32 = dtype == torch.float32
    m = M // E
    new = lambda *shape: torch.randn(*shape, device="cuda", dtype=dtype)
    sets = {"forward": lambda: (new(E, m, K), new(E, N, K).transpose(1, 2)),
            "dX": lambda: (new(E, m, N), new(E, N, K)),
            "dW": lambda: (new(E, m, N).transpose(1, 2), new(E, m, K))}[op]
    return tflops(2 * M * N * K, median_ms(torch.bmm, [sets() for _ in range(SETS)]))


def main():
    out = {}
    print(f"# torch {torch.__version__} on {torch.cuda.get_device_name()}")
    header = None
    for K, N in SHAPES:
        for M in ROWS:
            row = {"tf32": dense(M, K, N, torch.float32, True), "fp32": dense(M, K, N, torch.float32, False),
                   "bf16": dense(M, K, N, torch.bfloat16, False), "grouped_bf16": grouped_mm(M, K, N, False),
                   "grouped_bf16_cast": grouped_mm(M, K, N, True)}
            for op in ("forward", "dX", "dW"):
                for name, dtype in (("tf32", torch.float32), ("bf16", torch.bfloat16)):
                    row[f"bmm_{name}_{op}"] = bmm(M, K, N, op, dtype)
            out[f"{M}x{K}x{N}"] = row
            if header is None:
                header = ["M", "K", "N", *row]
                print(f"| {' | '.join(header)} |")
                print(f"|{' --- |' * len(header)}")
            cells = " | ".join("—" if v is None else f"{v:.1f}" for v in row.values())
            print(f"| {M} | {K} | {N} | {cells} |")
            torch.cuda.empty_cache()
    # A device-to-device copy: bytes read + written per second, the bandwidth ceiling.
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    out["copy_TBps"] = 2 * a.numel() / (median_ms(lambda: b.copy_(a), [()]) * 1e-3) / 1e12
    print(f"device-to-device copy: {out['copy_TBps']:.2f} TB/s")
    os.makedirs(os.path.dirname(os.path.abspath(sys.argv[1])), exist_ok=True)
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)


main()
