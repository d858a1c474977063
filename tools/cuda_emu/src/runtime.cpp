// cuda_emu runtime: runs a grid of CUDA threads on the CPU, one ucontext fiber per thread.
//
// A worker (an OS thread) runs one block at a time. It resumes the block's runnable fibers one
// after another in the schedule's order (forward, reverse or seeded random); a fiber runs until it
// reaches __syncthreads, a warp collective, or its end, then switches back. When none is
// runnable the worker resolves what they wait for: a warp collective completes once every lane
// of its mask waits at one (the worker computes each lane's result); the block barrier releases
// once every thread waits at it. Anything else is a divergence that would hang or be undefined on
// a GPU (threads at different __syncthreads, a barrier some threads exited before, a mask naming
// an exited lane): the worker records it as the launch's error and abandons the block.
//
// Why fibers rather than one std::thread per CUDA thread: a 128-thread block would put 128 OS
// threads on 2 cores, each barrier costing 128 kernel wake-ups; fibers switch in user space, the
// interleaving is reproducible (a schedule is a seed), and a sanitizer still sees every CUDA
// thread as its own thread (TSan's fiber API below), so races need no lucky timing to show up.
//
// Built without -fsanitize=thread even in TSan mode (build.py): the scheduler's bookkeeping is
// not what is checked; the happens-before edges a GPU guarantees (barriers, __syncwarp, kernel
// boundaries) are declared to TSan explicitly.
#include "cuda_emu/core.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMU_ASAN 1
#endif
#if defined(CUDA_EMU_TSAN)
#include <sanitizer/tsan_interface.h>
#endif

