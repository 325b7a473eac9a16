/* glmtp: tensor-parallel inference for the GLM-4-9B family.
 * One binary for every rank under mpirun; rank 0 coordinates and prints. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/commands.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: [mpirun -np N] glmtp COMMAND [options]\n"
            "  make-model --out DIR [--preset tiny|glm-4-9b|glm-4-9b-chat|glm-4-9b-chat-1m] [--layout chatglm|hf]\n"
            "             [--dtype bf16|f32] [--seed S] [--layers N] [--kv-groups N] [--vocab N] [--shards N]\n"
            "             [--rope-ratio R] [--tokenizer tokenizer.model]\n"
            "  score      --model DIR --ids 1,2,3 [--incremental] [--dump hidden|logits] [--top K]\n"
            "  generate   --model DIR --input prompts.jsonl [--output out.jsonl] | --ids 1,2,3\n"
            "             [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S] [--ignore-eos]\n"
            "             [--step-tokens N] [--kv-tokens N]\n"
            "  chat       --model DIR [--system TEXT] [--max-new-tokens N] [--temperature T] ...\n"
            "  serve      --model DIR [--listen 127.0.0.1:7070|unix:/path] [--auth-token-file F] [--max-queue N]\n"
            "             [--max-frame BYTES] [--step-tokens N] [--kv-tokens N] [--step-log FILE] [sampling defaults]\n"
            "             (client: glmtp-client --connect ADDR ...)\n"
            "  tokenize   --model DIR [--prefix] [--chat [--no-generation-prompt]] [--decode] < input\n"
            "  bench      prefill|decode|throughput --model DIR|--preset P [--layers L] [--lens N,..]\n"
            "             [--batch B,..] [--context C,..] [--steps S] [--top-k K] [--top-p P] [--json FILE]\n"
            "common: --threads N (per rank; default all cores), --block-size B (KV block, default 16),\n"
            "        --device cpu|cuda (cuda: one GPU per node-local rank, bf16), --comm mpi|nccl (GPU all-reduce;\n"
            "        default nccl with more than one rank, mpi lets ranks share a GPU),\n"
            "        --kv-tokens N (KV pool; serve and chat default: sized from GPU memory, 65536 on CPU),\n"
            "        --gpu-memory-utilization F (share of each GPU's memory for weights + KV + activations, 0.90),\n"
            "        GLMTP_COMM_TIMEOUT=seconds (collective timeout, default 600),\n"
            "        GLMTP_NO_CUDA_GRAPHS=1 (decode steps without CUDA graphs); README: other GPU switches\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "make-model") == 0) return cmd_make_model(argc - 2, argv + 2);
    if (strcmp(cmd, "tokenize") == 0) return cmd_tokenize(argc - 2, argv + 2);

    int (*run)(comm *, int, char **) = NULL;
    if (strcmp(cmd, "score") == 0) run = cmd_score;
    else if (strcmp(cmd, "generate") == 0) run = cmd_generate;
    else if (strcmp(cmd, "bench") == 0) run = cmd_bench;
    else if (strcmp(cmd, "chat") == 0) run = cmd_chat;
#ifdef GLMTP_HAVE_SERVE
    else if (strcmp(cmd, "serve") == 0) run = cmd_serve;
#else
    else if (strcmp(cmd, "serve") == 0) {
        fprintf(stderr, "glmtp: serve: this glmtp was built without protoc-c/libprotobuf-c (-DGLMTP_SERVE=OFF)\n");
        return 2;
    }
#endif
    if (!run) {
        fprintf(stderr, "glmtp: unknown command '%s'\n", cmd);
        usage(stderr);
        return 2;
    }
    const char *to = getenv("GLMTP_COMM_TIMEOUT");
    char err[256];
    comm *c = comm_create(&argc, &argv, to ? atof(to) : 0, err, sizeof err);
    if (!c) {
        fprintf(stderr, "glmtp: %s\n", err);
        return 1;
    }
    int rc = run(c, argc - 2, argv + 2);
    comm_destroy(c);
    return rc;
}
