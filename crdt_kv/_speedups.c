/* crdt_kv._speedups: the compiled twin of the pure-Python hot paths in crdt_kv/accel.py.
 *
 * Only crdt_kv/accel.py imports this module; the pure-Python functions there are the
 * reference, and every function here returns exactly what its twin returns (the tests
 * compare them on random inputs). What is here:
 *
 *   blake2b(data, digest_size=64)  BLAKE2b without key, salt or personalisation (RFC 7693)
 *   position(key)                  the 8-byte BLAKE2b of a key: its position, big-endian
 *   fold(notes, counts, sums, added, removed, prefix, shift)
 *                                  fold commit notes into bucket counts and sums mod 2**256
 *   sort_index(items)              sorted(items) for a list of bytes
 *   bucket_ops(keys, counts, sums, touched)
 *                                  the (key, record) pairs of the touched bucket fingerprints
 *   lww_run(buf, pos, count, base, peers, cls, slots)
 *                                  the plain LWW rows of a batch frame as RawEntry objects
 *   stage_records(items, seq, ops, logs, notes, layout)
 *                                  a commit's records, change-log keys, digest deltas
 *   fill_batch(ops, put, delete)   put(k, v) or delete(k) for each (k, v) of ops, in order
 *
 * BLAKE2b is written from the RFC's description (section 3), not from its appendix code.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- BLAKE2b (RFC 7693) -------------------------------------------------------------- */

