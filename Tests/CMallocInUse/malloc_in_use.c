#include "malloc_in_use.h"
#include <malloc.h>

size_t lb_malloc_in_use(void) {
    return mallinfo2().uordblks;
}
