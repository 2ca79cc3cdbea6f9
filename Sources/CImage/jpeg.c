// CImage: JPEG decoding through libjpeg-turbo's libjpeg API. See include/cimage.h for the contract.
// libjpeg reports errors (and, here, pixel-changing warnings) by the error manager; its handlers
// longjmp back to the setjmp in the same function that called libjpeg, which frees everything and
// returns a code, so nothing longjmps into Swift.
#include "cimage.h"
#include "internal.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <jpeglib.h>
#include <jerror.h>

#define SAL_JPEG_MAX_SCANS 1000   // a progressive JPEG with more scans is refused (each costs a pass)

int sal_jpeg_version(void) {
#ifdef LIBJPEG_TURBO_VERSION_NUMBER
    return LIBJPEG_TURBO_VERSION_NUMBER;
#else
    return JPEG_LIB_VERSION;
#endif
}

typedef struct {
    struct jpeg_error_mgr pub;   // first member: libjpeg's cinfo->err points here
    struct jpeg_progress_mgr progress;
    jmp_buf jump;
    int code;                    // the SAL_ERR_ code of the failure
    char *err;
    size_t errlen;
    char *warn;                  // the first warning that left the pixels as encoded
    size_t warnlen;
    int warnings;
} sal_jpeg_state;

__attribute__((noreturn)) static void sal_jpeg_fail(j_common_ptr cinfo, int code, const char *msg) {
    sal_jpeg_state *st = (sal_jpeg_state *)cinfo->err;
    if (st->code == SAL_OK) {
        st->code = code;
        sal_set_err(st->err, st->errlen, msg);
    }
    longjmp(st->jump, 1);
}

static int sal_jpeg_code_for(int msg_code) {
    switch (msg_code) {
    case JERR_NO_SOI: return SAL_ERR_NOT_JPEG;
    case JERR_BAD_PRECISION: case JERR_SOF_UNSUPPORTED: case JERR_NOT_COMPILED: case JERR_ARITH_NOTIMPL:
    case JERR_CONVERSION_NOTIMPL:
        return SAL_ERR_UNSUPPORTED;
    case JERR_IMAGE_TOO_BIG: return SAL_ERR_TOO_LARGE;
    case JERR_OUT_OF_MEMORY: return SAL_ERR_NOMEM;
    case JERR_INPUT_EMPTY: case JWRN_JPEG_EOF: return SAL_ERR_TRUNCATED;
    default: return SAL_ERR_CORRUPT;
    }
}

static void sal_jpeg_error_exit(j_common_ptr cinfo) {
    char msg[JMSG_LENGTH_MAX + 64];
    if (cinfo->err->msg_code == JERR_BAD_PRECISION) {
        snprintf(msg, sizeof msg, "%d-bit JPEG: only 8-bit samples are supported", cinfo->err->msg_parm.i[0]);
    } else {
        (*cinfo->err->format_message)(cinfo, msg);
    }
    sal_jpeg_fail(cinfo, sal_jpeg_code_for(cinfo->err->msg_code), msg);
}

/// Warnings after which the decoded pixels are still the encoded ones: bytes between markers that
/// belong to nothing, an unknown JFIF version, a bad ICC profile chunk (profiles are not used).
static int sal_jpeg_harmless(int msg_code) {
    return msg_code == JWRN_EXTRANEOUS_DATA || msg_code == JWRN_JFIF_MAJOR || msg_code == JWRN_BOGUS_ICC;
}

static void sal_jpeg_message(j_common_ptr cinfo, int level) {
    if (level >= 0) return;   // trace messages
    sal_jpeg_state *st = (sal_jpeg_state *)cinfo->err;
    char msg[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, msg);
    if (sal_jpeg_harmless(cinfo->err->msg_code)) {
        if (st->warnings++ == 0) sal_set_err(st->warn, st->warnlen, msg);
        return;
    }
    // Every other warning means libjpeg is about to make up data (gray or zero blocks, a skipped
    // restart interval, coefficients of a bad progression): not the encoded image.
    char full[JMSG_LENGTH_MAX + 64];
    snprintf(full, sizeof full, "%s (the rest of the image cannot be decoded as encoded)", msg);
    sal_jpeg_fail(cinfo, sal_jpeg_code_for(cinfo->err->msg_code), full);
}

