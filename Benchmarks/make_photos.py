#!/usr/bin/env python3
"""Writes photo-like JPEGs for the loader benchmarks (outside the repository; they are data):

    python3 Benchmarks/make_photos.py OUT_DIR [--count 200] [--classes 4] [--mpix 3,4] [--quality 90] [--seed 0]

OUT_DIR/class_k/NNNN.jpg, 4:2:0, sizes cycling through --mpix (megapixels, 4:3 landscape and
portrait). Each image is smooth light, soft shapes and edges plus multi-scale texture and sensor
noise, so that it compresses like a camera photo (~1.5-3 bits per pixel at quality 90) rather than
like a flat synthetic image. Needs numpy and Pillow.
"""
import argparse, os
import numpy as np
from PIL import Image


def texture(rng, h, w, octaves=7):
    """Multi-scale value noise in about [-1, 1]."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        gh, gw = max(2, h >> (8 - o)), max(2, w >> (8 - o))
        g = Image.fromarray(rng.standard_normal((gh, gw)).astype(np.float32), "F").resize((w, h), Image.BICUBIC)
        out += amp * np.asarray(g)
        total += amp
        amp *= 0.6
    return out / total


def photo(rng, w, h):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x /= w
    y /= h
    base = rng.uniform(40, 200, 3).astype(np.float32)
    img = base + 60 * (x[..., None] - 0.5) * rng.uniform(-1, 1, 3) + 60 * (y[..., None] - 0.5) * rng.uniform(-1, 1, 3)
    for _ in range(int(rng.integers(6, 14))):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.35)
        col = rng.uniform(0, 255, 3)
        d = np.hypot((x - cx) * w / h, y - cy) / r
        a = np.clip((1 - d) * rng.uniform(3, 30), 0, 1)[..., None]
        img = img * (1 - a) + col * a
    img += 45 * texture(rng, h, w)[..., None] * rng.uniform(0.4, 1.0, 3)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--mpix", default="3,4")
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    sizes = [float(m) for m in a.mpix.split(",")]
    rng = np.random.default_rng(a.seed)
    total = 0
    for i in range(a.count):
        mp = sizes[i % len(sizes)] * 1e6
        w, h = int(round((mp * 4 / 3) ** 0.5)), int(round((mp * 3 / 4) ** 0.5))
        if i % 5 == 4:
            w, h = h, w
        d = os.path.join(a.out, f"class_{i % a.classes}")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"{i:04d}.jpg")
        photo(rng, w, h).save(p, quality=a.quality, subsampling=2)
        total += os.path.getsize(p)
    print(f"{a.count} JPEGs in {a.out}: {total / 1e6:.1f} MB, {8 * total / sum(sizes[i % len(sizes)] * 1e6 for i in range(a.count)):.2f} bits/pixel")


if __name__ == "__main__":
    main()
