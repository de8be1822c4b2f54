// Ranking statistics for evaluation: weighted AUROC and average precision over
// many bootstrap weight vectors from one sort per label, paired permutation
// statistics from one sort of the pooled scores, and DeLong placements. The
// *_seeded ops draw their own resamples and swaps, 16 at a time, from a seeded
// counter-based stream (numpy twin: rv2/evaluate/streams.py) and walk every row
// over each block while it is in cache.
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
#include <cstring>
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
constexpr size_t kPrefetchPad = 16;  // = kPrefetch, the cases fetched ahead

struct SortedCases {
  std::vector<int64_t> idx;      // case index at each sorted position
  std::vector<uint8_t> pos;      // 1 if that case is positive
  std::vector<int64_t> tie_end;  // exclusive end of each tie group
  std::vector<int32_t> unit;     // weight column of each sorted case (its resampling unit),
                                 // then kPrefetch zeros (fetching ahead needs no check)
  std::vector<uint8_t> pos_mask; // 0xFF if that case is positive, else 0
};

// Weight column of each sorted case: the case itself (image bootstrap) or its
// cluster (patient bootstrap: every image of a drawn patient gets its count).
void set_units(SortedCases& s, const int32_t* cluster) {
  s.unit.assign(s.idx.size() + kPrefetchPad, 0);
  for (size_t k = 0; k < s.idx.size(); ++k)
    s.unit[k] = cluster ? cluster[s.idx[k]] : static_cast<int32_t>(s.idx[k]);
}

// Positive flags and tie-group ends of cases already in descending score order.
void finish_sorted(SortedCases& s, const double* score, const double* label) {
  const size_t m = s.idx.size();
  s.pos.resize(m);
  s.pos_mask.resize(m);
  for (size_t k = 0; k < m; ++k) {
    s.pos[k] = is_pos(label[s.idx[k]]) ? 1 : 0;
    s.pos_mask[k] = s.pos[k] ? 0xFF : 0;
  }
  for (size_t k = 1; k <= m; ++k)
    if (k == m || score[s.idx[k]] != score[s.idx[k - 1]]) s.tie_end.push_back(static_cast<int64_t>(k));
}

// idx (ascending case indices) reordered by score, descending, ties in index
// order: an LSD radix sort on keys that order like the scores (8-bit digits, a
// pass skipped where every key shares its digit, as the exponent bytes of scores
// in [0, 1] mostly do). Comparison sorts spend most of their time on mispredicted
// branches here. -0.0 counts as 0.0, as it compares equal.
void sort_descending_stable(const double* score, std::vector<int64_t>& idx) {
  const size_t m = idx.size();
  std::vector<uint64_t> key(m), key2(m);
  std::vector<int64_t> idx2(m);
  for (size_t k = 0; k < m; ++k) {
    const double v = score[idx[k]] == 0.0 ? 0.0 : score[idx[k]];
    uint64_t b;
    std::memcpy(&b, &v, sizeof b);
    b = (b >> 63) ? ~b : (b | (uint64_t(1) << 63));  // ascending as unsigned
    key[k] = ~b;                                      // descending
  }
  for (int shift = 0; shift < 64; shift += 8) {
    size_t count[256] = {};
    for (size_t k = 0; k < m; ++k) ++count[(key[k] >> shift) & 0xFF];
    if (m == 0 || count[(key[0] >> shift) & 0xFF] == m) continue;
    size_t at = 0;
    for (size_t& c : count) {
      const size_t here = c;
      c = at;
      at += here;
    }
    for (size_t k = 0; k < m; ++k) {
      const size_t to = count[(key[k] >> shift) & 0xFF]++;
      key2[to] = key[k];
      idx2[to] = idx[k];
    }
    key.swap(key2);
    idx.swap(idx2);
  }
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
  sort_descending_stable(score, s.idx);
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

// The caller's order (S, n), checked for shape (its content is checked by
// cases_from_order), or nullptr; `ob` keeps the buffer alive.
const int64_t* order_of(const std::optional<I64Array>& order, py::buffer_info& ob, int64_t S,
                        int64_t n) {
  if (!order) return nullptr;
  ob = order->request();
  if (ob.ndim != 2 || ob.shape[0] != S || ob.shape[1] != n)
    throw std::invalid_argument("order must be (S, n) int64 like scores");
  return static_cast<const int64_t*>(ob.ptr);
}

void check_units(const int32_t* cluster, int64_t n, int64_t U, const char* limit) {
  for (int64_t i = 0; i < n; ++i)
    if (cluster[i] < 0 || cluster[i] >= U)
      throw std::invalid_argument(std::string("cluster holds a unit outside [0, ") + limit + ")");
}

void check_codes(const int32_t* grp, int64_t size, int64_t n_groups) {
  for (int64_t i = 0; i < size; ++i)
    if (grp[i] >= n_groups) throw std::invalid_argument("groups holds a code >= n_groups");
}

// True when the groups are one group holding every case (plain CIs).
bool one_group_of_all(const int32_t* grp, int64_t K, int64_t n, int64_t n_groups) {
  bool one = n_groups == 1 && K == 1;
  for (int64_t i = 0; one && i < n; ++i) one = grp[i] == 0;
  return one;
}

// Every score row sorted (or checked against the caller's order), with its
// resampling units; on every thread, without the GIL.
std::vector<SortedCases> sort_rows(const double* s, const double* y, const int64_t* ord, int64_t S,
                                   int64_t n, const int32_t* cluster, const char* what) {
  std::vector<SortedCases> sorted(static_cast<size_t>(S));
  parallel_for(S, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      sorted[r] = ord ? cases_from_order(s + r * n, y + r * n, ord + r * n, n, what)
                      : sort_cases(s + r * n, y + r * n, n, what);
      set_units(sorted[r], cluster);
    }
  });
  return sorted;
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
constexpr int64_t kPrefetch = static_cast<int64_t>(kPrefetchPad);
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

