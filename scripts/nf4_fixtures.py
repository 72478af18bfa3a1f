#!/usr/bin/env python3
"""Reference oracle: bitsandbytes NF4 (4-bit NormalFloat) fixtures for src/quant and src/io/bnb_4bit.ts.

What it writes (test/fixtures/nf4/, see the README there):
  cases.safetensors   per case C and variant V in {nf4, nf4_dq} (dq = double quantisation of the absmax):
                        C.input                 F32, the tensor given to bitsandbytes.functional.quantize_4bit
                        C.V.weight ...          exactly QuantState.as_dict(packed=True) under the prefix C.V.weight
                                                (weight U8 [ceil(n/2), 1], absmax, quant_map, nested_*, quant_state.*)
                        C.V.dequant             F32, bitsandbytes' reference dequantisation (float32)
                      plus dynamic_map (create_dynamic_map(), F32 [256]) and nf4_code (get_4bit_type('nf4'), F32 [16])
  hf5_bnb/            transformers' save_pretrained of ../hf_checkpoints/hf5_saved loaded with
                      BitsAndBytesConfig(load_in_4bit, nf4, double quant) on CPU: the real key names and JSON
  unfused_bnb/        layer 0's experts of hf5_saved in the transformers-4 per-expert layout
                      (model.layers.0.mlp.experts.E.{gate,up,down}_proj.weight + quant state), each quantised as
                      Params4bit does (quantize_4bit(blocksize 64, compress_statistics, nf4, uint8) + as_dict(packed=True));
                      and the fused layout model.layers.0.mlp.{gate,up,down}_proj.weight [E, out, in] quantised whole
  */expected.safetensors  every quantised weight of that folder dequantised by bitsandbytes (float32)

Checks (always run): bitsandbytes' CPU dequantisation (native library) against its pure-PyTorch reference
(backends/default/ops.py), and numpy emulations of the exact algorithms the TypeScript port implements against
bitsandbytes itself on random stress inputs: quantize_4bit (PyTorch default backend: the only CPU path), the native
8-bit quantiser used for the nested absmax (65536-entry lookup table), torch's float32 mean (the offset).

Setup: the oracle venv plus bitsandbytes (CPU wheel from PyPI):
  .venv-oracle/bin/pip install bitsandbytes==0.50.2
Run (repo root, ~10 s):
  .venv-oracle/bin/python scripts/nf4_fixtures.py                        # regenerate + check
  .venv-oracle/bin/python scripts/nf4_fixtures.py --check-reproducible   # regenerate to a temporary folder, byte-compare
"""
from __future__ import annotations

import argparse
import filecmp
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

logging.disable(logging.WARNING)  # bitsandbytes warns that an optional CPU GEMM package is missing
import bitsandbytes  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute, _dequantize_blockwise_compute  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "test" / "fixtures" / "nf4"
HF5 = ROOT / "test" / "fixtures" / "hf_checkpoints" / "hf5_saved"
f32 = np.float32


