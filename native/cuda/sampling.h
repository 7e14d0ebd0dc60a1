/* Token choice on the device: greedy, or temperature / top-k / top-p with a
 * random draw the host makes (one uniform in [0, 1) a sequence a step), so a
 * seed reproduces a run and the CPU path (gpt2/sampling.py) can apply the same
 * rule to the same numbers.
 *
 * The rule, for one row of logits l[0..V-1] (SAMPLING RULE, shared with the CPU):
 *   0. temperature, top_p and u are the float32 values of the struct (the host
 *      rounds its own to float32, u to below 1, before applying the rule).
 *      l_i = -0 counts as +0; -inf is a logit like any other (the device reads
 *      NaN as -inf; the host refuses NaN and +inf).
 *   1. temperature <= 0 (or NaN): the id of the largest logit (the lowest id on ties).
 *   2. m = max l; each token's weight w_i = exp((l_i - m) / temperature), or 0
 *      where that is below 2^-40 (so -inf logits weigh 0). Ranks come from the
 *      logits themselves (l and z = l / temperature order the tokens alike; z
 *      is never formed, so a tiny temperature cannot overflow it).
 *   3. top-k (0 < top_k < V; otherwise off): tau_k = the top_k-th largest l
 *      (counting ties once each, as a sorted list would, -inf entries included);
 *      keep l_i >= tau_k (ties at tau_k all kept).
 *   4. top-p (top_p < 1; >= 1 or NaN: off): over the kept tokens, with
 *      W = sum of their w, tau_p = the largest value t such that the sum of w_i
 *      over kept l_i >= t is >= top_p * W; keep l_i >= tau_p (ties all kept; a
 *      top_p <= 0 keeps the largest logit and its ties).
 *   5. draw: the kept tokens with w_i > 0 in ascending id order; W = the sum of
 *      their w; the chosen id is the first one whose running sum of w exceeds
 *      u * W, the last of them if rounding leaves none; rule 1's id if there
 *      are none (every logit -inf).
 * Sums: float64 on the host; exact integers on the device (w in fixed point,
 * truncated to multiples of 2^-40, so the order of the sums does not matter
 * and a seed reproduces a run). The two choose the same id wherever u * W and
 * the top-p mass top_p * W do not fall within rounding (~1e-6 relative) of a
 * running sum.
 */
#ifndef TNN_CUDA_SAMPLING_H
#define TNN_CUDA_SAMPLING_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One sequence's sampling parameters for one step (uploaded with its token). */
typedef struct {
    float temperature; /* <= 0: greedy */
    int32_t top_k;     /* 0: off */
    float top_p;       /* >= 1: off */
    float uniform;     /* the host's draw, in [0, 1) */
} tnn_sampling_params;

#ifdef __cplusplus
}
#endif

#endif