// 8 weights of a row as floats.
// (out by reference: a vector return value's ABI differs between the clones)
inline void load8(const float* p, v8f& out) { out = *reinterpret_cast<const v8f*>(p); }
typedef uint8_t v8u8 __attribute__((vector_size(8), aligned(1)));
typedef int32_t v8i32 __attribute__((vector_size(32)));
inline void load8(const uint8_t* p, v8f& out) {  // 0/1 swap bytes
  out = __builtin_convertvector(__builtin_convertvector(*reinterpret_cast<const v8u8*>(p), v8i32),
                                v8f);
}

// halves of an 8-float vector as doubles (macros: a function taking a vector type
// would have an ABI that differs between the clones)
#define RV2_LO4(v) v4d{(v)[0], (v)[1], (v)[2], (v)[3]}
#define RV2_HI4(v) v4d{(v)[4], (v)[5], (v)[6], (v)[7]}

#define RV2_INLINE inline __attribute__((always_inline))

// The double sums of one group over 16 resamples, in vector lanes (see
// BlockAccumulator for the arithmetic): fold() adds a closed tie group with
// positive weights p and negative weights q, four lanes per v4d.
struct LaneSums {
  v4d tp[4] = {}, fp[4] = {}, d2[4] = {}, aps[4] = {};

  RV2_INLINE void fold(const v4d* p, const v4d* q, bool any_pos) {
    if (!any_pos) {
      for (int k = 0; k < 4; ++k) fp[k] += q[k];
      return;
    }
    const v4d one = {1.0, 1.0, 1.0, 1.0}, two = {2.0, 2.0, 2.0, 2.0};
    for (int k = 0; k < 4; ++k) {
      d2[k] += two * p[k] * fp[k] + p[k] * q[k];
      tp[k] += p[k];
      fp[k] += q[k];
      const v4d den = tp[k] + fp[k];
      aps[k] += p[k] * (tp[k] / (den > one ? den : one));
    }
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

// Float weights: add() sums a case's weights into the open tie group in float
// (exact: integer sums below 2^24, which the caller checks), split into positives
// and negatives by a 0/1 factor, not a branch; close() folds the group.
struct LaneAccumulator : LaneSums {
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
    const v4d p[4] = {RV2_LO4(gp0), RV2_HI4(gp0), RV2_LO4(gp1), RV2_HI4(gp1)};
    fold(p, q, any_pos);
    gp0 = gp1 = gn0 = gn1 = v8f{};
    any_pos = false;
  }
};

typedef uint8_t v16u8 __attribute__((vector_size(16), aligned(1)));
typedef uint16_t v16u16 __attribute__((vector_size(32)));
typedef uint16_t v8u16 __attribute__((vector_size(16)));
typedef int32_t v4i32 __attribute__((vector_size(16)));

// 16 uint8 lanes as four v4d (byte -> 16 -> 32 bit -> double: each step is one
// widening instruction; a direct conversion compiles to scalar code)
#define RV2_U8_TO_V4D(v, out)                                          \
  do {                                                                 \
    const v16u16 w16_ = __builtin_convertvector((v), v16u16);          \
    v8u16 h_[2];                                                       \
    std::memcpy(h_, &w16_, sizeof h_);                                 \
    for (int k_ = 0; k_ < 2; ++k_) {                                   \
      const v8i32 w_ = __builtin_convertvector(h_[k_], v8i32);         \
      v4i32 q_[2];                                                     \
      std::memcpy(q_, &w_, sizeof q_);                                 \
      (out)[2 * k_] = __builtin_convertvector(q_[0], v4d);             \
      (out)[2 * k_ + 1] = __builtin_convertvector(q_[1], v4d);         \
    }                                                                  \
  } while (0)

// Byte weights (bootstrap counts below 256): a tie group's counts are summed in
// 8-bit integer lanes, two byte adds per case (all weights, and the positives'
// through a byte mask), with no conversion in the loop. `limit` = 255 / (the
// block's largest count) cases fit the lanes without overflow; a longer tie group
// moves its lanes into doubles every `limit` cases. The sums are exact, so the
// results equal the float walk's bit for bit.
struct CountLaneAccumulator : LaneSums {
  v16u8 gt = {}, gp = {};      // all weights, positive weights of the open tie group
  v16u8 neg = {};              // negatives of closed groups without positives, not yet in fp
  v4d sp[4] = {}, sq[4] = {};  // the moved part of a long tie group
  int run = 0, neg_run = 0, limit;
  bool any_pos = false, moved = false;

  explicit CountLaneAccumulator(int max_count) : limit(255 / std::max(max_count, 1)) {}

