#!/usr/bin/env python3
"""Does a saliency map find the garment? Scores the maps that `salient train --masking saliency` uses
against the garment pixels that docs/make_clutter.py knows, on test images of both studies.

  pip install torch numpy pillow      # not dependencies of salient
  python3 docs/saliency_check.py [--images 2000] [--record F.json] [--png F.png]

(defaults: docs/results/saliency.json and docs/saliency_maps.png)

Maps, on the training grid (G x G cells: 6 x 6 at 48 px, 4 x 4 at 32 px), of whole test images
normalised as salient normalises one-channel views ((x - 0.5) / 0.5):
- classical: salient's network-free warm-up map (`classicalSaliency`: per pixel the distance from the
  image's mean, averaged per cell);
- encoder: the channel sum of an encoder's last feature map (salient's `saliencyFromFeatures`), from the
  salient checkpoints under runs/study/ (the study rows, and the cluttered set's explorations; the
  encoder that makes the training-time maps: encoder_k for MoCo v2, encoder_q for SimCLR), or from a
  random initialisation (kaiming-normal convolutions, as salient's). Batch norm uses the statistics
  of the batch (250 images), as the training-time no-grad forward does. The random-init encoders are
  also written as files (runs/data/random_encoder.sSEED.safetensors, for `salient train --saliency
  FILE`) and scored as salient uses such a file: frozen, with eval-mode batch norm (running
  statistics 0 / 1);
- centre prior: a map that only knows where garments tend to be (minus the distance from the centre):
  the score that position alone earns, without looking at the image.

Scores per map, averaged over images (a cell's garment share is the fraction of its pixels that are
garment: at least half-opaque garment pixels in the cluttered set, pixels >= 5% of full scale in
plain Fashion-MNIST):
- AUC: the probability that a cell holding garment (share >= 0.5) outranks a cell holding none
  (0.5: no better than chance); inner AUC: the same among the cells inside the outer ring, where
  the centre prior helps less (6 x 6 grids only: inside a 4 x 4 grid's ring nearly every cell is garment);
- recall: the share of the garment's pixels that lie in foreground cells (saliency >= mean - 0.6 std);
- lift: recall / FG_ratio. A hard negative masks each foreground cell with probability r, so it hides
  r * recall of the garment on average, where random masking's hard negative (the same number of cells,
  drawn from all G^2) hides r * FG_ratio. Lift > 1: saliency hard negatives hide more garment than
  random ones; lift < 1: they hide less, and keep the object that should be gone. (The query mask
  takes each cell with the same probability r either way, up to the 0.55 cap.)
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_clutter  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = os.path.join(ROOT, "runs", "study")
FG_STD = 0.6


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        blob = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        dtype = {"F32": np.float32, "I64": np.int64}[v["dtype"]]
        out[k] = torch.from_numpy(np.frombuffer(blob[a:b], dtype=dtype).reshape(v["shape"]).copy())
    return out, header.get("__metadata__", {})


def backbone(width=0.25):
    """ResNet-18 with the CIFAR stem (salient's `--stem cifar`), up to the last feature map."""
    ch = [round(c * width) for c in (64, 128, 256, 512)]
    layers, inplanes = [], ch[0]
    for i, c in enumerate(ch):
        stride = 1 if i == 0 else 2
        down = None
        if stride != 1 or inplanes != c:
            down = nn.Sequential(nn.Conv2d(inplanes, c, 1, stride, bias=False), nn.BatchNorm2d(c))
        layers.append(nn.Sequential(BasicBlock(inplanes, c, stride, down), BasicBlock(c, c)))
        inplanes = c
    net = nn.Sequential()
    net.add_module("conv1", nn.Conv2d(1, ch[0], 3, 1, 1, bias=False))
    net.add_module("bn1", nn.BatchNorm2d(ch[0]))
    net.add_module("relu", nn.ReLU(inplace=True))
    for i, layer in enumerate(layers):
        net.add_module(f"layer{i + 1}", layer)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.0            # batch statistics, running statistics untouched
    return net


def encoder_maps(net, images, batch=250, batch_statistics=True):
    """Channel sums of the last feature map: [N][G][G]. Batch norm from the batch's statistics (the
    training encoder's own saliency), or from the running ones (an imported `--saliency FILE`)."""
    net.train(batch_statistics)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch]).float().div(255).unsqueeze(1)
            out.append(net((x - 0.5) / 0.5).sum(1).numpy())
    return np.concatenate(out)


def from_checkpoint(path):
    tensors, meta = load_safetensors(path)
    prefix = "encoder_k." if meta.get("method") == "moco" else "encoder_q."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    return backbone_from({k: v for k, v in state.items() if not k.startswith("fc.")})