// ---- context switch ------------------------------------------------------------------------------
// x86-64: save the callee-saved registers on the current stack, swap stack pointers, restore.
// ~20x cheaper than swapcontext, which also saves and restores the signal mask with a system
// call. Elsewhere: ucontext.
#if defined(__x86_64__)
extern "C" void cuda_emu_switch(void** save_sp, void* new_sp);
asm(R"(
  .text
  .globl cuda_emu_switch
  .type cuda_emu_switch, @function
cuda_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_emu_switch, .-cuda_emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");
#define CUDA_EMU_ASM_SWITCH 1
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace cuda_emu {
namespace {

// ---- settings (environment, or cuda_emu_configure) ---------------------------------------------
enum class Schedule { kForward, kReverse, kRandom };

struct Settings {
  Schedule schedule = Schedule::kForward;
  uint64_t seed = 0;
  int workers = 1;
  size_t smem_limit = 166912;  // 163 KiB: the most an sm_80 block may opt in to (sm_90: 227 KiB)
  size_t stack_bytes = 0;      // 0: by build (more under sanitizers)
};

Settings read_env() {
  Settings s;
  if (const char* v = std::getenv("PYNEURO_EMU_SCHEDULE")) {
    const std::string m(v);
    if (m == "reverse") s.schedule = Schedule::kReverse;
    else if (m.rfind("random", 0) == 0) {
      s.schedule = Schedule::kRandom;
      if (m.size() > 7) s.seed = std::strtoull(m.c_str() + 7, nullptr, 10);
    }
  }
  if (const char* v = std::getenv("PYNEURO_EMU_WORKERS")) s.workers = std::max(1, std::atoi(v));
  if (const char* v = std::getenv("PYNEURO_EMU_SMEM_LIMIT")) s.smem_limit = std::strtoull(v, nullptr, 10);
  if (const char* v = std::getenv("PYNEURO_EMU_STACK_KB")) s.stack_bytes = std::strtoull(v, nullptr, 10) << 10;
  return s;
}

Settings& settings() {
  static Settings s = read_env();
  return s;
}

size_t stack_bytes() {
  if (settings().stack_bytes) return settings().stack_bytes;
#if defined(CUDA_EMU_ASAN) || defined(CUDA_EMU_TSAN)
  return size_t(512) << 10;
#else
  return size_t(128) << 10;
#endif
}

// ---- the sticky error of the last launch -------------------------------------------------------
std::mutex g_error_mutex;
cudaError_t g_error = cudaSuccess;
std::string g_error_message;
std::atomic<long> g_launches{0}, g_blocks{0}, g_barriers{0}, g_warp_ops{0}, g_switches{0};

void record_error(cudaError_t err, const std::string& message) {
  std::lock_guard<std::mutex> lock(g_error_mutex);
  if (g_error == cudaSuccess) {  // keep the first: later ones are usually its consequences
    g_error = err;
    g_error_message = message;
  }
}

std::string where(const char* file, int line) {
  const char* slash = file ? std::strrchr(file, '/') : nullptr;
  return std::string(slash ? slash + 1 : (file ? file : "?")) + ":" + std::to_string(line);
}

std::string block_name() {
  return "block (" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
         std::to_string(blockIdx.z) + ")";
}

// ---- fibers ------------------------------------------------------------------------------------
enum class State { kRunnable, kAtBarrier, kAtWarp, kDone };

struct Fiber {
#if defined(CUDA_EMU_ASM_SWITCH)
  void* sp = nullptr;  // saved stack pointer while suspended
#else
  ucontext_t ctx;
#endif
  char* stack = nullptr;  // usable part, above a guard page
  uint3 tid{0, 0, 0};
  int lane = 0, warp = 0;
  State state = State::kRunnable;
  const char* file = nullptr;  // where it waits
  int line = 0;
  // a pending warp collective
  WarpOp op = kSyncWarp;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int arg = 0, width = 32;
  void* asan_fake_stack = nullptr;
  void* tsan_fiber = nullptr;
};

struct Worker {
#if defined(CUDA_EMU_ASM_SWITCH)
  void* sched_sp = nullptr;
#else
  ucontext_t sched_ctx;
#endif
  std::vector<Fiber> fibers;
  std::vector<char*> stacks;  // mmap'ed, reused across blocks and launches
  Fiber* current = nullptr;
  void (*body)(void*) = nullptr;
  void* body_ctx = nullptr;
  unsigned char* smem = nullptr;
  std::vector<unsigned char*> used_smem;  // TSan: freed only after the launch's last thread
  int barrier_gen = 0;
  std::vector<int> warp_gen;
  // Addresses TSan keys the block's happens-before edges on: 2 for the barrier, 2 per warp for
  // __syncwarp (alternating generations). A fresh allocation per block, freed after it, so that
  // no edge leads from one block's threads to the next block's (blocks are unordered).
  char* sync = nullptr;
  std::vector<void*> finished_tsan_fibers;
  size_t tsan_fiber_budget = 0;
  const void* asan_sched_bottom = nullptr;
  size_t asan_sched_size = 0;
  void* tsan_sched = nullptr;

  ~Worker() {
    for (char* s : stacks) munmap(s - getpagesize(), stack_bytes() + getpagesize());
  }
};

thread_local Worker* tl_worker = nullptr;
// Kernel boundaries: the host's work before a launch happens before its threads (start), and
// its threads happen before the host's work after it (end). Two objects: a thread that exits
// must not order itself before one that starts later in the same launch.
char g_launch_start, g_launch_end;

Fiber& current_fiber(const char* what) {
  if (tl_worker == nullptr || tl_worker->current == nullptr) {
    std::fprintf(stderr, "cuda_emu: %s called outside a kernel\n", what);
    std::abort();
  }
  return *tl_worker->current;
}

// Fiber -> scheduler. No TSan sync: a fiber's writes reach other fibers only through the edges
// the GPU guarantees.
void yield_to_scheduler(Fiber& f, bool finished) {
  Worker& w = *tl_worker;
#if defined(CUDA_EMU_TSAN)
  if (finished) __tsan_release(&g_launch_end);
  __tsan_switch_to_fiber(w.tsan_sched, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(CUDA_EMU_ASAN)
  __sanitizer_start_switch_fiber(finished ? nullptr : &f.asan_fake_stack, w.asan_sched_bottom,
                                 w.asan_sched_size);
#endif
#if defined(CUDA_EMU_ASM_SWITCH)
  cuda_emu_switch(&f.sp, w.sched_sp);
#else
  swapcontext(&f.ctx, &w.sched_ctx);
#endif
#if defined(CUDA_EMU_ASAN)
  __sanitizer_finish_switch_fiber(f.asan_fake_stack, nullptr, nullptr);
#endif
  (void)finished;
}

void fiber_main() {
  Worker& w = *tl_worker;
#if defined(CUDA_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &w.asan_sched_bottom, &w.asan_sched_size);
#endif
  Fiber& f = *w.current;
#if defined(CUDA_EMU_TSAN)
  __tsan_acquire(&g_launch_start);
#endif
  w.body(w.body_ctx);
  f.state = State::kDone;
  yield_to_scheduler(f, true);
  std::abort();  // a finished fiber is never resumed
}

// Scheduler -> fiber, with TSan sync: what the scheduler did (set up shared memory, the
// arguments) happens before the fiber runs.
void resume(Worker& w, Fiber& f) {
  w.current = &f;
  threadIdx = f.tid;
  g_switches.fetch_add(1, std::memory_order_relaxed);
#if defined(CUDA_EMU_TSAN)
  __tsan_switch_to_fiber(f.tsan_fiber, 0);
#endif
#if defined(CUDA_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, stack_bytes());
#endif
#if defined(CUDA_EMU_ASM_SWITCH)
  cuda_emu_switch(&w.sched_sp, f.sp);
#else
  swapcontext(&w.sched_ctx, &f.ctx);
#endif
#if defined(CUDA_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  w.current = nullptr;
}

char* new_stack() {
  const size_t page = getpagesize(), bytes = stack_bytes();
  void* p = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("cuda_emu: mmap of a fiber stack");
    std::abort();
  }
  mprotect(p, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
  return static_cast<char*>(p) + page;
}

// What the fibers of a stuck block wait at, for error messages.
std::string describe_waits(const std::vector<Fiber>& fibers) {
  std::map<std::string, int> count;
  for (const Fiber& f : fibers) {
    switch (f.state) {
      case State::kDone: count["exited"]++; break;
      case State::kAtBarrier: count["__syncthreads at " + where(f.file, f.line)]++; break;
      case State::kAtWarp: count["warp collective at " + where(f.file, f.line)]++; break;
      case State::kRunnable: count["running"]++; break;
    }
  }
  std::string s;
  for (const auto& [what, n] : count) s += (s.empty() ? "" : "; ") + std::to_string(n) + " threads " + what;
  return s;
}

// Source lane of lane l for a shuffle; -1 when the result is the caller's own value.
int shuffle_source(WarpOp op, int l, int arg, int width) {
  const int seg = l & ~(width - 1);
  int src = l;
  switch (op) {
    case kShflIdx: src = seg + (arg & (width - 1)); break;
    case kShflUp: src = l - arg; break;
    case kShflDown: src = l + arg; break;
    case kShflXor: src = l ^ arg; break;
    default: break;
  }
  return (src < seg || src >= seg + width) ? l : src;
}

// Completes the warp collectives whose lanes have all arrived. Returns whether any completed;
// sets *error on a divergence.
bool resolve_warps(Worker& w, int nthreads, std::string* error) {
  bool progress = false;
  const int nwarps = (nthreads + 31) / 32;
  for (int wp = 0; wp < nwarps; ++wp) {
    Fiber* lanes = &w.fibers[size_t(wp) * 32];
    const int nlanes = std::min(32, nthreads - wp * 32);
    const unsigned exists = nlanes == 32 ? 0xffffffffu : ((1u << nlanes) - 1);
    for (int leader = 0; leader < nlanes; ++leader) {
      Fiber& lf = lanes[leader];
      if (lf.state != State::kAtWarp) continue;
      const unsigned mask = lf.mask & exists;  // lanes past blockDim do not exist: not waited for
      if (!(lf.mask >> leader & 1u)) {
        *error = "lane " + std::to_string(leader) + " of warp " + std::to_string(wp) +
                 " called a warp collective at " + where(lf.file, lf.line) + " with mask " +
                 std::to_string(lf.mask) + " that does not include itself";
        return false;
      }
      bool ready = true;
      for (int l = 0; l < nlanes; ++l) {
        if (!(mask >> l & 1u)) continue;
        const Fiber& f = lanes[l];
        if (f.state == State::kAtWarp && (f.op != lf.op || f.mask != lf.mask)) {
          *error = "warp " + std::to_string(wp) + ": lanes " + std::to_string(leader) + " and " +
                   std::to_string(l) + " meet at different warp collectives (" + where(lf.file, lf.line) +
                   ", " + where(f.file, f.line) + ") or with different masks";
          return false;
        }
        if (f.state == State::kDone) {
          *error = "warp " + std::to_string(wp) + ": the mask of the warp collective at " +
                   where(lf.file, lf.line) + " names lane " + std::to_string(l) + ", which has exited";
          return false;
        }
        if (f.state != State::kAtWarp) ready = false;
      }
      if (!ready) continue;
      for (int l = 0; l < nlanes; ++l) {
        if (!(mask >> l & 1u)) continue;
        Fiber& f = lanes[l];
        switch (f.op) {
          case kShflIdx: case kShflUp: case kShflDown: case kShflXor: {
            if (f.width < 1 || f.width > 32 || (f.width & (f.width - 1))) {
              *error = "shuffle width " + std::to_string(f.width) + " at " + where(f.file, f.line) +
                       " is not a power of 2 in [1, 32]";
              return false;
            }
            const int src = shuffle_source(f.op, l, f.arg, f.width);
            if (!(mask >> src & 1u)) {
              *error = "warp " + std::to_string(wp) + ": lane " + std::to_string(l) + " shuffles from lane " +
                       std::to_string(src) + " at " + where(f.file, f.line) +
                       ", which is not in the mask (undefined on a GPU)";
              return false;
            }
            f.result = lanes[src].value;
            break;
          }
          case kBallot: case kAny: case kAll: {
            unsigned ballot = 0;
            for (int k = 0; k < nlanes; ++k)
              if ((mask >> k & 1u) && lanes[k].value) ballot |= 1u << k;
            f.result = f.op == kBallot ? ballot : f.op == kAny ? (ballot != 0) : (ballot == mask);
            break;
          }
          case kSyncWarp: f.result = 0; break;
        }
      }
      for (int l = 0; l < nlanes; ++l)
        if (mask >> l & 1u) lanes[l].state = State::kRunnable;
      if (lf.op == kSyncWarp) w.warp_gen[wp]++;
      g_warp_ops.fetch_add(1, std::memory_order_relaxed);
      progress = true;
    }
  }
  return progress;
}

// Runs one block to completion. Returns false (error recorded) when it had to be abandoned.
bool run_block(Worker& w, int nthreads, size_t smem, uint64_t block_seed) {
  const Settings& cfg = settings();
  const size_t nwarps = (nthreads + 31) / 32;
  w.fibers.assign(nthreads, Fiber{});
  while (w.stacks.size() < size_t(nthreads)) w.stacks.push_back(new_stack());
  w.warp_gen.assign(nwarps, 0);
  w.sync = static_cast<char*>(std::calloc(2 + 2 * nwarps, 1));
  w.barrier_gen = 0;
  // Shared memory is uninitialised on a GPU: NaN bytes make a read before a write visible.
  // Under TSan a block's buffer outlives the launch: freeing it here, with no happens-before
  // edge from the previous block's threads (deliberately, so that blocks race), would be a race.
#if defined(CUDA_EMU_TSAN)
  if (w.smem) w.used_smem.push_back(w.smem);
#else
  std::free(w.smem);
#endif
  w.smem = static_cast<unsigned char*>(std::malloc(smem ? smem : 1));
  std::memset(w.smem, 0xff, smem);
  for (int i = 0; i < nthreads; ++i) {
    Fiber& f = w.fibers[i];
    f.tid = uint3{unsigned(i % blockDim.x), unsigned(i / blockDim.x % blockDim.y),
                  unsigned(i / (blockDim.x * blockDim.y))};
    f.lane = i % 32;
    f.warp = i / 32;
    f.stack = w.stacks[i];
#if defined(CUDA_EMU_ASM_SWITCH)
    // A frame cuda_emu_switch can "return" into fiber_main from: six zeroed registers, then
    // fiber_main's address, then a null return address for fiber_main (which never returns),
    // aligned as after a call (rsp % 16 == 8 on entry).
    void** top = reinterpret_cast<void**>(f.stack + stack_bytes());  // 16-byte aligned
    top[-1] = nullptr;
    top[-2] = reinterpret_cast<void*>(&fiber_main);
    for (int r = 3; r <= 8; ++r) top[-r] = nullptr;
    f.sp = top - 8;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = stack_bytes();
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
#endif
#if defined(CUDA_EMU_TSAN)
    f.tsan_fiber = __tsan_create_fiber(0);
#endif
  }
  std::vector<int> order(nthreads);
  std::mt19937_64 rng(cfg.seed * 0x9e3779b97f4a7c15ull + block_seed);
  bool ok = true;
  std::string error;
  for (;;) {
    for (int i = 0; i < nthreads; ++i) order[i] = cfg.schedule == Schedule::kReverse ? nthreads - 1 - i : i;
    if (cfg.schedule == Schedule::kRandom) std::shuffle(order.begin(), order.end(), rng);
    for (int i : order)
      if (w.fibers[i].state == State::kRunnable) resume(w, w.fibers[i]);
    if (resolve_warps(w, nthreads, &error)) continue;
    if (!error.empty()) { ok = false; break; }
    int done = 0, at_barrier = 0;
    const Fiber* first = nullptr;
    bool same_site = true;
    for (const Fiber& f : w.fibers) {
      if (f.state == State::kDone) ++done;
      if (f.state != State::kAtBarrier) continue;
      ++at_barrier;
      if (first == nullptr) first = &f;
      else if (f.line != first->line || std::strcmp(f.file, first->file) != 0) same_site = false;
    }
    if (done == nthreads) break;
    if (at_barrier != nthreads || !same_site) {
      error = "threads of a block cannot meet: " + describe_waits(w.fibers) +
              " (divergent __syncthreads or warp collective: a hang or undefined behaviour on a GPU)";
      ok = false;
      break;
    }
    for (Fiber& f : w.fibers) f.state = State::kRunnable;
    w.barrier_gen++;
    g_barriers.fetch_add(1, std::memory_order_relaxed);
  }
#if defined(CUDA_EMU_TSAN)
  // Destroyed TSan fibers give their thread ids to new ones, and a reused id makes two blocks'
  // threads look like one thread: keep each launch's fibers until it ends, up to a bound (TSan
  // allows 8128 threads in all, shared by the workers); past it, races between blocks far apart
  // in the run can go unseen.
  for (Fiber& f : w.fibers) w.finished_tsan_fibers.push_back(f.tsan_fiber);
  if (w.finished_tsan_fibers.size() + nthreads > w.tsan_fiber_budget) {
    for (void* t : w.finished_tsan_fibers) __tsan_destroy_fiber(t);
    w.finished_tsan_fibers.clear();
  }
#endif
  std::free(w.sync);
  w.sync = nullptr;
  if (!ok) record_error(cudaErrorLaunchFailure, block_name() + ": " + error);
  return ok;
}

}  // namespace

// ---- entry points used by kernels --------------------------------------------------------------
void syncthreads(const char* file, int line) {
  Fiber& f = current_fiber("__syncthreads");
  Worker& w = *tl_worker;
  const int gen = w.barrier_gen;
  f.state = State::kAtBarrier;
  f.file = file;
  f.line = line;
#if defined(CUDA_EMU_TSAN)
  __tsan_release(&w.sync[gen & 1]);
#endif
  yield_to_scheduler(f, false);
#if defined(CUDA_EMU_TSAN)
  __tsan_acquire(&w.sync[gen & 1]);
#endif
  (void)gen;
}

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int arg, int width,
                         const char* file, int line) {
  Fiber& f = current_fiber("a warp collective");
  Worker& w = *tl_worker;
  f.state = State::kAtWarp;
  f.op = op;
  f.mask = mask;
  f.value = value;
  f.arg = arg;
  f.width = width;
  f.file = file;
  f.line = line;
  const int gen = w.warp_gen[f.warp];
  char* sync = &w.sync[2 + 2 * f.warp + (gen & 1)];
#if defined(CUDA_EMU_TSAN)
  if (op == kSyncWarp) __tsan_release(sync);  // __syncwarp orders memory; shuffles do not
#endif
  yield_to_scheduler(f, false);
#if defined(CUDA_EMU_TSAN)
  if (op == kSyncWarp) __tsan_acquire(sync);
#endif
  (void)sync;
  return f.result;
}

void* dynamic_smem_base() {
  current_fiber("extern __shared__ memory");
  return tl_worker->smem;
}

namespace {
std::mutex g_attr_mutex;
std::map<const void*, int> g_max_dynamic_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize
}  // namespace

size_t smem_limit() { return settings().smem_limit; }
// Read at every cooperative launch (not with the settings, once): a test narrows it around one call.
int cooperative_sms() {
  const char* v = std::getenv("PYNEURO_EMU_COOPERATIVE_SMS");
  const int n = v ? std::atoi(v) : 0;
  return n > 0 && n < kEmuMultiprocessors ? n : kEmuMultiprocessors;
}

size_t max_dynamic_smem(const void* kernel) {
  std::lock_guard<std::mutex> lock(g_attr_mutex);
  const auto it = g_max_dynamic_smem.find(kernel);
  return std::max<size_t>(48 << 10, it == g_max_dynamic_smem.end() ? 0 : size_t(it->second));
}

cudaError_t set_func_attribute(const void* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || size_t(value) > settings().smem_limit) {
      record_error(cudaErrorInvalidValue,
                   "cudaFuncSetAttribute(MaxDynamicSharedMemorySize, " + std::to_string(value) +
                       ") exceeds the " + std::to_string(settings().smem_limit) + " bytes a block may use");
      return cudaErrorInvalidValue;
    }
    std::lock_guard<std::mutex> lock(g_attr_mutex);
    g_max_dynamic_smem[kernel] = value;
  }
  return cudaSuccess;
}

