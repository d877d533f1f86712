/* The native kernels' own thread pool.
 *
 * Why not OpenMP: a decode step makes a few hundred parallel calls a few microseconds apart, so
 * the workers must be spinning when a call comes. libgomp spins only while the process has no
 * more OpenMP threads than CPUs; the engine runs in its own thread, which gets a second OpenMP
 * team beside the main thread's, and from then on every parallel region waits for a sleeping
 * worker to be woken (~70 us on a 2-core VM, more than the kernel itself). This pool is one per
 * process whatever thread calls it: workers spin for SPIN_SECONDS after their last task, then
 * sleep on a condition variable. The caller runs part 0 itself. Calls from two threads at once
 * do not wait for each other: the second one runs its parts itself, one after the other.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#include "threads.h"

#define MAX_WORKERS 255
#define SPIN_SECONDS 0.002

static struct {
    pthread_mutex_t lock, call_lock;
    pthread_cond_t wake;
    atomic_uint generation; /* bumped for every task */
    atomic_int remaining;   /* workers that have not finished the current task */
    atomic_int sleeping;
    mrs_task fn;
    void *ctx;
    int parts;
    int workers;
    pthread_t threads[MAX_WORKERS];
    unsigned first_generation[MAX_WORKERS + 1]; /* the generation before a worker's first task */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *worker(void *arg) {
    const int id = (int)(intptr_t)arg;
    unsigned seen = pool.first_generation[id];
    for (;;) {
        unsigned now;
        const double start = seconds();
        for (uint64_t spins = 1; (now = atomic_load(&pool.generation)) == seen; spins++) {
            if (spins % 256 == 0 && seconds() - start > SPIN_SECONDS) {
                pthread_mutex_lock(&pool.lock);
                atomic_fetch_add(&pool.sleeping, 1);
                while ((now = atomic_load(&pool.generation)) == seen)
                    pthread_cond_wait(&pool.wake, &pool.lock);
                atomic_fetch_sub(&pool.sleeping, 1);
                pthread_mutex_unlock(&pool.lock);
                break;
            }
            cpu_relax();
        }
        seen = now;
        if (id < pool.parts) pool.fn(pool.ctx, id, pool.parts);
        atomic_fetch_sub(&pool.remaining, 1);
    }
    return 0;
}

static void start_workers(int wanted) {
    if (wanted > MAX_WORKERS) wanted = MAX_WORKERS;
    while (pool.workers < wanted) {
        pool.first_generation[pool.workers + 1] = atomic_load(&pool.generation);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int ok = pthread_create(&pool.threads[pool.workers], &attr, worker,
                                (void *)(intptr_t)(pool.workers + 1)) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) break;
        pool.workers++;
    }
}

void mrs_parallel(mrs_task fn, void *ctx, int parts) {
    if (parts <= 1 || pthread_mutex_trylock(&pool.call_lock) != 0) {
        for (int t = 0; t < (parts < 1 ? 1 : parts); t++) fn(ctx, t, parts < 1 ? 1 : parts);
        return;
    }
    start_workers(parts - 1);
    if (parts > pool.workers + 1) parts = pool.workers + 1;
    pool.fn = fn;
    pool.ctx = ctx;
    pool.parts = parts;
    atomic_store(&pool.remaining, pool.workers);
    atomic_fetch_add(&pool.generation, 1);
    if (atomic_load(&pool.sleeping) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    fn(ctx, 0, parts);
    while (atomic_load(&pool.remaining) > 0) cpu_relax();
    pthread_mutex_unlock(&pool.call_lock);
}
