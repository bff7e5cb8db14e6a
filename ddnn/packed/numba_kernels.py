"""Compiled kernels of the bit-packed device slice (ddnn/packed/), with numba.

The same decisions as the NumPy path, written as loops that LLVM compiles: a batch-1 frame
costs microseconds instead of the tens that a dozen NumPy calls cost in overhead alone.
Importing this module raises ImportError where numba is missing; ddnn/packed/kernels.py then
falls back to NumPy. Kernels are compiled on first use and cached on disk (`cache=True`).
The first block sums in float32 and recomputes in float64 every pooled value within a
rigorous bound of its threshold, so it stays exact; conventions as ddnn/packed/format.py.

Design: docs/design/packed-format.md (the conventions, the first block's error bound).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def popcount(typingctx, x):
    """LLVM's ctpop of a 64-bit word, as int64: one POPCNT instruction where the CPU has
    it (an int64 result keeps numba from promoting int64 + uint64 sums to float)."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.int64(x), codegen


_ONE = np.uint64(1)
_U = 1.0 / 16777216.0  # 2**-24: float32's unit roundoff


@njit(cache=True)
def _weight_sign(weights, f, k):
    return 1.0 if (weights[f, k >> 6] >> np.uint64(k & 63)) & _ONE else -1.0


@njit(cache=True)
def _row_max(pre, f, rowmax):
    """rowmax[oy, x] = max of pre[f, 2oy-1 .. 2oy+1, x] over the rows inside the map (the
    first half of a separable 3x3, stride 2, pad 1 max-pool). The builtin max compiles
    without branches; a conditional expression does not, and mispredicts on real data."""
    h = pre.shape[1]
    ho, w = rowmax.shape
    for oy in range(ho):
        y0 = max(2 * oy - 1, 0)
        for x in range(w):
            rowmax[oy, x] = max(pre[f, y0, x], pre[f, 2 * oy, x])
        if 2 * oy + 1 < h:
            for x in range(w):
                rowmax[oy, x] = max(rowmax[oy, x], pre[f, 2 * oy + 1, x])


@njit(cache=True)
def _exact_window_max(padded, weights, f, oy, ox, h, w):
    """The exact (float64) max of filter f's pre-activations over pooling window (oy, ox)."""
    c_n = padded.shape[0]
    best = -np.inf
    for y in range(max(2 * oy - 1, 0), min(2 * oy + 2, h)):
        for x in range(max(2 * ox - 1, 0), min(2 * ox + 2, w)):
            s = 0.0
            for c in range(c_n):
                for ky in range(3):
                    for kx in range(3):
                        v = np.float64(padded[c, y + ky, x + kx])
                        s += _weight_sign(weights, f, c * 9 + ky * 3 + kx) * v
            best = max(best, s)
    return best


