// jdet's oneDNN convolution for XLA:CPU: forward, input gradient and weight gradient of a
// 2-D float32 convolution (NHWC activations, HWIO kernel, groups 1, no dilation), as three
// XLA FFI handlers. Built on first use by jdet/native/onednn.py (g++, the onednn-cpu-gomp
// wheel's libdnnl and its headers, JAX's FFI headers) and called from
// jdet/models/onednn_conv.py under a custom VJP.
//
// Activations stay in the layout XLA already uses (oneDNN runs its NHWC kernels on them, no
// reorder); only the small kernel is reordered to whatever blocked layout oneDNN picks for
// the shape ("any"), and the weight gradient reordered back to HWIO.
//
// Threads: the work runs on XLA's own intra-op thread pool, not on an OpenMP team of its own.
// The batch is cut into one chunk per pool thread; the calling thread and tasks scheduled on
// the pool take chunks until none is left, each running single-threaded oneDNN primitives
// (created once per chunk shape and cached). An OpenMP team beside XLA's busy threads ran the
// same primitives 2x slower inside a train step (oversubscribed cores); here a busy pool
// simply leaves more chunks to the caller. Weight gradients of the chunks are summed.
//
// Numerics: strict float32 (conv_attr: never oneDNN's implicit bfloat16/AMX modes), direct
// algorithm (no Winograd). The forward kernels sum each output in one sequential FMA chain over
// (kh, kw, C) (checked bit for bit on a 64→64 3×3 layer); XLA's convolutions (YNNPACK, Eigen)
// split such sums into blocks, so on the longest chains (3×3 over 64 channels) their rounding
// error is up to ~2× smaller, on others oneDNN's is: both are float32 rounding, and over the
// tiny YOLOv8 of tests/test_onednn_conv.py neither is closer to float64 on average.
#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

constexpr int kGeomSize = 16;
// n (images in the chunk), h, w, c, o, kh, kw, oh, ow, sh, sw, pt, pb, pl, pr, threads
using Geometry = std::array<int64_t, kGeomSize>;

struct GeometryHash {
  size_t operator()(const Geometry& g) const {
    size_t s = 0;
    for (int64_t v : g) s = s * 1000003u ^ static_cast<size_t>(v);
    return s;
  }
};

// The primitives of one convolution shape, created on first use (never changed after).
struct Conv {
  memory::desc src, dst, user_w;  // NHWC activations, HWIO kernel
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_weights::primitive_desc bwd_w_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights bwd_w;
};

struct Runtime {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  std::mutex mu;  // guards cache and stats
  std::unordered_map<Geometry, std::unique_ptr<Conv>, GeometryHash> cache;
  // Wall seconds per call and calls, per (geometry of the whole call, kind).
  std::map<std::pair<Geometry, int>, std::array<double, 2>> stats;
};

Runtime& runtime() {
  static Runtime* rt = new Runtime();  // never destroyed: handlers may run at exit
  return *rt;
}

double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// oneDNN (OpenMP build) sizes its work by the calling thread's OpenMP thread count, read when
// a primitive is created and when it runs: set it for the XLA thread we are on.
void use_threads(int n) {
  thread_local int current = -1;
  if (current != n) {
    omp_set_num_threads(n);
    current = n;
  }
}

