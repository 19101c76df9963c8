// One LSTM layer, forward and backward, as oneDNN's fused RNN primitive (the kernel PyTorch's
// nn.LSTM runs on x86-64 CPUs), called from JAX through XLA's FFI.
//
// Layouts are the project's (training/model/cells.py, PyTorch's): time-major inputs x [T, N, C],
// W_x [C, 4H] and W_h [H, 4H] with gate blocks i, f, g, o, one bias [4H]. These are oneDNN's
// `tnc`, `ldigo` (with L = D = 1) and `ldgo` as they stand: no copy on the way in. Where the
// primitive prefers another weight layout (the backward pass wants `ldgoi`), the weights are
// reordered into buffers kept with the cached primitive.
//
// How it uses the cores (see training/model/kernels/onednn.py): the batch's rows are independent
// through the whole time loop, so a call may split them into `chunks` groups of consecutive
// rows, each group running the primitive on a thread of its own from the first step to the last,
// with an OpenMP team of `team` threads. One thread per group avoids oneDNN's hand-offs between
// threads at every step (its threading splits each step's small matmul across the team), which
// at 32 rows x 128 units cost more than the work; one group with a team of every thread shares
// the reading of large weights between the cores instead. Each group sees the full batch's rows through strided memory (no copies), has
// its own scratchpad (`scratchpad_mode::user`) and its own slice of the workspace; in the
// backward pass each adds its weight gradients into buffers of its own, summed afterwards in a
// fixed order, so results depend on `chunks` and `team` (call attributes), never on timing.

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Calls of each handler in this process (forward training, forward inference, backward): what
// lets a run and its tests see that the kernel ran rather than the portable scan.
std::atomic<int64_t> calls[3];

using dnnl::memory;
using tag = memory::format_tag;
constexpr auto f32 = memory::data_type::f32;

// Threads that live as long as the process; Run(n, task) runs task(0) ... task(n - 1), each on
// its own thread, and waits for all of them. One call at a time: XLA may call handlers from any
// of its threads (one per device under shard_map), and each call takes every thread it needs.
// Each call sets how many threads each of its tasks' OpenMP teams has.
class Pool {
 public:
  void Run(int n, const std::function<void(int)>& task) {
    std::lock_guard<std::mutex> caller(submit_);
    while (started_ < n) Start();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = &task;
      active_ = n;
      pending_ = n;
      ++generation_;
    }
    ready_.notify_all();
    std::unique_lock<std::mutex> lock(mutex_);
    finished_.wait(lock, [this] { return pending_ == 0; });
    task_ = nullptr;
  }

 private:
  void Start() {
    int k = started_++;
    uint64_t seen = generation_;  // Run holds submit_, the only writer
    std::thread([this, k, seen] { Loop(k, seen); }).detach();
  }

  void Loop(int k, uint64_t seen) {
    omp_set_num_threads(1);
    for (;;) {
      const std::function<void(int)>* task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [&] { return generation_ != seen && k < active_; });
        seen = generation_;
        task = task_;
      }
      (*task)(k);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) finished_.notify_one();
    }
  }

  std::mutex submit_, mutex_;
  std::condition_variable ready_, finished_;
  const std::function<void(int)>* task_ = nullptr;
  int started_ = 0, active_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: its threads outlive static destructors
  return *p;
}

// Everything below runs on the pool's threads; each has its own stream, scratchpad and
// primitives (made on first use by the thread that runs them).
dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

dnnl::stream& stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

void* scratchpad(size_t bytes) {
  thread_local std::vector<uint8_t> buffer;
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
}

// One group of rows: n of the batch's N rows, run by an OpenMP team of `team` threads (the
// primitive is made for that many).
struct Shape {
  int64_t T, N, n, C, H, team;
  bool operator<(const Shape& o) const {
    return std::tie(T, N, n, C, H, team) < std::tie(o.T, o.N, o.n, o.C, o.H, o.team);
  }
};

