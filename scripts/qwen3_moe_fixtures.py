#!/usr/bin/env python3
"""Reference oracle: write Qwen3-MoE test fixtures from Hugging Face Transformers.

What it does
  Builds random tiny Qwen3-MoE models with transformers' Qwen3MoeForCausalLM (float32, eager attention,
  eager experts), runs them on a fixed batch, adds LoRA by torch reparametrisation (W' = W + (alpha/r)·B·A)
  and records everything our TensorFlow.js implementation must reproduce:
    test/fixtures/qwen3_moe/<config>/config.json        HF config dict + "lora" + "oracle" (derived facts)
    test/fixtures/qwen3_moe/<config>/weights.safetensors base weights (canonical names, fused experts) + LoRA A/B
    test/fixtures/qwen3_moe/<config>/io.safetensors      inputs, logits, losses, routing, LoRA loss/logits/grads
  Then it verifies the fixtures: reloads them, rebuilds the HF model from the canonical tensors and checks that
  logits/losses/LoRA gradients reproduce bit-for-bit, that top-k of softmax(router logits) reproduces the stored
  expert ids/weights, that CE and aux loss recomputed in numpy agree, that the LoRA model equals the base model
  with merged weights, and that the LoRA gradients agree with central finite differences (float64).
  Python is an oracle only: nothing here is a runtime dependency of the package.

Configs: base, mlp_only, sparse_step2, tied, no_norm_topk, gqa, aux_loss, padding (right padding in row 0),
  padding_left (left padding in row 1 + aux loss; the first real token's label is -100 too, see make_inputs).
  Batch 2 x 7 random ids; labels = input ids with -100 at padding (HF shifts them inside the loss).

Setup (CPU only; do not let pip pull a CUDA torch):
  python3.11 -m venv .venv-oracle            # git-ignored via .git/info/exclude ('/.venv-oracle/')
  .venv-oracle/bin/pip install torch==2.13.0 transformers==5.24.0 safetensors==0.8.0 numpy==2.4.6
  (where PyPI would give a CUDA build, add: --index-url https://download.pytorch.org/whl/cpu for torch)

Run (from the repo root; ~10 s on 2 cores):
  .venv-oracle/bin/python scripts/qwen3_moe_fixtures.py                        # regenerate all + verify
  .venv-oracle/bin/python scripts/qwen3_moe_fixtures.py --verify-only          # verify committed fixtures
  .venv-oracle/bin/python scripts/qwen3_moe_fixtures.py --check-reproducible   # regenerate to tmp, byte-compare
  .venv-oracle/bin/python scripts/qwen3_moe_fixtures.py --configs base gqa --out /tmp/fx

Pinned versions this was run with: Python 3.11.7, torch 2.13.0+cpu, transformers 5.24.0, safetensors 0.8.0,
numpy 2.4.6 (the script warns when others are installed; fixtures may then differ in the last bits).
torch.set_num_threads(1) fixes the reduction order; files are byte-stable across runs.

Canonical tensor names / layouts (converted from transformers 5's storage):
  everything except experts: HF names ([out, in] for linear weights), e.g. model.layers.L.self_attn.q_proj.weight,
    model.layers.L.mlp.gate.weight (router [E, H]), lm_head.weight (absent when tied), dense MLP layers
    model.layers.L.mlp.{gate,up,down}_proj.weight [out, in].
  experts (fused, seed-project layout): model.layers.L.mlp.{gate,up}_proj.weight [E, moe_I, H],
    model.layers.L.mlp.down_proj.weight [E, H, moe_I].  transformers 5.24 stores them as
    model.layers.L.mlp.experts.gate_up_proj [E, 2·moe_I, H] (rows [:moe_I] = gate, [moe_I:] = up, as the eager
    forward does `linear(x, gate_up_proj[e]).chunk(2, dim=-1)`) and model.layers.L.mlp.experts.down_proj [E, H, moe_I].
  LoRA: <target>.lora_A.weight / <target>.lora_B.weight next to <target>.weight;
    dense: A [r, in], B [out, r]; experts: A [E, r, in], B [E, out, r]; W' = W + (alpha/r)·B·A (per expert).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

import safetensors
import transformers
from safetensors.torch import load_file, save_file
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers.models.qwen3_moe import modeling_qwen3_moe as hf_qwen3_moe
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeMLP, Qwen3MoeSparseMoeBlock

PINNED = {"torch": "2.13.0+cpu", "transformers": "5.24.0", "safetensors": "0.8.0", "numpy": "2.4.6"}
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "test" / "fixtures" / "qwen3_moe"

# ---------------------------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------------------------
# transformers 5.24 has no head_dim field in Qwen3MoeConfig: attention uses
# getattr(config, "head_dim", hidden_size // num_attention_heads) (= 16 // 8 = 2 here); we set it explicitly.
BASE = dict(
    vocab_size=97,
    hidden_size=16,
    intermediate_size=5,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=2,
    moe_intermediate_size=3,
    num_experts=11,
    num_experts_per_tok=8,
    norm_topk_prob=True,
    decoder_sparse_step=1,
    mlp_only_layers=[],
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    hidden_act="silu",
    attention_bias=False,
    attention_dropout=0.0,
    use_sliding_window=False,
    tie_word_embeddings=False,
    output_router_logits=False,
    router_aux_loss_coef=0.001,
    max_position_embeddings=128,
    initializer_range=0.02,  # unused: every parameter is overwritten below
)

# name -> (seed, HF config overrides, padding spec or None)
# padding spec: (row, side, count): `count` pad positions on `side` of sequence `row`.
CONFIGS: dict[str, tuple[int, dict, tuple[int, str, int] | None]] = {
    "base": (1001, {}, None),
    "mlp_only": (1002, {"mlp_only_layers": [0]}, None),
    "sparse_step2": (1003, {"num_hidden_layers": 3, "decoder_sparse_step": 2}, None),
    "tied": (1004, {"tie_word_embeddings": True}, None),
    "no_norm_topk": (1005, {"norm_topk_prob": False, "num_experts_per_tok": 4}, None),
    "gqa": (
        1006,
        {"num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 4,
         "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
        None,
    ),
    "aux_loss": (1007, {"output_router_logits": True, "router_aux_loss_coef": 0.01}, None),
    # right padding (the usual training layout): no fully-masked attention rows.
    "padding": (1108, {}, (0, "right", 2)),
    # left padding + aux loss: exercises fully-masked attention rows (see oracle.notes) and the masked aux loss.
    "padding_left": (1009, {"output_router_logits": True, "router_aux_loss_coef": 0.01}, (1, "left", 3)),
}

BATCH, SEQ = 2, 7
# Seeds above are chosen so that every token's k-th and (k+1)-th router logits differ by at least this much
# (base and LoRA forward), so float32 re-implementations cannot flip the expert selection.
MIN_LOGIT_GAP = 1e-3
PAD_ID = 0
# LoRA
LORA_ALPHA = 8.0
LORA_R = {"q_proj": 2, "k_proj": 2, "v_proj": 2, "o_proj": 2, "gate_proj": 4, "up_proj": 4, "down_proj": 4}
ATTN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
# init stds
STD_LINEAR, STD_EMBED, STD_NORM, STD_LORA = 0.5, 1.0, 0.1, 0.2


# Conventions of transformers 5.24's Qwen3-MoE (eager paths) that the fixtures encode; copied into config.json.
NOTES = [
    "labels: HF shifts inside the loss (logits[:, t] predict labels[:, t+1]); CE = mean over targets != -100, "
    "computed on logits.float()",
    "io tensors: router.L.* are for sparse layer L (flat token index b*S+s); expert_ids best first (torch.topk of "
    "softmax(logits) in float32); weights = top-k probs, divided by their sum iff norm_topk_prob; hidden.L = output of "
    "decoder layer L (before the final norm); lora_* = same with LoRA; grad.N = d lora_loss / d N "
    "(float32 model), grad64.N = the same from a float64 model",
    "RMSNorm: x32 = x.float(); y = x32 * rsqrt(mean(x32^2, -1) + eps); out = weight * y.to(x.dtype) (no 1+w offset)",
    "attention: q_norm/k_norm are RMSNorms over head_dim applied per head to q/k BEFORE RoPE; RoPE is rotate_half "
    "(split halves, not interleaved): x*cos + cat(-x2, x1)*sin with inv_freq = theta^(-arange(0,d,2)/d), "
    "emb = cat(freqs, freqs); scaling head_dim^-0.5; GQA: kv head j serves query heads j*g..(j+1)*g-1",
    "eager mask: allowed(q, kv) = kv <= q and attention_mask[b, kv]; disallowed scores get + finfo(float32).min "
    "(finite, not -inf); softmax in float32. Query rows are not masked: a fully masked row (left padding) becomes "
    "uniform over ALL keys, including later ones",
    "position_ids = arange(S) for every row, also with left padding",
    "experts (eager): per expert in ascending id, out += (down(silu(gate(x)) * up(x))) * routing_weight, "
    "accumulated with index_add_",
    "aux loss (output_router_logits): over all sparse layers' router logits together: p = softmax(logits); "
    "counts[e] = #top-k assignments to e (weighted by attention_mask), P[e] = sum of p[:, e] (masked); "
    "rows = n_sparse_layers * n_unmasked_tokens; aux = E * sum_e (counts[e]/rows) * (P[e]/rows) (balanced = k); "
    "loss = ce + router_aux_loss_coef * aux",
]


def hf_kwargs(name: str) -> dict:
    kw = copy.deepcopy(BASE)
    kw.update(copy.deepcopy(CONFIGS[name][1]))
    return kw


def make_config(kw: dict) -> Qwen3MoeConfig:
    # transformers 5: implementations are picked with these two kwargs (stored as config._attn_implementation /
    # config._experts_implementation). Defaults would be "sdpa" and "grouped_mm"; grouped_mm raises
    # "strides should be multiple of 16 bytes" on CPU for these tiny shapes.
    return Qwen3MoeConfig(**kw, attn_implementation="eager", experts_implementation="eager")


def build_model(cfg: Qwen3MoeConfig, dtype=torch.float32) -> Qwen3MoeForCausalLM:
    model = Qwen3MoeForCausalLM(cfg).to(dtype).eval()
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    assert model.config._experts_implementation == "eager", model.config._experts_implementation
    return model


def layer_kinds(cfg: Qwen3MoeConfig) -> tuple[list[int], list[int]]:
    sparse, dense = [], []
    for i in range(cfg.num_hidden_layers):
        is_sparse = i not in cfg.mlp_only_layers and cfg.num_experts > 0 and (i + 1) % cfg.decoder_sparse_step == 0
        (sparse if is_sparse else dense).append(i)
    return sparse, dense


# ---------------------------------------------------------------------------------------------------------------
# Weights: random init, HF <-> canonical
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def randomize_(model: Qwen3MoeForCausalLM, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():  # tied lm_head is deduplicated away
        if name.endswith("norm.weight"):
            p.copy_(1.0 + STD_NORM * torch.randn(p.shape, generator=g))
        elif "embed_tokens" in name:
            p.copy_(STD_EMBED * torch.randn(p.shape, generator=g))
        else:
            p.copy_(STD_LINEAR * torch.randn(p.shape, generator=g))
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight


def hf_to_canonical(model: Qwen3MoeForCausalLM) -> dict[str, torch.Tensor]:
    cfg = model.config
    I = cfg.moe_intermediate_size
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().to(torch.float32).contiguous().clone()
        if k == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if k.endswith(".mlp.experts.gate_up_proj"):
            pre = k[: -len("experts.gate_up_proj")]
            assert v.shape[1] == 2 * I
            out[pre + "gate_proj.weight"] = v[:, :I].contiguous()
            out[pre + "up_proj.weight"] = v[:, I:].contiguous()
        elif k.endswith(".mlp.experts.down_proj"):
            out[k[: -len("experts.down_proj")] + "down_proj.weight"] = v
        else:
            out[k] = v
    return out


def canonical_to_hf(sd: dict[str, torch.Tensor], cfg: Qwen3MoeConfig) -> dict[str, torch.Tensor]:
    sparse, _ = layer_kinds(cfg)
    out = {k: v for k, v in sd.items() if ".lora_" not in k}
    for L in sparse:
        pre = f"model.layers.{L}.mlp."
        g, u, d = out.pop(pre + "gate_proj.weight"), out.pop(pre + "up_proj.weight"), out.pop(pre + "down_proj.weight")
        assert g.ndim == 3 and u.ndim == 3 and d.ndim == 3
        out[pre + "experts.gate_up_proj"] = torch.cat([g, u], dim=1)
        out[pre + "experts.down_proj"] = d
    if cfg.tie_word_embeddings:
        assert "lm_head.weight" not in sd
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def load_canonical(model: Qwen3MoeForCausalLM, sd: dict[str, torch.Tensor]) -> None:
    hf = canonical_to_hf(sd, model.config)
    dtype = next(model.parameters()).dtype
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in hf.items()}, strict=True)
    assert not missing and not unexpected
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight


# ---------------------------------------------------------------------------------------------------------------
# LoRA by torch parametrisation
# ---------------------------------------------------------------------------------------------------------------
class LinearLora(nn.Module):
    """W [out, in] -> W + s·B·A with A [r, in], B [out, r]."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor, scaling: float):
        super().__init__()
        self.lora_A, self.lora_B, self.scaling = nn.Parameter(A), nn.Parameter(B), scaling

    def forward(self, W):
        return W + self.scaling * (self.lora_B @ self.lora_A)


