// Standalone test of native/cuda/sampling_kernels.cuh (nvcc, no ggml):
//   nvcc -arch=sm_90 -O3 -std=c++17 -o test_sampling test_sampling.cu && ./test_sampling [--quick]
// Random rows (ties, -inf entries, all-equal rows, huge and tiny temperatures,
// top_k 0/1/40/V-1/V, top_p 0.01/0.5/0.9/1, uniform 0/0.999999/random) go
// through the fast kernel, the reference kernel and a CPU float64 transcription
// of THE SAMPLING RULE (sampling.h).
// - fast vs reference: the same id, always (same arithmetic, exact integer sums).
// - device vs CPU: the same id, except where the CPU finds a boundary within
//   kTol * sum(w) of a decision (the top-p mass at a threshold step, or u * sum
//   at a running sum): those are counted and must stay under 1% of the rows.
// Then a CUDA-graph capture of one launch (its ids must equal the eager ones)
// and timings (cudaEvent; n_seq 1 and 8, V 50257). Exits 1 on any mismatch.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "../sampling_kernels.cuh"

#define CHECK(call)                                                                   \
    do {                                                                              \
        cudaError_t err_ = (call);                                                    \
        if (err_ != cudaSuccess) {                                                    \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,             \
                    cudaGetErrorString(err_));                                        \
            exit(2);                                                                  \
        }                                                                             \
    } while (0)

namespace {

// Distance to a decision boundary under which device and CPU may differ:
// relative kTol (float32 exp and division give the device's weights ~1e-6
// relative error) plus 2^-40 a summed token (the device's fixed point).
constexpr double kTol = 1e-5;
constexpr double kFixUlp = 0x1p-40;

bool near_boundary(double a, double b, double n_terms) {
    return std::fabs(a - b) <= kTol * std::max(a, b) + (n_terms + 1.0) * kFixUlp;
}

struct Case {
    std::vector<float> logits;
    tnn_sampling_params params;
    const char *kind;
};

// THE SAMPLING RULE in float64. *near: a decision lies within kTol of a boundary.
int cpu_choose(const std::vector<float> &l, const tnn_sampling_params &p, bool *near) {
    *near = false;
    const int V = (int)l.size();
    std::vector<double> x(V);
    int argmax = 0;
    for (int i = 0; i < V; ++i) {
        x[i] = std::isnan(l[i]) ? -INFINITY : (double)l[i];
        if (x[i] > x[argmax]) argmax = i;
    }
    if (!(p.temperature > 0.0f)) return argmax;
    const double T = p.temperature, M = x[argmax];
    std::vector<double> w(V);
    for (int i = 0; i < V; ++i) {
        w[i] = x[i] == -INFINITY ? 0.0 : std::exp((x[i] - M) / T);
        if (w[i] < kFixUlp) {
            if (w[i] > kFixUlp * (1.0 - kTol)) *near = true; // the cut-off itself
            w[i] = 0.0;
        }
    }
    double tau = -INFINITY;
    if (p.top_k > 0 && p.top_k < V) {
        std::vector<double> s(x);
        std::nth_element(s.begin(), s.begin() + (p.top_k - 1), s.end(), std::greater<double>());
        tau = s[p.top_k - 1];
    }
    if (p.top_p < 1.0f) {
        std::vector<int> surv;
        double W = 0.0;
        for (int i = 0; i < V; ++i)
            if (x[i] >= tau) {
                surv.push_back(i);
                W += w[i];
            }
        std::sort(surv.begin(), surv.end(), [&](int a, int b) { return x[a] > x[b]; });
        const double target = (double)p.top_p * W;
        double cum = 0.0;
        for (size_t j = 0; j < surv.size();) {
            const double v = x[surv[j]];
            while (j < surv.size() && x[surv[j]] == v) cum += w[surv[j++]];
            if (near_boundary(cum, target, (double)surv.size())) *near = true;
            if (cum >= target) {
                tau = v;
                break;
            }
        }
    }
    double W = 0.0;
    int last = -1;
    for (int i = 0; i < V; ++i)
        if (x[i] >= tau && w[i] > 0.0) {
            W += w[i];
            last = i;
        }
    if (last < 0) return argmax;
    const double X = (double)p.uniform * W;
    double run = 0.0, n_run = 0.0;
    int chosen = -1;
    for (int i = 0; i < V; ++i) {
        if (!(x[i] >= tau && w[i] > 0.0)) continue;
        run += w[i];
        n_run += 1.0;
        if (near_boundary(run, X, n_run)) *near = true;
        if (chosen < 0 && run > X) chosen = i;
    }
    if (chosen < 0) {
        *near = true;
        chosen = last;
    }
    return chosen;
}

std::vector<float> make_row(std::mt19937_64 &g, int V, int kind) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> unif(0.0f, 1.0f);
    std::vector<float> l(V);
    switch (kind) {
    case 0: // GPT-2-like spread
        for (auto &v : l) v = 3.0f * normal(g);
        break;
    case 1: // many ties: values on a coarse grid
        for (auto &v : l) v = std::round(2.0f * normal(g)) * 0.5f;
        break;
    case 2: // -inf entries
        for (auto &v : l) v = unif(g) < 0.3f ? -INFINITY : 2.0f * normal(g);
        break;
    case 3: // all -inf but a few
        for (auto &v : l) v = -INFINITY;
        for (int j = 0; j < 3; ++j) l[g() % V] = normal(g);
        break;
    case 4: // every logit equal (+0 and -0 mixed)
        for (auto &v : l) v = (g() & 1) ? 0.0f : -0.0f;
        break;
    case 5: // one dominant token
        for (auto &v : l) v = normal(g);
        l[g() % V] = 40.0f;
        break;
    case 6: // huge magnitudes
        for (auto &v : l) v = 1e4f * normal(g);
        break;
    default: // a few distinct values only
        for (auto &v : l) v = (float)(g() % 4);
        break;
    }
    return l;
}

