// CImage: libpng decode/encode and zlib inflate shims. See include/cimage.h for the contract.
// libpng reports errors by longjmp; every setjmp lives in this file and each error path frees what
// was allocated before returning a code, so nothing longjmps into Swift.
#include "cimage.h"
#include "internal.h"
#include <png.h>
#include <zlib.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>

int sal_cimage_version(void) { return (int)png_access_version_number(); }
void sal_free(void *p) { free(p); }
uint32_t sal_crc32(const uint8_t *data, size_t size) { return (uint32_t)crc32(0L, data, (uInt)size); }

void sal_set_err(char *err, size_t errlen, const char *msg) {
    if (err && errlen) snprintf(err, errlen, "%s", msg);
}

// ---------------------------------------------------------------------------------------------
// PNG decoding

typedef struct {
    const uint8_t *data;
    size_t size, pos;
    char *err;
    size_t errlen;
    int code;
} sal_reader;

static void sal_png_error(png_structp png, png_const_charp msg) {
    sal_reader *r = (sal_reader *)png_get_error_ptr(png);
    if (r->code == SAL_OK) r->code = SAL_ERR_CORRUPT;
    sal_set_err(r->err, r->errlen, msg);
    png_longjmp(png, 1);
}

static void sal_png_warning(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

static void sal_png_read(png_structp png, png_bytep out, size_t n) {
    sal_reader *r = (sal_reader *)png_get_io_ptr(png);
    if (r->size - r->pos < n) {
        r->code = SAL_ERR_TRUNCATED;
        png_error(png, "unexpected end of data (truncated PNG)");
    }
    memcpy(out, r->data + r->pos, n);
    r->pos += n;
}

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

int sal_png_info(const uint8_t *data, size_t size, uint32_t *width, uint32_t *height,
                 int *native_channels, char *err, size_t errlen) {
    static const uint8_t sig[8] = {137, 80, 78, 71, 13, 10, 26, 10};
    size_t n = size < 8 ? size : 8;
    if (!data || memcmp(data, sig, n) != 0 || size == 0) {
        sal_set_err(err, errlen, "not a PNG file (bad signature)");
        return SAL_ERR_NOT_PNG;
    }
    if (size < 8 + 8 + 13) {
        sal_set_err(err, errlen, "unexpected end of data (truncated PNG)");
        return SAL_ERR_TRUNCATED;
    }
    if (memcmp(data + 12, "IHDR", 4) != 0 || be32(data + 8) != 13) {
        sal_set_err(err, errlen, "IHDR chunk missing");
        return SAL_ERR_CORRUPT;
    }
    *width = be32(data + 16);
    *height = be32(data + 20);
    int ct = data[25];
    *native_channels = (ct == 0 || ct == 4) ? 1 : 3;
    if (*width == 0 || *height == 0 || *width > 0x7fffffffu || *height > 0x7fffffffu) {
        sal_set_err(err, errlen, "invalid image size in IHDR");
        return SAL_ERR_CORRUPT;
    }
    return SAL_OK;
}

static int host_is_little_endian(void) {
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

int sal_png_decode(const uint8_t *data, size_t size, int want_channels, uint64_t max_pixels,
                   float **out, uint32_t *width, uint32_t *height, int *channels,
                   char *err, size_t errlen) {
    *out = NULL;
    if (want_channels != 0 && want_channels != 1 && want_channels != 3) {
        sal_set_err(err, errlen, "channels must be 0, 1 or 3");
        return SAL_ERR_ARG;
    }
    {   // signature and the IHDR size check happen before libpng allocates anything
        uint32_t w0, h0; int c0;
        int code = sal_png_info(data, size, &w0, &h0, &c0, err, errlen);
        if (code != SAL_OK) return code;
        if (max_pixels > 0 && (uint64_t)w0 * (uint64_t)h0 > max_pixels) {
            char msg[160];
            snprintf(msg, sizeof msg, "image size %ux%u exceeds the limit of %llu pixels",
                     w0, h0, (unsigned long long)max_pixels);
            sal_set_err(err, errlen, msg);
            return SAL_ERR_TOO_LARGE;
        }
    }

    sal_reader r = {data, size, 0, err, errlen, SAL_OK};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &r, sal_png_error, sal_png_warning);
    if (!png) { sal_set_err(err, errlen, "out of memory"); return SAL_ERR_NOMEM; }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        sal_set_err(err, errlen, "out of memory");
        return SAL_ERR_NOMEM;
    }
    // Pointers assigned after setjmp and read in the error path must be volatile.
    png_bytep volatile buf = NULL;
    png_bytepp volatile rows = NULL;
    float *volatile fout = NULL;
    if (setjmp(png_jmpbuf(png))) {
        free(buf);
        free(rows);
        free(fout);
        png_destroy_read_struct(&png, &info, NULL);
        return r.code != SAL_OK ? r.code : SAL_ERR_CORRUPT;
    }
    png_set_read_fn(png, &r, sal_png_read);
    png_read_info(png, info);

    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    int depth = png_get_bit_depth(png, info), ct = png_get_color_type(png, info);
    if (max_pixels > 0 && (uint64_t)w * (uint64_t)h > max_pixels) {
        r.code = SAL_ERR_TOO_LARGE;
        png_error(png, "image size exceeds the pixel limit");
    }
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (ct == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    // Alpha is dropped: the alpha channel of gray+alpha and RGBA, and the alpha that palette
    // expansion makes from a tRNS chunk (gray and RGB tRNS stay unexpanded and are ignored).
    if ((ct & PNG_COLOR_MASK_ALPHA) || (ct == PNG_COLOR_TYPE_PALETTE && png_get_valid(png, info, PNG_INFO_tRNS)))
        png_set_strip_alpha(png);
    if (depth == 16 && host_is_little_endian()) png_set_swap(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);

    int nch = png_get_channels(png, info);
    int odepth = png_get_bit_depth(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    if ((nch != 1 && nch != 3) || (odepth != 8 && odepth != 16) ||
        rowbytes < (size_t)w * nch * (odepth / 8)) {
        png_error(png, "unsupported PNG layout after transforms");
    }
    if (h > 0 && rowbytes > SIZE_MAX / h) { r.code = SAL_ERR_TOO_LARGE; png_error(png, "image too large"); }
    buf = (png_bytep)malloc(rowbytes * h);
    rows = (png_bytepp)malloc(sizeof(png_bytep) * h);
    if (!buf || !rows) { r.code = SAL_ERR_NOMEM; png_error(png, "out of memory"); }
    for (png_uint_32 y = 0; y < h; y++) rows[y] = buf + (size_t)y * rowbytes;
    png_read_image(png, rows);

    int oc = want_channels == 0 ? nch : want_channels;
    fout = (float *)malloc(sizeof(float) * (size_t)w * h * oc);
    if (!fout) { r.code = SAL_ERR_NOMEM; png_error(png, "out of memory"); }
    const float maxv = odepth == 16 ? 65535.0f : 255.0f;   // divide (not multiply) so v/255 is exact-rounded
    for (png_uint_32 y = 0; y < h; y++) {
        const uint8_t *row8 = rows[y];
        const uint16_t *row16 = (const uint16_t *)rows[y];
        float *o = fout + (size_t)y * w * oc;
        for (png_uint_32 x = 0; x < w; x++) {
            float v[3];
            for (int c = 0; c < nch; c++) {
                size_t i = (size_t)x * nch + c;
                v[c] = (odepth == 16 ? (float)row16[i] : (float)row8[i]) / maxv;
            }
            if (oc == nch) {
                for (int c = 0; c < oc; c++) o[(size_t)x * oc + c] = v[c];
            } else if (oc == 3) {   // gray -> RGB
                o[(size_t)x * 3] = o[(size_t)x * 3 + 1] = o[(size_t)x * 3 + 2] = v[0];
            } else {                // RGB -> gray (ITU-R 601, like PIL's convert("L"))
                o[x] = 0.299f * v[0] + 0.587f * v[1] + 0.114f * v[2];
            }
        }
    }
    free(buf);
    free(rows);
    png_destroy_read_struct(&png, &info, NULL);
    *out = fout;
    *width = w;
    *height = h;
    *channels = oc;
    return SAL_OK;
}

// ---------------------------------------------------------------------------------------------
// PNG encoding (to memory)

typedef struct {
    uint8_t *data;
    size_t size, cap;
    char *err;
    size_t errlen;
    int code;
} sal_writer;

static void sal_png_write_fn(png_structp png, png_bytep in, size_t n) {
    sal_writer *wr = (sal_writer *)png_get_io_ptr(png);
    if (wr->cap - wr->size < n) {
        size_t cap = wr->cap ? wr->cap : 4096;
        while (cap - wr->size < n) cap *= 2;
        uint8_t *p = (uint8_t *)realloc(wr->data, cap);
        if (!p) { wr->code = SAL_ERR_NOMEM; png_error(png, "out of memory"); }
        wr->data = p;
        wr->cap = cap;
    }
    memcpy(wr->data + wr->size, in, n);
    wr->size += n;
}

static void sal_png_flush_fn(png_structp png) { (void)png; }

static void sal_png_write_error(png_structp png, png_const_charp msg) {
    sal_writer *wr = (sal_writer *)png_get_error_ptr(png);
    if (wr->code == SAL_OK) wr->code = SAL_ERR_CORRUPT;
    sal_set_err(wr->err, wr->errlen, msg);
    png_longjmp(png, 1);
}

int sal_png_encode(const uint8_t *pixels, uint32_t width, uint32_t height, int channels,
                   uint8_t **out, size_t *out_size, char *err, size_t errlen) {
    *out = NULL;
    *out_size = 0;
    if (!pixels || width == 0 || height == 0 || (channels != 1 && channels != 3 && channels != 4)) {
        sal_set_err(err, errlen, "invalid image for PNG encoding");
        return SAL_ERR_ARG;
    }
    sal_writer wr = {NULL, 0, 0, err, errlen, SAL_OK};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &wr, sal_png_write_error, sal_png_warning);
    if (!png) { sal_set_err(err, errlen, "out of memory"); return SAL_ERR_NOMEM; }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        sal_set_err(err, errlen, "out of memory");
        return SAL_ERR_NOMEM;
    }
    if (setjmp(png_jmpbuf(png))) {
        free(wr.data);
        png_destroy_write_struct(&png, &info);
        return wr.code != SAL_OK ? wr.code : SAL_ERR_CORRUPT;
    }
    png_set_write_fn(png, &wr, sal_png_write_fn, sal_png_flush_fn);
    int ct = channels == 1 ? PNG_COLOR_TYPE_GRAY : channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_RGBA;
    png_set_IHDR(png, info, width, height, 8, ct, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    size_t stride = (size_t)width * channels;
    for (uint32_t y = 0; y < height; y++) png_write_row(png, (png_const_bytep)(pixels + (size_t)y * stride));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    *out = wr.data;
    *out_size = wr.size;
    return SAL_OK;
}

// ---------------------------------------------------------------------------------------------
// zlib

int sal_is_gzip(const uint8_t *data, size_t size) {
    return size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
}

int sal_gunzip(const uint8_t *data, size_t size, uint64_t max_out, uint8_t **out, size_t *out_size,
               char *err, size_t errlen) {
    *out = NULL;
    *out_size = 0;
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, 15 + 32) != Z_OK) { sal_set_err(err, errlen, "zlib init failed"); return SAL_ERR_NOMEM; }
    size_t cap = size < (SIZE_MAX / 4) ? size * 4 + 4096 : size;
    if (max_out > 0 && cap > max_out + 1) cap = (size_t)max_out + 1;
    uint8_t *buf = (uint8_t *)malloc(cap);
    if (!buf) { inflateEnd(&zs); sal_set_err(err, errlen, "out of memory"); return SAL_ERR_NOMEM; }
    size_t in_pos = 0, produced = 0;
    int code = SAL_OK;
    for (;;) {
        if (zs.avail_in == 0 && in_pos < size) {
            size_t chunk = size - in_pos;
            if (chunk > UINT_MAX) chunk = UINT_MAX;
            zs.next_in = (Bytef *)(data + in_pos);
            zs.avail_in = (uInt)chunk;
            in_pos += chunk;
        }
        if (produced == cap) {
            size_t ncap = cap * 2;
            if (max_out > 0 && ncap > max_out + 1) ncap = (size_t)max_out + 1;
            uint8_t *p = (uint8_t *)realloc(buf, ncap);
            if (!p) { code = SAL_ERR_NOMEM; sal_set_err(err, errlen, "out of memory"); break; }
            buf = p;
            cap = ncap;
        }
        size_t room = cap - produced;
        if (room > UINT_MAX) room = UINT_MAX;
        zs.next_out = buf + produced;
        zs.avail_out = (uInt)room;
        int ret = inflate(&zs, Z_NO_FLUSH);
        produced += room - zs.avail_out;
        if (max_out > 0 && produced > max_out) {
            code = SAL_ERR_TOO_LARGE;
            sal_set_err(err, errlen, "decompressed data exceeds the size limit");
            break;
        }
        if (ret == Z_STREAM_END) {
            // Another gzip member may follow (concatenated .gz files); anything else is ignored,
            // as gzip(1) ignores trailing garbage.
            size_t left = zs.avail_in + (size - in_pos);
            const uint8_t *next = zs.next_in;
            if (left >= 2 && next[0] == 0x1f && next[1] == 0x8b) {
                if (inflateReset(&zs) != Z_OK) { code = SAL_ERR_CORRUPT; sal_set_err(err, errlen, "zlib reset failed"); break; }
                continue;
            }
            break;
        }
        if (ret == Z_OK) continue;
        if (ret == Z_BUF_ERROR) {
            if (zs.avail_in == 0 && in_pos >= size) {
                code = SAL_ERR_TRUNCATED;
                sal_set_err(err, errlen, "compressed data ends early (truncated gzip)");
                break;
            }
            continue;   // output buffer full: grown at the top of the loop
        }
        code = SAL_ERR_CORRUPT;
        sal_set_err(err, errlen, zs.msg ? zs.msg : "invalid compressed data");
        break;
    }
    inflateEnd(&zs);
    if (code != SAL_OK) { free(buf); return code; }
    *out = buf;
    *out_size = produced;
    return SAL_OK;
}

int sal_gzip(const uint8_t *data, size_t size, uint8_t **out, size_t *out_size, char *err, size_t errlen) {
    *out = NULL;
    *out_size = 0;
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (size > UINT_MAX) { sal_set_err(err, errlen, "input too large"); return SAL_ERR_ARG; }
    if (deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        sal_set_err(err, errlen, "zlib init failed");
        return SAL_ERR_NOMEM;
    }
    size_t cap = deflateBound(&zs, (uLong)size) + 64;
    uint8_t *buf = (uint8_t *)malloc(cap);
    if (!buf) { deflateEnd(&zs); sal_set_err(err, errlen, "out of memory"); return SAL_ERR_NOMEM; }
    zs.next_in = (Bytef *)data;
    zs.avail_in = (uInt)size;
    zs.next_out = buf;
    zs.avail_out = (uInt)cap;
    int ret = deflate(&zs, Z_FINISH);
    size_t n = cap - zs.avail_out;
    deflateEnd(&zs);
    if (ret != Z_STREAM_END) { free(buf); sal_set_err(err, errlen, "deflate failed"); return SAL_ERR_CORRUPT; }
    *out = buf;
    *out_size = n;
    return SAL_OK;
}