class ExpertsGateUpLora(nn.Module):
    """gate_up_proj [E, 2I, H] -> W + s·cat([Bg·Ag, Bu·Au], dim=1); A [E, r, H], B [E, I, r]."""

    def __init__(self, Ag, Bg, Au, Bu, scaling: float):
        super().__init__()
        self.gate_A, self.gate_B = nn.Parameter(Ag), nn.Parameter(Bg)
        self.up_A, self.up_B = nn.Parameter(Au), nn.Parameter(Bu)
        self.scaling = scaling

    def forward(self, W):
        return W + self.scaling * torch.cat([self.gate_B @ self.gate_A, self.up_B @ self.up_A], dim=1)


class ExpertsDownLora(nn.Module):
    """down_proj [E, H, I] -> W + s·B·A; A [E, r, I], B [E, H, r]."""

    def __init__(self, A, B, scaling: float):
        super().__init__()
        self.lora_A, self.lora_B, self.scaling = nn.Parameter(A), nn.Parameter(B), scaling

    def forward(self, W):
        return W + self.scaling * (self.lora_B @ self.lora_A)


def lora_targets(cfg: Qwen3MoeConfig) -> list[tuple[str, str, tuple[int, ...], int]]:
    """[(canonical target prefix, short name, weight shape (canonical), r)] in a fixed order."""
    sparse, _ = layer_kinds(cfg)
    H, Dh = cfg.hidden_size, cfg.head_dim
    nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    E, mI, dI = cfg.num_experts, cfg.moe_intermediate_size, cfg.intermediate_size
    out = []
    for L in range(cfg.num_hidden_layers):
        a = f"model.layers.{L}.self_attn."
        shapes = {"q_proj": (nq * Dh, H), "k_proj": (nkv * Dh, H), "v_proj": (nkv * Dh, H), "o_proj": (H, nq * Dh)}
        for t in ATTN_TARGETS:
            out.append((a + t, t, shapes[t], LORA_R[t]))
        m = f"model.layers.{L}.mlp."
        if L in sparse:
            shapes = {"gate_proj": (E, mI, H), "up_proj": (E, mI, H), "down_proj": (E, H, mI)}
        else:
            shapes = {"gate_proj": (dI, H), "up_proj": (dI, H), "down_proj": (H, dI)}
        for t in MLP_TARGETS:
            out.append((m + t, t, shapes[t], LORA_R[t]))
    return out