static const uint64_t IV[8] = {
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

static inline uint64_t load_be64(const uint8_t *p) {
    return (uint64_t)p[7] | (uint64_t)p[6] << 8 | (uint64_t)p[5] << 16 |
           (uint64_t)p[4] << 24 | (uint64_t)p[3] << 32 | (uint64_t)p[2] << 40 |
           (uint64_t)p[1] << 48 | (uint64_t)p[0] << 56;
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

/* The compression function F (section 3.2): ``block`` is 128 bytes, ``t`` the number of
 * message bytes hashed so far including this block (below 2**64: the high word is 0). */
static void compress(uint64_t h[8], const uint8_t *block, uint64_t t, int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 16; i++) m[i] = load_le64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = IV[i];
    }
    v[12] ^= t;
    if (last) v[14] = ~v[14];
    ROUND(0); ROUND(1); ROUND(2); ROUND(3); ROUND(4); ROUND(5);
    ROUND(6); ROUND(7); ROUND(8); ROUND(9); ROUND(10); ROUND(11);
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* BLAKE2b of ``len`` bytes at ``in`` with an ``outlen``-byte digest (1..64), no key. */
static void blake2b_hash(const uint8_t *in, size_t len, uint8_t *out, size_t outlen) {
    uint64_t h[8];
    uint8_t block[128];
    memcpy(h, IV, sizeof h);
    h[0] ^= 0x01010000ULL ^ (uint64_t)outlen;
    uint64_t t = 0;
    while (len > 128) { /* every block but the last, which may be full */
        t += 128;
        compress(h, in, t, 0);
        in += 128;
        len -= 128;
    }
    memset(block, 0, sizeof block);
    if (len) memcpy(block, in, len);
    compress(h, block, t + len, 1);
    for (size_t i = 0; i < outlen; i++) out[i] = (uint8_t)(h[i / 8] >> (8 * (i % 8)));
}

/* ---- integers mod 2**256 as four little-endian uint64 limbs --------------------------- */

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
static size_t magnitude_u256(PyObject *v, uint64_t out[4], int *negative) {
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
static int to_u256(PyObject *v, uint64_t out[4]) {
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
static int exact_u256(PyObject *v, uint64_t out[4]) {
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

static PyObject *from_u256(const uint64_t x[4]) {
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

/* ---- fold ----------------------------------------------------------------------------- */

#define MAX_BUCKET_BITS 16

typedef struct {
    Py_ssize_t bucket;
    long long count;
    uint64_t sum[4];
} Slot;

/* bucket -> 1 + its slot in the current fold (0: none); all 0 between calls. */
static int32_t slot_of_static[1 << MAX_BUCKET_BITS];
static int slot_of_busy;

/* The bytes a note's key names: a buffer view, released by the caller. */
static int key_view(PyObject *key, Py_buffer *view) {
    if (PyUnicode_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "Strings must be encoded before hashing");
        return -1;
    }
    return PyObject_GetBuffer(key, view, PyBUF_SIMPLE);
}

/* One note: hash its key, add its deltas to its bucket's slot, record an index key. */
static int fold_one(PyObject *note, Slot *slots, Py_ssize_t *used, int32_t *slot_of,
                    Py_ssize_t nbuckets, int shift, PyObject *added, PyObject *removed,
                    const char *prefix, Py_ssize_t plen) {
    PyObject *fast = PySequence_Tuple(note); /* a tuple note is itself: no copy */
    if (fast == NULL) return -1;
    if (PyTuple_GET_SIZE(fast) != 3) {
        PyErr_Format(PyExc_ValueError, "a note must be (key, delta, count delta), not %zd items",
                     PyTuple_GET_SIZE(fast));
        Py_DECREF(fast);
        return -1;
    }
    PyObject **it = &PyTuple_GET_ITEM(fast, 0);
    Py_buffer view;
    uint64_t delta[4];
    uint8_t pos[8];
    int overflow = 0;
    if (key_view(it[0], &view) < 0) goto fail;
    blake2b_hash(view.buf, (size_t)view.len, pos, 8);
    Py_ssize_t b = (Py_ssize_t)(load_be64(pos) >> shift);
    if (b >= nbuckets) {
        PyErr_Format(PyExc_IndexError, "bucket %zd beyond the %zd counters", b, nbuckets);
        goto fail_view;
    }
    if (to_u256(it[1], delta) < 0) goto fail_view;
    long long dc = PyLong_AsLongLongAndOverflow(it[2], &overflow);
    if (dc == -1 && PyErr_Occurred()) goto fail_view;
    if (overflow) {
        PyErr_SetString(PyExc_OverflowError, "count delta out of range");
        goto fail_view;
    }
    int32_t s = slot_of[b];
    if (s == 0) {
        s = (int32_t)++*used;
        slot_of[b] = s;
        Slot *n = &slots[s - 1];
        n->bucket = b;
        n->count = 0;
        memset(n->sum, 0, sizeof n->sum);
    }
    Slot *slot = &slots[s - 1];
    add_u256(slot->sum, delta);
    if (dc) {
        slot->count += dc;
        PyObject *x = PyBytes_FromStringAndSize(NULL, plen + 8 + view.len);
        if (x == NULL) goto fail_view;
        char *p = PyBytes_AS_STRING(x);
        memcpy(p, prefix, (size_t)plen);
        memcpy(p + plen, pos, 8);
        memcpy(p + plen + 8, view.buf, (size_t)view.len);
        int r = PyList_Append(dc > 0 ? added : removed, x);
        Py_DECREF(x);
        if (r < 0) goto fail_view;
    }
    PyBuffer_Release(&view);
    Py_DECREF(fast);
    return 0;
fail_view:
    PyBuffer_Release(&view);
fail:
    Py_DECREF(fast);
    return -1;
}

/* counts[b] += slot count; sums[b] = (sums[b] + slot sum) mod 2**256; b into touched. */
static int apply_slot(const Slot *slot, PyObject *counts, PyObject *sums, PyObject *touched) {
    Py_ssize_t b = slot->bucket;
    if (slot->count) {
        PyObject *d = PyLong_FromLongLong(slot->count);
        if (d == NULL) return -1;
        PyObject *old = Py_XNewRef(PyList_GetItem(counts, b));
        PyObject *c = old == NULL ? NULL : PyNumber_Add(old, d);
        Py_XDECREF(old);
        Py_DECREF(d);
        if (c == NULL) return -1;
        if (PyList_SetItem(counts, b, c) < 0) return -1; /* steals c */
    }
    uint64_t total[4];
    PyObject *old = PyList_GetItem(sums, b);
    if (old == NULL || to_u256(old, total) < 0) return -1;
    add_u256(total, slot->sum);
    PyObject *s = from_u256(total);
    if (s == NULL) return -1;
    if (PyList_SetItem(sums, b, s) < 0) return -1;
    PyObject *bo = PyLong_FromSsize_t(b);
    if (bo == NULL) return -1;
    int r = PyList_Append(touched, bo);
    Py_DECREF(bo);
    return r;
}

static PyObject *fold(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "fold(notes, counts, sums, added, removed, prefix, shift)");
        return NULL;
    }
    PyObject *counts = args[1], *sums = args[2], *added = args[3], *removed = args[4];
    if (!PyList_Check(counts) || !PyList_Check(sums) || !PyList_Check(added) ||
        !PyList_Check(removed) || !PyBytes_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "counts, sums, added, removed: lists; prefix: bytes");
        return NULL;
    }
    long shift = PyLong_AsLong(args[6]);
    if (shift == -1 && PyErr_Occurred()) return NULL;
    if (shift < 64 - MAX_BUCKET_BITS || shift > 63) {
        PyErr_Format(PyExc_ValueError, "shift %ld out of range", shift);
        return NULL;
    }
    Py_ssize_t nbuckets = PyList_GET_SIZE(counts);
    if (PyList_GET_SIZE(sums) < nbuckets) nbuckets = PyList_GET_SIZE(sums);
    /* our own tuple: nothing a note's conversion runs can change what we iterate */
    PyObject *notes = PySequence_Tuple(args[0]);
    if (notes == NULL) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(notes);
    PyObject *touched = PyList_New(0);
    Py_ssize_t cap = n < ((Py_ssize_t)1 << (64 - shift)) ? n : ((Py_ssize_t)1 << (64 - shift));
    Slot *slots = PyMem_Malloc(sizeof(Slot) * (size_t)(cap ? cap : 1));
    int32_t *slot_of = slot_of_static;
    if (slot_of_busy) /* re-entered (a finaliser folding during a fold): a private map */
        slot_of = PyMem_Calloc((size_t)1 << MAX_BUCKET_BITS, sizeof(int32_t));
    else
        slot_of_busy = 1;
    Py_ssize_t used = 0;
    int failed = touched == NULL || slots == NULL || slot_of == NULL;
    if (failed && !PyErr_Occurred()) PyErr_NoMemory();
    const char *prefix = PyBytes_AS_STRING(args[5]);
    Py_ssize_t plen = PyBytes_GET_SIZE(args[5]);
    PyObject **items = &PyTuple_GET_ITEM(notes, 0);
    for (Py_ssize_t i = 0; i < n && !failed; i++)
        failed = fold_one(items[i], slots, &used, slot_of, nbuckets, (int)shift, added,
                          removed, prefix, plen) < 0;
    for (Py_ssize_t i = 0; i < used; i++) {
        if (!failed) failed = apply_slot(&slots[i], counts, sums, touched) < 0;
        if (slot_of) slot_of[slots[i].bucket] = 0;
    }
    if (slot_of == slot_of_static)
        slot_of_busy = 0;
    else
        PyMem_Free(slot_of);
    PyMem_Free(slots);
    Py_DECREF(notes);
    if (failed) {
        Py_XDECREF(touched);
        return NULL;
    }
    return touched;
}

/* ---- sort_index ----------------------------------------------------------------------- */

typedef struct {
    uint64_t head; /* the first 8 bytes, big-endian, zero-padded: ordered like the bytes */
    PyObject *obj;
} Item;

static int bytes_less(PyObject *a, PyObject *b) {
    Py_ssize_t la = PyBytes_GET_SIZE(a), lb = PyBytes_GET_SIZE(b);
    int c = memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), (size_t)(la < lb ? la : lb));
    return c < 0 || (c == 0 && la < lb);
}

