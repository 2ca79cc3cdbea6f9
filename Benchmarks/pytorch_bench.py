#!/usr/bin/env python3
"""PyTorch peer of `salient bench`: the same shapes, threads and JSON field names.

PyTorch is NOT a dependency of salient; it is installed only to measure against
(`pip install torch torchvision numpy`). Subcommands:

  kernels  3x3 convolutions (stride 1, pad 1, no bias, C in = C out) on ResNet-18's
           CIFAR shapes: forward, backward-data, backward-weights, in NCHW and
           channels_last. GFLOP/s = 2*N*H*W*C*K*9 / median time.
  train    one MoCo v2 step with saliency-guided masking and one hard negative,
           as salient's `bench train` does it (see train_step below), img/s.
  extract  eval-mode, no-grad forward of the backbone to pooled features, img/s.

Every result is one JSON object per line with --json (salient's field names plus
"framework": "pytorch"); without --json a short human-readable line.
"""
import argparse
import json
import os
import resource
import statistics
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (sets torch.set_num_threads and OMP/MKL_NUM_THREADS; default: all cores)")
        sp.add_argument("--json", action="store_true", help="one JSON object per line")
        sp.add_argument("--seed", type=int, default=7)

    k = sub.add_parser("kernels", help="3x3 convolution GFLOP/s, both memory formats")
    common(k)
    k.add_argument("--batch", type=int, default=64)
    k.add_argument("--shapes", default="64x32,128x16,256x8,512x4", help="comma-separated CxHW, e.g. 64x32,128x16")
    k.add_argument("--layouts", default="nchw,channels_last", help="nchw, channels_last or both (comma-separated)")
    k.add_argument("--ops", default="conv3x3_fwd,conv3x3_bwd_data,conv3x3_bwd_weight")
    k.add_argument("--min-runs", type=int, default=5)
    k.add_argument("--min-seconds", type=float, default=0.5)

    def model_opts(sp, batch):
        sp.add_argument("--arch", choices=["resnet18", "resnet50"], default="resnet18")
        sp.add_argument("--stem", choices=["cifar", "imagenet"], default="cifar")
        sp.add_argument("--batch", type=int, default=batch)
        sp.add_argument("--res", type=int, default=32)
        sp.add_argument("--channels", type=int, default=3)
        sp.add_argument("--channels-last", action="store_true", help="models and inputs in channels_last")

    t = sub.add_parser("train", help="one MoCo v2 step (+ saliency masking, hard negative), img/s")
    common(t)
    model_opts(t, 64)
    t.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps")
    t.add_argument("--masking", choices=["saliency", "none"], default="saliency",
                   help="none: plain MoCo v2 step (no saliency forward, no hard negative)")
    t.add_argument("--fill", choices=["hp", "noise", "zero"], default="hp",
                   help="hp: high-pass both views, Gaussian noise in masked cells (salient's default)")
    t.add_argument("--hard-negatives", type=int, default=1, choices=[0, 1])
    t.add_argument("--queue", type=int, default=4096)
    t.add_argument("--temperature", type=float, default=0.2)
    t.add_argument("--alpha", type=float, default=2.0, help="hard-negative logit weight")
    t.add_argument("--momentum-key", type=float, default=0.99)
    t.add_argument("--lr", type=float, default=0.01)

    e = sub.add_parser("extract", help="eval-mode backbone forward to pooled features, img/s")
    common(e)
    model_opts(e, 256)
    e.add_argument("--steps", type=int, default=5, help="timed batches after 1 warm-up batch")
    return p.parse_args(argv)


ARGS = parse_args()
if ARGS.threads is not None:
    # Before torch is imported, so that OpenMP/MKL pools start at this size.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402

if ARGS.threads is not None:
    torch.set_num_threads(ARGS.threads)
THREADS = torch.get_num_threads()


def emit(rec, human):
    if ARGS.json:
        print(json.dumps(rec), flush=True)
    else:
        print(human, flush=True)