def random_lora(cfg: Qwen3MoeConfig, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for prefix, _, shape, r in lora_targets(cfg):
        if len(shape) == 3:
            E, o, i = shape
            a_shape, b_shape = (E, r, i), (E, o, r)
        else:
            o, i = shape
            a_shape, b_shape = (r, i), (o, r)
        sd[prefix + ".lora_A.weight"] = STD_LORA * torch.randn(a_shape, generator=g)
        sd[prefix + ".lora_B.weight"] = STD_LORA * torch.randn(b_shape, generator=g)
    return sd


def apply_lora(model: Qwen3MoeForCausalLM, lora: dict[str, torch.Tensor]) -> dict[str, nn.Parameter]:
    """Freeze base weights and register LoRA parametrisations; returns {canonical LoRA name: Parameter}."""
    cfg = model.config
    sparse, _ = layer_kinds(cfg)
    dtype = next(model.parameters()).dtype
    for p in model.parameters():
        p.requires_grad_(False)
    params: dict[str, nn.Parameter] = {}

    def T(name):
        return lora[name].detach().clone().to(dtype)

    def s(t):
        return LORA_ALPHA / LORA_R[t]

    for L, layer in enumerate(model.model.layers):
        a = f"model.layers.{L}.self_attn."
        for t in ATTN_TARGETS:
            mod = LinearLora(T(a + t + ".lora_A.weight"), T(a + t + ".lora_B.weight"), s(t))
            parametrize.register_parametrization(getattr(layer.self_attn, t), "weight", mod)
            params[a + t + ".lora_A.weight"], params[a + t + ".lora_B.weight"] = mod.lora_A, mod.lora_B
        m = f"model.layers.{L}.mlp."
        if L in sparse:
            assert isinstance(layer.mlp, Qwen3MoeSparseMoeBlock)
            assert s("gate_proj") == s("up_proj")
            gu = ExpertsGateUpLora(T(m + "gate_proj.lora_A.weight"), T(m + "gate_proj.lora_B.weight"),
                                   T(m + "up_proj.lora_A.weight"), T(m + "up_proj.lora_B.weight"), s("gate_proj"))
            parametrize.register_parametrization(layer.mlp.experts, "gate_up_proj", gu)
            dn = ExpertsDownLora(T(m + "down_proj.lora_A.weight"), T(m + "down_proj.lora_B.weight"), s("down_proj"))
            parametrize.register_parametrization(layer.mlp.experts, "down_proj", dn)
            params.update({m + "gate_proj.lora_A.weight": gu.gate_A, m + "gate_proj.lora_B.weight": gu.gate_B,
                           m + "up_proj.lora_A.weight": gu.up_A, m + "up_proj.lora_B.weight": gu.up_B,
                           m + "down_proj.lora_A.weight": dn.lora_A, m + "down_proj.lora_B.weight": dn.lora_B})
        else:
            assert isinstance(layer.mlp, Qwen3MoeMLP)
            for t in MLP_TARGETS:
                mod = LinearLora(T(m + t + ".lora_A.weight"), T(m + t + ".lora_B.weight"), s(t))
                parametrize.register_parametrization(getattr(layer.mlp, t), "weight", mod)
                params[m + t + ".lora_A.weight"], params[m + t + ".lora_B.weight"] = mod.lora_A, mod.lora_B
    assert set(params) == set(lora), set(params) ^ set(lora)
    assert all(p.requires_grad for p in params.values())
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in params.values()}, "only LoRA params may be trainable"
    return params


