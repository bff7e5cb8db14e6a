/* The command line of a C device: the options of `ddnn device` that apply to it, spelled the
 * same, so that a fleet starts it as it starts the Python device (ddnn/ops/fleet.py). */
#ifndef DDNN_OPTIONS_H
#define DDNN_OPTIONS_H

typedef struct {
    const char *artifacts, *broker, *mqtt, *username, *password, *credentials;
    const char *tls_ca, *tls_cert, *tls_key, *deployment, *log_level, *source, *clock;
    long id;
    double frame_rate, keep_seconds, connect_timeout;
} Options;

/* Parse argv into `o` (defaults first); 0, or -1 after printing why to stderr. */
int parse_options(int argc, char **argv, Options *o);

#endif
