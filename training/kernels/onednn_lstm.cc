// One LSTM layer, forward and backward, as oneDNN's fused RNN primitive (the kernel PyTorch's
// nn.LSTM runs on x86-64 CPUs), called from JAX through XLA's FFI.
//
// Layouts are the project's (training/cells.py, PyTorch's): time-major inputs x [T, N, C],
// W_x [C, 4H] and W_h [H, 4H] with gate blocks i, f, g, o, one bias [4H]. These are oneDNN's
// `tnc`, `ldigo` (with L = D = 1) and `ldgo` as they stand: no copy on the way in. Where the
// primitive prefers another weight layout (the backward pass wants `ldgoi`), the weights are
// reordered into buffers kept with the cached primitive.
//
// Two choices that matter for speed and safety (see training/kernels/onednn.py):
// - Every oneDNN call runs on one persistent worker thread. XLA may call a handler from any of
//   its threads, and each calling thread would start its own OpenMP team: teams that fight over
//   the cores. One thread, one team.
// - The scratchpad is the user's (`scratchpad_mode::user`), one buffer grown as needed and owned
//   by that thread: the default thread-local scratchpad is not safe under XLA's threads.

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

using dnnl::memory;
using tag = memory::format_tag;
constexpr auto f32 = memory::data_type::f32;

// Runs tasks one at a time on a single thread that lives as long as the process.
class Worker {
 public:
  Worker() : thread_([this] { Loop(); }) { thread_.detach(); }

  void Run(std::function<void()> task) {
    std::unique_lock<std::mutex> caller(submit_);  // one caller at a time
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = std::move(task);
      done_ = false;
    }
    ready_.notify_one();
    std::unique_lock<std::mutex> lock(mutex_);
    finished_.wait(lock, [this] { return done_; });
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [this] { return static_cast<bool>(task_); });
        task = std::move(task_);
        task_ = nullptr;
      }
      task();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        done_ = true;
      }
      finished_.notify_one();
    }
  }

  std::mutex submit_, mutex_;
  std::condition_variable ready_, finished_;
  std::function<void()> task_;
  bool done_ = true;
  std::thread thread_;
};

Worker& worker() {
  static Worker* w = new Worker();  // never destroyed: the thread outlives static destructors
  return *w;
}

// Everything below runs on the worker thread only.
dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

dnnl::stream& stream() {
  static dnnl::stream s(engine());
  return s;
}

void* scratchpad(size_t bytes) {
  static std::vector<uint8_t> buffer;
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
}

struct Shape {
  int64_t T, N, C, H;
  bool operator<(const Shape& o) const { return std::tie(T, N, C, H) < std::tie(o.T, o.N, o.C, o.H); }
};