// Rows [first, first + n) of group k of `chunks` over N rows: the first N % chunks groups have
// one row more.
struct Rows {
  int64_t first, n;
};
Rows rows_of(int64_t N, int64_t chunks, int64_t k) {
  int64_t base = N / chunks, extra = N % chunks;
  return Rows{k * base + std::min(k, extra), base + (k < extra ? 1 : 0)};
}

struct Descs {
  memory::desc x, iter, w_x, w_h, bias, y, w_x_any, w_h_any;
  // x and y are the group's rows of the whole batch's [T, N, *] arrays: strided, not copied.
  explicit Descs(const Shape& s)
      : x({s.T, s.n, s.C}, f32, memory::dims{s.N * s.C, s.C, 1}),
        iter({1, 1, s.n, s.H}, f32, tag::ldnc),
        w_x({1, 1, s.C, 4, s.H}, f32, tag::ldigo),
        w_h({1, 1, s.H, 4, s.H}, f32, tag::ldigo),
        bias({1, 1, 4, s.H}, f32, tag::ldgo),
        y({s.T, s.n, s.H}, f32, memory::dims{s.N * s.H, s.H, 1}),
        w_x_any({1, 1, s.C, 4, s.H}, f32, tag::any),
        w_h_any({1, 1, s.H, 4, s.H}, f32, tag::any) {}
};

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::lstm_forward::primitive_desc forward_pd(const Shape& s, dnnl::prop_kind kind) {
  Descs d(s);
  return dnnl::lstm_forward::primitive_desc(engine(), kind, dnnl::rnn_direction::unidirectional_left2right,
                                            d.x, d.iter, d.iter, d.w_x_any, d.w_h_any, d.bias, d.y, d.iter,
                                            d.iter, user_scratchpad());
}

// A weight in the user's layout, and where the primitive wants it (the same memory when the
// layouts agree).
struct Weight {
  memory user, wanted;
  dnnl::reorder to_wanted, from_wanted;
  bool same;
  Weight(const memory::desc& user_desc, const memory::desc& wanted_desc, bool back)
      : user(user_desc, engine(), DNNL_MEMORY_NONE), same(user_desc == wanted_desc) {
    wanted = same ? user : memory(wanted_desc, engine());
    if (!same) {
      to_wanted = dnnl::reorder(user, wanted);
      if (back) from_wanted = dnnl::reorder(wanted, user);
    }
  }
  // Points the user memory at `data` and makes the wanted copy current.
  void Load(void* data) {
    user.set_data_handle(data);
    if (!same) to_wanted.execute(stream(), user, wanted);
  }
  void Store(void* data) {
    user.set_data_handle(data);
    if (!same) from_wanted.execute(stream(), wanted, user);
  }
};

struct Forward {
  dnnl::lstm_forward::primitive_desc pd;
  dnnl::lstm_forward primitive;
  Weight w_x, w_h;
  Forward(const Shape& s, dnnl::prop_kind kind)
      : pd(forward_pd(s, kind)),
        primitive(pd),
        w_x(Descs(s).w_x, pd.weights_layer_desc(), false),
        w_h(Descs(s).w_h, pd.weights_iter_desc(), false) {}
};

struct Backward {
  dnnl::lstm_backward::primitive_desc pd;
  dnnl::lstm_backward primitive;
  Weight w_x, w_h, dw_x, dw_h;
  static dnnl::lstm_backward::primitive_desc make(const Shape& s) {
    Descs d(s);
    auto hint = forward_pd(s, dnnl::prop_kind::forward_training);
    return dnnl::lstm_backward::primitive_desc(
        engine(), dnnl::prop_kind::backward, dnnl::rnn_direction::unidirectional_left2right, d.x, d.iter, d.iter,
        d.w_x_any, d.w_h_any, d.bias, d.y, d.iter, d.iter, d.x, d.iter, d.iter, d.w_x_any, d.w_h_any, d.bias, d.y,
        d.iter, d.iter, hint, user_scratchpad());
  }
  explicit Backward(const Shape& s)
      : pd(make(s)),
        primitive(pd),
        w_x(Descs(s).w_x, pd.weights_layer_desc(), false),
        w_h(Descs(s).w_h, pd.weights_iter_desc(), false),
        dw_x(Descs(s).w_x, pd.diff_weights_layer_desc(), true),
        dw_h(Descs(s).w_h, pd.diff_weights_iter_desc(), true) {}
};