// Attributes of every primitive, reorders included: strict float32 math, stated rather than
// inherited. oneDNN's default math mode comes from the process environment
// (ONEDNN_DEFAULT_FPMATH_MODE / DNNL_DEFAULT_FPMATH_MODE, read once by libdnnl); "BF16" lets it
// down-convert float32 operands, and on CPUs with AMX (Intel Sapphire Rapids and later) it then
// runs brgconv:avx512_core_amx on bfloat16 inputs. Measured there: a 4×16×16×32→32 3×3
// convolution 0.17 (relative) from float64 instead of 1.4e-5, and the tiny YOLOv8 of
// tests/test_onednn_conv.py ~1e0 from its float64 run instead of ~1e-4. With the mode set here
// the same primitives (brgconv:avx512_core, jit:avx512_core, ...) run whatever the variable
// says, and give the same bits as with it unset.
dnnl::primitive_attr conv_attr() {
  dnnl::primitive_attr attr;
  attr.set_fpmath_mode(dnnl::fpmath_mode::strict);
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// A reorder between float32 layouts under the same strict attributes (a plain copy).
void reorder(memory& from, memory& to, dnnl::stream& st) {
  dnnl::primitive_attr attr;
  attr.set_fpmath_mode(dnnl::fpmath_mode::strict);
  dnnl::reorder(dnnl::reorder::primitive_desc(from, to, attr)).execute(st, from, to);
}

Conv& get_conv(const Geometry& g) {
  Runtime& rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mu);
  auto it = rt.cache.find(g);
  if (it != rt.cache.end()) return *it->second;
  const auto [n, h, w, c, o, kh, kw, oh, ow, sh, sw, pt, pb, pl, pr, threads] = g;
  use_threads(static_cast<int>(threads));
  auto conv = std::make_unique<Conv>();
  const memory::dims src_d{n, c, h, w}, w_d{o, c, kh, kw}, dst_d{n, o, oh, ow}, strides{sh, sw},
      pad_l{pt, pl}, pad_r{pb, pr};
  conv->src = memory::desc(src_d, memory::data_type::f32, tag::nhwc);
  conv->dst = memory::desc(dst_d, memory::data_type::f32, tag::nhwc);
  conv->user_w = memory::desc(w_d, memory::data_type::f32, tag::hwio);
  const memory::desc any_w(w_d, memory::data_type::f32, tag::any);
  const auto algo = dnnl::algorithm::convolution_direct;
  const dnnl::primitive_attr attr = conv_attr();
  conv->fwd_pd = dnnl::convolution_forward::primitive_desc(
      rt.eng, dnnl::prop_kind::forward_training, algo, conv->src, any_w, conv->dst, strides, pad_l,
      pad_r, attr);
  conv->bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(
      rt.eng, algo, conv->src, any_w, conv->dst, strides, pad_l, pad_r, conv->fwd_pd, attr);
  conv->bwd_w_pd = dnnl::convolution_backward_weights::primitive_desc(
      rt.eng, algo, conv->src, any_w, conv->dst, strides, pad_l, pad_r, conv->fwd_pd, attr);
  conv->fwd = dnnl::convolution_forward(conv->fwd_pd);
  conv->bwd_data = dnnl::convolution_backward_data(conv->bwd_data_pd);
  conv->bwd_w = dnnl::convolution_backward_weights(conv->bwd_w_pd);
  return *rt.cache.emplace(g, std::move(conv)).first->second;
}

// Per-thread stream and scratchpad (a thread runs one chunk at a time).
dnnl::stream& thread_stream() {
  thread_local dnnl::stream st(runtime().eng);
  return st;
}

memory scratchpad(const memory::desc& d) {
  thread_local std::vector<uint8_t> buf;
  if (buf.size() < d.get_size()) buf.resize(d.get_size());
  return memory(d, runtime().eng, buf.data());
}

// Runs work(i) for i in [0, k): the caller and up to k − 1 tasks on XLA's pool take indices
// until none is left; returns once all have finished. Tasks that start late find nothing to
// do, so a busy pool never blocks the caller.
struct Chunks {
  std::atomic<int> next{0};
  int k = 0, finished = 0;  // finished: guarded by mu
  std::mutex mu;
  std::condition_variable cv;
  std::string error;  // guarded by mu
};

template <typename Work>
std::string run_chunks(ffi::ThreadPool& pool, int k, const Work& work) {
  auto state = std::make_shared<Chunks>();
  state->k = k;
  auto take = [state, &work]() {
    for (;;) {
      const int i = state->next.fetch_add(1);
      if (i >= state->k) return;
      std::string err;
      try {
        work(i);
      } catch (const dnnl::error& e) {
        err = e.what();
      } catch (const std::exception& e) {
        err = e.what();
      }
      std::lock_guard<std::mutex> lock(state->mu);
      if (!err.empty() && state->error.empty()) state->error = err;
      if (++state->finished == state->k) state->cv.notify_all();
    }
  };
  // A late task must not touch `work` (the caller's frame is gone): it only reads `next`,
  // which is already >= k by then, through its own reference to `state`.
  for (int t = 1; t < k; ++t) pool.Schedule([take]() { take(); });
  take();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->finished == state->k; });
  return state->error;
}

enum class Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct Call {
  int64_t n, h, w, c, o, kh, kw, oh, ow, sh, sw, pt, pb, pl, pr;
};

