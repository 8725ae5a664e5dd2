"""A byte-level GPT, trained for a fixed wall-clock budget on CPU (or a GPU when there is one).

This is the file rsi edits. The budget comes from the harness (RSI_BUDGET_SECONDS) and the score from the
frozen evaluate.py, which loads the traced model saved here: this file cannot print its own score.
"""

import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import data_dir

# model
n_layer = 2
n_head = 2
head_dim = 16
block_size = 64
dropout = 0.0
# optimisation
batch_size = 16
learning_rate = 1e-4
weight_decay = 0.0
beta2 = 0.99
warmup_steps = 10
grad_clip = 1.0

device = "cuda" if torch.cuda.is_available() else "cpu"
budget_s = float(os.environ.get("RSI_BUDGET_SECONDS", "60"))
torch.manual_seed(int(os.environ.get("RSI_SEED", "0")))
n_embd = n_head * head_dim


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(n_embd, dim=2)
        q, k, v = (z.view(b, t, n_head, head_dim).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(256, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        self.blocks = nn.Sequential(*[Block() for _ in range(n_layer)])
        self.ln = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, 256, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.head(self.ln(self.blocks(self.tok(idx) + self.pos(pos))))


data = torch.frombuffer(bytearray((data_dir() / "train.bin").read_bytes()), dtype=torch.uint8)
gen = torch.Generator().manual_seed(int(os.environ.get("RSI_SEED", "0")))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=gen)
    x = torch.stack([data[i : i + block_size] for i in ix]).long()
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix]).long()
    return x.to(device), y.to(device)


model = GPT().to(device)
opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, beta2), weight_decay=weight_decay)
step, start, smooth = 0, time.monotonic(), None
while (elapsed := time.monotonic() - start) < budget_s:
    # warm up by steps, then decay by the fraction of the budget spent: the budget is time, not steps
    lr = learning_rate * min(1.0, (step + 1) / warmup_steps) * 0.5 * (1 + math.cos(math.pi * elapsed / budget_s))
    for group in opt.param_groups:
        group["lr"] = lr
    x, y = batch()
    loss = F.cross_entropy(model(x).view(-1, 256), y.view(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
    if step % 25 == 0:  # progress for early stopping (rsi.progress prints the same): seconds, smoothed loss
        print(f"rsi-progress {elapsed:.3f} {smooth:.5f}", flush=True)
    if step % 100 == 0:
        print(f"step {step} loss {loss.item():.4f} elapsed {elapsed:.1f}s", flush=True)
    step += 1

model.eval().cpu()
example = torch.zeros((1, block_size), dtype=torch.long)
with torch.no_grad():
    torch.jit.save(torch.jit.trace(model, example), "model.pt")
Path("model.json").write_text(json.dumps({"block_size": block_size, "steps": step}))
print(f"trained {step} steps in {time.monotonic() - start:.1f}s; final train loss {loss.item():.4f}")
