#!/usr/bin/env python3
"""Equal-recipe PyTorch reference for docs/RESULTS.md: plain MoCo v2 or SimCLR on Fashion-MNIST with
the network, augmentations, objective and schedule of `salient train`, kNN top-1 after every epoch,
and the training wall time beside it (time-to-accuracy).

  pip install torch torchvision numpy          # not a dependency of salient
  python3 Benchmarks/pytorch_ssl.py --method simclr --seed 1 [--epochs 3 --batch 128 ...] [--record F.json]

The recipe, as salient's study rows (docs/study.py) run it:
- ResNet-18, CIFAR stem (3x3 stride-1 conv1, no max pool), stage widths round(64w), ..., round(512w)
  (w = --width, 0.25 by default), 1 input channel; conv weights kaiming-normal (fan_out), batch-norm
  weight 1 / bias 0; MLP head D -> D -> 128 (ReLU between), PyTorch's default Linear init;
- views: RandomResizedCrop(32, scale 0.2-1, ratio 3/4-4/3) of the 28x28 image, ColorJitter(0.4, 0.4,
  0.4, 0.1) with p 0.8, RandomGrayscale p 0.2, GaussianBlur (kernel 3, sigma 0.1-2 scaled by 32/224)
  with p 0.5, horizontal flip, Normalize(0.5, 0.5);
- SGD momentum 0.9, weight decay 5e-4 on every parameter, cosine learning rate over the steps from
  --lr to 0, no warm-up, drop-last batches of --batch;
- MoCo v2: momentum key encoder (m 0.99), queue of 4096 normalised keys, InfoNCE at T 0.2; the key
  forward permutes the batch and normalises it in 8 batch-norm groups (the shuffle-BN stand-in that
  salient uses, as in the MoCo CIFAR demo's SplitBatchNorm); SimCLR: NT-Xent over 2B views at T 0.5;
- kNN: pooled backbone features of the whole 28x28 images resized to 32 (bilinear), eval-mode batch
  norm, L2-normalised; weighted vote of the 200 nearest of all 60,000 training images at T 0.1, on all
  10,000 test images.
Training time excludes the kNN evaluations (as salient's per-epoch seconds do). The data loader uses
--workers processes (2 by default), the model --threads threads.
"""
import argparse
import gzip
import json
import math
import os
import platform
import resource
import struct
import sys
import time

import numpy as np

FM = "/usr/share/datasets/fashion-mnist"


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=["moco", "simclr"], required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.06)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--temperature", type=float, help="default: 0.2 (moco), 0.5 (simclr)")
    p.add_argument("--queue", type=int, default=4096)
    p.add_argument("--moco-m", type=float, default=0.99)
    p.add_argument("--bn-splits", type=int, default=8)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--limit", type=int, help="use only the first N training images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data", default=FM, help="folder of the four gzipped IDX files")
    p.add_argument("--record", help="write a JSON record here")
    a = p.parse_args()
    if a.temperature is None:
        a.temperature = 0.2 if a.method == "moco" else 0.5
    return a


A = parse()
os.environ["OMP_NUM_THREADS"] = str(A.threads)
os.environ["MKL_NUM_THREADS"] = str(A.threads)
import torch                      # noqa: E402  (thread settings first)
import torch.nn as nn             # noqa: E402
import torch.nn.functional as F   # noqa: E402
import torchvision.transforms as T  # noqa: E402
from PIL import Image             # noqa: E402
from torchvision.models.resnet import ResNet, BasicBlock  # noqa: E402

torch.set_num_threads(A.threads)


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape).copy()


