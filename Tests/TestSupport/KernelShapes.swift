// The shape tables of the kernel tests, compiled both into the XCTest suites (TestSupport) and into
// the aarch64 checks (Tests/ARM/run.sh), so both hold the kernels to the same awkward cases.
import Kernels

public enum KernelShapes {
    /// Awkward shapes: channels not a multiple of 8, H/W of 1, 3 and 7, stride 2, padding 0/1/3, batch 1-5.
    public static let convolutions: [Conv2DShape] = [
        Conv2DShape(n: 1, c: 3, h: 7, w: 7, k: 5, r: 3, s: 3, stride: 1, pad: 1),
        Conv2DShape(n: 2, c: 5, h: 3, w: 3, k: 17, r: 3, s: 3, stride: 2, pad: 1),
        Conv2DShape(n: 1, c: 9, h: 1, w: 1, k: 8, r: 1, s: 1, stride: 1, pad: 0),
        Conv2DShape(n: 1, c: 1, h: 1, w: 1, k: 3, r: 3, s: 3, stride: 1, pad: 1),
        Conv2DShape(n: 2, c: 3, h: 7, w: 7, k: 6, r: 7, s: 7, stride: 2, pad: 3),
        Conv2DShape(n: 3, c: 16, h: 7, w: 7, k: 32, r: 1, s: 1, stride: 2, pad: 0),
        Conv2DShape(n: 2, c: 13, h: 8, w: 6, k: 19, r: 3, s: 3, stride: 1, pad: 0),
        Conv2DShape(n: 1, c: 7, h: 3, w: 7, k: 33, r: 3, s: 3, stride: 2, pad: 1),
        Conv2DShape(n: 4, c: 24, h: 5, w: 5, k: 16, r: 3, s: 3, stride: 1, pad: 1),
        Conv2DShape(n: 2, c: 1, h: 28, w: 27, k: 20, r: 3, s: 3, stride: 1, pad: 1),
        // Few channels, no padding, 5 images: a padded image per image, tiles across output rows.
        Conv2DShape(n: 5, c: 3, h: 9, w: 11, k: 20, r: 3, s: 3, stride: 1, pad: 0),
        // The CIFAR stem on one image: its tiles split between items that each pad the image.
        Conv2DShape(n: 1, c: 3, h: 32, w: 32, k: 64, r: 3, s: 3, stride: 1, pad: 1),
        // More than one 128-pixel block per thread in backward-weights, several tile groups.
        Conv2DShape(n: 2, c: 19, h: 12, w: 12, k: 40, r: 3, s: 3, stride: 1, pad: 1)
    ]

    /// Winograd F(4x4, 3x3) shapes: H/W of 1-9 (partial tiles), channels not multiples of 8 or 16,
    /// batch 1-3, and large C x K (backward-weights in 2 and 6 passes over the point rows).
    public static let winograd: [Conv2DShape] = [
        Conv2DShape(n: 1, c: 8, h: 1, w: 1, k: 8, r: 3, s: 3, stride: 1, pad: 1),
        Conv2DShape(n: 2, c: 17, h: 5, w: 7, k: 33, r: 3, s: 3, stride: 1, pad: 1),
        Conv2DShape(n: 3, c: 16, h: 4, w: 4, k: 16, r: 3, s: 3, stride: 1, pad: 1),
        Conv2DShape(n: 1, c: 64, h: 9, w: 6, k: 24, r: 3, s: 3, stride: 1, pad: 1),
        Conv2DShape(n: 2, c: 40, h: 8, w: 3, k: 72, r: 3, s: 3, stride: 1, pad: 1),
        Conv2DShape(n: 1, c: 256, h: 4, w: 4, k: 256, r: 3, s: 3, stride: 1, pad: 1),
        Conv2DShape(n: 1, c: 512, h: 2, w: 3, k: 520, r: 3, s: 3, stride: 1, pad: 1),
        // 544 tiles: backward-weights sums 3 blocks of tiles into one dU.
        Conv2DShape(n: 2, c: 16, h: 64, w: 68, k: 20, r: 3, s: 3, stride: 1, pad: 1),
        // dU of 1.5 MB: backward-weights over 4 blocks of tiles.
        Conv2DShape(n: 2, c: 72, h: 40, w: 36, k: 136, r: 3, s: 3, stride: 1, pad: 1)
    ]

    /// Stride-2 Winograd shapes: odd and even H/W (partial 4x4 output tiles, a 1x1 output), channels
    /// not multiples of 8 or 16, batch 1-3, ResNet's 64 -> 128 at 32x32 and 128 -> 256 at 16x16 (blocks
    /// of 12 and 6 tiles).
    public static let winogradStride2: [Conv2DShape] = [
        Conv2DShape(n: 1, c: 8, h: 1, w: 2, k: 8, r: 3, s: 3, stride: 2, pad: 1),
        Conv2DShape(n: 2, c: 13, h: 9, w: 7, k: 21, r: 3, s: 3, stride: 2, pad: 1),
        Conv2DShape(n: 3, c: 16, h: 8, w: 8, k: 32, r: 3, s: 3, stride: 2, pad: 1),
        Conv2DShape(n: 2, c: 40, h: 17, w: 10, k: 48, r: 3, s: 3, stride: 2, pad: 1),
        Conv2DShape(n: 2, c: 64, h: 32, w: 32, k: 128, r: 3, s: 3, stride: 2, pad: 1),
        Conv2DShape(n: 1, c: 128, h: 16, w: 16, k: 256, r: 3, s: 3, stride: 2, pad: 1)
    ]

    /// Batch norms: 1-64 channels (tails of 8 and 16), 2-1100 pixels.
    public static let batchNorm: [BatchNormShape] = [
        BatchNormShape(pixels: 2, channels: 1),
        BatchNormShape(pixels: 9, channels: 3),
        BatchNormShape(pixels: 49, channels: 13),
        BatchNormShape(pixels: 3 * 7 * 7, channels: 33),
        BatchNormShape(pixels: 2 * 1 * 1, channels: 8),
        BatchNormShape(pixels: 600, channels: 64),
        BatchNormShape(pixels: 1100, channels: 5)
    ]
}
