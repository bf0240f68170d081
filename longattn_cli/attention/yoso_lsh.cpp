// YOSO's LSH mode on the CPU (built at first use by native.py): the forward's hash codes and bucket sums, and
// the backward bucket by bucket in place.
//
// Backward: for each problem p (one head of one sequence) and each hash f, queries and keys are counting-sorted by their
// code, and every bucket that holds both is one small dense problem:
//   W = G Vᵀ,  ∂q += W K,  ∂k += Wᵀ Q,  ∂v_j += Σ_{i in bucket(j)} g_i
// These are the sums that yoso.py's collision_gradients computes with torch operations (gathered lanes and
// batched products); here each bucket's rows are read where they lie, with no gathered copies, padding or
// per-class calls. A bucket whose two sides are both large takes the paper's d×d tables instead
// (Σ_j v_j k_jᵀ and Σ_i g_i q_iᵀ), where they take less time than its pairs. Sums are accumulated in fp32;
// the order of the additions differs from the torch route, so results agree to rounding.
//
// Inputs are (B, H, N, D) float32 with any strides whose last one is 1 (q and k arrive as transposed views),
// codes (B, H, N, hashes) int32 contiguous with values in [0, span); outputs (B, H, N, D) contiguous, written
// whole. Problems are shared among `threads` threads; each owns its problems' output rows.

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

typedef float vec __attribute__((vector_size(64), aligned(4)));  // 16 floats; unaligned loads are fine
constexpr int64_t kLane = 16;

inline vec load(const float* p) {
  vec x;
  std::memcpy(&x, p, sizeof(vec));
  return x;
}
inline void store(float* p, vec x) { std::memcpy(p, &x, sizeof(vec)); }

inline void axpy(float w, const float* __restrict x, float* __restrict y, int64_t d) {
#pragma omp simd
  for (int64_t t = 0; t < d; ++t) y[t] += w * x[t];
}

struct Tensor {  // rows of one (B, H, N, D) input: element (p, i, t) at base + (p / heads) sb + (p % heads) sh + i sn + t
  const float* base;
  int64_t sb, sh, sn;
  const float* problem(int64_t p, int64_t heads) const { return base + (p / heads) * sb + (p % heads) * sh; }
};

// Queries and keys of one problem in one hash, counting-sorted by code: bucket b's queries are
// idx_q[end_q[b] - count_q[b], end_q[b]), and likewise for keys.
struct Buckets {
  std::vector<int32_t> count_q, count_k, end_q, end_k, idx_q, idx_k;
  Buckets(int64_t span, int64_t n)
      : count_q(span), count_k(span), end_q(span), end_k(span), idx_q(n), idx_k(n) {}

  void sort(const int32_t* cq, const int32_t* ck, int64_t n, int64_t stride) {
    for (int64_t i = 0; i < n; ++i) {
      ++count_q[cq[i * stride]];
      ++count_k[ck[i * stride]];
    }
    int32_t oq = 0, ok = 0;
    const int64_t span = (int64_t)count_q.size();
    for (int64_t b = 0; b < span; ++b) {
      end_q[b] = oq;
      oq += count_q[b];
      end_k[b] = ok;
      ok += count_k[b];
    }
    for (int64_t i = 0; i < n; ++i) {
      idx_q[end_q[cq[i * stride]]++] = (int32_t)i;
      idx_k[end_k[ck[i * stride]]++] = (int32_t)i;
    }
  }

  void clear(const int32_t* cq, const int32_t* ck, int64_t n, int64_t stride) {  // only the counts used
    for (int64_t i = 0; i < n; ++i) count_q[cq[i * stride]] = count_k[ck[i * stride]] = 0;
  }
};

