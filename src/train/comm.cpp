// Communicator implementations: one process, and MPI (built with -DLORAFIT_MPI=ON).
//
// Collectives under MPI are nonblocking calls polled against a deadline: a rank that dies is
// reported by mpirun at once, and a rank that hangs makes the others stop with an error after
// LORAFIT_MPI_TIMEOUT seconds (default 300) instead of waiting forever.
#include "comm.h"

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "lorafit/train.h"

#ifdef LORAFIT_HAVE_MPI
#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#endif

namespace lorafit::train {

namespace {

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_size() const override { return 1; }
  void allreduce_sum(float*, size_t, const std::string&) override {}
  void broadcast(void*, size_t, int) override {}
  void barrier(const std::string&) override {}
  [[noreturn]] void abort(int code) override { std::exit(code); }
};

#ifdef LORAFIT_HAVE_MPI
// Launched by mpirun (OpenMPI sets these); a plain `lorafit train` never initializes MPI.
bool launched_by_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr;
}

class MpiWorld final : public Communicator {
 public:
  MpiWorld() {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    MPI_Comm_size(local, &local_size_);
    MPI_Comm_free(&local);
    if (const char* t = std::getenv("LORAFIT_MPI_TIMEOUT")) timeout_s_ = std::atof(t);
    std::atexit([] {
      int fin = 0;
      MPI_Finalized(&fin);
      if (!fin) MPI_Finalize();
    });
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_size() const override { return local_size_; }
  void allreduce_sum(float* data, size_t n, const std::string& what) override {
    // Counts beyond INT_MAX floats (8 GiB) go in pieces.
    const size_t chunk = size_t{1} << 30;
    for (size_t off = 0; off < n; off += chunk) {
      const int c = static_cast<int>(std::min(chunk, n - off));
      MPI_Request req;
      MPI_Iallreduce(MPI_IN_PLACE, data + off, c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req);
      wait(req, what);
    }
  }
  void broadcast(void* data, size_t bytes, int root) override {
    MPI_Request req;
    MPI_Ibcast(data, static_cast<int>(bytes), MPI_BYTE, root, MPI_COMM_WORLD, &req);
    wait(req, "broadcast");
  }
  void barrier(const std::string& what) override {
    MPI_Request req;
    MPI_Ibarrier(MPI_COMM_WORLD, &req);
    wait(req, what);
  }
  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::exit(code);
  }

 private:
  void wait(MPI_Request& req, const std::string& what) {
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    int done = 0;
    for (int spins = 0;; ++spins) {
      MPI_Test(&req, &done, MPI_STATUS_IGNORE);
      if (done) return;
      // Spin briefly (a step's all-reduce is usually quick), then sleep between polls.
      if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(200));
      const double waited = std::chrono::duration<double>(clock::now() - t0).count();
      if (timeout_s_ > 0 && waited > timeout_s_) {
        std::fprintf(stderr,
                     "lorafit: rank %d of %d: %s did not complete within %.0f s (set by "
                     "LORAFIT_MPI_TIMEOUT): another rank died or hangs; stopping the job\n",
                     rank_, size_, what.c_str(), timeout_s_);
        MPI_Abort(MPI_COMM_WORLD, 3);
      }
    }
  }
  int rank_ = 0, size_ = 1, local_size_ = 1;
  double timeout_s_ = 300;
};
#endif

}  // namespace

Communicator& world() {
#ifdef LORAFIT_HAVE_MPI
  static std::unique_ptr<Communicator> w = launched_by_mpirun()
                                               ? std::unique_ptr<Communicator>(new MpiWorld())
                                               : std::unique_ptr<Communicator>(new SingleProcess());
#else
  static std::unique_ptr<Communicator> w(new SingleProcess());
#endif
  return *w;
}

int process_rank() {
  return world().rank();
}
int process_count() {
  return world().size();
}
void abort_all_processes(int code) {
  world().abort(code);
  std::exit(code);
}

}  // namespace lorafit::train