/* Stable LSD radix sort on ``head`` (bytes every item shares are skipped), then an
 * insertion sort by the whole bytes inside each run of equal heads. */
static void sort_items(Item *items, Item *tmp, Py_ssize_t n) {
    size_t count[256];
    Item *src = items, *dst = tmp;
    for (int shift = 0; shift < 64; shift += 8) {
        memset(count, 0, sizeof count);
        for (Py_ssize_t i = 0; i < n; i++) count[(src[i].head >> shift) & 0xff]++;
        if (count[(src[0].head >> shift) & 0xff] == (size_t)n) continue;
        size_t at = 0;
        for (int d = 0; d < 256; d++) {
            size_t c = count[d];
            count[d] = at;
            at += c;
        }
        for (Py_ssize_t i = 0; i < n; i++) dst[count[(src[i].head >> shift) & 0xff]++] = src[i];
        Item *t = src;
        src = dst;
        dst = t;
    }
    if (src != items) memcpy(items, src, sizeof(Item) * (size_t)n);
    for (Py_ssize_t i = 1; i < n; i++) {
        if (items[i].head != items[i - 1].head) continue;
        Item x = items[i];
        Py_ssize_t j = i;
        while (j > 0 && items[j - 1].head == x.head && bytes_less(x.obj, items[j - 1].obj)) {
            items[j] = items[j - 1];
            j--;
        }
        items[j] = x;
    }
}

static PyObject *sort_index(PyObject *self, PyObject *arg) {
    (void)self;
    PyObject *seq = PySequence_Fast(arg, "sort_index needs a sequence of bytes");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **objs = PySequence_Fast_ITEMS(seq);
    Item *items = PyMem_Malloc(sizeof(Item) * (size_t)(2 * n + 1));
    PyObject *out = items == NULL ? NULL : PyList_New(n);
    if (out == NULL) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        PyMem_Free(items);
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = objs[i];
        if (!PyBytes_Check(o)) {
            PyErr_Format(PyExc_TypeError, "sort_index sorts bytes, not %.100s",
                         Py_TYPE(o)->tp_name);
            PyMem_Free(items);
            Py_DECREF(seq);
            Py_DECREF(out); /* its slots are still NULL: nothing else to release */
            return NULL;
        }
        uint8_t head[8] = {0};
        Py_ssize_t len = PyBytes_GET_SIZE(o);
        memcpy(head, PyBytes_AS_STRING(o), (size_t)(len < 8 ? len : 8));
        items[i].head = load_be64(head);
        items[i].obj = o;
    }
    if (n > 1) sort_items(items, items + n, n);
    for (Py_ssize_t i = 0; i < n; i++) PyList_SET_ITEM(out, i, Py_NewRef(items[i].obj));
    PyMem_Free(items);
    Py_DECREF(seq);
    return out;
}

/* ---- bucket_ops ------------------------------------------------------------------------ */