// A buffer on 2 MB pages where the kernel grants them: a problem's rows are read in bucket order, at random,
// and on 4 KB pages those reads missed the TLB (a base layer's backward at 4,096 tokens: 140-190 ms with its
// rows copied here, 220-245 ms read where they lay, a row every 3 KB).
struct Huge {
  float* data = nullptr;
  size_t size = 0;
  Huge() = default;
  Huge(const Huge&) = delete;
  Huge& operator=(const Huge&) = delete;
  ~Huge() { std::free(data); }
  float* get(size_t n) {
    if (n > size) {
      constexpr size_t page = size_t(2) << 20;
      const size_t bytes = (n * sizeof(float) + page - 1) / page * page;
      std::free(data);
      data = static_cast<float*>(std::aligned_alloc(page, bytes));
      if (data == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
      madvise(data, bytes, MADV_HUGEPAGE);
#endif
      size = bytes / sizeof(float);
    }
    return data;
  }
};

struct Scratch {
  Huge rows;  // the problem's q | g and k | v, a token per row
  std::vector<float> lt, w, t1, t2, sum;
  std::vector<const float*> pq, pg, pk, pv;
};

// out[r * lp + l] = rows[r] · lanes[l] for r < nr, l < nl; lanes are transposed into lt (D, lp), lp = nl
// rounded up to kLane (zeros beyond nl), so that each product runs over 16 lanes at once, 4 rows at a time.
template <int NV>
void products(const float* const* rows, int64_t nr, const float* const* lanes, int64_t nl, float* lt,
              float* out, int64_t lp) {
  constexpr int64_t D = NV * kLane;
  for (int64_t l0 = 0; l0 < nl; l0 += kLane) {  // 16×16 tiles: 16 rows read as vectors, then written out
    const int64_t m = std::min<int64_t>(kLane, nl - l0);
    for (int64_t t0 = 0; t0 < D; t0 += kLane) {
      float tile[kLane][kLane];
      for (int64_t l = 0; l < m; ++l) store(tile[l], load(lanes[l0 + l] + t0));
      for (int64_t t = 0; t < kLane; ++t)
        for (int64_t l = 0; l < m; ++l) lt[(t0 + t) * lp + l0 + l] = tile[l][t];
    }
  }
  for (int64_t t = 0; t < D; ++t)
    for (int64_t l = nl; l < lp; ++l) lt[t * lp + l] = 0.f;
  int64_t r = 0;
  for (; r + 4 <= nr; r += 4) {
    const float *x0 = rows[r], *x1 = rows[r + 1], *x2 = rows[r + 2], *x3 = rows[r + 3];
    for (int64_t l0 = 0; l0 < lp; l0 += kLane) {
      vec a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int64_t t = 0; t < D; ++t) {
        const vec y = load(lt + t * lp + l0);
        a0 += x0[t] * y;
        a1 += x1[t] * y;
        a2 += x2[t] * y;
        a3 += x3[t] * y;
      }
      store(out + r * lp + l0, a0);
      store(out + (r + 1) * lp + l0, a1);
      store(out + (r + 2) * lp + l0, a2);
      store(out + (r + 3) * lp + l0, a3);
    }
  }
  for (; r < nr; ++r) {
    for (int64_t l0 = 0; l0 < lp; l0 += kLane) {
      vec acc = {};
      for (int64_t t = 0; t < D; ++t) acc += rows[r][t] * load(lt + t * lp + l0);
      store(out + r * lp + l0, acc);
    }
  }
}

// out[ri[i]] += Σ_j m[i si + j sj] in[j] for i < ni, j < nj; BI output rows at a time share each input row.
template <int NV>
void mix(float* out, const int32_t* ri, int64_t ni, const float* const* in, int64_t nj, const float* m,
         int64_t si, int64_t sj) {
  constexpr int64_t D = NV * kLane;
  constexpr int BI = NV <= 4 ? 4 : 2;
  int64_t i = 0;
  for (; i + BI <= ni; i += BI) {
    vec acc[BI][NV] = {};
    for (int64_t j = 0; j < nj; ++j) {
      vec x[NV];
      for (int u = 0; u < NV; ++u) x[u] = load(in[j] + u * kLane);
      for (int b = 0; b < BI; ++b) {
        const float c = m[(i + b) * si + j * sj];
        for (int u = 0; u < NV; ++u) acc[b][u] += c * x[u];
      }
    }
    for (int b = 0; b < BI; ++b) {
      float* o = out + ri[i + b] * D;
      for (int u = 0; u < NV; ++u) store(o + u * kLane, load(o + u * kLane) + acc[b][u]);
    }
  }
  for (; i < ni; ++i) {
    vec acc[NV] = {};
    for (int64_t j = 0; j < nj; ++j) {
      const float c = m[i * si + j * sj];
      for (int u = 0; u < NV; ++u) acc[u] += c * load(in[j] + u * kLane);
    }
    float* o = out + ri[i] * D;
    for (int u = 0; u < NV; ++u) store(o + u * kLane, load(o + u * kLane) + acc[u]);
  }
}

struct Backward {
  Tensor q, k, v, g;
  const int32_t *cq, *ck;
  float *dq, *dk, *dv;
  int64_t heads, n, d, hashes, span;
  float scale_qk, scale_v;
};