def merged_canonical(base: dict[str, torch.Tensor], lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Independent merge in float64 numpy: W' = W + (alpha/r)·B·A (per expert for 3-D)."""
    out = dict(base)
    for k in lora:
        if not k.endswith(".lora_A.weight"):
            continue
        prefix = k[: -len(".lora_A.weight")]
        t = prefix.rsplit(".", 1)[1]
        A = lora[k].double().numpy()
        B = lora[prefix + ".lora_B.weight"].double().numpy()
        W = base[prefix + ".weight"].double().numpy()
        delta = np.einsum("...or,...ri->...oi", B, A) * (LORA_ALPHA / LORA_R[t])
        out[prefix + ".weight"] = torch.from_numpy((W + delta).astype(np.float32))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------------
def make_inputs(cfg: Qwen3MoeConfig, seed: int, pad) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 7)
    ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=g)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    if pad is not None:
        row, side, count = pad
        cols = slice(SEQ - count, SEQ) if side == "right" else slice(0, count)
        mask[row, cols] = 0
        ids[row, cols] = PAD_ID
    labels = ids.clone()
    labels[mask == 0] = -100
    if pad is not None and pad[1] == "left":
        # HF shifts labels inside the loss: logits[t] predict labels[t+1]. With left padding the last pad position
        # (a fully-masked attention row: uniform attention over *all* keys, and an autograd gradient that does not
        # match that constant forward) would predict the first real token. Masking that label too gives exactly the
        # loss of the unpadded sequence, as in the right-padded case.
        labels[pad[0], pad[2]] = -100
    return ids, mask, labels


def run(model, ids, mask, labels, capture_routing=True):
    """Forward with hooks; returns dict of outputs (tensors keep grad where applicable)."""
    routing, hidden, hooks = {}, {}, []
    if capture_routing:
        for L, layer in enumerate(model.model.layers):
            if isinstance(layer.mlp, Qwen3MoeSparseMoeBlock):
                def hook(mod, inp, out, L=L):
                    logits, scores, idx = out
                    routing[L] = (logits.detach().clone(), scores.detach().clone(), idx.detach().clone())
                hooks.append(layer.mlp.gate.register_forward_hook(hook))
            hooks.append(layer.register_forward_hook(
                lambda mod, inp, out, L=L: hidden.__setitem__(L, (out[0] if isinstance(out, tuple) else out).detach().clone())))
    try:
        out = model(input_ids=ids.long(), attention_mask=mask.long(), labels=labels.long())
    finally:
        for h in hooks:
            h.remove()
    ce = model.loss_function(out.logits, labels.long(), model.config.vocab_size)
    return {"loss": out.loss, "logits": out.logits, "aux_loss": out.aux_loss, "ce_loss": ce,
            "routing": routing, "hidden": hidden}