static int cmp_ssize(const void *a, const void *b) {
    Py_ssize_t x = *(const Py_ssize_t *)a, y = *(const Py_ssize_t *)b;
    return (x > y) - (x < y);
}

/* The ``f`` value of a bucket: u64be(count) + the 32-byte big-endian sum (pack_bucket). */
static PyObject *bucket_record(PyObject *count, PyObject *sum) {
    unsigned long long c = PyLong_AsUnsignedLongLong(count);
    uint64_t limbs[4];
    if ((c == (unsigned long long)-1 && PyErr_Occurred()) || exact_u256(sum, limbs) < 0)
        return NULL;
    uint8_t buf[40];
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(c >> (56 - 8 * i));
    for (int i = 0; i < 32; i++) buf[8 + i] = (uint8_t)(limbs[3 - i / 8] >> (56 - 8 * (i % 8)));
    return PyBytes_FromStringAndSize((const char *)buf, 40);
}

/* One op: (keys[b], its record, or None if its count is 0). */
static PyObject *bucket_op(PyObject *keys, PyObject *counts, PyObject *sums, Py_ssize_t b) {
    PyObject *key = b < 0 || b >= PyTuple_GET_SIZE(keys) ? NULL : PyTuple_GET_ITEM(keys, b);
    PyObject *count = b < 0 ? NULL : PyList_GetItem(counts, b);
    PyObject *sum = b < 0 ? NULL : PyList_GetItem(sums, b);
    if (key == NULL || count == NULL || sum == NULL) {
        PyErr_Clear();
        return PyErr_Format(PyExc_IndexError, "bucket %zd out of range", b);
    }
    Py_INCREF(count); /* the truth test may run code that changes the lists */
    Py_INCREF(sum);
    PyObject *op = NULL, *record = NULL;
    int live = PyObject_IsTrue(count);
    if (live == 0)
        op = PyTuple_Pack(2, key, Py_None);
    else if (live > 0 && (record = bucket_record(count, sum)) != NULL)
        op = PyTuple_Pack(2, key, record);
    Py_XDECREF(record);
    Py_DECREF(count);
    Py_DECREF(sum);
    return op;
}

static PyObject *bucket_ops(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4 || !PyList_Check(args[1]) || !PyList_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "bucket_ops(keys, counts: list, sums: list, touched)");
        return NULL;
    }
    PyObject *keys = PySequence_Tuple(args[0]); /* our own: see fold */
    PyObject *touched = keys == NULL ? NULL : PySequence_Tuple(args[3]);
    Py_ssize_t n = touched == NULL ? 0 : PyTuple_GET_SIZE(touched);
    Py_ssize_t *bs = touched == NULL ? NULL : PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n + 1));
    PyObject *out = bs == NULL ? NULL : PyList_New(n);
    if (out == NULL) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        bs[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(touched, i));
        if (bs[i] == -1 && PyErr_Occurred()) goto fail;
    }
    qsort(bs, (size_t)n, sizeof(Py_ssize_t), cmp_ssize);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *op = bucket_op(keys, args[1], args[2], bs[i]);
        if (op == NULL) goto fail;
        PyList_SET_ITEM(out, i, op);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    PyMem_Free(bs);
    Py_XDECREF(touched);
    Py_XDECREF(keys);
    return out;
}

/* ---- blake2b, position ---------------------------------------------------------------- */

static PyObject *py_blake2b(PyObject *self, PyObject *args, PyObject *kwargs) {
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

static PyObject *position(PyObject *self, PyObject *key) {
    (void)self;
    Py_buffer view;
    if (key_view(key, &view) < 0) return NULL;
    uint8_t out[8];
    blake2b_hash(view.buf, (size_t)view.len, out, 8);
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)out, 8);
}

/* ---- lww_run -------------------------------------------------------------------------- */

#define WALL_MAX ((UINT64_C(1) << 48) - 1)
#define LOGICAL_MAX UINT64_C(0xFFFF)
#define RAW_FIELDS 8

/* The argument of the definite CBOR head of major type `major` at buf[*p]: 0 with *p
 * moved past the head, or -1 (another type, an indefinite or reserved head, or a head
 * that runs past `end`) with *p unchanged. */
static int head_arg(const uint8_t *buf, Py_ssize_t end, Py_ssize_t *p, int major, uint64_t *out) {
    if (*p >= end || buf[*p] >> 5 != major) return -1;
    unsigned ai = buf[*p] & 31;
    if (ai < 24) {
        *out = ai;
        *p += 1;
        return 0;
    }
    if (ai > 27) return -1;
    Py_ssize_t n = (Py_ssize_t)1 << (ai - 24);
    if (n > end - *p - 1) return -1;
    uint64_t v = 0;
    for (Py_ssize_t i = 1; i <= n; i++) v = (v << 8) | buf[*p + i];
    *out = v;
    *p += 1 + n;
    return 0;
}

