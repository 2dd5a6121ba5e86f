#!/usr/bin/python3
"""PyTorch eager training steps of a GPT-2-shaped model: the reference of
`geopipe bench model`. Written from the published GPT-2 architecture with
torch.nn (learned positions, pre-LayerNorm eps 1e-5, Conv1D projections as
addmm, tanh GELU, LM head tied to the token embedding), trained with AdamW
on random token ids. Prints one JSON object: the seconds of every timed step
(on a GPU, each step waits for its kernels). Run with /usr/bin/python3
(Debian's python3-torch), or a GPU machine's PyTorch with --device cuda."""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Conv1D(nn.Module):
    def __init__(self, nin, nout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nin, nout) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nout))

    def forward(self, x):
        size = x.size()[:-1] + (self.weight.size(1),)
        return torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight).view(size)


class Block(nn.Module):
    def __init__(self, d, heads, inner):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d, eps=1e-5)
        self.c_attn = Conv1D(d, 3 * d)
        self.c_proj = Conv1D(d, d)
        self.ln_2 = nn.LayerNorm(d, eps=1e-5)
        self.c_fc = Conv1D(d, inner)
        self.mlp_proj = Conv1D(inner, d)

    def forward(self, x):
        B, T, d = x.shape
        hd = d // self.heads
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (t.view(B, T, self.heads, hd).transpose(1, 2) for t in (q, k, v))
        a = q @ k.transpose(-2, -1) / math.sqrt(hd)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        a = torch.softmax(a.masked_fill(mask, float("-inf")), dim=-1, dtype=torch.float32).to(q.dtype)
        y = (a @ v).transpose(1, 2).reshape(B, T, d)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, layers, d, heads, vocab, positions):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(positions, d)
        self.h = nn.ModuleList(Block(d, heads, 4 * d) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.size(1), device=ids.device))
        for b in self.h:
            x = b(x)
        return self.ln_f(x) @ self.wte.weight.t()  # tied head


def main():
    ap = argparse.ArgumentParser()
    for k, v in [("layers", 6), ("hidden", 384), ("heads", 6), ("vocab", 50257),
                 ("seq-len", 256), ("batch", 4), ("steps", 8), ("warmup", 2), ("threads", 2)]:
        ap.add_argument("--" + k, type=int, default=v)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = GPT2(a.layers, a.hidden, a.heads, a.vocab, a.seq_len).to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq_len + 1)).to(a.device)
    times = []
    for step in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        with torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
            logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, a.vocab), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        if a.device == "cuda":
            torch.cuda.synchronize()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": times, "loss": float(loss)}))


if __name__ == "__main__":
    main()
