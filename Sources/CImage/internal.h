// Helpers shared by the C files of CImage (not part of its header).
#ifndef SALIENT_CIMAGE_INTERNAL_H
#define SALIENT_CIMAGE_INTERNAL_H
#include <stddef.h>

/// Copies `msg` into `err` (at most errlen bytes, NUL-terminated) when `err` is not NULL.
void sal_set_err(char *err, size_t errlen, const char *msg);

#endif