/* A definite byte string at buf[*p]: its start in *start, *p moved past it; or -1. */
static int byte_string(const uint8_t *buf, Py_ssize_t end, Py_ssize_t *p, Py_ssize_t *start,
                       Py_ssize_t *len) {
    uint64_t n;
    Py_ssize_t q = *p;
    if (head_arg(buf, end, &q, 2, &n) < 0 || n > (uint64_t)(end - q)) return -1;
    *start = q;
    *len = (Py_ssize_t)n;
    *p = q + (Py_ssize_t)n;
    return 0;
}

/* The slot offsets of `cls`'s eight RawEntry fields, from their member descriptors. */
static int entry_offsets(PyObject *cls, PyObject *slots, Py_ssize_t off[RAW_FIELDS]) {
    if (!PyType_Check(cls) || !PyTuple_Check(slots) || PyTuple_GET_SIZE(slots) != RAW_FIELDS) {
        PyErr_SetString(PyExc_TypeError, "cls: a type; slots: a tuple of its 8 member descriptors");
        return -1;
    }
    PyTypeObject *type = (PyTypeObject *)cls;
    for (Py_ssize_t i = 0; i < RAW_FIELDS; i++) {
        PyObject *d = PyTuple_GET_ITEM(slots, i);
        if (Py_TYPE(d) != &PyMemberDescr_Type || PyDescr_TYPE(d) != type) {
            PyErr_SetString(PyExc_TypeError, "slots must be member descriptors of cls");
            return -1;
        }
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY) || m->offset < (Py_ssize_t)sizeof(PyObject) ||
            m->offset > type->tp_basicsize - (Py_ssize_t)sizeof(PyObject *)) {
            PyErr_SetString(PyExc_TypeError, "slots must be writable object slots of cls");
            return -1;
        }
        off[i] = m->offset;
    }
    return 0;
}

/* One RawEntry from its eight fields (references stolen, even on failure). */
static PyObject *new_entry(PyTypeObject *type, const Py_ssize_t off[RAW_FIELDS],
                           PyObject *fields[RAW_FIELDS]) {
    PyObject *e = NULL;
    int ok = 1;
    for (int i = 0; i < RAW_FIELDS; i++) ok = ok && fields[i] != NULL;
    if (ok) e = type->tp_alloc(type, 0);
    if (e == NULL) {
        for (int i = 0; i < RAW_FIELDS; i++) Py_XDECREF(fields[i]);
        return NULL;
    }
    for (int i = 0; i < RAW_FIELDS; i++) *(PyObject **)((char *)e + off[i]) = fields[i];
    return e;
}

static PyObject *lww_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "lww_run(buf, pos, count, base, peers, cls, slots)");
        return NULL;
    }
    PyObject *peers = args[4];
    if (!PyBytes_CheckExact(args[0]) || !PyList_Check(peers)) {
        PyErr_SetString(PyExc_TypeError, "buf: bytes; peers: a list");
        return NULL;
    }
    Py_ssize_t off[RAW_FIELDS];
    if (entry_offsets(args[5], args[6], off) < 0) return NULL;
    PyTypeObject *type = (PyTypeObject *)args[5];
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t count = PyLong_AsSsize_t(args[2]);
    if (count == -1 && PyErr_Occurred()) return NULL;
    int overflow;
    long long sbase = PyLong_AsLongLongAndOverflow(args[3], &overflow);
    if (sbase == -1 && PyErr_Occurred()) return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    if (overflow || sbase < 0 || (uint64_t)sbase > WALL_MAX || pos < 0) count = 0;
    uint64_t base = (uint64_t)sbase;
    const uint8_t *buf = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t end = PyBytes_GET_SIZE(args[0]);
    while (count > 0 && pos < end && buf[pos] == 0x85) {
        Py_ssize_t p = pos + 1, ks, kn, vs = 0, vn = 0;
        uint64_t dwall, logical, pidx;
        if (byte_string(buf, end, &p, &ks, &kn) < 0 || head_arg(buf, end, &p, 0, &dwall) < 0 ||
            head_arg(buf, end, &p, 0, &logical) < 0 || head_arg(buf, end, &p, 0, &pidx) < 0)
            break;
        if (dwall > WALL_MAX - base || logical > LOGICAL_MAX ||
            pidx >= (uint64_t)PyList_GET_SIZE(peers) || p >= end)
            break;
        int deleted = buf[p] == 0xF6;
        if (deleted)
            p += 1;
        else if (byte_string(buf, end, &p, &vs, &vn) < 0)
            break;
        PyObject *peer = PyList_GET_ITEM(peers, (Py_ssize_t)pidx);
        Py_INCREF(peer); /* before anything is allocated: a collection could run code */
        PyObject *fields[RAW_FIELDS] = {
            PyBytes_FromStringAndSize((const char *)buf + ks, kn),
            PyBytes_FromStringAndSize((const char *)buf + vs, vn),
            PyLong_FromUnsignedLongLong(((base + dwall) << 16) | logical),
            peer,
            Py_NewRef(deleted ? Py_True : Py_False),
            PyLong_FromLong(0),
            PyTuple_New(0),
            PyTuple_New(0),
        };
        PyObject *e = new_entry(type, off, fields);
        if (e == NULL || PyList_Append(out, e) < 0) {
            Py_XDECREF(e);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(e);
        pos = p;
        count--;
    }
    return Py_BuildValue("(Nn)", out, pos);
}

