/* The kernels of a bit-packed device slice, in C99 (docs/design/c-devices.md). ddnn codegen
   copies this text into every generated ddnn_slice.c, ahead of the slice's constant tables.

   Integers throughout, but for the head's batch norm: a ConvP block's pre-activations are
   exact integers (uint8 pixels times +-1 weights; +-1 activations times +-1 weights), and its
   float32 thresholds became integer ones exactly (ddnn/packed/codegen.py), held in `sum_t`,
   which the generator makes int16_t where every sum fits (twice the lanes of int32_t where
   the compiler vectorizes). No heap: the scratch rows are static, sized by the generator. */

/* A 32-bit popcount: the compiler's where it has one, else the portable SWAR sum. */
static int popcount32(uint32_t v)
{
#if defined(__GNUC__)
    return __builtin_popcount(v);
#else
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    v = (v + (v >> 4)) & 0x0F0F0F0Fu;
    return (int)((v * 0x01010101u) >> 24);
#endif
}

/* One ConvP block's shape and tables. Weights are bits: a first block holds per (filter,
   channel, kernel row) the row's three signs as a code, bits 0-1 the pattern of `first_rows`
   and bit 2 set where the first sign is -1; a binary block per (filter, tap) the channels in
   words of 32, 1 meaning +1. A filter is on where direction * pooled >= threshold. */
typedef struct {
    int channels, height, width, filters, words; /* words: channel words per position */
    const uint8_t *rows;                         /* first block: (filters, channels, 3) */
    const uint32_t *weights;                     /* binary block: (filters, 9, words) */
    const int8_t *direction;
    const int32_t *threshold;
} Block;

/* Conv row y of a first block, every filter at once (acc: filters x width): the signed 3x3
   sums of uint8 pixels. The row's 3 x channels input rows are first all copied into `pad`
   (3 x channels x (width + 2)), zero at both ends: reading a copy back at offsets 1 and 2
   right after writing it stalls a CPU's store forwarding (the host's time fell by a third).
   Each is then summed over its three horizontal taps in the four sign patterns a kernel row
   can have once its first sign is factored out (+++, ++-, +-+, +--: `rows`, 4 x width); a
   filter adds one of them, signed, per kernel row: 9 rows, not 27 taps, the same loop at
   every x. */
static void first_rows(const Block *b, const uint8_t *pixels, int y, sum_t *restrict acc,
                       sum_t *restrict pad, sum_t *restrict rows)
{
    const int w = b->width;
    int c, ky, f, x;
    for (x = 0; x < b->filters * w; x++)
        acc[x] = 0;
    for (c = 0; c < b->channels; c++) {
        for (ky = 0; ky < 3; ky++) {
            const int yy = y + ky - 1;
            sum_t *restrict q = pad + (c * 3 + ky) * (w + 2);
            q[0] = q[w + 1] = 0; /* zero padding adds nothing */
            if (yy < 0 || yy >= b->height)
                continue;
            for (x = 0; x < w; x++)
                q[x + 1] = pixels[((long)c * b->height + yy) * w + x];
        }
    }
    for (c = 0; c < b->channels; c++) {
        for (ky = 0; ky < 3; ky++) {
            const int yy = y + ky - 1;
            const sum_t *restrict q = pad + (c * 3 + ky) * (w + 2);
            if (yy < 0 || yy >= b->height)
                continue;
            for (x = 0; x < w; x++) {
                rows[x] = q[x] + q[x + 1] + q[x + 2];
                rows[w + x] = q[x] + q[x + 1] - q[x + 2];
                rows[2 * w + x] = q[x] - q[x + 1] + q[x + 2];
                rows[3 * w + x] = q[x] - q[x + 1] - q[x + 2];
            }
            for (f = 0; f < b->filters; f++) {
                /* the kernel row's pattern, and m = -1 where its first sign is -1: then
                   (v ^ m) - m is -v */
                const unsigned code = b->rows[((long)f * b->channels + c) * 3 + ky];
                const sum_t m = code & 4u ? -1 : 0;
                const sum_t *restrict r = rows + (code & 3u) * w;
                sum_t *restrict a = acc + (long)f * w;
                for (x = 0; x < w; x++)
                    a[x] += (r[x] ^ m) - m;
            }
        }
    }
}

/* Conv row y of a binary block, every filter at once: per position, over the taps inside
   the map, channels - 2 * (channels where activation and weight disagree). */
static void binary_rows(const Block *b, const uint32_t *act, int y, sum_t *acc)
{
    const int w = b->width, nw = b->words;
    const int rest = b->channels % 32;
    const uint32_t last_mask = rest ? ((uint32_t)1 << rest) - 1u : 0xFFFFFFFFu;
    int f, x, ky, kx, k;
    for (f = 0; f < b->filters; f++) {
        for (x = 0; x < w; x++) {
            sum_t sum = 0;
            for (ky = 0; ky < 3; ky++) {
                const int yy = y + ky - 1;
                if (yy < 0 || yy >= b->height)
                    continue;
                for (kx = 0; kx < 3; kx++) {
                    const int xx = x + kx - 1;
                    const uint32_t *a, *wt;
                    int disagree = 0;
                    if (xx < 0 || xx >= w)
                        continue;
                    a = act + ((long)yy * w + xx) * nw;
                    wt = b->weights + ((long)f * 9 + ky * 3 + kx) * nw;
                    for (k = 0; k < nw; k++) {
                        const uint32_t mask = k == nw - 1 ? last_mask : 0xFFFFFFFFu;
                        disagree += popcount32((a[k] ^ wt[k]) & mask);
                    }
                    sum += b->channels - 2 * disagree;
                }
            }
            acc[(long)f * w + x] = sum;
        }
    }
}

