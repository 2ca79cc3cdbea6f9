import Foundation
import Kernels

/// One decoded image: `height` rows of `width` pixels of `channels` (1 or 3) Float32 values in
/// [0, 1], stored HWC: element (y, x, c) at `(y * width + x) * channels + c`.
public struct Image: Equatable, Sendable {
    public var width: Int
    public var height: Int
    public var channels: Int
    public var pixels: [Float]

    public init(width: Int, height: Int, channels: Int, pixels: [Float]) {
        precondition(pixels.count == width * height * channels, "Image: pixel count mismatch")
        self.width = width
        self.height = height
        self.channels = channels
        self.pixels = pixels
    }

    /// The same image with 1 or 3 channels: gray is replicated; RGB becomes ITU-R 601 luma
    /// (0.299, 0.587, 0.114), as PIL's `convert("L")`.
    public func converted(toChannels c: Int) -> Image {
        precondition(c == 1 || c == 3)
        if c == channels { return self }
        let n = width * height
        var out = [Float](repeating: 0, count: n * c)
        if c == 3 {
            for i in 0..<n { let v = pixels[i]; out[3 * i] = v; out[3 * i + 1] = v; out[3 * i + 2] = v }
        } else {
            for i in 0..<n { out[i] = 0.299 * pixels[3 * i] + 0.587 * pixels[3 * i + 1] + 0.114 * pixels[3 * i + 2] }
        }
        return Image(width: width, height: height, channels: c, pixels: out)
    }

    /// The centre side x side pixels (the whole image along a side shorter than `side`), as
    /// torchvision's CenterCrop places it (offsets rounded down).
    public func centerCropped(side: Int) -> Image {
        let ch = min(side, height), cw = min(side, width)
        let top = (height - ch) / 2, left = (width - cw) / 2
        var out = [Float](repeating: 0, count: ch * cw * channels)
        for y in 0..<ch {
            let src = ((top + y) * width + left) * channels
            out.replaceSubrange(
                (y * cw * channels)..<((y + 1) * cw * channels),
                with: pixels[src..<(src + cw * channels)])
        }
        return Image(width: cw, height: ch, channels: channels, pixels: out)
    }

    /// The image resized to `outWidth` x `outHeight` with antialiased bilinear interpolation
    /// (PIL's / torchvision's `antialias=True` bilinear).
    public func resized(width outWidth: Int, height outHeight: Int) -> Image {
        var out = [Float](repeating: 0, count: outWidth * outHeight * channels)
        pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                resampleBilinear(
                    src.baseAddress!, height: height, width: width, channels: channels,
                    top: 0, left: 0, cropHeight: height, cropWidth: width,
                    outHeight: outHeight, outWidth: outWidth, out: dst.baseAddress!)
            }
        }
        return Image(width: outWidth, height: outHeight, channels: channels, pixels: out)
    }
}

/// 8-bit channel conversion used for stored dataset images (in memory and streamed alike, so both
/// give identical pixels): gray replicated, RGB -> round(0.299 R + 0.587 G + 0.114 B).
func convertChannels8(_ src: [UInt8], pixels n: Int, from: Int, to: Int) -> [UInt8] {
    if from == to { return src }
    var out = [UInt8](repeating: 0, count: n * to)
    if to == 3 {
        for i in 0..<n { let v = src[i]; out[3 * i] = v; out[3 * i + 1] = v; out[3 * i + 2] = v }
    } else {
        for i in 0..<n {
            let y = 0.299 * Float(src[3 * i]) + 0.587 * Float(src[3 * i + 1]) + 0.114 * Float(src[3 * i + 2])
            out[i] = UInt8(min(255, y.rounded()))
        }
    }
    return out
}

// MARK: - Antialiased bilinear resampling (PIL's ImagingResample, as torchvision's antialias=True)

/// Per-output-sample source window and normalised weights along one axis.
struct ResampleAxis {
    var start: [Int32]
    var count: [Int32]
    var weights: [Float]  // outSize * ksize
    var ksize: Int

