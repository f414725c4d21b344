/* crdt_kv._speedups: the compiled twins of the pure-Python hot paths in crdt_kv/accel.py.
 *
 * Only crdt_kv/accel.py imports this module; the pure-Python functions there are the
 * reference, and every function here returns exactly what its twin returns (the tests
 * compare them on random inputs). This file is the module itself; the functions, by file:
 *
 * blake2b.c (BLAKE2b itself, with its inline one-shot hash in blake2b.h):
 *   blake2b(data, digest_size=64)  BLAKE2b without key, salt or personalisation (RFC 7693)
 *   position(key)                  the 8-byte BLAKE2b of a key: its position, big-endian
 * buckets.c (with the mod 2**256 helpers of u256.h):
 *   fold(notes, counts, sums, added, removed, prefix, shift)
 *                                  fold commit notes into bucket counts and sums mod 2**256
 *   sort_index(items)              sorted(items) for a list of bytes
 *   bucket_ops(keys, counts, sums, touched)
 *                                  the (key, record) pairs of the touched bucket fingerprints
 * reads.c (the per-record work of Store.get and the range reads):
 *   cbor_item_end(data)            where the first CBOR item of data ends (structure only)
 *   lww_value(blob, key, default)  Store.get's decoded value of a stored record
 *   point_value(get, key, default) Store.get of a str key: its storage key, the read, then
 *                                  lww_value
 *   bind_get(writer, backend, fallback)
 *                                  a store's get: point_value while open, else fallback
 *   scan_item(k, blob, what, utf8_keys)
 *                                  a range read's item of one (storage key, record)
 *   reads_setup(layout, loads, lww_slow, scan_slow, skip, unhandled)
 *                                  the layout and what the three above call or return:
 *                                  cbor2's loads, the references, the sentinels
 * rows.c:
 *   lww_run(buf, pos, count, base, peers, cls, slots)
 *                                  the plain LWW rows of a batch frame as RawEntry objects
 * stage.c:
 *   stage_records(items, seq, ops, logs, notes, layout)
 *                                  a commit's records, change-log keys, digest deltas
 *   fill_batch(ops, put, delete[, family, prefix])   put(k, v) or delete(k) for each (k, v)
 *                                  of ops, in order (k starting with byte prefix: put(k, v,
 *                                  family), delete(k, family))
 *
 * speedups.h declares what each file exports to the method table below.
 */
#include "speedups.h"

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
    {"cbor_item_end", cbor_item_end, METH_O,
     "cbor_item_end(data) -> int: see crdt_kv.layout_reads.cbor_item_end."},
    {"lww_value", (PyCFunction)(void (*)(void))lww_value, METH_FASTCALL,
     "lww_value(blob, key, default): see crdt_kv.layout_reads.lww_value."},
    {"point_value", (PyCFunction)(void (*)(void))point_value, METH_FASTCALL,
     "point_value(get, key, default): see crdt_kv.layout_reads.point_value."},
    {"bind_get", (PyCFunction)(void (*)(void))bind_get, METH_FASTCALL,
     "bind_get(writer, backend, fallback): see crdt_kv.accel.bind_get."},
    {"scan_item", (PyCFunction)(void (*)(void))scan_item, METH_FASTCALL,
     "scan_item(k, blob, what, utf8_keys): see crdt_kv.layout_reads.scan_item."},
    {"reads_setup", (PyCFunction)(void (*)(void))reads_setup, METH_FASTCALL,
     "reads_setup(layout, loads, lww_slow, scan_slow, skip, unhandled) -> None: configure "
     "the reads above (crdt_kv.accel calls it once)."},
    {"lww_run", (PyCFunction)(void (*)(void))lww_run, METH_FASTCALL,
     "lww_run(buf, pos, count, base, peers, cls, slots) -> (list, int): see "
     "crdt_kv.accel.lww_run."},
    {"stage_records", (PyCFunction)(void (*)(void))stage_records, METH_FASTCALL,
     "stage_records(items, seq, ops, logs, notes, layout) -> (int, int, int): see "
     "crdt_kv.accel.stage_records."},
    {"fill_batch", (PyCFunction)(void (*)(void))fill_batch, METH_FASTCALL,
     "fill_batch(ops, put, delete[, family, prefix]) -> None: see crdt_kv.accel.fill_batch."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "crdt_kv._speedups",
    "Compiled twins of crdt_kv.accel's pure-Python hot paths (import crdt_kv.accel instead).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (reads_ready() < 0) return NULL;
    return PyModule_Create(&module);
}
