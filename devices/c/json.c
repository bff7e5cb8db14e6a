/* A strict, small JSON reader: enough to take string fields out of one flat object, and to
 * refuse a file that is not JSON rather than guess at it. */
#include "json.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64

typedef struct {
    const char *p;
    int depth;
} Reader;

static void skip_space(Reader *r) {
    while (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r') r->p++;
}

static int hex4(const char *s, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* Append code point `cp` as UTF-8 to out[*n] (when out is not NULL and it fits). */
static int put_utf8(char *out, size_t size, size_t *n, unsigned cp) {
    char buf[4];
    size_t len;
    if (cp < 0x80) { buf[0] = (char)cp; len = 1; }
    else if (cp < 0x800) { buf[0] = (char)(0xC0 | (cp >> 6)); buf[1] = (char)(0x80 | (cp & 0x3F)); len = 2; }
    else if (cp < 0x10000) {
        buf[0] = (char)(0xE0 | (cp >> 12)); buf[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        buf[2] = (char)(0x80 | (cp & 0x3F)); len = 3;
    } else {
        buf[0] = (char)(0xF0 | (cp >> 18)); buf[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        buf[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); buf[3] = (char)(0x80 | (cp & 0x3F)); len = 4;
    }
    if (out != NULL) {
        if (*n + len >= size) return -1;
        memcpy(out + *n, buf, len);
    }
    *n += len;
    return 0;
}

/* A string at r->p (at its opening quote), decoded into out (NULL: only checked). */
static int read_string(Reader *r, char *out, size_t size) {
    size_t n = 0;
    if (*r->p != '"') return -1;
    r->p++;
    for (;;) {
        unsigned char c = (unsigned char)*r->p;
        if (c == '\0' || c < 0x20) return -1;
        r->p++;
        if (c == '"') break;
        if (c != '\\') {
            if (out != NULL) {
                if (n + 1 >= size) return -1;
                out[n] = (char)c;
            }
            n++;
            continue;
        }
        char e = *r->p++;
        unsigned cp;
        switch (e) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u':
                if (hex4(r->p, &cp) != 0) return -1;
                r->p += 4;
                if (cp >= 0xD800 && cp < 0xDC00) { /* a surrogate pair */
                    unsigned low;
                    if (r->p[0] != '\\' || r->p[1] != 'u' || hex4(r->p + 2, &low) != 0) return -1;
                    if (low < 0xDC00 || low > 0xDFFF) return -1;
                    r->p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                } else if (cp >= 0xDC00 && cp < 0xE000) {
                    return -1;
                }
                break;
            default: return -1;
        }
        if (put_utf8(out, size, &n, cp) != 0) return -1;
    }
    if (out != NULL) out[n] = '\0';
    return 0;
}

static int skip_value(Reader *r);

static int skip_number(Reader *r) {
    const char *start = r->p;
    if (*r->p == '-') r->p++;
    if (*r->p < '0' || *r->p > '9') return -1;
    while ((*r->p >= '0' && *r->p <= '9') || *r->p == '.' || *r->p == 'e' || *r->p == 'E' ||
           *r->p == '+' || *r->p == '-')
        r->p++;
    return r->p > start ? 0 : -1;
}

static int skip_container(Reader *r, char close) {
    if (++r->depth > MAX_DEPTH) return -1;
    r->p++;
    skip_space(r);
    if (*r->p == close) { r->p++; r->depth--; return 0; }
    for (;;) {
        skip_space(r);
        if (close == '}') {
            if (read_string(r, NULL, 0) != 0) return -1;
            skip_space(r);
            if (*r->p++ != ':') return -1;
        }
        if (skip_value(r) != 0) return -1;
        skip_space(r);
        if (*r->p == ',') { r->p++; continue; }
        if (*r->p == close) { r->p++; r->depth--; return 0; }
        return -1;
    }
}

static int skip_value(Reader *r) {
    skip_space(r);
    switch (*r->p) {
        case '"': return read_string(r, NULL, 0);
        case '{': return skip_container(r, '}');
        case '[': return skip_container(r, ']');
        case 't': if (strncmp(r->p, "true", 4) == 0) { r->p += 4; return 0; } return -1;
        case 'f': if (strncmp(r->p, "false", 5) == 0) { r->p += 5; return 0; } return -1;
        case 'n': if (strncmp(r->p, "null", 4) == 0) { r->p += 4; return 0; } return -1;
        default: return skip_number(r);
    }
}

int json_string_field(const char *text, const char *key, char *out, size_t size) {
    Reader r = {text, 0};
    char name[256];
    int found = 1;
    skip_space(&r);
    if (*r.p != '{') return -1;
    r.p++;
    skip_space(&r);
    if (*r.p == '}') { r.p++; goto end; }
    for (;;) {
        skip_space(&r);
        if (read_string(&r, name, sizeof name) != 0) return -1;
        skip_space(&r);
        if (*r.p++ != ':') return -1;
        skip_space(&r);
        if (strcmp(name, key) == 0 && *r.p == '"') {
            if (read_string(&r, out, size) != 0) return -1;
            found = 0; /* a later duplicate wins, as in Python's json */
        } else {
            if (strcmp(name, key) == 0) found = 1;
            if (skip_value(&r) != 0) return -1;
        }
        skip_space(&r);
        if (*r.p == ',') { r.p++; continue; }
        if (*r.p == '}') { r.p++; break; }
        return -1;
    }
end:
    skip_space(&r);
    return *r.p == '\0' ? found : -1;
}

char *read_text_file(const char *path, size_t limit) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    char *buf = malloc(limit + 1);
    if (buf == NULL) { fclose(f); return NULL; }
    size_t n = fread(buf, 1, limit + 1, f);
    int failed = ferror(f);
    fclose(f);
    if (failed || n > limit) {
        free(buf);
        errno = failed ? EIO : EFBIG;
        return NULL;
    }
    if (memchr(buf, '\0', n) != NULL) { /* not text */
        free(buf);
        errno = EINVAL;
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}