def write_encoder(path, net):
    """`net`'s weights as an encoder file salient reads (`--saliency FILE`): bare torchvision names,
    safetensors, written here rather than by safetensors.torch.save_file so that the same weights
    always give the same bytes (RESULTS.md names the file's sha256). Returns the network read back."""
    state = net.state_dict()
    header, blobs, offset = {"__metadata__": {"arch": "resnet18", "stem": "cifar", "width": "0.25",
                                              "in_channels": "1"}}, [], 0
    for k, v in state.items():
        a = v.numpy()
        dtype = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}[a.dtype]
        b = np.ascontiguousarray(a).tobytes()
        header[k] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    os.replace(path + ".tmp", path)
    return backbone_from(load_safetensors(path)[0])


def backbone_from(state):
    net = backbone()
    net.load_state_dict(state)
    return net


def cell_mean(a, grid):
    """[N][H][W] -> [N][grid][grid] means over salient's cell bands (H divisible by grid here)."""
    n, h, w = a.shape
    return a.reshape(n, grid, h // grid, grid, w // grid).mean(axis=(2, 4))


def classical_maps(images, grid):
    x = (images.astype(np.float64) / 255 - 0.5) / 0.5
    d = np.abs(x - x.mean(axis=(1, 2), keepdims=True))
    return cell_mean(d, grid)


def auc(s, g):
    """P(a garment cell of map `s` outranks a garment-free one), ties half; None without both kinds."""
    pos, neg = s[g >= 0.5], s[g == 0]
    if not len(pos) or not len(neg):
        return None
    return (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()


def centre_prior(n, grid):
    """A map that knows only where garments tend to be: minus each cell's distance from the centre."""
    yy, xx = np.mgrid[0:grid, 0:grid]
    return np.broadcast_to(-np.hypot(yy - (grid - 1) / 2, xx - (grid - 1) / 2), (n, grid, grid)).copy()


def scores(maps, garment, grid, kinds=None):
    """Mean AUC (all cells, and inside the outer ring), recall, FG_ratio and lift over the images (see
    the module docstring); with `kinds` (each image's background kind), the AUC per kind too."""
    share = cell_mean(garment.astype(np.float64), grid).reshape(len(maps), -1)
    m = maps.reshape(len(maps), -1)
    inner = [i * grid + j for i in range(1, grid - 1) for j in range(1, grid - 1)]
    aucs, inner_aucs, recalls, ratios = [], [], [], []
    for s, g in zip(m, share):
        aucs.append(auc(s, g))
        inner_aucs.append(auc(s[inner], g[inner]) if grid >= 6 else None)
        fg = s >= s.mean() - FG_STD * s.std() if s.max() > s.min() else np.ones_like(s, dtype=bool)
        recalls.append((g * fg).sum() / g.sum())
        ratios.append(fg.mean())
    recall, ratio = float(np.mean(recalls)), float(np.mean(ratios))
    def mean(v):
        v = [x for x in v if x is not None]
        return round(float(np.mean(v)), 3) if v else None
    out = {"auc": mean(aucs), "auc_inner": mean(inner_aucs), "recall": round(recall, 3),
           "fg_ratio": round(ratio, 3), "lift": round(float(np.mean(np.array(recalls) / np.array(ratios))), 3)}
    if kinds is not None:
        out["auc_by_background"] = {name: mean([x for x, k in zip(aucs, kinds) if k == i])
                                    for i, name in enumerate(make_clutter.KINDS)}
    return out


def heat(map_, size):
    """A G x G map, min-max scaled, as a size x size RGB array (dark blue -> red -> yellow)."""
    s = (map_ - map_.min()) / max(map_.max() - map_.min(), 1e-12)
    rgb = np.stack([np.minimum(1, 2 * s), np.clip(2 * s - 1, 0, 1), np.clip(0.5 - s, 0, 1)], -1)
    k = size // map_.shape[0]
    return np.kron(rgb, np.ones((k, k, 1)))


def figure(path, images, garment, columns, rows=8, scale=3):
    """One row per image: the image, its garment pixels, then each map's heat over the image."""
    from PIL import Image
    n, size = rows, images.shape[1]
    pad = 2
    tiles = []
    for i in range(n):
        g = np.repeat(images[i][:, :, None] / 255.0, 3, -1)
        row = [g, np.repeat(garment[i][:, :, None].astype(np.float64), 3, -1)]
        row += [0.5 * g + 0.5 * heat(maps[i], size) for _, maps in columns]
        tiles.append(row)
    cols = len(tiles[0])
    canvas = np.ones(((size + pad) * n + pad, (size + pad) * cols + pad, 3))
    for r, row in enumerate(tiles):
        for c, t in enumerate(row):
            y, x = pad + r * (size + pad), pad + c * (size + pad)
            canvas[y:y + size, x:x + size] = t
    img = Image.fromarray((canvas * 255).round().astype(np.uint8)).resize(
        (canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)
    img.save(path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000, help="first N test images of each study")
    p.add_argument("--record", default=os.path.join(ROOT, "docs", "results", "saliency.json"))
    p.add_argument("--png", default=os.path.join(ROOT, "docs", "saliency_maps.png"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--random-encoders", default=os.path.join(ROOT, "runs", "data"),
                   help="where to write random_encoder.sSEED.safetensors (seeds 1, 2): frozen random-init "
                        "encoders for `salient train --saliency FILE`, scored with their running statistics")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    fm = make_clutter.FM
    train = make_clutter.read_idx(f"{fm}/train-images-idx3-ubyte.gz")
    test = make_clutter.read_idx(f"{fm}/t10k-images-idx3-ubyte.gz")[:a.images]

    masks, kinds = [], []
    clutter = make_clutter.make(test, train, 48, 2, masks, kinds)    # the first N of the study's test split
    garment = np.stack(masks)
    plain = np.stack([make_clutter.resize(t.astype(np.float64), 32, 32) for t in test])
    plain_garment = plain >= 0.05 * 255
    plain = np.clip(np.rint(plain), 0, 255).astype(np.uint8)

    results, figure_columns = [], []

    def add(study, source, maps, images_garment, grid):
        r = {"study": study, "source": source,
             **scores(maps, images_garment, grid, kinds if study == "clutter" else None)}
        results.append(r)
        inner = "  -  " if r["auc_inner"] is None else f"{r['auc_inner']:.3f}"
        print(f"{study:8s} {source:34s} AUC {r['auc']:.3f}  inner {inner}  recall {r['recall']:.3f}  "
              f"FG_ratio {r['fg_ratio']:.3f}  lift {r['lift']:.3f}", flush=True)
        if "auc_by_background" in r:
            print(" " * 44 + "AUC by background: " +
                  ", ".join(f"{k} {v:.3f}" for k, v in r["auc_by_background"].items()), flush=True)
        return maps

    for study, images, g, grid in (("fmnist", plain, plain_garment, 4), ("clutter", clutter, garment, 6)):
        add(study, "centre prior", centre_prior(len(images), grid), g, grid)
        maps = add(study, "classical", classical_maps(images, grid), g, grid)
        if study == "clutter":
            figure_columns.append(("classical", maps))
        for seed in (1, 2):
            torch.manual_seed(seed)
            net = backbone()
            # Written before any forward: a batch-statistics forward still counts num_batches_tracked.
            frozen = write_encoder(os.path.join(a.random_encoders, f"random_encoder.s{seed}.safetensors"), net)
            maps = add(study, f"random init (seed {seed})", encoder_maps(net, images), g, grid)
            if study == "clutter" and seed == 1:
                figure_columns.append(("random init", maps))
            add(study, f"random init, file (seed {seed})",
                encoder_maps(frozen, images, batch_statistics=False), g, grid)
        for row in ("simclr", "simclr_random_mean", "simclr_sal_mean", "moco", "moco_sal_mean"):
            for seed in (1, 2, 3):
                ckpt = os.path.join(RUNS, study, f"{row}.s{seed}", "last.safetensors")
                if not os.path.exists(ckpt):
                    continue
                maps = add(study, f"{row}.s{seed}", encoder_maps(from_checkpoint(ckpt), images), g, grid)
                if study == "clutter" and seed == 1 and row == "simclr_sal_mean":
                    figure_columns.append((row, maps))
        explore = os.path.join(RUNS, study + "-explore")
        if study == "clutter" and os.path.isdir(explore):        # the saliency-source variants
            for name in sorted(os.listdir(explore)):
                ckpt = os.path.join(explore, name, "last.safetensors")
                if os.path.exists(ckpt):
                    add(study, name, encoder_maps(from_checkpoint(ckpt), images), g, grid)

    if a.record:
        with open(a.record, "w") as f:
            json.dump({"images": a.images, "fg_std": FG_STD, "command": " ".join(["python3"] + sys.argv),
                       "results": results}, f, indent=1)
            f.write("\n")
    if a.png:
        figure(a.png, clutter, garment, figure_columns)
        print(f"{a.png}: image | garment | " + " | ".join(name for name, _ in figure_columns))


if __name__ == "__main__":
    main()
