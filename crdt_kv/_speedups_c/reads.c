/* The per-record work of the store's reads (issue 13): cbor_item_end (where the first
 * CBOR item of a buffer ends, from its structure alone), lww_value (what Store.get makes of
 * a stored record), point_value (Store.get of a plain str key, the read included), the
 * Getter type bind_get makes (a store's get with no Python frame) and scan_item (what a
 * range read makes of one (storage key, record)).
 *
 * The pure-Python references are in crdt_kv/layout_reads.py. The functions here handle
 * only the common case: a well-formed format-1 record whose value is exactly one CBOR item
 * that cbor2's loads decodes. Anything else (a siblings or malformed record, a non-ASCII
 * peer id, a key that is not UTF-8, a value with trailing bytes, nested deeper than
 * SCAN_DEPTH, or that loads refuses) is handed to the reference itself, so results and
 * errors are the reference's by construction.
 */
#include "speedups.h"

#include <stddef.h>
#include <structmember.h>

/* The record layout (crdt_kv.layout) and the longest str key encoded without the store's
 * encoder (crdt_kv.codec.SHORT_KEY_CHARS); reads_setup checks they match. */
#define DATA_PREFIX 'd'
#define DATA_SKIP 1
#define FORMAT_VERSION 1
#define FLAG_DELETED 1
#define RECORD_HEAD 11
#define SEQ_SIZE 8
#define MIN_RECORD (RECORD_HEAD + SEQ_SIZE)
#define SHORT_KEY_CHARS 16384

/* Nesting the scanner follows (definite and indefinite arrays and maps; tags take none);
 * a deeper item is "not found" (-1), which sends the value to the reference decoder. */
#define SCAN_DEPTH 64

enum { WHAT_ITEMS = 0, WHAT_KEYS = 1, WHAT_VALUES = 2 };

/* Set once by reads_setup (strong references, kept for the life of the process). */
static PyObject *cfg_loads, *cfg_lww_slow, *cfg_scan_slow, *cfg_skip, *cfg_unhandled;

/* ---- the scanner ------------------------------------------------------------------------ */

typedef struct {
    uint64_t left; /* items still to read in a definite container */
    uint8_t indef; /* 0 definite, 4 indefinite array, 5 indefinite map (the major type) */
    uint8_t odd;   /* an indefinite map has read an odd number of items (a key, no value) */
} Level;

/* The argument of the head whose additional information is `ai`, its bytes at b[*p..]:
 * 0 with *p moved past them, or -1 (reserved 28-30, indefinite 31, or past `end`). */
static int head_value(const uint8_t *b, Py_ssize_t end, Py_ssize_t *p, unsigned ai,
                      uint64_t *out) {
    if (ai < 24) {
        *out = ai;
        return 0;
    }
    if (ai > 27) return -1;
    Py_ssize_t n = (Py_ssize_t)1 << (ai - 24);
    if (n > end - *p) return -1;
    uint64_t v = 0;
    for (Py_ssize_t i = 0; i < n; i++) v = (v << 8) | b[*p + i];
    *p += n;
    *out = v;
    return 0;
}

/* The chunks of an indefinite-length string of major type `major` from b[*p] to its
 * break: 0 with *p after the break, or -1 (a chunk of another type, nested indefinite,
 * or past `end`). */
static int string_chunks(const uint8_t *b, Py_ssize_t end, Py_ssize_t *p, unsigned major) {
    for (;;) {
        if (*p >= end) return -1;
        uint8_t ib = b[(*p)++];
        if (ib == 0xFF) return 0;
        uint64_t len;
        if (ib >> 5 != major || head_value(b, end, p, ib & 31, &len) < 0 ||
            len > (uint64_t)(end - *p))
            return -1;
        *p += (Py_ssize_t)len;
    }
}

/* The offset just past the first CBOR data item of b[0:end], or -1 when b does not
 * start with one well-formed item (RFC 8949 section 3: reserved or misplaced heads,
 * a two-byte simple value below 32, a stray break, an odd indefinite map, a truncation)
 * or the item nests deeper than SCAN_DEPTH. Reads nothing outside b[0:end]. */