def peak_rss_mb():
    # Linux: ru_maxrss is in KB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median_seconds(fn, min_runs=5, min_seconds=0.5, warmup=2, max_runs=200):
    """Median wall time of fn() after `warmup` runs, over >= min_runs runs and >= min_seconds."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= max_runs:
            break
    return statistics.median(times)


# ---------------------------------------------------------------- kernels

def conv_ops(x, w, gy):
    """The three convolution passes, through the same ATen entry points autograd uses."""
    bwd = torch.ops.aten.convolution_backward
    args = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)  # stride, padding, dilation, transposed, output_padding, groups
    return {
        "conv3x3_fwd": lambda: F.conv2d(x, w, None, 1, 1),
        "conv3x3_bwd_data": lambda: bwd(gy, x, w, None, *args, [True, False, False])[0],
        "conv3x3_bwd_weight": lambda: bwd(gy, x, w, None, *args, [False, True, False])[1],
    }


def check_conv(layout_fmt, c, hw, ops):
    """Checks each op on a 2-image batch of this layout against a float64 autograd reference."""
    g = torch.Generator().manual_seed(ARGS.seed)
    x = torch.randn(2, c, hw, hw, generator=g)
    w = torch.randn(c, c, 3, 3, generator=g) / (3.0 * c ** 0.5)
    gy = torch.randn(2, c, hw, hw, generator=g)
    with torch.enable_grad():
        x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
        y64 = F.conv2d(x64, w64, None, 1, 1)
        gx64, gw64 = torch.autograd.grad(y64, (x64, w64), gy.double())
    ref = {"conv3x3_fwd": y64, "conv3x3_bwd_data": gx64, "conv3x3_bwd_weight": gw64}
    fast = conv_ops(x.contiguous(memory_format=layout_fmt), w.contiguous(memory_format=layout_fmt),
                    gy.contiguous(memory_format=layout_fmt))
    for op in ops:
        got = fast[op]().double()
        err = (got - ref[op]).abs().max().item() / max(ref[op].abs().max().item(), 1e-30)
        if not err < 1e-3:
            raise SystemExit(f"check failed: {op} C={c} HW={hw}: relative max error {err:.3g}")


def cmd_kernels():
    layouts = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    chosen = [s.strip() for s in ARGS.layouts.split(",") if s.strip()]
    ops = [s.strip() for s in ARGS.ops.split(",") if s.strip()]
    for name in chosen:
        if name not in layouts:
            raise SystemExit(f"--layouts: unknown layout '{name}' (nchw, channels_last)")
    for op in ops:
        if op not in ("conv3x3_fwd", "conv3x3_bwd_data", "conv3x3_bwd_weight"):
            raise SystemExit(f"--ops: unknown op '{op}'")
    shapes = []
    for part in ARGS.shapes.split(","):
        c, hw = (int(v) for v in part.lower().split("x"))
        shapes.append((c, hw))
    n = ARGS.batch
    torch.manual_seed(ARGS.seed)
    if not ARGS.json:
        print(f"PyTorch {torch.__version__}, {THREADS} thread(s), batch {n}, oneDNN "
              f"{'on' if torch.backends.mkldnn.is_available() else 'off'}")
        print(f"{'op':20} {'layout':>13} {'C':>5} {'HW':>4} {'batch':>6} {'GFLOP/s':>9}")
    with torch.no_grad():
        for c, hw in shapes:
            flops = 2.0 * n * hw * hw * c * c * 9
            for name in chosen:
                fmt = layouts[name]
                check_conv(fmt, c, hw, ops)
                x = torch.randn(n, c, hw, hw).contiguous(memory_format=fmt)
                w = (torch.randn(c, c, 3, 3) / (3.0 * c ** 0.5)).contiguous(memory_format=fmt)
                gy = torch.randn(n, c, hw, hw).contiguous(memory_format=fmt)
                fns = conv_ops(x, w, gy)
                for op in ops:
                    t = median_seconds(fns[op], ARGS.min_runs, ARGS.min_seconds)
                    gf = flops / t * 1e-9
                    emit({"op": op, "C": c, "HW": hw, "batch": n, "threads": THREADS, "gflops": round(gf, 2),
                          "layout": name, "framework": "pytorch"},
                         f"{op:20} {name:>13} {c:5d} {hw:4d} {n:6d} {gf:9.2f}")


# ---------------------------------------------------------------- models

def build_encoder(arch, stem, channels, head):
    """torchvision ResNet; CIFAR stem = 3x3 stride-1 conv1 and no max pool; fc = MLP head or identity."""
    net = getattr(torchvision.models, arch)(weights=None)
    if stem == "cifar":
        net.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    dim = net.fc.in_features
    net.fc = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, 128)) if head else nn.Identity()
    return net


def features(net, x):
    """Backbone up to the last feature map (N, C, G, G)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def embed(net, x):
    """Returns (normalised head output, last feature map)."""
    fmap = features(net, x)
    z = net.fc(torch.flatten(net.avgpool(fmap), 1))
    return F.normalize(z, dim=1), fmap


