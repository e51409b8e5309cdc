#include "lb_fuzz.h"
#include <stdio.h>

#ifdef LB_FUZZ
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
#endif

int lb_fuzz_run(int argc, char **argv, int (*test_one_input)(const uint8_t *data, size_t size)) {
#ifdef LB_FUZZ
    return LLVMFuzzerRunDriver(&argc, &argv, test_one_input);
#else
    (void)argc; (void)argv; (void)test_one_input;
    fprintf(stderr, "built without libFuzzer: use scripts/fuzz\n");
    return 2;
#endif
}
