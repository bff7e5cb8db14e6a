/* A DDNN end device in C: the generated slice (ddnn_slice.h, `ddnn codegen`) behind the same
 * wire as the Python device (devices/service.py on ddnn/live/service.py): it logs in with its
 * role's credentials file, announces itself with a retained status and a last will, runs the
 * slice on frame k % N of a raw frame file when the tick for sample k comes, publishes the
 * class scores, keeps the bit-packed feature map for a while and publishes it when an offload
 * request names this device. A repeated tick gets the same scores again, without running the
 * slice. Every message is validated; a bad one is counted under its reason in the status
 * (`rejected`), and nothing a peer sends makes memory grow: all of it is allocated at start. */
#include <errno.h>
#include <math.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ddnn_slice.h"
#include "json.h"
#include "options.h"
#include "store.h"
#include "wire.h"

#ifndef DDNN_SLICE_FEATURE_SHAPE
#error "ddnn_slice.h does not say its feature map's shape: generate it again with `ddnn codegen`"
#endif

/* The tier whose offload requests a device reads (ddnn/core/roles.py `fed_tier`): the edge
 * of its group in a model with edges, else the cloud; "" for a model with a local exit alone,
 * whose devices are never asked for their maps. */
#ifndef DDNN_FED_TIER
#error "which tier this device feeds is not known: make FED_TIER=cloud (or edge, or none)"
#endif

#define KEEP_MAX 1024         /* feature maps and answers kept (devices/service.py keep_max) */
#define STATUS_EVERY 2.0      /* seconds between statuses (ddnn/live/service.py) */
#define WALL_SKEW 30.0        /* a tick further than this from now is refused */
#define KEEPALIVE 5           /* seconds (ddnn/live/mqtt/settings.py) */
#define SESSION_EXPIRY 60     /* seconds, MQTT 5 (ddnn/live/mqtt/client.py) */
#define RECEIVE_MAXIMUM 512   /* QoS 1 messages in flight to this client, MQTT 5 */
#define LOUD_REPEATS 5        /* warnings per reason, then debug */
#define CLOSE_SECONDS 2.0     /* for the goodbye: offline status acknowledged, unsubscribed */
#define MIN_RATE 10.0         /* ddnn/live/rates.py */
#define PER_FRAME 4.0
#define INTERNAL "an error the service survived (a bug: see the log)"
#define NO_FRAME "a tick for a frame the source does not have"
#define OVER_RATE "over its account's rate"

enum { L_DEBUG, L_INFO, L_WARNING, L_ERROR };
enum { C_RECEIVED, C_FRAMES, C_SENT_SCORES, C_SENT_FEATURES, C_FEATURES_SENT,
       C_FEATURES_EXPIRED, C_FEATURES_DROPPED, C_TICK_REPEATS, C_PUBLISH_FAILED,
       C_PUBLISH_DENIED, C_RATE_DROPPED, N_COUNTERS };
static const char *const COUNTER_NAMES[N_COUNTERS] = {
    "received", "frames", "sent_scores", "sent_features", "features_sent",
    "features_expired", "features_dropped", "tick_repeats", "publish_failed", "publish_denied",
    "rate_dropped"};
static const char *const REASONS[] = {
    R_TOO_BIG, R_NOT_MSGPACK, R_NOT_MAP, R_VERSION, R_KIND, R_BAD_TICK, R_BAD_OFFLOAD,
    R_OTHER_KIND, R_OTHER_SENDER, R_STALE_TICK, NO_FRAME, INTERNAL};
#define N_REASONS ((int)(sizeof REASONS / sizeof REASONS[0]))
enum { T_TICK, T_OFFLOAD, N_TOPICS }; /* what a device subscribes to (ddnn/live/protocol.py) */

typedef struct {
    double tokens, at;
    uint64_t dropped;
    char reason[96];
} Bucket;

typedef struct {
    Options opt;
    char role[32], instance[160], root[512];
    char topics[N_TOPICS][600], status_topic[600], scores_topic[600], features_topic[600];
    const char *fed; /* the tier above: "cloud" or "edge" */
    int feature_shape[3]; /* (F, h, w), for the Features message */
    int n_topics; /* the tick topic, and the offload topic of the tier fed if there is one */
    int protocol, log_level, online, refused, subacks, sub_mid[N_TOPICS], connected;
    int close_mid, closing_acked, unsub_acked, unsub_mid;
    uint8_t *frames;
    size_t n_frames;
    Store kept, answered;
    uint64_t counters[N_COUNTERS], rejected[N_REASONS];
    char why[256]; /* libmosquitto's last error line (a TLS failure's reason is only there) */
    Bucket rates[N_TOPICS];
    double rate, burst, started;
    msgpack_sbuffer buf;
    struct mosquitto *mosq;
} Device;

