"""Peer baseline for `compare_with_torch.sh`: the `resnet_step` bench's step in
PyTorch on the same machine, training or inference.

  --mode train   forward + cross-entropy + backward + SGD (momentum 0.9, weight
                 decay 5e-4) on random data (the step of `resnet_step`)
  --mode infer   eval-mode forward of the backbone and the linear head under
                 `torch.inference_mode()` (no autograd graph), the feature
                 extraction of stage 2, NCM and the tau sweep

Networks: the CIFAR ResNet-32 (3 stages x 5 basic blocks, widths 16/32/64,
1x1-conv projection shortcuts) or a torchvision ResNet / ResNeXt at a chosen
image size. Prints one JSON line with the fields the project's bench prints:
model, batch, size, threads, mode, img_per_s_median, step_ms, cpu_ms_median,
peak_rss_mb (the process's maximum resident set, `ru_maxrss`), loadavg and isa
(ATen's CPU capability; `compare_with_torch.sh` with ISA=avx2 caps it).

Not a project dependency, a measuring tool only:
  python3 -m venv .venv-peer && .venv-peer/bin/pip install torch torchvision
  .venv-peer/bin/python crates/lt-models/benches/torch_peer.py --model resnet50 --batch 64 --mode infer
"""
import argparse, json, os, resource, statistics, time
import torch, torch.nn as nn, torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--model", default="resnet32",
               choices=["resnet32", "resnet10", "resnet50", "resnext50_32x4d"])
p.add_argument("--batch", type=int, default=128)
p.add_argument("--size", type=int, default=None, help="image side; 32 for resnet32, 224 otherwise")
p.add_argument("--classes", type=int, default=100)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--mode", default="train", choices=["train", "infer"])
a = p.parse_args()
load = " ".join(open("/proc/loadavg").read().split()[:3])
torch.set_num_threads(a.threads); torch.manual_seed(0)


class Block(nn.Module):
    def __init__(s, cin, cout, stride):
        super().__init__()
        s.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); s.b1 = nn.BatchNorm2d(cout)
        s.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); s.b2 = nn.BatchNorm2d(cout)
        s.sc = None
        if stride != 1 or cin != cout:
            s.sc = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(s, x):
        y = F.relu(s.b1(s.c1(x))); y = s.b2(s.c2(y))
        return F.relu(y + (x if s.sc is None else s.sc(x)))


class ResNet32(nn.Module):
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
    net, size = ResNet32(a.classes), a.size or 32
else:
    import torchvision.models as tvm
    from torchvision.models.resnet import ResNet, BasicBlock
    size = a.size or 224
    net = {"resnet10": lambda: ResNet(BasicBlock, [1, 1, 1, 1], num_classes=a.classes),
           "resnet50": lambda: tvm.resnet50(num_classes=a.classes),
           "resnext50_32x4d": lambda: tvm.resnext50_32x4d(num_classes=a.classes)}[a.model]()
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
net.train(a.mode == "train")
times, cpu = [], []
for i in range(a.warmup + a.steps):
    x = torch.randn(a.batch, 3, size, size); y = torch.randint(0, a.classes, (a.batch,))
    t, c = time.perf_counter(), time.process_time()
    if a.mode == "train":
        loss = F.cross_entropy(net(x), y); opt.zero_grad(); loss.backward(); opt.step()
    else:
        with torch.inference_mode():
            logits = net(x)
        del logits
    dt, dc = time.perf_counter() - t, time.process_time() - c
    if i >= a.warmup:
        times.append(dt); cpu.append(dc)
med = statistics.median(times)
print(json.dumps({"model": a.model, "batch": a.batch, "size": size, "threads": a.threads,
                  "mode": a.mode, "framework": "torch " + torch.__version__,
                  # ATen's kernels' level; ATEN_CPU_CAPABILITY=avx2 caps it, and
                  # ONEDNN_MAX_CPU_ISA=AVX2 caps oneDNN's convolutions.
                  "isa": torch.backends.cpu.get_cpu_capability().lower(),
                  "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL"),
                  "img_per_s_median": round(a.batch / med, 1),
                  "step_ms": [round(1000 * t, 1) for t in times],
                  "cpu_ms_median": round(1000 * statistics.median(cpu), 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "loadavg": load}))