// One primitive per shape (and kind) and thread, made on first use by the thread that runs it:
// making one compiles its kernels for that thread's (single-threaded) OpenMP.
template <typename T, typename... Extra>
T& cached(std::map<Shape, std::unique_ptr<T>>& cache, const Shape& s, Extra... extra) {
  auto& entry = cache[s];
  if (!entry) entry = std::make_unique<T>(s, extra...);
  return *entry;
}

Forward& training_forward(const Shape& s) {
  thread_local std::map<Shape, std::unique_ptr<Forward>> cache;
  return cached(cache, s, dnnl::prop_kind::forward_training);
}

Forward& inference_forward(const Shape& s) {
  thread_local std::map<Shape, std::unique_ptr<Forward>> cache;
  return cached(cache, s, dnnl::prop_kind::forward_inference);
}

Backward& backward(const Shape& s) {
  thread_local std::map<Shape, std::unique_ptr<Backward>> cache;
  return cached(cache, s);
}

memory wrap(const memory::desc& desc, const void* data) {
  return memory(desc, engine(), const_cast<void*>(data));
}

// The bytes of the training workspace of one group, rounded up to a cache line so that every
// group's slice of the shared workspace starts on one.
int64_t group_workspace_bytes(const Shape& s) {
  static std::mutex mutex;
  static std::map<Shape, int64_t> sizes;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = sizes.find(s);
  if (it == sizes.end()) {
    int64_t bytes = forward_pd(s, dnnl::prop_kind::forward_training).workspace_desc().get_size();
    it = sizes.emplace(s, (bytes + 63) / 64 * 64).first;
  }
  return it->second;
}

// How a call is split: the batch is x [T, N, C] with W_h [H, 4H], in `chunks` groups of rows,
// each run by `team` threads.
struct Split {
  int64_t T, N, C, H, chunks, team;
  Shape group(int64_t k) const { return Shape{T, N, rows_of(N, chunks, k).n, C, H, team}; }
  int64_t first_row(int64_t k) const { return rows_of(N, chunks, k).first; }
  int64_t workspace_offset(int64_t k) const {
    int64_t offset = 0;
    for (int64_t j = 0; j < k; ++j) offset += group_workspace_bytes(group(j));
    return offset;
  }
  int64_t workspace_bytes() const { return workspace_offset(chunks); }
};

// Runs body(k) for every group, each on its own pool thread; an error becomes an FFI error
// naming the call.
ffi::Error on_pool(const char* what, const Split& split, const std::function<void(int)>& body) {
  std::vector<std::string> errors(split.chunks);
  pool().Run(static_cast<int>(split.chunks), [&](int k) {
    omp_set_num_threads(static_cast<int>(split.team));
    try {
      body(k);
      stream().wait();
    } catch (const dnnl::error& e) {
      errors[k] = std::string(what) + ": oneDNN error " + std::to_string(static_cast<int>(e.status)) + ": " + e.what();
    } catch (const std::exception& e) {
      errors[k] = std::string(what) + ": " + e.what();
    }
  });
  for (const auto& error : errors)
    if (!error.empty()) return ffi::Error::Internal(error);
  return ffi::Error::Success();
}

using In = ffi::Buffer<ffi::F32>;
using Out = ffi::ResultBuffer<ffi::F32>;

