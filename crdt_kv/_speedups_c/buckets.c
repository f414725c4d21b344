/* The bucket fingerprints: fold (commit notes into bucket counts, sums mod 2**256 and
 * index keys), sort_index (sorted(items) for a list of bytes) and bucket_ops (the records
 * of the touched buckets). Their pure-Python twins are in crdt_kv/accel.py.
 */
#include "blake2b.h"
#include "u256.h"

#include <stdlib.h>

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

PyObject *fold(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
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

PyObject *sort_index(PyObject *self, PyObject *arg) {
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

PyObject *bucket_ops(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
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
