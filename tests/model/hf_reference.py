#!/usr/bin/python3
"""An independent reference for geopipe's gpt2 and llama families.

Written from the published architectures (Hugging Face's GPT2LMHeadModel and
LlamaForCausalLM, eager attention) with Debian's python3-torch only: no
transformers, no safetensors package, no geopipe code. The tests use it to
  make    write a small random model folder in the Hugging Face layout
          (config.json + model.safetensors, hand-assembled), optionally
          sharded, without GPT-2's `transformer.` prefix, or with the mask
          buffers old GPT-2 files carry;
  logits  print the logits of a model folder for given token ids;
  greedy  print greedy continuations (argmax, ties to the lowest id);
  loss    print the mean next-token cross-entropy over a token file cut into
          non-overlapping windows of seq_len + 1 tokens.
Run with /usr/bin/python3 (Debian's, which has torch).
"""
import argparse
import json
import math
import os
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
NAMES = {v: k for k, v in DTYPES.items()}


# ---------------------------------------------------------------- files ----

def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, tensor); header JSON, then raw little-endian bytes."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors:
        t = t.contiguous()
        raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 \
            else t.numpy().tobytes()
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = bytearray(data[base + b:base + e])
        shape = info["shape"]
        if info["dtype"] == "BF16":
            t = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16)
        else:
            t = torch.frombuffer(raw, dtype=DTYPES[info["dtype"]])
        out[name] = t.reshape(shape).float()
    return out


def read_folder(folder):
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for f in files:
        out.update(read_safetensors(os.path.join(folder, f)))
    return out


# ---------------------------------------------------------------- make -----