static Py_ssize_t item_end(const uint8_t *b, Py_ssize_t end) {
    Level st[SCAN_DEPTH + 1];
    int d = 0, tagged = 0;
    Py_ssize_t p = 0;
    st[0].left = 1;
    st[0].indef = 0;
    for (;;) {
        if (p >= end) return -1;
        uint8_t ib = b[p++];
        unsigned major = ib >> 5, ai = ib & 31;
        uint64_t arg = 0;
        if (ai == 31) {
            if (major == 7) { /* a break closes the innermost indefinite container */
                if (tagged || !st[d].indef || (st[d].indef == 5 && st[d].odd)) return -1;
                d--;
            } else if (major == 2 || major == 3) {
                if (string_chunks(b, end, &p, major) < 0) return -1;
            } else if (major == 4 || major == 5) {
                if (d == SCAN_DEPTH) return -1;
                d++;
                st[d].left = 0;
                st[d].indef = (uint8_t)major;
                st[d].odd = 0;
                tagged = 0;
                continue;
            } else {
                return -1; /* an indefinite integer or tag */
            }
        } else {
            if (head_value(b, end, &p, ai, &arg) < 0) return -1;
            uint64_t room = (uint64_t)(end - p);
            if (major == 2 || major == 3) {
                if (arg > room) return -1;
                p += (Py_ssize_t)arg;
            } else if (major == 4 || major == 5) {
                /* every item takes at least one byte: a longer count is a truncation */
                if (arg > (major == 4 ? room : room / 2)) return -1;
                if (arg) {
                    if (d == SCAN_DEPTH) return -1;
                    d++;
                    st[d].left = major == 4 ? arg : 2 * arg;
                    st[d].indef = 0;
                    tagged = 0;
                    continue;
                }
            } else if (major == 6) {
                tagged = 1; /* the tag and the next item are one item */
                continue;
            } else if (major == 7 && ai == 24 && arg < 32) {
                return -1;
            }
        }
        tagged = 0;
        /* one item is complete at level d: count it, closing definite containers */
        for (;;) {
            if (st[d].indef) {
                st[d].odd ^= 1;
                break;
            }
            if (--st[d].left) break;
            if (d == 0) return p;
            d--;
        }
    }
}

PyObject *cbor_item_end(PyObject *self, PyObject *data) {
    (void)self;
    if (!PyBytes_Check(data)) {
        PyErr_Format(PyExc_TypeError, "cbor_item_end takes bytes, not %.100s",
                     Py_TYPE(data)->tp_name);
        return NULL;
    }
    return PyLong_FromSsize_t(
        item_end((const uint8_t *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)));
}

/* ---- decoding ----------------------------------------------------------------------------- */

/* Decode b[0:n] if it is exactly one item that loads takes: 1 with *out set, 0 when the
 * reference must decide (not exactly one item, or loads raised an Exception), -1 on an
 * error to propagate (no memory for the copy, or a BaseException from loads). */
static int decode_one(const char *b, Py_ssize_t n, PyObject **out) {
    if (item_end((const uint8_t *)b, n) != n) return 0;
    PyObject *v = PyBytes_FromStringAndSize(b, n);
    if (v == NULL) return -1;
    *out = PyObject_CallOneArg(cfg_loads, v);
    Py_DECREF(v);
    if (*out != NULL) return 1;
    if (!PyErr_ExceptionMatches(PyExc_Exception)) return -1;
    PyErr_Clear();
    return 0;
}

static int configured(void) {
    if (cfg_loads != NULL) return 1;
    PyErr_SetString(PyExc_RuntimeError, "crdt_kv._speedups.reads_setup was not called");
    return 0;
}