cudaError_t check_launch(const void* kernel, dim3 grid, dim3 block, size_t smem) {
  std::string why;
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64)
    why = "block of " + std::to_string(threads) + " threads (1..1024, z <= 64)";
  else if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u)
    why = "grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," + std::to_string(grid.z) +
          ") outside x <= 2^31-1, y, z <= 65535";
  else {
    size_t allowed = 48 << 10;  // without the opt-in attribute
    {
      std::lock_guard<std::mutex> lock(g_attr_mutex);
      const auto it = g_max_dynamic_smem.find(kernel);
      if (it != g_max_dynamic_smem.end()) allowed = std::max<size_t>(allowed, it->second);
    }
    if (smem > allowed)
      why = std::to_string(smem) + " bytes of dynamic shared memory, more than the " + std::to_string(allowed) +
            " the kernel may use (cudaFuncSetAttribute raises the 48 KiB default)";
  }
  if (why.empty()) return cudaSuccess;
  record_error(cudaErrorInvalidConfiguration, "launch rejected: " + why);
  return cudaErrorInvalidConfiguration;
}

cudaError_t run_grid(dim3 grid, dim3 block, size_t smem, void (*body)(void*), void* ctx) {
  const Settings& cfg = settings();
  g_launches.fetch_add(1, std::memory_order_relaxed);
  const int nthreads = int(block.x * block.y * block.z);
  const int64_t nblocks = int64_t(grid.x) * grid.y * grid.z;
  // Block order: forward, reversed or shuffled like the threads (inter-block ordering bugs).
  std::vector<int64_t> order(nblocks);
  for (int64_t i = 0; i < nblocks; ++i) order[i] = cfg.schedule == Schedule::kReverse ? nblocks - 1 - i : i;
  if (cfg.schedule == Schedule::kRandom) {
    std::mt19937_64 rng(cfg.seed + 12345);
    std::shuffle(order.begin(), order.end(), rng);
  }
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  const int nworkers = int(std::min<int64_t>(cfg.workers, nblocks));
  std::mutex smem_mutex;
  std::vector<unsigned char*> smem_to_free;
#if defined(CUDA_EMU_TSAN)
  __tsan_release(&g_launch_start);
#endif
  auto work = [&] {
    Worker w;
    tl_worker = &w;
    w.body = body;
    w.body_ctx = ctx;
#if defined(CUDA_EMU_TSAN)
    w.tsan_sched = __tsan_get_current_fiber();
    w.tsan_fiber_budget = std::max<size_t>(2048, 7000 / std::max(1, nworkers));
#endif
    gridDim = grid;
    blockDim = block;
    for (int64_t k; !failed.load() && (k = next.fetch_add(1)) < nblocks;) {
      const int64_t b = order[k];
      blockIdx = uint3{unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / (int64_t(grid.x) * grid.y))};
      g_blocks.fetch_add(1, std::memory_order_relaxed);
      if (!run_block(w, nthreads, smem, uint64_t(b))) failed = true;
    }
#if defined(CUDA_EMU_TSAN)
    for (void* t : w.finished_tsan_fibers) __tsan_destroy_fiber(t);
#endif
    w.used_smem.push_back(w.smem);
    {
      std::lock_guard<std::mutex> lock(smem_mutex);
      smem_to_free.insert(smem_to_free.end(), w.used_smem.begin(), w.used_smem.end());
    }
    tl_worker = nullptr;
  };
  std::vector<std::thread> extra;
  for (int i = 1; i < nworkers; ++i) extra.emplace_back(work);
  work();
  for (std::thread& t : extra) t.join();
