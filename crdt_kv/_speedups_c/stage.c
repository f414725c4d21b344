/* The commit path: stage_records (a commit's records, change-log keys, digest deltas and
 * bucket notes; its reference is crdt_kv.layout.stage_records) and fill_batch (a backend
 * write batch filled without a Python loop). The pure-Python twins are in
 * crdt_kv/accel.py.
 */
#include "blake2b.h"

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

PyObject *stage_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
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

/* Is ``key`` (a bytes object, or anything else: never) one whose first byte is ``prefix``? */
static int routed(PyObject *key, int prefix) {
    return prefix >= 0 && PyBytes_Check(key) && PyBytes_GET_SIZE(key) > 0 &&
           (unsigned char)PyBytes_AS_STRING(key)[0] == prefix;
}

PyObject *fill_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3 && nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "fill_batch(ops, put, delete[, family, prefix])");
        return NULL;
    }
    PyObject *family = NULL;
    int prefix = -1;
    if (nargs == 5) {
        long p = PyLong_AsLong(args[4]);
        if (p == -1 && PyErr_Occurred()) return NULL;
        if (p < 0 || p > 255) {
            PyErr_Format(PyExc_ValueError, "prefix %ld is not a byte", p);
            return NULL;
        }
        family = args[3];
        prefix = (int)p;
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
        if (PySequence_Fast_GET_SIZE(pair) != 2) {
            PyErr_Format(PyExc_ValueError, "an op must be a (key, value) pair, not %zd items",
                         PySequence_Fast_GET_SIZE(pair));
        } else {
            PyObject *k = PySequence_Fast_GET_ITEM(pair, 0);
            PyObject *v = PySequence_Fast_GET_ITEM(pair, 1);
            if (routed(k, prefix)) {
                PyObject *call[3] = {k, v, family};
                if (v == Py_None) {
                    call[1] = family;
                    r = PyObject_Vectorcall(delete, call, 2, NULL);
                } else {
                    r = PyObject_Vectorcall(put, call, 3, NULL);
                }
            } else if (v == Py_None) {
                r = PyObject_CallOneArg(delete, k);
            } else {
                r = PyObject_Vectorcall(put, PySequence_Fast_ITEMS(pair), 2, NULL);
            }
        }
        Py_DECREF(pair);
        if (r == NULL) break;
        Py_DECREF(r);
    }
    Py_DECREF(ops);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}
