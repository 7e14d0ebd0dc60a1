// Standalone test of native/cuda/sample_logits.cu (nvcc, no ggml):
//   bash native/cuda/tests/run_sample_logits.sh     (builds, runs, then memcheck)
// - tnn_cuda_logits_sampler_run equals the reference kernel launched directly
//   (tnn_sampling_launch_reference) id for id, on random rows of V = 50257 (the
//   cluster kernel) and V = 70000 (the reference kernel), with rows 3, then 40
//   (the buffers grow), then 7; mixed greedy and sampled records. The fast and
//   reference kernels pick the same id for every input (sampling_kernels.cuh).
// - refusals without a launch: a host pointer as logits, a device ordinal out of
//   range, n_rows 0 and past the limit; the sampler still works afterwards.
// Exits 1 on any mismatch, 2 on a CUDA error of the test itself.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../sample_logits.cu"

#define CHECK(call)                                                                                \
    do {                                                                                           \
        cudaError_t err_ = (call);                                                                 \
        if (err_ != cudaSuccess) {                                                                 \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                          \
                    cudaGetErrorString(err_));                                                     \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)

namespace {

int failures = 0;

void expect(bool ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "FAILED: %s\n", what);
        ++failures;
    }
}

std::vector<tnn_sampling_params> random_records(int n_rows, int n_vocab, std::mt19937 &rng) {
    const tnn_sampling_params settings[] = {
        {0.8f, 40, 0.95f, 0.0f}, {1.3f, 0, 0.9f, 0.0f},  {0.0f, 0, 1.0f, 0.0f},
        {1.0f, 0, 1.0f, 0.0f},   {0.7f, 5, 1.0f, 0.0f},  {2.0f, 0, 0.5f, 0.0f},
        {1e-3f, 0, 1.0f, 0.0f},  {0.9f, n_vocab, 1.0f, 0.0f},
    };
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    std::vector<tnn_sampling_params> p(n_rows);
    for (int i = 0; i < n_rows; ++i) {
        p[i] = settings[i % (sizeof settings / sizeof settings[0])];
        p[i].uniform = std::min(u(rng), 0.99999994f);
    }
    return p;
}

void compare_with_reference(tnn_cuda_logits_sampler *s, int n_rows, int n_vocab, std::mt19937 &rng) {
    std::normal_distribution<float> normal(0.0f, 2.0f);
    std::vector<float> host((size_t)n_rows * n_vocab);
    for (float &x : host) x = normal(rng);
    const std::vector<tnn_sampling_params> params = random_records(n_rows, n_vocab, rng);
    float *logits = nullptr;
    tnn_sampling_params *params_dev = nullptr;
    int32_t *ids_dev = nullptr;
    CHECK(cudaMalloc(&logits, host.size() * sizeof(float)));
    CHECK(cudaMalloc(&params_dev, n_rows * sizeof(tnn_sampling_params)));
    CHECK(cudaMalloc(&ids_dev, n_rows * sizeof(int32_t)));
    CHECK(cudaMemcpy(logits, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(params_dev, params.data(), n_rows * sizeof(tnn_sampling_params),
                     cudaMemcpyHostToDevice));
    CHECK(tnn_sampling_launch_reference(logits, n_rows, n_vocab, params_dev, ids_dev, 0));
    std::vector<int32_t> want(n_rows), got(n_rows, -7);
    CHECK(cudaMemcpy(want.data(), ids_dev, n_rows * sizeof(int32_t), cudaMemcpyDeviceToHost));

    char err[512] = {0};
    const int st = tnn_cuda_logits_sampler_run(s, logits, n_rows, n_vocab, params.data(), got.data(),
                                               err, sizeof err);
    if (st != 0) fprintf(stderr, "run: %s\n", err);
    expect(st == 0, "tnn_cuda_logits_sampler_run succeeds");
    int same = 0;
    for (int i = 0; i < n_rows; ++i) same += got[i] == want[i];
    printf("rows %d, vocab %d: %d of %d ids equal the reference kernel's\n", n_rows, n_vocab, same,
           n_rows);
    expect(same == n_rows, "every id equals the reference kernel's");
    CHECK(cudaFree(logits));
    CHECK(cudaFree(params_dev));
    CHECK(cudaFree(ids_dev));
}

void refusals(tnn_cuda_logits_sampler *s) {
    char err[512] = {0};
    tnn_cuda_logits_sampler *none = nullptr;
    expect(tnn_cuda_logits_sampler_new(1 << 20, &none, err, sizeof err) != 0 && !none,
           "a device ordinal out of range is refused");
    printf("  refused: %s\n", err);

    std::vector<float> host_logits(4 * 100, 0.0f);
    tnn_sampling_params p[4] = {};
    int32_t ids[4] = {-7, -7, -7, -7};
    expect(tnn_cuda_logits_sampler_run(s, host_logits.data(), 4, 100, p, ids, err, sizeof err) != 0,
           "host memory as logits is refused");
    printf("  refused: %s\n", err);
    expect(ids[0] == -7, "a refused call leaves out_ids alone");

    float *logits = nullptr;
    CHECK(cudaMalloc(&logits, 4 * 100 * sizeof(float)));
    expect(tnn_cuda_logits_sampler_run(s, logits, 0, 100, p, ids, err, sizeof err) != 0,
           "n_rows 0 is refused");
    expect(tnn_cuda_logits_sampler_run(s, logits, TNN_CUDA_SAMPLE_MAX_ROWS + 1, 100, p, ids, err,
                                       sizeof err) != 0,
           "n_rows past the limit is refused");
    CHECK(cudaMemset(logits, 0, 4 * 100 * sizeof(float)));
    expect(tnn_cuda_logits_sampler_run(s, logits, 4, 100, p, ids, err, sizeof err) == 0,
           "the sampler works after refusals");
    expect(ids[0] == 0 && ids[3] == 0, "greedy over equal logits picks id 0");
    CHECK(cudaFree(logits));
}

} // namespace

int main(int argc, char **argv) {
    const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
    std::mt19937 rng(1234);
    char err[512] = {0};
    tnn_cuda_logits_sampler *s = nullptr;
    if (tnn_cuda_logits_sampler_new(0, &s, err, sizeof err) != 0) {
        fprintf(stderr, "tnn_cuda_logits_sampler_new: %s\n", err);
        return 2;
    }
    // the cluster kernel, then the reference kernel (rows past 65536 logits);
    // --quick (under memcheck): shorter rows, no growth to 40
    const int vocabs[] = {50257, 70000}, quick_vocabs[] = {6283, 65537};
    for (int k = 0; k < 2; ++k)
        for (int rows : {3, 40, 7}) {
            if (quick && rows == 40) continue;
            compare_with_reference(s, rows, quick ? quick_vocabs[k] : vocabs[k], rng);
        }
    refusals(s);
    tnn_cuda_logits_sampler_free(s);
    tnn_cuda_logits_sampler_free(nullptr);
    printf(failures ? "FAILED (%d)\n" : "all passed\n", failures);
    return failures ? 1 : 0;
}