  RV2_INLINE void add(const uint8_t* row, uint8_t pos_mask) {
    const v16u8 r = *reinterpret_cast<const v16u8*>(row);
    gt += r;
    gp += r & (v16u8{} + pos_mask);
    any_pos = any_pos || pos_mask;
    if (++run == limit) move();
  }
  void move() {
    v4d p[4], q[4];
    RV2_U8_TO_V4D(gp, p);
    RV2_U8_TO_V4D(gt - gp, q);
    for (int k = 0; k < 4; ++k) {
      sp[k] += p[k];
      sq[k] += q[k];
    }
    gt = gp = v16u8{};
    run = 0;
    moved = true;
  }
  void flush_neg() {
    v4d q[4];
    RV2_U8_TO_V4D(neg, q);
    for (int k = 0; k < 4; ++k) fp[k] += q[k];
    neg = v16u8{};
    neg_run = 0;
  }
  // A tie group without positives only adds its negatives to fp, which nothing reads
  // before the next group with positives: its bytes wait in `neg` (integer sums,
  // exact, so the doubles come out the same). With subgroups most closes are these.
  RV2_INLINE void close() {
    if (!any_pos && !moved) {
      if (neg_run + run > limit) flush_neg();
      neg += gt;
      neg_run += run;
      gt = gp = v16u8{};
      run = 0;
      return;
    }
    if (neg_run) flush_neg();
    v4d p[4], q[4];
    RV2_U8_TO_V4D(gp, p);
    RV2_U8_TO_V4D(gt - gp, q);
    if (moved) {
      for (int k = 0; k < 4; ++k) {
        p[k] += sp[k];
        q[k] += sq[k];
        sp[k] = sq[k] = v4d{};
      }
      moved = false;
    }
    fold(p, q, any_pos);
    gt = gp = v16u8{};
    run = 0;
    any_pos = false;
  }
  void finish(double* auc_out, double* ap_out, int64_t lanes, int64_t stride) {
    if (neg_run) flush_neg();
    LaneSums::finish(auc_out, ap_out, lanes, stride);
  }
};

RV2_MULTIVERSION
void walk_boot_one_group(const SortedCases& sc, const float* wblk, int64_t m, double* auc_out,
                         double* ap_out, int64_t lanes, int64_t stride) {
  static_assert(kBlock == 16, "two 8-float vectors per case");
  LaneAccumulator acc;
  int64_t j = 0;
  for (int64_t end : sc.tie_end) {
    for (; j < end; ++j) {
      if (j + kPrefetch < m) prefetch(wblk + static_cast<int64_t>(sc.unit[j + kPrefetch]) * kBlock);
      const float* row = wblk + static_cast<int64_t>(sc.unit[j]) * kBlock;
      v8f r0, r1;
      load8(row, r0);
      load8(row + 8, r1);
      acc.add(r0, r1, sc.pos[j] != 0);
    }
    acc.close();
  }
  acc.finish(auc_out, ap_out, lanes, stride);
}

// The same walk over byte counts whose largest is max_count (see
// CountLaneAccumulator). sc.unit is padded by kPrefetch, so the fetch ahead needs
// no bounds check.
RV2_MULTIVERSION
void walk_boot_counts(const SortedCases& sc, const uint8_t* wblk, int max_count,
                      double* auc_out, double* ap_out, int64_t lanes, int64_t stride) {
  static_assert(kBlock == 16, "one 16-byte row per case");
  CountLaneAccumulator acc(max_count);
  const int32_t* unit = sc.unit.data();
  const uint8_t* pos_mask = sc.pos_mask.data();
  int64_t j = 0;
  for (int64_t end : sc.tie_end) {
    for (; j < end; ++j) {
      prefetch(wblk + static_cast<int64_t>(unit[j + kPrefetch]) * kBlock);
      acc.add(wblk + static_cast<int64_t>(unit[j]) * kBlock, pos_mask[j]);
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

// ---- Seeded resampling streams --------------------------------------------------
// Counter-based: word k of a stream is mix64(key + (k + 1) * golden), SplitMix64's
// output function, so any resample's draws can be made on any thread, in any order,
// and numpy computes the same words (rv2/evaluate/streams.py, the twin).
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kBootTag = 0x626f6f7473747270ull;  // "bootstrp"
constexpr uint64_t kPermTag = 0x7065726d73776170ull;  // "permswap"

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
inline uint64_t stream_key(uint64_t seed, uint64_t tag) { return mix64(seed ^ tag); }
inline uint64_t stream_word(uint64_t key, uint64_t k) { return mix64(key + (k + 1) * kGolden); }
// floor(x n / 2^64): a draw in [0, n), off uniform by at most n / 2^64
inline uint32_t draw_below(uint64_t x, uint64_t n) {
  return static_cast<uint32_t>((static_cast<unsigned __int128>(x) * n) >> 64);
}

typedef uint64_t v4u64 __attribute__((vector_size(32)));

// row[d] += 1 for the U draws d of one resample, whose words start at counter k0;
// true when a count exceeded cap. Four words at a time in vector lanes (the
// compiler splits the 64-bit products into 32-bit ones), the same values as
// stream_word and draw_below.
template <typename T>
RV2_MULTIVERSION bool draw_counts(uint64_t key, uint64_t k0, int64_t U, T* row, T cap) {
  bool full = false;
  const uint64_t u = static_cast<uint64_t>(U);
  const v4u64 lo32 = {0xFFFFFFFFull, 0xFFFFFFFFull, 0xFFFFFFFFull, 0xFFFFFFFFull};
  const v4u64 step = {4 * kGolden, 4 * kGolden, 4 * kGolden, 4 * kGolden};
  v4u64 z = {key + (k0 + 1) * kGolden, key + (k0 + 2) * kGolden, key + (k0 + 3) * kGolden,
             key + (k0 + 4) * kGolden};
  int64_t i = 0;
  for (; i + 4 <= U; i += 4) {
    v4u64 x = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    z += step;
    const v4u64 d = ((x >> 32) * u + (((x & lo32) * u) >> 32)) >> 32;  // floor(x u / 2^64)
    for (int t = 0; t < 4; ++t) {
      T& c = row[d[t]];
      full = full || c >= cap;
      ++c;
    }
  }
  for (uint64_t k = k0 + static_cast<uint64_t>(i); i < U; ++i, ++k) {
    T& c = row[draw_below(stream_word(key, k), u)];
    full = full || c >= cap;
    ++c;
  }
  return full;
}

// Counts of the U draws of resamples first .. first + lanes - 1 as (U, kBlock) lanes
// (resample r draws unit draw_below(word(r U + i), U), i < U). Returns true when a
// count exceeded `cap` (by default T's maximum: a uint8 lane may have wrapped). Each resample is
// counted in its own row of `scratch` (lanes x U: the increments of one resample stay
// within U entries, in cache) and the rows are then interleaved into `out`.
template <typename T>
bool draw_block_counts(uint64_t key, int64_t first, int64_t lanes, int64_t U, T* out,
                       std::vector<T>& scratch, T cap = std::numeric_limits<T>::max()) {
  scratch.assign(static_cast<size_t>(kBlock * U), T(0));
  bool full = false;
  for (int64_t b = 0; b < lanes; ++b)
    full = draw_counts(key, static_cast<uint64_t>(first + b) * static_cast<uint64_t>(U), U,
                       scratch.data() + b * U, cap) || full;
  for (int64_t i = 0; i < U; ++i)
    for (int64_t b = 0; b < kBlock; ++b) out[i * kBlock + b] = scratch[b * U + i];
  return full;
}

// Swap bits of permutations first .. first + 15: bit b of bits[i] swaps case i in
// permutation first + b. Word q of the block holds cases 4q .. 4q + 3, 16 bits each;
// block words are numbered from (first / 16) * ceil(n / 4).
void draw_swap_bits(uint64_t key, int64_t block, int64_t n, uint16_t* bits) {
  const int64_t Q = (n + 3) / 4;
  const uint64_t k0 = static_cast<uint64_t>(block) * static_cast<uint64_t>(Q);
  for (int64_t q = 0; q < Q; ++q) {
    const uint64_t w = stream_word(key, k0 + static_cast<uint64_t>(q));
    for (int64_t t = 0; t < 4 && 4 * q + t < n; ++t) bits[4 * q + t] = static_cast<uint16_t>(w >> (16 * t));
  }
}

// Group codes of each sorted case, K per case, in sorted order (a case coded twice
// for one group keeps the first code): the grouped walk reads them in sequence.
std::vector<int32_t> sorted_codes(const SortedCases& sc, const int32_t* grp, int64_t K, int64_t n) {
  const size_t m = sc.idx.size();
  std::vector<int32_t> codes(m * static_cast<size_t>(K));
  for (size_t j = 0; j < m; ++j) {
    const int64_t c = sc.idx[j];
    for (int64_t k = 0; k < K; ++k) {
      int32_t g = grp[k * n + c];
      for (int64_t k2 = 0; k2 < k && g >= 0; ++k2)
        if (grp[k2 * n + c] == g) g = -1;
      codes[j * K + k] = g;
    }
  }
  return codes;
}

// walk_boot over byte counts with groups: one CountLaneAccumulator per group, and
// only the groups a tie group touched are closed. Results at auc_out[b * G + g].
RV2_MULTIVERSION
void walk_boot_groups_counts(const SortedCases& sc, const int32_t* codes, int64_t K,
                             const uint8_t* wblk, int max_count, int64_t G, double* auc_out,
                             double* ap_out, int64_t lanes) {
  std::vector<CountLaneAccumulator> acc(static_cast<size_t>(G), CountLaneAccumulator(max_count));
  std::vector<uint8_t> flag(static_cast<size_t>(G), 0);
  std::vector<int32_t> touched;
  touched.reserve(static_cast<size_t>(G));
  const int32_t* unit = sc.unit.data();
  const uint8_t* pos_mask = sc.pos_mask.data();
  int64_t j = 0;
  for (int64_t end : sc.tie_end) {
    for (; j < end; ++j) {
      prefetch(wblk + static_cast<int64_t>(unit[j + kPrefetch]) * kBlock);
      const uint8_t* row = wblk + static_cast<int64_t>(unit[j]) * kBlock;
      for (int64_t k = 0; k < K; ++k) {
        const int32_t g = codes[j * K + k];
        if (g < 0) continue;
        if (!flag[g]) {
          flag[g] = 1;
          touched.push_back(g);
        }
        acc[g].add(row, pos_mask[j]);
      }
    }
    for (int32_t g : touched) {
      acc[g].close();
      flag[g] = 0;
    }
    touched.clear();
  }
  for (int64_t g = 0; g < G; ++g) acc[g].finish(auc_out + g, ap_out + g, lanes, G);
}

// The two permuted models' sums for 16 permutations. Each case goes to A or B with
// weight 1, so per lane B's weights are the group's count minus A's: only A's are
// summed (8-bit lanes, moved into doubles every 255 cases), B's follow at close.
struct PermLaneAccumulator {
  LaneSums a, b;
  v16u8 gt = {}, gp = {};        // A's weights in the open group: all, positives
  int run = 0, pos_run = 0;      // cases and positive cases since the group opened (or moved)
  v4d spa[4] = {}, sqa[4] = {}, spb[4] = {}, sqb[4] = {};
  bool any_pos = false, moved = false;

  RV2_INLINE void add(const v16u8& w, uint8_t pos_mask) {
    gt += w;
    gp += w & (v16u8{} + pos_mask);
    pos_run += pos_mask & 1;
    any_pos = any_pos || pos_mask;
    if (++run == 255) move();
  }
  RV2_INLINE void doubles(v4d* pa, v4d* qa, v4d* pb, v4d* qb) const {
    const v16u8 tb = (v16u8{} + static_cast<uint8_t>(run)) - gt;
    const v16u8 pbv = (v16u8{} + static_cast<uint8_t>(pos_run)) - gp;
    RV2_U8_TO_V4D(gp, pa);
    RV2_U8_TO_V4D(gt - gp, qa);
    RV2_U8_TO_V4D(pbv, pb);
    RV2_U8_TO_V4D(tb - pbv, qb);
  }
  void move() {
    v4d pa[4], qa[4], pb[4], qb[4];
    doubles(pa, qa, pb, qb);
    for (int k = 0; k < 4; ++k) {
      spa[k] += pa[k];
      sqa[k] += qa[k];
      spb[k] += pb[k];
      sqb[k] += qb[k];
    }
    gt = gp = v16u8{};
    run = pos_run = 0;
    moved = true;
  }
  RV2_INLINE void close() {
    v4d pa[4], qa[4], pb[4], qb[4];
    doubles(pa, qa, pb, qb);
    if (moved) {
      for (int k = 0; k < 4; ++k) {
        pa[k] += spa[k];
        qa[k] += sqa[k];
        pb[k] += spb[k];
        qb[k] += sqb[k];
        spa[k] = sqa[k] = spb[k] = sqb[k] = v4d{};
      }
      moved = false;
    }
    a.fold(pa, qa, any_pos);
    b.fold(pb, qb, any_pos);
    gt = gp = v16u8{};
    run = pos_run = 0;
    any_pos = false;
  }
};

// Lane p of the permutation walk holds permutation bit kPermLaneBit[p]: a uint16 of
// swap bits broadcast to 16 bytes reads low, high, low, high, ...
constexpr int kPermLaneBit[16] = {0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15};

// walk_perm with the swaps of 16 permutations as the 16 bits of one uint16 per case
// (a tenth of the byte rows' cache footprint, nothing to transpose), in 8-bit lanes.
// sc.unit holds each pooled case's own case (index mod n), flip is 0xFF for a case
// of model B: A takes its own cases where not swapped and B's where swapped.
RV2_MULTIVERSION
void walk_perm_bits(const SortedCases& sc, const uint8_t* flip, const uint16_t* bits,
                    double* auc_out, double* ap_out, int64_t lanes) {
  typedef uint16_t v8u16_a __attribute__((vector_size(16)));
  const v16u8 sel = {1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 64, 128, 128};
  const v16u8 one = v16u8{} + static_cast<uint8_t>(1);
  PermLaneAccumulator acc;
  const int32_t* unit = sc.unit.data();
  const uint8_t* pos_mask = sc.pos_mask.data();
  int64_t j = 0;
  for (int64_t end : sc.tie_end) {
    for (; j < end; ++j) {
      const uint16_t sw = bits[unit[j]];
      const v8u16_a w16 = v8u16_a{} + sw;
      v16u8 w8;
      std::memcpy(&w8, &w16, sizeof w8);
      const v16u8 swapped = reinterpret_cast<const v16u8&>(w8) & sel;
      // (swapped == 0) is 0xFF where not swapped; ^ flip: 0xFF where A takes the case
      const v16u8 takes = static_cast<v16u8>(swapped == 0) ^ (v16u8{} + flip[j]);
      acc.add(takes & one, pos_mask[j]);
    }
    acc.close();
  }
  double auc[2][16], ap[2][16];
  acc.a.finish(auc[0], ap[0], 16, 1);
  acc.b.finish(auc[1], ap[1], 16, 1);
  for (int p = 0; p < 16; ++p) {
    const int r = kPermLaneBit[p];
    if (r >= lanes) continue;
    for (int mdl = 0; mdl < 2; ++mdl) {
      auc_out[r * 2 + mdl] = auc[mdl][p];
      ap_out[r * 2 + mdl] = ap[mdl][p];
    }
  }
}

// sum over a column's nonzero entries (u, v) of v x the counts of unit u, for the 16
// resamples of a block: out[b * stride] for b < lanes. Byte counts (cnt8) or 32-bit
// ones (cnt32). Integer products and sums below 2^53: exact in any order.
RV2_MULTIVERSION
void column_sums(const std::vector<std::pair<int32_t, double>>& column, const uint8_t* cnt8,
                 const uint32_t* cnt32, double* out, int64_t lanes, int64_t stride) {
  double sum[kBlock] = {};
  if (cnt8) {
    v4d acc[4] = {};
    for (const auto& [u, v] : column) {
      v4d q[4];
      RV2_U8_TO_V4D(*reinterpret_cast<const v16u8*>(cnt8 + static_cast<int64_t>(u) * kBlock), q);
      for (int k = 0; k < 4; ++k) acc[k] += q[k] * v;
    }
    for (int64_t b = 0; b < kBlock; ++b) sum[b] = acc[b / 4][b % 4];
  } else {
    for (const auto& [u, v] : column)
      for (int64_t b = 0; b < kBlock; ++b)
        sum[b] += v * static_cast<double>(cnt32[static_cast<int64_t>(u) * kBlock + b]);
  }
  for (int64_t b = 0; b < lanes; ++b) out[b * stride] = sum[b];
}

// boot_auc_ap with the weights drawn here: resamples first .. first + count - 1 of
// the seeded stream, 16 at a time, the point estimates (every unit once) on the way,
// and optionally per resample the count-weighted column sums of `sums` (units, C),
// e.g. underdiagnosis numerators and denominators per subgroup. Each thread draws a
// block's counts (bytes, U x 16: in cache) and walks every score row over them, so
// no weight matrix is ever written to memory. Equal, bit for bit, to boot_auc_ap on
// boot_counts(seed, first, count, U).
py::tuple boot_auc_ap_seeded(F64Array scores, F64Array labels, std::optional<I64Array> order,
                             uint64_t seed, int64_t first, int64_t count,
                             std::optional<I32Array> cluster, int64_t n_units, int64_t byte_cap,
                             std::optional<I32Array> groups, int64_t n_groups,
                             std::optional<F64Array> sums) {
  auto sb = scores.request(), lb = labels.request();
  if (sb.ndim != 2) throw std::invalid_argument("scores must be (S, n)");
  const int64_t S = sb.shape[0], n = sb.shape[1];
  if (lb.ndim != 2 || lb.shape[0] != S || lb.shape[1] != n)
    throw std::invalid_argument("labels must have the shape of scores (S, n)");
  py::buffer_info ob;
  const int64_t* ord = order_of(order, ob, S, n);
  if (first < 0 || count < 0) throw std::invalid_argument("first and count must be >= 0");
  const int32_t* cl = nullptr;
  py::buffer_info cb;
  int64_t U = n;
  if (cluster) {
    cb = cluster->request();
    check_1d(cb, n, "cluster");
    cl = static_cast<const int32_t*>(cb.ptr);
    U = n_units;
    check_units(cl, n, U, "n_units");
  }
  if (U < 1 || U >= (int64_t(1) << 31)) throw std::invalid_argument("need 1 <= units < 2^31");
  if (byte_cap < 1 || byte_cap > 255) throw std::invalid_argument("byte_cap must be in [1, 255]");
  const int64_t G = n_groups;
  if (G < 1) throw std::invalid_argument("n_groups must be >= 1");
  std::vector<int32_t> all_cases;  // no groups: one group of every case
  const int32_t* grp = nullptr;
  int64_t K = 1;
  py::buffer_info gb;
  if (groups) {
    gb = groups->request();
    if (gb.ndim != 2 || gb.shape[1] != n)
      throw std::invalid_argument("groups must be (K, n) with n = scores.shape[1]");
    K = gb.shape[0];
    grp = static_cast<const int32_t*>(gb.ptr);
    check_codes(grp, K * n, G);
  } else {
    if (G != 1) throw std::invalid_argument("n_groups > 1 needs groups");
    all_cases.assign(static_cast<size_t>(n), 0);
    grp = all_cases.data();
  }
  const bool one_group = one_group_of_all(grp, K, n, G);
  // weighted column sums per resample: extra[b, c] = sum_u count[b, u] sums[u, c],
  // from each column's nonzero entries
  int64_t C = 0;
  std::vector<std::vector<std::pair<int32_t, double>>> columns;
  if (sums) {
    auto mb = sums->request();
    if (mb.ndim != 2 || mb.shape[0] != U)
      throw std::invalid_argument("sums must be (units, C)");
    C = mb.shape[1];
    const double* v = static_cast<const double*>(mb.ptr);
    columns.resize(static_cast<size_t>(C));
    for (int64_t u = 0; u < U; ++u)
      for (int64_t c = 0; c < C; ++c)
        if (v[u * C + c] != 0.0) columns[c].push_back({static_cast<int32_t>(u), v[u * C + c]});
  }
  const double* s = static_cast<const double*>(sb.ptr);
  const double* y = static_cast<const double*>(lb.ptr);
  py::array_t<double> auc({S, count, G}), ap({S, count, G}), point_auc({S, G}), point_ap({S, G});
  py::array_t<double> extra({count, C});
  double* auc_p = static_cast<double*>(auc.request().ptr);
  double* ap_p = static_cast<double*>(ap.request().ptr);
  double* point_auc_p = static_cast<double*>(point_auc.request().ptr);
  double* point_ap_p = static_cast<double*>(point_ap.request().ptr);
  double* extra_p = static_cast<double*>(extra.request().ptr);
  {
    py::gil_scoped_release release;
    std::vector<SortedCases> sorted = sort_rows(s, y, ord, S, n, cl, "boot_auc_ap_seeded");
    std::vector<std::vector<int32_t>> codes(static_cast<size_t>(S));
    const std::vector<uint8_t> ones(static_cast<size_t>(U * kBlock), 1);  // every unit once
    // the walk of row r over byte counts, results at auc_o[b * G + g]
    auto walk_bytes = [&](int64_t r, const uint8_t* cnt, int max_count, double* auc_o,
                          double* ap_o, int64_t lanes) {
      if (one_group)
        walk_boot_counts(sorted[r], cnt, max_count, auc_o, ap_o, lanes, 1);
      else
        walk_boot_groups_counts(sorted[r], codes[r].data(), K, cnt, max_count, G, auc_o, ap_o,
                                lanes);
    };
    parallel_for(S, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        if (!one_group) codes[r] = sorted_codes(sorted[r], grp, K, n);
        walk_bytes(r, ones.data(), 1, point_auc_p + r * G, point_ap_p + r * G, 1);
      }
    });
    const uint64_t key = stream_key(seed, kBootTag);
    const int64_t blocks = (count + kBlock - 1) / kBlock;
    // task = block * S + row; a thread's tasks are contiguous, so it draws each of its
    // blocks once (a block split between two threads is drawn by both)
    parallel_for(blocks * S, 1, [&](int64_t t0, int64_t t1) {
      std::vector<uint8_t> cnt(static_cast<size_t>(U * kBlock)), scratch;
      std::vector<uint32_t> c32, scratch32;  // the block's counts when bytes could wrap
      std::vector<float> wide;               // ... as float, for walk_boot
      BlockAccumulator acc(G);
      int64_t have = -1;
      int max_count = 0;
      bool full = false;
      for (int64_t task = t0; task < t1; ++task) {
        const int64_t blk = task / S, r = task % S, b0 = blk * kBlock;
        const int64_t lanes = std::min(kBlock, count - b0);
        if (blk != have) {
          full = draw_block_counts(key, first + b0, lanes, U, cnt.data(), scratch,
                                   static_cast<uint8_t>(byte_cap));
          max_count = *std::max_element(cnt.begin(), cnt.end());
          if (full) {  // rare: a count passed the cap, so the bytes may have wrapped
            c32.resize(static_cast<size_t>(U * kBlock));
            draw_block_counts(key, first + b0, lanes, U, c32.data(), scratch32);
            wide.assign(c32.begin(), c32.end());
          }
          have = blk;
        }
        if (r == 0 && C > 0)  // one task per block: the block's column sums
          for (int64_t c = 0; c < C; ++c)
            column_sums(columns[c], full ? nullptr : cnt.data(), full ? c32.data() : nullptr,
                        extra_p + b0 * C + c, lanes, C);
        const SortedCases& sc = sorted[r];
        double* auc_o = auc_p + (r * count + b0) * G;
        double* ap_o = ap_p + (r * count + b0) * G;
        if (!full) {
          walk_bytes(r, cnt.data(), max_count, auc_o, ap_o, lanes);
          continue;
        }
        walk_boot(sc, wide.data(), grp, K, n, static_cast<int64_t>(sc.idx.size()), acc);
        for (int64_t b = 0; b < lanes; ++b) acc.finish(b, auc_o + b * G, ap_o + b * G);
      }
    });
  }
  return py::make_tuple(auc, ap, point_auc, point_ap, extra);
}

// out (S, n) from each row's sorted known cases: fill(sorted cases, row of out).
template <typename T, typename Fill>
py::array_t<T> per_sorted_row(F64Array scores, F64Array labels, const char* what, Fill fill) {
  auto sb = scores.request(), lb = labels.request();
  if (sb.ndim != 2 || lb.ndim != 2 || lb.shape[0] != sb.shape[0] || lb.shape[1] != sb.shape[1])
    throw std::invalid_argument(std::string(what) + ": scores and labels must both be (S, n)");
  const int64_t S = sb.shape[0], n = sb.shape[1];
  const double* s = static_cast<const double*>(sb.ptr);
  const double* y = static_cast<const double*>(lb.ptr);
  py::array_t<T> out({S, n});
  T* o = static_cast<T*>(out.request().ptr);
  {
    py::gil_scoped_release release;
    parallel_for(S, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) fill(sort_cases(s + r * n, y + r * n, n, what), o + r * n, n);
    });
  }
  return out;
}

