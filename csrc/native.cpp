// Native hot paths for dolmino's data stages: repeated n-gram spans and token memmap scans.
//
// Built by setup.py as `csrc._native` against the pybind11 headers bundled with torch (no
// libtorch link, so the module imports without torch and compiles in seconds). Every
// function has a pure-Python twin in csrc/__init__.py with identical results; the parity
// tests in tests/test_csrc.py hold the two together. Inner loops work on raw pointers with
// the GIL released, so a prefetch thread or a Spark worker's other threads keep running.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

using Span = std::pair<int64_t, int64_t>;

// Positions per block: the equality flags of one block for one period fit in L1, and the
// block's tokens (plus max_n of look-ahead) stay in L2 across all periods.
constexpr int64_t kBlock = 1 << 14;
constexpr uint64_t kAllOnes = 0x0101010101010101ULL;

// Per-period run state carried across blocks.
struct RunState {
  int64_t run_start = -1;
};

// The definition from filters/repeated_ngrams.py: for period n, positions i in
// [0, n_tok - n) with tokens[i] == tokens[i + n] form maximal runs; a run of length L at s
// covers tokens[s, s + L + n), i.e. (L + n) / n full copies, reported when >= min_repeats.
template <typename T>
std::vector<Span> raw_spans(const T* tok, int64_t n_tok, int64_t max_n, int64_t min_repeats) {
  std::vector<Span> spans;
  std::vector<RunState> state(static_cast<size_t>(max_n) + 1);
  std::vector<uint8_t> eq(static_cast<size_t>(kBlock) + 8);
  auto close_run = [&](int64_t n, int64_t run_start, int64_t i) {
    const int64_t length = i - run_start;
    if ((length + n) / n >= min_repeats) spans.emplace_back(run_start, i + n);
  };
  for (int64_t lo = 0; lo < n_tok; lo += kBlock) {
    for (int64_t n = 1; n <= max_n && n < n_tok; ++n) {
      const int64_t limit = n_tok - n;  // flags exist for i < limit
      if (lo >= limit) continue;
      const int64_t hi = std::min(lo + kBlock, limit);
      const int64_t m = hi - lo;
      const T* a = tok + lo;
      const T* b = tok + lo + n;
      for (int64_t j = 0; j < m; ++j) eq[j] = static_cast<uint8_t>(a[j] == b[j]);
      int64_t run_start = state[n].run_start;
      int64_t j = 0;
      while (j < m) {
        // Skip 8 flags at a time while they cannot change the run state.
        if (j + 8 <= m) {
          uint64_t word;
          std::memcpy(&word, &eq[j], 8);
          if ((run_start < 0 && word == 0) || (run_start >= 0 && word == kAllOnes)) {
            j += 8;
            continue;
          }
        }
        if (eq[j]) {
          if (run_start < 0) run_start = lo + j;
        } else if (run_start >= 0) {
          close_run(n, run_start, lo + j);
          run_start = -1;
        }
        ++j;
      }
      if (hi == limit && run_start >= 0) {  // i == n_tok - n ends every run
        close_run(n, run_start, limit);
        run_start = -1;
      }
      state[n].run_start = run_start;
    }
  }
  return spans;
}

// Sort by (start, end) and merge spans that overlap or touch, as filters.repeated_ngrams._merge.
std::vector<Span> merge_spans(std::vector<Span> spans) {
  std::sort(spans.begin(), spans.end());
  std::vector<Span> merged;
  for (const Span& s : spans) {
    if (!merged.empty() && s.first <= merged.back().second) {
      merged.back().second = std::max(merged.back().second, s.second);
    } else {
      merged.push_back(s);
    }
  }
  return merged;
}

template <typename T>
py::array_t<int64_t> spans_impl(py::array_t<T, py::array::c_style> tokens, int64_t max_n, int64_t min_repeats) {
  // Parameters are not range-checked here: like the numba path, max_n < 1 finds nothing and
  // min_repeats < 2 reports every run; callers validate what they accept.
  if (tokens.ndim() != 1) throw std::invalid_argument("tokens must be one-dimensional");
  const T* ptr = tokens.data();
  const int64_t n_tok = tokens.shape(0);
  std::vector<Span> merged;
  // Periods >= n_tok find nothing (as the numba loop stops there): clamping keeps the per-period
  // state to the array's size, where a huge max_n raised MemoryError that the fallback never does.
  const int64_t top = std::min(max_n, n_tok - 1);
  if (n_tok >= min_repeats && top >= 1) {
    py::gil_scoped_release release;
    merged = merge_spans(raw_spans(ptr, n_tok, top, min_repeats));
  }
  py::array_t<int64_t> out({static_cast<py::ssize_t>(merged.size()), static_cast<py::ssize_t>(2)});
  int64_t* o = out.mutable_data();
  for (size_t k = 0; k < merged.size(); ++k) {
    o[2 * k] = merged[k].first;
    o[2 * k + 1] = merged[k].second;
  }
  return out;
}

