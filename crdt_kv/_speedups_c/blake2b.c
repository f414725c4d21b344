/* BLAKE2b (RFC 7693): the compression function and the Python ``blake2b``/``position``.
 *
 * Written from the RFC's description (section 3), not from its appendix code. The
 * one-shot hash that drives the compression is inline in blake2b.h.
 */
#include "blake2b.h"

SPEEDUPS_HIDDEN const uint64_t BLAKE2B_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL,
    0xa54ff53a5f1d36f1ULL, 0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
    0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

/* The message word schedule of rounds 0..9; rounds 10 and 11 reuse rows 0 and 1. */
static const uint8_t SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t rotr64(uint64_t x, unsigned n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load_le64(const uint8_t *p) {
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 |
           (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 |
           (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

/* The mixing function G of RFC 7693 section 3.1 on working vector v. */
#define MIX(a, b, c, d, x, y)                                                              \
    do {                                                                                   \
        v[a] = v[a] + v[b] + (x);                                                          \
        v[d] = rotr64(v[d] ^ v[a], 32);                                                    \
        v[c] = v[c] + v[d];                                                                \
        v[b] = rotr64(v[b] ^ v[c], 24);                                                    \
        v[a] = v[a] + v[b] + (y);                                                          \
        v[d] = rotr64(v[d] ^ v[a], 16);                                                    \
        v[c] = v[c] + v[d];                                                                \
        v[b] = rotr64(v[b] ^ v[c], 63);                                                    \
    } while (0)

/* One round: the four column mixes, then the four diagonal mixes. */
#define ROUND(r)                                                                           \
    do {                                                                                   \
        const uint8_t *s = SIGMA[r];                                                       \
        MIX(0, 4, 8, 12, m[s[0]], m[s[1]]);                                                \
        MIX(1, 5, 9, 13, m[s[2]], m[s[3]]);                                                \
        MIX(2, 6, 10, 14, m[s[4]], m[s[5]]);                                               \
        MIX(3, 7, 11, 15, m[s[6]], m[s[7]]);                                               \
        MIX(0, 5, 10, 15, m[s[8]], m[s[9]]);                                               \
        MIX(1, 6, 11, 12, m[s[10]], m[s[11]]);                                             \
        MIX(2, 7, 8, 13, m[s[12]], m[s[13]]);                                              \
        MIX(3, 4, 9, 14, m[s[14]], m[s[15]]);                                              \
    } while (0)

/* F of section 3.2 (contract in blake2b.h): twelve rounds over the 128-byte block. */
void blake2b_compress(uint64_t h[8], const uint8_t *block, uint64_t t, int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 16; i++) m[i] = load_le64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = BLAKE2B_IV[i];
    }
    v[12] ^= t;
    if (last) v[14] = ~v[14];
    ROUND(0); ROUND(1); ROUND(2); ROUND(3); ROUND(4); ROUND(5);
    ROUND(6); ROUND(7); ROUND(8); ROUND(9); ROUND(10); ROUND(11);
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* ---- blake2b, position ---------------------------------------------------------------- */

PyObject *py_blake2b(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *names[] = {"data", "digest_size", NULL};
    Py_buffer view;
    Py_ssize_t size = 64;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|n:blake2b", names, &view, &size))
        return NULL;
    if (size < 1 || size > 64) {
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_ValueError, "digest_size must be between 1 and 64, not %zd",
                            size);
    }
    uint8_t out[64];
    blake2b_hash(view.buf, (size_t)view.len, out, (size_t)size);
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)out, size);
}

PyObject *position(PyObject *self, PyObject *key) {
    (void)self;
    Py_buffer view;
    if (key_view(key, &view) < 0) return NULL;
    uint8_t out[8];
    blake2b_hash(view.buf, (size_t)view.len, out, 8);
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)out, 8);
}
