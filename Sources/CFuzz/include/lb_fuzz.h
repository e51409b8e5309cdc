#ifndef LB_FUZZ_H
#define LB_FUZZ_H
#include <stddef.h>
#include <stdint.h>

/// Runs libFuzzer's driver on `test_one_input` (built with -DLB_FUZZ and -sanitize=fuzzer); otherwise returns 2.
/// SwiftPM gives every executable a renamed entry point (MODULE_main), so libFuzzer's own main cannot be used: each
/// fuzz target defines MODULE_main and calls this.
int lb_fuzz_run(int argc, char **argv, int (*test_one_input)(const uint8_t *data, size_t size));

#endif