tnn_sampling_params make_params(std::mt19937_64 &g, int V) {
    static const float temps[] = {0.0f, -1.0f, 0.8f, 1.0f, 1e-3f, 1e-30f, 1e4f, 1e30f};
    static const float tops_p[] = {0.01f, 0.5f, 0.9f, 1.0f, 1.0f};
    const int ks[] = {0, 0, 1, 40, V - 1, V, (int)(g() % V)};
    std::uniform_real_distribution<float> unif(0.0f, 1.0f);
    tnn_sampling_params p;
    p.temperature = temps[g() % 8];
    p.top_k = ks[g() % 7];
    p.top_p = tops_p[g() % 5];
    const int ui = (int)(g() % 4);
    p.uniform = ui == 0 ? 0.0f : ui == 1 ? 0.999999f : unif(g);
    if (p.uniform >= 1.0f) p.uniform = 0.0f;
    return p;
}

struct Device {
    float *logits = nullptr;
    tnn_sampling_params *params = nullptr;
    int32_t *ids = nullptr;
    Device(int max_seq, int V) {
        CHECK(cudaMalloc(&logits, sizeof(float) * (size_t)max_seq * V));
        CHECK(cudaMalloc(&params, sizeof(tnn_sampling_params) * max_seq));
        CHECK(cudaMalloc(&ids, sizeof(int32_t) * max_seq));
    }
    ~Device() {
        cudaFree(logits);
        cudaFree(params);
        cudaFree(ids);
    }
};

// Runs a batch of rows (same V) through both kernels; returns the ids.
void run_batch(const std::vector<Case> &cases, size_t begin, int n, int V, std::vector<int> &fast,
               std::vector<int> &ref) {
    Device d(n, V);
    std::vector<tnn_sampling_params> prm(n);
    for (int i = 0; i < n; ++i) {
        CHECK(cudaMemcpy(d.logits + (size_t)i * V, cases[begin + i].logits.data(),
                         sizeof(float) * V, cudaMemcpyHostToDevice));
        prm[i] = cases[begin + i].params;
    }
    CHECK(cudaMemcpy(d.params, prm.data(), sizeof(tnn_sampling_params) * n, cudaMemcpyHostToDevice));
    fast.assign(n, -1);
    ref.assign(n, -1);
    CHECK(cudaMemset(d.ids, 0xFF, sizeof(int32_t) * n));
    CHECK(tnn_sampling_launch(d.logits, n, V, d.params, d.ids, nullptr, 0));
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(fast.data(), d.ids, sizeof(int32_t) * n, cudaMemcpyDeviceToHost));
    CHECK(cudaMemset(d.ids, 0xFF, sizeof(int32_t) * n));
    CHECK(tnn_sampling_launch_reference(d.logits, n, V, d.params, d.ids, 0));
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(ref.data(), d.ids, sizeof(int32_t) * n, cudaMemcpyDeviceToHost));
}