// (S, n) int64: per row the known cases by descending score (stable), then -1; the
// order boot_auc_ap and boot_auc_ap_seeded take, sorted once on every thread.
py::array_t<int64_t> rank_order(F64Array scores, F64Array labels) {
  return per_sorted_row<int64_t>(scores, labels, "rank_order",
                                 [](const SortedCases& sc, int64_t* dst, int64_t n) {
    std::copy(sc.idx.begin(), sc.idx.end(), dst);
    std::fill(dst + sc.idx.size(), dst + n, int64_t(-1));
  });
}

// (count, U) int32 counts of resamples first .. first + count - 1 of the seeded stream.
py::array_t<int32_t> boot_counts(uint64_t seed, int64_t first, int64_t count, int64_t U) {
  if (first < 0 || count < 0) throw std::invalid_argument("first and count must be >= 0");
  if (U < 1 || U >= (int64_t(1) << 31)) throw std::invalid_argument("need 1 <= units < 2^31");
  py::array_t<int32_t> out({count, U});
  int32_t* o = static_cast<int32_t*>(out.request().ptr);
  {
    py::gil_scoped_release release;
    const uint64_t key = stream_key(seed, kBootTag);
    parallel_for(count, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int32_t* dst = o + r * U;
        std::fill(dst, dst + U, 0);
        draw_counts(key, static_cast<uint64_t>(first + r) * static_cast<uint64_t>(U), U, dst,
                    std::numeric_limits<int32_t>::max());  // U < 2^31 draws: cannot overflow
      }
    });
  }
  return out;
}

