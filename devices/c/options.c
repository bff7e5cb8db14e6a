#include "options.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char USAGE[] =
    "usage: %s [device] --id N --source frames:PATH [options]\n"
    "  Run one end device of a DDNN on a generated C slice: its class scores to the local\n"
    "  aggregator on every tick, its bit-packed feature map when an offload names it.\n"
    "  --id N               which device of the model (the slice's own)\n"
    "  --source SPEC        frames:PATH or PATH: a raw frame file, N frames of C*H*W uint8\n"
    "                       ({device} is replaced by the device number)\n"
    "  --artifacts DIR      a `ddnn export` directory: the model version is checked against\n"
    "                       the slice's, and its access/<deployment>/device-<i>.json logs in\n"
    "  --broker URL         mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (mqtt://127.0.0.1:1883)\n"
    "  --mqtt 5|3.1.1       MQTT version the broker speaks (5)\n"
    "  --deployment NAME    topics are ddnn/<deployment>/<model version>/ (default)\n"
    "  --credentials FILE   this role's credentials file from `ddnn credentials`\n"
    "  --username U         broker user name (password: --password or DDNN_MQTT_PASSWORD)\n"
    "  --tls-ca/--tls-cert/--tls-key FILE   TLS files (mqtts://)\n"
    "  --keep-seconds S     how long feature maps wait for an offload request (10)\n"
    "  --frame-rate R       samples per second of the deployment: each topic read may bring\n"
    "                       4 messages a frame, more are dropped and counted (1000; 0: no limit)\n"
    "  --log-level L        debug, info, warning or error (info)\n"
    "  --clock tick         (the only clock of a C device)\n"
    "  --quick-ack          (accepted for the fleet's sake; libmosquitto acknowledges at once)\n";

static int number(const char *name, const char *text, double lo, double *out) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !isfinite(v) || v < lo) {
        fprintf(stderr, "error: %s must be a number >= %g, got '%s'\n", name, lo, text);
        return -1;
    }
    *out = v;
    return 0;
}

int parse_options(int argc, char **argv, Options *o) {
    memset(o, 0, sizeof *o);
    o->broker = "mqtt://127.0.0.1:1883";
    o->mqtt = "5";
    o->deployment = "default";
    o->log_level = "info";
    o->clock = "tick";
    o->id = -1;
    o->frame_rate = 1000.0;
    o->keep_seconds = 10.0;
    o->connect_timeout = 30.0;
    o->password = getenv("DDNN_MQTT_PASSWORD");
    struct { const char *name; const char **to; } text[] = {
        {"--artifacts", &o->artifacts}, {"--broker", &o->broker}, {"--mqtt", &o->mqtt},
        {"--username", &o->username}, {"--password", &o->password},
        {"--credentials", &o->credentials}, {"--tls-ca", &o->tls_ca},
        {"--tls-cert", &o->tls_cert}, {"--tls-key", &o->tls_key},
        {"--deployment", &o->deployment}, {"--log-level", &o->log_level},
        {"--source", &o->source}, {"--clock", &o->clock},
    };
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *value = NULL;
        if (i == 1 && strcmp(arg, "device") == 0) continue; /* the fleet's `ddnn device` word */
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            printf(USAGE, argv[0]);
            exit(0);
        }
        if (strcmp(arg, "--quick-ack") == 0) continue;
        char name[64];
        const char *eq = strchr(arg, '=');
        size_t n = eq ? (size_t)(eq - arg) : strlen(arg);
        if (strncmp(arg, "--", 2) != 0 || n >= sizeof name) goto unknown;
        memcpy(name, arg, n);
        name[n] = '\0';
        if (eq) value = eq + 1;
        else if (i + 1 < argc) value = argv[++i];
        else {
            fprintf(stderr, "error: %s needs a value\n", name);
            return -1;
        }
        int known = 0;
        for (size_t k = 0; k < sizeof text / sizeof text[0]; k++)
            if (strcmp(name, text[k].name) == 0) {
                *text[k].to = value; /* the last one given wins, as in `ddnn device` */
                known = 1;
            }
        if (known) continue;
        double v;
        if (strcmp(name, "--id") == 0) {
            if (number("--id", value, 0, &v) != 0 || v != floor(v)) return -1;
            o->id = (long)v;
        } else if (strcmp(name, "--frame-rate") == 0) {
            if (number("--frame-rate", value, 0, &o->frame_rate) != 0) return -1;
        } else if (strcmp(name, "--keep-seconds") == 0) {
            if (number("--keep-seconds", value, 0, &o->keep_seconds) != 0) return -1;
        } else {
            goto unknown;
        }
        continue;
    unknown:
        fprintf(stderr, "error: unknown option '%s' (--help lists them)\n", arg);
        return -1;
    }
    if (o->id < 0) {
        fprintf(stderr, "error: --id is required (--help)\n");
        return -1;
    }
    if (o->source == NULL) {
        fprintf(stderr, "error: --source frames:PATH is required: a C device replays a raw "
                        "frame file (`ddnn device-frames` writes one)\n");
        return -1;
    }
    if (strcmp(o->clock, "tick") != 0) {
        fprintf(stderr, "error: --clock %s: a C device captures on ticks only (--clock tick)\n",
                o->clock);
        return -1;
    }
    if (strcmp(o->mqtt, "5") != 0 && strcmp(o->mqtt, "3.1.1") != 0) {
        fprintf(stderr, "error: --mqtt must be 5 or 3.1.1, got '%s'\n", o->mqtt);
        return -1;
    }
    return 0;
}
