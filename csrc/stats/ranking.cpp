// Ranking statistics for evaluation: weighted AUROC and average precision over
// many bootstrap weight vectors from one sort per label, paired permutation
// statistics from one sort of the pooled scores, and DeLong placements.
//
// Labels are float64: 1 = positive, 0 = negative, anything else (-1, NaN) =
// unknown, left out. AUROC counts discordant pairs exactly (integer counts
// held in double, exact below 2^53; ties count 1/2) and divides once; AP = (1 / P) sum over distinct thresholds
// (descending) of P_g * TP / (TP + FP), the step-wise definition of
// scikit-learn's average_precision_score. A metric whose set has no positives
// or no negatives is NaN. Python twins: rv2/evaluate/kernels.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/parallel.h"
#include "registry.h"

namespace py = pybind11;

namespace rv2 {

namespace {

using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;
using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using U8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

inline bool is_pos(double y) { return y == 1.0; }
inline bool is_known(double y) { return y == 1.0 || y == 0.0; }

// Positions of known cases sorted by score, descending (stable), and the end
// of each tie group in that order.
struct SortedCases {
  std::vector<int64_t> idx;      // case index at each sorted position
  std::vector<uint8_t> pos;      // 1 if that case is positive
  std::vector<int64_t> tie_end;  // exclusive end of each tie group
  std::vector<int32_t> unit;     // weight column of each sorted case (its resampling unit)
};

// Weight column of each sorted case: the case itself (image bootstrap) or its
// cluster (patient bootstrap: every image of a drawn patient gets its count).
void set_units(SortedCases& s, const int32_t* cluster) {
  s.unit.resize(s.idx.size());
  for (size_t k = 0; k < s.idx.size(); ++k)
    s.unit[k] = cluster ? cluster[s.idx[k]] : static_cast<int32_t>(s.idx[k]);
}

// Positive flags and tie-group ends of cases already in descending score order.
void finish_sorted(SortedCases& s, const double* score, const double* label) {
  const size_t m = s.idx.size();
  s.pos.resize(m);
  for (size_t k = 0; k < m; ++k) s.pos[k] = is_pos(label[s.idx[k]]) ? 1 : 0;
  for (size_t k = 1; k <= m; ++k)
    if (k == m || score[s.idx[k]] != score[s.idx[k - 1]]) s.tie_end.push_back(static_cast<int64_t>(k));
}

SortedCases sort_cases(const double* score, const double* label, int64_t n, const char* what) {
  SortedCases s;
  s.idx.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (!is_known(label[i])) continue;
    if (!std::isfinite(score[i]))
      throw std::invalid_argument(std::string(what) + ": score of case " + std::to_string(i) +
                                  " is not finite (NaN or infinity)");
    s.idx.push_back(i);
  }
  std::stable_sort(s.idx.begin(), s.idx.end(),
                   [&](int64_t a, int64_t b) { return score[a] > score[b]; });
  finish_sorted(s, score, label);
  return s;
}

// The same structure from a caller's order (known cases by descending score,
// then -1 padding), checked, so repeated calls on one label skip the sort.
SortedCases cases_from_order(const double* score, const double* label, const int64_t* order,
                             int64_t n, const char* what) {
  SortedCases s;
  int64_t known = 0;
  for (int64_t i = 0; i < n; ++i) known += is_known(label[i]) ? 1 : 0;
  s.idx.reserve(static_cast<size_t>(known));
  for (int64_t k = 0; k < n && order[k] >= 0; ++k) {
    const int64_t i = order[k];
    if (i >= n || !is_known(label[i]) ||
        (k > 0 && !(score[i] <= score[order[k - 1]])))
      throw std::invalid_argument(std::string(what) +
                                  ": order is not the known cases by descending score");
    if (!std::isfinite(score[i]))
      throw std::invalid_argument(std::string(what) + ": score of case " + std::to_string(i) +
                                  " is not finite (NaN or infinity)");
    s.idx.push_back(i);
  }
  if (static_cast<int64_t>(s.idx.size()) != known)
    throw std::invalid_argument(std::string(what) + ": order lists " +
                                std::to_string(s.idx.size()) + " cases, labels have " +
                                std::to_string(known) + " known");
  finish_sorted(s, score, label);
  return s;
}

// Resamples are walked kBlock at a time: for each sorted case the kernel reads
// one contiguous row of kBlock weights (weights are transposed to (n, B) once)
// and updates kBlock accumulators, so the inner loops are SIMD-friendly and a
// case costs one cache line instead of kBlock scattered reads. Counts are held
// in double, exact for integers below 2^53 (disc2 <= n^2 / 2).
constexpr int64_t kBlock = 16;

struct BlockAccumulator {
  int64_t G;
  std::vector<double> tp, fp, gp, gn, disc2, ap_sum;  // [G][kBlock]
  std::vector<uint8_t> touched_flag, has_pos, has_neg;
  std::vector<int64_t> touched;