# ---------------------------------------------------------------- saliency masking

def saliency_foreground(fmap):
    """Channel-sum saliency of the last feature map; foreground = value >= mean - 0.6 std (per sample)."""
    s = fmap.sum(dim=1).flatten(1)  # (N, G*G)
    thr = s.mean(dim=1, keepdim=True) - 0.6 * s.std(dim=1, keepdim=True)
    return s >= thr


def pick_cells(allowed, count, gen):
    """Per sample, `count[i]` random cells among `allowed[i]` (bool (N, G*G)); returns a bool mask."""
    keys = torch.rand(allowed.shape, generator=gen)
    keys = keys.masked_fill(~allowed, 2.0)  # disallowed cells sort last
    rank = keys.argsort(dim=1).argsort(dim=1)
    return (rank < count.unsqueeze(1)) & allowed


def query_cells(fg, gen):
    """Saliency-constrained query mask: r ~ U(0.05, 0.25) of the cells, spread over fg/bg in proportion."""
    n, cells = fg.shape
    ratio = fg.float().mean(dim=1)
    r = torch.empty(n).uniform_(0.05, 0.25, generator=gen)
    total = (r * cells).floor().long()
    n_fg = torch.minimum((torch.clamp(r * ratio, max=0.55) * cells).round().long(), total)
    return pick_cells(fg, n_fg, gen) | pick_cells(~fg, total - n_fg, gen)


def hardneg_cells(fg, gen):
    """Heavy salient mask for the hard negative: r ~ U(0.4, 0.7) of the foreground share, fg cells only."""
    n, cells = fg.shape
    r = torch.empty(n).uniform_(0.4, 0.7, generator=gen)
    return pick_cells(fg, (r * fg.float().mean(dim=1) * cells).round().long(), gen)


def apply_mask(x, cells, grid, sigma, fill, gen):
    """Fills the masked cells (same cells in all channels) with noise (hp/noise) or zeros."""
    n, _, h, w = x.shape
    m = cells.view(n, 1, grid, grid).float()
    m = F.interpolate(m, size=(h, w), mode="nearest")  # cell -> pixels (8x8 px at 32 px, G=4)
    if fill == "zero":
        return x * (1 - m)
    noise = torch.randn(x.shape, generator=gen) * sigma  # fresh noise in every cell
    return torch.lerp(x, noise, m)


