#!/usr/bin/env python3
"""Cluttered Fashion-MNIST: every garment at a random position and scale on a textured background,
so that a mask can land on the object, on the background, or on both ("saliency tells you where").

  python3 docs/make_clutter.py [OUT_DIR] [--size 48]    (default OUT_DIR: runs/data/clutter)

Reads the gzipped IDX files of Debian's dataset-fashion-mnist and writes the same four files
(train/t10k images and labels, gzipped IDX) at SIZE x SIZE. Deterministic: the same files for the
same inputs and size (numpy's PCG64 seeded per split). Labels are the garments' own.

Each image, drawn on [0, 1]:
- background, one of four kinds with equal probability: a crop of another training garment enlarged
  2-4x (shapes that are not the object), smoothed noise, stripes of random angle and period, or a
  checkerboard of random cell size; scaled into a random intensity band of width 0.25-0.6;
- the garment: its 28x28 image resized to 0.65-1.25 of 28 px (bilinear), placed at a random
  position wholly inside the canvas, opaque wherever its intensity reaches 0.1 (its black surround
  stays background, the soft edge blends).
"""
import argparse
import gzip
import os
import struct

import numpy as np

FM = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_idx(path, array):
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    tmp = path + ".tmp"
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    os.replace(tmp, path)


def resize(img, h, w):
    """Bilinear resize of a 2-D float image (align_corners=False, edge clamped)."""
    ih, iw = img.shape
    ys = np.clip((np.arange(h) + 0.5) * ih / h - 0.5, 0, ih - 1)
    xs = np.clip((np.arange(w) + 0.5) * iw / w - 0.5, 0, iw - 1)
    y0 = np.floor(ys).astype(int); x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, ih - 1); x1 = np.minimum(x0 + 1, iw - 1)
    fy = (ys - y0)[:, None]; fx = (xs - x0)[None, :]
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bot = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy) + bot * fy


def smooth(a, passes):
    for _ in range(passes):
        a = (a + np.roll(a, 1, 0) + np.roll(a, -1, 0) + np.roll(a, 1, 1) + np.roll(a, -1, 1)) / 5
    return a


def background(rng, size, pool):
    kind = rng.integers(4)
    if kind == 0:
        g = pool[rng.integers(len(pool))].astype(np.float64) / 255
        k = rng.uniform(2, 4)
        big = resize(g, int(28 * k), int(28 * k))
        y = rng.integers(0, big.shape[0] - size + 1); x = rng.integers(0, big.shape[1] - size + 1)
        b = big[y:y + size, x:x + size]
    elif kind == 1:
        b = smooth(rng.random((size, size)), int(rng.integers(1, 5)))
    elif kind == 2:
        t = rng.uniform(0, np.pi); period = rng.uniform(3, 10)
        yy, xx = np.mgrid[0:size, 0:size]
        b = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(t) + yy * np.sin(t)) / period + rng.uniform(0, 6.3))
    else:
        cell = int(rng.integers(3, 9))
        yy, xx = np.mgrid[0:size, 0:size]
        b = (((yy // cell) + (xx // cell)) % 2).astype(np.float64)
    lo, hi = b.min(), b.max()
    b = (b - lo) / (hi - lo) if hi > lo else np.zeros_like(b)
    width = rng.uniform(0.25, 0.6)
    base = rng.uniform(0, 1 - width)
    return base + width * b, int(kind)


KINDS = ("garment crop", "noise", "stripes", "checkerboard")


def make(images, pool, size, seed, masks=None, kinds=None):
    """The cluttered images of `images` (uint8 [N][size][size]); with a list `masks`, appends each
    image's garment pixels (bool [size][size], where the garment is at least half opaque); with a
    list `kinds`, each image's background kind (an index into KINDS)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        bg, kind = background(rng, size, pool)
        if kinds is not None:
            kinds.append(kind)
        s = int(round(28 * rng.uniform(0.65, 1.25)))
        s = min(s, size)
        g = resize(img.astype(np.float64) / 255, s, s)
        y = rng.integers(0, size - s + 1); x = rng.integers(0, size - s + 1)
        patch = bg[y:y + s, x:x + s]
        alpha = np.clip(g / 0.1, 0, 1)                      # opaque wherever the garment is (its surround is 0)
        bg[y:y + s, x:x + s] = alpha * g + (1 - alpha) * patch
        if masks is not None:
            m = np.zeros((size, size), dtype=bool)
            m[y:y + s, x:x + s] = alpha >= 0.5
            masks.append(m)
        out[i] = np.clip(np.rint(bg * 255), 0, 255).astype(np.uint8)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                          "runs", "data", "clutter"))
    p.add_argument("--size", type=int, default=48)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    train = read_idx(f"{FM}/train-images-idx3-ubyte.gz")
    for split, seed in (("train", 1), ("t10k", 2)):
        images = read_idx(f"{FM}/{split}-images-idx3-ubyte.gz")
        labels = read_idx(f"{FM}/{split}-labels-idx1-ubyte.gz")
        write_idx(os.path.join(a.out, f"{split}-images-idx3-ubyte.gz"), make(images, train, a.size, seed))
        write_idx(os.path.join(a.out, f"{split}-labels-idx1-ubyte.gz"), labels)
        print(f"{a.out}: {split} {len(images)} images {a.size}x{a.size}")


if __name__ == "__main__":
    main()