def f32(t) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous()


def i32(t) -> torch.Tensor:
    return t.detach().to(torch.int32).contiguous()


def topk_gap(router_logits: torch.Tensor, k: int) -> float:
    """Smallest router-logit margin between the k-th and (k+1)-th expert (ordering of softmax == of logits)."""
    s = torch.sort(router_logits.double(), dim=-1, descending=True).values
    return float((s[:, k - 1] - s[:, k]).min()) if k < s.shape[-1] else float("inf")


def generate(name: str, out_root: Path) -> None:
    seed, _, pad = CONFIGS[name]
    torch.manual_seed(seed)
    kw = hf_kwargs(name)
    cfg = make_config(kw)
    model = build_model(cfg)
    randomize_(model, seed)
    sparse, dense = layer_kinds(cfg)
    k = cfg.num_experts_per_tok

    base_sd = hf_to_canonical(model)
    lora_sd = random_lora(cfg, seed + 1)
    ids, mask, labels = make_inputs(cfg, seed, pad)

    io: dict[str, torch.Tensor] = {"input_ids": i32(ids), "attention_mask": i32(mask), "labels": i32(labels)}
    with torch.no_grad():
        r = run(model, ids, mask, labels)
    io["logits"] = f32(r["logits"])
    io["loss"] = f32(r["loss"]).reshape(1)
    io["ce_loss"] = f32(r["ce_loss"]).reshape(1)
    if r["aux_loss"] is not None:
        io["aux_loss"] = f32(r["aux_loss"]).reshape(1)
    gaps = []
    for L in sparse:
        logits, scores, idx = r["routing"][L]
        io[f"router.{L}.logits"] = f32(logits)
        io[f"router.{L}.weights"] = f32(scores)
        io[f"router.{L}.expert_ids"] = i32(idx)
        gaps.append(topk_gap(logits, k))
    for L, h in r["hidden"].items():
        io[f"hidden.{L}"] = f32(h)

    # LoRA model: a fresh model rebuilt from the canonical tensors, LoRA by parametrisation.
    lmodel = build_model(make_config(kw))
    load_canonical(lmodel, base_sd)
    params = apply_lora(lmodel, lora_sd)
    lr = run(lmodel, ids, mask, labels)
    lr["loss"].backward()
    io["lora_logits"] = f32(lr["logits"])
    io["lora_loss"] = f32(lr["loss"]).reshape(1)
    io["lora_ce_loss"] = f32(lr["ce_loss"]).reshape(1)
    if lr["aux_loss"] is not None:
        io["lora_aux_loss"] = f32(lr["aux_loss"]).reshape(1)
    for L in sparse:
        logits, scores, idx = lr["routing"][L]
        io[f"lora_router.{L}.logits"] = f32(logits)
        io[f"lora_router.{L}.weights"] = f32(scores)
        io[f"lora_router.{L}.expert_ids"] = i32(idx)
        gaps.append(topk_gap(logits, k))
    check(min(gaps) >= MIN_LOGIT_GAP if gaps else True,
          f"[{name}] seed {seed}: near-tie in routing (min top-k logit gap {min(gaps):.2e}); pick another seed")
    for n, p in params.items():
        assert p.grad is not None and float(p.grad.abs().max()) > 0, f"zero grad for {n}"
        io["grad." + n] = f32(p.grad)
    # The same gradients from a float64 model (the exact values, rounded once to float32): another
    # float32 implementation is compared with these, since two float32 runs each carry their own rounding.
    for n, g in float64_grads(cfg, base_sd, lora_sd, ids, mask, labels).items():
        io["grad64." + n] = f32(g)

    d = out_root / name
    d.mkdir(parents=True, exist_ok=True)
    weights = {**base_sd, **{k_: f32(v) for k_, v in lora_sd.items()}}
    # one metadata key only: safetensors serialises the metadata map in hash order, >1 key is not byte-stable
    meta = {"generator": f"scripts/qwen3_moe_fixtures.py {name}"}
    save_file(dict(sorted(weights.items())), str(d / "weights.safetensors"), metadata=meta)
    save_file(dict(sorted(io.items())), str(d / "io.safetensors"), metadata=meta)

    hf_dict = cfg.to_dict()
    hf_dict.pop("transformers_version", None)  # recorded under oracle.versions instead
    targets = lora_targets(cfg)
    hf_dict["lora"] = {
        "alpha": LORA_ALPHA,
        "r": dict(LORA_R),
        "scaling": {t: LORA_ALPHA / r_ for t, r_ in LORA_R.items()},
        "target_modules": list(ATTN_TARGETS + MLP_TARGETS),
        "targets": [p for p, *_ in targets],
        "formula": "W' = W + (alpha / r) * B @ A; dense A [r,in] B [out,r]; experts A [E,r,in] B [E,out,r]",
        "init": f"A, B ~ N(0, {STD_LORA}^2) (both nonzero); base weights frozen",
    }
    hf_dict["oracle"] = {
        "seed": seed,
        "versions": versions(),
        "attn_implementation": "eager",
        "experts_implementation": "eager",
        "dtype": "float32",
        "num_experts": cfg.num_experts,
        "head_dim": cfg.head_dim,
        "rope_theta": cfg.rope_parameters["rope_theta"],
        "sparse_layers": sparse,
        "dense_layers": dense,
        "batch": BATCH,
        "seq_len": SEQ,
        "padding": None if pad is None else {"row": pad[0], "side": pad[1], "count": pad[2], "pad_id": PAD_ID},
        "position_ids": "arange(seq_len) for every row (not derived from attention_mask)",
        "init": {"linear_std": STD_LINEAR, "embed_std": STD_EMBED, "norm": f"1 + N(0, {STD_NORM}^2)"},
        "min_topk_logit_gap": min(gaps) if gaps else None,
        "loss": "loss = ce_loss + router_aux_loss_coef * aux_loss when output_router_logits, else ce_loss",
        "notes": NOTES,
    }
    with open(d / "config.json", "w") as f:
        json.dump(hf_dict, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"[{name}] loss={io['loss'].item():.6f} ce={io['ce_loss'].item():.6f}"
          + (f" aux={io['aux_loss'].item():.6f}" if "aux_loss" in io else "")
          + f" lora_loss={io['lora_loss'].item():.6f} min_topk_gap={min(gaps) if gaps else None}")