  explicit BlockAccumulator(int64_t groups)
      : G(groups), tp(groups * kBlock), fp(groups * kBlock), gp(groups * kBlock),
        gn(groups * kBlock), disc2(groups * kBlock), ap_sum(groups * kBlock),
        touched_flag(groups), has_pos(groups), has_neg(groups) {
    touched.reserve(static_cast<size_t>(groups));
  }
  void reset() {
    std::fill(tp.begin(), tp.end(), 0.0);
    std::fill(fp.begin(), fp.end(), 0.0);
    std::fill(disc2.begin(), disc2.end(), 0.0);
    std::fill(ap_sum.begin(), ap_sum.end(), 0.0);
  }
  inline void add(int64_t g, const float* w, bool positive) {
    if (!touched_flag[g]) {
      touched_flag[g] = 1;
      touched.push_back(g);
    }
    double* dst = (positive ? gp.data() : gn.data()) + g * kBlock;
    (positive ? has_pos : has_neg)[g] = 1;
    for (int64_t b = 0; b < kBlock; ++b) dst[b] += static_cast<double>(w[b]);
  }
  // Close the current tie group: positives here are discordant with the
  // negatives above (fp before the update) and tied with the negatives here.
  inline void close_tie_group() {
    for (int64_t g : touched) {
      double* p = gp.data() + g * kBlock;
      double* q = gn.data() + g * kBlock;
      double* t = tp.data() + g * kBlock;
      double* f = fp.data() + g * kBlock;
      if (!has_pos[g]) {
        for (int64_t b = 0; b < kBlock; ++b) {
          f[b] += q[b];
          q[b] = 0.0;
        }
      } else {
        double* d = disc2.data() + g * kBlock;
        double* a = ap_sum.data() + g * kBlock;
        for (int64_t b = 0; b < kBlock; ++b) {
          d[b] += 2.0 * p[b] * f[b] + p[b] * q[b];
          t[b] += p[b];
          f[b] += q[b];
          // p == 0 adds exactly 0; max(., 1) only avoids 0 / 0 there
          a[b] += p[b] * (t[b] / std::max(t[b] + f[b], 1.0));
          p[b] = 0.0;
          q[b] = 0.0;
        }
      }
      touched_flag[g] = 0;
      has_pos[g] = 0;
      has_neg[g] = 0;
    }
    touched.clear();
  }
  // auc / ap rows for resample b of this block: out[g] at stride.
  void finish(int64_t b, double* auc, double* ap) const {
    for (int64_t g = 0; g < G; ++g) {
      const double P = tp[g * kBlock + b], N = fp[g * kBlock + b];
      if (P > 0 && N > 0) {
        const double total2 = 2.0 * P * N;
        auc[g] = (total2 - disc2[g * kBlock + b]) / total2;
        ap[g] = ap_sum[g * kBlock + b] / P;
      } else {
        auc[g] = kNaN;
        ap[g] = kNaN;
      }
    }
  }
};

void check_1d(const py::buffer_info& b, int64_t n, const char* name) {
  if (b.ndim != 1 || b.shape[0] != n)
    throw std::invalid_argument(std::string(name) + " must be 1-D of length " + std::to_string(n));
}

// (rows, n) -> (blocks, n, kBlock) as float (exact for counts < 2^24), zero
// padding: the kBlock weights of one case in one block are one cache line, and
// one block of all cases (n * 64 bytes) stays in cache while it is walked.
template <typename Out = float, typename T>
std::vector<Out> block_transpose(const T* w, int64_t rows, int64_t n, int64_t& blocks) {
  blocks = (rows + kBlock - 1) / kBlock;
  std::vector<Out> out(static_cast<size_t>(blocks * n * kBlock), Out(0));
  parallel_for(blocks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      Out* dst = out.data() + k * n * kBlock;
      for (int64_t r = k * kBlock; r < std::min(rows, (k + 1) * kBlock); ++r) {
        const T* src = w + r * n;
        const int64_t b = r - k * kBlock;
        for (int64_t i = 0; i < n; ++i) dst[i * kBlock + b] = static_cast<Out>(src[i]);
      }
    }
  });
  return out;
}

