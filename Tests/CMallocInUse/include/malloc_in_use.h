#ifndef LB_MALLOC_IN_USE_H
#define LB_MALLOC_IN_USE_H
#include <stddef.h>

/// The bytes malloc has handed out and not had back, over all arenas (glibc's mallinfo2), for tests that check
/// memory is freed.
size_t lb_malloc_in_use(void);

#endif
