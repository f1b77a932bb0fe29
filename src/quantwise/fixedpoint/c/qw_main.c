/* Host harness: reads samples of QW_INPUT_SIZE int32 values (little-endian binary) on stdin,
 * runs the model on each, writes QW_OUTPUT_SIZE int32 values per sample to stdout. */
#include <stdio.h>
#include "qw_model.h"

int main(void) {
    static int32_t in[QW_INPUT_SIZE];
    static int32_t out[QW_OUTPUT_SIZE];
    while (fread(in, sizeof(int32_t), QW_INPUT_SIZE, stdin) == QW_INPUT_SIZE) {
        qw_model_run(in, out);
        if (fwrite(out, sizeof(int32_t), QW_OUTPUT_SIZE, stdout) != QW_OUTPUT_SIZE) {
            return 1;
        }
    }
    return 0;
}