static void sal_jpeg_progress(j_common_ptr cinfo) {
    if (cinfo->is_decompressor && ((j_decompress_ptr)cinfo)->input_scan_number > SAL_JPEG_MAX_SCANS) {
        char msg[96];
        snprintf(msg, sizeof msg, "more than %d progressive scans", SAL_JPEG_MAX_SCANS);
        sal_jpeg_fail(cinfo, SAL_ERR_CORRUPT, msg);
    }
}

// ---------------------------------------------------------------------------------------------
// EXIF orientation: IFD0 tag 0x0112 of the first APP1 "Exif" marker (as PIL reads it)

static uint32_t tiff_u16(const uint8_t *p, int le) { return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 : (uint32_t)p[0] << 8 | p[1]; }
static uint32_t tiff_u32(const uint8_t *p, int le) {
    return le ? tiff_u16(p, 1) | tiff_u16(p + 2, 1) << 16 : tiff_u16(p, 0) << 16 | tiff_u16(p + 2, 0);
}

static int tiff_orientation(const uint8_t *t, size_t n) {
    if (n < 8) return 1;
    int le;
    if (t[0] == 'I' && t[1] == 'I') le = 1;
    else if (t[0] == 'M' && t[1] == 'M') le = 0;
    else return 1;
    if (tiff_u16(t + 2, le) != 42) return 1;
    uint32_t ifd = tiff_u32(t + 4, le);
    if (ifd > n - 2) return 1;
    uint32_t count = tiff_u16(t + ifd, le);
    for (uint32_t i = 0; i < count; i++) {
        size_t e = (size_t)ifd + 2 + 12 * (size_t)i;
        if (e + 12 > n) break;
        if (tiff_u16(t + e, le) != 0x0112) continue;
        uint32_t type = tiff_u16(t + e + 2, le), cnt = tiff_u32(t + e + 4, le), v;
        if (type == 3 && cnt == 1) v = tiff_u16(t + e + 8, le);        // SHORT
        else if (type == 4 && cnt == 1) v = tiff_u32(t + e + 8, le);   // LONG
        else return 1;
        return v >= 1 && v <= 8 ? (int)v : 1;
    }
    return 1;
}

static int exif_orientation(j_decompress_ptr cinfo) {
    for (jpeg_saved_marker_ptr m = cinfo->marker_list; m; m = m->next) {
        if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 && memcmp(m->data, "Exif\0\0", 6) == 0)
            return tiff_orientation(m->data + 6, m->data_length - 6);
    }
    return 1;
}

/// `src` (w x h, c bytes a pixel) turned as EXIF orientation `o` says, into a new buffer (NULL when
/// out of memory). Output pixel (x, y) reads source offset off0 + x * sx + y * sy (in pixels).
static uint8_t *orient(const uint8_t *src, uint32_t w, uint32_t h, int c, int o, uint32_t *ow, uint32_t *oh) {
    const ptrdiff_t W = w, H = h;
    ptrdiff_t off0, sx, sy;
    switch (o) {
    case 2: off0 = W - 1; sx = -1; sy = W; break;                       // mirror left-right
    case 3: off0 = (H - 1) * W + W - 1; sx = -1; sy = -W; break;        // rotate 180
    case 4: off0 = (H - 1) * W; sx = 1; sy = -W; break;                 // mirror top-bottom
    case 5: off0 = 0; sx = W; sy = 1; break;                            // transpose
    case 6: off0 = (H - 1) * W; sx = -W; sy = 1; break;                 // rotate 90 clockwise
    case 7: off0 = (H - 1) * W + W - 1; sx = -W; sy = -1; break;        // transverse
    default: off0 = W - 1; sx = W; sy = -1; break;                      // 8: rotate 90 counter-clockwise
    }
    *ow = o >= 5 ? h : w;
    *oh = o >= 5 ? w : h;
    uint8_t *dst = (uint8_t *)malloc((size_t)w * h * c);
    if (!dst) return NULL;
    uint8_t *d = dst;
    for (uint32_t y = 0; y < *oh; y++) {
        ptrdiff_t s = off0 + (ptrdiff_t)y * sy;
        if (c == 1) {
            for (uint32_t x = 0; x < *ow; x++, s += sx) *d++ = src[s];
        } else {
            for (uint32_t x = 0; x < *ow; x++, s += sx) {
                const uint8_t *p = src + s * 3;
                d[0] = p[0]; d[1] = p[1]; d[2] = p[2];
                d += 3;
            }
        }
    }
    return dst;
}