/* Pooled row i of filter f, its horizontal 3/2 max-pool of `vm` (the rows' max) and threshold,
   to where the block's +-1 outputs go: the next block's channel words (bit f % 32 of word
   f / 32 at each position), or, from the last block, the wire's bits (np.packbits of the
   (F, h, w) map: most significant bit first). Both start cleared. A wire byte is gathered in
   a register and ORed in once: ORing bit by bit into memory chains every bit on the last. */
static void put_row(const Block *b, const sum_t *vm, int f, int i, uint32_t *next, uint8_t *wire)
{
    const int w = b->width, ho = (b->height - 1) / 2 + 1, wo = (w - 1) / 2 + 1;
    const int nw = (b->filters + 31) / 32;
    const int32_t direction = b->direction[f], threshold = b->threshold[f];
    long bit = ((long)f * ho + i) * wo;
    unsigned byte = 0;
    int j;
    for (j = 0; j < wo; j++) {
        sum_t m = vm[2 * j];
        unsigned on;
        if (2 * j - 1 >= 0 && vm[2 * j - 1] > m)
            m = vm[2 * j - 1];
        if (2 * j + 1 < w && vm[2 * j + 1] > m)
            m = vm[2 * j + 1];
        on = direction * m >= threshold;
        if (wire) {
            byte |= on << (7 - (bit & 7));
            if ((++bit & 7) == 0 || j == wo - 1) {
                wire[(bit - 1) >> 3] |= (uint8_t)byte;
                byte = 0;
            }
        } else {
            next[((long)i * wo + j) * nw + f / 32] |= (uint32_t)on << (f % 32);
        }
    }
}

/* A ConvP block: 3x3 conv (pad 1) -> 3x3/2 max-pool (pad 1) -> threshold, a pooled row at a
   time, so that only three conv rows are ever held: the pooled row i takes the max of conv
   rows 2i-1 (carried from row i-1), 2i and 2i+1. Scratch: carry, vmax and acc hold filters
   x width values each, pad and rows as first_rows says. */
static void run_block(const Block *b, const uint8_t *pixels, const uint32_t *act, uint32_t *next,
                      uint8_t *wire, sum_t *carry, sum_t *vmax, sum_t *acc, sum_t *pad,
                      sum_t *rows)
{
    const int w = b->width, n = b->filters * w, ho = (b->height - 1) / 2 + 1;
    int f, i, x, r;
    for (i = 0; i < ho; i++) {
        if (i > 0)
            memcpy(vmax, carry, sizeof *vmax * n);
        else
            for (x = 0; x < n; x++)
                vmax[x] = SUM_MIN;
        for (r = 2 * i; r <= 2 * i + 1 && r < b->height; r++) {
            if (pixels)
                first_rows(b, pixels, r, acc, pad, rows);
            else
                binary_rows(b, act, r, acc);
            for (x = 0; x < n; x++)
                vmax[x] = acc[x] > vmax[x] ? acc[x] : vmax[x];
            if (r == 2 * i + 1)
                for (x = 0; x < n; x++)
                    carry[x] = acc[x];
        }
        for (f = 0; f < b->filters; f++)
            put_row(b, vmax + (long)f * w, f, i, next, wire);
    }
}

/* The FC head on the wire's feature bits: per class the integer dot of +-1 features with +-1
   weights (same bit layout, so XOR and popcount need no byte order), then its batch norm,
   rounded as the packed format says torch rounds it. */
static void run_head(const uint8_t *features, int n_bytes, int n_features, int classes,
                     const uint8_t *weights, const float *alpha, const float *beta, int fma,
                     float *scores, int32_t *dots)
{
    int k, i;
    for (k = 0; k < classes; k++) {
        const uint8_t *wk = weights + (long)k * n_bytes;
        int disagree = 0;
        for (i = 0; i + 4 <= n_bytes; i += 4) {
            uint32_t a, b;
            memcpy(&a, features + i, 4);
            memcpy(&b, wk + i, 4);
            disagree += popcount32(a ^ b);
        }
        for (; i < n_bytes; i++)
            disagree += popcount32((uint32_t)(features[i] ^ wk[i]));
        dots[k] = n_features - 2 * disagree;
        if (fma) { /* dot * alpha is exact in double: one rounding of the sum, then to float */
            scores[k] = (float)((double)dots[k] * (double)alpha[k] + (double)beta[k]);
        } else { /* two float roundings (needs -ffp-contract=off where FMA exists) */
            const float product = (float)dots[k] * alpha[k];
            scores[k] = product + beta[k];
        }
    }
}