def make(args):
    torch.manual_seed(args.seed)
    d, L, V, F = args.hidden, args.layers, args.vocab, args.inter or 4 * args.hidden
    std = 0.2  # larger than HF's 0.02 so logits are far from uniform
    W = lambda *s: torch.randn(*s) * std
    tensors = []
    if args.family == "gpt2":
        cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": L,
               "n_embd": d, "n_head": args.heads, "n_positions": args.positions,
               "n_inner": args.inter or None, "vocab_size": V, "layer_norm_epsilon": 1e-5,
               "activation_function": "gelu_new", "bos_token_id": V - 1,
               "eos_token_id": V - 1, "tie_word_embeddings": bool(args.tied)}
        p = "" if args.no_prefix else "transformer."
        tensors += [(p + "wte.weight", W(V, d)), (p + "wpe.weight", W(args.positions, d))]
        for i in range(L):
            b = f"{p}h.{i}."
            tensors += [(b + "ln_1.weight", 1 + W(d)), (b + "ln_1.bias", W(d)),
                        (b + "attn.c_attn.weight", W(d, 3 * d)), (b + "attn.c_attn.bias", W(3 * d)),
                        (b + "attn.c_proj.weight", W(d, d)), (b + "attn.c_proj.bias", W(d)),
                        (b + "ln_2.weight", 1 + W(d)), (b + "ln_2.bias", W(d)),
                        (b + "mlp.c_fc.weight", W(d, F)), (b + "mlp.c_fc.bias", W(F)),
                        (b + "mlp.c_proj.weight", W(F, d)), (b + "mlp.c_proj.bias", W(d))]
            if args.with_buffers:
                n = args.positions
                tensors.append((b + "attn.bias", torch.tril(torch.ones(n, n)).view(1, 1, n, n)))
                tensors.append((b + "attn.masked_bias", torch.tensor(-1e4)))
        tensors += [(p + "ln_f.weight", 1 + W(d)), (p + "ln_f.bias", W(d))]
        if not args.tied:
            tensors.append(("lm_head.weight", W(V, d)))
        elif args.with_buffers:
            tensors.append(("lm_head.weight", tensors[0][1].clone()))
    else:
        kv = args.kv_heads or args.heads
        hd = d // args.heads
        cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
               "num_hidden_layers": L, "hidden_size": d, "num_attention_heads": args.heads,
               "num_key_value_heads": kv, "intermediate_size": F,
               "max_position_embeddings": args.positions, "vocab_size": V,
               "rms_norm_eps": 1e-6, "rope_theta": args.rope_theta, "hidden_act": "silu",
               "tie_word_embeddings": bool(args.tied), "rope_scaling": None,
               "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2}
        tensors.append(("model.embed_tokens.weight", W(V, d)))
        for i in range(L):
            b = f"model.layers.{i}."
            tensors += [(b + "input_layernorm.weight", 1 + W(d)),
                        (b + "self_attn.q_proj.weight", W(d, d)),
                        (b + "self_attn.k_proj.weight", W(kv * hd, d)),
                        (b + "self_attn.v_proj.weight", W(kv * hd, d)),
                        (b + "self_attn.o_proj.weight", W(d, d)),
                        (b + "post_attention_layernorm.weight", 1 + W(d)),
                        (b + "mlp.gate_proj.weight", W(F, d)),
                        (b + "mlp.up_proj.weight", W(F, d)),
                        (b + "mlp.down_proj.weight", W(d, F))]
            if args.with_buffers:
                tensors.append((b + "self_attn.rotary_emb.inv_freq", torch.ones(hd // 2)))
        tensors.append(("model.norm.weight", 1 + W(d)))
        if not args.tied:
            tensors.append(("lm_head.weight", W(V, d)))
    dtype = DTYPES[args.dtype]
    cfg["torch_dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[args.dtype]
    tensors = [(n, t.to(dtype) if t.is_floating_point() else t) for n, t in tensors]
    os.makedirs(args.dir, exist_ok=True)
    with open(os.path.join(args.dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if args.shards <= 1:
        write_safetensors(os.path.join(args.dir, "model.safetensors"), tensors, {"format": "pt"})
        return
    per = math.ceil(len(tensors) / args.shards)
    weight_map = {}
    for s in range(args.shards):
        name = f"model-{s + 1:05d}-of-{args.shards:05d}.safetensors"
        chunk = tensors[s * per:(s + 1) * per]
        write_safetensors(os.path.join(args.dir, name), chunk, {"format": "pt"})
        weight_map.update({n: name for n, _ in chunk})
    with open(os.path.join(args.dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)


# ---------------------------------------------------------- reference ------

class Model:
    """The forward pass of GPT2LMHeadModel / LlamaForCausalLM (eval mode)."""

    def __init__(self, folder):
        self.cfg = json.load(open(os.path.join(folder, "config.json")))
        w = read_folder(folder)
        if self.cfg["model_type"] == "gpt2":
            w = {(k if k.startswith("transformer.") or k == "lm_head.weight"
                  else "transformer." + k): v for k, v in w.items()}
        self.w = w

    def logits(self, ids):
        return self.gpt2(ids) if self.cfg["model_type"] == "gpt2" else self.llama(ids)

    def gpt2(self, ids):
        c, w = self.cfg, self.w
        d, nh = c["n_embd"], c["n_head"]
        hd = d // nh
        eps = c.get("layer_norm_epsilon", 1e-5)
        B, T = ids.shape
        x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][torch.arange(T)]
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        ln = lambda x, p: torch.nn.functional.layer_norm(x, (d,), w[p + ".weight"],
                                                         w[p + ".bias"], eps)
        conv = lambda x, p: torch.addmm(w[p + ".bias"], x.reshape(-1, x.shape[-1]),
                                        w[p + ".weight"]).view(*x.shape[:-1], -1)
        for i in range(c["n_layer"]):
            p = f"transformer.h.{i}."
            q, k, v = conv(ln(x, p + "ln_1"), p + "attn.c_attn").split(d, dim=2)
            heads = lambda t: t.view(B, T, nh, hd).permute(0, 2, 1, 3)
            q, k, v = heads(q), heads(k), heads(v)
            a = q @ k.transpose(-1, -2) / torch.full([], hd ** 0.5)
            a = torch.where(mask, a, torch.tensor(torch.finfo(a.dtype).min))
            a = torch.softmax(a, dim=-1) @ v
            a = a.permute(0, 2, 1, 3).reshape(B, T, d)
            x = x + conv(a, p + "attn.c_proj")
            h = conv(ln(x, p + "ln_2"), p + "mlp.c_fc")
            h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h ** 3)))
            x = x + conv(h, p + "mlp.c_proj")
        x = ln(x, "transformer.ln_f")
        head = w.get("lm_head.weight") if not c.get("tie_word_embeddings", True) \
            else w["transformer.wte.weight"]
        return x @ head.t()

    def llama(self, ids):
        c, w = self.cfg, self.w
        d, nh = c["hidden_size"], c["num_attention_heads"]
        kv = c.get("num_key_value_heads", nh)
        hd = d // nh
        eps, theta = c.get("rms_norm_eps", 1e-6), c.get("rope_theta", 10000.0)
        B, T = ids.shape

        def rms(x, p):
            v = x.pow(2).mean(-1, keepdim=True)
            return w[p] * (x * torch.rsqrt(v + eps))

        inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
        freqs = torch.outer(torch.arange(T).float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        rot = lambda t: torch.cat((-t[..., hd // 2:], t[..., :hd // 2]), dim=-1)
        rope = lambda t: t * cos + rot(t) * sin
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        x = w["model.embed_tokens.weight"][ids]
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = rms(x, p + "input_layernorm.weight")
            q = (h @ w[p + "self_attn.q_proj.weight"].t()).view(B, T, nh, hd).transpose(1, 2)
            k = (h @ w[p + "self_attn.k_proj.weight"].t()).view(B, T, kv, hd).transpose(1, 2)
            v = (h @ w[p + "self_attn.v_proj.weight"].t()).view(B, T, kv, hd).transpose(1, 2)
            q, k = rope(q), rope(k)
            g = nh // kv  # repeat_kv: key/value head j serves query heads j*g .. j*g+g-1
            k = k[:, :, None].expand(B, kv, g, T, hd).reshape(B, nh, T, hd)
            v = v[:, :, None].expand(B, kv, g, T, hd).reshape(B, nh, T, hd)
            a = q @ k.transpose(2, 3) / math.sqrt(hd)
            a = a.masked_fill(~mask, torch.finfo(a.dtype).min)
            a = torch.softmax(a, dim=-1, dtype=torch.float32) @ v
            x = x + a.transpose(1, 2).reshape(B, T, d) @ w[p + "self_attn.o_proj.weight"].t()
            h = rms(x, p + "post_attention_layernorm.weight")
            gate = h @ w[p + "mlp.gate_proj.weight"].t()
            up = h @ w[p + "mlp.up_proj.weight"].t()
            x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].t()
        x = rms(x, "model.norm.weight")
        head = w["model.embed_tokens.weight"] if c.get("tie_word_embeddings", False) \
            else w["lm_head.weight"]
        return x @ head.t()


def parse_ids(text):
    return torch.tensor([[int(t) for t in row.split(",")] for row in text.split(";")])


def logits(args):
    m = Model(args.dir)
    with torch.no_grad():
        out = m.logits(parse_ids(args.ids))
    json.dump(out.tolist(), sys.stdout)


def greedy(args):
    m = Model(args.dir)
    eos = m.cfg.get("eos_token_id")
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    ids = [int(t) for t in args.prompt_ids.split(",")]
    new = []
    with torch.no_grad():
        for _ in range(args.max_new):
            row = m.logits(torch.tensor([ids]))[0, -1]
            nxt = int(torch.argmax(row))  # first maximum: ties go to the lowest id
            ids.append(nxt)
            new.append(nxt)
            if nxt in eos:
                break
    print(",".join(str(t) for t in new))


def loss(args):
    m = Model(args.dir)
    import numpy as np
    tokens = np.fromfile(args.tokens, dtype=np.uint16 if args.dtype == "uint16" else np.uint32)
    n = (len(tokens) - 1) // args.seq_len if args.overlap_one else len(tokens) // (args.seq_len + 1)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(n):
            start = i * args.seq_len if args.overlap_one else i * (args.seq_len + 1)
            w = torch.tensor(tokens[start:start + args.seq_len + 1].astype("int64"))
            out = m.logits(w[:-1][None])[0]
            total += float(torch.nn.functional.cross_entropy(out, w[1:], reduction="sum"))
            count += args.seq_len
    print(json.dumps({"loss": total / count, "tokens": count}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make")
    mk.add_argument("dir")
    mk.add_argument("--family", choices=["gpt2", "llama"], required=True)
    mk.add_argument("--layers", type=int, default=2)
    mk.add_argument("--hidden", type=int, default=32)
    mk.add_argument("--heads", type=int, default=4)
    mk.add_argument("--kv-heads", type=int, default=0)
    mk.add_argument("--inter", type=int, default=0)
    mk.add_argument("--vocab", type=int, default=64)
    mk.add_argument("--positions", type=int, default=32)
    mk.add_argument("--rope-theta", type=float, default=10000.0)
    mk.add_argument("--tied", type=int, default=1)
    mk.add_argument("--dtype", choices=list(DTYPES), default="F32")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--shards", type=int, default=1)
    mk.add_argument("--no-prefix", action="store_true")
    mk.add_argument("--with-buffers", action="store_true")
    lg = sub.add_parser("logits")
    lg.add_argument("dir")
    lg.add_argument("--ids", required=True, help="rows of comma-separated ids joined by ';'")
    gr = sub.add_parser("greedy")
    gr.add_argument("dir")
    gr.add_argument("--prompt-ids", required=True)
    gr.add_argument("--max-new", type=int, required=True)
    ls = sub.add_parser("loss")
    ls.add_argument("dir")
    ls.add_argument("--tokens", required=True)
    ls.add_argument("--dtype", default="uint16")
    ls.add_argument("--seq-len", type=int, required=True)
    ls.add_argument("--overlap-one", action="store_true")
    args = ap.parse_args()
    {"make": make, "logits": logits, "greedy": greedy, "loss": loss}[args.cmd](args)


if __name__ == "__main__":
    main()
