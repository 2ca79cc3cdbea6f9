// Open MPI through dlopen: the handful of MPI calls salient makes, resolved at run time so that the
// binary needs no MPI to start. Handles follow Open MPI's ABI (MPI_COMM_WORLD is the address of
// ompi_mpi_comm_world, and so on), which every Open MPI 3.x-5.x library exports.
#define _GNU_SOURCE
#include "cmpi.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void *Handle;                 // MPI_Comm, MPI_Datatype, MPI_Op, MPI_Request: pointers in Open MPI
#define IN_PLACE ((void *)1)
#define STATUS_IGNORE ((void *)0)
#define THREAD_FUNNELED 1

static struct {
    void *lib;
    int active, rank, size;
    double timeout, seconds, bytes;
    Handle comm, f32, f64, byte, sum, request_null;
    int (*init_thread)(int *, char ***, int, int *);
    int (*comm_rank)(Handle, int *);
    int (*comm_size)(Handle, int *);
    int (*iallreduce)(const void *, void *, int, Handle, Handle, Handle, Handle *);
    int (*iallgather)(const void *, int, Handle, void *, int, Handle, Handle, Handle *);
    int (*ibcast)(void *, int, Handle, int, Handle, Handle *);
    int (*ibarrier)(Handle, Handle *);
    int (*test)(Handle *, int *, void *);
    int (*abort_)(Handle, int);
    int (*finalize)(void);
} M = {.timeout = 60};

#define SLOTS 512
static Handle requests[SLOTS];
static int in_use[SLOTS];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int sal_mpi_launched(void) {
    const char *s = getenv("OMPI_COMM_WORLD_SIZE");
    return s != NULL && atoi(s) > 1;
}

static int load(char *err, size_t errlen) {
    const char *names[] = {"libmpi.so.40", "libmpi.so", NULL};
    for (int i = 0; names[i] && !M.lib; i++) M.lib = dlopen(names[i], RTLD_NOW | RTLD_GLOBAL);
    if (!M.lib) {
        snprintf(err, errlen, "started by mpirun, but Open MPI's libmpi could not be loaded (%s); "
                 "install it (Debian: apt-get install openmpi-bin)", dlerror());
        return SAL_MPI_ERROR;
    }
#define SYM(field, name) do { *(void **)&M.field = dlsym(M.lib, name); \
        if (!M.field) { snprintf(err, errlen, "libmpi lacks %s: salient needs Open MPI 3 or later", name); \
                        return SAL_MPI_ERROR; } } while (0)
#define OBJ(field, name) do { M.field = dlsym(M.lib, name); \
        if (!M.field) { snprintf(err, errlen, "libmpi lacks %s: salient needs Open MPI (not MPICH)", name); \
                        return SAL_MPI_ERROR; } } while (0)
    SYM(init_thread, "MPI_Init_thread");
    SYM(comm_rank, "MPI_Comm_rank");
    SYM(comm_size, "MPI_Comm_size");
    SYM(iallreduce, "MPI_Iallreduce");
    SYM(iallgather, "MPI_Iallgather");
    SYM(ibcast, "MPI_Ibcast");
    SYM(ibarrier, "MPI_Ibarrier");
    SYM(test, "MPI_Test");
    SYM(abort_, "MPI_Abort");
    SYM(finalize, "MPI_Finalize");
    OBJ(comm, "ompi_mpi_comm_world");
    OBJ(f32, "ompi_mpi_float");
    OBJ(f64, "ompi_mpi_double");
    OBJ(byte, "ompi_mpi_byte");
    OBJ(sum, "ompi_mpi_op_sum");
    OBJ(request_null, "ompi_request_null");
    return SAL_MPI_OK;
}

int sal_mpi_init(int *rank, int *size, char *err, size_t errlen) {
    *rank = 0; *size = 1;
    if (M.active) { *rank = M.rank; *size = M.size; return SAL_MPI_OK; }
    if (load(err, errlen) != SAL_MPI_OK) return SAL_MPI_ERROR;
    int provided = 0;
    if (M.init_thread(NULL, NULL, THREAD_FUNNELED, &provided) != 0) {
        snprintf(err, errlen, "MPI_Init_thread failed");
        return SAL_MPI_ERROR;
    }
    M.comm_rank(M.comm, &M.rank);
    M.comm_size(M.comm, &M.size);
    M.active = 1;
    *rank = M.rank; *size = M.size;
    return SAL_MPI_OK;
}

void sal_mpi_rank_size(int *rank, int *size) {
    *rank = M.active ? M.rank : 0;
    *size = M.active ? M.size : 1;
}