/* ---- stage_records ------------------------------------------------------------------ */

/* The layout constants, from crdt_kv.layout through accel (never written here). */
typedef struct {
    const char *data, *log;
    Py_ssize_t data_len, log_len, min_record;
    long flag_deleted, format_min, format_max;
    PyObject *corrupt;
} Layout;

/* Scratch buffer for ``len(key) key body``: grown as needed, freed by the caller. */
typedef struct {
    uint8_t *buf;
    size_t cap;
} Scratch;

static int parse_layout(PyObject *t, Layout *l) {
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 9 || !PyBytes_Check(PyTuple_GET_ITEM(t, 0)) ||
        !PyBytes_Check(PyTuple_GET_ITEM(t, 1))) {
        PyErr_SetString(PyExc_TypeError, "layout: (data, log, flag_deleted, format_min, "
                                         "format_max, min_record, seq_size, keylen_size, error)");
        return -1;
    }
    l->data = PyBytes_AS_STRING(PyTuple_GET_ITEM(t, 0));
    l->data_len = PyBytes_GET_SIZE(PyTuple_GET_ITEM(t, 0));
    l->log = PyBytes_AS_STRING(PyTuple_GET_ITEM(t, 1));
    l->log_len = PyBytes_GET_SIZE(PyTuple_GET_ITEM(t, 1));
    l->flag_deleted = PyLong_AsLong(PyTuple_GET_ITEM(t, 2));
    l->format_min = PyLong_AsLong(PyTuple_GET_ITEM(t, 3));
    l->format_max = PyLong_AsLong(PyTuple_GET_ITEM(t, 4));
    l->min_record = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 5));
    long seq_size = PyLong_AsLong(PyTuple_GET_ITEM(t, 6));
    long keylen_size = PyLong_AsLong(PyTuple_GET_ITEM(t, 7));
    l->corrupt = PyTuple_GET_ITEM(t, 8);
    if (PyErr_Occurred()) return -1;
    /* the C packs seqs as 8 big-endian bytes and key lengths as 4: refuse anything else */
    if (seq_size != 8 || keylen_size != 4 || l->min_record < 2 + seq_size ||
        !PyExceptionClass_Check(l->corrupt)) {
        PyErr_SetString(PyExc_ValueError, "layout: seq_size must be 8, keylen_size 4, "
                                          "min_record >= 10 and error an exception class");
        return -1;
    }
    return 0;
}

/* BLAKE2b-256 of ``len(key) key part`` (the key length as 4 big-endian bytes). */
static int body_digest(Scratch *s, const char *key, Py_ssize_t klen, const char *part,
                       Py_ssize_t plen, uint8_t out[32]) {
    size_t need = 4 + (size_t)klen + (size_t)plen;
    if (need > s->cap) {
        uint8_t *b = PyMem_Realloc(s->buf, need);
        if (b == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->buf = b;
        s->cap = need;
    }
    uint32_t n = (uint32_t)klen;
    s->buf[0] = (uint8_t)(n >> 24);
    s->buf[1] = (uint8_t)(n >> 16);
    s->buf[2] = (uint8_t)(n >> 8);
    s->buf[3] = (uint8_t)n;
    memcpy(s->buf + 4, key, (size_t)klen);
    memcpy(s->buf + 4 + klen, part, (size_t)plen);
    blake2b_hash(s->buf, need, out, 32);
    return 0;
}

/* ``a + b`` as a new bytes object. */
static PyObject *concat(const char *a, Py_ssize_t an, const char *b, Py_ssize_t bn) {
    PyObject *r = PyBytes_FromStringAndSize(NULL, an + bn);
    if (r == NULL) return NULL;
    memcpy(PyBytes_AS_STRING(r), a, (size_t)an);
    memcpy(PyBytes_AS_STRING(r) + an, b, (size_t)bn);
    return r;
}

/* Append a new 2-tuple of atomic objects (references stolen, even on failure) to ``list``,
 * untracked by the collector as CPython untracks such tuples at their first collection. */
static int append_pair(PyObject *list, PyObject *a, PyObject *b) {
    if (a == NULL || b == NULL) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        return -1;
    }
    PyObject *t = PyTuple_New(2);
    if (t == NULL) {
        Py_DECREF(a);
        Py_DECREF(b);
        return -1;
    }
    PyTuple_SET_ITEM(t, 0, a);
    PyTuple_SET_ITEM(t, 1, b);
    PyObject_GC_UnTrack(t); /* bytes and None only: never in a cycle, nothing to traverse */
    int r = PyList_Append(list, t);
    Py_DECREF(t);
    return r;
}

