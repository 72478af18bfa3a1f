#!/usr/bin/env python3
"""Reference oracle: Hugging Face checkpoint and PEFT adapter fixtures for Qwen3-MoE (layouts found in the wild).

What it writes (test/fixtures/hf_checkpoints/, see the README there for every key, shape and dtype):
  unfused_bf16_sharded/  transformers-4 layout: config.json with `num_experts` and top-level `rope_theta`, per-expert
                         `model.layers.L.mlp.experts.I.{gate,up,down}_proj.weight` [out, in], BF16, two shards +
                         model.safetensors.index.json (written here with safetensors; the split falls inside an expert)
  hf5_saved/             exactly what transformers 5.24 `save_pretrained()` writes for the float32 model (default
                         save_original_format=True: it converts the fused experts BACK to per-expert keys)
  hf5_fused_saved/       `save_pretrained(save_original_format=False)`: transformers 5's in-memory layout,
                         `mlp.experts.gate_up_proj` [E, 2I, H] and `mlp.experts.down_proj` [E, H, I]
  fused_f16/             the seed project's fused layout `model.layers.L.mlp.{gate,up,down}_proj.weight` [E, out, in],
                         F16, tied embeddings (no lm_head.weight); a different (tied) model
  peft_attention/        PEFT LoRA on q/k/v/o_proj and the router `gate`, saved by peft's save_pretrained
  peft_experts/          PEFT LoRA on the fused 3-D expert parameters (target_parameters), saved by peft
  peft_experts_v4/       the per-expert adapter format of transformers-4 PEFT / vLLM / the seed project
                         (base_model.model.model.layers.L.mlp.experts.I.{gate,up,down}_proj.lora_{A,B}.weight), written
                         here; adapter_config.json written by peft's LoraConfig.save_pretrained
  Every directory has expected.safetensors: input_ids (I32 [2, 7]) and logits (F32 [2, 7, V]) that transformers
  computes from exactly the stored weights (BF16/F16 widened to float32; eager attention, eager experts, float32).
  The PEFT adapters' base model is ../hf5_saved.

Verification (always run after generating; --verify-only runs it on committed files): every checkpoint is loaded with
transformers' from_pretrained (where transformers can read it) AND independently (safetensors + our own stacking into
the fused layout), and both must reproduce expected logits bit-for-bit; adapters are loaded with
PeftModel.from_pretrained, merged with merge_and_unload, and compared bit-for-bit with the stored logits and merged
weights, and to an independent float64 numpy merge using the documented key/shape mapping. Every forward has top-k
router-logit margins >= 1e-3.

Setup: the venv of scripts/qwen3_moe_fixtures.py plus peft:
  .venv-oracle/bin/pip install peft==0.21.2            # pulls accelerate 1.15.0, psutil
Run (repo root, a few seconds):
  .venv-oracle/bin/python scripts/hf_checkpoint_fixtures.py                        # regenerate all + verify
  .venv-oracle/bin/python scripts/hf_checkpoint_fixtures.py --verify-only          # verify committed fixtures
  .venv-oracle/bin/python scripts/hf_checkpoint_fixtures.py --check-reproducible   # regenerate to tmp, byte-compare
  .venv-oracle/bin/python scripts/hf_checkpoint_fixtures.py --investigate          # re-run the PEFT capability probes
Byte-stable: fixed seeds, torch.set_num_threads(1), one metadata key in our safetensors files, and PYTHONHASHSEED=0
(the script re-executes itself with it): peft serialises target_modules / target_parameters from Python sets, whose
order otherwise changes from run to run.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

if os.environ.get("PYTHONHASHSEED") != "0":  # must happen before anything builds string sets (see docstring)
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})

import numpy as np
import torch

import safetensors
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
warnings.filterwarnings("ignore", message=".*rank_pattern keys did not match.*")  # spurious, see README
warnings.filterwarnings("ignore", message=".*alpha_pattern keys did not match.*")
warnings.filterwarnings("ignore", message="Could not find a config file in.*")  # peft: base config at a relative path
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

import peft  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qwen3_moe_fixtures as Q  # noqa: E402  (tiny configs, random init, HF <-> canonical fused layout)

PINNED = {**Q.PINNED, "peft": "0.21.2"}
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "test" / "fixtures" / "hf_checkpoints"
GENERATOR = "scripts/hf_checkpoint_fixtures.py"

SEED_A = 2001  # the untied `base` model: unfused_bf16_sharded, hf5_saved, hf5_fused_saved, PEFT base
SEED_B = 2002  # the tied model of fused_f16
SEED_IDS = 2003
SEED_LORA = {"peft_attention": 2011, "peft_experts": 2012, "peft_experts_v4": 2013}
STD_LORA = 0.2
BATCH, SEQ = 2, 7
MIN_LOGIT_GAP = Q.MIN_LOGIT_GAP  # 1e-3

BASE_REL = "../hf5_saved"  # adapters' base model, relative to the adapter directory (their base_model_name_or_path)

# PEFT configs. peft_attention: r 2, alpha 8; rank_pattern / alpha_pattern exercised on q_proj / v_proj.
ATTN_LORA = dict(r=2, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate"],
                 rank_pattern={"q_proj": 4}, alpha_pattern={"v_proj": 16}, task_type="CAUSAL_LM")
# peft_experts: the two 3-D expert parameters; down_proj gets rank 2 via rank_pattern.
EXPERTS_LORA = dict(r=4, lora_alpha=8, target_modules=[],
                    target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
                    rank_pattern={"down_proj": 2}, task_type="CAUSAL_LM")
# peft_experts_v4: what PEFT under transformers 4 wrote for per-expert nn.Linear experts (+ q/v attention).
V4_LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
               task_type="CAUSAL_LM")

EXPERT_PROJ = ("gate_proj", "up_proj", "down_proj")


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def meta(name):
    # one metadata key only: safetensors writes the metadata map in hash order, >1 key is not byte-stable
    return {"generator": f"{GENERATOR} {name}"}


def kw_a():
    return Q.hf_kwargs("base")


def kw_b():
    return Q.hf_kwargs("tied")


def model_from_kw(kw, seed=None):
    m = Q.build_model(Q.make_config(copy.deepcopy(kw)))
    if seed is not None:
        Q.randomize_(m, seed)
    return m


def make_ids():
    g = torch.Generator().manual_seed(SEED_IDS)
    return torch.randint(0, Q.BASE["vocab_size"], (BATCH, SEQ), generator=g).to(torch.int32)


@torch.no_grad()
def forward(model, ids, tag):
    """Logits (float32) of an eager float32 model; checks the routing margins of every sparse layer."""
    check(next(model.parameters()).dtype == torch.float32, f"{tag}: model not float32")
    check(model.config._attn_implementation == "eager" and model.config._experts_implementation == "eager",
          f"{tag}: not eager ({model.config._attn_implementation}, {model.config._experts_implementation})")
    out = model(input_ids=ids.long(), output_router_logits=True)
    gap = min(Q.topk_gap(lg, model.config.num_experts_per_tok) for lg in out.router_logits)
    check(gap >= MIN_LOGIT_GAP, f"{tag}: routing near-tie (min top-k logit gap {gap:.2e}); pick other seeds")
    return f32(out.logits), gap


def from_pretrained(path):
    model, info = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager", experts_implementation="eager",
        output_loading_info=True)
    check(not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
          and not info["error_msgs"], f"{path}: loading info {info}")
    return model.eval()


def per_expert_to_canonical(sd: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """Independent of transformers: stack per-expert [out, in] weights into the fused [E, out, in] layout."""
    sparse, _ = Q.layer_kinds(cfg)
    E = cfg.num_experts
    out = {k: f32(v) for k, v in sd.items() if ".mlp.experts." not in k}
    for L in sparse:
        for t in EXPERT_PROJ:
            ks = [f"model.layers.{L}.mlp.experts.{e}.{t}.weight" for e in range(E)]
            out[f"model.layers.{L}.mlp.{t}.weight"] = torch.stack([f32(sd[k]) for k in ks])
    check(len(out) == len(sd) - len(sparse) * (E - 1) * 3, "per-expert key count")
    return out


def hf5_fused_to_canonical(sd, cfg):
    I = cfg.moe_intermediate_size
    out = {}
    for k, v in sd.items():
        v = f32(v)
        if k.endswith(".mlp.experts.gate_up_proj"):
            pre = k[: -len("experts.gate_up_proj")]
            out[pre + "gate_proj.weight"], out[pre + "up_proj.weight"] = v[:, :I].contiguous(), v[:, I:].contiguous()
        elif k.endswith(".mlp.experts.down_proj"):
            out[k[: -len("experts.down_proj")] + "down_proj.weight"] = v
        else:
            out[k] = v
    return out


def canonical_to_per_expert(canon: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in canon.items():
        parts = k.split(".")
        if v.ndim == 3 and parts[-2] in EXPERT_PROJ and parts[-3] == "mlp":
            pre = ".".join(parts[:-2])
            for e in range(v.shape[0]):
                out[f"{pre}.experts.{e}.{parts[-2]}.weight"] = v[e].contiguous()
        else:
            out[k] = v
    return out


def v4_module_order(cfg) -> list[str]:
    """Parameter order of transformers 4's Qwen3MoeForCausalLM (nn.ModuleList experts), as v4 save_pretrained shards."""
    names = ["model.embed_tokens.weight"]
    sparse, _ = Q.layer_kinds(cfg)
    for L in range(cfg.num_hidden_layers):
        p = f"model.layers.{L}."
        names += [p + f"self_attn.{t}.weight" for t in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")]
        if L in sparse:
            names.append(p + "mlp.gate.weight")
            for e in range(cfg.num_experts):
                names += [p + f"mlp.experts.{e}.{t}.weight" for t in EXPERT_PROJ]
        else:
            names += [p + f"mlp.{t}.weight" for t in EXPERT_PROJ]
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
    names.append("model.norm.weight")
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def v4_config(kw: dict) -> dict:
    """config.json as transformers 4.51 wrote it for Qwen3-MoE (cf. Qwen/Qwen3-30B-A3B), tiny sizes."""
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "attention_bias": kw["attention_bias"],
        "attention_dropout": kw["attention_dropout"],
        "bos_token_id": 95,
        "decoder_sparse_step": kw["decoder_sparse_step"],
        "eos_token_id": 96,
        "head_dim": kw["head_dim"],
        "hidden_act": kw["hidden_act"],
        "hidden_size": kw["hidden_size"],
        "initializer_range": kw["initializer_range"],
        "intermediate_size": kw["intermediate_size"],
        "max_position_embeddings": kw["max_position_embeddings"],
        "max_window_layers": kw["num_hidden_layers"],
        "mlp_only_layers": kw["mlp_only_layers"],
        "model_type": "qwen3_moe",
        "moe_intermediate_size": kw["moe_intermediate_size"],
        "norm_topk_prob": kw["norm_topk_prob"],
        "num_attention_heads": kw["num_attention_heads"],
        "num_experts": kw["num_experts"],
        "num_experts_per_tok": kw["num_experts_per_tok"],
        "num_hidden_layers": kw["num_hidden_layers"],
        "num_key_value_heads": kw["num_key_value_heads"],
        "output_router_logits": kw["output_router_logits"],
        "rms_norm_eps": kw["rms_norm_eps"],
        "rope_scaling": None,
        "rope_theta": kw["rope_parameters"]["rope_theta"],
        "router_aux_loss_coef": kw["router_aux_loss_coef"],
        "sliding_window": None,
        "tie_word_embeddings": kw["tie_word_embeddings"],
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": kw["use_sliding_window"],
        "vocab_size": kw["vocab_size"],
    }


