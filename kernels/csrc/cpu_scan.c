/* Selective scan on CPUs: fused forward and backward, optionally reading scan orders.
 *
 * The same problem, layout and saved states as the Triton kernels (triton_scan.py):
 *   h_t = exp(delta_t * A) h_{t-1} + delta_t B_t u_t,   y_t = <C_t, h_t> + D u_t,
 * delta = softplus(delta_raw + delta_bias) if asked. u, delta, y: (batch, channels, L);
 * B, C: (batch, K, N, L); A: (K*D, N). These six are read and written through their
 * strides, so channel-last maps ((batch, L, channels) in memory) need no copy; then one
 * step's channels are one vector load. With orders, u, y and grad_y are the
 * (batch, D, L) map, step i of direction k reads map position orders[g, k, i] and the K
 * directions' outputs are summed at their map positions.
 *
 * One work item owns one sample and a tile of V channels of one direction group and walks
 * the K directions and, inside each, the sequence in chunks of T steps. A chunk's inputs
 * are loaded transposed, (step, channel), so that every elementwise step and the
 * recurrence itself run as V-lane vector loops over channels: plain C that compilers
 * vectorise for SSE, AVX2, AVX-512 or NEON alike. exp and log(1 + t) are written out below
 * (polynomials, within about 2 ulp), not taken from libm, so that nothing depends on a
 * vector math library. The state is fp32 throughout.
 *
 * delta may come in its low-rank form (mamba's dt_proj fused): dts (batch, K, R, L) and
 * W (K*D, R), delta[b, k*D + d, l] = sum_r W[k*D + d, r] dts[b, k, r, l]. The kernel then
 * forms each chunk's delta itself, and the largest tensor of the scan never exists.
 *
 * The forward pass keeps the state at each chunk end, (batch, K*D, chunks, N). The
 * backward pass walks the chunks in reverse, recomputes each chunk's states from the one
 * saved before it and runs dh_t = a_{t+1} dh_{t+1} + C_t dy_t. Gradients of A, D and
 * delta_bias are written per sample, those of the group-shared B and C per channel tile;
 * the caller sums them: no atomics, results independent of the thread count.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* V: channels per tile (16: one AVX-512 vector, two AVX2 ones); T: scan steps per chunk.
 * Both come from the build (cpu_scan.py), which also sizes the buffers it passes in. */
#if !defined(V) || !defined(T)
#error "build with -DV=<channels per tile> -DT=<steps per chunk>"
#endif
#define AHEAD 16 /* steps between a prefetch and the load it serves */

/* Strides in elements of a (batch, channels, L) tensor and of a (batch, K, N, L) one. */
typedef struct {
    int64_t batch, channel, pos;
} RowStrides;

typedef struct {
    int64_t batch, dir, state, pos;
} StateStrides;

typedef struct {
    const float *u, *delta, *A, *B, *C;
    const float *D, *delta_bias;           /* NULL when absent; A, D, delta_bias contiguous */
    const int32_t *orders, *order_index;   /* (G, K, L), (batch,); NULL: scan order */
    int64_t batch, groups, dim, n_state, length;
    int32_t softplus, n_threads;
    RowStrides stride_u, stride_delta;
    StateStrides stride_B, stride_C;
    const float *dts, *dt_weight;          /* delta's low-rank form, or NULL (delta given) */
    int64_t dt_rank;                       /* R; dt_weight (K*D, R) contiguous */
    StateStrides stride_dts;               /* (batch, K, R, L) */
} ScanProblem;

typedef struct {
    float *du, *ddelta;        /* like u, like delta (with their own strides) */
    float *dA;                 /* (batch, K*D, N) */
    float *dB, *dC;            /* (batch, K, tiles, N, L) */
    float *dD, *ddelta_bias;   /* (batch, K*D) */
    RowStrides stride_du, stride_ddelta;
} ScanGrads;

