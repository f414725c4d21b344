/* Integers mod 2**256 as four little-endian uint64 limbs: a bucket's sum in fold and
 * bucket_ops.
 *
 * Header-only and ``static inline``: these run once per note of a fold, on its hot path,
 * so they stay inlinable where they are used instead of becoming calls into another file.
 */
#ifndef CRDT_KV_SPEEDUPS_U256_H
#define CRDT_KV_SPEEDUPS_U256_H

#include "speedups.h"

/* The digits of an int, least significant first, and its sign: the internal layout of
 * CPython's ints (Include/cpython/longintrepr.h), which changed in 3.12. */
static inline const digit *int_digits(PyObject *v, Py_ssize_t *n, int *negative) {
    PyLongObject *x = (PyLongObject *)v;
#if PY_VERSION_HEX >= 0x030C0000
    uintptr_t tag = x->long_value.lv_tag;
    *n = (Py_ssize_t)(tag >> _PyLong_NON_SIZE_BITS);
    *negative = (tag & _PyLong_SIGN_MASK) == 2;
    return x->long_value.ob_digit;
#else
    Py_ssize_t size = Py_SIZE(x);
    *negative = size < 0;
    *n = size < 0 ? -size : size;
    return x->ob_digit;
#endif
}

/* The low 256 bits of the magnitude of ``v`` (an int) into ``out``; its bit length. */
static inline size_t magnitude_u256(PyObject *v, uint64_t out[4], int *negative) {
    Py_ssize_t n;
    const digit *d = int_digits(v, &n, negative);
    memset(out, 0, 4 * sizeof(uint64_t));
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t off = (size_t)i * PyLong_SHIFT, limb = off / 64, sh = off % 64;
        if (off >= 256) break;
        uint64_t x = d[i];
        out[limb] |= x << sh;
        if (sh + PyLong_SHIFT > 64 && limb + 1 < 4) out[limb + 1] |= x >> (64 - sh);
    }
    if (n == 0) return 0;
    size_t top = 0;
    for (digit t = d[n - 1]; t; t >>= 1) top++;
    return (size_t)(n - 1) * PyLong_SHIFT + top;
}

/* ``v`` mod 2**256 into ``out`` (any int, negative ones too); -1 with an exception set. */
static inline int to_u256(PyObject *v, uint64_t out[4]) {
    int negative;
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "expected an int, got %.100s", Py_TYPE(v)->tp_name);
        return -1;
    }
    magnitude_u256(v, out, &negative);
    if (negative) { /* 2**256 - magnitude: the two's complement */
        uint64_t carry = 1;
        for (int i = 0; i < 4; i++) {
            out[i] = ~out[i] + carry;
            carry = carry && out[i] == 0;
        }
    }
    return 0;
}

/* ``v`` into ``out`` if it is an int in [0, 2**256), else -1 with OverflowError (what
 * ``int.to_bytes(32, "big")`` raises). */
static inline int exact_u256(PyObject *v, uint64_t out[4]) {
    int negative;
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "expected an int, got %.100s", Py_TYPE(v)->tp_name);
        return -1;
    }
    if (magnitude_u256(v, out, &negative) > 256 || negative) {
        PyErr_SetString(PyExc_OverflowError,
                        negative ? "can't convert negative int to unsigned" : "int too big to convert");
        return -1;
    }
    return 0;
}

static inline PyObject *from_u256(const uint64_t x[4]) {
    unsigned char buf[32];
    for (int i = 0; i < 32; i++) buf[i] = (unsigned char)(x[i / 8] >> (8 * (i % 8)));
    return _PyLong_FromByteArray(buf, 32, 1, 0);
}

static inline void add_u256(uint64_t acc[4], const uint64_t x[4]) {
    uint64_t carry = 0;
    for (int i = 0; i < 4; i++) {
        uint64_t s = acc[i] + carry;
        carry = s < carry;
        acc[i] = s + x[i];
        carry += acc[i] < s;
    }
}

#endif