int check_correctness(bool quick) {
    std::mt19937_64 g(20261129);
    const std::vector<int> vocabs =
        quick ? std::vector<int>{50257, 7, 1000} : std::vector<int>{50257, 1, 7, 1000, 65536, 70001};
    const int rows_per_vocab = quick ? 16 : 400;
    int failures = 0, near = 0, rows = 0, cpu_agree = 0;
    for (int V : vocabs) {
        const int rows_here = V > 60000 ? rows_per_vocab / 8 : rows_per_vocab;
        std::vector<Case> cases;
        for (int r = 0; r < rows_here; ++r) {
            Case c;
            const int kind = r % 8;
            c.logits = make_row(g, V, kind);
            c.params = make_params(g, V);
            c.kind = "";
            cases.push_back(std::move(c));
        }
        for (size_t b = 0; b < cases.size(); b += 8) {
            const int n = (int)std::min<size_t>(8, cases.size() - b);
            std::vector<int> fast, ref;
            run_batch(cases, b, n, V, fast, ref);
            for (int i = 0; i < n; ++i) {
                const Case &c = cases[b + i];
                bool is_near = false;
                const int cpu = cpu_choose(c.logits, c.params, &is_near);
                ++rows;
                const tnn_sampling_params &p = c.params;
                if (fast[i] != ref[i] || fast[i] < 0 || fast[i] >= V) {
                    ++failures;
                    printf("FAIL fast %d != reference %d (V %d, row kind %d, t %g, k %d, p %g, u %.9g)\n",
                           fast[i], ref[i], V, (int)((b + i) % 8), p.temperature, p.top_k, p.top_p,
                           p.uniform);
                } else if (fast[i] != cpu) {
                    if (is_near) {
                        ++near;
                    } else {
                        ++failures;
                        printf("FAIL device %d != cpu %d, not near a boundary (V %d, row kind %d, t %g, "
                               "k %d, p %g, u %.9g)\n",
                               fast[i], cpu, V, (int)((b + i) % 8), p.temperature, p.top_k, p.top_p,
                               p.uniform);
                    }
                } else {
                    ++cpu_agree;
                }
            }
        }
    }
    printf("correctness: %d rows, %d agree with the CPU, %d differ within rounding of a boundary, "
           "%d failures\n",
           rows, cpu_agree, near, failures);
    if (near * 100 > rows) {
        printf("FAIL too many boundary cases: %d of %d rows\n", near, rows);
        ++failures;
    }
    return failures;
}

// Capture one launch in a CUDA graph, replay it, compare with the eager ids.
int check_graph() {
    const int V = 50257, n = 8;
    std::mt19937_64 g(7);
    std::vector<float> host((size_t)n * V);
    std::vector<tnn_sampling_params> prm(n);
    for (int i = 0; i < n; ++i) {
        auto row = make_row(g, V, i % 3);
        std::copy(row.begin(), row.end(), host.begin() + (size_t)i * V);
        prm[i] = tnn_sampling_params{0.8f, i % 2 ? 40 : 0, 0.95f, (float)i / n};
    }
    Device d(n, V);
    CHECK(cudaMemcpy(d.logits, host.data(), sizeof(float) * host.size(), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d.params, prm.data(), sizeof(tnn_sampling_params) * n, cudaMemcpyHostToDevice));
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));
    CHECK(tnn_sampling_launch(d.logits, n, V, d.params, d.ids, nullptr, s));
    std::vector<int> eager(n), replay(n);
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(eager.data(), d.ids, sizeof(int32_t) * n, cudaMemcpyDeviceToHost));
    CHECK(cudaMemset(d.ids, 0xFF, sizeof(int32_t) * n));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    CHECK(tnn_sampling_launch(d.logits, n, V, d.params, d.ids, nullptr, s));
    CHECK(cudaStreamEndCapture(s, &graph));
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    CHECK(cudaGraphLaunch(exec, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(replay.data(), d.ids, sizeof(int32_t) * n, cudaMemcpyDeviceToHost));
    int failures = 0;
    for (int i = 0; i < n; ++i)
        if (eager[i] != replay[i]) {
            printf("FAIL graph replay row %d: %d != eager %d\n", i, replay[i], eager[i]);
            ++failures;
        }
    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphDestroy(graph));
    CHECK(cudaStreamDestroy(s));
    printf("graph capture: %s\n", failures ? "FAIL" : "ok");
    return failures;
}