    /// PIL `precompute_coeffs` with the triangle (bilinear) filter over the input span
    /// [in0, in0 + inLength) of an axis of `inSize` samples: when downscaling, the filter's support
    /// widens by the scale factor (antialiasing); when upscaling it is plain bilinear with
    /// half-pixel centres (align_corners = false), edge samples clamped.
    init(inSize: Int, in0: Int, inLength: Int, outSize: Int) {
        let scale = Double(inLength) / Double(outSize)
        let filterscale = max(scale, 1)
        let support = 1.0 * filterscale
        ksize = Int(support.rounded(.up)) * 2 + 1
        start = [Int32](repeating: 0, count: outSize)
        count = [Int32](repeating: 0, count: outSize)
        weights = [Float](repeating: 0, count: outSize * ksize)
        let ss = 1.0 / filterscale
        for xx in 0..<outSize {
            let center = Double(in0) + (Double(xx) + 0.5) * scale
            var xmin = Int(center - support + 0.5)  // truncation toward zero, as C's (int)
            if xmin < 0 { xmin = 0 }
            var xmax = Int(center + support + 0.5)
            if xmax > inSize { xmax = inSize }
            // Keep within the crop, as torchvision crops before resizing.
            xmin = max(xmin, in0)
            xmax = min(xmax, in0 + inLength)
            let n = max(0, min(xmax - xmin, ksize))
            var ww = 0.0
            var k = [Double](repeating: 0, count: n)
            for x in 0..<n {
                let t = abs((Double(x + xmin) - center + 0.5) * ss)
                let w = t < 1 ? 1 - t : 0
                k[x] = w
                ww += w
            }
            for x in 0..<n { weights[xx * ksize + x] = Float(ww != 0 ? k[x] / ww : 0) }
            start[xx] = Int32(xmin)
            count[xx] = Int32(n)
        }
    }
}

/// Resizes the crop rows [top, top+cropHeight) x columns [left, left+cropWidth) of an HWC image to
/// outHeight x outWidth (antialiased bilinear, separable: horizontal pass then vertical).
public func resampleBilinear(
    _ src: UnsafePointer<Float>, height: Int, width: Int, channels c: Int,
    top: Int, left: Int, cropHeight: Int, cropWidth: Int,
    outHeight: Int, outWidth: Int, out: UnsafeMutablePointer<Float>
) {
    // Coordinates are relative to the crop: torchvision's resized_crop crops, then resizes.
    let ax = ResampleAxis(inSize: cropWidth, in0: 0, inLength: cropWidth, outSize: outWidth)
    let ay = ResampleAxis(inSize: cropHeight, in0: 0, inLength: cropHeight, outSize: outHeight)
    var tmp = [Float](repeating: 0, count: cropHeight * outWidth * c)
    tmp.withUnsafeMutableBufferPointer { tb in
        let t = tb.baseAddress!
        for y in 0..<cropHeight {
            let row = src + ((top + y) * width + left) * c
            let trow = t + y * outWidth * c
            for xx in 0..<outWidth {
                let s = Int(ax.start[xx]), n = Int(ax.count[xx])
                for ch in 0..<c {
                    var acc: Float = 0
                    for k in 0..<n { acc += ax.weights[xx * ax.ksize + k] * row[(s + k) * c + ch] }
                    trow[xx * c + ch] = acc
                }
            }
        }
        let rowLen = outWidth * c
        for yy in 0..<outHeight {
            let s = Int(ay.start[yy]), n = Int(ay.count[yy])
            let o = out + yy * rowLen
            for i in 0..<rowLen { o[i] = 0 }
            for k in 0..<n {
                let w = ay.weights[yy * ay.ksize + k]
                let r = t + (s + k) * rowLen
                for i in 0..<rowLen { o[i] += w * r[i] }
            }
        }
    }
}