// A problem's inputs as the backward reads them: token i's q and g at qg + i·2d and qg + i·2d + d, its k and
// v at kv + i·2d and kv + i·2d + d.
struct Rows {
  const float *qg, *kv;
  int64_t d;
  const float* q(int64_t i) const { return qg + i * 2 * d; }
  const float* g(int64_t i) const { return qg + i * 2 * d + d; }
  const float* k(int64_t i) const { return kv + i * 2 * d; }
  const float* v(int64_t i) const { return kv + i * 2 * d + d; }
};

// A bucket's pairs: W = G Vᵀ (lanes over the larger side), then ∂q += W K and ∂k += Wᵀ Q.
template <int NV>
void pairs(const Rows& r, Scratch& s, float* dq, float* dk, const int32_t* qi, const int32_t* kj, int64_t na,
           int64_t nc) {
  for (int64_t x = 0; x < na; ++x) s.pq[x] = r.q(qi[x]), s.pg[x] = r.g(qi[x]);
  for (int64_t y = 0; y < nc; ++y) s.pk[y] = r.k(kj[y]), s.pv[y] = r.v(kj[y]);
  int64_t sx, sy;  // W[x][y] at w[x sx + y sy]
  const int64_t lanes = std::max(na, nc), lp = (lanes + kLane - 1) / kLane * kLane;
  if ((int64_t)s.w.size() < std::min(na, nc) * lp) s.w.resize(std::min(na, nc) * lp * 2);
  if (nc >= na) {
    products<NV>(s.pg.data(), na, s.pv.data(), nc, s.lt.data(), s.w.data(), lp);
    sx = lp, sy = 1;
  } else {
    products<NV>(s.pv.data(), nc, s.pg.data(), na, s.lt.data(), s.w.data(), lp);
    sx = 1, sy = lp;
  }
  mix<NV>(dq, qi, na, s.pk.data(), nc, s.w.data(), sx, sy);
  mix<NV>(dk, kj, nc, s.pq.data(), na, s.w.data(), sy, sx);
}

// A bucket's tables: T = Σ_j v_j k_jᵀ and U = Σ_i g_i q_iᵀ (d×d), then ∂q_i += Tᵀ g_i and ∂k_j += Uᵀ v_j.
void tables(const Rows& r, Scratch& s, float* dq, float* dk, const int32_t* qi, const int32_t* kj, int64_t na,
            int64_t nc) {
  const int64_t d = r.d;
  float *t1 = s.t1.data(), *t2 = s.t2.data();
  std::fill(s.t1.begin(), s.t1.end(), 0.f);
  std::fill(s.t2.begin(), s.t2.end(), 0.f);
  for (int64_t y = 0; y < nc; ++y)
    for (int64_t t = 0; t < d; ++t) axpy(r.v(kj[y])[t], r.k(kj[y]), t1 + t * d, d);
  for (int64_t x = 0; x < na; ++x)
    for (int64_t t = 0; t < d; ++t) axpy(r.g(qi[x])[t], r.q(qi[x]), t2 + t * d, d);
  for (int64_t x = 0; x < na; ++x)
    for (int64_t t = 0; t < d; ++t) axpy(r.g(qi[x])[t], t1 + t * d, dq + qi[x] * d, d);
  for (int64_t y = 0; y < nc; ++y)
    for (int64_t t = 0; t < d; ++t) axpy(r.v(kj[y])[t], t2 + t * d, dk + kj[y] * d, d);
}

