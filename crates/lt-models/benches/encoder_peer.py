"""Peer baseline: Hugging Face transformers' encoder forward on the same machine.

The forward of benches/encoder_features.rs: random weights, a batch of 224x224
images, `torch.no_grad()`, pooled / CLS features. Prints one JSON line:
  {"impl": "torch", "model": ..., "batch": ..., "threads": ..., "img_per_s_median": ..., "step_ms": [...]}

Setup (a measuring tool, not a project dependency):
  python3 -m venv .venv-peer && .venv-peer/bin/pip install torch transformers
Run beside the Rust bench, in the same sitting:
  .venv-peer/bin/python crates/lt-models/benches/encoder_peer.py --model vit_b16 --batch 32 --threads 2
"""
import argparse, json, statistics, time
import torch
from transformers import (CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model,
                          SiglipVisionConfig, SiglipVisionModel, ViTConfig, ViTModel)

SIZES = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16)}

p = argparse.ArgumentParser()
p.add_argument("--model", default="vit_s16")
p.add_argument("--batch", type=int, default=32)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--warmup", type=int, default=1)
a = p.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(0)

family, size = a.model.split("_")
hidden, layers, heads = SIZES[size[0]]
common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
              intermediate_size=4 * hidden, patch_size=int(size[1:]))
if family == "vit":
    net = ViTModel(ViTConfig(image_size=224, **common), add_pooling_layer=False)
elif family == "dinov2":
    common.pop("intermediate_size")
    net = Dinov2Model(Dinov2Config(image_size=518, **common))
elif family == "clip":
    net = CLIPVisionModel(CLIPVisionConfig(image_size=224, hidden_act="quick_gelu", **common))
else:
    net = SiglipVisionModel(SiglipVisionConfig(image_size=224, **common))
net.eval()
x = torch.sin(torch.arange(a.batch * 3 * 224 * 224, dtype=torch.float32).reshape(a.batch, 3, 224, 224) * 1e-3)
times = []
with torch.no_grad():
    for i in range(a.warmup + a.steps):
        t = time.perf_counter()
        out = net(pixel_values=x)
        f = out.pooler_output if family in ("clip", "siglip", "dinov2") else out.last_hidden_state[:, 0]
        f.sum().item()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
print(json.dumps({"impl": "torch", "model": a.model, "batch": a.batch, "threads": a.threads,
                  "img_per_s_median": round(a.batch / statistics.median(times), 2),
                  "step_ms": [round(t * 1e3) for t in times]}))