// Cases are visited in score order, i.e. at random in memory: fetch ahead.
constexpr int64_t kPrefetch = 16;
inline void prefetch(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p);
#else
  (void)p;
#endif
}

// One pass over the sorted cases for one block of resamples. Compiled twice
// (AVX2 and baseline) where the compiler supports target_clones.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define RV2_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define RV2_MULTIVERSION
#endif

RV2_MULTIVERSION
void walk_boot(const SortedCases& sc, const float* wblk, const int32_t* grp, int64_t K,
               int64_t n, int64_t m, BlockAccumulator& acc) {
  acc.reset();
  int64_t j = 0;
  for (int64_t end : sc.tie_end) {
    for (; j < end; ++j) {
      const int64_t c = sc.idx[j];
      if (j + kPrefetch < m) prefetch(wblk + static_cast<int64_t>(sc.unit[j + kPrefetch]) * kBlock);
      const float* row = wblk + static_cast<int64_t>(sc.unit[j]) * kBlock;
      for (int64_t k = 0; k < K; ++k) {
        const int32_t g = grp[k * n + c];
        if (g < 0) continue;
        bool seen = false;  // a case coded twice for one group counts once
        for (int64_t k2 = 0; k2 < k; ++k2) seen = seen || grp[k2 * n + c] == g;
        if (!seen) acc.add(g, row, sc.pos[j]);
      }
    }
    acc.close_tie_group();
  }
}

// The common case, one group holding every case (plain CIs), written with the
// compiler's vector types: 16 float lanes are two 8-wide vectors, 16 double lanes
// four 4-wide ones (AVX2 in the avx2 clone, SSE pairs otherwise). A tie group's
// weights are summed in float (exact: integer sums below 2^24, which the caller
// checks) and split into positives and negatives by a 0/1 factor, not a branch.
// The double sums are those of walk_boot in the same order: the same results, bit
// for bit.
typedef float v8f __attribute__((vector_size(32), aligned(4)));
typedef double v4d __attribute__((vector_size(32)));
typedef uint8_t v8u8 __attribute__((vector_size(8), aligned(1)));

// 8 weights of a row as floats: float rows as they are, byte rows (bootstrap counts
// below 256, a quarter of the cache footprint) converted exactly.
// (out by reference: a vector return value's ABI differs between the clones)
inline void load8(const float* p, v8f& out) { out = *reinterpret_cast<const v8f*>(p); }
inline void load8(const uint8_t* p, v8f& out) {
  out = __builtin_convertvector(*reinterpret_cast<const v8u8*>(p), v8f);
}

// halves of an 8-float vector as doubles (macros: a function taking a vector type
// would have an ABI that differs between the clones)
#define RV2_LO4(v) v4d{(v)[0], (v)[1], (v)[2], (v)[3]}
#define RV2_HI4(v) v4d{(v)[4], (v)[5], (v)[6], (v)[7]}

#define RV2_INLINE inline __attribute__((always_inline))

// The metrics of one group over 16 resamples, in vector lanes (see BlockAccumulator
// for the arithmetic). add() sums a case's weights into the open tie group, in float;
// close() folds the tie group into the double sums.
struct LaneAccumulator {
  v4d tp[4] = {}, fp[4] = {}, d2[4] = {}, aps[4] = {};
  v8f gp0 = {}, gp1 = {}, gn0 = {}, gn1 = {};
  bool any_pos = false;