static volatile sig_atomic_t stopping = 0;
static Device *the_device; /* for log lines */

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void say(int level, const char *fmt, ...) {
    static const char *const names[] = {"DEBUG", "INFO", "WARNING", "ERROR"};
    if (the_device != NULL && level < the_device->log_level) return;
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
    fprintf(stderr, "%s ddnn.%s %s ", stamp, the_device ? the_device->role : "device",
            names[level]);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void on_signal(int signum) {
    (void)signum;
    stopping = 1;
}

/* -- set-up: what the device refuses before it connects ----------------------------------- */

static int check_name(const char *what, const char *value) {
    if (*value == '\0' || strlen(value) > 250 || strpbrk(value, "/+#") != NULL) goto bad;
    for (const char *c = value; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) goto bad;
    return 0;
bad:
    fprintf(stderr, "error: %s '%s' cannot be part of an MQTT topic\n", what, value);
    return -1;
}

/* The frame file: N frames of DDNN_SLICE_PIXELS bytes each, read whole. */
static int load_frames(Device *d) {
    char path[4096];
    const char *spec = d->opt.source;
    if (strncmp(spec, "frames:", 7) == 0) spec += 7;
    const char *mark = strstr(spec, "{device}");
    if (mark != NULL)
        snprintf(path, sizeof path, "%.*s%ld%s", (int)(mark - spec), spec, d->opt.id, mark + 8);
    else
        snprintf(path, sizeof path, "%s", spec);
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (f == NULL || fstat(fileno(f), &st) != 0) {
        fprintf(stderr, "error: frame file %s cannot be read: %s\n", path, strerror(errno));
        if (f) fclose(f);
        return -1;
    }
    size_t size = (size_t)st.st_size;
    if (size == 0 || size % DDNN_SLICE_PIXELS != 0) {
        fprintf(stderr,
                "error: frame file %s holds %zu bytes: not a whole number of frames of %d bytes "
                "(uint8 (C, H, W) = (%d, %d, %d), as `ddnn device-frames` writes them)\n",
                path, size, DDNN_SLICE_PIXELS, DDNN_SLICE_CHANNELS, DDNN_SLICE_HEIGHT,
                DDNN_SLICE_WIDTH);
        fclose(f);
        return -1;
    }
    d->frames = malloc(size);
    if (d->frames == NULL || fread(d->frames, 1, size, f) != size) {
        fprintf(stderr, "error: frame file %s cannot be read whole\n", path);
        fclose(f);
        return -1;
    }
    fclose(f);
    d->n_frames = size / DDNN_SLICE_PIXELS;
    say(L_INFO, "frames: %s (%zu frames)", path, d->n_frames);
    return 0;
}

/* The export's manifest must be the one the slice was generated from. */
static int check_manifest(const Device *d) {
    char path[4096], version[256];
    snprintf(path, sizeof path, "%s/manifest.json", d->opt.artifacts);
    char *text = read_text_file(path, 64u << 20);
    if (text == NULL) {
        fprintf(stderr, "error: %s cannot be read (%s): not a `ddnn export` directory\n", path,
                strerror(errno));
        return -1;
    }
    int found = json_string_field(text, "model_version", version, sizeof version);
    free(text);
    if (found != 0) {
        fprintf(stderr, "error: %s is not a manifest with a model_version\n", path);
        return -1;
    }
    if (strcmp(version, DDNN_SLICE_MODEL_VERSION) != 0) {
        fprintf(stderr,
                "error: %s is model version %s, but this device's slice was generated from "
                "model version %s: run `ddnn codegen` on this export and build again\n",
                d->opt.artifacts, version, DDNN_SLICE_MODEL_VERSION);
        return -1;
    }
    return 0;
}

/* The credentials as the Python device takes them (ddnn/live/service_cli.py
 * `ServiceSetup.login`, ddnn/live/access.py `credentials_for`): --username first, else
 * --credentials, else the export's file for this role and deployment, else anonymous.
 * A file of another role, deployment or model version is refused. */
static int login(Device *d, char *user, size_t user_size, char *password, size_t pw_size) {
    char path[4096], account[512], deployment[256], version[256];
    const char *file = d->opt.credentials;
    user[0] = password[0] = '\0';
    if (d->opt.username != NULL) {
        snprintf(user, user_size, "%s", d->opt.username);
        snprintf(password, pw_size, "%s", d->opt.password ? d->opt.password : "");
        return 0;
    }
    if (file == NULL && d->opt.artifacts != NULL) {
        snprintf(path, sizeof path, "%s/access/%s/%s.json", d->opt.artifacts, d->opt.deployment,
                 d->role);
        if (access(path, F_OK) != 0) return 0; /* no accounts made: anonymous */
        file = path;
    }
    if (file == NULL) return 0;
    char *text = read_text_file(file, 1u << 20);
    if (text == NULL) {
        fprintf(stderr, "error: cannot read %s: %s\n", file, strerror(errno));
        return -1;
    }
    const char *fields[] = {"username", "password", "deployment", "model_version"};
    char *into[] = {user, password, deployment, version};
    size_t sizes[] = {user_size, pw_size, sizeof deployment, sizeof version};
    for (int i = 0; i < 4; i++) {
        int rc = json_string_field(text, fields[i], into[i], sizes[i]);
        if (rc != 0) {
            fprintf(stderr, "error: credentials file %s: %s\n", file,
                    rc < 0 ? "not JSON" : "no string field");
            if (rc > 0) fprintf(stderr, "  (missing: %s)\n", fields[i]);
            free(text);
            return -1;
        }
    }
    free(text);
    snprintf(account, sizeof account, "%s/%s", d->opt.deployment, d->role);
    if (strcmp(user, account) != 0) {
        fprintf(stderr,
                "error: %s holds the account '%s' of deployment '%s', not '%s' of '%s'\n", file,
                user, deployment, d->role, d->opt.deployment);
        return -1;
    }
    if (strcmp(version, DDNN_SLICE_MODEL_VERSION) != 0) {
        fprintf(stderr,
                "error: %s is for model version %s of deployment '%s', not %s of '%s': run "
                "`ddnn credentials` again\n",
                file, version, deployment, DDNN_SLICE_MODEL_VERSION, d->opt.deployment);
        return -1;
    }
    say(L_INFO, "logging in as %s", user);
    return 0;
}

/* mqtt[s]://HOST[:PORT] */
static int parse_url(const char *url, char *host, size_t size, int *port, int *tls) {
    const char *rest;
    if (strncmp(url, "mqtt://", 7) == 0) { rest = url + 7; *tls = 0; *port = 1883; }
    else if (strncmp(url, "mqtts://", 8) == 0) { rest = url + 8; *tls = 1; *port = 8883; }
    else goto bad;
    const char *end;
    if (*rest == '[') { /* an IPv6 address */
        end = strchr(rest, ']');
        if (end == NULL) goto bad;
        rest++;
    } else {
        end = rest + strcspn(rest, ":/");
    }
    size_t n = (size_t)(end - rest);
    if (n == 0 || n >= size || memchr(rest, '@', n) != NULL) goto bad;
    memcpy(host, rest, n);
    host[n] = '\0';
    if (*end == ']') end++;
    if (*end == ':') {
        char *stop;
        long p = strtol(end + 1, &stop, 10);
        if (p < 1 || p > 65535 || (*stop != '\0' && strcmp(stop, "/") != 0)) goto bad;
        *port = (int)p;
    } else if (*end != '\0' && strcmp(end, "/") != 0) {
        goto bad;
    }
    return 0;
bad:
    fprintf(stderr, "error: broker URL '%s' must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]\n",
            url);
    return -1;
}

/* -- counting --------------------------------------------------------------------------- */

static void reject(Device *d, const char *reason, const char *detail) {
    int i = 0;
    while (i < N_REASONS - 1 && strcmp(REASONS[i], reason) != 0) i++;
    uint64_t n = ++d->rejected[i];
    say(n <= LOUD_REPEATS ? L_WARNING : L_DEBUG, "rejected a message: %s: %s (%llu so far)",
        REASONS[i], detail, (unsigned long long)n);
}

/* A token bucket per topic read (ddnn/live/rates.py): 1 when the message may go on. */
static int admit(Device *d, int topic) {
    if (d->rate <= 0) return 1;
    Bucket *b = &d->rates[topic];
    double now = mono();
    b->tokens += (now - b->at) * d->rate;
    if (b->tokens > d->burst) b->tokens = d->burst;
    b->at = now;
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        return 1;
    }
    b->dropped++;
    d->counters[C_RATE_DROPPED]++;
    return 0;
}