@njit(cache=True, fastmath={"contract"})
def conv_first(image, weights, pattern, gsign, direction, threshold, out, bits):
    """First ConvP block: pixels (C, H, W) float32 -> out (F, H', W') float32 +-1 and its
    bits. pattern[f, c*3+ky] in 0..3 names the row's horizontal sign pattern (+++, ++-,
    +-+, +--) after factoring out gsign[f, c*3+ky] = the sign of its first tap."""
    c_n, h, w = image.shape
    f_n = weights.shape[0]
    padded = np.zeros((c_n, h + 2, w + 2), np.float32)
    for c in range(c_n):
        for y in range(h):
            for x in range(w):
                padded[c, y + 1, x + 1] = image[c, y, x]
    # max |pixel| for the error bound, as the max of the bit patterns with the sign bit
    # cleared (ordered like the magnitudes; an integer max vectorizes, a float one not)
    magnitude = image.view(np.int32)
    top_bits = 0
    for c in range(c_n):
        for y in range(h):
            for x in range(w):
                b = magnitude[c, y, x] & 0x7FFFFFFF
                top_bits = max(top_bits, b)
    buf = np.empty(1, np.int32)
    buf[0] = top_bits
    top = np.float64(buf.view(np.float32)[0])
    if top != top:  # NaN pixels: decide every window on exact sums
        top = np.inf
    rows = np.empty((c_n, 4, h + 2, w), np.float32)
    for c in range(c_n):
        for r in range(h + 2):
            src = padded[c, r]
            d0 = rows[c, 0, r]
            d1 = rows[c, 1, r]
            d2 = rows[c, 2, r]
            d3 = rows[c, 3, r]
            for x in range(w):
                d0[x] = (src[x] + src[x + 1]) + src[x + 2]
            for x in range(w):
                d1[x] = (src[x] + src[x + 1]) - src[x + 2]
            for x in range(w):
                d2[x] = (src[x] - src[x + 1]) + src[x + 2]
            for x in range(w):
                d3[x] = (src[x] - src[x + 1]) - src[x + 2]
    # A filter's sums over the whole map at once: kernel row ky of output row y is padded
    # row y + ky, so in the flattened (rows, width) planes it is one contiguous run of
    # h * w values starting ky rows in; one long loop vectorizes where 32-wide rows did not.
    n = h * w
    planes = rows.reshape(c_n * 4, (h + 2) * w)
    pre = np.empty((f_n, h, w), np.float32)
    for f in range(f_n):
        acc = pre[f].reshape(n)
        if c_n == 3:  # RGB: all nine rows in one pass
            r0 = planes[pattern[f, 0], 0:n]
            r1 = planes[pattern[f, 1], w : w + n]
            r2 = planes[pattern[f, 2], 2 * w : 2 * w + n]
            r3 = planes[4 + pattern[f, 3], 0:n]
            r4 = planes[4 + pattern[f, 4], w : w + n]
            r5 = planes[4 + pattern[f, 5], 2 * w : 2 * w + n]
            r6 = planes[8 + pattern[f, 6], 0:n]
            r7 = planes[8 + pattern[f, 7], w : w + n]
            r8 = planes[8 + pattern[f, 8], 2 * w : 2 * w + n]
            # signs in locals: loads from gsign inside the loop could alias acc
            g0, g1, g2 = gsign[f, 0], gsign[f, 1], gsign[f, 2]
            g3, g4, g5 = gsign[f, 3], gsign[f, 4], gsign[f, 5]
            g6, g7, g8 = gsign[f, 6], gsign[f, 7], gsign[f, 8]
            for i in range(n):
                acc[i] = (
                    g0 * r0[i]
                    + g1 * r1[i]
                    + g2 * r2[i]
                    + g3 * r3[i]
                    + g4 * r4[i]
                    + g5 * r5[i]
                    + g6 * r6[i]
                    + g7 * r7[i]
                    + g8 * r8[i]
                )
        else:
            for i in range(n):
                acc[i] = 0.0
            for c in range(c_n):
                j = c * 3
                r0 = planes[4 * c + pattern[f, j], 0:n]
                r1 = planes[4 * c + pattern[f, j + 1], w : w + n]
                r2 = planes[4 * c + pattern[f, j + 2], 2 * w : 2 * w + n]
                g0 = gsign[f, j]
                g1 = gsign[f, j + 1]
                g2 = gsign[f, j + 2]
                for i in range(n):
                    acc[i] = acc[i] + g0 * r0[i] + g1 * r1[i] + g2 * r2[i]
    bound = (64.0 + 12.0 * c_n) * 9.0 * c_n * top * _U
    _pool_first(pre, padded, weights, direction, threshold, bound, out, bits)


@njit(cache=True)
def _column_max(rowmax, m):
    """m[oy * wo + ox] = the max of rowmax[oy, 2ox-1 .. 2ox+1] over the columns inside the
    map (the second half of the separable max-pool, after `_row_max`)."""
    ho, w = rowmax.shape
    wo = m.shape[0] // ho
    full = wo if 2 * (wo - 1) + 1 < w else wo - 1  # windows whose third column is inside
    for oy in range(ho):
        r = rowmax[oy]
        mr = m[oy * wo : (oy + 1) * wo]
        mr[0] = max(r[0], r[1]) if w > 1 else r[0]
        for ox in range(1, wo):
            mr[ox] = max(r[2 * ox - 1], r[2 * ox])
        for ox in range(1, full):
            mr[ox] = max(mr[ox], r[2 * ox + 1])


@njit(cache=True)
def _emit(on, out, bits):
    """The activations on[i] (1 or 0, flatten order) as +-1 into out and as bits, whole
    words at a time, without branches (the signs of real data are not predictable: branches
    cost more than the arithmetic)."""
    total = on.shape[0]
    flat = out.reshape(total)
    for i in range(total):
        flat[i] = np.float32(2 * on[i] - 1)
    for q in range(bits.shape[0]):
        word = np.uint64(0)
        start = 64 * q
        for i in range(start, min(start + 64, total)):
            word |= np.uint64(on[i]) << np.uint64(i - start)
        bits[q] = word