  RV2_INLINE void add(const v8f& r0, const v8f& r1, bool pos) {
    const float f = pos ? 1.0f : 0.0f;  // a factor, not a branch: labels come in random order
    any_pos = any_pos || pos;
    const v8f p0 = r0 * f, p1 = r1 * f;
    gp0 += p0;
    gp1 += p1;
    gn0 += r0 - p0;
    gn1 += r1 - p1;
  }
  RV2_INLINE void close() {
    const v4d q[4] = {RV2_LO4(gn0), RV2_HI4(gn0), RV2_LO4(gn1), RV2_HI4(gn1)};
    if (!any_pos) {
      for (int k = 0; k < 4; ++k) fp[k] += q[k];
    } else {
      const v4d one = {1.0, 1.0, 1.0, 1.0}, two = {2.0, 2.0, 2.0, 2.0};
      const v4d p[4] = {RV2_LO4(gp0), RV2_HI4(gp0), RV2_LO4(gp1), RV2_HI4(gp1)};
      for (int k = 0; k < 4; ++k) {
        d2[k] += two * p[k] * fp[k] + p[k] * q[k];
        tp[k] += p[k];
        fp[k] += q[k];
        const v4d den = tp[k] + fp[k];
        aps[k] += p[k] * (tp[k] / (den > one ? den : one));
      }
    }
    gp0 = gp1 = gn0 = gn1 = v8f{};
    any_pos = false;
  }
  // lanes 0..lanes-1 to auc_out[b * stride], ap_out[b * stride]
  void finish(double* auc_out, double* ap_out, int64_t lanes, int64_t stride) const {
    for (int64_t b = 0; b < lanes; ++b) {
      const double P = tp[b / 4][b % 4], N = fp[b / 4][b % 4];
      if (P > 0 && N > 0) {
        const double total2 = 2.0 * P * N;
        auc_out[b * stride] = (total2 - d2[b / 4][b % 4]) / total2;
        ap_out[b * stride] = aps[b / 4][b % 4] / P;
      } else {
        auc_out[b * stride] = kNaN;
        ap_out[b * stride] = kNaN;
      }
    }
  }
};

template <typename W>
RV2_MULTIVERSION
void walk_boot_one_group(const SortedCases& sc, const W* wblk, int64_t m, double* auc_out,
                         double* ap_out, int64_t lanes, int64_t stride) {
  static_assert(kBlock == 16, "two 8-float vectors per case");
  LaneAccumulator acc;
  int64_t j = 0;
  for (int64_t end : sc.tie_end) {
    for (; j < end; ++j) {
      if (j + kPrefetch < m) prefetch(wblk + static_cast<int64_t>(sc.unit[j + kPrefetch]) * kBlock);
      const W* row = wblk + static_cast<int64_t>(sc.unit[j]) * kBlock;
      v8f r0, r1;
      load8(row, r0);
      load8(row + 8, r1);
      acc.add(r0, r1, sc.pos[j] != 0);
    }
    acc.close();
  }
  acc.finish(auc_out, ap_out, lanes, stride);
}

// The permutation walk over the pooled sorted cases for 16 permutations: a case of
// model A goes to A's metrics unless swapped, one of B's goes to A when swapped,
// and B gets the rest; the swap indicators are bytes (0/1).
RV2_MULTIVERSION
void walk_perm(const SortedCases& sc, const uint8_t* sblk, int64_t n, int64_t m, double* auc_out,
               double* ap_out, int64_t lanes) {
  LaneAccumulator a, b;
  const v8f ones = {1, 1, 1, 1, 1, 1, 1, 1};
  int64_t j = 0;
  for (int64_t end : sc.tie_end) {
    for (; j < end; ++j) {
      const int64_t e = sc.idx[j];
      if (j + kPrefetch < m) {
        const int64_t e2 = sc.idx[j + kPrefetch];
        prefetch(sblk + (e2 >= n ? e2 - n : e2) * kBlock);
      }
      const bool from_b = e >= n;
      v8f s0, s1;
      load8(sblk + (from_b ? e - n : e) * kBlock, s0);
      load8(sblk + (from_b ? e - n : e) * kBlock + 8, s1);
      const v8f a0 = from_b ? s0 : ones - s0, a1 = from_b ? s1 : ones - s1;
      const bool pos = sc.pos[j] != 0;
      a.add(a0, a1, pos);
      b.add(ones - a0, ones - a1, pos);
    }
    a.close();
    b.close();
  }
  a.finish(auc_out, ap_out, lanes, 2);
  b.finish(auc_out + 1, ap_out + 1, lanes, 2);
}