// (count, n) uint8 swap indicators of permutations first .. first + count - 1 of the
// seeded stream (first a multiple of 16), as perm_auc_ap_seeded draws them.
py::array_t<uint8_t> perm_swaps(uint64_t seed, int64_t first, int64_t count, int64_t n) {
  if (first < 0 || count < 0 || first % kBlock)
    throw std::invalid_argument("first must be a multiple of 16 and count >= 0");
  py::array_t<uint8_t> out({count, n});
  uint8_t* o = static_cast<uint8_t*>(out.request().ptr);
  const uint64_t key = stream_key(seed, kPermTag);
  std::vector<uint16_t> bits(static_cast<size_t>(n));
  for (int64_t b0 = 0; b0 < count; b0 += kBlock) {
    draw_swap_bits(key, (first + b0) / kBlock, n, bits.data());
    for (int64_t b = b0; b < std::min(count, b0 + kBlock); ++b)
      for (int64_t i = 0; i < n; ++i) o[b * n + i] = (bits[i] >> (b - b0)) & 1;
  }
  return out;
}

// The paired permutation test for L labels at once, with the swaps drawn here:
// scores_a, scores_b, labels (L, n); permutations first .. first + count - 1 (first a
// multiple of 16). Returns auc, ap of shape (L, count, 2), equal bit for bit to
// perm_auc_ap on perm_swaps(seed, first, count, n), label by label. The pooled
// scores of each label are sorted once for all permutations.
py::tuple perm_auc_ap_seeded(F64Array scores_a, F64Array scores_b, F64Array labels,
                             uint64_t seed, int64_t first, int64_t count) {
  auto ab = scores_a.request(), bb = scores_b.request(), lb = labels.request();
  if (ab.ndim != 2) throw std::invalid_argument("scores_a must be (L, n)");
  const int64_t L = ab.shape[0], n = ab.shape[1];
  if (bb.ndim != 2 || bb.shape[0] != L || bb.shape[1] != n || lb.ndim != 2 ||
      lb.shape[0] != L || lb.shape[1] != n)
    throw std::invalid_argument("scores_b and labels must have the shape of scores_a (L, n)");
  if (first < 0 || count < 0 || first % kBlock)
    throw std::invalid_argument("first must be a multiple of 16 and count >= 0");
  const double* a = static_cast<const double*>(ab.ptr);
  const double* bsc = static_cast<const double*>(bb.ptr);
  const double* y = static_cast<const double*>(lb.ptr);
  py::array_t<double> auc({L, count, int64_t(2)}), ap({L, count, int64_t(2)});
  py::array_t<double> obs_auc({L, int64_t(2)}), obs_ap({L, int64_t(2)});
  double* auc_p = static_cast<double*>(auc.request().ptr);
  double* ap_p = static_cast<double*>(ap.request().ptr);
  double* obs_auc_p = static_cast<double*>(obs_auc.request().ptr);
  double* obs_ap_p = static_cast<double*>(obs_ap.request().ptr);
  {
    py::gil_scoped_release release;
    std::vector<SortedCases> sorted(static_cast<size_t>(L));
    std::vector<std::vector<uint8_t>> flips(static_cast<size_t>(L));  // 0xFF: a case of model B
    parallel_for(L, 1, [&](int64_t l0, int64_t l1) {
      std::vector<double> pooled(static_cast<size_t>(2 * n)), plabel(static_cast<size_t>(2 * n));
      const std::vector<uint16_t> none(static_cast<size_t>(n), 0);
      for (int64_t l = l0; l < l1; ++l) {
        std::copy(a + l * n, a + (l + 1) * n, pooled.begin());
        std::copy(bsc + l * n, bsc + (l + 1) * n, pooled.begin() + n);
        std::copy(y + l * n, y + (l + 1) * n, plabel.begin());
        std::copy(y + l * n, y + (l + 1) * n, plabel.begin() + n);
        SortedCases& sc = sorted[l];
        sc = sort_cases(pooled.data(), plabel.data(), 2 * n, "perm_auc_ap_seeded");
        flips[l].resize(sc.idx.size());
        sc.unit.resize(sc.idx.size());
        for (size_t k = 0; k < sc.idx.size(); ++k) {
          const bool from_a = sc.idx[k] < n;
          sc.unit[k] = static_cast<int32_t>(from_a ? sc.idx[k] : sc.idx[k] - n);
          flips[l][k] = from_a ? 0 : 0xFF;
        }
        // no swaps: the observed values of both models
        walk_perm_bits(sc, flips[l].data(), none.data(), obs_auc_p + l * 2, obs_ap_p + l * 2, 1);
      }
    });
    const uint64_t key = stream_key(seed, kPermTag);
    const int64_t blocks = (count + kBlock - 1) / kBlock;
    parallel_for(blocks * L, 1, [&](int64_t t0, int64_t t1) {
      std::vector<uint16_t> bits(static_cast<size_t>(n));
      int64_t have = -1;
      for (int64_t task = t0; task < t1; ++task) {
        const int64_t blk = task / L, l = task % L, b0 = blk * kBlock;
        if (blk != have) {
          draw_swap_bits(key, first / kBlock + blk, n, bits.data());
          have = blk;
        }
        const SortedCases& sc = sorted[l];
        const int64_t o = (l * count + b0) * 2;
        walk_perm_bits(sc, flips[l].data(), bits.data(), auc_p + o, ap_p + o,
                       std::min(kBlock, count - b0));
      }
    });
  }
  return py::make_tuple(auc, ap, obs_auc, obs_ap);
}