/* -- out ---------------------------------------------------------------------------------- */

static void publish(Device *d, const char *topic, int qos, int retain, int *mid) {
    int rc = mosquitto_publish(d->mosq, mid, topic, (int)d->buf.size, d->buf.data, qos, retain);
    if (rc != MOSQ_ERR_SUCCESS) {
        d->counters[C_PUBLISH_FAILED]++;
        say(L_DEBUG, "publish to %s failed: %s", topic, mosquitto_strerror(rc));
    }
}

static void status(Device *d, const char *state, int *mid) {
    Count counters[N_COUNTERS], rejected[N_REASONS + N_TOPICS];
    int n = 0;
    for (int i = 0; i < N_COUNTERS; i++) counters[i] = (Count){COUNTER_NAMES[i], d->counters[i]};
    for (int i = 0; i < N_REASONS; i++) rejected[n++] = (Count){REASONS[i], d->rejected[i]};
    for (int t = 0; t < d->n_topics; t++)
        rejected[n++] = (Count){d->rates[t].reason, d->rates[t].dropped};
    msgpack_sbuffer_clear(&d->buf);
    wire_status(&d->buf, d->role, state, wall(), d->instance, counters, N_COUNTERS, rejected, n);
    publish(d, d->status_topic, 1, 1, mid);
}