// auc, ap of shape (S, B, G): for each score row s, weight row b and group g,
// the metric over cases with groups[k, i] == g for some k, each case counted
// weights[b, u(i)] times, u(i) = cluster[i] when given (weights (B, U): one
// count per resampling unit, e.g. a patient), else i (weights (B, n)).
// labels: (S, n) (one row per score row).
py::tuple boot_auc_ap(F64Array scores, F64Array labels, I32Array weights, I32Array groups,
                      int64_t n_groups, std::optional<I64Array> order,
                      std::optional<I32Array> cluster) {
  auto sb = scores.request(), lb = labels.request(), wb = weights.request(), gb = groups.request();
  if (sb.ndim != 2) throw std::invalid_argument("scores must be (S, n)");
  const int64_t S = sb.shape[0], n = sb.shape[1];
  if (lb.ndim != 2 || lb.shape[0] != S || lb.shape[1] != n)
    throw std::invalid_argument("labels must have the shape of scores (S, n)");
  const int32_t* cl = nullptr;
  py::buffer_info cb;
  if (cluster) {
    cb = cluster->request();
    check_1d(cb, n, "cluster");
    cl = static_cast<const int32_t*>(cb.ptr);
  }
  if (wb.ndim != 2 || (!cl && wb.shape[1] != n))
    throw std::invalid_argument(cl ? "weights must be (B, U), one column per unit"
                                   : "weights must be (B, n) with n = scores.shape[1]");
  if (gb.ndim != 2 || gb.shape[1] != n)
    throw std::invalid_argument("groups must be (K, n) with n = scores.shape[1]");
  if (n_groups < 1) throw std::invalid_argument("n_groups must be >= 1");
  const int64_t B = wb.shape[0], K = gb.shape[0], U = wb.shape[1];
  if (cl)
    for (int64_t i = 0; i < n; ++i)
      if (cl[i] < 0 || cl[i] >= U)
        throw std::invalid_argument("cluster holds a unit outside [0, weights.shape[1])");
  const double* s = static_cast<const double*>(sb.ptr);
  const double* y = static_cast<const double*>(lb.ptr);
  const int32_t* w = static_cast<const int32_t*>(wb.ptr);
  const int32_t* grp = static_cast<const int32_t*>(gb.ptr);
  for (int64_t i = 0; i < K * n; ++i)
    if (grp[i] >= n_groups) throw std::invalid_argument("groups holds a code >= n_groups");
  for (int64_t i = 0; i < B * U; ++i)
    if (w[i] < 0 || w[i] >= (1 << 24))
      throw std::invalid_argument("weights must be counts in [0, 2^24)");

  const int64_t* ord = nullptr;
  py::buffer_info ob;
  if (order) {
    ob = order->request();
    if (ob.ndim != 2 || ob.shape[0] != S || ob.shape[1] != n)
      throw std::invalid_argument("order must be (S, n) int64 like scores");
    ord = static_cast<const int64_t*>(ob.ptr);
  }
  py::array_t<double> auc({S, B, n_groups}), ap({S, B, n_groups});
  double* auc_p = static_cast<double*>(auc.request().ptr);
  double* ap_p = static_cast<double*>(ap.request().ptr);
  {
    py::gil_scoped_release release;
    std::vector<SortedCases> sorted(static_cast<size_t>(S));
    parallel_for(S, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        sorted[r] = ord ? cases_from_order(s + r * n, y + r * n, ord + r * n, n, "boot_auc_ap")
                        : sort_cases(s + r * n, y + r * n, n, "boot_auc_ap");
        set_units(sorted[r], cl);
      }
    });
    // the fast path: one group of every case, and float sums that stay exact; its
    // weights as bytes where the counts allow (bootstrap counts nearly always do)
    bool one_group = n_groups == 1 && K == 1;
    for (int64_t i = 0; one_group && i < n; ++i) one_group = grp[i] == 0;
    int64_t max_w = 0;
    for (int64_t i = 0; one_group && i < B * U; ++i) max_w = std::max<int64_t>(max_w, w[i]);
    one_group = one_group && max_w * n < (int64_t(1) << 24);
    const bool bytes = one_group && max_w < 256;
    int64_t blocks = 0;
    std::vector<float> wt;
    std::vector<uint8_t> wt8;
    if (bytes)
      wt8 = block_transpose<uint8_t>(w, B, U, blocks);
    else
      wt = block_transpose(w, B, U, blocks);
    // task = block * S + row: neighbouring tasks share a block of weights
    parallel_for(S * blocks, 1, [&](int64_t t0, int64_t t1) {
      BlockAccumulator acc(n_groups);
      for (int64_t task = t0; task < t1; ++task) {
        const int64_t r = task % S, blk = task / S, b0 = blk * kBlock;
        const SortedCases& sc = sorted[r];
        const int64_t m = static_cast<int64_t>(sc.idx.size());
        const int64_t o = r * B + b0, lanes = std::min(kBlock, B - b0);
        if (bytes) {
          walk_boot_one_group(sc, wt8.data() + blk * U * kBlock, m, auc_p + o, ap_p + o, lanes, 1);
          continue;
        }
        const float* wblk = wt.data() + blk * U * kBlock;
        if (one_group) {
          walk_boot_one_group(sc, wblk, m, auc_p + o, ap_p + o, lanes, 1);
          continue;
        }
        walk_boot(sc, wblk, grp, K, n, m, acc);
        for (int64_t b = 0; b < kBlock && b0 + b < B; ++b) {
          const int64_t o = (r * B + b0 + b) * n_groups;
          acc.finish(b, auc_p + o, ap_p + o);
        }
      }
    });
  }
  return py::make_tuple(auc, ap);
}

