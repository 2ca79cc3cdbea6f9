// CImage: libpng, libjpeg-turbo and zlib shims for salient's Data module. Internal to salient; no
// stable API.
//
// Every function reports failure through its return value (SAL_OK = 0 on success) and, when
// `err` is not NULL, a NUL-terminated message of at most `errlen` bytes. libpng's and libjpeg's
// setjmp/longjmp error handling is contained entirely in cimage.c: no longjmp ever crosses into the
// caller, and everything allocated before an error is freed.
#ifndef SALIENT_CIMAGE_H
#define SALIENT_CIMAGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    SAL_OK = 0,
    SAL_ERR_NOT_PNG = 1,      // the 8-byte PNG signature is missing
    SAL_ERR_CORRUPT = 2,      // libpng rejected the data (bad chunk, CRC, zlib stream, ...)
    SAL_ERR_TRUNCATED = 3,    // the data ended early
    SAL_ERR_TOO_LARGE = 4,    // width*height exceeds the caller's limit (checked before allocating)
    SAL_ERR_NOMEM = 5,
    SAL_ERR_IO = 6,           // file could not be opened / written
    SAL_ERR_ARG = 7,          // bad argument (channels not 1/3, zero size, ...)
    SAL_ERR_NOT_JPEG = 8,     // the JPEG start-of-image marker FF D8 is missing
    SAL_ERR_UNSUPPORTED = 9,  // a valid JPEG this decoder does not handle (12-bit, lossless, ...)
};

/// libpng's version number (e.g. 10640 for 1.6.40).
int sal_cimage_version(void);

/// Reads width, height and the native channel count (1 for gray / gray+alpha, 3 for RGB, RGBA and
/// palette) from a PNG's IHDR without decoding the pixels.
int sal_png_info(const uint8_t *data, size_t size, uint32_t *width, uint32_t *height,
                 int *native_channels, char *err, size_t errlen);

/// Decodes a whole PNG held in memory (any colour type, bit depth 1-16, interlaced or not).
/// `want_channels`: 0 = native (1 for gray images, 3 otherwise), 1 = gray, 3 = RGB.
/// Alpha is dropped (not composited), as PIL's convert("RGB") does; tRNS is ignored (a palette's
/// tRNS alpha included). RGB -> gray
/// uses ITU-R 601 luma (0.299, 0.587, 0.114) on the stored values, as PIL's convert("L").
/// Values are sample / (2^bitdepth - 1) in [0, 1]; palette entries / 255.
/// `max_pixels` (> 0) bounds width*height and is checked before any pixel buffer is allocated.
/// On success `*out` is a malloc'ed HWC float buffer of width*height*channels values that the
/// caller frees with sal_free.
int sal_png_decode(const uint8_t *data, size_t size, int want_channels, uint64_t max_pixels,
                   float **out, uint32_t *width, uint32_t *height, int *channels,
                   char *err, size_t errlen);

/// Encodes 8-bit gray (channels 1), RGB (3) or RGBA (4) HWC pixels as a PNG in memory.
/// On success `*out` (malloc'ed, freed with sal_free) holds `*out_size` bytes.
int sal_png_encode(const uint8_t *pixels, uint32_t width, uint32_t height, int channels,
                   uint8_t **out, size_t *out_size, char *err, size_t errlen);

// ---------------------------------------------------------------------------------------------
// JPEG (libjpeg-turbo through the libjpeg API; its setjmp/longjmp stays in cimage.c)

/// libjpeg-turbo's version (e.g. 2001005 for 2.1.5).
int sal_jpeg_version(void);

typedef struct {
    uint32_t width, height;   // as stored, before the EXIF orientation is applied
    int components;           // 1 (gray), 3 (YCbCr or RGB), 4 (CMYK or YCCK)
    int color_space;          // libjpeg's J_COLOR_SPACE of the data: 1 gray, 2 RGB, 3 YCbCr, 4 CMYK, 5 YCCK
    int progressive;          // 1 for a progressive JPEG
    int arithmetic;           // 1 for arithmetic entropy coding
    int orientation;          // EXIF orientation 1-8 (1 when there is none or it is invalid)
} sal_jpeg_info_t;

