// SVD and QR for PiSSA / OLoRA init and SVD adapter combination, through LAPACK's Fortran
// interface in libopenblas (no extra package: libopenblas0 ships LAPACK). Column-major: a row-major
// [m, n] matrix is the column-major [n, m] matrix of its transpose.
#include <algorithm>
#include <string>
#include <vector>

#include "peft/peft_internal.h"

extern "C" {
void dgesdd_(const char* jobz, const int* m, const int* n, double* a, const int* lda, double* s,
             double* u, const int* ldu, double* vt, const int* ldvt, double* work,
             const int* lwork, int* iwork, int* info);
void dgeqrf_(const int* m, const int* n, double* a, const int* lda, double* tau, double* work,
             const int* lwork, int* info);
void dorgqr_(const int* m, const int* n, const int* k, double* a, const int* lda,
             const double* tau, double* work, const int* lwork, int* info);
}

namespace lorafit::peft::linalg {

void svd(const std::vector<double>& a, int64_t m64, int64_t n64, std::vector<double>& U,
         std::vector<double>& S, std::vector<double>& Vt) {
  const int m = static_cast<int>(m64), n = static_cast<int>(n64), k = std::min(m, n);
  if (m <= 0 || n <= 0 || a.size() != static_cast<size_t>(m) * n)
    fail("svd: bad matrix [" + std::to_string(m64) + ", " + std::to_string(n64) + "]");
  // Column-major X = aᵀ [n, m] = V S Uᵀ: LAPACK's "U" [n, k] is V (its bytes are Vt row-major
  // [k, n]) and its "VT" [k, m] is Uᵀ (bytes: U row-major [m, k]).
  std::vector<double> x(a);
  S.assign(k, 0.0);
  Vt.assign(static_cast<size_t>(k) * n, 0.0);
  U.assign(static_cast<size_t>(m) * k, 0.0);
  std::vector<int> iwork(8 * static_cast<size_t>(k));
  int info = 0, lwork = -1, ldx = n, ldu = n, ldvt = k;
  double q = 0.0;
  dgesdd_("S", &n, &m, x.data(), &ldx, S.data(), Vt.data(), &ldu, U.data(), &ldvt, &q, &lwork,
          iwork.data(), &info);
  lwork = static_cast<int>(q) + 1;
  std::vector<double> work(static_cast<size_t>(lwork));
  dgesdd_("S", &n, &m, x.data(), &ldx, S.data(), Vt.data(), &ldu, U.data(), &ldvt, work.data(),
          &lwork, iwork.data(), &info);
  if (info != 0) fail("svd: LAPACK dgesdd failed (info " + std::to_string(info) + ")");
}

void qr(const std::vector<double>& a, int64_t m64, int64_t n64, std::vector<double>& Q,
        std::vector<double>& R) {
  const int m = static_cast<int>(m64), n = static_cast<int>(n64), k = std::min(m, n);
  if (m <= 0 || n <= 0 || a.size() != static_cast<size_t>(m) * n)
    fail("qr: bad matrix [" + std::to_string(m64) + ", " + std::to_string(n64) + "]");
  // Column-major copy of a [m, n] (LAPACK factors a itself, not its transpose).
  std::vector<double> x(static_cast<size_t>(m) * n);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) x[i + static_cast<size_t>(j) * m] = a[static_cast<size_t>(i) * n + j];
  std::vector<double> tau(k);
  int info = 0, lwork = -1;
  double q = 0.0;
  dgeqrf_(&m, &n, x.data(), &m, tau.data(), &q, &lwork, &info);
  lwork = std::max(static_cast<int>(q) + 1, n);
  std::vector<double> work(static_cast<size_t>(lwork));
  dgeqrf_(&m, &n, x.data(), &m, tau.data(), work.data(), &lwork, &info);
  if (info != 0) fail("qr: LAPACK dgeqrf failed (info " + std::to_string(info) + ")");
  R.assign(static_cast<size_t>(k) * n, 0.0);
  for (int i = 0; i < k; ++i)
    for (int j = i; j < n; ++j) R[static_cast<size_t>(i) * n + j] = x[i + static_cast<size_t>(j) * m];
  lwork = -1;
  dorgqr_(&m, &k, &k, x.data(), &m, tau.data(), &q, &lwork, &info);
  lwork = std::max(static_cast<int>(q) + 1, k);
  work.assign(static_cast<size_t>(lwork), 0.0);
  dorgqr_(&m, &k, &k, x.data(), &m, tau.data(), work.data(), &lwork, &info);
  if (info != 0) fail("qr: LAPACK dorgqr failed (info " + std::to_string(info) + ")");
  Q.assign(static_cast<size_t>(m) * k, 0.0);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < k; ++j) Q[static_cast<size_t>(i) * k + j] = x[i + static_cast<size_t>(j) * m];
}

}  // namespace lorafit::peft::linalg