class SplitBatchNorm(nn.BatchNorm2d):
    """Batch norm over `splits` groups of the batch in training mode (the shuffle-BN stand-in)."""

    def __init__(self, channels, splits):
        super().__init__(channels)
        self.splits = splits

    def forward(self, x):
        if not self.training or self.splits <= 1:
            return super().forward(x)
        n, c, h, w = x.shape
        g = self.splits
        rm, rv = self.running_mean.repeat(g), self.running_var.repeat(g)
        y = F.batch_norm(x.reshape(n // g, c * g, h, w), rm, rv, self.weight.repeat(g), self.bias.repeat(g),
                         True, self.momentum, self.eps).reshape(n, c, h, w)
        self.running_mean.copy_(rm.view(g, c).mean(0))
        self.running_var.copy_(rv.view(g, c).mean(0))
        return y


class Encoder(ResNet):
    """Width-scaled ResNet-18 with the CIFAR stem and an MLP head."""

    def __init__(self, width, in_channels=1, head_dim=128, bn_splits=1):
        nn.Module.__init__(self)
        norm = (lambda c: SplitBatchNorm(c, bn_splits)) if bn_splits > 1 else nn.BatchNorm2d
        self._norm_layer = norm
        ch = [round(64 * width), round(128 * width), round(256 * width), round(512 * width)]
        self.inplanes, self.dilation, self.groups, self.base_width = ch[0], 1, 1, 64
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, 1, 1, bias=False)
        self.bn1 = norm(ch[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(BasicBlock, ch[0], 2)
        self.layer2 = self._make_layer(BasicBlock, ch[1], 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, ch[2], 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, ch[3], 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Sequential(nn.Linear(ch[3], ch[3]), nn.ReLU(inplace=True), nn.Linear(ch[3], head_dim))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def backbone(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x):
        return F.normalize(self.fc(self.backbone(x)), dim=1)


def augmentation(res):
    f = res / 224
    return T.Compose([
        T.RandomResizedCrop(res, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(3, sigma=(0.1 * f, 2.0 * f))], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize([0.5], [0.5]),
    ])


class TwoViews(torch.utils.data.Dataset):
    def __init__(self, images, res):
        self.images, self.t = images, augmentation(res)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L")
        return self.t(img), self.t(img)


@torch.no_grad()
def features(net, images, res, batch=512):
    net.eval()
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).float().div_(255).unsqueeze(1)
        x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
        out.append(F.normalize(net.backbone((x - 0.5) / 0.5), dim=1))
    net.train()
    return torch.cat(out)


@torch.no_grad()
def knn_top1(bank, bank_labels, test, test_labels, k=200, t=0.1, classes=10):
    correct = 0
    for i in range(0, len(test), 1000):
        sim = test[i:i + 1000] @ bank.T
        w, idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(w), classes).scatter_add_(1, bank_labels[idx], (w / t).exp())
        correct += (votes.argmax(1) == test_labels[i:i + 1000]).sum().item()
    return 100.0 * correct / len(test)


def main():
    a = A
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    train = read_idx(f"{a.data}/train-images-idx3-ubyte.gz")
    train_labels = torch.from_numpy(read_idx(f"{a.data}/train-labels-idx1-ubyte.gz").astype(np.int64))
    test = read_idx(f"{a.data}/t10k-images-idx3-ubyte.gz")
    test_labels = torch.from_numpy(read_idx(f"{a.data}/t10k-labels-idx1-ubyte.gz").astype(np.int64))
    data = train[:a.limit] if a.limit else train
    loader = torch.utils.data.DataLoader(TwoViews(data, a.res), batch_size=a.batch, shuffle=True, drop_last=True,
                                         num_workers=a.workers, persistent_workers=a.workers > 0,
                                         generator=torch.Generator().manual_seed(a.seed))
    q = Encoder(a.width)
    k = None
    if a.method == "moco":
        k = Encoder(a.width, bn_splits=a.bn_splits)
        k.load_state_dict(q.state_dict())
        for p in k.parameters():
            p.requires_grad = False
        queue = F.normalize(torch.randn(a.queue, 128), dim=1)
        ptr = 0
    opt = torch.optim.SGD(q.parameters(), lr=a.lr, momentum=0.9, weight_decay=a.wd)
    steps_per_epoch = len(loader)
    total = steps_per_epoch * a.epochs
    epochs, train_seconds, step = [], 0.0, 0
    print(f"pytorch {torch.__version__}: {a.method} width {a.width}, {len(data)} images, batch {a.batch}, "
          f"{a.epochs} epochs ({total} steps), {a.threads} threads, {a.workers} workers", file=sys.stderr)
    for epoch in range(a.epochs):
        t0 = time.time()
        loss_sum = 0.0
        for v1, v2 in loader:
            for g in opt.param_groups:
                g["lr"] = a.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            if a.method == "moco":
                with torch.no_grad():
                    for pk, pq in zip(k.parameters(), q.parameters()):
                        pk.mul_(a.moco_m).add_(pq.detach(), alpha=1 - a.moco_m)
                    perm = torch.randperm(len(v2))
                    kz = torch.empty(len(v2), 128)
                    kz[perm] = k(v2[perm])
                qz = q(v1)
                logits = torch.cat([(qz * kz).sum(1, keepdim=True), qz @ queue.T], dim=1) / a.temperature
                loss = F.cross_entropy(logits, torch.zeros(len(qz), dtype=torch.long))
            else:
                z = q(torch.cat([v1, v2]))
                n = len(v1)
                sim = z @ z.T / a.temperature
                sim.fill_diagonal_(float("-inf"))
                target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
                loss = F.cross_entropy(sim, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if a.method == "moco":
                with torch.no_grad():
                    queue[ptr:ptr + len(kz)] = kz
                    ptr = (ptr + len(kz)) % a.queue
            loss_sum += loss.item()
            step += 1
        seconds = time.time() - t0
        train_seconds += seconds
        bank = features(q, train, a.res)
        top1 = knn_top1(bank, train_labels, features(q, test, a.res), test_labels)
        rec = {"epoch": epoch + 1, "loss": loss_sum / steps_per_epoch, "seconds": round(seconds, 1),
               "img_per_s": round(steps_per_epoch * a.batch / seconds, 1), "knn_top1": round(top1, 2),
               "train_seconds_so_far": round(train_seconds, 1)}
        epochs.append(rec)
        print(json.dumps(rec), file=sys.stderr)
    record = {
        "framework": "pytorch", "torch": torch.__version__, "method": a.method, "seed": a.seed,
        "command": "python3 " + " ".join(sys.argv),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "system": platform.platform()},
        "epochs": epochs, "knn_top1": epochs[-1]["knn_top1"] if epochs else None,
        "train_seconds": round(train_seconds, 1),
        "train_img_per_s": round(step * a.batch / train_seconds, 1) if train_seconds else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
    }
    if a.record:
        os.makedirs(os.path.dirname(os.path.abspath(a.record)), exist_ok=True)
        with open(a.record, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
    print(json.dumps({k: record[k] for k in ("knn_top1", "train_seconds", "train_img_per_s", "peak_rss_mb")}))


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
