// The processes of a data-parallel run: rank, size, and the few collectives the trainer needs.
// With LORAFIT_MPI off, or a process not started by mpirun, world() is one process and every
// collective is the identity, so the rest of train/ needs no #ifdef.
#pragma once

#include <cstddef>
#include <string>

namespace lorafit::train {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Processes of this run on this machine (they share its cores).
  virtual int local_size() const = 0;
  // Sum of `n` floats over all ranks, in place. `what` names the operation in a timeout error.
  virtual void allreduce_sum(float* data, size_t n, const std::string& what) = 0;
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  virtual void barrier(const std::string& what) = 0;
  [[noreturn]] virtual void abort(int code) = 0;
  bool is_root() const { return rank() == 0; }
};

// The run's communicator (MPI_COMM_WORLD under mpirun), created on first use.
Communicator& world();

}  // namespace lorafit::train