// Paired permutation: swaps[r, i] = 1 exchanges the two models' scores of case
// i. Returns auc, ap of shape (R, 2): column 0 the permuted model A, 1 model B.
// One sort of the 2n pooled scores serves every permutation; each pooled case
// goes to A or B with weight 1 per permutation.
py::tuple perm_auc_ap(F64Array scores_a, F64Array scores_b, F64Array labels, U8Array swaps) {
  auto ab = scores_a.request(), bb = scores_b.request(), lb = labels.request(), wb = swaps.request();
  if (ab.ndim != 1) throw std::invalid_argument("scores_a must be 1-D");
  const int64_t n = ab.shape[0];
  check_1d(bb, n, "scores_b");
  check_1d(lb, n, "labels");
  if (wb.ndim != 2 || wb.shape[1] != n)
    throw std::invalid_argument("swaps must be (R, n) with n = len(scores_a)");
  const int64_t R = wb.shape[0];
  const double* a = static_cast<const double*>(ab.ptr);
  const double* bsc = static_cast<const double*>(bb.ptr);
  const double* y = static_cast<const double*>(lb.ptr);
  const uint8_t* sw = static_cast<const uint8_t*>(wb.ptr);

  py::array_t<double> auc({R, int64_t(2)}), ap({R, int64_t(2)});
  double* auc_p = static_cast<double*>(auc.request().ptr);
  double* ap_p = static_cast<double*>(ap.request().ptr);
  {
    py::gil_scoped_release release;
    std::vector<double> pooled(static_cast<size_t>(2 * n)), plabel(static_cast<size_t>(2 * n));
    for (int64_t i = 0; i < n; ++i) {
      pooled[i] = a[i];
      pooled[n + i] = bsc[i];
      plabel[i] = plabel[n + i] = y[i];
    }
    SortedCases sc = sort_cases(pooled.data(), plabel.data(), 2 * n, "perm_auc_ap");
    // swap indicators transposed to (n, R padded) as double
    for (int64_t i = 0; i < R * n; ++i)
      if (sw[i] > 1) throw std::invalid_argument("swaps must be 0 or 1");
    int64_t blocks = 0;
    std::vector<uint8_t> st = block_transpose<uint8_t>(sw, R, n, blocks);
    const int64_t m = static_cast<int64_t>(sc.idx.size());
    parallel_for(blocks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t blk = t0; blk < t1; ++blk) {
        const int64_t b0 = blk * kBlock;
        walk_perm(sc, st.data() + blk * n * kBlock, n, m, auc_p + b0 * 2, ap_p + b0 * 2,
                  std::min(kBlock, R - b0));
      }
    });
  }
  return py::make_tuple(auc, ap);
}

// Bootstrap draws (rows, n) int64 -> counts (rows, n) int32: how often each
// case was drawn in each resample (a row-wise bincount).
py::array_t<int32_t> bootstrap_counts(I64Array draws) {
  auto db = draws.request();
  if (db.ndim != 2) throw std::invalid_argument("draws must be (rows, n)");
  const int64_t rows = db.shape[0], n = db.shape[1];
  const int64_t* d = static_cast<const int64_t*>(db.ptr);
  py::array_t<int32_t> out({rows, n});
  int32_t* o = static_cast<int32_t*>(out.request().ptr);
  {
    py::gil_scoped_release release;
    parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int32_t* dst = o + r * n;
        std::fill(dst, dst + n, 0);
        const int64_t* src = d + r * n;
        for (int64_t i = 0; i < n; ++i) {
          if (src[i] < 0 || src[i] >= n)
            throw std::invalid_argument("draws must lie in [0, n)");
          ++dst[src[i]];
        }
      }
    });
  }
  return out;
}