void sal_mpi_set_timeout(double seconds) { M.timeout = seconds > 0 ? seconds : 60; }
double sal_mpi_seconds(void) { return M.seconds; }
double sal_mpi_bytes(void) { return M.bytes; }

static int slot(void) {
    for (int i = 0; i < SLOTS; i++) if (!in_use[i]) { in_use[i] = 1; requests[i] = M.request_null; return i; }
    return -1;
}

int sal_mpi_test(int id) {
    if (id < 0 || id >= SLOTS || !in_use[id]) return -1;
    int flag = 0;
    double t0 = now();
    if (M.test(&requests[id], &flag, STATUS_IGNORE) != 0) return -1;
    M.seconds += now() - t0;
    if (flag) in_use[id] = 0;
    return flag;
}

int sal_mpi_wait(int id) {
    if (id < 0 || id >= SLOTS || !in_use[id]) return SAL_MPI_ERROR;
    double t0 = now(), deadline = t0 + M.timeout;
    long polls = 0;
    for (;;) {
        int flag = 0;
        if (M.test(&requests[id], &flag, STATUS_IGNORE) != 0) { in_use[id] = 0; M.seconds += now() - t0; return SAL_MPI_ERROR; }
        if (flag) { in_use[id] = 0; M.seconds += now() - t0; return SAL_MPI_OK; }
        if (++polls > 2000) {                       // past the first few milliseconds: yield the core
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
            if (now() > deadline) { M.seconds += now() - t0; return SAL_MPI_TIMEOUT; }
        }
    }
}

static int finish(int rc, int id) { return rc != 0 ? (in_use[id] = 0, SAL_MPI_ERROR) : sal_mpi_wait(id); }

int sal_mpi_iallreduce_f32(float *buf, long count, int *request) {
    *request = -1;
    if (count > 0x7fffffffL) return SAL_MPI_ERROR;
    int id = slot();
    if (id < 0) return SAL_MPI_ERROR;
    M.bytes += 4.0 * (double)count;
    if (M.iallreduce(IN_PLACE, buf, (int)count, M.f32, M.sum, M.comm, &requests[id]) != 0) { in_use[id] = 0; return SAL_MPI_ERROR; }
    *request = id;
    return SAL_MPI_OK;
}

int sal_mpi_allreduce_f32(float *buf, long count) {
    int id;
    int rc = sal_mpi_iallreduce_f32(buf, count, &id);
    return rc != SAL_MPI_OK ? rc : sal_mpi_wait(id);
}

int sal_mpi_allreduce_f64(double *buf, long count) {
    if (count > 0x7fffffffL) return SAL_MPI_ERROR;
    int id = slot();
    if (id < 0) return SAL_MPI_ERROR;
    M.bytes += 8.0 * (double)count;
    return finish(M.iallreduce(IN_PLACE, buf, (int)count, M.f64, M.sum, M.comm, &requests[id]), id);
}

int sal_mpi_allgather_bytes(const void *send, long count, void *recv) {
    if (count > 0x7fffffffL) return SAL_MPI_ERROR;
    int id = slot();
    if (id < 0) return SAL_MPI_ERROR;
    M.bytes += (double)count;
    return finish(M.iallgather(send, (int)count, M.byte, recv, (int)count, M.byte, M.comm, &requests[id]), id);
}

int sal_mpi_allgather_f32(const float *send, long count, float *recv) {
    if (count > 0x7fffffffL) return SAL_MPI_ERROR;
    int id = slot();
    if (id < 0) return SAL_MPI_ERROR;
    M.bytes += 4.0 * (double)count;
    return finish(M.iallgather(send, (int)count, M.f32, recv, (int)count, M.f32, M.comm, &requests[id]), id);
}

int sal_mpi_bcast(void *buf, long bytes, int root) {
    if (bytes > 0x7fffffffL) return SAL_MPI_ERROR;
    int id = slot();
    if (id < 0) return SAL_MPI_ERROR;
    M.bytes += (double)bytes;
    return finish(M.ibcast(buf, (int)bytes, M.byte, root, M.comm, &requests[id]), id);
}

int sal_mpi_barrier(void) {
    int id = slot();
    if (id < 0) return SAL_MPI_ERROR;
    return finish(M.ibarrier(M.comm, &requests[id]), id);
}

void sal_mpi_abort(int code) {
    if (M.active) M.abort_(M.comm, code);
    exit(code);
}

void sal_mpi_finalize(void) {
    if (M.active) { M.finalize(); M.active = 0; }
}