def versions() -> dict[str, str]:
    return {"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "safetensors": safetensors.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0], "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def quantize(x: torch.Tensor, dq: bool):
    return F.quantize_4bit(x, blocksize=64, compress_statistics=dq, quant_type="nf4", quant_storage=torch.uint8)


def reference_dequant(packed: torch.Tensor, qs) -> torch.Tensor:
    """bitsandbytes' pure-PyTorch path (backends/default): nested absmax, then code[nibble] * absmax."""
    absmax = qs.absmax
    if qs.nested:
        absmax = _dequantize_blockwise_compute(qs.absmax, qs.state2.absmax, qs.state2.code, qs.state2.blocksize,
                                               torch.float32) + qs.offset
    code = F.get_4bit_type("nf4", device="cpu")
    return _dequantize_4bit_compute(packed.reshape(-1), absmax, code, qs.blocksize, qs.shape, torch.float32)


def dequant_checked(packed: torch.Tensor, qs, name: str, report: list[str]) -> torch.Tensor:
    """The reference dequantisation; the CPU dispatch (native library) must agree bit for bit, else it is reported."""
    ref = reference_dequant(packed, qs)
    cpu = F.dequantize_4bit(packed, qs)
    bad = (ref.reshape(-1).view(torch.int32) != cpu.reshape(-1).view(torch.int32)).sum().item()
    if bad:
        report.append(f"{name} {list(qs.shape)}: CPU dequantize_4bit differs from the reference in {bad} of "
                      f"{ref.numel()} values")
    return ref


# ----------------------------------------------------------------------------------------------- the cases
def nf4_bounds() -> np.ndarray:
    code = F.get_4bit_type("nf4", device="cpu").numpy()
    return ((code[:-1] + code[1:]) / f32(2)).astype(f32)


def cases() -> dict[str, tuple[torch.Tensor, tuple[str, ...]]]:
    """name -> (input, variants: nf4 and/or nf4_dq)."""
    g = torch.Generator().manual_seed(6)
    out: dict[str, tuple[torch.Tensor, tuple[str, ...]]] = {}
    both, nf4, dq = ("nf4", "nf4_dq"), ("nf4",), ("nf4_dq",)
    out["odd37"] = (torch.randn(37, generator=g) * 0.5, both)                       # one partial block, odd length
    out["n1000"] = (torch.randn(1000, generator=g), both)                           # 15 blocks + a tail of 40
    z = torch.randn(4 * 64 + 10, generator=g)
    z[64:128] = 0                                                                   # a zero block ...
    z[256:] = 0                                                                     # ... and a zero tail (clamped 1e-38)
    out["zeros"] = (z, both)
    scale = 10.0 ** (torch.rand(21, generator=g) * 40 - 20)                         # 1e-20 .. 1e20 per block
    r = torch.randn(21 * 64, generator=g) * scale.repeat_interleave(64)
    r[5] = 1e-40                                                                    # a subnormal
    out["range"] = (r[: 20 * 64 + 33] * (10.0 ** (torch.rand(20 * 64 + 33, generator=g) * 6 - 3)), both)
    b = torch.from_numpy(nf4_bounds())
    up = torch.from_numpy(np.nextafter(b.numpy(), f32(2)))
    down = torch.from_numpy(np.nextafter(b.numpy(), f32(-2)))
    code = F.get_4bit_type("nf4", device="cpu")
    block = torch.cat([b, up, down, code, torch.tensor([-0.0, 0.0, -1.0])])  # 64 values, absmax 1: exact midpoints
    out["ties"] = (torch.cat([block, 2 * block, 3 * block[:50]]), nf4)           # x2 exact, tail x3 (division)
    nf = torch.randn(3 * 64 + 6, generator=g)
    nf[3], nf[64 + 9], nf[64 + 10], nf[128 + 1] = float("nan"), float("inf"), 0.0, float("-inf")
    nf[192 + 2] = float("inf")
    out["nonfinite"] = (nf, nf4)
    out["big"] = (torch.randn(257 * 64 - 1, generator=g) * 0.02, dq)               # 257 absmax: 2 nested blocks
    out["mat24x48"] = (torch.randn(24, 48, generator=g), both)                      # rows shorter than a block
    out["mat8x128"] = (torch.randn(8, 128, generator=g), nf4)
    return out


def write_cases(out: Path, report: list[str]) -> None:
    tensors: dict[str, torch.Tensor] = {
        "dynamic_map": F.create_dynamic_map(),
        "nf4_code": F.get_4bit_type("nf4", device="cpu").clone(),
    }
    for name, (x, variants) in cases().items():
        tensors[f"{name}.input"] = x.contiguous()
        for variant in variants:
            packed, qs = quantize(x, variant == "nf4_dq")
            tensors[f"{name}.{variant}.weight"] = packed
            for k, v in qs.as_dict(packed=True).items():
                tensors[f"{name}.{variant}.weight.{k}"] = v.clone()
            tensors[f"{name}.{variant}.dequant"] = dequant_checked(packed, qs, f"{name}.{variant}", report)
    save_file(tensors, str(out / "cases.safetensors"), metadata={"versions": json.dumps(versions(), sort_keys=True)})


# ----------------------------------------------------------------------------------------------- checkpoints
def save_expected(folder: Path, report: list[str]) -> None:
    """Dequantises every 4-bit weight of folder/model.safetensors as bitsandbytes does."""
    sd = load_file(str(folder / "model.safetensors"))
    expected = {}
    for key in sorted(sd):
        if not key.endswith(".quant_state.bitsandbytes__nf4"):
            continue
        weight = key[: -len(".quant_state.bitsandbytes__nf4")]
        parts = {k[len(weight) + 1:]: v for k, v in sd.items() if k.startswith(weight + ".")}
        qs = F.QuantState.from_dict(parts, device=torch.device("cpu"))
        expected[weight] = dequant_checked(sd[weight], qs, weight, report)
    save_file(expected, str(folder / "expected.safetensors"), metadata={"format": "pt"})


def write_hf5_bnb(out: Path, report: list[str]) -> None:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_storage=torch.uint8)
    model = AutoModelForCausalLM.from_pretrained(str(HF5), quantization_config=cfg, device_map="cpu",
                                                 dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        folder = out / "hf5_bnb"
        folder.mkdir()
        for f in ("config.json", "model.safetensors"):
            shutil.copy(Path(tmp) / f, folder / f)
    save_expected(folder, report)


def write_unfused_bnb(out: Path, report: list[str]) -> None:
    base = load_file(str(HF5 / "model.safetensors"))
    config = json.loads((HF5 / "config.json").read_text())
    E = config["num_local_experts"]
    sd: dict[str, torch.Tensor] = {}

    def put(name: str, w: torch.Tensor) -> None:  # what Params4bit + Linear4bit._save_to_state_dict write
        packed, qs = quantize(w.contiguous(), True)
        sd[name] = packed
        for k, v in qs.as_dict(packed=True).items():
            sd[f"{name}.{k}"] = v.clone()

    for proj in ("gate", "up", "down"):
        for e in range(E):
            name = f"model.layers.0.mlp.experts.{e}.{proj}_proj.weight"
            put(name, base[name])
        put(f"model.layers.0.mlp.{proj}_proj.weight",
            torch.stack([base[f"model.layers.0.mlp.experts.{e}.{proj}_proj.weight"] for e in range(E)]))
    folder = out / "unfused_bnb"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    save_expected(folder, report)


# ----------------------------------------------------------------------------------------------- emulations
def emulate_quantize_4bit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """backends/default quantize_4bit: absmax per block (NaN propagates), full blocks x * (1 / max(absmax, 1e-38)),
    the tail x / max(absmax, 1e-38) (absmax stored clamped), clamp to [-1, 1], code = #{midpoints < v}
    (torch.bucketize; NaN -> 15), odd length padded with 0 (code 7), high nibble first."""
    n = x.size
    blocks = -(-n // 64)
    absmax = np.zeros(blocks, f32)
    v = np.zeros(n, f32)
    tiny = f32(1e-38)
    with np.errstate(all="ignore"):
        for b in range(blocks):
            blk = x[b * 64:(b + 1) * 64]
            am = f32(np.max(np.abs(blk)))
            full = blk.size == 64
            c = np.maximum(am, tiny) if not np.isnan(am) else am
            absmax[b] = am if full else c
            v[b * 64:b * 64 + blk.size] = blk * (f32(1) / c) if full else blk / c
        v = np.where(np.isnan(v), v, np.clip(v, f32(-1), f32(1)))
        q = np.searchsorted(nf4_bounds(), v, side="left")
    q[np.isnan(v)] = 15
    if n % 2:
        q = np.append(q, 7)
    return ((q[0::2] << 4) | q[1::2]).astype(np.uint8), absmax


def emulate_quantize_blockwise(x: np.ndarray, code: np.ndarray, blocksize: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The native CPU 8-bit quantiser (csrc/cpu_ops.cpp, quantize_cpu_impl, AVX2 path): absmax ignoring NaN; a zero
    block gives codes 0; v = clamp(x * (1 / absmax), -1, 1); i = trunc(((v + 1) * 0.5) * 65535 + 0.5) in float32
    steps; code = lut[i], lut[i] = #{midpoints 0.5 * (c[k] + c[k+1]) < -1 + (2 i) / 65535}."""
    mid = (f32(0.5) * (code[:-1] + code[1:])).astype(f32)
    idx = np.arange(65536)
    lut = np.searchsorted(mid, (f32(-1) + (f32(2) * idx.astype(f32)) / f32(65535)).astype(f32), side="left")
    out = np.zeros(x.size, np.uint8)
    absmax = np.zeros(-(-x.size // blocksize), f32)
    for b in range(absmax.size):
        blk = x[b * blocksize:(b + 1) * blocksize]
        am = f32(np.max(np.where(np.isnan(blk), f32(0), np.abs(blk)), initial=f32(0)))
        absmax[b] = am
        if am == 0:
            continue
        v = np.clip(blk * (f32(1) / am), f32(-1), f32(1)).astype(f32)
        t = ((((v + f32(1)) * f32(0.5)).astype(f32) * f32(65535)).astype(f32) + f32(0.5)).astype(f32)
        out[b * blocksize:b * blocksize + blk.size] = lut[t.astype(np.int64)]
    return out, absmax


def emulate_torch_sum(x: np.ndarray) -> np.float32:
    """torch's float32 sum on CPU (aten/src/ATen/native/cpu/SumKernel.cpp, one thread): 8-lane vectors summed by
    row_sum (4 interleaved accumulators, multi_row_sum's 4-level cascade), scalar tail then the 8 lanes in order;
    below 8 values the scalar row_sum."""
    def multi_row_sum(rows: np.ndarray) -> np.ndarray:  # rows [size, 4, lanes]
        size = rows.shape[0]
        level_power = max(4, (0 if size <= 1 else (size - 1).bit_length()) // 4)
        step, mask0 = 1 << level_power, (1 << level_power) - 1
        acc = np.zeros((4,) + rows.shape[1:], f32)
        i = 0
        while i + step <= size:
            for _ in range(step):
                acc[0] = acc[0] + rows[i]
                i += 1
            for j in range(1, 4):
                acc[j] = acc[j] + acc[j - 1]
                acc[j - 1] = 0
                if i & (mask0 << (j * level_power)):
                    break
        for r in rows[i:]:
            acc[0] = acc[0] + r
        for j in range(1, 4):
            acc[0] = acc[0] + acc[j]
        return acc[0]

    def row_sum(items: np.ndarray) -> np.ndarray:  # items [count, lanes]
        k = items.shape[0] // 4
        p = multi_row_sum(items[: 4 * k].reshape(k, 4, items.shape[1]))
        for r in items[4 * k:]:
            p[0] = p[0] + r
        for j in range(1, 4):
            p[0] = p[0] + p[j]
        return p[0]

    x = x.astype(f32)
    if x.size < 8:
        return f32(row_sum(x.reshape(-1, 1))[0])
    vecs = x.size // 8
    lanes = row_sum(x[: 8 * vecs].reshape(vecs, 8))
    total = f32(0)
    for v in x[8 * vecs:]:
        total = f32(total + v)
    for v in lanes:
        total = f32(total + v)
    return total


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical, except that any NaN matches any NaN (torch's max/clamp produce other NaN payloads)."""
    nan = np.isnan(a)
    return np.array_equal(nan, np.isnan(b)) and np.array_equal(a[~nan].view(np.int32), b[~nan].view(np.int32))


def check_emulations() -> list[str]:
    rng = np.random.default_rng(7)
    msgs = []
    bad4 = 0
    for trial in range(300):
        n = int(rng.integers(1, 3000))
        x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-8, 8, n)).astype(f32)
        if trial % 5 == 0:
            x[rng.integers(0, n, 3)] = rng.choice([np.nan, np.inf, -np.inf, 0.0], 3)
        packed, qs = quantize(torch.from_numpy(x), False)
        p, a = emulate_quantize_4bit(x)
        bad4 += not (np.array_equal(p, packed.numpy().ravel()) and same_bits(a, qs.absmax.numpy()))
    msgs.append(f"quantize_4bit emulation: {bad4} of 300 random tensors differ (NaN payloads aside)")
    code = F.create_dynamic_map().numpy()
    bad8 = 0
    for trial in range(300):
        n = int(rng.integers(1, 2000))
        x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3)).astype(f32)
        if trial % 7 == 0:
            x[: rng.integers(1, n + 1)] = 0
        q, st = F.quantize_blockwise(torch.from_numpy(x), blocksize=256)
        eq, ea = emulate_quantize_blockwise(x, code)
        bad8 += not (np.array_equal(eq, q.numpy()) and np.array_equal(ea.view(np.int32), st.absmax.numpy().view(np.int32)))
    msgs.append(f"8-bit blockwise (nested absmax) emulation: {bad8} of 300 random tensors differ")
    badm = 0
    for n in list(range(1, 300)) + [1000, 4095, 24576, 30000]:
        x = (rng.random(n) * 10.0 ** rng.uniform(-3, 3, n)).astype(f32)
        badm += f32(torch.from_numpy(x).mean().item()) != f32(emulate_torch_sum(x) / f32(n))
    msgs.append(f"torch float32 mean emulation: {badm} of 303 lengths differ")
    return msgs


def generate(out: Path) -> list[str]:
    torch.set_num_threads(1)  # torch's sum splits across threads above 32768 values: one thread, one order
    if out.exists():
        shutil.rmtree(out / "hf5_bnb", ignore_errors=True)
        shutil.rmtree(out / "unfused_bnb", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    report: list[str] = []
    write_cases(out, report)
    write_hf5_bnb(out, report)
    write_unfused_bnb(out, report)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check-reproducible", action="store_true")
    args = ap.parse_args()
    if args.check_reproducible:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            files = sorted(p.relative_to(tmp) for p in Path(tmp).rglob("*") if p.is_file())
            diff = [str(f) for f in files if not filecmp.cmp(Path(tmp) / f, OUT / f, shallow=False)]
            print("reproducible" if not diff else f"differ: {diff}")
            sys.exit(1 if diff else 0)
    report = generate(OUT)
    print("versions:", json.dumps(versions()))
    print("CPU path vs reference:", "identical everywhere" if not report else "")
    for line in report:
        print("  ", line)
    for line in check_emulations():
        print(line)


if __name__ == "__main__":
    main()