Split split_of(const In& x, const In& w_h, int64_t chunks, int64_t team) {
  auto xd = x.dimensions();
  return Split{xd[0], xd[1], xd[2], w_h.dimensions()[0], std::max<int64_t>(1, std::min(chunks, xd[1])),
               std::max<int64_t>(1, team)};
}

// Pointers to row `first` of a [T, N, width] or [N, width] array (the group's strided view
// starts there).
const float* row(const In& a, int64_t first, int64_t width) { return a.typed_data() + first * width; }
float* row(Out& a, int64_t first, int64_t width) { return a->typed_data() + first * width; }

void run_forward(Forward& f, const Shape& s, int64_t first, const In& x, const In& w_x, const In& w_h, const In& b,
                 const In& h0, const In& c0, Out& y, Out& h_T, Out& c_T, void* workspace) {
  Descs d(s);
  f.w_x.Load(w_x.untyped_data());
  f.w_h.Load(w_h.untyped_data());
  std::unordered_map<int, memory> args = {
      {DNNL_ARG_SRC_LAYER, wrap(d.x, row(x, first, s.C))},
      {DNNL_ARG_SRC_ITER, wrap(d.iter, row(h0, first, s.H))},
      {DNNL_ARG_SRC_ITER_C, wrap(d.iter, row(c0, first, s.H))},
      {DNNL_ARG_WEIGHTS_LAYER, f.w_x.wanted},
      {DNNL_ARG_WEIGHTS_ITER, f.w_h.wanted},
      {DNNL_ARG_BIAS, wrap(d.bias, b.untyped_data())},
      {DNNL_ARG_DST_LAYER, wrap(d.y, row(y, first, s.H))},
      {DNNL_ARG_DST_ITER, wrap(d.iter, row(h_T, first, s.H))},
      {DNNL_ARG_DST_ITER_C, wrap(d.iter, row(c_T, first, s.H))},
      {DNNL_ARG_SCRATCHPAD, wrap(f.pd.scratchpad_desc(), scratchpad(f.pd.scratchpad_desc().get_size()))},
  };
  if (workspace) args.insert({DNNL_ARG_WORKSPACE, wrap(f.pd.workspace_desc(), workspace)});
  f.primitive.execute(stream(), args);
}

ffi::Error LstmForwardTraining(In x, In w_x, In w_h, In b, In h0, In c0, Out y, Out h_T, Out c_T,
                               ffi::ResultBuffer<ffi::U8> workspace, int64_t chunks, int64_t team) {
  calls[0]++;
  Split split = split_of(x, w_h, chunks, team);
  if (workspace->size_bytes() != static_cast<size_t>(split.workspace_bytes()))
    return ffi::Error::Internal("onednn_lstm_forward_training: workspace of " +
                                std::to_string(workspace->size_bytes()) + " bytes, expected " +
                                std::to_string(split.workspace_bytes()));
  return on_pool("onednn_lstm_forward_training", split, [&](int k) {
    Shape s = split.group(k);
    uint8_t* slice = workspace->typed_data() + split.workspace_offset(k);
    run_forward(training_forward(s), s, split.first_row(k), x, w_x, w_h, b, h0, c0, y, h_T, c_T, slice);
  });
}

ffi::Error LstmForwardInference(In x, In w_x, In w_h, In b, In h0, In c0, Out y, Out h_T, Out c_T,
                                int64_t chunks, int64_t team) {
  calls[1]++;
  Split split = split_of(x, w_h, chunks, team);
  return on_pool("onednn_lstm_forward_inference", split, [&](int k) {
    Shape s = split.group(k);
    run_forward(inference_forward(s), s, split.first_row(k), x, w_x, w_h, b, h0, c0, y, h_T, c_T, nullptr);
  });
}

// Group k's weight and bias gradients, in the user's layouts. Group 0 writes the outputs
// themselves; the others, buffers of their own thread, added to the outputs afterwards.
struct Partials {
  std::vector<float*> w_x, w_h, b;
  explicit Partials(int64_t chunks) : w_x(chunks), w_h(chunks), b(chunks) {}
};

