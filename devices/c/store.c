#include "store.h"

#include <stdlib.h>
#include <string.h>

static size_t slot_of(const Store *s, uint64_t sample) {
    uint64_t h = sample * 0x9E3779B97F4A7C15ull; /* Fibonacci hashing: ids come in runs */
    return (size_t)(h >> 32) % s->buckets;
}

int store_init(Store *s, size_t limit, size_t item_bytes) {
    memset(s, 0, sizeof *s);
    if (limit < 1) limit = 1;
    s->limit = limit;
    s->item_bytes = item_bytes;
    s->buckets = 2 * limit + 1;
    s->prev = malloc(limit * sizeof(int));
    s->next = malloc(limit * sizeof(int));
    s->chain = malloc(limit * sizeof(int));
    s->bucket = malloc(s->buckets * sizeof(int));
    s->sample = malloc(limit * sizeof(uint64_t));
    s->at = malloc(limit * sizeof(double));
    s->items = malloc(limit * (item_bytes ? item_bytes : 1));
    if (!s->prev || !s->next || !s->chain || !s->bucket || !s->sample || !s->at || !s->items) {
        store_free(s);
        return -1;
    }
    for (size_t b = 0; b < s->buckets; b++) s->bucket[b] = -1;
    for (size_t i = 0; i < limit; i++) s->next[i] = i + 1 < limit ? (int)(i + 1) : -1;
    s->free_list = 0;
    s->head = s->tail = -1;
    return 0;
}

void store_free(Store *s) {
    free(s->prev); free(s->next); free(s->chain); free(s->bucket);
    free(s->sample); free(s->at); free(s->items);
    memset(s, 0, sizeof *s);
}

static int find(const Store *s, uint64_t sample) {
    if (s->buckets == 0) return -1;
    for (int i = s->bucket[slot_of(s, sample)]; i >= 0; i = s->chain[i])
        if (s->sample[i] == sample) return i;
    return -1;
}

const unsigned char *store_get(const Store *s, uint64_t sample) {
    int i = find(s, sample);
    return i < 0 ? NULL : s->items + (size_t)i * s->item_bytes;
}

static void forget(Store *s, int i) {
    /* out of its hash chain */
    int *link = &s->bucket[slot_of(s, s->sample[i])];
    while (*link != i) link = &s->chain[*link];
    *link = s->chain[i];
    /* out of the order */
    if (s->prev[i] >= 0) s->next[s->prev[i]] = s->next[i]; else s->head = s->next[i];
    if (s->next[i] >= 0) s->prev[s->next[i]] = s->prev[i]; else s->tail = s->prev[i];
    s->next[i] = s->free_list;
    s->free_list = i;
    s->count--;
}

int store_put(Store *s, uint64_t sample, const unsigned char *item, double now) {
    int i = find(s, sample), dropped = 0;
    if (i < 0) {
        if (s->count == s->limit) {
            forget(s, s->head);
            dropped = 1;
        }
        i = s->free_list;
        s->free_list = s->next[i];
        s->sample[i] = sample;
        size_t b = slot_of(s, sample);
        s->chain[i] = s->bucket[b];
        s->bucket[b] = i;
        s->prev[i] = s->tail;
        s->next[i] = -1;
        if (s->tail >= 0) s->next[s->tail] = i; else s->head = i;
        s->tail = i;
        s->count++;
    }
    s->at[i] = now;
    memcpy(s->items + (size_t)i * s->item_bytes, item, s->item_bytes);
    return dropped;
}

int store_take(Store *s, uint64_t sample, unsigned char *out) {
    int i = find(s, sample);
    if (i < 0) return 0;
    memcpy(out, s->items + (size_t)i * s->item_bytes, s->item_bytes);
    forget(s, i);
    return 1;
}

int store_expire(Store *s, double now, double seconds) {
    int dropped = 0;
    while (s->head >= 0 && now - s->at[s->head] > seconds) {
        forget(s, s->head);
        dropped++;
    }
    return dropped;
}
