/* The shared internal header of crdt_kv._speedups: the includes every file needs and the
 * Python-facing functions each file exports to module.c (its method table).
 *
 * Why hidden: the files are linked into one shared object, and only PyInit__speedups is
 * its interface; hidden symbols are bound inside the object (direct calls, no PLT) and
 * cannot clash with any other library's names.
 */
#ifndef CRDT_KV_SPEEDUPS_H
#define CRDT_KV_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define SPEEDUPS_HIDDEN __attribute__((visibility("hidden")))
#else
#define SPEEDUPS_HIDDEN
#endif

/* blake2b.c */
SPEEDUPS_HIDDEN PyObject *py_blake2b(PyObject *self, PyObject *args, PyObject *kwargs);
SPEEDUPS_HIDDEN PyObject *position(PyObject *self, PyObject *key);

/* buckets.c */
SPEEDUPS_HIDDEN PyObject *fold(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
SPEEDUPS_HIDDEN PyObject *sort_index(PyObject *self, PyObject *arg);
SPEEDUPS_HIDDEN PyObject *bucket_ops(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

/* reads.c */
SPEEDUPS_HIDDEN PyObject *cbor_item_end(PyObject *self, PyObject *data);
SPEEDUPS_HIDDEN PyObject *lww_value(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
SPEEDUPS_HIDDEN PyObject *point_value(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
SPEEDUPS_HIDDEN PyObject *scan_item(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
SPEEDUPS_HIDDEN PyObject *bind_get(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
SPEEDUPS_HIDDEN int reads_ready(void); /* the Getter type bind_get returns: at import */
SPEEDUPS_HIDDEN PyObject *reads_setup(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

/* rows.c */
SPEEDUPS_HIDDEN PyObject *lww_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

/* stage.c */
SPEEDUPS_HIDDEN PyObject *stage_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
SPEEDUPS_HIDDEN PyObject *fill_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

#endif