static void send_scores(Device *d, uint64_t sample, const unsigned char *answer) {
    float scores[DDNN_SLICE_CLASSES];
    double t0;
    memcpy(scores, answer, sizeof scores);
    memcpy(&t0, answer + sizeof scores, sizeof t0);
    msgpack_sbuffer_clear(&d->buf);
    wire_scores(&d->buf, sample, d->role, scores, DDNN_SLICE_CLASSES, t0);
    d->counters[C_SENT_SCORES]++;
    publish(d, d->scores_topic, 0, 0, NULL);
}

/* -- in ----------------------------------------------------------------------------------- */

static void on_tick(Device *d, const Message *m) {
    double now = wall();
    if (!(fabs(m->t - now) <= WALL_SKEW)) {
        char detail[32];
        snprintf(detail, sizeof detail, "%+.0f s", m->t - now);
        reject(d, R_STALE_TICK, detail);
        return;
    }
    const unsigned char *answered = store_get(&d->answered, m->sample);
    if (answered != NULL) { /* a repeat: the same scores again, no second inference */
        unsigned char copy[DDNN_SLICE_CLASSES * 4 + 8];
        memcpy(copy, answered, sizeof copy);
        send_scores(d, m->sample, copy);
        d->counters[C_TICK_REPEATS]++;
        return;
    }
    const uint8_t *frame = d->frames + (m->sample % d->n_frames) * (size_t)DDNN_SLICE_PIXELS;
    static float scores[DDNN_SLICE_CLASSES];
    static uint8_t bits[DDNN_SLICE_FEATURE_BYTES];
    ddnn_device_run(frame, scores, bits);
    for (int i = 0; i < DDNN_SLICE_CLASSES; i++)
        if (!(fabsf(scores[i]) <= WIRE_MAX_SCORE)) { /* NaN too: never on the wire */
            reject(d, INTERNAL, "the slice gave a score beyond +-1e6 or not finite");
            return;
        }
    unsigned char answer[DDNN_SLICE_CLASSES * 4 + 8];
    memcpy(answer, scores, sizeof scores);
    memcpy(answer + sizeof scores, &m->t, sizeof m->t);
    send_scores(d, m->sample, answer);
    store_put(&d->answered, m->sample, answer, 0.0);
    d->counters[C_FRAMES]++;
    d->counters[C_FEATURES_DROPPED] += (uint64_t)store_put(&d->kept, m->sample, bits, mono());
}