template <int NV>
void backward_problem(const Backward& a, int64_t p, Buckets& bk, Scratch& s) {
  const int64_t n = a.n, d = a.d, nh = a.hashes;
  float* packed = s.rows.get(4 * n * d);
  const Rows r{packed, packed + 2 * n * d, d};
  const float *q = a.q.problem(p, a.heads), *k = a.k.problem(p, a.heads);
  const float *v = a.v.problem(p, a.heads), *g = a.g.problem(p, a.heads);
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(packed + i * 2 * d, q + i * a.q.sn, d * sizeof(float));
    std::memcpy(packed + i * 2 * d + d, g + i * a.g.sn, d * sizeof(float));
    std::memcpy(packed + (n + i) * 2 * d, k + i * a.k.sn, d * sizeof(float));
    std::memcpy(packed + (n + i) * 2 * d + d, v + i * a.v.sn, d * sizeof(float));
  }
  float *dq = a.dq + p * n * d, *dk = a.dk + p * n * d, *dv = a.dv + p * n * d;
  const int32_t *cq = a.cq + p * n * nh, *ck = a.ck + p * n * nh;
  std::fill(dq, dq + n * d, 0.f);
  std::fill(dk, dk + n * d, 0.f);
  std::fill(dv, dv + n * d, 0.f);
  float* sum = s.sum.data();
  for (int64_t f = 0; f < nh; ++f) {
    bk.sort(cq + f, ck + f, n, nh);
    for (int64_t b = 0; b < a.span; ++b) {
      const int64_t na = bk.count_q[b], nc = bk.count_k[b];
      if (na == 0 || nc == 0) continue;
      const int32_t* qi = bk.idx_q.data() + (bk.end_q[b] - na);
      const int32_t* kj = bk.idx_k.data() + (bk.end_k[b] - nc);
      std::fill(sum, sum + d, 0.f);  // ∂v: the bucket's Σ_i g_i, added to each of its keys
      for (int64_t x = 0; x < na; ++x) axpy(1.f, r.g(qi[x]), sum, d);
      for (int64_t y = 0; y < nc; ++y) axpy(1.f, sum, dv + kj[y] * d, d);
      // Pairs are 6 na nc d operations, tables 4 d² (na + nc); here the pairs run about three times as fast an
      // operation (base layers at 4,096 tokens, before the rows were packed: 202 ms a layer with this bound, 259
      // with the plain count).
      if (na * nc <= 2 * d * (na + nc))
        pairs<NV>(r, s, dq, dk, qi, kj, na, nc);
      else
        tables(r, s, dq, dk, qi, kj, na, nc);
    }
    bk.clear(cq + f, ck + f, n, nh);
  }
  for (int64_t i = 0; i < n * d; ++i) {
    dq[i] *= a.scale_qk;
    dk[i] *= a.scale_qk;
    dv[i] *= a.scale_v;
  }
}

// Runs work(p, buckets, scratch) for every problem p on up to `threads` threads. Returns 0, or 2 where memory
// ran out: an exception must not leave a thread (that ends the process) nor cross into the caller (ctypes).
template <typename Work>
int share(int64_t problems, int threads, int64_t span, int64_t n, int64_t d, Work work) {
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  auto run = [&]() {
    try {
      Buckets bk(span, n);
      Scratch s;
      s.lt.resize(d * (n + kLane));
      s.t1.resize(d * d);
      s.t2.resize(d * d);
      s.sum.resize(d);
      s.pq.resize(n), s.pg.resize(n), s.pk.resize(n), s.pv.resize(n);
      for (int64_t p; !failed && (p = next.fetch_add(1)) < problems;) work(p, bk, s);
    } catch (const std::bad_alloc&) {
      failed = true;
    }
  };
  const int t = (int)std::max<int64_t>(1, std::min<int64_t>(threads, problems));
  std::vector<std::thread> pool;
  for (int i = 1; i < t; ++i) pool.emplace_back(run);
  run();
  for (auto& th : pool) th.join();
  return failed ? 2 : 0;
}