/* _PyLong_FromByteArray, but 0 without it: on 3.11 it reads an unset digit of a zero
 * (harmlessly, as 0 times it, but memcheck reports every later use of the result). */
static PyObject *int_from(const uint8_t *buf, size_t n, int little_endian, int is_signed) {
    size_t i = 0;
    while (i < n && buf[i] == 0) i++;
    if (i == n) return PyLong_FromLong(0);
    return _PyLong_FromByteArray(buf, n, little_endian, is_signed);
}

/* The int ``new - old`` of two big-endian 256-bit digests (``old`` NULL: ``new``). */
static PyObject *digest_delta(const uint8_t new[32], const uint8_t *old) {
    uint8_t d[33];
    if (old == NULL) return int_from(new, 32, 0, 0);
    unsigned borrow = 0;
    for (int i = 31; i >= 0; i--) {
        unsigned x = (unsigned)new[i] - old[i] - borrow;
        d[i + 1] = (uint8_t)x;
        borrow = (x >> 8) & 1;
    }
    d[0] = borrow ? 0xFF : 0x00; /* a 264-bit two's complement */
    return int_from(d, 33, 0, 1);
}

/* ``acc += digest`` for a 320-bit little-endian accumulator and a big-endian digest. */
static void add_digest(uint64_t acc[5], const uint8_t d[32]) {
    uint64_t carry = 0;
    for (int i = 0; i < 4; i++) {
        uint64_t x = load_be64(d + 24 - 8 * i), s = acc[i] + x, t = s + carry;
        carry = (s < x) | (t < carry);
        acc[i] = t;
    }
    acc[4] += carry;
}

static PyObject *from_u320(const uint64_t x[5]) {
    unsigned char buf[40];
    for (int i = 0; i < 40; i++) buf[i] = (unsigned char)(x[i / 8] >> (8 * (i % 8)));
    return int_from(buf, 40, 1, 0);
}

/* One (key, body, old) item: appends to ops, logs and notes as the pure loop does. */
static int stage_one(const Layout *l, Scratch *s, PyObject *item, uint64_t seq, PyObject *ops,
                     PyObject *logs, PyObject *notes, uint64_t pos[5], uint64_t neg[5],
                     Py_ssize_t *count) {
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
        PyErr_SetString(PyExc_TypeError, "items must be (key, body, old) tuples");
        return -1;
    }
    PyObject *key = PyTuple_GET_ITEM(item, 0), *body = PyTuple_GET_ITEM(item, 1);
    PyObject *old = PyTuple_GET_ITEM(item, 2);
    if (!PyBytes_Check(key) || !PyBytes_Check(body) || (old != Py_None && !PyBytes_Check(old))) {
        PyErr_SetString(PyExc_TypeError, "key and body must be bytes, old bytes or None");
        return -1;
    }
    const char *k = PyBytes_AS_STRING(key), *b = PyBytes_AS_STRING(body);
    Py_ssize_t kn = PyBytes_GET_SIZE(key), bn = PyBytes_GET_SIZE(body);
    if (kn > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "key too long");
        return -1;
    }
    uint8_t nd[32], od[32];
    if (body_digest(s, k, kn, b, bn, nd) < 0) return -1;
    if (bn < 2) {
        PyErr_SetString(PyExc_IndexError, "index out of range");
        return -1;
    }
    Py_ssize_t live = ((uint8_t)b[1] & l->flag_deleted) ? 0 : 1;
    const char *o = NULL;
    Py_ssize_t on = 0;
    if (old != Py_None) {
        o = PyBytes_AS_STRING(old);
        on = PyBytes_GET_SIZE(old);
        if (on < l->min_record || (uint8_t)o[0] < l->format_min || (uint8_t)o[0] > l->format_max) {
            PyErr_Format(l->corrupt, "record of key %R is malformed", key);
            return -1;
        }
        if (body_digest(s, k, kn, o, on - 8, od) < 0) return -1;
        if (!((uint8_t)o[1] & l->flag_deleted)) live -= 1;
    }
    char sb[8];
    for (int i = 0; i < 8; i++) sb[i] = (char)(seq >> (56 - 8 * i));
    PyObject *delta = digest_delta(nd, o == NULL ? NULL : od);
    if (delta == NULL) return -1;
    Py_INCREF(key);
    PyObject *note = PyTuple_Pack(3, key, delta, o == NULL ? Py_True : Py_False);
    Py_DECREF(key);
    Py_DECREF(delta);
    if (note == NULL) return -1;
    PyObject_GC_UnTrack(note); /* bytes, int, bool */
    int r = PyList_Append(notes, note);
    Py_DECREF(note);
    if (r < 0) return -1;
    if (o != NULL) {
        Py_INCREF(Py_None);
        if (append_pair(ops, concat(l->log, l->log_len, o + on - 8, 8), Py_None) < 0) return -1;
        add_digest(neg, od);
    }
    add_digest(pos, nd);
    *count += live;
    if (append_pair(ops, concat(l->data, l->data_len, k, kn), concat(b, bn, sb, 8)) < 0)
        return -1;
    Py_INCREF(key);
    return append_pair(logs, concat(l->log, l->log_len, sb, 8), key);
}