static void on_offload(Device *d, const Message *m) {
    if (!m->names_me) return;
    uint8_t bits[DDNN_SLICE_FEATURE_BYTES];
    if (!store_take(&d->kept, m->sample, bits)) {
        uint64_t n = ++d->counters[C_FEATURES_EXPIRED];
        say(n <= LOUD_REPEATS ? L_WARNING : L_DEBUG,
            "asked for the features of sample %llu, no longer kept",
            (unsigned long long)m->sample);
        return;
    }
    msgpack_sbuffer_clear(&d->buf);
    wire_features(&d->buf, m->sample, d->role, d->feature_shape, bits,
                  DDNN_SLICE_FEATURE_BYTES);
    d->counters[C_SENT_FEATURES]++;
    publish(d, d->features_topic, 0, 0, NULL);
    d->counters[C_FEATURES_SENT]++;
}

static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *props) {
    (void)mosq;
    (void)props;
    Device *d = obj;
    int topic = -1;
    for (int t = 0; t < d->n_topics; t++)
        if (strcmp(msg->topic, d->topics[t]) == 0) topic = t;
    if (topic < 0) { /* nothing else is subscribed to: a broker's mistake */
        reject(d, R_OTHER_KIND, msg->topic);
        return;
    }
    if (!admit(d, topic)) return;
    d->counters[C_RECEIVED]++;
    Message m;
    const char *reason = wire_decode(msg->payload, (size_t)msg->payloadlen, d->role, &m);
    if (reason == NULL && m.kind != (topic == T_TICK ? KIND_TICK : KIND_OFFLOAD))
        reason = R_OTHER_KIND;
    if (reason == NULL && m.kind == KIND_OFFLOAD && strcmp(m.to, d->fed) != 0)
        reason = R_OTHER_SENDER;
    if (reason != NULL) {
        reject(d, reason, msg->topic);
        return;
    }
    if (m.kind == KIND_TICK) on_tick(d, &m);
    else on_offload(d, &m);
}

/* -- the connection ----------------------------------------------------------------------- */

static void on_connect(struct mosquitto *mosq, void *obj, int rc, int flags,
                       const mosquitto_property *props) {
    (void)flags;
    (void)props;
    Device *d = obj;
    if (rc != 0) {
        say(L_ERROR, "the broker at %s refused the connection: %s", d->opt.broker,
            d->protocol == MQTT_PROTOCOL_V5 ? mosquitto_reason_string(rc)
                                            : mosquitto_connack_string(rc));
        if (!d->online) d->refused = 1; /* bad credentials will not get better by retrying */
        return;
    }
    d->connected = 1;
    d->subacks = 0;
    for (int t = 0; t < d->n_topics; t++)
        mosquitto_subscribe(mosq, &d->sub_mid[t], d->topics[t], 1);
}

static void on_subscribe(struct mosquitto *mosq, void *obj, int mid, int count,
                         const int *granted, const mosquitto_property *props) {
    (void)mosq;
    (void)props;
    Device *d = obj;
    for (int t = 0; t < d->n_topics; t++) {
        if (mid != d->sub_mid[t]) continue;
        if (count < 1 || granted[0] >= 0x80) {
            say(L_ERROR,
                "the broker at %s refused the subscription to %s for user '%s': are these the "
                "credentials of this role, for this deployment?",
                d->opt.broker, d->topics[t], d->opt.username ? d->opt.username : "?");
            d->refused = 1;
            return;
        }
        d->subacks++;
    }
    if (d->subacks == d->n_topics) { /* announce on every (re)connect: a restarted broker forgot */
        if (!d->online) say(L_INFO, "online at %s under %s", d->opt.broker, d->root);
        d->online = 1;
        status(d, "online", NULL);
    }
}

/* rc is the PUBACK's MQTT 5 reason code: 0x80 and up, the broker refused the message (an
   account publishing outside its grants), counted as the Python device counts it */
static void on_publish(struct mosquitto *mosq, void *obj, int mid, int rc,
                       const mosquitto_property *props) {
    (void)mosq;
    (void)props;
    Device *d = obj;
    if (rc >= 0x80 && ++d->counters[C_PUBLISH_DENIED] <= 5)
        say(L_WARNING, "the broker refused a publish: %s", mosquitto_reason_string(rc));
    if (mid == d->close_mid) d->closing_acked = 1;
}

static void on_unsubscribe(struct mosquitto *mosq, void *obj, int mid,
                           const mosquitto_property *props) {
    (void)mosq;
    (void)props;
    Device *d = obj;
    if (mid == d->unsub_mid) d->unsub_acked = 1;
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc,
                          const mosquitto_property *props) {
    (void)mosq;
    (void)props;
    Device *d = obj;
    d->connected = 0;
    if (!stopping) say(L_WARNING, "lost the broker (%s); reconnecting", mosquitto_strerror(rc));
}

