/* The native kernels' own thread pool.
 *
 * Why not OpenMP: a decode step makes a few hundred parallel calls a few microseconds apart, so
 * the workers must be awake when a call comes. libgomp spins only while the process has no
 * more OpenMP threads than CPUs; the engine runs in its own thread, which gets a second OpenMP
 * team beside the main thread's, and from then on every parallel region waits for a sleeping
 * worker to be woken (~70 us on a 2-core VM, more than the kernel itself).
 *
 * This pool is one per process whatever thread calls it. A task is split into parts that the
 * caller and the workers claim from a shared counter, so a worker that is not running (another
 * process's thread, or torch's own OpenMP workers spinning on its core) delays nothing: the
 * caller takes the parts nobody has claimed. Workers spin for SPIN_SECONDS after their last
 * part, then sleep on a condition variable. Calls from two threads at once do not wait for
 * each other: the second runs its parts itself.
 *
 * Beside the pool, one background thread runs queued tasks one after another while the caller
 * goes on (`mrs_background`): repacking weights while Python builds the rest of a model.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#include "threads.h"

#define MAX_WORKERS 255
#define SPIN_SECONDS 0.0005

static struct {
    pthread_mutex_t lock, call_lock;
    pthread_cond_t wake;
    atomic_uint generation;   /* bumped for every task */
    atomic_ullong claim;      /* generation << 40 | parts << 20 | next unclaimed part */
    atomic_int done;          /* parts of the current task finished */
    atomic_int sleeping;
    mrs_task fn;
    void *ctx;
    int workers;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define PART_BITS 20
#define PART_MASK ((1ull << PART_BITS) - 1)
#define GENERATION_MASK ((1ull << 24) - 1)

/* Run unclaimed parts of task `generation` until none is left. The part count is read from
 * the same word as the claim, so a worker still on an older task cannot claim a part of a new
 * one; fn and ctx cannot change while a claimed part runs (the caller waits for it). */
static void run_parts(unsigned generation) {
    for (;;) {
        unsigned long long current = atomic_load(&pool.claim);
        const int parts = (int)((current >> PART_BITS) & PART_MASK);
        const int next = (int)(current & PART_MASK);
        if ((current >> (2 * PART_BITS)) != (generation & GENERATION_MASK) || next >= parts) return;
        if (!atomic_compare_exchange_weak(&pool.claim, &current, current + 1)) continue;
        pool.fn(pool.ctx, next, parts);
        atomic_fetch_add(&pool.done, 1);
    }
}

static void *worker(void *arg) {
    unsigned seen = (unsigned)(uintptr_t)arg;
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
        run_parts(now);
    }
    return 0;
}

static void start_workers(int wanted) {
    if (wanted > MAX_WORKERS) wanted = MAX_WORKERS;
    while (pool.workers < wanted) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int ok = pthread_create(&thread, &attr, worker,
                                      (void *)(uintptr_t)atomic_load(&pool.generation)) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) break;
        pool.workers++;
    }
}

void mrs_parallel(mrs_task fn, void *ctx, int parts) {
    if (parts > (int)PART_MASK) parts = (int)PART_MASK;
    if (parts <= 1 || pthread_mutex_trylock(&pool.call_lock) != 0) {
        for (int p = 0; p < (parts < 1 ? 1 : parts); p++) fn(ctx, p, parts < 1 ? 1 : parts);
        return;
    }
    start_workers(parts - 1);
    const unsigned generation = atomic_load(&pool.generation) + 1;
    pool.fn = fn;
    pool.ctx = ctx;
    atomic_store(&pool.done, 0);
    atomic_store(&pool.claim, ((generation & GENERATION_MASK) << (2 * PART_BITS))
                                  | ((unsigned long long)parts << PART_BITS));
    atomic_store(&pool.generation, generation);
    if (atomic_load(&pool.sleeping) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    run_parts(generation);
    while (atomic_load(&pool.done) < parts) cpu_relax();
    pthread_mutex_unlock(&pool.call_lock);
}

/* ---- the background thread: tasks run one after another, beside the caller -------------- */

typedef struct background_task {
    void (*fn)(void *);
    void *ctx;
    struct background_task *next;
} background_task;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t work, idle;
    background_task *head, *tail;
    int running, started;
} background = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER};

static void *background_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&background.lock);
    for (;;) {
        while (!background.head) pthread_cond_wait(&background.work, &background.lock);
        background_task *task = background.head;
        background.head = task->next;
        if (!background.head) background.tail = 0;
        background.running = 1;
        pthread_mutex_unlock(&background.lock);
        task->fn(task->ctx);
        free(task->ctx);
        free(task);
        pthread_mutex_lock(&background.lock);
        background.running = 0;
        if (!background.head) pthread_cond_broadcast(&background.idle);
    }
    return 0;
}

int mrs_background(void (*fn)(void *), void *ctx) {
    background_task *task = malloc(sizeof *task);
    if (!task) return -1;
    *task = (background_task){fn, ctx, 0};
    pthread_mutex_lock(&background.lock);
    if (!background.started) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        background.started = pthread_create(&thread, &attr, background_main, 0) == 0;
        pthread_attr_destroy(&attr);
        if (!background.started) {
            pthread_mutex_unlock(&background.lock);
            free(task);
            return -1;
        }
    }
    if (background.tail) background.tail->next = task;
    else background.head = task;
    background.tail = task;
    pthread_cond_signal(&background.work);
    pthread_mutex_unlock(&background.lock);
    return 0;
}

void mrs_background_wait(void) {
    pthread_mutex_lock(&background.lock);
    while (background.head || background.running) pthread_cond_wait(&background.idle, &background.lock);
    pthread_mutex_unlock(&background.lock);
}