// x: [N, H, W, C]; w: [KH, KW, C, O]; y: [N, OH, OW, O] — whichever two are inputs of `kind`
// and the third its output.
ffi::Error run(ffi::ThreadPool& pool, Kind kind, ffi::Span<const int64_t> xd,
               ffi::Span<const int64_t> wd, ffi::Span<const int64_t> yd, float* x, float* w,
               float* y, int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4)
    return ffi::Error::InvalidArgument("jdet oneDNN conv: operands must be rank 4");
  const Call a{xd[0], xd[1], xd[2], xd[3], wd[3], wd[0], wd[1], yd[1], yd[2], sh, sw, pt, pb, pl, pr};
  if (wd[2] != a.c || yd[0] != a.n || yd[3] != a.o)
    return ffi::Error::InvalidArgument("jdet oneDNN conv: inconsistent operand shapes");
  if (a.n == 0 || a.oh == 0 || a.ow == 0 || a.c == 0 || a.o == 0) {
    if (kind == Kind::kBackwardWeights) std::memset(w, 0, sizeof(float) * a.kh * a.kw * a.c * a.o);
    if (kind == Kind::kBackwardData) std::memset(x, 0, sizeof(float) * a.n * a.h * a.w * a.c);
    return ffi::Error::Success();
  }
  const double t0 = seconds();
  const int64_t pool_threads = std::max<int64_t>(1, pool.num_threads());
  // One chunk per pool thread, single-threaded each; a batch smaller than the pool runs
  // whole on an OpenMP team as large as the pool.
  const int k = static_cast<int>(std::min<int64_t>(a.n, pool_threads));
  const int64_t threads = a.n > 1 ? 1 : pool_threads;
  auto geometry = [&](int64_t n) {
    return Geometry{n, a.h, a.w, a.c, a.o, a.kh, a.kw, a.oh, a.ow, sh, sw, pt, pb, pl, pr, threads};
  };
  auto chunk_start = [&](int i) { return a.n * i / k; };
  const int64_t x_img = a.h * a.w * a.c, y_img = a.oh * a.ow * a.o, w_size = a.kh * a.kw * a.c * a.o;
  Runtime& rt = runtime();
  std::string err;
  try {
    use_threads(static_cast<int>(threads));
    Conv& first = get_conv(geometry(chunk_start(1) - chunk_start(0)));
    switch (kind) {
      case Kind::kForward:
      case Kind::kBackwardData: {
        // The kernel in the primitive's layout, once for all chunks.
        const memory::desc& want = kind == Kind::kForward ? first.fwd_pd.weights_desc()
                                                          : first.bwd_data_pd.weights_desc();
        memory user_w(first.user_w, rt.eng, w), kernel = user_w;
        if (want != first.user_w) {
          kernel = memory(want, rt.eng);
          reorder(user_w, kernel, thread_stream());
          thread_stream().wait();
        }
        err = run_chunks(pool, k, [&](int i) {
          use_threads(static_cast<int>(threads));
          const int64_t lo = chunk_start(i), hi = chunk_start(i + 1);
          Conv& cv = get_conv(geometry(hi - lo));
          memory xm(cv.src, rt.eng, x + lo * x_img), ym(cv.dst, rt.eng, y + lo * y_img);
          dnnl::stream& st = thread_stream();
          if (kind == Kind::kForward) {
            cv.fwd.execute(st, {{DNNL_ARG_SRC, xm},
                                {DNNL_ARG_WEIGHTS, kernel},
                                {DNNL_ARG_DST, ym},
                                {DNNL_ARG_SCRATCHPAD, scratchpad(cv.fwd_pd.scratchpad_desc())}});
          } else {
            cv.bwd_data.execute(
                st, {{DNNL_ARG_DIFF_DST, ym},
                     {DNNL_ARG_WEIGHTS, kernel},
                     {DNNL_ARG_DIFF_SRC, xm},
                     {DNNL_ARG_SCRATCHPAD, scratchpad(cv.bwd_data_pd.scratchpad_desc())}});
          }
          st.wait();
        });
        break;
      }
      case Kind::kBackwardWeights: {
        // Chunk 0 writes the HWIO gradient in place, the others into `partial`; summed below.
        std::vector<float> partial(static_cast<size_t>(w_size) * (k - 1));
        err = run_chunks(pool, k, [&](int i) {
          use_threads(static_cast<int>(threads));
          const int64_t lo = chunk_start(i), hi = chunk_start(i + 1);
          Conv& cv = get_conv(geometry(hi - lo));
          float* out = i == 0 ? w : partial.data() + (i - 1) * w_size;
          memory xm(cv.src, rt.eng, x + lo * x_img), ym(cv.dst, rt.eng, y + lo * y_img),
              user_dw(cv.user_w, rt.eng, out), dw = user_dw;
          if (cv.bwd_w_pd.diff_weights_desc() != cv.user_w)
            dw = memory(cv.bwd_w_pd.diff_weights_desc(), rt.eng);
          dnnl::stream& st = thread_stream();
          cv.bwd_w.execute(st, {{DNNL_ARG_SRC, xm},
                                {DNNL_ARG_DIFF_DST, ym},
                                {DNNL_ARG_DIFF_WEIGHTS, dw},
                                {DNNL_ARG_SCRATCHPAD, scratchpad(cv.bwd_w_pd.scratchpad_desc())}});
          if (dw != user_dw) reorder(dw, user_dw, st);
          st.wait();
        });
        for (int i = 1; i < k && err.empty(); ++i) {
          const float* p = partial.data() + (i - 1) * w_size;
          for (int64_t j = 0; j < w_size; ++j) w[j] += p[j];
        }
        break;
      }
    }
  } catch (const dnnl::error& e) {
    err = e.what();
  }
  if (!err.empty()) return ffi::Error::Internal("jdet oneDNN conv: " + err);
  const double dt = seconds() - t0;
  std::lock_guard<std::mutex> lock(rt.mu);
  auto& st = rt.stats[{geometry(a.n), static_cast<int>(kind)}];
  st[0] += dt;
  st[1] += 1;
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error forward(ffi::ThreadPool pool, F32 x, F32 w, F32Out y, int64_t sh, int64_t sw,
                   int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return run(pool, Kind::kForward, x.dimensions(), w.dimensions(), y->dimensions(),
             x.typed_data(), w.typed_data(), y->typed_data(), sh, sw, pt, pb, pl, pr);
}

