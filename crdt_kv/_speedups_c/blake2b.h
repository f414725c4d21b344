/* BLAKE2b (RFC 7693) for the speedups, without key, salt or personalisation.
 *
 * The one-shot hash and its small helpers are ``static inline`` here because they are on
 * the hot path of fold, position and stage_records (one hash per key or record): every
 * file that hashes may inline them, as it could when the extension was one file. The
 * compression function, which the compiler kept out of line even then, is in blake2b.c.
 */
#ifndef CRDT_KV_SPEEDUPS_BLAKE2B_H
#define CRDT_KV_SPEEDUPS_BLAKE2B_H

#include "speedups.h"

SPEEDUPS_HIDDEN extern const uint64_t BLAKE2B_IV[8];

/* The compression function F (section 3.2): ``block`` is 128 bytes, ``t`` the number of
 * message bytes hashed so far including this block (below 2**64: the high word is 0). */
SPEEDUPS_HIDDEN void blake2b_compress(uint64_t h[8], const uint8_t *block, uint64_t t, int last);

/* Eight bytes as a big-endian integer (a key's position, a digest limb, a sort head). */
static inline uint64_t load_be64(const uint8_t *p) {
    return (uint64_t)p[7] | (uint64_t)p[6] << 8 | (uint64_t)p[5] << 16 |
           (uint64_t)p[4] << 24 | (uint64_t)p[3] << 32 | (uint64_t)p[2] << 40 |
           (uint64_t)p[1] << 48 | (uint64_t)p[0] << 56;
}

/* BLAKE2b of ``len`` bytes at ``in`` with an ``outlen``-byte digest (1..64), no key. */
static inline void blake2b_hash(const uint8_t *in, size_t len, uint8_t *out, size_t outlen) {
    uint64_t h[8];
    uint8_t block[128];
    memcpy(h, BLAKE2B_IV, sizeof h);
    h[0] ^= 0x01010000ULL ^ (uint64_t)outlen;
    uint64_t t = 0;
    while (len > 128) { /* every block but the last, which may be full */
        t += 128;
        blake2b_compress(h, in, t, 0);
        in += 128;
        len -= 128;
    }
    memset(block, 0, sizeof block);
    if (len) memcpy(block, in, len);
    blake2b_compress(h, block, t + len, 1);
    for (size_t i = 0; i < outlen; i++) out[i] = (uint8_t)(h[i / 8] >> (8 * (i % 8)));
}

/* The bytes a note's key names: a buffer view, released by the caller. */
static inline int key_view(PyObject *key, Py_buffer *view) {
    if (PyUnicode_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "Strings must be encoded before hashing");
        return -1;
    }
    return PyObject_GetBuffer(key, view, PyBUF_SIMPLE);
}

#endif
