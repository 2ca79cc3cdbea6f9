// CImage: libpng and zlib shims for salient. Internal; no stable API.
#ifndef SALIENT_CIMAGE_H
#define SALIENT_CIMAGE_H
int sal_cimage_version(void);
#endif