static inline float bits_to_float(int32_t bits) {
    float x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* exp(x) = 2^n exp(r), |r| <= ln2/2; Cephes' expf polynomial. 2^n is applied in two
 * halves so that results down to the subnormals are right; NaN propagates. */
static inline float exp_f32(float x) {
    float xc = x > 88.72f ? 88.72f : x;
    xc = xc < -104.f ? -104.f : xc;
    float n = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f; /* round to nearest */
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    int32_t e = (int32_t)n;
    int32_t half = e >> 1;
    p = p * bits_to_float((half + 127) << 23) * bits_to_float((e - half + 127) << 23);
    p = x < -104.f ? 0.f : p;
    return x > 88.72f ? bits_to_float(0x7f800000) : p;
}

/* log(1 + t) for t in [0, 1]: t P(t), P a degree-9 Chebyshev fit of log(1 + t) / t
 * (within about 2 ulp; no division, no exponent split). */
static inline float log1p_unit(float t) {
    float p = -3.2563785e-3f;
    p = p * t + 1.9907162e-2f;
    p = p * t - 5.7064202e-2f;
    p = p * t + 1.0614265e-1f;
    p = p * t - 1.5311863e-1f;
    p = p * t + 1.9678117e-1f;
    p = p * t - 2.4954559e-1f;
    p = p * t + 3.3330005e-1f;
    p = p * t - 4.9999905e-1f;
    p = p * t + 1.f;
    return p * t;
}

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static inline int64_t n_tiles(const ScanProblem *p) { return (p->dim + V - 1) / V; }

static inline int64_t n_chunks(const ScanProblem *p) { return (p->length + T - 1) / T; }

/* Where one work item (sample b, channel tile) reads and writes for direction k. */
typedef struct {
    int64_t b, k, c0, nc;   /* sample, direction, first channel in the group, channels */
    int64_t channel;        /* the tile's first channel among the K*D: k*D + c0 */
    int64_t row;            /* b*K*D + k*D + c0: its row in the states, dA, dD */
    int64_t map_channel;    /* its first channel in u, y, grad_y, du: c0 with orders */
    const int32_t *order;   /* the L positions of direction k, or NULL */
    const float *B, *C;     /* B and C of sample b, direction k */
} Tile;

static Tile tile_at(const ScanProblem *p, int64_t item, int64_t k) {
    Tile t;
    int64_t tiles = n_tiles(p);
    t.b = item / tiles;
    t.c0 = (item % tiles) * V;
    t.nc = min64(V, p->dim - t.c0);
    t.k = k;
    t.channel = k * p->dim + t.c0;
    t.row = t.b * p->groups * p->dim + t.channel;
    t.map_channel = p->orders ? t.c0 : t.channel;
    t.B = p->B + t.b * p->stride_B.batch + k * p->stride_B.dir;
    t.C = p->C + t.b * p->stride_C.batch + k * p->stride_C.dir;
    t.order = NULL;
    if (p->orders) {
        int64_t g = p->order_index ? p->order_index[t.b] : 0;
        t.order = p->orders + (g * p->groups + k) * p->length;
    }
    return t;
}

/* The positions of steps l0 .. l0+nt-1 and of up to AHEAD steps after them (to prefetch);
 * returns how many are known. */
static int64_t positions(const Tile *t, int64_t l0, int64_t nt, int64_t length, int64_t *pos) {
    int64_t known = min64(nt + AHEAD, length - l0);
    for (int64_t i = 0; i < known; i++)
        pos[i] = t->order ? t->order[l0 + i] : l0 + i;
    return known;
}

/* The element of channel `channel` of sample b at position 0 in a (batch, channels, L)
 * tensor. */
static inline int64_t row_offset(RowStrides s, int64_t b, int64_t channel) {
    return b * s.batch + channel * s.channel;
}

/* first[c*s.channel + pos[i]*s.pos] -> out[i][c]; lanes past nc are zero. Scan orders
 * jump around the map, so each step's line is prefetched AHEAD steps early (pos holds
 * `known` positions). */
static void load_tile(const float *first, RowStrides s, const int64_t *pos, int64_t nt,
                      int64_t known, int64_t nc, float out[][V]) {
    for (int64_t i = 0; i < nt; i++) {
        const float *at = first + pos[i] * s.pos;
        if (i + AHEAD < known) __builtin_prefetch(first + pos[i + AHEAD] * s.pos, 0, 3);
        if (s.channel == 1 && nc == V) { /* channel-last: one vector */
#pragma omp simd
            for (int c = 0; c < V; c++) out[i][c] = at[c];
        } else {
            int64_t c = 0;
            for (; c < nc; c++) out[i][c] = at[c * s.channel];
            for (; c < V; c++) out[i][c] = 0.f;
        }
    }
}

static void store_tile(float *first, RowStrides s, const int64_t *pos, int64_t nt,
                       int64_t known, int64_t nc, float in[][V], int accumulate) {
    for (int64_t i = 0; i < nt; i++) {
        float *at = first + pos[i] * s.pos;
        if (i + AHEAD < known) __builtin_prefetch(first + pos[i + AHEAD] * s.pos, 1, 3);
        if (s.channel == 1 && nc == V) {
            if (accumulate) {
#pragma omp simd
                for (int c = 0; c < V; c++) at[c] += in[i][c];
            } else {
#pragma omp simd
                for (int c = 0; c < V; c++) at[c] = in[i][c];
            }
        } else {
            for (int64_t c = 0; c < nc; c++) {
                float *to = at + c * s.channel;
                *to = accumulate ? *to + in[i][c] : in[i][c];
            }
        }
    }
}

/* A per-channel parameter (K*D,) of the tile's channels; zeros where absent. */
static void load_channels(const float *values, const Tile *t, float out[V]) {
    memset(out, 0, sizeof(float) * V);
    if (values)
        for (int64_t c = 0; c < t->nc; c++) out[c] = values[t->channel + c];
}

/* A chunk's inputs in (step, channel) layout: the step size dt (softplus(z) or z, with
 * z = delta_raw + bias), u, dt*u, and for the backward pass d(dt)/dz (sigmoid(z) or 1). */
typedef struct {
    int64_t pos[T + AHEAD], known;
    float z[T][V], dt[T][V], u[T][V], dtu[T][V], gate[T][V];
} Chunk;

/* The tile's rows of a contiguous (K*D, cols) per-channel matrix (A, dt_proj's weight),
 * transposed: out[m][c]; lanes past nc are zero. */
static void load_channel_matrix(const float *matrix, int64_t cols, const Tile *t, float *out) {
    memset(out, 0, sizeof(float) * cols * V);
    for (int64_t c = 0; c < t->nc; c++)
        for (int64_t m = 0; m < cols; m++)
            out[m * V + c] = matrix[(t->channel + c) * cols + m];
}

/* The chunk's delta from its low-rank form: out[i][c] = sum_r dts[pos_i, r] W_t[r][c].
 * Four steps at a time: four independent multiply-add chains per weight row, where one
 * chain would wait on its own latency R times over. */
static void project_delta(const ScanProblem *p, const Tile *t, const int64_t *pos, int64_t nt,
                          int64_t known, const float *W_t, float out[][V]) {
    StateStrides s = p->stride_dts;
    const float *first = p->dts + t->b * s.batch + t->k * s.dir;
    int64_t R = p->dt_rank;
    for (int64_t i = 0; i < nt; i += 4) {
        int64_t steps = min64(4, nt - i);
        const float *row[4];
        for (int64_t j = 0; j < 4; j++) { /* a short last group repeats its last step */
            row[j] = first + pos[i + (j < steps ? j : steps - 1)] * s.pos;
            if (i + j + AHEAD < known) __builtin_prefetch(first + pos[i + j + AHEAD] * s.pos, 0, 3);
        }
        float acc[4][V] = {{0}};
        for (int64_t r = 0; r < R; r++) {
            const float *w = W_t + r * V;
            float x0 = row[0][r * s.state], x1 = row[1][r * s.state];
            float x2 = row[2][r * s.state], x3 = row[3][r * s.state];
#pragma omp simd
            for (int c = 0; c < V; c++) {
                acc[0][c] += x0 * w[c];
                acc[1][c] += x1 * w[c];
                acc[2][c] += x2 * w[c];
                acc[3][c] += x3 * w[c];
            }
        }
        memcpy(out[i], acc, sizeof(float) * V * steps);
    }
}

/* softplus(z) = max(z, 0) + log(1 + e^-|z|) and its derivative sigmoid(z) =
 * (z >= 0 ? 1 : e^-|z|) / (1 + e^-|z|) share one exponential; e^-|z| is in [0, 1], where
 * log1p_unit holds. Infinities come out right and NaN propagates. */
static void load_chunk(const ScanProblem *p, const Tile *t, int64_t l0, int64_t nt,
                       const float *W_t, int gate, Chunk *ch) {
    ch->known = positions(t, l0, nt, p->length, ch->pos);
    if (p->dt_weight)
        project_delta(p, t, ch->pos, nt, ch->known, W_t, ch->z);
    else
        load_tile(p->delta + row_offset(p->stride_delta, t->b, t->channel), p->stride_delta,
                  ch->pos, nt, ch->known, t->nc, ch->z);
    load_tile(p->u + row_offset(p->stride_u, t->b, t->map_channel), p->stride_u, ch->pos, nt,
              ch->known, t->nc, ch->u);
    float bias[V];
    load_channels(p->delta_bias, t, bias);
    for (int64_t i = 0; i < nt; i++) {
#pragma omp simd
        for (int c = 0; c < V; c++) {
            float z = ch->z[i][c] + bias[c];
            float e = p->softplus ? exp_f32(z < -z ? z : -z) : 0.f;
            float dt = p->softplus ? (z > 0.f ? z : 0.f) + log1p_unit(e) : z;
            if (gate) ch->gate[i][c] = p->softplus ? (z >= 0.f ? 1.f : e) / (1.f + e) : 1.f;
            ch->dt[i][c] = dt;
            ch->dtu[i][c] = dt * ch->u[i][c];
        }
    }
}

/* The chunk's recurrence from the states h[n][c]. Writes a_t and h_t per step into
 * a_buf/h_buf ((nt, N, V)) when they are given, and y into y_out when given. */
static void run_chunk(const ScanProblem *p, const Tile *t, const Chunk *ch, int64_t nt,
                      const float *A_t, float *h, float *a_buf, float *h_buf, float y_out[][V]) {
    int64_t N = p->n_state;
    StateStrides sB = p->stride_B, sC = p->stride_C;
    for (int64_t i = 0; i < nt; i++) {
        float y[V] = {0};
        for (int64_t n = 0; n < N; n++) {
            float b_in = t->B[n * sB.state + ch->pos[i] * sB.pos];
            float c_out = t->C[n * sC.state + ch->pos[i] * sC.pos];
            float *hn = h + n * V;
            const float *An = A_t + n * V;
#pragma omp simd
            for (int c = 0; c < V; c++) {
                float a = exp_f32(ch->dt[i][c] * An[c]);
                hn[c] = a * hn[c] + ch->dtu[i][c] * b_in;
                y[c] += c_out * hn[c];
                if (a_buf) a_buf[(i * N + n) * V + c] = a;
            }
            if (h_buf) memcpy(h_buf + (i * N + n) * V, hn, sizeof(float) * V);
        }
        if (y_out) memcpy(y_out[i], y, sizeof y);
    }
}

static void save_states(const ScanProblem *p, const Tile *t, int64_t chunk, const float *h,
                        float *states) {
    int64_t N = p->n_state, chunks = n_chunks(p);
    for (int64_t c = 0; c < t->nc; c++)
        for (int64_t n = 0; n < N; n++)
            states[((t->row + c) * chunks + chunk) * N + n] = h[n * V + c];
}

static void load_states(const ScanProblem *p, const Tile *t, int64_t chunk, const float *states,
                        float *h) {
    int64_t N = p->n_state, chunks = n_chunks(p);
    memset(h, 0, sizeof(float) * N * V);
    if (chunk < 0) return;
    for (int64_t c = 0; c < t->nc; c++)
        for (int64_t n = 0; n < N; n++)
            h[n * V + c] = states[((t->row + c) * chunks + chunk) * N + n];
}

static int threads(const ScanProblem *p) { return p->n_threads > 0 ? p->n_threads : 1; }

/* One thread's buffers, in one allocation: a chunk's inputs; per state and channel the
 * running state, the state before the chunk, A, the reverse carry and dL/dA; the tile's
 * dt_proj weight (R, V) when delta comes low-rank; per step the
 * decays and states of the chunk (backward) and the per-step sums for B and C; and three
 * (step, channel) tiles: y (forward) or dL/dy (backward), dL/du and dL/d(delta). */
typedef struct {
    Chunk chunk;
    float *h, *start, *A_t, *carry, *gA; /* (N, V) */
    float *W_t;                          /* (R, V) */
    float *a_buf, *h_buf;                /* (T, N, V) */
    float *gB, *gC;                      /* (N, T) */
    float (*y)[V], (*gu)[V], (*gdt)[V];  /* (T, V) */
} Workspace;

static Workspace *workspace_new(int64_t N, int64_t R) {
    int64_t nv = N * V, floats = 5 * nv + R * V + 2 * T * nv + 2 * N * T + 3 * T * V;
    Workspace *w = malloc(sizeof(Workspace) + sizeof(float) * floats);
    if (!w) return NULL;
    float *f = (float *)(w + 1);
    w->h = f, f += nv;
    w->start = f, f += nv;
    w->A_t = f, f += nv;
    w->carry = f, f += nv;
    w->gA = f, f += nv;
    w->W_t = f, f += R * V;
    w->a_buf = f, f += T * nv;
    w->h_buf = f, f += T * nv;
    w->gB = f, f += N * T;
    w->gC = f, f += N * T;
    w->y = (float(*)[V])f, f += T * V;
    w->gu = (float(*)[V])f, f += T * V;
    w->gdt = (float(*)[V])f;
    return w;
}

/* Each thread's workspace, or NULL in every thread of the team if any allocation failed
 * (then *failed is set): every thread, or none, must reach a worksharing loop. Called by
 * all threads of a parallel region. */
static Workspace *team_workspace(int64_t N, int64_t R, int *failed) {
    Workspace *w = workspace_new(N, R);
    if (!w) {
#pragma omp atomic write
        *failed = 1;
    }
#pragma omp barrier
    int stop;
#pragma omp atomic read
    stop = *failed;
    if (stop) {
        free(w);
        return NULL;
    }
    return w;
}

int qm_scan_forward(const ScanProblem *p, float *y, RowStrides stride_y, float *states) {
    int64_t items = p->batch * n_tiles(p), N = p->n_state, L = p->length;
    int failed = 0;
#pragma omp parallel num_threads(threads(p))
    {
        Workspace *w = team_workspace(N, p->dt_weight ? p->dt_rank : 0, &failed);
        if (w) {
            Chunk *ch = &w->chunk;
            float *h = w->h, *A_t = w->A_t, (*y_chunk)[V] = w->y;
#pragma omp for schedule(dynamic)
            for (int64_t item = 0; item < items; item++) {
                for (int64_t k = 0; k < p->groups; k++) {
                    Tile t = tile_at(p, item, k);
                    load_channel_matrix(p->A, N, &t, A_t);
                    if (p->dt_weight) load_channel_matrix(p->dt_weight, p->dt_rank, &t, w->W_t);
                    memset(h, 0, sizeof(float) * N * V);
                    float D[V];
                    load_channels(p->D, &t, D);
                    for (int64_t chunk = 0; chunk * T < L; chunk++) {
                        int64_t l0 = chunk * T, nt = min64(T, L - l0);
                        load_chunk(p, &t, l0, nt, w->W_t, 0, ch);
                        run_chunk(p, &t, ch, nt, A_t, h, NULL, NULL, y_chunk);
                        for (int64_t i = 0; i < nt; i++) {
#pragma omp simd
                            for (int c = 0; c < V; c++) y_chunk[i][c] += D[c] * ch->u[i][c];
                        }
                        /* With orders the K directions add up at the map positions. */
                        store_tile(y + row_offset(stride_y, t.b, t.map_channel), stride_y,
                                   ch->pos, nt, ch->known, t.nc, y_chunk,
                                   p->orders && k > 0);
                        if (states) save_states(p, &t, chunk, h, states);
                    }
                }
            }
        }
        free(w);
    }
    return failed ? -1 : 0;
}

int qm_scan_backward(const ScanProblem *p, const float *grad_y, RowStrides stride_grad_y,
                     const float *states, const ScanGrads *g) {
    int64_t tiles = n_tiles(p), items = p->batch * tiles, N = p->n_state, L = p->length;
    int failed = 0;
#pragma omp parallel num_threads(threads(p))
    {
        Workspace *w = team_workspace(N, p->dt_weight ? p->dt_rank : 0, &failed);
        if (w) {
            Chunk *ch = &w->chunk;
            float *h = w->h, *start = w->start, *A_t = w->A_t, *carry = w->carry, *gA = w->gA;
            float *a_buf = w->a_buf, *h_buf = w->h_buf, *gB = w->gB, *gC = w->gC;
            float(*gy)[V] = w->y, (*gu)[V] = w->gu, (*gdt)[V] = w->gdt;
#pragma omp for schedule(dynamic)
            for (int64_t item = 0; item < items; item++) {
                for (int64_t k = 0; k < p->groups; k++) {
                    Tile t = tile_at(p, item, k);
                    int64_t shared = ((t.b * p->groups + k) * tiles + t.c0 / V) * N * L;
                    StateStrides sB = p->stride_B, sC = p->stride_C;
                    load_channel_matrix(p->A, N, &t, A_t);
                    if (p->dt_weight) load_channel_matrix(p->dt_weight, p->dt_rank, &t, w->W_t);
                    memset(carry, 0, sizeof(float) * N * V);
                    memset(gA, 0, sizeof(float) * N * V);
                    float D[V], gD[V] = {0}, gbias[V] = {0};
                    load_channels(p->D, &t, D);
                    for (int64_t chunk = n_chunks(p) - 1; chunk >= 0; chunk--) {
                        int64_t l0 = chunk * T, nt = min64(T, L - l0);
                        load_chunk(p, &t, l0, nt, w->W_t, 1, ch);
                        /* Recompute the chunk's states from the one saved before it;
                         * run_chunk advances h in place, start keeps h_{l0-1}. */
                        load_states(p, &t, chunk - 1, states, start);
                        memcpy(h, start, sizeof(float) * N * V);
                        run_chunk(p, &t, ch, nt, A_t, h, a_buf, h_buf, NULL);
                        load_tile(grad_y + row_offset(stride_grad_y, t.b, t.map_channel),
                                  stride_grad_y, ch->pos, nt, ch->known, t.nc, gy);
                        memset(gu, 0, sizeof(float) * T * V);
                        memset(gdt, 0, sizeof(float) * T * V);
                        for (int64_t i = nt - 1; i >= 0; i--) {
                            for (int64_t n = 0; n < N; n++) {
                                float b_in = t.B[n * sB.state + ch->pos[i] * sB.pos];
                                float c_out = t.C[n * sC.state + ch->pos[i] * sC.pos];
                                const float *prev = i ? h_buf + ((i - 1) * N + n) * V
                                                      : start + n * V;
                                const float *now = h_buf + (i * N + n) * V;
                                const float *a = a_buf + (i * N + n) * V;
                                float *cn = carry + n * V, *gAn = gA + n * V;
                                const float *An = A_t + n * V;
                                float sum_b = 0.f, sum_c = 0.f;
#pragma omp simd reduction(+ : sum_b, sum_c)
                                for (int c = 0; c < V; c++) {
                                    float gh = gy[i][c] * c_out + cn[c];
                                    float g_dA = gh * a[c] * prev[c]; /* dL/d(dt*A) */
                                    gAn[c] += g_dA * ch->dt[i][c];
                                    gdt[i][c] += g_dA * An[c] + gh * b_in * ch->u[i][c];
                                    gu[i][c] += gh * b_in * ch->dt[i][c];
                                    sum_b += gh * ch->dtu[i][c];
                                    sum_c += gy[i][c] * now[c];
                                    cn[c] = gh * a[c];
                                }
                                gB[n * T + i] = sum_b;
                                gC[n * T + i] = sum_c;
                            }
                        }
                        for (int64_t i = 0; i < nt; i++) {
#pragma omp simd
                            for (int c = 0; c < V; c++) {
                                gu[i][c] += gy[i][c] * D[c];
                                gD[c] += gy[i][c] * ch->u[i][c];
                                float gz = gdt[i][c] * ch->gate[i][c];
                                gdt[i][c] = gz;
                                gbias[c] += gz;
                            }
                        }
                        store_tile(g->du + row_offset(g->stride_du, t.b, t.map_channel),
                                   g->stride_du, ch->pos, nt, ch->known, t.nc, gu,
                                   p->orders && k > 0);
                        store_tile(g->ddelta + row_offset(g->stride_ddelta, t.b, t.channel),
                                   g->stride_ddelta, ch->pos, nt, ch->known, t.nc, gdt, 0);
                        for (int64_t n = 0; n < N; n++)
                            for (int64_t i = 0; i < nt; i++) {
                                g->dB[shared + n * L + ch->pos[i]] = gB[n * T + i];
                                g->dC[shared + n * L + ch->pos[i]] = gC[n * T + i];
                            }
                    }
                    for (int64_t c = 0; c < t.nc; c++) {
                        for (int64_t n = 0; n < N; n++)
                            g->dA[(t.row + c) * N + n] = gA[n * V + c];
                        g->dD[t.row + c] = gD[c];
                        g->ddelta_bias[t.row + c] = gbias[c];
                    }
                }
            }
        }
        free(w);
    }
    return failed ? -1 : 0;
}