// out[p, i] = scale · Σ_f Σ_{j: ck[p, j, f] = cq[p, i, f]} v[p, j]: the mean over hashes of each query's
// bucket sum (YOSO's LSH forward). The bucket sums of a group of hashes are built in tables of (span, d)
// rows, then each query adds its rows of the group's tables; only the rows a key touched are cleared.
template <int NV>
void cumulate_problem(const Tensor& values, const int32_t* cq, const int32_t* ck, float* out, int64_t p,
                      int64_t heads, int64_t n, int64_t hashes, int64_t span, int64_t group, float scale,
                      float* tables) {
  constexpr int64_t D = NV * kLane;
  const float* x = values.problem(p, heads);
  const int32_t *q = cq + p * n * hashes, *k = ck + p * n * hashes;
  float* o = out + p * n * D;
  for (int64_t f0 = 0; f0 < hashes; f0 += group) {
    const int64_t f1 = std::min(hashes, f0 + group);
    for (int64_t j = 0; j < n; ++j) {
      vec row[NV];
      for (int u = 0; u < NV; ++u) row[u] = load(x + j * values.sn + u * kLane);
      for (int64_t f = f0; f < f1; ++f) {
        float* t = tables + ((f - f0) * span + k[j * hashes + f]) * D;
        for (int u = 0; u < NV; ++u) store(t + u * kLane, load(t + u * kLane) + row[u]);
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      vec acc[NV];
      float* oi = o + i * D;
      for (int u = 0; u < NV; ++u) acc[u] = f0 == 0 ? vec{} : load(oi + u * kLane);
      for (int64_t f = f0; f < f1; ++f) {
        const float* t = tables + ((f - f0) * span + q[i * hashes + f]) * D;
        for (int u = 0; u < NV; ++u) acc[u] += load(t + u * kLane);
      }
      if (f1 == hashes)
        for (int u = 0; u < NV; ++u) acc[u] *= scale;
      for (int u = 0; u < NV; ++u) store(oi + u * kLane, acc[u]);
    }
    for (int64_t j = 0; j < n; ++j)
      for (int64_t f = f0; f < f1; ++f) std::fill_n(tables + ((f - f0) * span + k[j * hashes + f]) * D, D, 0.f);
  }
}

// f(std::integral_constant<int, NV>) for the NV = d / 16 vectors of a row (d a multiple of 16, at most 128).
template <typename F>
void by_width(int64_t d, F f) {
  switch (d / kLane) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

}  // namespace

extern "C" {

// 1 where head_dim d is one the vectorised kernels serve (a multiple of 16, at most 128).
int longattn_yoso_supports(int64_t d) { return d % kLane == 0 && d >= kLane && d <= 8 * kLane; }

// ∂q, ∂k (times scale_qk) and ∂v (times scale_v) of YOSO's weighted LSH cumulation.
int longattn_yoso_backward(const float* q, int64_t q_sb, int64_t q_sh, int64_t q_sn, const float* k, int64_t k_sb,
                           int64_t k_sh, int64_t k_sn, const float* v, int64_t v_sb, int64_t v_sh, int64_t v_sn,
                           const float* g, int64_t g_sb, int64_t g_sh, int64_t g_sn, const int32_t* cq,
                           const int32_t* ck, float* dq, float* dk, float* dv, int64_t problems, int64_t heads,
                           int64_t n, int64_t d, int64_t hashes, int64_t span, float scale_qk, float scale_v,
                           int threads) {
  if (!longattn_yoso_supports(d)) return 1;
  const Backward a{{q, q_sb, q_sh, q_sn}, {k, k_sb, k_sh, k_sn}, {v, v_sb, v_sh, v_sn}, {g, g_sb, g_sh, g_sn},
                   cq, ck, dq, dk, dv, heads, n, d, hashes, span, scale_qk, scale_v};
  auto work = [&](int64_t p, Buckets& bk, Scratch& s) {
    by_width(d, [&](auto nv) { backward_problem<decltype(nv)::value>(a, p, bk, s); });
  };
  return share(problems, threads, span, n, d, work);
}


// codes[p, i, f] = Σ_t [proj[p, i, f τ + t] > 0] 2^t: the τ-bit codes of `hashes` hashes from the projections
// (problems, rows, hashes · τ) contiguous, into codes at codes + p · code_sp + i · hashes (int32).
int longattn_yoso_codes(const float* proj, int64_t problems, int64_t rows, int64_t hashes, int64_t tau,
                        int32_t* codes, int64_t code_sp) {
  const int64_t width = hashes * tau;
  for (int64_t p = 0; p < problems; ++p)
    for (int64_t i = 0; i < rows; ++i) {
      const float* x = proj + (p * rows + i) * width;
      int32_t* out = codes + p * code_sp + i * hashes;
      for (int64_t f = 0; f < hashes; ++f) {
        int32_t c = 0;
        for (int64_t t = 0; t < tau; ++t) c |= (int32_t)(x[f * tau + t] > 0.f) << t;
        out[f] = c;
      }
    }
  return 0;
}

int longattn_yoso_cumulate(const float* v, int64_t v_sb, int64_t v_sh, int64_t v_sn, const int32_t* cq,
                           const int32_t* ck, float* out, int64_t problems, int64_t heads, int64_t n, int64_t d,
                           int64_t hashes, int64_t span, float scale, int threads) {
  if (!longattn_yoso_supports(d)) return 1;
  const Tensor values{v, v_sb, v_sh, v_sn};
  // Tables of a group of hashes within ~512 KB (a core's L2), at least one hash.
  const int64_t group = std::max<int64_t>(1, std::min<int64_t>(hashes, (1 << 17) / (span * d)));
  auto work = [&](int64_t p, Buckets&, Scratch& s) {
    if (s.w.size() < (size_t)(group * span * d)) s.w.assign(group * span * d, 0.f);
    by_width(d, [&](auto nv) {
      cumulate_problem<decltype(nv)::value>(values, cq, ck, out, p, heads, n, hashes, span, group, scale, s.w.data());
    });
  };
  return share(problems, threads, 1, 1, d, work);
}

}  // extern "C"