ffi::Error backward_data(ffi::ThreadPool pool, F32 dy, F32 w, F32Out dx, int64_t sh, int64_t sw,
                         int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return run(pool, Kind::kBackwardData, dx->dimensions(), w.dimensions(), dy.dimensions(),
             dx->typed_data(), w.typed_data(), dy.typed_data(), sh, sw, pt, pb, pl, pr);
}

ffi::Error backward_weights(ffi::ThreadPool pool, F32 x, F32 dy, F32Out dw, int64_t sh,
                            int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return run(pool, Kind::kBackwardWeights, x.dimensions(), dw->dimensions(), dy.dimensions(),
             x.typed_data(), dw->typed_data(), dy.typed_data(), sh, sw, pt, pb, pl, pr);
}

}  // namespace

#define JDET_CONV_ATTRS                                                                  \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")          \
      .Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_left").Attr<int64_t>("pad_right")
#define JDET_CONV_BIND \
  ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Ret<F32>() JDET_CONV_ATTRS

XLA_FFI_DEFINE_HANDLER_SYMBOL(jdet_onednn_conv_fwd, forward, JDET_CONV_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(jdet_onednn_conv_bwd_data, backward_data, JDET_CONV_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(jdet_onednn_conv_bwd_weights, backward_weights, JDET_CONV_BIND);

// Per-shape timings so far, as text lines "kind n h w c o kh kw oh ow sh sw pt pb pl pr threads
// seconds calls"; returns the length needed (writes at most len bytes, NUL-terminated).
extern "C" int jdet_onednn_stats(char* buf, int len) {
  Runtime& rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mu);
  std::string out;
  char line[512];
  for (const auto& [key, v] : rt.stats) {
    int n = std::snprintf(line, sizeof line, "%d", key.second);
    for (int64_t d : key.first) n += std::snprintf(line + n, sizeof line - n, " %lld", (long long)d);
    std::snprintf(line + n, sizeof line - n, " %.6f %.0f\n", v[0], v[1]);
    out += line;
  }
  if (buf && len > 0) {
    const size_t k = std::min(out.size(), static_cast<size_t>(len - 1));
    out.copy(buf, k);
    buf[k] = 0;
  }
  return static_cast<int>(out.size()) + 1;
}

// oneDNN's version, for jdet's diagnostics.
extern "C" int jdet_onednn_version(int* major, int* minor, int* patch) {
  const dnnl_version_t* v = dnnl_version();
  *major = v->major;
  *minor = v->minor;
  *patch = v->patch;
  return 0;
}