void time_kernels() {
    const int V = 50257;
    struct Setting {
        const char *name;
        tnn_sampling_params p;
    };
    const Setting settings[] = {
        {"greedy", {0.0f, 0, 1.0f, 0.5f}},
        {"t 0.8", {0.8f, 0, 1.0f, 0.5f}},
        {"t 0.8 top_k 40 top_p 0.95", {0.8f, 40, 0.95f, 0.5f}},
        {"t 0.8 top_p 0.95", {0.8f, 0, 0.95f, 0.5f}},
        {"t 0.8 top_k 40", {0.8f, 40, 1.0f, 0.5f}},
    };
    std::mt19937_64 g(11);
    Device d(8, V);
    std::vector<float> host((size_t)8 * V);
    for (int i = 0; i < 8; ++i) {
        auto row = make_row(g, V, 0);
        std::copy(row.begin(), row.end(), host.begin() + (size_t)i * V);
    }
    CHECK(cudaMemcpy(d.logits, host.data(), sizeof(float) * host.size(), cudaMemcpyHostToDevice));
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    const int iters = 200;
    printf("timing (V %d, %d launches each; stream: back-to-back launches, graph: one captured launch replayed)\n",
           V, iters);
    for (const Setting &st : settings) {
        for (int n : {1, 8}) {
            std::vector<tnn_sampling_params> prm(n, st.p);
            CHECK(cudaMemcpy(d.params, prm.data(), sizeof(tnn_sampling_params) * n, cudaMemcpyHostToDevice));
            for (int w = 0; w < 10; ++w) CHECK(tnn_sampling_launch(d.logits, n, V, d.params, d.ids, nullptr, s));
            CHECK(cudaEventRecord(a, s));
            for (int it = 0; it < iters; ++it)
                CHECK(tnn_sampling_launch(d.logits, n, V, d.params, d.ids, nullptr, s));
            CHECK(cudaEventRecord(b, s));
            CHECK(cudaEventSynchronize(b));
            float ms_stream = 0.0f;
            CHECK(cudaEventElapsedTime(&ms_stream, a, b));
            cudaGraph_t graph;
            cudaGraphExec_t exec;
            CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
            CHECK(tnn_sampling_launch(d.logits, n, V, d.params, d.ids, nullptr, s));
            CHECK(cudaStreamEndCapture(s, &graph));
            CHECK(cudaGraphInstantiate(&exec, graph, 0));
            CHECK(cudaGraphLaunch(exec, s));
            CHECK(cudaEventRecord(a, s));
            for (int it = 0; it < iters; ++it) CHECK(cudaGraphLaunch(exec, s));
            CHECK(cudaEventRecord(b, s));
            CHECK(cudaEventSynchronize(b));
            float ms_graph = 0.0f;
            CHECK(cudaEventElapsedTime(&ms_graph, a, b));
            CHECK(cudaGraphExecDestroy(exec));
            CHECK(cudaGraphDestroy(graph));
            float ms_ref = 0.0f;
            CHECK(cudaEventRecord(a, s));
            CHECK(tnn_sampling_launch_reference(d.logits, n, V, d.params, d.ids, s));
            CHECK(cudaEventRecord(b, s));
            CHECK(cudaEventSynchronize(b));
            CHECK(cudaEventElapsedTime(&ms_ref, a, b));
            printf("  %-28s n_seq %d: fast %7.2f us (stream) %7.2f us (graph); reference %9.1f us\n",
                   st.name, n, 1e3f * ms_stream / iters, 1e3f * ms_graph / iters, 1e3f * ms_ref);
        }
    }
    CHECK(cudaEventDestroy(a));
    CHECK(cudaEventDestroy(b));
    CHECK(cudaStreamDestroy(s));
}

} // namespace

int main(int argc, char **argv) {
    const bool quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s (sm_%d%d)%s\n", prop.name, prop.major, prop.minor, quick ? ", quick" : "");
    int failures = check_correctness(quick);
    failures += check_graph();
    if (!quick) time_kernels();
    printf("%s\n", failures ? "FAILED" : "OK");
    return failures ? 1 : 0;
}
