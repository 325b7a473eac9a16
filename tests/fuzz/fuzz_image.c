/* Fuzz target: image bytes through image_decode (JPEG/PNG/WebP by magic
 * bytes) with a 1 Mpx limit, and, when they decode, image_preprocess to 24 x 24;
 * the same bytes as a data URL string through image_from_data_url. A decoded
 * image must have a positive size within the limit and a finite tensor; every
 * refusal must say why. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../coordinator/image/image.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f}, std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    image_limits lim = image_limits_default();
    lim.max_pixels = 1u << 20; // keeps one input's work small; the check itself is what is tested
    glm_image im;
    char err[256] = "";
    if (image_decode_limits(data, size, &lim, &im, err, sizeof err)) {
        FUZZ_CHECK(err[0] != 0 && !im.rgb && !im.width && !im.height, "a refused image has a message and no pixels");
    } else {
        FUZZ_CHECK(im.rgb && im.width >= 1 && im.height >= 1 && (uint64_t)im.width * im.height <= lim.max_pixels,
                   "a decoded image has pixels within the limit");
        float t[3 * 24 * 24];
        FUZZ_CHECK(image_preprocess(&im, 24, mean, std, t) == 0, "a decoded image preprocesses");
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) FUZZ_CHECK(isfinite(t[i]), "the tensor is finite");
        image_free(&im);
    }
    char *url = malloc(size + 1);
    if (!url) abort();
    memcpy(url, data, size);
    url[size] = 0;
    uint8_t *bytes;
    size_t n;
    err[0] = 0;
    if (image_from_data_url(url, &bytes, &n, err, sizeof err))
        FUZZ_CHECK(err[0] != 0 && !bytes && n == 0, "a refused data URL has a message");
    else
        FUZZ_CHECK(bytes && n >= 1 && n * 4 / 3 <= size, "a data URL decodes to at most 3/4 of its length");
    free(bytes);
    free(url);
    return 0;
}
