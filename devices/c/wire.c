#include "wire.h"

#include <math.h>
#include <string.h>

/* Payloads are read here, not by msgpack-c's unpacker: it allocates a container's elements
 * when it reads the header (a 5-byte array header claims 4 billion of them) and nests only
 * 32 deep, where msgpack-python, which the Python device reads with, nests 1024 deep. So a
 * payload is walked once, checked as msgpack-python checks it, and the few fields a device
 * uses are read in place. */
#define MAX_NESTING 1024 /* containers inside containers: msgpack-python's StackError */

typedef struct {
    const uint8_t *p;
    size_t n, off;
} Scan;

/* One object as read in place: its type (msgpack-c's names), value, and where it lies. */
typedef struct {
    msgpack_object_type type;
    uint64_t u;       /* POSITIVE_INTEGER */
    double f;         /* FLOAT32/FLOAT64 */
    const uint8_t *ptr; /* STR/BIN bytes */
    size_t len;       /* STR/BIN bytes; ARRAY elements; MAP pairs */
    size_t start;     /* the offset of its first element (ARRAY, MAP) */
} Obj;

static int take(Scan *s, size_t k, const uint8_t **at) {
    if (s->n - s->off < k) return -1;
    *at = s->p + s->off;
    s->off += k;
    return 0;
}

static uint64_t be(const uint8_t *b, int k) {
    uint64_t v = 0;
    for (int i = 0; i < k; i++) v = (v << 8) | b[i];
    return v;
}