// DeLong placements (Sun and Xu 2014) for each row of scores (k, n):
// v10[r, i] = (#neg below X_i + #neg tied / 2) / n_neg over positives in
// input order, v01[r, j] = 1 - (#pos below Y_j + #pos tied / 2) / n_pos.
py::tuple delong_placements(F64Array scores, F64Array labels) {
  auto sb = scores.request(), lb = labels.request();
  if (sb.ndim != 2) throw std::invalid_argument("scores must be (k, n)");
  const int64_t k = sb.shape[0], n = sb.shape[1];
  check_1d(lb, n, "labels");
  const double* s = static_cast<const double*>(sb.ptr);
  const double* y = static_cast<const double*>(lb.ptr);
  int64_t m_pos = 0, m_neg = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (is_pos(y[i])) ++m_pos; else if (is_known(y[i])) ++m_neg;
  }
  py::array_t<double> v10({k, m_pos}), v01({k, m_neg});
  double* v10p = static_cast<double*>(v10.request().ptr);
  double* v01p = static_cast<double*>(v01.request().ptr);
  {
    py::gil_scoped_release release;
    parallel_for(k, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const double* sr = s + r * n;
        SortedCases sc = sort_cases(sr, y, n, "delong_placements");
        // Output slot of each case among positives / negatives in input order.
        std::vector<int64_t> slot(static_cast<size_t>(n), -1);
        int64_t ip = 0, in = 0;
        for (int64_t i = 0; i < n; ++i) {
          if (is_pos(y[i])) slot[i] = ip++; else if (is_known(y[i])) slot[i] = in++;
        }
        // Walk ascending: tie groups in reverse.
        int64_t pos_below = 0, neg_below = 0;
        const int64_t groups = static_cast<int64_t>(sc.tie_end.size());
        for (int64_t g = groups - 1; g >= 0; --g) {
          const int64_t b = g == 0 ? 0 : sc.tie_end[g - 1], e = sc.tie_end[g];
          int64_t p = 0, q = 0;
          for (int64_t j = b; j < e; ++j) (sc.pos[j] ? p : q) += 1;
          for (int64_t j = b; j < e; ++j) {
            const int64_t c = sc.idx[j];
            if (sc.pos[j])
              v10p[r * m_pos + slot[c]] =
                  (static_cast<double>(neg_below) + 0.5 * static_cast<double>(q)) /
                  static_cast<double>(m_neg);
            else
              v01p[r * m_neg + slot[c]] =
                  1.0 - (static_cast<double>(pos_below) + 0.5 * static_cast<double>(p)) /
                            static_cast<double>(m_pos);
          }
          pos_below += p;
          neg_below += q;
        }
      }
    });
  }
  return py::make_tuple(v10, v01);
}

}  // namespace

void register_stats(py::module_& m) {
  m.def("boot_auc_ap", &boot_auc_ap, py::arg("scores"), py::arg("labels"), py::arg("weights"),
        py::arg("groups"), py::arg("n_groups"), py::arg("order") = py::none(),
        py::arg("cluster") = py::none(),
        "Weighted AUROC and average precision, (S, B, G) each, for S score rows (labels (S, n)), "
        "B weight rows and G case groups (groups: (K, n) int32 codes, -1 = none), one sort per row "
        "(or the caller's order: (S, n) int64, known cases by descending score, then -1). "
        "cluster: (n,) int32 unit of each case; weights are then (B, U), one count per unit.");
  m.def("bootstrap_counts", &bootstrap_counts, py::arg("draws"),
        "Row-wise bincount of bootstrap draws (rows, n) int64 -> (rows, n) int32 counts.");
  m.def("perm_auc_ap", &perm_auc_ap, py::arg("scores_a"), py::arg("scores_b"), py::arg("labels"),
        py::arg("swaps"),
        "AUROC and AP, (R, 2) each, of both models after case-wise score swaps (R, n) uint8.");
  m.def("delong_placements", &delong_placements, py::arg("scores"), py::arg("labels"),
        "DeLong placements (v10 (k, n_pos), v01 (k, n_neg)) of k score rows.");
}

}  // namespace rv2
