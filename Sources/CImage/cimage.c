#include "cimage.h"
#include <png.h>
#include <zlib.h>
int sal_cimage_version(void) { return (int)png_access_version_number(); }