def write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def file_dtypes(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_slice(k).get_dtype() for k in f.keys()}


def save_expected(d: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    save_file(dict(sorted(tensors.items())), str(d / "expected.safetensors"), metadata=meta(name))


# ---------------------------------------------------------------------------------------------------------------
# LoRA helpers: peft tensors <-> our fused layout (A [E, r, in], B [E, out, r]) and an independent numpy merge
# ---------------------------------------------------------------------------------------------------------------
PFX = "base_model.model."


def pattern_value(patterns: dict, key: str, default):
    """peft.utils.other.get_pattern_key semantics: first pattern p with re.match(rf'(.*\\.)?({p})$', key)."""
    import re
    for p, v in patterns.items():
        if re.match(rf"(.*\.)?({p})$", key):
            return v
    return default


def lora_scaling(cfg: dict, key: str) -> tuple[int, float, float]:
    r = pattern_value(cfg.get("rank_pattern") or {}, key, cfg["r"])
    alpha = pattern_value(cfg.get("alpha_pattern") or {}, key, cfg["lora_alpha"])
    s = alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r
    return r, alpha, s


def adapter_to_fused(adapter: dict[str, torch.Tensor], acfg: dict, mcfg) -> tuple[dict, dict]:
    """PEFT adapter (any of the three formats here) -> our layout: {'<target>.lora_A.weight': A, ...} where the
    target is the canonical module name (experts fused: model.layers.L.mlp.{gate,up,down}_proj, A [E, r, in],
    B [E, out, r]); plus {'<target>': scaling}. Implements exactly the mapping documented in the README."""
    E, I = mcfg.num_experts, mcfg.moe_intermediate_size
    out, scal = {}, {}
    keys = sorted(k for k in adapter if k.endswith(".lora_A.weight"))
    per_expert = {}
    # peft wraps each targeted 3-D parameter of Qwen3MoeExperts in a ParamWrapper, nested in the order the parameters
    # are registered (gate_up_proj first = innermost). The outermost wrapper's keys are `experts.lora_*`, the next
    # one's `experts.base_layer.lora_*`: with both targeted, gate_up_proj = experts.base_layer.*, down_proj =
    # experts.*; with only one of them targeted, it is experts.*.
    tp = acfg.get("target_parameters") or []
    targeted = [p for p in ("gate_up_proj", "down_proj") if any(t == p or t.endswith("." + p) for t in tp)]
    wrapper = {".".join(["experts"] + ["base_layer"] * j): p for j, p in enumerate(reversed(targeted))}
    for ka in keys:
        mod = ka[len(PFX): -len(".lora_A.weight")]
        A, B = f32(adapter[ka]), f32(adapter[ka.replace(".lora_A.", ".lora_B.")])
        parts = mod.split(".")
        n_exp = parts.index("experts") if "experts" in parts else -1
        param = wrapper.get(".".join(parts[n_exp:])) if n_exp >= 0 else None
        if param == "down_proj":  # peft ParamWrapper on down_proj [E, H, I]
            pre = ".".join(parts[:n_exp])
            r, _, s = lora_scaling(acfg, f"{pre}.experts.down_proj")
            check(A.shape == (E * r, I) and B.shape == (mcfg.hidden_size, r * E), f"{mod} shapes {A.shape} {B.shape}")
            out[f"{pre}.down_proj.lora_A.weight"] = A.reshape(E, r, I)
            out[f"{pre}.down_proj.lora_B.weight"] = B.reshape(-1, r, E).permute(2, 0, 1).contiguous()
            scal[f"{pre}.down_proj"] = s
        elif param == "gate_up_proj":  # peft ParamWrapper on gate_up_proj [E, 2I, H]
            pre = ".".join(parts[:n_exp])
            r, _, s = lora_scaling(acfg, f"{pre}.experts.gate_up_proj")
            H = mcfg.hidden_size
            check(A.shape == (E * r, H) and B.shape == (2 * I, r * E), f"{mod} shapes {A.shape} {B.shape}")
            A3 = A.reshape(E, r, H)
            B3 = B.reshape(2 * I, r, E).permute(2, 0, 1)  # [E, 2I, r]
            out[f"{pre}.gate_proj.lora_A.weight"] = A3.contiguous()
            out[f"{pre}.up_proj.lora_A.weight"] = A3.clone().contiguous()  # shared A
            out[f"{pre}.gate_proj.lora_B.weight"] = B3[:, :I].contiguous()
            out[f"{pre}.up_proj.lora_B.weight"] = B3[:, I:].contiguous()
            scal[f"{pre}.gate_proj"] = scal[f"{pre}.up_proj"] = s
        elif len(parts) >= 3 and parts[-3] == "experts":  # v4 per-expert: ...mlp.experts.<e>.<proj>
            pre, e, t = ".".join(parts[:-3]), int(parts[-2]), parts[-1]
            per_expert.setdefault((pre, t), {})[e] = (A, B)
            scal[f"{pre}.{t}"] = lora_scaling(acfg, mod)[2]
        else:  # ordinary module (attention projections, router gate)
            out[f"{mod}.lora_A.weight"], out[f"{mod}.lora_B.weight"] = A, B
            scal[mod] = lora_scaling(acfg, mod)[2]
    for (pre, t), d in per_expert.items():
        check(sorted(d) == list(range(E)), f"{pre}.{t}: experts {sorted(d)}")
        out[f"{pre}.{t}.lora_A.weight"] = torch.stack([d[e][0] for e in range(E)])
        out[f"{pre}.{t}.lora_B.weight"] = torch.stack([d[e][1] for e in range(E)])
    return out, scal


def numpy_merge(canon: dict[str, torch.Tensor], fused: dict, scal: dict) -> dict[str, torch.Tensor]:
    """W' = W + s·B·A in float64 (per expert for 3-D), rounded once to float32."""
    out = dict(canon)
    for t, s in scal.items():
        A = fused[t + ".lora_A.weight"].double().numpy()
        B = fused[t + ".lora_B.weight"].double().numpy()
        W = canon[t + ".weight"].double().numpy()
        out[t + ".weight"] = torch.from_numpy((W + s * np.einsum("...or,...ri->...oi", B, A)).astype(np.float32))
    return out


# ---------------------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------------------
def gen_unfused_bf16(root: Path, ids) -> None:
    name = "unfused_bf16_sharded"
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    kw = kw_a()
    cfg = Q.make_config(copy.deepcopy(kw))
    m = model_from_kw(kw, SEED_A)
    per_expert = canonical_to_per_expert(Q.hf_to_canonical(m))
    order = v4_module_order(cfg)
    check(sorted(order) == sorted(per_expert), "v4 key set")
    bf = {k: per_expert[k].to(torch.bfloat16).contiguous() for k in order}
    # split inside layer 1's expert 5: its gate_proj in shard 1, its up/down_proj in shard 2
    cut = order.index("model.layers.1.mlp.experts.5.gate_proj.weight") + 1
    shards = [(f"model-0000{i + 1}-of-00002.safetensors", order[a:b]) for i, (a, b) in
              enumerate([(0, cut), (cut, len(order))])]
    weight_map = {}
    for fn, keys in shards:
        save_file({k: bf[k] for k in keys}, str(d / fn), metadata={"format": "pt"})  # as HF writes shards
        weight_map.update({k: fn for k in keys})
    write_json(d / "model.safetensors.index.json",
               {"metadata": {"total_size": sum(nbytes(t) for t in bf.values())}, "weight_map": weight_map})
    write_json(d / "config.json", v4_config(kw))
    # expected: the model transformers loads from these files (BF16 widened to float32)
    logits, gap = forward(from_pretrained(d), ids, name)
    save_expected(d, name, {"input_ids": ids, "logits": logits})
    print(f"[{name}] written (min top-k gap {gap:.2e})")


def gen_hf5_saved(root: Path, ids) -> None:
    for name, orig in (("hf5_saved", True), ("hf5_fused_saved", False)):
        d = root / name
        if d.exists():
            shutil.rmtree(d)
        m = model_from_kw(kw_a(), SEED_A)
        m.save_pretrained(str(d), save_original_format=orig)
        logits, gap = forward(from_pretrained(d), ids, name)
        save_expected(d, name, {"input_ids": ids, "logits": logits})
        print(f"[{name}] written by save_pretrained(save_original_format={orig}) (min top-k gap {gap:.2e})")


def gen_fused_f16(root: Path, ids) -> None:
    name = "fused_f16"
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    kw = kw_b()
    m = model_from_kw(kw, SEED_B)
    canon = Q.hf_to_canonical(m)
    check("lm_head.weight" not in canon, "tied: no lm_head")
    half = {k: v.to(torch.float16).contiguous() for k, v in sorted(canon.items())}
    save_file(half, str(d / "model.safetensors"), metadata=meta(name))
    # config.json as transformers writes it (PretrainedConfig.save_pretrained), for a float16 checkpoint
    m.config.architectures = ["Qwen3MoeForCausalLM"]
    m.config.dtype = torch.float16
    m.config.save_pretrained(str(d))
    m2 = model_from_kw(kw)
    Q.load_canonical(m2, {k: f32(v) for k, v in half.items()})
    logits, gap = forward(m2, ids, name)
    save_expected(d, name, {"input_ids": ids, "logits": logits})
    print(f"[{name}] written (min top-k gap {gap:.2e})")


@torch.no_grad()
def randomize_lora_(pm, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    names = sorted(n for n, _ in pm.named_parameters() if ".lora_A." in n or ".lora_B." in n)
    check(names, "no LoRA parameters")
    params = dict(pm.named_parameters())
    for n in names:
        params[n].copy_(STD_LORA * torch.randn(params[n].shape, generator=g))


def load_base(root: Path):
    m = from_pretrained(root / "hf5_saved")
    m.name_or_path = BASE_REL  # peft records it as base_model_name_or_path (else an absolute local path)
    return m


def finish_adapter(d: Path, name: str, ids, root: Path, peft_model, acfg: dict, adapter: dict) -> None:
    """Store unmerged / merged logits, merged weights and the adapter in our fused layout."""
    mcfg = peft_model.get_base_model().config
    unmerged, _ = forward(peft_model, ids, name + " unmerged")
    merged_model = peft_model.merge_and_unload()
    logits, gap = forward(merged_model, ids, name + " merged")
    fused, scal = adapter_to_fused(adapter, acfg, mcfg)
    merged_canon = Q.hf_to_canonical(merged_model)
    exp = {"input_ids": ids, "logits": logits, "unmerged_logits": unmerged}
    exp.update({f"merged.{t}.weight": merged_canon[t + ".weight"] for t in scal})
    exp.update({f"fused.{k}": v for k, v in fused.items()})
    exp.update({f"scaling.{t}": torch.tensor([s], dtype=torch.float32) for t, s in scal.items()})
    save_expected(d, name, exp)
    print(f"[{name}] written (min top-k gap {gap:.2e}; |merged - unmerged| = {float((logits - unmerged).abs().max()):.1e})")


def gen_peft(root: Path, ids) -> None:
    for name, spec in (("peft_attention", ATTN_LORA), ("peft_experts", EXPERTS_LORA)):
        d = root / name
        if d.exists():
            shutil.rmtree(d)
        pm = get_peft_model(load_base(root), LoraConfig(**copy.deepcopy(spec)))
        randomize_lora_(pm, SEED_LORA[name])
        pm.eval()
        pm.save_pretrained(str(d))
        (d / "README.md").unlink()  # peft's empty model-card template
        with open(d / "adapter_config.json") as f:
            acfg = json.load(f)
        finish_adapter(d, name, ids, root, pm, acfg, load_file(str(d / "adapter_model.safetensors")))

    # per-expert (transformers-4) adapter, written here; its config by peft's LoraConfig.save_pretrained
    name = "peft_experts_v4"
    d = root / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    lc = LoraConfig(**copy.deepcopy(V4_LORA))
    lc.base_model_name_or_path = BASE_REL
    lc.inference_mode = True  # as PeftModel.save_pretrained records it
    lc.save_pretrained(str(d))
    with open(d / "adapter_config.json") as f:
        acfg = json.load(f)
    base = load_base(root)
    mcfg = base.config
    E, I, H = mcfg.num_experts, mcfg.moe_intermediate_size, mcfg.hidden_size
    nq, nkv, Dh = mcfg.num_attention_heads, mcfg.num_key_value_heads, mcfg.head_dim
    g = torch.Generator().manual_seed(SEED_LORA[name])
    adapter = {}
    r = V4_LORA["r"]
    sparse, _ = Q.layer_kinds(mcfg)
    for L in range(mcfg.num_hidden_layers):  # v4 module order
        for t, (o, i) in (("q_proj", (nq * Dh, H)), ("v_proj", (nkv * Dh, H))):
            p = f"{PFX}model.layers.{L}.self_attn.{t}"
            adapter[p + ".lora_A.weight"] = STD_LORA * torch.randn(r, i, generator=g)
            adapter[p + ".lora_B.weight"] = STD_LORA * torch.randn(o, r, generator=g)
        check(L in sparse, "all layers sparse")
        for e in range(E):
            for t, (o, i) in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
                p = f"{PFX}model.layers.{L}.mlp.experts.{e}.{t}"
                adapter[p + ".lora_A.weight"] = STD_LORA * torch.randn(r, i, generator=g)
                adapter[p + ".lora_B.weight"] = STD_LORA * torch.randn(o, r, generator=g)
    save_file(dict(sorted(adapter.items())), str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
    # expected logits: W' = W + (alpha/r)·B·A applied by us (float64 merge, rounded once), HF float32 forward
    fused, scal = adapter_to_fused(adapter, acfg, mcfg)
    canon = Q.hf_to_canonical(base)
    merged = numpy_merge(canon, fused, scal)
    mm = model_from_kw(kw_a())
    Q.load_canonical(mm, merged)
    logits, gap = forward(mm, ids, name + " manual merge")
    # what peft makes of it (v4 -> v5 conversion on load), for the record
    pm = PeftModel.from_pretrained(base, str(d))
    unmerged, _ = forward(pm, ids, name + " peft unmerged")
    peft_merged, _ = forward(pm.merge_and_unload(), ids, name + " peft merged")
    dl = float((peft_merged - logits).abs().max())
    check(dl < 1e-4, f"{name}: peft's converted adapter differs from the manual merge by {dl}")
    exp = {"input_ids": ids, "logits": logits, "peft_merged_logits": peft_merged, "peft_unmerged_logits": unmerged}
    exp.update({f"merged.{t}.weight": merged[t + ".weight"] for t in scal})
    exp.update({f"fused.{k}": v for k, v in fused.items()})
    exp.update({f"scaling.{t}": torch.tensor([s], dtype=torch.float32) for t, s in scal.items()})
    save_expected(d, name, exp)
    print(f"[{name}] written (min top-k gap {gap:.2e}; peft v4->v5 conversion vs manual merge {dl:.1e})")


def generate(root: Path) -> None:
    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    ids = make_ids()
    gen_unfused_bf16(root, ids)
    gen_hf5_saved(root, ids)
    gen_fused_f16(root, ids)
    gen_peft(root, ids)


# ---------------------------------------------------------------------------------------------------------------
# verification (reads only the files)
# ---------------------------------------------------------------------------------------------------------------
def load_expected(d: Path):
    exp = load_file(str(d / "expected.safetensors"))
    check(exp["input_ids"].dtype == torch.int32 and tuple(exp["input_ids"].shape) == (BATCH, SEQ), "input_ids")
    check(exp["logits"].dtype == torch.float32, "logits dtype")
    return exp


def same(a, b, what):
    check(torch.equal(f32(a), f32(b)), f"{what}: not bit-identical (max diff {float((f32(a) - f32(b)).abs().max()):.2e})")


def verify_unfused_bf16(root: Path):
    d = root / "unfused_bf16_sharded"
    exp = load_expected(d)
    with open(d / "config.json") as f:
        raw = json.load(f)
    check("num_experts" in raw and "num_local_experts" not in raw and "rope_theta" in raw
          and "rope_parameters" not in raw, "v4 config fields")
    with open(d / "model.safetensors.index.json") as f:
        index = json.load(f)
    files = sorted(set(index["weight_map"].values()))
    check(files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"], f"shards {files}")
    sd, total = {}, 0
    for fn in files:
        dt = file_dtypes(d / fn)
        check(set(dt.values()) == {"BF16"}, f"{fn} dtypes {set(dt.values())}")
        part = load_file(str(d / fn))
        check(all(index["weight_map"][k] == fn for k in part) and not (set(part) & set(sd)), f"{fn} vs weight_map")
        sd.update(part)
        total += sum(nbytes(t) for t in part.values())
    check(set(sd) == set(index["weight_map"]) and total == index["metadata"]["total_size"], "index coverage/size")
    check(index["weight_map"]["model.layers.1.mlp.experts.5.gate_proj.weight"] != index["weight_map"][
        "model.layers.1.mlp.experts.5.up_proj.weight"], "split inside an expert")
    # transformers: config translation and per-expert -> fused conversion on load
    model = from_pretrained(d)
    c = model.config
    check(c.num_experts == raw["num_experts"] and c.num_local_experts == raw["num_experts"], "num_experts mapping")
    check(c.rope_parameters == {"rope_type": "default", "rope_theta": raw["rope_theta"]}, f"rope {c.rope_parameters}")
    check(c.head_dim == raw["head_dim"], "head_dim")
    canon = per_expert_to_canonical(sd, c)
    for L in range(c.num_hidden_layers):
        e = model.model.layers[L].mlp.experts
        p = f"model.layers.{L}.mlp."
        same(e.gate_up_proj, torch.cat([canon[p + "gate_proj.weight"], canon[p + "up_proj.weight"]], 1), "gate_up_proj")
        same(e.down_proj, canon[p + "down_proj.weight"], "down_proj")
    same(forward(model, exp["input_ids"], "bf16 from_pretrained")[0], exp["logits"], "bf16 logits (from_pretrained)")
    m2 = model_from_kw(kw_a())
    Q.load_canonical(m2, canon)
    same(forward(m2, exp["input_ids"], "bf16 own stacking")[0], exp["logits"], "bf16 logits (own stacking)")
    return "from_pretrained + own stacking: bit-identical logits; per-expert keys fused on load"


def verify_hf5(root: Path, name: str):
    d = root / name
    exp = load_expected(d)
    with open(d / "config.json") as f:
        raw = json.load(f)
    check("num_local_experts" in raw and "rope_parameters" in raw and raw["dtype"] == "float32", "v5 config fields")
    dt = file_dtypes(d / "model.safetensors")
    check(set(dt.values()) == {"F32"}, f"{name} dtypes")
    sd = load_file(str(d / "model.safetensors"))
    cfg = Qwen3MoeConfig.from_dict(raw)
    E, I, H = cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size
    if name == "hf5_saved":
        check(not any(k.endswith("gate_up_proj") for k in sd), "no fused keys")
        check(tuple(sd["model.layers.0.mlp.experts.0.gate_proj.weight"].shape) == (I, H)
              and tuple(sd["model.layers.0.mlp.experts.0.down_proj.weight"].shape) == (H, I), "per-expert shapes")
        canon = per_expert_to_canonical(sd, cfg)
    else:
        check(tuple(sd["model.layers.0.mlp.experts.gate_up_proj"].shape) == (E, 2 * I, H)
              and tuple(sd["model.layers.0.mlp.experts.down_proj"].shape) == (E, H, I), "fused shapes")
        canon = hf5_fused_to_canonical(sd, cfg)
    same(forward(from_pretrained(d), exp["input_ids"], name)[0], exp["logits"], f"{name} logits (from_pretrained)")
    m2 = model_from_kw(kw_a())
    Q.load_canonical(m2, canon)
    same(forward(m2, exp["input_ids"], name)[0], exp["logits"], f"{name} logits (own conversion)")
    return "from_pretrained + own conversion: bit-identical logits"


def verify_fused_f16(root: Path):
    d = root / "fused_f16"
    exp = load_expected(d)
    with open(d / "config.json") as f:
        raw = json.load(f)
    check(raw["tie_word_embeddings"] is True, "tied")
    check(set(file_dtypes(d / "model.safetensors").values()) == {"F16"}, "F16")
    sd = load_file(str(d / "model.safetensors"))
    check("lm_head.weight" not in sd and sd["model.layers.0.mlp.gate_proj.weight"].ndim == 3, "fused tied keys")
    cfg = Qwen3MoeConfig.from_dict(raw, attn_implementation="eager", experts_implementation="eager")
    m = Q.build_model(cfg)
    Q.load_canonical(m, {k: f32(v) for k, v in sd.items()})
    same(forward(m, exp["input_ids"], "fused_f16")[0], exp["logits"], "fused_f16 logits")
    return "rebuilt from F16 widened to float32: bit-identical logits"


def verify_adapter(root: Path, name: str):
    d = root / name
    exp = load_expected(d)
    with open(d / "adapter_config.json") as f:
        acfg = json.load(f)
    check(acfg["peft_type"] == "LORA" and acfg["base_model_name_or_path"] == BASE_REL, "adapter_config basics")
    check(set(file_dtypes(d / "adapter_model.safetensors").values()) == {"F32"}, "adapter dtype")
    adapter = load_file(str(d / "adapter_model.safetensors"))
    check(all(float(v.abs().max()) > 0 for v in adapter.values()), "nonzero A and B")
    base = from_pretrained(d / acfg["base_model_name_or_path"])
    canon = Q.hf_to_canonical(base)
    ids = exp["input_ids"]
    base_logits = forward(base, ids, name + " base")[0]
    same(base_logits, load_expected(root / "hf5_saved")["logits"], "base logits")
    moved = float((exp["logits"] - base_logits).abs().max())
    check(moved > 1e-2, f"{name}: adapter barely changes the logits ({moved:.1e})")
    # our documented mapping reproduces the stored fused adapter and scalings
    fused, scal = adapter_to_fused(adapter, acfg, base.config)
    check({k[6:] for k in exp if k.startswith("fused.")} == set(fused), "fused key set")
    for k, v in fused.items():
        same(v, exp["fused." + k], k)
    for t, s in scal.items():
        check(abs(exp["scaling." + t].item() - s) < 1e-7, f"scaling {t}")
    # peft: load, forward, merge
    pm = PeftModel.from_pretrained(base, str(d))
    unmerged = forward(pm, ids, name + " unmerged")[0]
    merged_model = pm.merge_and_unload()
    peft_merged = forward(merged_model, ids, name + " merged")[0]
    mc = Q.hf_to_canonical(merged_model)
    # independent merge (float64 numpy) with the documented mapping
    nm = numpy_merge(canon, fused, scal)
    for t in scal:
        dw = float((mc[t + ".weight"] - nm[t + ".weight"]).abs().max())
        check(dw < 1e-5, f"{name}: peft merged {t} vs numpy merge {dw:.1e}")
    check(set(t for t in scal) == {k[7:-7] for k in exp if k.startswith("merged.")}, "merged key set")
    mm = model_from_kw(kw_a())
    Q.load_canonical(mm, nm)
    numpy_logits = forward(mm, ids, name + " numpy merge")[0]
    if name == "peft_experts_v4":
        same(numpy_logits, exp["logits"], "v4 manual-merge logits")
        for t in scal:
            same(nm[t + ".weight"], exp[f"merged.{t}.weight"], f"merged {t}")
        same(peft_merged, exp["peft_merged_logits"], "peft merged logits")
        same(unmerged, exp["peft_unmerged_logits"], "peft unmerged logits")
        dl = float((peft_merged - exp["logits"]).abs().max())
        check(dl < 1e-4, f"peft v4 conversion differs by {dl}")
        return (f"manual merge bit-identical; peft (v4->v5 conversion on load) merged vs manual: {dl:.1e}; "
                f"adapter moves logits by {moved:.2f}")
    same(peft_merged, exp["logits"], "merged logits")
    same(unmerged, exp["unmerged_logits"], "unmerged logits")
    for t in scal:
        same(mc[t + ".weight"], exp[f"merged.{t}.weight"], f"merged {t}")
    dl = float((numpy_logits - exp["logits"]).abs().max())
    check(dl < 1e-4, f"{name}: numpy merge logits differ by {dl}")
    return (f"peft reload/merge bit-identical; independent float64 merge with documented mapping: |dlogits| {dl:.1e}; "
            f"adapter moves logits by {moved:.2f}")


# Adapters written by our savePeftAdapter (test/peft_adapter.test.ts writes them with TFJS_MOE_WRITE_EXPORTS=1,
# together with our logits in ours.safetensors): peft must load them onto the Transformers model and give those.
EXPORTS = ("export_fused", "export_per_expert", "export_fused_rslora")


def verify_export(root: Path, name: str):
    d = root / name
    ours = load_file(str(d / "ours.safetensors"))["logits"]
    base = load_base(root)
    ids = load_expected(root / "hf5_saved")["input_ids"]
    base_logits = forward(base, ids, name + " base")[0]
    moved = float((ours - base_logits).abs().max())
    check(moved > 1e-2, f"{name}: adapter barely changes the logits ({moved:.1e})")
    pm = PeftModel.from_pretrained(base, str(d))
    unmerged = forward(pm, ids, name + " unmerged")[0]
    merged = forward(pm.merge_and_unload(), ids, name + " merged")[0]
    err = [float((x - ours).norm() / ours.norm()) for x in (unmerged, merged)]
    # per-expert gate/up under rsLoRA would be off by √2 here (peft's v4 conversion); none of ours is.
    check(max(err) <= 1e-5, f"{name}: peft's logits differ from ours (relative {err})")
    return f"peft unmerged / merged vs our logits: relative {err[0]:.1e} / {err[1]:.1e}; adapter moves logits by {moved:.2f}"


def verify(root: Path) -> None:
    print("[unfused_bf16_sharded] verified:", verify_unfused_bf16(root))
    for name in ("hf5_saved", "hf5_fused_saved"):
        print(f"[{name}] verified:", verify_hf5(root, name))
    print("[fused_f16] verified:", verify_fused_f16(root))
    for name in ("peft_attention", "peft_experts", "peft_experts_v4"):
        print(f"[{name}] verified:", verify_adapter(root, name))
    for name in EXPORTS:
        if (root / name).exists():
            print(f"[{name}] verified:", verify_export(root, name))


# ---------------------------------------------------------------------------------------------------------------
# PEFT capability probes (evidence for the README)
# ---------------------------------------------------------------------------------------------------------------
def investigate() -> None:
    ids = make_ids()

    def fresh():
        return model_from_kw(kw_a(), SEED_A)

    probes = [
        ("target_modules=['gate_proj','down_proj']", dict(r=4, target_modules=["gate_proj", "down_proj"])),
        ("target_modules=['experts']", dict(r=4, target_modules=["experts"])),
        ("target_modules=['q_proj','gate']", dict(r=4, target_modules=["q_proj", "gate"])),
        ("target_modules=['gate_proj','up_proj','down_proj'] (v4 names)",
         dict(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"])),
        ("target_modules='all-linear'", dict(r=4, target_modules="all-linear")),
        ("target_modules=['experts.0.gate_proj','experts.0.up_proj']",
         dict(r=4, target_modules=["experts.0.gate_proj", "experts.0.up_proj"])),
        ("target_parameters=['mlp.experts.gate_up_proj'] only", dict(r=4, target_parameters=["mlp.experts.gate_up_proj"])),
        ("target_parameters + lora_dropout=0.1", dict(r=4, lora_dropout=0.1, target_parameters=["mlp.experts.down_proj"])),
        ("target_parameters + use_dora", dict(r=4, use_dora=True, target_parameters=["mlp.experts.down_proj"])),
    ]
    for tag, kw in probes:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try:
                pm = get_peft_model(fresh(), LoraConfig(**kw))
                c = pm.peft_config["default"]
                shapes = sorted({(n.split("layers.0.")[-1], tuple(p.shape)) for n, p in pm.named_parameters()
                                 if "lora_" in n and "layers.0." in n})
                print(f"{tag}: OK -> target_modules={sorted(c.target_modules or [])} "
                      f"target_parameters={sorted(c.target_parameters or [])} rank_pattern={c.rank_pattern} "
                      f"alpha_pattern={c.alpha_pattern}\n    layer-0 LoRA params: {shapes}")
            except Exception as e:  # noqa: BLE001
                print(f"{tag}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            for x in w:
                if "rank_pattern" in str(x.message) or "alpha_pattern" in str(x.message) or "matched" in str(x.message):
                    print("    warning:", str(x.message)[:200])

    # rsLoRA + v4 per-expert adapter: conversion doubles r and alpha for gate_up_proj, which keeps alpha/r but not
    # alpha/sqrt(r): the gate/up delta comes out sqrt(2) too large.
    with tempfile.TemporaryDirectory() as tmp:
        mcfg = fresh().config
        E, I, H, r, alpha = mcfg.num_experts, mcfg.moe_intermediate_size, mcfg.hidden_size, 4, 8
        g = torch.Generator().manual_seed(7)
        ad = {}
        for L in range(mcfg.num_hidden_layers):
            for e in range(E):
                for t, (o, i) in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
                    p = f"{PFX}model.layers.{L}.mlp.experts.{e}.{t}"
                    ad[p + ".lora_A.weight"] = STD_LORA * torch.randn(r, i, generator=g)
                    ad[p + ".lora_B.weight"] = STD_LORA * torch.randn(o, r, generator=g)
        LoraConfig(r=r, lora_alpha=alpha, use_rslora=True, target_modules=list(EXPERT_PROJ)).save_pretrained(tmp)
        save_file(ad, tmp + "/adapter_model.safetensors", metadata={"format": "pt"})
        acfg = json.load(open(tmp + "/adapter_config.json"))
        fused, scal = adapter_to_fused(ad, acfg, mcfg)
        canon = Q.hf_to_canonical(fresh())
        res = {}
        for tag, fac in (("alpha/sqrt(r)", 1.0), ("sqrt(2)*alpha/sqrt(r) on gate/up", 2 ** 0.5)):
            s2 = {t: s * (fac if not t.endswith("down_proj") else 1.0) for t, s in scal.items()}
            mm = model_from_kw(kw_a())
            Q.load_canonical(mm, numpy_merge(canon, fused, s2))
            res[tag] = forward(mm, ids, "rslora")[0]
        pm = PeftModel.from_pretrained(fresh(), tmp)
        got = forward(pm.merge_and_unload(), ids, "rslora peft")[0]
        for tag, ref in res.items():
            print(f"v4 per-expert adapter with use_rslora=True, peft merged vs manual merge with {tag}: "
                  f"max |dlogits| = {float((got - ref).abs().max()):.2e}")
        # saving an adapter loaded from the v4 format writes the v5 (target_parameters) format
        pm2 = PeftModel.from_pretrained(fresh(), tmp)
        pm2.save_pretrained(tmp + "/resaved")
        c = json.load(open(tmp + "/resaved/adapter_config.json"))
        keys = sorted((k, tuple(v.shape)) for k, v in load_file(tmp + "/resaved/adapter_model.safetensors").items()
                      if "layers.0." in k)
        print(f"v4 adapter re-saved by peft: target_modules={c['target_modules']} target_parameters="
              f"{sorted(c['target_parameters'])} rank_pattern={c['rank_pattern']} alpha_pattern={c['alpha_pattern']}"
              f"\n    layer-0 keys: {keys}")


# ---------------------------------------------------------------------------------------------------------------
def versions() -> dict:
    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "safetensors": safetensors.__version__, "numpy": np.__version__}


def all_files(root: Path) -> list[Path]:
    """The files this script writes (the export_* folders come from our exporter)."""
    return sorted(p.relative_to(root) for p in root.rglob("*")
                  if p.is_file() and p != root / "README.md" and p.relative_to(root).parts[0] not in EXPORTS)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--verify-only", action="store_true")
    ap.add_argument("--check-reproducible", action="store_true",
                    help="regenerate into a temporary folder and require byte-identical files in --out")
    ap.add_argument("--investigate", action="store_true", help="print the PEFT capability probes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    v = versions()
    for pkg, want in PINNED.items():
        if v[pkg] != want:
            warnings.warn(f"{pkg} {v[pkg]} installed, fixtures were pinned with {want}")
    print("versions:", json.dumps(v))
    root = args.out.resolve()

    if args.investigate:
        investigate()
        return
    if args.check_reproducible:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            a, b = all_files(Path(tmp)), all_files(root)
            bad = [str(p) for p in a if not (root / p).exists()
                   or (Path(tmp) / p).read_bytes() != (root / p).read_bytes()]
            extra = sorted(set(map(str, b)) - set(map(str, a)))
            if bad or extra:
                sys.exit(f"not byte-identical: {bad}; not regenerated: {extra}")
            print(f"all {len(a)} fixture files byte-identical to a fresh regeneration")
        return
    if not args.verify_only:
        generate(root)
    verify(root)
    total = 0
    for p in all_files(root):
        sz = os.path.getsize(root / p)
        total += sz
        print(f"  {p}: {sz / 1024:.1f} KiB")
    readme = root / "README.md"
    if readme.exists():
        total += os.path.getsize(readme)
    print(f"total (incl. README.md): {total / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