float* thread_buffer(int which, size_t floats) {
  thread_local std::vector<float> buffers[3];
  if (buffers[which].size() < floats) buffers[which].resize(floats);
  return buffers[which].data();
}

ffi::Error LstmBackward(In x, In w_x, In w_h, In b, In h0, In c0, In y, In h_T, In c_T,
                        ffi::Buffer<ffi::U8> workspace, In d_y, In d_h_T, In d_c_T, Out d_x, Out d_w_x, Out d_w_h,
                        Out d_b, Out d_h0, Out d_c0, int64_t chunks, int64_t team) {
  calls[2]++;
  // Both phases under one lock: the groups' partial gradients live in their threads' buffers
  // until the second phase has summed them, and another device's call must not reuse them.
  static std::mutex one_call;
  std::lock_guard<std::mutex> lock(one_call);
  Split split = split_of(x, w_h, chunks, team);
  Partials partials(split.chunks);
  ffi::Error error = on_pool("onednn_lstm_backward", split, [&](int k) {
    Shape s = split.group(k);
    int64_t first = split.first_row(k);
    Backward& bw = backward(s);
    Descs d(s);
    float* own_w_x = k == 0 ? d_w_x->typed_data() : thread_buffer(0, d_w_x->element_count());
    float* own_w_h = k == 0 ? d_w_h->typed_data() : thread_buffer(1, d_w_h->element_count());
    float* own_b = k == 0 ? d_b->typed_data() : thread_buffer(2, d_b->element_count());
    partials.w_x[k] = own_w_x;
    partials.w_h[k] = own_w_h;
    partials.b[k] = own_b;
    bw.w_x.Load(w_x.untyped_data());
    bw.w_h.Load(w_h.untyped_data());
    // The primitive adds its weight gradients to what the buffers hold.
    if (bw.dw_x.same) bw.dw_x.wanted.set_data_handle(own_w_x);
    if (bw.dw_h.same) bw.dw_h.wanted.set_data_handle(own_w_h);
    std::memset(bw.dw_x.wanted.get_data_handle(), 0, bw.dw_x.wanted.get_desc().get_size());
    std::memset(bw.dw_h.wanted.get_data_handle(), 0, bw.dw_h.wanted.get_desc().get_size());
    std::memset(own_b, 0, d_b->size_bytes());
    const uint8_t* slice = workspace.typed_data() + split.workspace_offset(k);
    bw.primitive.execute(
        stream(), {
                      {DNNL_ARG_SRC_LAYER, wrap(d.x, row(x, first, s.C))},
                      {DNNL_ARG_SRC_ITER, wrap(d.iter, row(h0, first, s.H))},
                      {DNNL_ARG_SRC_ITER_C, wrap(d.iter, row(c0, first, s.H))},
                      {DNNL_ARG_WEIGHTS_LAYER, bw.w_x.wanted},
                      {DNNL_ARG_WEIGHTS_ITER, bw.w_h.wanted},
                      {DNNL_ARG_BIAS, wrap(d.bias, b.untyped_data())},
                      {DNNL_ARG_DST_LAYER, wrap(d.y, row(y, first, s.H))},
                      {DNNL_ARG_DST_ITER, wrap(d.iter, row(h_T, first, s.H))},
                      {DNNL_ARG_DST_ITER_C, wrap(d.iter, row(c_T, first, s.H))},
                      {DNNL_ARG_WORKSPACE, wrap(bw.pd.workspace_desc(), slice)},
                      {DNNL_ARG_DIFF_SRC_LAYER, wrap(d.x, row(d_x, first, s.C))},
                      {DNNL_ARG_DIFF_SRC_ITER, wrap(d.iter, row(d_h0, first, s.H))},
                      {DNNL_ARG_DIFF_SRC_ITER_C, wrap(d.iter, row(d_c0, first, s.H))},
                      {DNNL_ARG_DIFF_WEIGHTS_LAYER, bw.dw_x.wanted},
                      {DNNL_ARG_DIFF_WEIGHTS_ITER, bw.dw_h.wanted},
                      {DNNL_ARG_DIFF_BIAS, wrap(d.bias, own_b)},
                      {DNNL_ARG_DIFF_DST_LAYER, wrap(d.y, row(d_y, first, s.H))},
                      {DNNL_ARG_DIFF_DST_ITER, wrap(d.iter, row(d_h_T, first, s.H))},
                      {DNNL_ARG_DIFF_DST_ITER_C, wrap(d.iter, row(d_c_T, first, s.H))},
                      {DNNL_ARG_SCRATCHPAD,
                       wrap(bw.pd.scratchpad_desc(), scratchpad(bw.pd.scratchpad_desc().get_size()))},
                  });
    if (!bw.dw_x.same) bw.dw_x.Store(own_w_x);
    if (!bw.dw_h.same) bw.dw_h.Store(own_w_h);
  });
  if (error.failure() || split.chunks == 1) return error;
  // The groups' gradients summed into the outputs, group by group in order (the same bits
  // every time), each thread taking its share of the elements.
  auto add = [&](float* out, const std::vector<float*>& parts, int64_t count, int k) {
    Rows share = rows_of(count, split.chunks, k);
    for (int64_t j = 1; j < split.chunks; ++j)
      for (int64_t i = share.first; i < share.first + share.n; ++i) out[i] += parts[j][i];
  };
  return on_pool("onednn_lstm_backward (sum of the groups' weight gradients)", split, [&](int k) {
    add(d_w_x->typed_data(), partials.w_x, d_w_x->element_count(), k);
    add(d_w_h->typed_data(), partials.w_h, d_w_h->element_count(), k);
    add(d_b->typed_data(), partials.b, d_b->element_count(), k);
  });
}