/* lww_value of args = (blob, key, default). */
static PyObject *record_value(PyObject *const *args) {
    PyObject *blob = args[0];
    if (PyBytes_CheckExact(blob) && PyBytes_GET_SIZE(blob) >= MIN_RECORD) {
        const uint8_t *b = (const uint8_t *)PyBytes_AS_STRING(blob);
        Py_ssize_t start = RECORD_HEAD + b[RECORD_HEAD - 1];
        Py_ssize_t stop = PyBytes_GET_SIZE(blob) - SEQ_SIZE;
        if (b[0] == FORMAT_VERSION && b[1] & FLAG_DELETED) return Py_NewRef(args[2]);
        if (b[0] == FORMAT_VERSION && start <= stop) {
            PyObject *v;
            int got = decode_one((const char *)b + start, stop - start, &v);
            if (got) return got > 0 ? v : NULL;
        }
    }
    return PyObject_Vectorcall(cfg_lww_slow, args, 3, NULL);
}

PyObject *lww_value(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "lww_value(blob, key, default)");
        return NULL;
    }
    return configured() ? record_value(args) : NULL;
}

/* DATA + the UTF-8 of a str key of at most SHORT_KEY_CHARS characters; NULL with no
 * error set when the key is anything else (or does not encode: lone surrogates). */
static PyObject *storage_key(PyObject *key) {
    if (!PyUnicode_CheckExact(key) || PyUnicode_GET_LENGTH(key) > SHORT_KEY_CHARS) return NULL;
    PyObject *utf8 = NULL;
    const char *data;
    Py_ssize_t n;
    if (PyUnicode_IS_ASCII(key)) {
        data = (const char *)PyUnicode_DATA(key);
        n = PyUnicode_GET_LENGTH(key);
    } else {
        utf8 = PyUnicode_AsUTF8String(key);
        if (utf8 == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) PyErr_Clear();
            return NULL;
        }
        data = PyBytes_AS_STRING(utf8);
        n = PyBytes_GET_SIZE(utf8);
    }
    PyObject *k = PyBytes_FromStringAndSize(NULL, DATA_SKIP + n);
    if (k != NULL) {
        PyBytes_AS_STRING(k)[0] = DATA_PREFIX;
        memcpy(PyBytes_AS_STRING(k) + DATA_SKIP, data, (size_t)n);
    }
    Py_XDECREF(utf8);
    return k;
}

/* point_value(get, key, default) once configured: a new reference (to cfg_unhandled for
 * a key it leaves to the store's encoder), or NULL with an error set. */
static PyObject *point_read(PyObject *get, PyObject *key, PyObject *deflt) {
    PyObject *k = storage_key(key);
    if (k == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(cfg_unhandled);
    PyObject *blob = PyObject_CallOneArg(get, k);
    Py_DECREF(k);
    if (blob == NULL) return NULL;
    PyObject *out;
    if (blob == Py_None) {
        out = Py_NewRef(deflt);
    } else {
        PyObject *record[3] = {blob, key, deflt};
        out = record_value(record);
    }
    Py_DECREF(blob);
    return out;
}

PyObject *point_value(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "point_value(get, key, default)");
        return NULL;
    }
    return configured() ? point_read(args[0], args[1], args[2]) : NULL;
}

/* ---- a store's get, bound --------------------------------------------------------------- */