/// Reads the JPEG's header (up to its first scan) and EXIF orientation without decoding pixels.
int sal_jpeg_info(const uint8_t *data, size_t size, sal_jpeg_info_t *info, char *err, size_t errlen);

/// Decodes a whole JPEG held in memory to 8-bit samples: gray images to 1 channel, every other
/// colour space to RGB (YCbCr and RGB by libjpeg; CMYK and YCCK as PIL's convert("RGB") does with
/// Adobe's inverted CMYK: R = 255 - k' - (255 - c') * (255 - k') / 255 rounded, for stored c', k').
/// The EXIF orientation is applied as PIL's ImageOps.exif_transpose does (5-8 swap width and height).
///
/// DCT scaling: the largest reduction 1/8, 1/4 or 1/2, not beyond 1/`max_denom`, whose output
/// still has each side at least `min_side` and at least `min_area` pixels is decoded by libjpeg's
/// scaled inverse DCT (`max_denom` 1: always the full size). `*scale_denom` receives the one used.
///
/// Errors: not a JPEG, truncated, corrupt entropy data, 12-bit or lossless data, width*height above
/// `max_pixels` (checked on the header, before any pixel buffer is allocated), more than 1000
/// progressive scans. libjpeg warnings that mean pixels were invented (premature end of data, bad
/// Huffman or arithmetic code, lost restart markers, an inconsistent progression) are errors too;
/// the warnings that leave the pixels as encoded (extra bytes between markers, an unknown JFIF
/// revision, a bad ICC marker) are returned in `warn` (empty when none) and the decode succeeds.
/// On success `*out` (malloc'ed, freed with sal_free) holds width*height*channels bytes, HWC.
int sal_jpeg_decode(const uint8_t *data, size_t size, uint32_t min_side, uint64_t min_area, int max_denom,
                    uint64_t max_pixels, uint8_t **out, uint32_t *width, uint32_t *height, int *channels,
                    int *scale_denom, char *warn, size_t warnlen, char *err, size_t errlen);

enum {
    SAL_JPEG_PROGRESSIVE = 1,   // progressive scans (libjpeg's default script)
    SAL_JPEG_ARITHMETIC = 2,    // arithmetic entropy coding
    SAL_JPEG_YCCK = 4,          // 4-channel input stored as YCCK (else CMYK)
    SAL_JPEG_RESTART = 8,       // a restart marker after every MCU row
    SAL_JPEG_444 = 16,          // no chroma subsampling (else 4:2:0)
};

/// Encodes 8-bit gray (channels 1), RGB (3) or CMYK (4, Adobe's inverted convention) HWC pixels as a
/// JPEG in memory with libjpeg's defaults at `quality` (1-100) and `options` (SAL_JPEG_*). An EXIF
/// orientation 2-8 is written as an APP1 Exif marker. Used by tests and the fuzzer to make seeds.
/// On success `*out` (malloc'ed, freed with sal_free) holds `*out_size` bytes.
int sal_jpeg_encode(const uint8_t *pixels, uint32_t width, uint32_t height, int channels, int quality,
                    int options, int orientation, uint8_t **out, size_t *out_size, char *err, size_t errlen);

/// 1 when the buffer starts with the gzip magic bytes 1f 8b.
int sal_is_gzip(const uint8_t *data, size_t size);

/// Inflates a whole gzip (possibly multi-member) or zlib buffer. A stream that ends before its
/// trailer is SAL_ERR_TRUNCATED; bad data is SAL_ERR_CORRUPT; output beyond `max_out` bytes is
/// SAL_ERR_TOO_LARGE. On success `*out` (malloc'ed, freed with sal_free) holds `*out_size` bytes.
int sal_gunzip(const uint8_t *data, size_t size, uint64_t max_out, uint8_t **out, size_t *out_size,
               char *err, size_t errlen);

/// Compresses a buffer as one gzip member (used by tests and the fuzzer to build .gz inputs).
int sal_gzip(const uint8_t *data, size_t size, uint8_t **out, size_t *out_size, char *err, size_t errlen);

/// zlib's CRC-32 (used by the fuzzer to repair chunk CRCs of mutated PNGs).
uint32_t sal_crc32(const uint8_t *data, size_t size);

void sal_free(void *p);

#ifdef __cplusplus
}
#endif
#endif
