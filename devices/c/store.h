/* What a device keeps per sample, bounded: the feature bits of recent frames until the tier
 * above asks for them (ddnn/live/service.py `KeptMaps`: at most `limit`, each at most a number
 * of seconds) and the scores of recent samples, to answer a repeated tick without running the
 * slice again (`Recent`). Insertion order is kept; putting a sample already kept replaces its
 * value and time in place, as an OrderedDict assignment does. Memory is allocated once. */
#ifndef DDNN_STORE_H
#define DDNN_STORE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t limit, item_bytes, count;
    int head, tail, free_list;
    int *prev, *next, *chain, *bucket;
    size_t buckets;
    uint64_t *sample;
    double *at;
    unsigned char *items;
} Store;

/* 0, or -1 when the memory cannot be had. */
int store_init(Store *s, size_t limit, size_t item_bytes);
void store_free(Store *s);
/* The kept value of `sample`, or NULL. */
const unsigned char *store_get(const Store *s, uint64_t sample);
/* Keep `item` for `sample` at time `now`; returns how many older entries were dropped to
 * stay within the limit (0 or 1). */
int store_put(Store *s, uint64_t sample, const unsigned char *item, double now);
/* Copy `sample`'s value into `out` and forget it: 1, or 0 when it is not kept. */
int store_take(Store *s, uint64_t sample, unsigned char *out);
/* Drop the entries older than `seconds` at `now`, oldest first; returns how many. */
int store_expire(Store *s, double now, double seconds);

#endif