/* bind_get(writer, backend, fallback): a callable that is fallback (the store's Python get,
 * bound) but reads a plain str key itself: get(key) or get(key, default), default
 * positional or by name, while writer.closed is false, through backend.point_get (looked
 * up per call: a backend rebinds it). Every other call, and every key point_read leaves,
 * goes to fallback with the caller's own arguments, so results and errors are its own.
 * A store holds its getter and the getter holds the store (through fallback): the GC
 * collects the pair (a store is in cycles of its own already). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *writer, *backend, *fallback;
} Getter;

static PyObject *str_closed, *str_point_get, *str_default;

static PyObject *getter_call(PyObject *self, PyObject *const *args, size_t nargsf,
                             PyObject *kwnames) {
    Getter *g = (Getter *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    int plain = nkw == 0 ? nargs == 1 || nargs == 2
                         : nargs == 1 && nkw == 1 &&
                               PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), str_default) == 0;
    if (PyErr_Occurred()) return NULL;
    if (plain) {
        PyObject *closed = PyObject_GetAttr(g->writer, str_closed);
        if (closed == NULL) return NULL;
        int is_closed = PyObject_IsTrue(closed);
        Py_DECREF(closed);
        if (is_closed < 0) return NULL;
        if (!is_closed) {
            PyObject *get = PyObject_GetAttr(g->backend, str_point_get);
            if (get == NULL) return NULL;
            PyObject *out = point_read(get, args[0], nargs + nkw == 2 ? args[1] : Py_None);
            Py_DECREF(get);
            if (out != cfg_unhandled) return out;
            Py_DECREF(out);
        }
    }
    return PyObject_Vectorcall(g->fallback, args, nargsf, kwnames);
}

static int getter_traverse(PyObject *self, visitproc visit, void *arg) {
    Getter *g = (Getter *)self;
    Py_VISIT(g->writer);
    Py_VISIT(g->backend);
    Py_VISIT(g->fallback);
    return 0;
}

static int getter_clear(PyObject *self) {
    Getter *g = (Getter *)self;
    Py_CLEAR(g->writer);
    Py_CLEAR(g->backend);
    Py_CLEAR(g->fallback);
    return 0;
}

static void getter_dealloc(PyObject *self) {
    PyObject_GC_UnTrack(self);
    getter_clear(self);
    PyObject_GC_Del(self);
}

static PyMemberDef getter_members[] = {
    {"__wrapped__", T_OBJECT, offsetof(Getter, fallback), READONLY,
     "the store's Python get, which this getter is (inspect.signature follows it)"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject GetterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "crdt_kv._speedups.Getter",
    .tp_basicsize = sizeof(Getter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Store.get of a store with utf-8 keys and cbor values (see crdt_kv.accel.bind_get).",
    .tp_vectorcall_offset = offsetof(Getter, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = getter_traverse,
    .tp_clear = getter_clear,
    .tp_dealloc = getter_dealloc,
    .tp_members = getter_members,
};

int reads_ready(void) {
    str_closed = PyUnicode_InternFromString("closed");
    str_point_get = PyUnicode_InternFromString("point_get");
    str_default = PyUnicode_InternFromString("default");
    if (str_closed == NULL || str_point_get == NULL || str_default == NULL) return -1;
    return PyType_Ready(&GetterType);
}

PyObject *bind_get(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3 || !PyCallable_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "bind_get(writer, backend, fallback: callable)");
        return NULL;
    }
    if (!configured()) return NULL;
    Getter *g = PyObject_GC_New(Getter, &GetterType);
    if (g == NULL) return NULL;
    g->vectorcall = getter_call;
    g->writer = Py_NewRef(args[0]);
    g->backend = Py_NewRef(args[1]);
    g->fallback = Py_NewRef(args[2]);
    PyObject_GC_Track((PyObject *)g);
    return (PyObject *)g;
}

/* Whether a format-1 record of n bytes at b is whole, with a non-empty peer id that is
 * ASCII (a peer id of other bytes goes to the reference, which checks its UTF-8). */
static int plain_record(const uint8_t *b, Py_ssize_t n) {
    if (n < MIN_RECORD || b[0] != FORMAT_VERSION) return 0;
    Py_ssize_t plen = b[RECORD_HEAD - 1];
    if (plen == 0 || RECORD_HEAD + plen > n - SEQ_SIZE) return 0;
    for (Py_ssize_t i = RECORD_HEAD; i < RECORD_HEAD + plen; i++)
        if (b[i] & 0x80) return 0;
    return 1;
}

/* The item of a plain record (deleted ones excluded): 1 with *out set, 0 for the
 * reference, -1 on an error to propagate. */