// One pass over a token memmap: the largest id, how many ids are >= vocab_size (and the
// first such offset), and how many equal eos_id. The loop works in blocks with 32-bit
// lanes so the compiler vectorizes it; bounds outside uint32 simply never match.
py::tuple scan_tokens(py::array_t<uint32_t, py::array::c_style> tokens, int64_t vocab_size, int64_t eos_id) {
  if (tokens.ndim() != 1) throw std::invalid_argument("tokens must be one-dimensional");
  const uint32_t* t = tokens.data();
  const int64_t n = tokens.shape(0);
  int64_t max_id = -1, n_oov = 0, first_oov = -1, n_eos = 0;
  {
    py::gil_scoped_release release;
    const bool oov_possible = vocab_size <= static_cast<int64_t>(UINT32_MAX);
    const uint32_t vocab = vocab_size < 0 ? 0u : static_cast<uint32_t>(oov_possible ? vocab_size : 0);
    const bool eos_possible = eos_id >= 0 && eos_id <= static_cast<int64_t>(UINT32_MAX);
    const uint32_t eos = static_cast<uint32_t>(eos_possible ? eos_id : 0);
    uint32_t mx = 0;
    constexpr int64_t kScanBlock = 1 << 16;  // per-block counts fit in uint32
    for (int64_t lo = 0; lo < n; lo += kScanBlock) {
      const int64_t hi = std::min(n, lo + kScanBlock);
      uint32_t bmx = 0, oov = 0, eosc = 0;
      for (int64_t i = lo; i < hi; ++i) {
        const uint32_t v = t[i];
        bmx = v > bmx ? v : bmx;
        oov += static_cast<uint32_t>(v >= vocab);
        eosc += static_cast<uint32_t>(v == eos);
      }
      mx = bmx > mx ? bmx : mx;
      if (oov_possible) {
        if (oov && first_oov < 0) {
          for (int64_t i = lo; i < hi; ++i) {
            if (t[i] >= vocab) {
              first_oov = i;
              break;
            }
          }
        }
        n_oov += oov;
      }
      if (eos_possible) n_eos += eosc;
    }
    if (n) max_id = mx;
  }
  return py::make_tuple(max_id, n_oov, first_oov, n_eos);
}

// Indices k (at most `limit`) of document ends where tokens[ends[k] - 1] != eos_id, or whose
// end is outside [1, len(tokens)]: the sidecar rows whose document does not end in EOS.
py::array_t<int64_t> eos_mismatches(py::array_t<uint32_t, py::array::c_style> tokens,
                                    py::array_t<int64_t, py::array::c_style> ends, int64_t eos_id, int64_t limit) {
  if (tokens.ndim() != 1 || ends.ndim() != 1) throw std::invalid_argument("arrays must be one-dimensional");
  const uint32_t* t = tokens.data();
  const int64_t n = tokens.shape(0);
  const int64_t* e = ends.data();
  const int64_t m = ends.shape(0);
  std::vector<int64_t> bad;
  {
    py::gil_scoped_release release;
    for (int64_t k = 0; k < m && static_cast<int64_t>(bad.size()) < limit; ++k) {
      const int64_t end = e[k];
      if (end < 1 || end > n || static_cast<int64_t>(t[end - 1]) != eos_id) bad.push_back(k);
    }
  }
  py::array_t<int64_t> out(static_cast<py::ssize_t>(bad.size()));
  std::copy(bad.begin(), bad.end(), out.mutable_data());
  return out;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "dolmino native data paths (see csrc/__init__.py for the Python facade and fallbacks)";
  // Overloads are tried in order; noconvert keeps each one to its exact dtype so no copy is made.
  m.def("repeated_ngram_spans", &spans_impl<uint32_t>, py::arg("tokens").noconvert(), py::arg("max_n"),
        py::arg("min_repeats"));
  m.def("repeated_ngram_spans", &spans_impl<int64_t>, py::arg("tokens").noconvert(), py::arg("max_n"),
        py::arg("min_repeats"));
  m.def("scan_tokens", &scan_tokens, py::arg("tokens").noconvert(), py::arg("vocab_size"), py::arg("eos_id"));
  m.def("eos_mismatches", &eos_mismatches, py::arg("tokens").noconvert(), py::arg("ends").noconvert(),
        py::arg("eos_id"), py::arg("limit"));
}
