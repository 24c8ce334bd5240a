"""Peer for the GPU benchmark: PyTorch's training step on the same GPU.

The same step as `resnet_step --device cuda:0`: forward, cross-entropy,
backward, SGD (momentum 0.9, weight decay 5e-4) on random data, for the CIFAR
ResNet-32 or a torchvision ResNet / ResNeXt at 224. `--precision bf16` runs
under `torch.autocast("cuda", dtype=torch.bfloat16)` with f32 master weights,
the usual PyTorch mixed-precision recipe (bf16 needs no loss scaling).
cuDNN autotuning is on (`cudnn.benchmark`), as in real training scripts.
Prints one JSON line with `img_per_s_median`. A measuring tool only, never a
project dependency.

    python3 torch_gpu_step.py --model resnext50_32x4d --batch 256 --precision bf16
"""
import argparse, json, statistics, time
import torch, torch.nn as nn, torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--model", default="resnext50_32x4d",
               choices=["resnet32", "resnet50", "resnext50_32x4d", "resnet152"])
p.add_argument("--batch", type=int, default=256)
p.add_argument("--size", type=int, default=None)
p.add_argument("--classes", type=int, default=1000)
p.add_argument("--precision", default="bf16", choices=["f32", "bf16"])
p.add_argument("--steps", type=int, default=20)
p.add_argument("--warmup", type=int, default=5)
a = p.parse_args()
torch.manual_seed(0)
torch.backends.cudnn.benchmark = True
dev = torch.device("cuda:0")


class Block(nn.Module):
    def __init__(s, cin, cout, stride):
        super().__init__()
        s.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); s.b1 = nn.BatchNorm2d(cout)
        s.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); s.b2 = nn.BatchNorm2d(cout)
        s.sc = None
        if stride != 1 or cin != cout:
            s.sc = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(s, x):
        y = F.relu(s.b1(s.c1(x)))
        y = s.b2(s.c2(y))
        return F.relu(y + (x if s.sc is None else s.sc(x)))


class CifarResNet32(nn.Module):
    def __init__(s, classes):
        super().__init__()
        s.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False); s.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, w in enumerate([16, 32, 64]):
            for j in range(5):
                layers.append(Block(cin, w, 2 if i > 0 and j == 0 else 1)); cin = w
        s.layers = nn.Sequential(*layers); s.fc = nn.Linear(64, classes)

    def forward(s, x):
        return s.fc(s.layers(F.relu(s.bn(s.stem(x)))).mean((2, 3)))


if a.model == "resnet32":
    net, size = CifarResNet32(a.classes), a.size or 32
else:
    import torchvision.models as tvm
    net, size = getattr(tvm, a.model)(num_classes=a.classes), a.size or 224
net = net.to(dev).train()
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.precision == "bf16")
times = []
for i in range(a.warmup + a.steps):
    x = torch.randn(a.batch, 3, size, size, device=dev)
    y = torch.randint(0, a.classes, (a.batch,), device=dev)
    torch.cuda.synchronize(); t = time.perf_counter()
    with autocast:
        loss = F.cross_entropy(net(x), y)
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    torch.cuda.synchronize(); dt = time.perf_counter() - t
    if i >= a.warmup:
        times.append(dt)
med = statistics.median(times)
print(json.dumps({"model": a.model, "batch": a.batch, "size": size, "precision": a.precision,
                  "framework": "torch " + torch.__version__, "gpu": torch.cuda.get_device_name(0),
                  "img_per_s_median": round(a.batch / med, 1),
                  "step_ms": [round(1000 * t, 1) for t in times],
                  "peak_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20)}))
