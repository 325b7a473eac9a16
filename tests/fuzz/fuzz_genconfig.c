/* Fuzz target: generation_config.json through req_defaults_load (it reads
 * DIR/generation_config.json; the input is written there). Whatever the file
 * holds, the defaults must be usable: at least one new token, temperature and
 * top_p in range, top_k non-negative. */
#include <math.h>

#include "../../coordinator/fronts/requests.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_tmpdir();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_write("generation_config.json", data, size);
    req_defaults d;
    req_defaults_load(&d, fuzz_tmpdir());
    FUZZ_CHECK(d.max_new >= 1, "at least one new token");
    FUZZ_CHECK(isfinite(d.temperature) && d.temperature >= 0, "temperature finite and >= 0");
    FUZZ_CHECK(d.top_p > 0 && d.top_p <= 1, "top_p in (0, 1]");
    FUZZ_CHECK(d.top_k >= 0, "top_k >= 0");
    return 0;
}