static PyObject *stage_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "stage_records(items, seq, ops, logs, notes, layout)");
        return NULL;
    }
    PyObject *ops = args[2], *logs = args[3], *notes = args[4];
    if (!PyList_Check(ops) || !PyList_Check(logs) || !PyList_Check(notes)) {
        PyErr_SetString(PyExc_TypeError, "ops, logs and notes must be lists");
        return NULL;
    }
    Layout l;
    if (parse_layout(args[5], &l) < 0) return NULL;
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[1]);
    if (seq == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    PyObject *it = PyObject_GetIter(args[0]);
    if (it == NULL) return NULL;
    Scratch s = {NULL, 0};
    uint64_t pos[5] = {0}, neg[5] = {0};
    Py_ssize_t count = 0;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        int r = -1;
        if (seq == UINT64_MAX)
            PyErr_SetString(PyExc_OverflowError, "seq past 2**64 - 1");
        else
            r = stage_one(&l, &s, item, seq + 1, ops, logs, notes, pos, neg, &count);
        Py_DECREF(item);
        if (r < 0) break;
        seq++;
    }
    Py_DECREF(it);
    PyMem_Free(s.buf);
    if (PyErr_Occurred()) return NULL;
    PyObject *p = from_u320(pos), *n = from_u320(neg), *digest = NULL;
    if (p != NULL && n != NULL) digest = PyNumber_Subtract(p, n);
    Py_XDECREF(p);
    Py_XDECREF(n);
    if (digest == NULL) return NULL;
    return Py_BuildValue("(KNn)", seq, digest, count);
}

/* ---- fill_batch ----------------------------------------------------------------------- */

static PyObject *fill_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "fill_batch(ops, put, delete)");
        return NULL;
    }
    PyObject *ops = PySequence_Fast(args[0], "ops must be iterable");
    if (ops == NULL) return NULL;
    PyObject *put = args[1], *delete = args[2];
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(ops); i++) {
        PyObject *op = PySequence_Fast_GET_ITEM(ops, i);
        Py_INCREF(op); /* a call below could drop it from a list */
        PyObject *pair = PySequence_Fast(op, "ops must be (key, value) pairs");
        Py_DECREF(op);
        if (pair == NULL) break;
        PyObject *r = NULL;
        if (PySequence_Fast_GET_SIZE(pair) != 2)
            PyErr_Format(PyExc_ValueError, "an op must be a (key, value) pair, not %zd items",
                         PySequence_Fast_GET_SIZE(pair));
        else if (PySequence_Fast_GET_ITEM(pair, 1) == Py_None)
            r = PyObject_CallOneArg(delete, PySequence_Fast_GET_ITEM(pair, 0));
        else
            r = PyObject_Vectorcall(put, PySequence_Fast_ITEMS(pair), 2, NULL);
        Py_DECREF(pair);
        if (r == NULL) break;
        Py_DECREF(r);
    }
    Py_DECREF(ops);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

/* ---- module ----------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"blake2b", (PyCFunction)(void (*)(void))py_blake2b, METH_VARARGS | METH_KEYWORDS,
     "blake2b(data, digest_size=64) -> bytes: BLAKE2b, no key/salt/person (RFC 7693)."},
    {"position", position, METH_O, "position(key) -> bytes: the 8-byte BLAKE2b of key."},
    {"fold", (PyCFunction)(void (*)(void))fold, METH_FASTCALL,
     "fold(notes, counts, sums, added, removed, prefix, shift) -> list[int]: see "
     "crdt_kv.accel.fold."},
    {"sort_index", sort_index, METH_O, "sort_index(items) -> list[bytes]: sorted(items)."},
    {"bucket_ops", (PyCFunction)(void (*)(void))bucket_ops, METH_FASTCALL,
     "bucket_ops(keys, counts, sums, touched) -> list[tuple[bytes, bytes | None]]: see "
     "crdt_kv.accel.bucket_ops."},
    {"lww_run", (PyCFunction)(void (*)(void))lww_run, METH_FASTCALL,
     "lww_run(buf, pos, count, base, peers, cls, slots) -> (list, int): see "
     "crdt_kv.accel.lww_run."},
    {"stage_records", (PyCFunction)(void (*)(void))stage_records, METH_FASTCALL,
     "stage_records(items, seq, ops, logs, notes, layout) -> (int, int, int): see "
     "crdt_kv.accel.stage_records."},
    {"fill_batch", (PyCFunction)(void (*)(void))fill_batch, METH_FASTCALL,
     "fill_batch(ops, put, delete) -> None: see crdt_kv.accel.fill_batch."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "crdt_kv._speedups",
    "Compiled twins of crdt_kv.accel's pure-Python hot paths (import crdt_kv.accel instead).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
