#!/usr/bin/env python3
"""The PyTorch peer of `salient bench loader`: torchvision's ImageFolder on the same folder with MoCo
v2's augmentations as salient applies them (two views per image), batched by a DataLoader with N
worker processes.

    python3 Benchmarks/pytorch_loader.py DATA [--res 224] [--batch 32] [--batches 8] [--workers 2] [--json]

Per view: RandomResizedCrop(res, scale 0.2-1) -> RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p 0.8)
-> RandomGrayscale(0.2) -> RandomApply(GaussianBlur(kernel 10% of res made odd, sigma 0.1-2 scaled by
res/224), p 0.5) -> RandomHorizontalFlip -> ToTensor -> Normalize(ImageNet). Images load as
ImageFolder loads them (PIL: Image.open + convert("RGB"), full-size decode, no EXIF orientation).
Timing: one warm-up batch, then --batches batches (epochs repeat as needed); images/s counts images,
each giving two views. Memory is measured from outside (peak_memory.py), for every process.
"""
import argparse, json, time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms as T

    k = int(a.res * 0.1)
    k = max(3, k + 1 if k % 2 == 0 else k)
    f = a.res / 224
    view = T.Compose([
        T.RandomResizedCrop(a.res, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(k, sigma=(0.1 * f, 2.0 * f))], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    ds = datasets.ImageFolder(a.data, lambda img: (view(img), view(img)))
    dl = DataLoader(ds, batch_size=min(a.batch, len(ds)), shuffle=True, num_workers=a.workers, drop_last=True,
                    persistent_workers=a.workers > 0)

    def batches():
        while True:
            yield from dl

    it = batches()
    (v0, v1), _ = next(it)
    assert v0.shape == (min(a.batch, len(ds)), 3, a.res, a.res) and torch.isfinite(v0).all()
    t0 = time.perf_counter()
    n = 0
    for _ in range(a.batches):
        (v0, v1), y = next(it)
        n += v0.shape[0]
    dt = time.perf_counter() - t0
    r = {"framework": "pytorch", "op": "loader", "res": a.res, "batch": v0.shape[0], "workers": a.workers,
         "images": len(ds), "img_per_s": round(n / dt, 2)}
    if a.json:
        print(json.dumps(r))
    else:
        print(f"pytorch loader: {n / dt:.1f} images/s (two {a.res}x{a.res} views each, {a.workers} workers, {a.data}; "
              f"{len(ds)} images decoded on each access)")


if __name__ == "__main__":
    main()