// ---------------------------------------------------------------------------------------------

static void sal_jpeg_setup(j_decompress_ptr cinfo, sal_jpeg_state *st, char *err, size_t errlen, char *warn,
                           size_t warnlen) {
    memset(st, 0, sizeof *st);
    memset(cinfo, 0, sizeof *cinfo);   // the error path may destroy it before libjpeg initialised it
    cinfo->err = jpeg_std_error(&st->pub);
    st->pub.error_exit = sal_jpeg_error_exit;
    st->pub.emit_message = sal_jpeg_message;
    st->progress.progress_monitor = sal_jpeg_progress;
    st->err = err;
    st->errlen = errlen;
    st->warn = warn;
    st->warnlen = warnlen;
    if (warn && warnlen) warn[0] = 0;
}

/// Creates the decompressor over `data` (with the scan-limit monitor, APP1 markers saved) and reads
/// the header. Called after the caller's setjmp: libjpeg's errors longjmp back to it.
static void sal_jpeg_read_header(j_decompress_ptr cinfo, sal_jpeg_state *st, const uint8_t *data, size_t size) {
    jpeg_create_decompress(cinfo);
    cinfo->progress = &st->progress;
    jpeg_mem_src(cinfo, data, (unsigned long)size);
    jpeg_save_markers(cinfo, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(cinfo, TRUE);
}

static int sal_jpeg_check_soi(const uint8_t *data, size_t size, char *err, size_t errlen) {
    if (!data || size == 0) { sal_set_err(err, errlen, "empty file"); return SAL_ERR_TRUNCATED; }
    if (size < 2 || data[0] != 0xFF || data[1] != 0xD8) {
        sal_set_err(err, errlen, "not a JPEG file (no start-of-image marker)");
        return SAL_ERR_NOT_JPEG;
    }
    return SAL_OK;
}

int sal_jpeg_info(const uint8_t *data, size_t size, sal_jpeg_info_t *info, char *err, size_t errlen) {
    memset(info, 0, sizeof *info);
    int code = sal_jpeg_check_soi(data, size, err, errlen);
    if (code != SAL_OK) return code;
    struct jpeg_decompress_struct cinfo;
    sal_jpeg_state st;
    sal_jpeg_setup(&cinfo, &st, err, errlen, NULL, 0);
    if (setjmp(st.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return st.code != SAL_OK ? st.code : SAL_ERR_CORRUPT;
    }
    sal_jpeg_read_header(&cinfo, &st, data, size);
    info->width = cinfo.image_width;
    info->height = cinfo.image_height;
    info->components = cinfo.num_components;
    info->color_space = (int)cinfo.jpeg_color_space;
    info->progressive = cinfo.progressive_mode ? 1 : 0;
    info->arithmetic = cinfo.arith_code ? 1 : 0;
    info->orientation = exif_orientation(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return SAL_OK;
}

/// PIL's CMYK -> RGB for one row of Adobe (inverted) CMYK as libjpeg returns it: with c = 255 - c'
/// and k = 255 - k', R = clip(255 - k - c * (255 - k) / 255), the division rounded as PIL's MULDIV255.
static void cmyk_row_to_rgb(const uint8_t *in, uint8_t *out, uint32_t w) {
    for (uint32_t x = 0; x < w; x++) {
        const int nk = in[4 * x + 3];   // 255 - k
        for (int i = 0; i < 3; i++) {
            const int t = (255 - in[4 * x + i]) * nk + 128;
            const int v = nk - (((t >> 8) + t) >> 8);
            out[3 * x + i] = (uint8_t)(v < 0 ? 0 : v);
        }
    }
}

int sal_jpeg_decode(const uint8_t *data, size_t size, uint32_t min_side, uint64_t min_area, int max_denom,
                    uint64_t max_pixels, uint8_t **out, uint32_t *width, uint32_t *height, int *channels,
                    int *scale_denom, char *warn, size_t warnlen, char *err, size_t errlen) {
    *out = NULL;
    int code = sal_jpeg_check_soi(data, size, err, errlen);
    if (code != SAL_OK) return code;
    struct jpeg_decompress_struct cinfo;
    sal_jpeg_state st;
    sal_jpeg_setup(&cinfo, &st, err, errlen, warn, warnlen);
    // Assigned after setjmp and read in the error path: volatile.
    uint8_t *volatile pixels = NULL;
    uint8_t *volatile cmyk = NULL;
    if (setjmp(st.jump)) {
        jpeg_destroy_decompress(&cinfo);
        free(pixels);
        free(cmyk);
        return st.code != SAL_OK ? st.code : SAL_ERR_CORRUPT;
    }
    sal_jpeg_read_header(&cinfo, &st, data, size);

    if (max_pixels > 0 && (uint64_t)cinfo.image_width * cinfo.image_height > max_pixels) {
        char msg[160];
        snprintf(msg, sizeof msg, "image size %ux%u exceeds the limit of %llu pixels", cinfo.image_width,
                 cinfo.image_height, (unsigned long long)max_pixels);
        sal_jpeg_fail((j_common_ptr)&cinfo, SAL_ERR_TOO_LARGE, msg);
    }
    const int orientation = exif_orientation(&cinfo);
    switch (cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE: cinfo.out_color_space = JCS_GRAYSCALE; break;
    case JCS_YCbCr: case JCS_RGB: cinfo.out_color_space = JCS_RGB; break;
    case JCS_CMYK: case JCS_YCCK: cinfo.out_color_space = JCS_CMYK; break;
    default: {
        char msg[96];
        snprintf(msg, sizeof msg, "JPEG with %d components in an unknown colour space", cinfo.num_components);
        sal_jpeg_fail((j_common_ptr)&cinfo, SAL_ERR_UNSUPPORTED, msg);
    }
    }

    // The largest DCT reduction whose output is still big enough.
    int denom = 1;
    for (int d = 8; d >= 2; d /= 2) {
        if (d > max_denom) continue;
        cinfo.scale_num = 1;
        cinfo.scale_denom = (unsigned int)d;
        jpeg_calc_output_dimensions(&cinfo);
        if (cinfo.output_width >= min_side && cinfo.output_height >= min_side &&
            (uint64_t)cinfo.output_width * cinfo.output_height >= min_area) {
            denom = d;
            break;
        }
    }
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)denom;
    jpeg_start_decompress(&cinfo);

    const uint32_t w = cinfo.output_width, h = cinfo.output_height;
    const int oc = cinfo.output_components == 1 ? 1 : 3;
    const size_t stride = (size_t)w * oc;
    pixels = (uint8_t *)malloc(stride * h);
    if (cinfo.output_components == 4) cmyk = (uint8_t *)malloc((size_t)w * 4);
    if (!pixels || (cinfo.output_components == 4 && !cmyk)) sal_jpeg_fail((j_common_ptr)&cinfo, SAL_ERR_NOMEM, "out of memory");
    while (cinfo.output_scanline < h) {
        const uint32_t y = cinfo.output_scanline;
        if (cinfo.output_components == 4) {
            JSAMPROW row = cmyk;
            jpeg_read_scanlines(&cinfo, &row, 1);
            cmyk_row_to_rgb(cmyk, pixels + (size_t)y * stride, w);
        } else {
            JSAMPROW rows[8];
            uint32_t n = h - y < 8 ? h - y : 8;
            for (uint32_t i = 0; i < n; i++) rows[i] = pixels + (size_t)(y + i) * stride;
            jpeg_read_scanlines(&cinfo, rows, n);
        }
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    free(cmyk);

    uint8_t *result = pixels;
    uint32_t rw = w, rh = h;
    if (orientation != 1) {
        result = orient(pixels, w, h, oc, orientation, &rw, &rh);
        free(pixels);
        if (!result) { sal_set_err(err, errlen, "out of memory"); return SAL_ERR_NOMEM; }
    }
    *out = result;
    *width = rw;
    *height = rh;
    *channels = oc;
    *scale_denom = denom;
    return SAL_OK;
}

// ---------------------------------------------------------------------------------------------
// Encoding (seeds for tests and the fuzzer)

int sal_jpeg_encode(const uint8_t *pixels, uint32_t width, uint32_t height, int channels, int quality,
                    int options, int orientation, uint8_t **out, size_t *out_size, char *err, size_t errlen) {
    *out = NULL;
    *out_size = 0;
    if (!pixels || width == 0 || height == 0 || (channels != 1 && channels != 3 && channels != 4) ||
        quality < 1 || quality > 100) {
        sal_set_err(err, errlen, "invalid image for JPEG encoding");
        return SAL_ERR_ARG;
    }
    // libjpeg's output buffer pointer and size change inside libjpeg calls: kept on the heap so the
    // error path after longjmp reads them reliably.
    struct { unsigned char *buf; unsigned long size; } *mem = calloc(1, sizeof *mem);
    if (!mem) { sal_set_err(err, errlen, "out of memory"); return SAL_ERR_NOMEM; }
    struct jpeg_compress_struct cinfo;
    sal_jpeg_state st;
    memset(&st, 0, sizeof st);
    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&st.pub);
    st.pub.error_exit = sal_jpeg_error_exit;
    st.pub.emit_message = sal_jpeg_message;
    st.err = err;
    st.errlen = errlen;
    if (setjmp(st.jump)) {
        jpeg_destroy_compress(&cinfo);
        free(mem->buf);
        free(mem);
        return st.code != SAL_OK ? st.code : SAL_ERR_CORRUPT;
    }
    jpeg_create_compress(&cinfo);
    jpeg_mem_dest(&cinfo, &mem->buf, &mem->size);
    cinfo.image_width = width;
    cinfo.image_height = height;
    cinfo.input_components = channels;
    cinfo.in_color_space = channels == 1 ? JCS_GRAYSCALE : channels == 3 ? JCS_RGB : JCS_CMYK;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    if (channels == 4 && (options & SAL_JPEG_YCCK)) jpeg_set_colorspace(&cinfo, JCS_YCCK);
    if (options & SAL_JPEG_PROGRESSIVE) jpeg_simple_progression(&cinfo);
    if (options & SAL_JPEG_ARITHMETIC) cinfo.arith_code = TRUE;
    if (options & SAL_JPEG_RESTART) cinfo.restart_in_rows = 1;
    if ((options & SAL_JPEG_444) && channels == 3) {
        for (int i = 0; i < cinfo.num_components; i++) cinfo.comp_info[i].h_samp_factor = cinfo.comp_info[i].v_samp_factor = 1;
    }
    jpeg_start_compress(&cinfo, TRUE);
    if (orientation >= 2 && orientation <= 8) {
        // "Exif\0\0", a little-endian TIFF header, IFD0 with one entry: Orientation, SHORT, 1.
        const uint8_t exif[] = {'E', 'x', 'i', 'f', 0, 0, 'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0,
                                0x12, 0x01, 3, 0, 1, 0, 0, 0, (uint8_t)orientation, 0, 0, 0, 0, 0, 0, 0};
        jpeg_write_marker(&cinfo, JPEG_APP0 + 1, exif, sizeof exif);
    }
    const size_t stride = (size_t)width * channels;
    while (cinfo.next_scanline < height) {
        JSAMPROW row = (JSAMPROW)(pixels + (size_t)cinfo.next_scanline * stride);
        jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    const size_t size = mem->size;
    uint8_t *result = (uint8_t *)malloc(size);
    if (result) memcpy(result, mem->buf, size);
    free(mem->buf);
    free(mem);
    if (!result) { sal_set_err(err, errlen, "out of memory"); return SAL_ERR_NOMEM; }
    *out = result;
    *out_size = size;
    return SAL_OK;
}