/* Python's strict UTF-8: no overlongs, no surrogates, nothing above U+10FFFF. */
static int valid_utf8(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t k;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) { k = 1; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { k = 2; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { k = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        if (n - i <= k) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += k + 1;
    }
    return 1;
}

/* A timestamp extension (type -1) as msgpack-python reads it, or refuses it. */
static int valid_timestamp(const uint8_t *d, size_t k) {
    if (k == 4) return 1;
    if (k == 8) return (be(d, 8) >> 34) < 1000000000u;
    if (k == 12) return be(d, 4) < 1000000000u;
    return 0;
}

/* Read one object at s->off, with everything inside it (checked, then skipped). */
static int scan(Scan *s, int depth, int is_key, Obj *o) {
    const uint8_t *b, *d;
    Obj inner;
    if (take(s, 1, &b) != 0) return -1;
    uint8_t c = b[0];
    size_t items = 0;
    int ext = 0, is_map = 0, fixed = -1;
    memset(o, 0, sizeof *o);
    o->type = MSGPACK_OBJECT_NIL;
    if (c <= 0x7f) { o->type = MSGPACK_OBJECT_POSITIVE_INTEGER; o->u = c; fixed = 0; }
    else if (c >= 0xe0) { o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER; fixed = 0; }
    else if (c <= 0x8f) { o->type = MSGPACK_OBJECT_MAP; o->len = c & 0x0f; }
    else if (c <= 0x9f) { o->type = MSGPACK_OBJECT_ARRAY; o->len = c & 0x0f; }
    else if (c <= 0xbf) { o->type = MSGPACK_OBJECT_STR; o->len = c & 0x1f; }
    else switch (c) {
        case 0xc0: fixed = 0; break;
        case 0xc2: case 0xc3: o->type = MSGPACK_OBJECT_BOOLEAN; fixed = 0; break;
        case 0xc4: case 0xc5: case 0xc6:
            if (take(s, 1u << (c - 0xc4), &d) != 0) return -1;
            o->type = MSGPACK_OBJECT_BIN; o->len = be(d, 1 << (c - 0xc4)); break;
        case 0xc7: case 0xc8: case 0xc9:
            if (take(s, 1u << (c - 0xc7), &d) != 0) return -1;
            o->type = MSGPACK_OBJECT_EXT; ext = 1; o->len = be(d, 1 << (c - 0xc7)); break;
        case 0xca: case 0xcb: {
            int k = c == 0xca ? 4 : 8;
            if (take(s, (size_t)k, &d) != 0) return -1;
            uint64_t bits = be(d, k);
            if (k == 4) {
                uint32_t u32 = (uint32_t)bits;
                float f;
                memcpy(&f, &u32, 4);
                o->f = f;
            } else {
                memcpy(&o->f, &bits, 8);
            }
            o->type = MSGPACK_OBJECT_FLOAT64;
            fixed = 0;
            break;
        }
        case 0xcc: case 0xcd: case 0xce: case 0xcf:
            if (take(s, 1u << (c - 0xcc), &d) != 0) return -1;
            o->type = MSGPACK_OBJECT_POSITIVE_INTEGER; o->u = be(d, 1 << (c - 0xcc)); fixed = 0;
            break;
        case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
            int k = 1 << (c - 0xd0);
            if (take(s, (size_t)k, &d) != 0) return -1;
            uint64_t u = be(d, k);
            int negative = (d[0] & 0x80) != 0; /* msgpack-python gives a positive int */
            o->type = negative ? MSGPACK_OBJECT_NEGATIVE_INTEGER : MSGPACK_OBJECT_POSITIVE_INTEGER;
            o->u = u;
            fixed = 0;
            break;
        }
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
            o->type = MSGPACK_OBJECT_EXT; ext = 1; o->len = (size_t)1 << (c - 0xd4); break;
        case 0xd9: case 0xda: case 0xdb:
            if (take(s, 1u << (c - 0xd9), &d) != 0) return -1;
            o->type = MSGPACK_OBJECT_STR; o->len = be(d, 1 << (c - 0xd9)); break;
        case 0xdc: case 0xdd:
            if (take(s, c == 0xdc ? 2 : 4, &d) != 0) return -1;
            o->type = MSGPACK_OBJECT_ARRAY; o->len = be(d, c == 0xdc ? 2 : 4); break;
        case 0xde: case 0xdf:
            if (take(s, c == 0xde ? 2 : 4, &d) != 0) return -1;
            o->type = MSGPACK_OBJECT_MAP; o->len = be(d, c == 0xde ? 2 : 4); break;
        default: return -1; /* 0xc1: never used */
    }
    int is_str = o->type == MSGPACK_OBJECT_STR, is_bin = o->type == MSGPACK_OBJECT_BIN;
    if (is_key && !is_str && !is_bin) return -1; /* msgpack-python's strict_map_key */
    if (fixed >= 0) return 0;
    if (is_str || is_bin) {
        if (take(s, o->len, &o->ptr) != 0) return -1;
        return is_str && !valid_utf8(o->ptr, o->len) ? -1 : 0;
    }
    if (ext) {
        const uint8_t *type;
        if (take(s, 1, &type) != 0 || take(s, o->len, &d) != 0) return -1;
        return (int8_t)type[0] == -1 && !valid_timestamp(d, o->len) ? -1 : 0;
    }
    is_map = o->type == MSGPACK_OBJECT_MAP;
    items = is_map ? 2 * o->len : o->len;
    if (depth >= MAX_NESTING || items > s->n - s->off) return -1; /* a byte per element */
    o->start = s->off;
    for (size_t i = 0; i < items; i++)
        if (scan(s, depth + 1, is_map && i % 2 == 0, &inner) != 0) return -1;
    return 0;
}

static int str_is(const Obj *o, const char *text) {
    size_t n = strlen(text);
    return o->type == MSGPACK_OBJECT_STR && o->len == n && memcmp(o->ptr, text, n) == 0;
}

/* The fields of the messages a device reads; of each, the last value (a Python dict keeps
 * the last of a repeated key), and whether any other key is there (pydantic's extra="forbid"
 * refuses it). */
enum { F_V, F_KIND, F_SAMPLE, F_T, F_SOURCES, F_TO, N_FIELDS };
static const char *const FIELD_NAMES[N_FIELDS] = {"v", "kind", "sample", "t", "sources", "to"};

typedef struct {
    Obj value[N_FIELDS];
    int has[N_FIELDS], other;
} Fields;

