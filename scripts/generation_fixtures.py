#!/usr/bin/env python3
"""Reference oracle: text-generation fixtures for the KV-cached generation of Qwen3-MoE (test/generation.test.ts).

What it writes (test/fixtures/generation/, see the README there):
  cases.json             the generate() settings of every case, the warper settings, versions and margins
  generation.safetensors per case C (single, batch, eos):
                           C.prompt_ids       I32 [B, P]   left-padded with pad_token_id
                           C.attention_mask   I32 [B, P]   1 token, 0 padding
                           C.generated_ids    I32 [B, N]   the new tokens (finished rows filled with pad_token_id)
                           C.logits           F32 [N, B, V] the raw next-token logits of every step (output_logits)
                         per warper case W (0, 1, ...):
                           warp.W.logits      F32 [2, V]   fixed logits
                           warp.W.scores      F32 [2, V]   after transformers' warpers (-inf where filtered)
                           warp.W.probs       F32 [2, V]   softmax of the scores (what torch.multinomial draws from)
The model is test/fixtures/hf_checkpoints/hf5_saved (transformers 5.24's save_pretrained of a random tiny model),
loaded with from_pretrained(dtype=float32, attn_implementation="eager", experts_implementation="eager").
Generation is greedy (do_sample=False) with use_cache=True (DynamicCache), return_dict_in_generate, output_logits.
Left-padded batches: generate() takes position_ids = cumsum(attention_mask) - 1 (0 at padding) for the prompt and
last + 1 per new token (GenerationMixin._prepare_position_ids_for_generation / _update_model_kwargs_for_generation).
The warpers are the processors generate(do_sample=True, ...) builds (GenerationMixin._get_logits_processor:
temperature, top-k, top-p in that order, min_tokens_to_keep 1).

Checks (every run): each case's logits agree (<= 1e-5 relative) with a cache-free forward of the final sequences
with the same position ids; greedy top-1/top-2 margins of unfinished rows >= 1e-3 and top-k router-logit margins
>= 1e-3 on every real token (so float32 re-implementations make the same choices); the eos case stops one row early
and the whole batch before max_new_tokens; every top-p cumulative probability is >= 1e-5 away from 1 - top_p.

Setup: the venv of scripts/qwen3_moe_fixtures.py. Run (repo root, a few seconds):
  .venv-oracle/bin/python scripts/generation_fixtures.py                        # regenerate + check
  .venv-oracle/bin/python scripts/generation_fixtures.py --check-reproducible   # regenerate to tmp, byte-compare
Byte-stable: fixed seeds, torch.set_num_threads(1), one metadata key in the safetensors file.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import TopPLogitsWarper

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qwen3_moe_fixtures as Q  # noqa: E402  (pinned versions, topk_gap)

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "test" / "fixtures" / "hf_checkpoints" / "hf5_saved"
DEFAULT_OUT = REPO / "test" / "fixtures" / "generation"
GENERATOR = "scripts/generation_fixtures.py"

SEED_PROMPTS = 3001
SEED_WARP = 3002
PROMPT_LENGTHS = (6, 3)
PAD = 0
MAX_NEW = 10
MIN_GAP = 1e-3
MIN_TOP_P_MARGIN = 1e-5

# (temperature, top_k, top_p, logit scale, tie step): top_k 50 is transformers' default; tie step > 0 rounds the
# logits to multiples of it, so that top-k cuts through ties (top-k keeps every logit equal to the k-th).
WARPERS = [
    (0.7, 0, 0.9, 1.0, 0.0),
    (1.0, 50, 0.95, 1.0, 0.0),
    (1.5, 5, 1.0, 3.0, 0.0),
    (0.5, 10, 0.6, 0.5, 0.0),
    (1.0, 0, 0.3, 8.0, 0.0),  # peaked: top-p keeps one token (min_tokens_to_keep)
    (1.0, 4, 1.0, 2.0, 0.5),  # ties at the k-th logit
]


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def load_model():
    model, info = AutoModelForCausalLM.from_pretrained(
        str(MODEL), dtype=torch.float32, attn_implementation="eager", experts_implementation="eager",
        output_loading_info=True)
    check(not any(info.values()), f"loading info {info}")
    return model.eval()


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(SEED_PROMPTS)
    return [torch.randint(1, 97, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


def left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@torch.no_grad()
def run_case(model, rows, eos=None) -> dict:
    ids, mask = left_pad(rows)
    out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW, eos_token_id=eos,
                         pad_token_id=PAD, output_logits=True, return_dict_in_generate=True)
    new = out.sequences[:, ids.shape[1]:]
    logits = torch.stack(out.logits)  # [N, B, V]
    # Cache-free check: the whole sequence at once, with generate's position ids and a mask of ones after the prompt.
    full_mask = torch.cat([mask, torch.ones_like(new)], 1)
    positions = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 0)
    full = model(input_ids=out.sequences, attention_mask=full_mask, position_ids=positions, use_cache=False,
                 output_router_logits=True)
    P, N = ids.shape[1], new.shape[1]
    direct = full.logits[:, P - 1:P - 1 + N].transpose(0, 1)
    err = float((direct - logits).norm() / logits.norm())
    check(err <= 1e-5, f"cached vs cache-free logits: {err:.2e}")
    real = full_mask.reshape(-1).bool()
    route_gap = min(Q.topk_gap(lg[real], model.config.num_experts_per_tok) for lg in full.router_logits)
    check(route_gap >= MIN_GAP, f"router near-tie {route_gap:.2e}")
    # greedy margins of rows still running at each step (finished rows take the pad token whatever the logits)
    done = torch.zeros(len(rows), dtype=torch.bool)
    greedy_gap = float("inf")
    for step in range(N):
        top = logits[step].double().topk(2).values
        gaps = (top[:, 0] - top[:, 1])[~done]
        greedy_gap = min(greedy_gap, float(gaps.min()))
        if eos is not None:
            done |= torch.isin(new[:, step], torch.tensor(eos))
    check(greedy_gap >= MIN_GAP, f"greedy near-tie {greedy_gap:.2e}")
    return {"prompt_ids": ids, "attention_mask": mask, "generated_ids": new, "logits": logits,
            "min_greedy_gap": greedy_gap, "min_router_gap": route_gap, "cache_free_rel_err": err}


def eos_ids(batch_new: torch.Tensor) -> list[int]:
    """An eos list that stops row 0 at step >= 2 and row 1 at step >= 4 of the plain batch run, and nothing sooner."""
    r0, r1 = batch_new.tolist()
    s0 = next(s for s in range(2, MAX_NEW) if r0[s] not in r0[:s] + r1[:4])
    s1 = next(s for s in range(4, MAX_NEW - 1) if r1[s] not in r1[:s] + r0[:s0] and r1[s] != r0[s0])
    return [r0[s0], r1[s1]]


@torch.no_grad()
def warp_case(model, i: int, setting) -> tuple[dict, dict]:
    temperature, top_k, top_p, scale, tie = setting
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(SEED_WARP + i)
    logits = torch.randn((2, V), generator=g) * scale
    if tie:
        logits = torch.round(logits / tie) * tie
    config = model._prepare_generation_config(None, do_sample=True, temperature=temperature, top_k=top_k,
                                              top_p=top_p)[0]
    processors = model._get_logits_processor(config, input_ids_seq_length=1, device="cpu")
    scores = logits.clone()
    for processor in processors:
        if isinstance(processor, TopPLogitsWarper):  # the cut must not hinge on float32 rounding of the cumsum
            cum = torch.sort(scores, -1).values.softmax(-1).cumsum(-1)
            margin = float((cum - (1 - top_p)).abs().min())
            check(margin >= MIN_TOP_P_MARGIN, f"warp {i}: top-p boundary margin {margin:.2e}")
        scores = processor(torch.zeros((2, 1), dtype=torch.long), scores)
    probs = torch.softmax(scores, -1)
    kept = (scores > -np.inf).sum(-1).tolist()
    meta = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "kept": kept,
            "processors": [type(p).__name__ for p in processors]}
    return meta, {f"warp.{i}.logits": logits, f"warp.{i}.scores": scores, f"warp.{i}.probs": probs}


def write(out: Path) -> None:
    torch.set_num_threads(1)
    model = load_model()
    p0, p1 = prompts()
    cases = {"single": run_case(model, [p0])}
    cases["batch"] = run_case(model, [p0, p1])
    eos = eos_ids(cases["batch"]["generated_ids"])
    cases["eos"] = run_case(model, [p0, p1], eos)
    new = cases["eos"]["generated_ids"]
    check(new.shape[1] < MAX_NEW and (new[0, -1] == PAD) and (new[1, :-1] != PAD).all(),
          f"eos case does not stop row 0 early and the batch before max_new_tokens: {new.tolist()}")

    tensors, meta = {}, {}
    for name, c in cases.items():
        for key in ("prompt_ids", "attention_mask", "generated_ids"):
            tensors[f"{name}.{key}"] = c[key].to(torch.int32).contiguous()
        tensors[f"{name}.logits"] = c["logits"].float().contiguous()
        meta[name] = {"max_new_tokens": MAX_NEW, "pad_token_id": PAD, "eos_token_id": eos if name == "eos" else None,
                      "min_greedy_gap": round(c["min_greedy_gap"], 6), "min_router_gap": round(c["min_router_gap"], 6),
                      "cache_free_rel_err": float(f"{c['cache_free_rel_err']:.3e}")}
    warps = []
    for i, setting in enumerate(WARPERS):
        w_meta, w_tensors = warp_case(model, i, setting)
        warps.append(w_meta)
        tensors.update(w_tensors)

    out.mkdir(parents=True, exist_ok=True)
    save_file(dict(sorted(tensors.items())), str(out / "generation.safetensors"), metadata={"generator": GENERATOR})
    doc = {"model": "../hf_checkpoints/hf5_saved", "cases": meta, "warpers": warps, "versions": Q.versions(),
           "generator": GENERATOR}
    with open(out / "cases.json", "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--check-reproducible", action="store_true",
                    help="regenerate into a temporary folder and require byte-identical files in --out")
    args = ap.parse_args()
    v = Q.versions()
    for pkg, want in Q.PINNED.items():
        if v[pkg] != want:
            warnings.warn(f"{pkg} {v[pkg]} installed, fixtures were pinned with {want}")
    if args.check_reproducible:
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp))
            bad = [fn for fn in ("cases.json", "generation.safetensors")
                   if (Path(tmp) / fn).read_bytes() != (args.out / fn).read_bytes()]
            if bad:
                sys.exit("not byte-identical: " + ", ".join(bad))
            print("fixture files byte-identical to a fresh regeneration")
        return
    write(args.out)
    print(json.dumps(json.loads((args.out / "cases.json").read_text())["cases"], indent=1))


if __name__ == "__main__":
    main()