#if defined(CUDA_EMU_TSAN)
  __tsan_acquire(&g_launch_end);
#endif
  for (unsigned char* p : smem_to_free) std::free(p);
  return failed ? cudaErrorLaunchFailure : cudaSuccess;
}

}  // namespace cuda_emu

// ---- host runtime API --------------------------------------------------------------------------
using cuda_emu::g_error;
using cuda_emu::g_error_mutex;

cudaError_t cudaGetLastError() {
  std::lock_guard<std::mutex> lock(g_error_mutex);
  const cudaError_t e = g_error;
  g_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() {
  std::lock_guard<std::mutex> lock(g_error_mutex);
  return g_error;
}
const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorCooperativeLaunchTooLarge: return "cudaErrorCooperativeLaunchTooLarge";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t err) { return cudaGetErrorName(err); }

cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = std::malloc(bytes ? bytes : 1);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void* p) { std::free(p); return cudaSuccess; }
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) { std::memset(p, value, bytes); return cudaSuccess; }
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) { return cudaMemset(p, value, bytes); }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }  // launches are synchronous
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

// ---- C API for drivers (ctypes) ----------------------------------------------------------------
extern "C" {

// schedule: 0 forward, 1 reverse, 2 random with `seed`. workers >= 1. smem_limit 0: unchanged.
void cuda_emu_configure(int schedule, unsigned long long seed, int workers, unsigned long long smem_limit) {
  auto& s = cuda_emu::settings();
  s.schedule = schedule == 1 ? cuda_emu::Schedule::kReverse
               : schedule == 2 ? cuda_emu::Schedule::kRandom : cuda_emu::Schedule::kForward;
  s.seed = seed;
  s.workers = workers < 1 ? 1 : workers;
  if (smem_limit) s.smem_limit = smem_limit;
}

// The message of the first error since the last cuda_emu_clear_error (empty if none).
const char* cuda_emu_error_message() {
  std::lock_guard<std::mutex> lock(g_error_mutex);
  return cuda_emu::g_error_message.c_str();
}

void cuda_emu_clear_error() {
  std::lock_guard<std::mutex> lock(g_error_mutex);
  g_error = cudaSuccess;
  cuda_emu::g_error_message.clear();
}

// launches, blocks, block barriers, warp collectives, fiber resumes since the library loaded
void cuda_emu_stats(long long* out5) {
  out5[0] = cuda_emu::g_launches; out5[1] = cuda_emu::g_blocks; out5[2] = cuda_emu::g_barriers;
  out5[3] = cuda_emu::g_warp_ops; out5[4] = cuda_emu::g_switches;
}

}  // extern "C"

// The shims' fp16/bf16 conversions, for tests/cuda_emu/test_emulator_runtime.py.
#include "cuda_emu/fp_convert.h"
extern "C" {
void cuda_emu_float_to_half(const float* x, uint16_t* y, long long n) {
  for (long long i = 0; i < n; ++i) y[i] = cuda_emu::float_to_half_bits(x[i]);
}
void cuda_emu_half_to_float(const uint16_t* x, float* y, long long n) {
  for (long long i = 0; i < n; ++i) y[i] = cuda_emu::half_bits_to_float(x[i]);
}
void cuda_emu_float_to_bf16(const float* x, uint16_t* y, long long n) {
  for (long long i = 0; i < n; ++i) y[i] = cuda_emu::float_to_bf16_bits(x[i]);
}
void cuda_emu_bf16_to_float(const uint16_t* x, float* y, long long n) {
  for (long long i = 0; i < n; ++i) y[i] = cuda_emu::bf16_bits_to_float(x[i]);
}
}  // extern "C"