static void on_log(struct mosquitto *mosq, void *obj, int level, const char *text) {
    (void)mosq;
    Device *d = obj;
    if (level & MOSQ_LOG_ERR) snprintf(d->why, sizeof d->why, "%s", text);
}

static int setup_client(Device *d, const char *user, const char *password) {
    d->mosq = mosquitto_new(d->instance, d->protocol != MQTT_PROTOCOL_V5, d);
    if (d->mosq == NULL) {
        fprintf(stderr, "error: cannot make an MQTT client: %s\n", strerror(errno));
        return -1;
    }
    mosquitto_int_option(d->mosq, MOSQ_OPT_PROTOCOL_VERSION, d->protocol);
    mosquitto_int_option(d->mosq, MOSQ_OPT_TCP_NODELAY, 1);
    if (*user) mosquitto_username_pw_set(d->mosq, user, *password ? password : NULL);
    mosquitto_connect_v5_callback_set(d->mosq, on_connect);
    mosquitto_subscribe_v5_callback_set(d->mosq, on_subscribe);
    mosquitto_message_v5_callback_set(d->mosq, on_message);
    mosquitto_publish_v5_callback_set(d->mosq, on_publish);
    mosquitto_unsubscribe_v5_callback_set(d->mosq, on_unsubscribe);
    mosquitto_disconnect_v5_callback_set(d->mosq, on_disconnect);
    mosquitto_log_callback_set(d->mosq, on_log);
    /* the last will: offline, written at connect (so its t is when the process started) */
    Count none[1];
    msgpack_sbuffer_clear(&d->buf);
    wire_status(&d->buf, d->role, "offline", d->started, d->instance, none, 0, none, 0);
    int rc = mosquitto_will_set(d->mosq, d->status_topic, (int)d->buf.size, d->buf.data, 1, true);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "error: cannot set the last will: %s\n", mosquitto_strerror(rc));
        return -1;
    }
    return 0;
}

static int open_connection(Device *d, const char *host, int port) {
    mosquitto_property *props = NULL;
    if (d->protocol == MQTT_PROTOCOL_V5) {
        mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, SESSION_EXPIRY);
        mosquitto_property_add_int16(&props, MQTT_PROP_RECEIVE_MAXIMUM, RECEIVE_MAXIMUM);
        mosquitto_property_add_int32(&props, MQTT_PROP_MAXIMUM_PACKET_SIZE, WIRE_MAX_PACKET);
    }
    int rc = mosquitto_connect_bind_v5(d->mosq, host, port, KEEPALIVE, NULL, props);
    mosquitto_property_free_all(&props);
    return rc;
}

/* Say offline (retained, acknowledged), unsubscribe, and disconnect cleanly: a socket closed
 * with unread data is reset, and a broker that sees the reset fires the will after all. */
static void goodbye(Device *d) {
    if (!d->connected) return;
    if (d->online) status(d, "offline", &d->close_mid);
    else d->closing_acked = 1;
    char *subs[N_TOPICS];
    for (int t = 0; t < d->n_topics; t++) subs[t] = d->topics[t];
    if (mosquitto_unsubscribe_multiple(d->mosq, &d->unsub_mid, d->n_topics, subs, NULL) != 0)
        d->unsub_acked = 1;
    double end = mono() + CLOSE_SECONDS;
    while (d->connected && !(d->closing_acked && d->unsub_acked) && mono() < end)
        if (mosquitto_loop(d->mosq, 20, 1) != MOSQ_ERR_SUCCESS) break;
    mosquitto_property *props = NULL;
    if (d->protocol == MQTT_PROTOCOL_V5)
        mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, 0);
    mosquitto_disconnect_v5(d->mosq, 0, props);
    mosquitto_property_free_all(&props);
    while (d->connected && mono() < end + 1.0)
        if (mosquitto_loop(d->mosq, 20, 1) != MOSQ_ERR_SUCCESS) break;
}

/* Why a connection failed: libmosquitto's code, and its last error line where it has one. */
static const char *failure(Device *d, int rc) {
    static char text[400];
    snprintf(text, sizeof text, "%s%s%s", mosquitto_strerror(rc), *d->why ? ": " : "", d->why);
    return text;
}