static int plain_item(PyObject *k, const uint8_t *b, Py_ssize_t n, long what, int utf8,
                      PyObject **out) {
    PyObject *key = NULL, *value = NULL;
    if (what != WHAT_VALUES) {
        const char *kb = PyBytes_AS_STRING(k) + DATA_SKIP;
        Py_ssize_t kn = PyBytes_GET_SIZE(k) - DATA_SKIP;
        key = utf8 ? PyUnicode_DecodeUTF8(kb, kn, NULL) : PyBytes_FromStringAndSize(kb, kn);
        if (key == NULL) {
            if (!utf8 || !PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return -1;
            PyErr_Clear();
            return 0;
        }
        if (what == WHAT_KEYS) {
            *out = key;
            return 1;
        }
    }
    Py_ssize_t start = RECORD_HEAD + b[RECORD_HEAD - 1];
    int got = decode_one((const char *)b + start, n - SEQ_SIZE - start, &value);
    if (got <= 0) {
        Py_XDECREF(key);
        return got;
    }
    if (what == WHAT_VALUES) {
        *out = value;
        return 1;
    }
    *out = PyTuple_New(2);
    if (*out == NULL) {
        Py_DECREF(key);
        Py_DECREF(value);
        return -1;
    }
    PyTuple_SET_ITEM(*out, 0, key);
    PyTuple_SET_ITEM(*out, 1, value);
    return 1;
}

PyObject *scan_item(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scan_item(k, blob, what, utf8_keys)");
        return NULL;
    }
    if (!configured()) return NULL;
    PyObject *k = args[0], *blob = args[1];
    /* anything but an exact int `what` and a bool `utf8_keys` goes to the reference */
    long what = PyLong_CheckExact(args[2]) ? PyLong_AsLong(args[2]) : -1;
    if (what == -1 && PyErr_Occurred()) PyErr_Clear(); /* past a long: not 0-2 */
    int utf8 = args[3] == Py_True;
    if (PyBytes_CheckExact(k) && PyBytes_GET_SIZE(k) >= DATA_SKIP && PyBytes_CheckExact(blob) &&
        what >= WHAT_ITEMS && what <= WHAT_VALUES && PyBool_Check(args[3])) {
        const uint8_t *b = (const uint8_t *)PyBytes_AS_STRING(blob);
        Py_ssize_t n = PyBytes_GET_SIZE(blob);
        if (plain_record(b, n)) {
            if (b[1] & FLAG_DELETED) return Py_NewRef(cfg_skip);
            PyObject *item;
            int got = plain_item(k, b, n, what, utf8, &item);
            if (got) return got > 0 ? item : NULL;
        }
    }
    return PyObject_Vectorcall(cfg_scan_slow, args, 4, NULL);
}

/* ---- setup -------------------------------------------------------------------------------- */

PyObject *reads_setup(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "reads_setup(layout, loads, lww_slow, scan_slow, skip, unhandled)");
        return NULL;
    }
    const char prefix = DATA_PREFIX;
    PyObject *want = Py_BuildValue("(y#iiiii)", &prefix, (Py_ssize_t)DATA_SKIP, FORMAT_VERSION,
                                   FLAG_DELETED, RECORD_HEAD, SEQ_SIZE, SHORT_KEY_CHARS);
    if (want == NULL) return NULL;
    int same = PyObject_RichCompareBool(args[0], want, Py_EQ);
    if (same <= 0) {
        if (same == 0)
            PyErr_Format(PyExc_ValueError,
                         "layout %R is not the one the compiled reads know: %R", args[0], want);
        Py_DECREF(want);
        return NULL;
    }
    Py_DECREF(want);
    for (int i = 1; i < 4; i++) {
        if (!PyCallable_Check(args[i])) {
            PyErr_SetString(PyExc_TypeError, "loads, lww_slow and scan_slow must be callable");
            return NULL;
        }
    }
    Py_XSETREF(cfg_loads, Py_NewRef(args[1]));
    Py_XSETREF(cfg_lww_slow, Py_NewRef(args[2]));
    Py_XSETREF(cfg_scan_slow, Py_NewRef(args[3]));
    Py_XSETREF(cfg_skip, Py_NewRef(args[4]));
    Py_XSETREF(cfg_unhandled, Py_NewRef(args[5]));
    Py_RETURN_NONE;
}
