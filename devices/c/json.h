/* The few JSON files a C device reads (its credentials, the export's manifest): the string
 * fields at the top level of one object. Anything else in the file is parsed and skipped. */
#ifndef DDNN_JSON_H
#define DDNN_JSON_H

#include <stddef.h>

/* Read the top-level string field `key` of the JSON object in `text` into `out` (NUL-ended,
 * UTF-8; \u escapes decoded). Returns 0 when found, 1 when the object has no such string
 * field, -1 when `text` is not one JSON object (or the value does not fit `size`). */
int json_string_field(const char *text, const char *key, char *out, size_t size);

/* The whole file at `path`, NUL-ended, in a buffer the caller frees; NULL with errno set
 * when it cannot be read or is over `limit` bytes. */
char *read_text_file(const char *path, size_t limit);

#endif