static int read_fields(const uint8_t *p, size_t n, const Obj *map, Fields *f) {
    Scan s = {p, n, map->start};
    memset(f, 0, sizeof *f);
    for (size_t i = 0; i < map->len; i++) {
        Obj key, value;
        if (scan(&s, 1, 1, &key) != 0 || scan(&s, 1, 0, &value) != 0) return -1;
        int j = 0;
        while (j < N_FIELDS && !str_is(&key, FIELD_NAMES[j])) j++;
        if (j == N_FIELDS) {
            f->other = 1;
        } else {
            f->value[j] = value;
            f->has[j] = 1;
        }
    }
    return 0;
}

static const Obj *field(const Fields *f, int which) {
    return f->has[which] ? &f->value[which] : NULL;
}

/* A `Sample`: an int, 0 <= k < 2**63 (msgpack's bool is no int). */
static int sample_of(const Obj *o, uint64_t *out) {
    if (o == NULL || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return -1;
    if (o->u >= (1ull << 63)) return -1;
    *out = o->u;
    return 0;
}

/* A `UnixTime`: an int or a float, finite, within 0 .. 1e11. */
static int time_of(const Obj *o, double *out) {
    double t;
    if (o == NULL) return -1;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) t = (double)o->u;
    else if (o->type == MSGPACK_OBJECT_FLOAT64) t = o->f;
    else return -1;
    if (!isfinite(t) || t < 0.0 || t > WIRE_MAX_TIME) return -1;
    *out = t;
    return 0;
}

int wire_is_role(const char *name, size_t len) {
    static const char *const plain[] = {"cloud", "aggregator"};
    for (int i = 0; i < 2; i++)
        if (len == strlen(plain[i]) && memcmp(name, plain[i], len) == 0) return 1;
    size_t prefix;
    if (len > 7 && memcmp(name, "device-", 7) == 0) prefix = 7;
    else if (len > 5 && memcmp(name, "edge-", 5) == 0) prefix = 5;
    else return 0;
    size_t digits = len - prefix;
    if (digits > 4 || (digits > 1 && name[prefix] == '0')) return 0;
    for (size_t i = prefix; i < len; i++)
        if (name[i] < '0' || name[i] > '9') return 0;
    return 1;
}

static const char *tick(const Fields *f, Message *out) {
    if (f->other || f->has[F_SOURCES] || f->has[F_TO] ||
        sample_of(field(f, F_SAMPLE), &out->sample) != 0 || time_of(field(f, F_T), &out->t) != 0)
        return R_BAD_TICK;
    out->kind = KIND_TICK;
    return NULL;
}

static const char *offload(const uint8_t *p, size_t n, const Fields *f, const char *me,
                           Message *out) {
    const Obj *sources = field(f, F_SOURCES), *to = field(f, F_TO);
    if (f->other || f->has[F_T] || sample_of(field(f, F_SAMPLE), &out->sample) != 0)
        return R_BAD_OFFLOAD;
    if (to == NULL || !(str_is(to, "edge") || str_is(to, "cloud"))) return R_BAD_OFFLOAD;
    out->to = str_is(to, "edge") ? "edge" : "cloud";
    if (sources == NULL || sources->type != MSGPACK_OBJECT_ARRAY ||
        sources->len > WIRE_MAX_SOURCES)
        return R_BAD_OFFLOAD;
    out->names_me = 0;
    Scan s = {p, n, sources->start};
    for (size_t i = 0; i < sources->len; i++) {
        Obj role;
        if (scan(&s, 2, 0, &role) != 0 || role.type != MSGPACK_OBJECT_STR ||
            role.len > WIRE_ROLE_CHARS || !wire_is_role((const char *)role.ptr, role.len))
            return R_BAD_OFFLOAD;
        out->names_me |= str_is(&role, me);
    }
    out->kind = KIND_OFFLOAD;
    return NULL;
}