def high_pass(x, res):
    """x - GaussianBlur(x): kernel 11 / sigma 5 at 224 px, scaled with resolution (depthwise conv)."""
    k = max(3, int(round(11 * res / 224)) | 1)
    sigma = 5.0 * res / 224
    t = torch.arange(k, dtype=torch.float32) - k // 2
    g1 = torch.exp(-t * t / (2 * sigma * sigma))
    g1 = g1 / g1.sum()
    c = x.shape[1]
    kern = (g1[:, None] * g1[None, :]).expand(c, 1, k, k).contiguous()
    return x - F.conv2d(F.pad(x, [k // 2] * 4, mode="reflect"), kern, groups=c)


# ---------------------------------------------------------------- train

def cmd_train():
    a = ARGS
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    q_enc = build_encoder(a.arch, a.stem, a.channels, head=True).to(memory_format=fmt)
    k_enc = build_encoder(a.arch, a.stem, a.channels, head=True).to(memory_format=fmt)
    k_enc.load_state_dict(q_enc.state_dict())
    for p in k_enc.parameters():
        p.requires_grad_(False)
    q_enc.train()
    k_enc.train()  # MoCo: key encoder BN uses batch statistics
    opt = torch.optim.SGD(q_enc.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)
    queue = F.normalize(torch.randn(a.queue, 128), dim=1)
    ptr = [0]
    masking = a.masking != "none"
    hard = masking and a.hard_negatives > 0
    q_params = list(q_enc.parameters())
    k_params = list(k_enc.parameters())
    # Two fixed augmented views (as salient's bench: random normal images; data loading is not timed).
    views = [torch.randn(a.batch, a.channels, a.res, a.res).contiguous(memory_format=fmt) for _ in range(2)]

    def step():
        x_q, x_k = views
        with torch.no_grad():
            torch._foreach_mul_(k_params, a.momentum_key)  # key <- m key + (1 - m) query
            torch._foreach_add_(k_params, q_params, alpha=1 - a.momentum_key)
            if masking and a.fill == "hp":
                x_q, x_k = high_pass(x_q, a.res), high_pass(x_k, a.res)
            k, fmap_k = embed(k_enc, x_k)
            if masking:
                _, fmap_q = embed(k_enc, x_q)  # saliency of the query view (key encoder, no grad)
                grid = fmap_q.shape[-1]
                x_q = apply_mask(x_q, query_cells(saliency_foreground(fmap_q), gen), grid, 0.18, a.fill, gen)
                if hard:
                    x_n = apply_mask(x_k, hardneg_cells(saliency_foreground(fmap_k), gen), grid, 0.14, a.fill, gen)
                    k_n, _ = embed(k_enc, x_n)
        q, _ = embed(q_enc, x_q)
        logits = [(q * k).sum(1, keepdim=True), q @ queue.t()]
        if hard:
            logits.append(a.alpha * (q * k_n).sum(1, keepdim=True))
        logits = torch.cat(logits, dim=1) / a.temperature
        loss = F.cross_entropy(logits, torch.zeros(a.batch, dtype=torch.long))
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        with torch.no_grad():
            i = ptr[0]
            idx = torch.arange(i, i + a.batch) % a.queue
            queue[idx] = k
            ptr[0] = (i + a.batch) % a.queue
        return loss.item()

    for _ in range(2):
        loss = step()
    if not torch.isfinite(torch.tensor(loss)):
        raise SystemExit(f"warm-up step gave a non-finite loss ({loss})")
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    if not torch.isfinite(torch.tensor(loss)):
        raise SystemExit(f"timed step gave a non-finite loss ({loss})")
    med = statistics.median(times)
    rss = peak_rss_mb()
    rec = {"op": "moco_step", "framework": "pytorch", "arch": a.arch, "stem": a.stem, "width": 1.0,
           "batch": a.batch, "res": a.res, "threads": THREADS, "masking": a.masking,
           "fill": a.fill if masking else "none", "hard_negatives": 1 if hard else 0,
           "layout": "channels_last" if a.channels_last else "nchw",
           "img_per_s": round(a.batch / med, 2), "step_s": round(med, 4), "peak_rss_mb": round(rss, 1),
           "loss": round(loss, 4)}
    emit(rec, f"moco_step pytorch {a.arch} {a.stem}, batch {a.batch}, {a.res}px, {THREADS} thread(s), "
              f"masking {rec['masking']}/{rec['fill']}, {rec['hard_negatives']} hard negative(s), {rec['layout']}\n"
              f"  {a.batch / med:.1f} images/s (median step {med:.3f} s over {a.steps} steps), "
              f"peak resident memory {rss:.0f} MB, loss {loss:.3f}")


# ---------------------------------------------------------------- extract

def cmd_extract():
    a = ARGS
    torch.manual_seed(a.seed)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    net = build_encoder(a.arch, a.stem, a.channels, head=False).to(memory_format=fmt).eval()
    x = torch.randn(a.batch, a.channels, a.res, a.res).contiguous(memory_format=fmt)
    with torch.inference_mode():
        f = net(x)
        dim = 512 if a.arch == "resnet18" else 2048
        if tuple(f.shape) != (a.batch, dim) or not torch.isfinite(f).all():
            raise SystemExit("extract: bad features")
        times = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    rss = peak_rss_mb()
    rec = {"op": "extract", "framework": "pytorch", "arch": a.arch, "stem": a.stem, "width": 1.0,
           "batch": a.batch, "res": a.res, "threads": THREADS, "dim": int(f.shape[1]),
           "layout": "channels_last" if a.channels_last else "nchw",
           "img_per_s": round(a.batch / med, 2), "step_s": round(med, 4), "peak_rss_mb": round(rss, 1)}
    emit(rec, f"extract pytorch {a.arch} {a.stem}, batch {a.batch}, {a.res}px, {THREADS} thread(s), {rec['layout']}: "
              f"{a.batch / med:.1f} images/s (median batch {med:.3f} s over {a.steps}), {f.shape[1]}-d features, "
              f"peak resident memory {rss:.0f} MB")


if __name__ == "__main__":
    {"kernels": cmd_kernels, "train": cmd_train, "extract": cmd_extract}[ARGS.cmd]()
