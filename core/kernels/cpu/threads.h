/* The native kernels' thread pool (threads.c). */
#ifndef MRS_THREADS_H
#define MRS_THREADS_H

/* One part of a parallel task: part `part` of `parts`. */
typedef void (*mrs_task)(void *ctx, int part, int parts);

/* Runs fn(ctx, p, parts) for every p in 0..parts-1 on the pool's threads (p = 0 on the
 * caller) and returns when all are done. */
void mrs_parallel(mrs_task fn, void *ctx, int parts);

/* Queues fn(ctx) for the background thread, which runs the queued tasks in order and then
 * free()s ctx (allocated with malloc). Returns 0, or -1 if the task cannot be queued. */
int mrs_background(void (*fn)(void *), void *ctx);

/* Returns once every task queued so far has run. */
void mrs_background_wait(void);

#endif