// The six inputs every call starts with: x, W_x, W_h, b, h0, c0.
auto LstmInputs() { return ffi::Ffi::Bind().Arg<In>().Arg<In>().Arg<In>().Arg<In>().Arg<In>().Arg<In>(); }

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnLstmForwardTraining, LstmForwardTraining,
                              LstmInputs()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::U8>>()
                                  .Attr<int64_t>("chunks")
                                  .Attr<int64_t>("team"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnLstmForwardInference, LstmForwardInference,
                              LstmInputs()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("chunks")
                                  .Attr<int64_t>("team"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnLstmBackward, LstmBackward,
                              LstmInputs()
                                  .Arg<In>()
                                  .Arg<In>()
                                  .Arg<In>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<In>()
                                  .Arg<In>()
                                  .Arg<In>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("chunks")
                                  .Attr<int64_t>("team"));

// The forward workspace's size in bytes for this shape split into `chunks` groups of rows of
// `team` threads (the Python side allocates it as an output of the training forward call).
// Returns -1 when oneDNN cannot make the primitive.
extern "C" int64_t onednn_lstm_workspace_bytes(int64_t T, int64_t N, int64_t C, int64_t H, int64_t chunks,
                                               int64_t team) {
  int64_t bytes = -1;
  pool().Run(1, [&](int) {
    omp_set_num_threads(static_cast<int>(std::max<int64_t>(1, team)));
    try {
      bytes = Split{T, N, C, H, std::max<int64_t>(1, std::min(chunks, N)), std::max<int64_t>(1, team)}
                  .workspace_bytes();
    } catch (const std::exception&) {
      bytes = -1;
    }
  });
  return bytes;
}

// How many times handler `which` (0: forward training, 1: forward inference, 2: backward) ran.
extern "C" int64_t onednn_lstm_calls(int64_t which) { return (which >= 0 && which < 3) ? calls[which].load() : -1; }