static int serve(Device *d, const char *host, int port) {
    double deadline = mono() + d->opt.connect_timeout, backoff = 0.1, announced = mono();
    int rc = open_connection(d, host, port), warned = 0;
    while (!stopping) {
        if (d->refused) return 1;
        if (rc == MOSQ_ERR_SUCCESS) rc = mosquitto_loop(d->mosq, 100, 1);
        if (rc != MOSQ_ERR_SUCCESS) {
            d->connected = 0;
            if (!d->online && mono() > deadline) {
                fprintf(stderr, "error: cannot connect to MQTT broker %s within %g s: %s\n",
                        d->opt.broker, d->opt.connect_timeout, failure(d, rc));
                return 1;
            }
            if (!d->online && !warned++)
                say(L_WARNING, "cannot connect to %s yet (%s); retrying for %g s", d->opt.broker,
                    failure(d, rc), d->opt.connect_timeout);
            struct timespec pause = {(time_t)backoff, (long)((backoff - floor(backoff)) * 1e9)};
            nanosleep(&pause, NULL);
            backoff = backoff * 2 > 2.0 ? 2.0 : backoff * 2;
            d->why[0] = '\0';
            rc = mosquitto_reconnect(d->mosq);
            continue;
        }
        backoff = 0.1;
        double now = mono();
        d->counters[C_FEATURES_DROPPED] +=
            (uint64_t)store_expire(&d->kept, now, d->opt.keep_seconds);
        if (d->online && d->connected && now - announced > STATUS_EVERY) {
            announced = now;
            status(d, "online", NULL); /* only while connected: nothing queues up unbounded */
        }
    }
    goodbye(d);
    return 0;
}

/* DDNN_SLICE_FEATURE_SHAPE ("FxHxW") as numbers, checked against the bytes it fills. */
static int feature_shape(int shape[3]) {
    char end;
    long bits;
    if (sscanf(DDNN_SLICE_FEATURE_SHAPE, "%dx%dx%d%c", &shape[0], &shape[1], &shape[2], &end) != 3 ||
        shape[0] < 1 || shape[1] < 1 || shape[2] < 1)
        goto bad;
    bits = (long)shape[0] * shape[1] * shape[2];
    if ((bits + 7) / 8 == DDNN_SLICE_FEATURE_BYTES) return 0;
bad:
    fprintf(stderr, "error: the slice's feature shape %s does not fill %d bytes of bits\n",
            DDNN_SLICE_FEATURE_SHAPE, DDNN_SLICE_FEATURE_BYTES);
    return -1;
}

static int log_level(const char *name) {
    static const char *const names[] = {"debug", "info", "warning", "error"};
    for (int i = 0; i < 4; i++) {
        size_t k = 0;
        while (name[k] && names[i][k] && (name[k] | 0x20) == names[i][k]) k++;
        if (name[k] == '\0' && names[i][k] == '\0') return i;
    }
    return -1;
}

static void random_hex(char *out, size_t bytes) {
    unsigned char raw[16] = {0};
    FILE *f = fopen("/dev/urandom", "rb");
    if (f == NULL || fread(raw, 1, bytes, f) != bytes) {
        unsigned long seed = (unsigned long)getpid() ^ (unsigned long)(mono() * 1e9);
        for (size_t i = 0; i < bytes; i++) raw[i] = (unsigned char)(seed >> (8 * (i % 8)));
    }
    if (f) fclose(f);
    for (size_t i = 0; i < bytes; i++) sprintf(out + 2 * i, "%02x", raw[i]);
}