# ---------------------------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------------------------
def np_ce(logits: np.ndarray, labels: np.ndarray) -> float:
    V = logits.shape[-1]
    lg = logits[:, :-1].reshape(-1, V).astype(np.float64)
    tg = labels[:, 1:].reshape(-1)
    keep = tg != -100
    lg, tg = lg[keep], tg[keep]
    m = lg.max(-1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(lg - m).sum(-1)))
    return float((lse - lg[np.arange(len(tg)), tg]).mean())


def np_softmax(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_aux(router_logits: list[np.ndarray], E: int, k: int, mask: np.ndarray) -> float:
    m = mask.reshape(-1).astype(np.float64)
    counts, probs, rows = np.zeros(E), np.zeros(E), 0.0
    for lg in router_logits:
        p = np_softmax(lg)
        top = np.argsort(-p, axis=-1, kind="stable")[:, :k]
        for t in range(p.shape[0]):
            counts[top[t]] += m[t]
        probs += (p * m[:, None]).sum(0)
        rows += m.sum()
    return float(E * np.sum((counts / rows) * (probs / rows)))


def loss64(logits, router_logits, labels, mask, cfg) -> torch.Tensor:
    """HF's loss (shifted CE, mean over labels != -100, + coef·aux when output_router_logits) in float64."""
    V = logits.shape[-1]
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    if not cfg.output_router_logits:
        return ce
    E, k = cfg.num_experts, cfg.num_experts_per_tok
    m = mask.reshape(-1).to(logits.dtype)
    counts = torch.zeros(E, dtype=logits.dtype)
    probs = torch.zeros(E, dtype=logits.dtype)
    for lg in router_logits:
        p = torch.softmax(lg, dim=-1)
        top = torch.topk(p, k, dim=-1).indices
        counts = counts + torch.zeros(E, dtype=logits.dtype).scatter_add(0, top.reshape(-1), m.repeat_interleave(k))
        probs = probs + (p * m[:, None]).sum(0)
    rows = m.sum() * len(router_logits)
    aux = E * torch.sum((counts / rows) * (probs / rows))
    return ce + cfg.router_aux_loss_coef * aux


@contextlib.contextmanager
def true_float64():
    """Temporarily remove transformers' hard-coded float32 steps so that a float64 model is float64 throughout
    (RMSNorm computes in float32, router softmax uses dtype=torch.float, eager attention softmax dtype=float32).
    Used only by the finite-difference check; the fixtures themselves come from the unpatched float32 model."""
    M = hf_qwen3_moe
    saved = (M.Qwen3MoeRMSNorm.forward, M.Qwen3MoeTopKRouter.forward, M.eager_attention_forward)

    def rms(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def router(self, h):
        h = h.reshape(-1, self.hidden_dim)
        logits = torch.nn.functional.linear(h, self.weight)
        w, idx = torch.topk(torch.softmax(logits, dim=-1), self.top_k, dim=-1)
        if self.norm_topk_prob:
            w = w / w.sum(dim=-1, keepdim=True)
        return logits, w, idx

    def attn(module, q, k, v, mask, scaling, dropout=0.0, **kw):
        k, v = M.repeat_kv(k, module.num_key_value_groups), M.repeat_kv(v, module.num_key_value_groups)
        w = torch.matmul(q, k.transpose(2, 3)) * scaling
        if mask is not None:
            w = w + mask
        w = torch.softmax(w, dim=-1)
        return torch.matmul(w, v).transpose(1, 2).contiguous(), w

    M.Qwen3MoeRMSNorm.forward, M.Qwen3MoeTopKRouter.forward, M.eager_attention_forward = rms, router, attn
    try:
        yield
    finally:
        M.Qwen3MoeRMSNorm.forward, M.Qwen3MoeTopKRouter.forward, M.eager_attention_forward = saved


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def verify(name: str, root: Path, fd: bool = True) -> None:
    d = root / name
    with open(d / "config.json") as f:
        full = json.load(f)
    lora_meta, oracle = full.pop("lora"), full.pop("oracle")
    cfg = Qwen3MoeConfig.from_dict(full, attn_implementation="eager", experts_implementation="eager")
    check(cfg.head_dim == oracle["head_dim"] and cfg.num_experts == oracle["num_experts"], "config roundtrip")
    check(cfg.to_dict()["rope_parameters"] == full["rope_parameters"], "rope roundtrip")
    W = load_file(str(d / "weights.safetensors"))
    io = load_file(str(d / "io.safetensors"))
    base = {k: v for k, v in W.items() if ".lora_" not in k}
    lora = {k: v for k, v in W.items() if ".lora_" in k}
    sparse, dense = layer_kinds(cfg)
    E, k = cfg.num_experts, cfg.num_experts_per_tok

    # shapes of canonical tensors
    for L in sparse:
        p = f"model.layers.{L}.mlp."
        check(tuple(base[p + "gate_proj.weight"].shape) == (E, cfg.moe_intermediate_size, cfg.hidden_size), "gate shape")
        check(tuple(base[p + "down_proj.weight"].shape) == (E, cfg.hidden_size, cfg.moe_intermediate_size), "down shape")
        check(tuple(base[p + "gate.weight"].shape) == (E, cfg.hidden_size), "router shape")
    check(("lm_head.weight" in base) != cfg.tie_word_embeddings, "lm_head presence")
    for n, v in io.items():
        check(v.dtype in (torch.float32, torch.int32), f"dtype of {n}")

    ids, mask, labels = io["input_ids"], io["attention_mask"], io["labels"]
    # 1. base model rebuilt from canonical tensors reproduces logits/loss exactly
    model = build_model(cfg)
    load_canonical(model, base)
    check(hf_to_canonical(model).keys() == base.keys(), "canonical key set roundtrip")
    with torch.no_grad():
        r = run(model, ids, mask, labels)
    check(torch.equal(f32(r["logits"]), io["logits"]), "logits not bit-identical")
    check(torch.equal(f32(r["loss"]).reshape(1), io["loss"]), "loss not bit-identical")
    check(torch.equal(f32(r["ce_loss"]).reshape(1), io["ce_loss"]), "ce_loss not bit-identical")
    check((r["aux_loss"] is None) == ("aux_loss" not in io), "aux presence")
    if r["aux_loss"] is not None:
        check(torch.equal(f32(r["aux_loss"]).reshape(1), io["aux_loss"]), "aux not bit-identical")
    for L in sparse:
        lg, sc, ix = r["routing"][L]
        check(torch.equal(f32(lg), io[f"router.{L}.logits"]) and torch.equal(i32(ix), io[f"router.{L}.expert_ids"])
              and torch.equal(f32(sc), io[f"router.{L}.weights"]), f"routing layer {L}")
    for L, h in r["hidden"].items():
        check(torch.equal(f32(h), io[f"hidden.{L}"]), f"hidden {L}")

    # 2. routing: top-k of softmax(router logits) (numpy, float64) reproduces expert ids / weights
    for pre in ("router", "lora_router"):
        for L in sparse:
            p = np_softmax(io[f"{pre}.{L}.logits"].numpy())
            top = np.argsort(-p, axis=-1, kind="stable")[:, :k]
            check(np.array_equal(top, io[f"{pre}.{L}.expert_ids"].numpy()), f"{pre} {L} expert ids")
            w = np.take_along_axis(p, top, -1)
            if cfg.norm_topk_prob:
                w = w / w.sum(-1, keepdims=True)
            check(np.allclose(w, io[f"{pre}.{L}.weights"].numpy(), rtol=1e-5, atol=1e-7), f"{pre} {L} weights")
    check(io["router.%d.expert_ids" % sparse[0]].shape == (BATCH * SEQ, k) if sparse else True, "ids shape")

    # 3. losses recomputed independently in numpy
    for pre in ("", "lora_"):
        ce = np_ce(io[pre + "logits"].numpy(), labels.numpy())
        check(abs(ce - io[pre + "ce_loss"].item()) < 1e-5 * max(1, abs(ce)), f"{pre}ce numpy {ce}")
        total = ce
        if cfg.output_router_logits:
            aux = np_aux([io[f"{pre}router.{L}.logits"].numpy() for L in sparse], E, k, mask.numpy())
            check(abs(aux - io[pre + "aux_loss"].item()) < 1e-5 * max(1, aux), f"{pre}aux numpy {aux}")
            total += cfg.router_aux_loss_coef * aux
        check(abs(total - io[pre + "loss"].item()) < 1e-5 * max(1, total), f"{pre}loss numpy {total}")

    # 4. LoRA model rebuilt from fixtures reproduces lora logits/loss/grads exactly
    lmodel = build_model(cfg)
    load_canonical(lmodel, base)
    params = apply_lora(lmodel, lora)
    check(set(lora_meta["targets"]) == {n[: -len(".lora_A.weight")] for n in lora if n.endswith(".lora_A.weight")},
          "lora targets")
    lr = run(lmodel, ids, mask, labels)
    lr["loss"].backward()
    check(torch.equal(f32(lr["logits"]), io["lora_logits"]), "lora logits not bit-identical")
    check(torch.equal(f32(lr["loss"]).reshape(1), io["lora_loss"]), "lora loss not bit-identical")
    grad_names = {n[5:] for n in io if n.startswith("grad.")}
    check(grad_names == set(lora), "grad set")
    for n, p in params.items():
        check(torch.equal(f32(p.grad), io["grad." + n]), f"grad {n} not bit-identical")
        check(p.grad.shape == lora[n].shape, f"grad shape {n}")

    # 5. LoRA == base model with merged weights (merge done independently in numpy float64)
    mmodel = build_model(cfg)
    load_canonical(mmodel, merged_canonical(base, lora))
    with torch.no_grad():
        mr = run(mmodel, ids, mask, labels, capture_routing=False)
    dl = float((mr["logits"] - io["lora_logits"]).abs().max())
    check(dl < 1e-4, f"merged logits differ by {dl}")
    check(abs(mr["loss"].item() - io["lora_loss"].item()) < 1e-5, "merged loss")

    # 6. central finite differences (float64 model, float64 loss) along random directions vs autograd.
    #    HF's own loss upcasts logits with .float() (i.e. to float32) and accumulates the aux loss in float32,
    #    so the float64 check uses loss64() below (same formula, float64 throughout).
    fd_msg = ""
    if fd:
        m64 = build_model(cfg, dtype=torch.float64)
        load_canonical(m64, base)
        p64 = apply_lora(m64, lora)
        ids_l, mask_l, labels_l = ids.long(), mask.long(), labels.long()
        ref_ids = {}

        def f64(record_ids=False):
            out = m64(input_ids=ids_l, attention_mask=mask_l, output_router_logits=True)
            ids_now = [torch.topk(lg, k, dim=-1).indices for lg in out.router_logits]
            if record_ids:
                ref_ids["v"] = ids_now
            else:
                check(all(torch.equal(a, b) for a, b in zip(ids_now, ref_ids["v"])), "routing flipped in FD")
            return loss64(out.logits, out.router_logits, labels_l, mask_l, cfg)

        with true_float64():
            worst32, worst64, rel = fd_check(f64, p64, io)
        check(worst64 < 1e-6, f"fd vs float64 autograd rel err {worst64}")
        check(worst32 < 1e-4, f"fd vs fixture (float32) grads rel err {worst32}")
        check(rel < 1e-3, f"fixture grads vs float64 grads: max rel {rel}")
        fd_msg = f" fd_rel64={worst64:.1e} fd_rel32={worst32:.1e} grad32_vs_64_maxrel={rel:.1e}"
    print(f"[{name}] verified: bit-exact rebuild, routing, numpy losses, merged-LoRA (|dlogits|={dl:.1e}){fd_msg}")


def float64_grads(cfg, base, lora, ids, mask, labels) -> dict[str, torch.Tensor]:
    """d loss / d LoRA tensors from a float64 model, float64 throughout (true_float64, loss64)."""
    m64 = build_model(cfg, dtype=torch.float64)
    load_canonical(m64, base)
    p64 = apply_lora(m64, lora)
    with true_float64():
        out = m64(input_ids=ids.long(), attention_mask=mask.long(), output_router_logits=True)
        loss64(out.logits, out.router_logits, labels.long(), mask.long(), cfg).backward()
    return {n: p.grad for n, p in p64.items()}


def fd_check(f64, p64, io):
    """Central differences of the float64 loss along 3 random directions over all LoRA params."""
    f64(record_ids=True).backward()
    g = torch.Generator().manual_seed(0)
    worst32, worst64, eps = 0.0, 0.0, 1e-6
    for _ in range(3):
        dirs = {n: torch.randn(p.shape, generator=g, dtype=torch.float64) for n, p in p64.items()}
        vals = []
        with torch.no_grad():
            for sgn in (1, -1):
                for n, p in p64.items():
                    p.add_(sgn * eps * dirs[n])
                vals.append(f64().item())
                for n, p in p64.items():
                    p.sub_(sgn * eps * dirs[n])
        fdv = (vals[0] - vals[1]) / (2 * eps)
        an64 = sum(float((p.grad * dirs[n]).sum()) for n, p in p64.items())
        an32 = sum(float((io["grad." + n].double() * dirs[n]).sum()) for n in p64)
        worst64 = max(worst64, abs(fdv - an64) / abs(fdv))
        worst32 = max(worst32, abs(fdv - an32) / abs(fdv))
    rel = max(float((io["grad." + n].double() - p.grad).abs().max() / p.grad.abs().max()) for n, p in p64.items())
    return worst32, worst64, rel


def versions() -> dict:
    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__, "numpy": np.__version__}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--verify-only", action="store_true")
    ap.add_argument("--no-fd", action="store_true", help="skip the finite-difference gradient check")
    ap.add_argument("--check-reproducible", action="store_true",
                    help="regenerate into a temporary folder and require byte-identical files in --out")
    args = ap.parse_args()

    torch.set_num_threads(1)  # fixed reduction order
    v = versions()
    for pkg, want in PINNED.items():
        if v[pkg] != want:
            warnings.warn(f"{pkg} {v[pkg]} installed, fixtures were pinned with {want}")
    print("versions:", json.dumps(v))

    if args.check_reproducible:
        with tempfile.TemporaryDirectory() as tmp:
            bad = []
            for name in args.configs:
                generate(name, Path(tmp))
                for fn in ("config.json", "weights.safetensors", "io.safetensors"):
                    if (Path(tmp) / name / fn).read_bytes() != (args.out / name / fn).read_bytes():
                        bad.append(f"{name}/{fn}")
            if bad:
                sys.exit("not byte-identical: " + ", ".join(bad))
            print("all fixture files byte-identical to a fresh regeneration")
        return
    for name in args.configs:
        if not args.verify_only:
            generate(name, args.out)
        verify(name, args.out, fd=not args.no_fd)
    total = 0
    for name in args.configs:
        for fn in ("config.json", "weights.safetensors", "io.safetensors"):
            sz = os.path.getsize(args.out / name / fn)
            total += sz
            print(f"  {name}/{fn}: {sz / 1024:.1f} KiB")
    print(f"total: {total / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