const char *wire_decode(const uint8_t *payload, size_t len, const char *me, Message *out) {
    static const char *const kinds[] = {"status", "scores", "features", "job", "decision"};
    Obj root;
    Fields f;
    memset(out, 0, sizeof *out);
    if (len > WIRE_MAX_PAYLOAD) return R_TOO_BIG;
    Scan s = {payload, len, 0};
    if (scan(&s, 0, 0, &root) != 0 || s.off != len) return R_NOT_MSGPACK; /* trailing too */
    if (root.type != MSGPACK_OBJECT_MAP) return R_NOT_MAP;
    if (read_fields(payload, len, &root, &f) != 0) return R_NOT_MSGPACK;
    const Obj *v = field(&f, F_V), *kind = field(&f, F_KIND);
    if (v == NULL || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->u != WIRE_SCHEMA)
        return R_VERSION;
    if (kind != NULL && str_is(kind, "tick")) return tick(&f, out);
    if (kind != NULL && str_is(kind, "offload")) return offload(payload, len, &f, me, out);
    for (int i = 0; i < 5; i++)
        if (kind != NULL && str_is(kind, kinds[i])) {
            out->kind = KIND_OTHER;
            return NULL;
        }
    return R_KIND;
}

/* -- out -------------------------------------------------------------------------------- */

static void pack_str(msgpack_packer *pk, const char *text) {
    size_t n = strlen(text);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, text, n);
}

static void head(msgpack_packer *pk, int fields, const char *kind) {
    msgpack_pack_map(pk, (size_t)fields);
    pack_str(pk, "v");
    msgpack_pack_uint64(pk, WIRE_SCHEMA);
    pack_str(pk, "kind");
    pack_str(pk, kind);
}

void wire_scores(msgpack_sbuffer *out, uint64_t sample, const char *source, const float *scores,
                 int classes, double t0) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    head(&pk, 7, "scores");
    pack_str(&pk, "sample");
    msgpack_pack_uint64(&pk, sample);
    pack_str(&pk, "source");
    pack_str(&pk, source);
    pack_str(&pk, "scores");
    msgpack_pack_bin(&pk, 4 * (size_t)classes);
    for (int i = 0; i < classes; i++) { /* little-endian float32, whatever the host */
        uint32_t u;
        uint8_t b[4];
        memcpy(&u, &scores[i], 4);
        for (int j = 0; j < 4; j++) b[j] = (uint8_t)(u >> (8 * j));
        msgpack_pack_bin_body(&pk, b, 4);
    }
    pack_str(&pk, "t0");
    msgpack_pack_double(&pk, t0);
    pack_str(&pk, "received");
    msgpack_pack_map(&pk, 0);
}

void wire_features(msgpack_sbuffer *out, uint64_t sample, const char *source, const int shape[3],
                   const uint8_t *bits, size_t nbytes) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    head(&pk, 7, "features");
    pack_str(&pk, "sample");
    msgpack_pack_uint64(&pk, sample);
    pack_str(&pk, "source");
    pack_str(&pk, source);
    pack_str(&pk, "encoding");
    pack_str(&pk, "bits");
    pack_str(&pk, "shape");
    msgpack_pack_array(&pk, 3);
    for (int i = 0; i < 3; i++) msgpack_pack_uint64(&pk, (uint64_t)shape[i]);
    pack_str(&pk, "data");
    msgpack_pack_bin(&pk, nbytes);
    msgpack_pack_bin_body(&pk, bits, nbytes);
}

static void counts(msgpack_packer *pk, const Count *c, int n) {
    int shown = 0;
    for (int i = 0; i < n; i++) shown += c[i].value > 0;
    msgpack_pack_map(pk, (size_t)shown);
    for (int i = 0; i < n; i++)
        if (c[i].value > 0) {
            pack_str(pk, c[i].name);
            msgpack_pack_uint64(pk, c[i].value);
        }
}

void wire_status(msgpack_sbuffer *out, const char *role, const char *state, double t,
                 const char *instance, const Count *counters, int n_counters,
                 const Count *rejected, int n_rejected) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    head(&pk, 8, "status");
    pack_str(&pk, "role");
    pack_str(&pk, role);
    pack_str(&pk, "state");
    pack_str(&pk, state);
    pack_str(&pk, "t");
    msgpack_pack_double(&pk, t);
    pack_str(&pk, "instance");
    pack_str(&pk, instance);
    pack_str(&pk, "counters");
    counts(&pk, counters, n_counters);
    pack_str(&pk, "rejected");
    counts(&pk, rejected, n_rejected);
}