// Per row, midranks / k among the k cases whose label is known, 0 for the others:
// scipy's rankdata(method="average") / k, from one sort per row.
py::array_t<double> percentile_ranks(F64Array scores, F64Array labels) {
  return per_sorted_row<double>(scores, labels, "percentile_ranks",
                                [](const SortedCases& sc, double* dst, int64_t n) {
    std::fill(dst, dst + n, 0.0);
    const int64_t k = static_cast<int64_t>(sc.idx.size());
    int64_t a = 0;
    for (int64_t b : sc.tie_end) {
      // descending positions a .. b - 1 hold ascending ranks k - b + 1 .. k - a
      const double mid = static_cast<double>(2 * k - a - b + 1) / 2.0 / static_cast<double>(k);
      for (int64_t j = a; j < b; ++j) dst[sc.idx[j]] = mid;
      a = b;
    }
  });
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
  if (cl) check_units(cl, n, U, "weights.shape[1]");
  const double* s = static_cast<const double*>(sb.ptr);
  const double* y = static_cast<const double*>(lb.ptr);
  const int32_t* w = static_cast<const int32_t*>(wb.ptr);
  const int32_t* grp = static_cast<const int32_t*>(gb.ptr);
  check_codes(grp, K * n, n_groups);
  for (int64_t i = 0; i < B * U; ++i)
    if (w[i] < 0 || w[i] >= (1 << 24))
      throw std::invalid_argument("weights must be counts in [0, 2^24)");
  py::buffer_info ob;
  const int64_t* ord = order_of(order, ob, S, n);
  py::array_t<double> auc({S, B, n_groups}), ap({S, B, n_groups});
  double* auc_p = static_cast<double*>(auc.request().ptr);
  double* ap_p = static_cast<double*>(ap.request().ptr);
  {
    py::gil_scoped_release release;
    const std::vector<SortedCases> sorted = sort_rows(s, y, ord, S, n, cl, "boot_auc_ap");
    // weights as bytes where the counts allow (bootstrap counts nearly always do),
    // summed in integer lanes (exact); else float rows, with the vectorised walk for
    // one group of every case while its float sums stay exact (below 2^24)
    bool one_group = one_group_of_all(grp, K, n, n_groups);
    int64_t max_w = 0;
    for (int64_t i = 0; i < B * U; ++i) max_w = std::max<int64_t>(max_w, w[i]);
    const bool bytes = max_w < 256;
    one_group = one_group && (bytes || max_w * n < (int64_t(1) << 24));
    std::vector<std::vector<int32_t>> codes(static_cast<size_t>(S));
    if (bytes && !one_group)
      parallel_for(S, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) codes[r] = sorted_codes(sorted[r], grp, K, n);
      });
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
        if (bytes && one_group) {
          walk_boot_counts(sc, wt8.data() + blk * U * kBlock, static_cast<int>(max_w), auc_p + o,
                           ap_p + o, lanes, 1);
          continue;
        }
        if (bytes) {
          walk_boot_groups_counts(sc, codes[r].data(), K, wt8.data() + blk * U * kBlock,
                                  static_cast<int>(max_w), n_groups, auc_p + o * n_groups,
                                  ap_p + o * n_groups, lanes);
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
  m.def("boot_auc_ap_seeded", &boot_auc_ap_seeded, py::arg("scores"), py::arg("labels"),
        py::arg("order"), py::arg("seed"), py::arg("first"), py::arg("count"),
        py::arg("cluster") = py::none(), py::arg("n_units") = 0, py::arg("byte_cap") = 255,
        py::arg("groups") = py::none(), py::arg("n_groups") = 1, py::arg("sums") = py::none(),
        "boot_auc_ap for one group of every case over resamples first .. first + count - 1 of "
        "the seeded stream, drawn inside the kernel, for G case groups (groups (K, n) as for "
        "boot_auc_ap; None: one group of every case): (auc, ap), each (S, count, G), the point "
        "estimates (point_auc, point_ap), each (S, G), and extra (count, C): per resample the "
        "count-weighted column sums of sums (units, C). A block where a "
        "count exceeds byte_cap is redrawn as 32-bit counts (255: bytes that cannot wrap; tests "
        "lower it to reach that path).");
  m.def("rank_order", &rank_order, py::arg("scores"), py::arg("labels"),
        "(S, n) int64: per row the known cases by descending score (stable), then -1.");
  m.def("boot_counts", &boot_counts, py::arg("seed"), py::arg("first"), py::arg("count"),
        py::arg("units"), "(count, units) int32 bootstrap counts from the seeded stream.");
  m.def("perm_swaps", &perm_swaps, py::arg("seed"), py::arg("first"), py::arg("count"),
        py::arg("n"), "(count, n) uint8 swap indicators from the seeded stream.");
  m.def("perm_auc_ap_seeded", &perm_auc_ap_seeded, py::arg("scores_a"), py::arg("scores_b"),
        py::arg("labels"), py::arg("seed"), py::arg("first"), py::arg("count"),
        "Paired permutation AUROC and AP, (L, count, 2) each, for (L, n) inputs, with swaps "
        "drawn inside the kernel from the seeded stream; then the observed AUROC and AP, "
        "(L, 2) each.");
  m.def("percentile_ranks", &percentile_ranks, py::arg("scores"), py::arg("labels"),
        "(S, n): per row midranks / k among the k known cases (0 elsewhere).");
  m.def("delong_placements", &delong_placements, py::arg("scores"), py::arg("labels"),
        "DeLong placements (v10 (k, n_pos), v01 (k, n_neg)) of k score rows.");
}

}  // namespace rv2
