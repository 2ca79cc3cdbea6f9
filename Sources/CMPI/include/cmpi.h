// CMPI: Open MPI loaded at run time (dlopen), for salient's data-parallel training over several
// machines. Internal to salient; no stable API. A binary built with this target still runs on a
// machine without MPI installed: nothing is loaded unless the process was started by Open MPI's
// mpirun (OMPI_COMM_WORLD_SIZE in the environment).
//
// Every collective is started non-blocking and completed by polling with a deadline, so that a
// peer that died or a network that dropped turns into an error return (SAL_MPI_TIMEOUT) after
// `timeout_s` seconds instead of a hang. The caller reports it and calls sal_mpi_abort.
#ifndef SALIENT_CMPI_H
#define SALIENT_CMPI_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { SAL_MPI_OK = 0, SAL_MPI_ERROR = 1, SAL_MPI_TIMEOUT = 2 };

/// 1 when the environment says this process was started by Open MPI's mpirun (several ranks).
int sal_mpi_launched(void);

/// Loads libmpi and initialises it (MPI_THREAD_FUNNELED: only the calling thread makes MPI calls).
/// Fills rank and size. On failure returns SAL_MPI_ERROR with a message in err.
int sal_mpi_init(int *rank, int *size, char *err, size_t errlen);

/// The per-collective deadline in seconds (default 60).
void sal_mpi_set_timeout(double seconds);
/// This process's rank and the job's size after sal_mpi_init (0 and 1 before it).
void sal_mpi_rank_size(int *rank, int *size);

/// In-place sums over all ranks.
int sal_mpi_allreduce_f32(float *buf, long count);
int sal_mpi_allreduce_f64(double *buf, long count);

/// A started in-place float sum: complete it with sal_mpi_wait, or poll with sal_mpi_test.
/// Returns SAL_MPI_OK and a request id >= 0, or an error.
int sal_mpi_iallreduce_f32(float *buf, long count, int *request);
/// 1 when the request completed (it is then released), 0 when not yet, -1 on error.
int sal_mpi_test(int request);
/// Completes a request within the deadline.
int sal_mpi_wait(int request);

/// recv[r * count ..< (r + 1) * count] = rank r's send (count floats each).
int sal_mpi_allgather_f32(const float *send, long count, float *recv);
/// The same for bytes.
int sal_mpi_allgather_bytes(const void *send, long count, void *recv);
/// Root's bytes to every rank.
int sal_mpi_bcast(void *buf, long bytes, int root);
int sal_mpi_barrier(void);

/// Ends every rank of the job (mpirun reports it).
void sal_mpi_abort(int code);
void sal_mpi_finalize(void);

/// Seconds spent inside collectives (waiting included) and bytes this rank handed to them, since start.
double sal_mpi_seconds(void);
double sal_mpi_bytes(void);

#ifdef __cplusplus
}
#endif
#endif
