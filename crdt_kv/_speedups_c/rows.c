/* lww_run: the plain LWW rows of a sync batch frame, parsed straight from the CBOR into
 * RawEntry objects (their slots written through the class's member descriptors). A row it
 * does not recognise ends the run and is left to the checking decoder; the pure-Python
 * twin is in crdt_kv/accel.py.
 */
#include "speedups.h"

#include <structmember.h>

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

PyObject *lww_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
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
