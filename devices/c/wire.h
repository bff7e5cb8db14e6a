/* The wire of ddnn/live/wire.py, as much of it as a device reads and writes: Tick and Offload
 * messages in (validated as the Python device validates them, refused under the same
 * reasons), Scores, Features and Status out (the same msgpack maps, field for field).
 * The AsyncAPI document (`ddnn asyncapi`) is the contract. */
#ifndef DDNN_WIRE_H
#define DDNN_WIRE_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#define WIRE_SCHEMA 1
#define WIRE_MAX_PAYLOAD (1 << 20)              /* wire.py MAX_PAYLOAD */
#define WIRE_MAX_PACKET (WIRE_MAX_PAYLOAD + 65536) /* wire.py MAX_PACKET */
#define WIRE_MAX_SCORE 1e6                      /* wire.py MAX_SCORE */
#define WIRE_MAX_TIME 1e11                      /* wire.py UnixTime */
#define WIRE_MAX_SOURCES 4096                   /* Offload.sources */
#define WIRE_ROLE_CHARS 16                      /* RoleName */

/* The reasons a device refuses a message under (ddnn/live/wire.py, ddnn/live/service.py). */
#define R_TOO_BIG "payload over the size limit"
#define R_NOT_MSGPACK "not msgpack"
#define R_NOT_MAP "not a msgpack map"
#define R_VERSION "unsupported schema version"
#define R_KIND "unknown message kind"
#define R_BAD_TICK "bad tick message"
#define R_BAD_OFFLOAD "bad offload message"
#define R_OTHER_KIND "a message of another kind than its topic's"
#define R_OTHER_SENDER "a sender other than its topic's role"
#define R_STALE_TICK "a tick captured too far from now"

typedef enum { KIND_TICK, KIND_OFFLOAD, KIND_OTHER } Kind;

typedef struct {
    Kind kind;
    uint64_t sample;
    double t;         /* a tick's */
    const char *to;   /* an offload's: "edge" or "cloud" */
    int names_me;     /* an offload's: whether its sources hold the role given to wire_decode */
} Message;

/* Decode and validate one payload; NULL when it is a valid message, else the reason (one of
 * the R_ strings). A kind the device never reads (scores, status, ...) comes back as
 * KIND_OTHER, unvalidated: the topic check refuses it. */
const char *wire_decode(const uint8_t *payload, size_t len, const char *me, Message *out);

/* Whether `name` is a role in canonical form (ddnn/core/roles.py PATTERN). */
int wire_is_role(const char *name, size_t len);

typedef struct {
    const char *name;
    uint64_t value;
} Count;

void wire_scores(msgpack_sbuffer *out, uint64_t sample, const char *source, const float *scores,
                 int classes, double t0);
void wire_features(msgpack_sbuffer *out, uint64_t sample, const char *source, const int shape[3],
                   const uint8_t *bits, size_t nbytes);
void wire_status(msgpack_sbuffer *out, const char *role, const char *state, double t,
                 const char *instance, const Count *counters, int n_counters,
                 const Count *rejected, int n_rejected);

#endif