int main(int argc, char **argv) {
    static Device device;
    Device *d = &device;
    char user[512], password[512], host[256], hex[9];
    int port, tls;
    if (parse_options(argc, argv, &d->opt) != 0) return 2;
    if ((d->log_level = log_level(d->opt.log_level)) < 0) {
        fprintf(stderr, "error: --log-level must be debug, info, warning or error, got '%s'\n",
                d->opt.log_level);
        return 2;
    }
    if (d->opt.id != DDNN_SLICE_DEVICE) {
        fprintf(stderr, "error: --id %ld: this binary runs the slice of device %d\n", d->opt.id,
                DDNN_SLICE_DEVICE);
        return 2;
    }
    snprintf(d->role, sizeof d->role, "device-%d", DDNN_SLICE_DEVICE);
    the_device = d;
    if (check_name("deployment", d->opt.deployment) != 0 ||
        check_name("model version", DDNN_SLICE_MODEL_VERSION) != 0)
        return 2;
    if (parse_url(d->opt.broker, host, sizeof host, &port, &tls) != 0) return 2;
    if (feature_shape(d->feature_shape) != 0) return 2;
    if (d->opt.artifacts != NULL && check_manifest(d) != 0) return 2;
    if (login(d, user, sizeof user, password, sizeof password) != 0) return 2;
    if (load_frames(d) != 0) return 2;
    d->protocol = strcmp(d->opt.mqtt, "5") == 0 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311;
    d->fed = DDNN_FED_TIER;
    snprintf(d->root, sizeof d->root, "ddnn/%.250s/%.250s", d->opt.deployment,
             DDNN_SLICE_MODEL_VERSION);
    snprintf(d->topics[T_TICK], sizeof d->topics[0], "%.510s/tick", d->root);
    snprintf(d->topics[T_OFFLOAD], sizeof d->topics[0], "%.510s/offload/%.5s", d->root, d->fed);
    d->n_topics = *d->fed ? 2 : 1;
    snprintf(d->status_topic, sizeof d->status_topic, "%.510s/status/%.20s", d->root, d->role);
    snprintf(d->scores_topic, sizeof d->scores_topic, "%.510s/scores/%.20s", d->root, d->role);
    snprintf(d->features_topic, sizeof d->features_topic, "%.510s/features/%.20s", d->root,
             d->role);
    random_hex(hex, 4);
    snprintf(d->instance, sizeof d->instance, "ddnn-%.64s-%.20s-%d-%.8s", d->opt.deployment,
             d->role, (int)getpid(), hex);
    /* the buckets of ddnn/live/rates.py: 4 messages a frame, a second's worth at once */
    d->rate = d->opt.frame_rate > 0 ? fmax(MIN_RATE, PER_FRAME * d->opt.frame_rate) : 0;
    d->burst = fmax(2.0, d->rate);
    for (int t = 0; t < d->n_topics; t++) {
        d->rates[t] = (Bucket){d->burst, mono(), 0, ""};
        snprintf(d->rates[t].reason, sizeof d->rates[t].reason, "%s (%.60s)", OVER_RATE,
                 d->topics[t] + strlen(d->root) + 1);
    }
    if (store_init(&d->kept, KEEP_MAX, DDNN_SLICE_FEATURE_BYTES) != 0 ||
        store_init(&d->answered, KEEP_MAX, DDNN_SLICE_CLASSES * 4 + 8) != 0) {
        fprintf(stderr, "error: out of memory\n");
        return 1;
    }
    d->started = wall();
    msgpack_sbuffer_init(&d->buf);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    mosquitto_lib_init();
    int rc = setup_client(d, user, password);
    if (rc == 0 && tls) {
        rc = mosquitto_tls_set(d->mosq, d->opt.tls_ca, d->opt.tls_ca ? NULL : "/etc/ssl/certs",
                               d->opt.tls_cert, d->opt.tls_key, NULL);
        if (rc != MOSQ_ERR_SUCCESS)
            fprintf(stderr, "error: TLS files: %s\n", mosquitto_strerror(rc));
    }
    if (rc == 0) {
        say(L_INFO, "slice: generated C (%d x %d x %d uint8 in, %d classes, %d feature bytes)",
            DDNN_SLICE_CHANNELS, DDNN_SLICE_HEIGHT, DDNN_SLICE_WIDTH, DDNN_SLICE_CLASSES,
            DDNN_SLICE_FEATURE_BYTES);
        rc = serve(d, host, port);
    }
    say(L_INFO, "%s stopped; frames=%llu received=%llu sent_scores=%llu features_sent=%llu",
        d->role, (unsigned long long)d->counters[C_FRAMES],
        (unsigned long long)d->counters[C_RECEIVED],
        (unsigned long long)d->counters[C_SENT_SCORES],
        (unsigned long long)d->counters[C_FEATURES_SENT]);
    if (d->mosq) mosquitto_destroy(d->mosq);
    mosquitto_lib_cleanup();
    store_free(&d->kept);
    store_free(&d->answered);
    msgpack_sbuffer_destroy(&d->buf);
    free(d->frames);
    return rc;
}