struct Descs {
  memory::desc x, iter, w_x, w_h, bias, y, w_x_any, w_h_any;
  explicit Descs(const Shape& s)
      : x({s.T, s.N, s.C}, f32, tag::tnc),
        iter({1, 1, s.N, s.H}, f32, tag::ldnc),
        w_x({1, 1, s.C, 4, s.H}, f32, tag::ldigo),
        w_h({1, 1, s.H, 4, s.H}, f32, tag::ldigo),
        bias({1, 1, 4, s.H}, f32, tag::ldgo),
        y({s.T, s.N, s.H}, f32, tag::tnc),
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

// One primitive per shape (and kind), made on first use: making one compiles its kernels.
template <typename T, typename... Extra>
T& cached(std::map<Shape, std::unique_ptr<T>>& cache, const Shape& s, Extra... extra) {
  auto& entry = cache[s];
  if (!entry) entry = std::make_unique<T>(s, extra...);
  return *entry;
}

Forward& training_forward(const Shape& s) {
  static std::map<Shape, std::unique_ptr<Forward>> cache;
  return cached(cache, s, dnnl::prop_kind::forward_training);
}

Forward& inference_forward(const Shape& s) {
  static std::map<Shape, std::unique_ptr<Forward>> cache;
  return cached(cache, s, dnnl::prop_kind::forward_inference);
}

Backward& backward(const Shape& s) {
  static std::map<Shape, std::unique_ptr<Backward>> cache;
  return cached(cache, s);
}

memory wrap(const memory::desc& desc, const void* data) {
  return memory(desc, engine(), const_cast<void*>(data));
}

// Runs `body` on the worker thread; a oneDNN error becomes an FFI error naming the call.
ffi::Error on_worker(const char* what, const std::function<void()>& body) {
  std::string error;
  worker().Run([&] {
    try {
      body();
      stream().wait();
    } catch (const dnnl::error& e) {
      error = std::string(what) + ": oneDNN error " + std::to_string(static_cast<int>(e.status)) + ": " + e.what();
    } catch (const std::exception& e) {
      error = std::string(what) + ": " + e.what();
    }
  });
  if (!error.empty()) return ffi::Error::Internal(error);
  return ffi::Error::Success();
}

Shape shape_of(const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& w_h) {
  auto xd = x.dimensions();
  return Shape{xd[0], xd[1], xd[2], w_h.dimensions()[0]};
}

using In = ffi::Buffer<ffi::F32>;
using Out = ffi::ResultBuffer<ffi::F32>;

void run_forward(Forward& f, const Shape& s, const In& x, const In& w_x, const In& w_h, const In& b, const In& h0,
                 const In& c0, Out& y, Out& h_T, Out& c_T, void* workspace) {
  Descs d(s);
  f.w_x.Load(w_x.untyped_data());
  f.w_h.Load(w_h.untyped_data());
  std::unordered_map<int, memory> args = {
      {DNNL_ARG_SRC_LAYER, wrap(d.x, x.untyped_data())},
      {DNNL_ARG_SRC_ITER, wrap(d.iter, h0.untyped_data())},
      {DNNL_ARG_SRC_ITER_C, wrap(d.iter, c0.untyped_data())},
      {DNNL_ARG_WEIGHTS_LAYER, f.w_x.wanted},
      {DNNL_ARG_WEIGHTS_ITER, f.w_h.wanted},
      {DNNL_ARG_BIAS, wrap(d.bias, b.untyped_data())},
      {DNNL_ARG_DST_LAYER, wrap(d.y, y->untyped_data())},
      {DNNL_ARG_DST_ITER, wrap(d.iter, h_T->untyped_data())},
      {DNNL_ARG_DST_ITER_C, wrap(d.iter, c_T->untyped_data())},
      {DNNL_ARG_SCRATCHPAD, wrap(f.pd.scratchpad_desc(), scratchpad(f.pd.scratchpad_desc().get_size()))},
  };
  if (workspace) args.insert({DNNL_ARG_WORKSPACE, wrap(f.pd.workspace_desc(), workspace)});
  f.primitive.execute(stream(), args);
}

ffi::Error LstmForwardTraining(In x, In w_x, In w_h, In b, In h0, In c0, Out y, Out h_T, Out c_T,
                               ffi::ResultBuffer<ffi::U8> workspace) {
  Shape s = shape_of(x, w_h);
  return on_worker("onednn_lstm_forward_training", [&] {
    Forward& f = training_forward(s);
    if (workspace->size_bytes() != f.pd.workspace_desc().get_size())
      throw std::runtime_error("workspace of " + std::to_string(workspace->size_bytes()) + " bytes, expected " +
                               std::to_string(f.pd.workspace_desc().get_size()));
    run_forward(f, s, x, w_x, w_h, b, h0, c0, y, h_T, c_T, workspace->untyped_data());
  });
}

ffi::Error LstmForwardInference(In x, In w_x, In w_h, In b, In h0, In c0, Out y, Out h_T, Out c_T) {
  Shape s = shape_of(x, w_h);
  return on_worker("onednn_lstm_forward_inference", [&] {
    run_forward(inference_forward(s), s, x, w_x, w_h, b, h0, c0, y, h_T, c_T, nullptr);
  });
}

ffi::Error LstmBackward(In x, In w_x, In w_h, In b, In h0, In c0, In y, In h_T, In c_T,
                        ffi::Buffer<ffi::U8> workspace, In d_y, In d_h_T, In d_c_T, Out d_x, Out d_w_x, Out d_w_h,
                        Out d_b, Out d_h0, Out d_c0) {
  Shape s = shape_of(x, w_h);
  return on_worker("onednn_lstm_backward", [&] {
    Backward& bw = backward(s);
    Descs d(s);
    bw.w_x.Load(w_x.untyped_data());
    bw.w_h.Load(w_h.untyped_data());
    // The primitive adds its weight gradients to what the buffers hold.
    if (bw.dw_x.same) bw.dw_x.wanted.set_data_handle(d_w_x->untyped_data());
    if (bw.dw_h.same) bw.dw_h.wanted.set_data_handle(d_w_h->untyped_data());
    std::memset(bw.dw_x.wanted.get_data_handle(), 0, bw.dw_x.wanted.get_desc().get_size());
    std::memset(bw.dw_h.wanted.get_data_handle(), 0, bw.dw_h.wanted.get_desc().get_size());
    std::memset(d_b->untyped_data(), 0, d_b->size_bytes());
    bw.primitive.execute(
        stream(), {
                      {DNNL_ARG_SRC_LAYER, wrap(d.x, x.untyped_data())},
                      {DNNL_ARG_SRC_ITER, wrap(d.iter, h0.untyped_data())},
                      {DNNL_ARG_SRC_ITER_C, wrap(d.iter, c0.untyped_data())},
                      {DNNL_ARG_WEIGHTS_LAYER, bw.w_x.wanted},
                      {DNNL_ARG_WEIGHTS_ITER, bw.w_h.wanted},
                      {DNNL_ARG_BIAS, wrap(d.bias, b.untyped_data())},
                      {DNNL_ARG_DST_LAYER, wrap(d.y, y.untyped_data())},
                      {DNNL_ARG_DST_ITER, wrap(d.iter, h_T.untyped_data())},
                      {DNNL_ARG_DST_ITER_C, wrap(d.iter, c_T.untyped_data())},
                      {DNNL_ARG_WORKSPACE, wrap(bw.pd.workspace_desc(), workspace.untyped_data())},
                      {DNNL_ARG_DIFF_SRC_LAYER, wrap(d.x, d_x->untyped_data())},
                      {DNNL_ARG_DIFF_SRC_ITER, wrap(d.iter, d_h0->untyped_data())},
                      {DNNL_ARG_DIFF_SRC_ITER_C, wrap(d.iter, d_c0->untyped_data())},
                      {DNNL_ARG_DIFF_WEIGHTS_LAYER, bw.dw_x.wanted},
                      {DNNL_ARG_DIFF_WEIGHTS_ITER, bw.dw_h.wanted},
                      {DNNL_ARG_DIFF_BIAS, wrap(d.bias, d_b->untyped_data())},
                      {DNNL_ARG_DIFF_DST_LAYER, wrap(d.y, d_y.untyped_data())},
                      {DNNL_ARG_DIFF_DST_ITER, wrap(d.iter, d_h_T.untyped_data())},
                      {DNNL_ARG_DIFF_DST_ITER_C, wrap(d.iter, d_c_T.untyped_data())},
                      {DNNL_ARG_SCRATCHPAD,
                       wrap(bw.pd.scratchpad_desc(), scratchpad(bw.pd.scratchpad_desc().get_size()))},
                  });
    if (!bw.dw_x.same) bw.dw_x.Store(d_w_x->untyped_data());
    if (!bw.dw_h.same) bw.dw_h.Store(d_w_h->untyped_data());
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
                                  .Ret<ffi::Buffer<ffi::U8>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnLstmForwardInference, LstmForwardInference,
                              LstmInputs()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

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
                                  .Ret<ffi::Buffer<ffi::F32>>());

// The forward workspace's size in bytes for this shape (the Python side allocates it as an
// output of the training forward call). Returns -1 when oneDNN cannot make the primitive.
extern "C" int64_t onednn_lstm_workspace_bytes(int64_t T, int64_t N, int64_t C, int64_t H) {
  int64_t bytes = -1;
  worker().Run([&] {
    try {
      bytes = static_cast<int64_t>(training_forward(Shape{T, N, C, H}).pd.workspace_desc().get_size());
    } catch (const std::exception&) {
      bytes = -1;
    }
  });
  return bytes;
}