@njit(cache=True)
def _pool_first(pre, padded, weights, direction, threshold, bound, out, bits):
    """Max-pool and threshold the first block's float32 sums; a window whose max lies
    within `bound` of the threshold is decided on its exact float64 sums instead (rare: a
    filter's check is one predictable branch)."""
    f_n, h, w = pre.shape
    _, ho, wo = out.shape
    n = ho * wo
    rowmax = np.empty((ho, w), pre.dtype)
    m = np.empty(n, pre.dtype)
    on = np.empty(f_n * n, np.int64)
    for f in range(f_n):
        _row_max(pre, f, rowmax)
        _column_max(rowmax, m)
        d = np.float64(direction[f])
        t = np.float64(threshold[f])
        near = False
        for j in range(n):
            near |= abs(d * np.float64(m[j]) - t) <= bound
        for j in range(n):
            on[f * n + j] = d * np.float64(m[j]) - t >= 0
        if near:
            for j in range(n):
                if abs(d * np.float64(m[j]) - t) <= bound:
                    exact = _exact_window_max(padded, weights, f, j // wo, j % wo, h, w)
                    on[f * n + j] = d * exact - t >= 0
    _emit(on, out, bits)


@njit(cache=True)
def conv_binary(bits_in, shape_in, weights, masks, n_valid, direction, threshold, out, bits):
    """A later ConvP block: input bits (flatten order of shape_in (C, H, W)) -> out
    (F, H', W') float32 +-1 and its bits. Per position the 3x3xC patch is packed into words;
    its dot with a filter is n_valid - 2 * popcount((patch ^ weights) & mask), where
    masks[y * W + x] marks the taps inside the map and n_valid counts them (both fixed by
    the layer's shape: ddnn/packed/kernels.py computes them once)."""
    c_n, h, w = shape_in[0], shape_in[1], shape_in[2]
    f_n, n_words = weights.shape
    patch = np.zeros(n_words, np.uint64)
    pre = np.empty((f_n, h, w), np.int64)
    for y in range(h):
        for x in range(w):
            patch[:] = 0
            for c in range(c_n):
                for ky in range(3):
                    yy = y + ky - 1
                    if yy < 0 or yy >= h:
                        continue
                    for kx in range(3):
                        xx = x + kx - 1
                        if xx < 0 or xx >= w:
                            continue
                        k = c * 9 + ky * 3 + kx
                        i = (c * h + yy) * w + xx
                        on = (bits_in[i >> 6] >> np.uint64(i & 63)) & _ONE
                        patch[k >> 6] |= on << np.uint64(k & 63)
            p = y * w + x
            mask = masks[p]
            for f in range(f_n):
                disagree = 0
                for j in range(n_words):
                    disagree += popcount((patch[j] ^ weights[f, j]) & mask[j])
                pre[f, y, x] = n_valid[p] - 2 * disagree
    _pool_binary(pre, direction, threshold, out, bits)


@njit(cache=True)
def _pool_binary(pre, direction, threshold, out, bits):
    """Max-pool and threshold integer pre-activations."""
    f_n, h, w = pre.shape
    _, ho, wo = out.shape
    n = ho * wo
    rowmax = np.empty((ho, w), pre.dtype)
    m = np.empty(n, pre.dtype)
    on = np.empty(f_n * n, np.int64)
    for f in range(f_n):
        _row_max(pre, f, rowmax)
        _column_max(rowmax, m)
        d = np.int64(direction[f])
        t = np.int64(threshold[f])
        for j in range(n):
            on[f * n + j] = d * m[j] >= t
    _emit(on, out, bits)


@njit(cache=True)
def head_scores(bits, n, weights, alpha, beta, fma, scores, dots):
    """FC exit head: n feature bits -> dots (K,) int64 = n - 2 * popcount(bits ^ weights)
    and scores (K,) float32 = dot * alpha + beta, rounded once (fma: the product is exact
    in float64) or after each float32 operation."""
    k_n, n_words = weights.shape
    for k in range(k_n):
        disagree = 0
        for j in range(n_words):
            disagree += popcount(bits[j] ^ weights[k, j])
        dot = n - 2 * disagree
        dots[k] = dot
        if fma:
            scores[k] = np.float32(np.float64(dot) * np.float64(alpha[k]) + np.float64(beta[k]))
        else:
            scores[k] = np.float32(dot) * alpha[k] + beta[k]
