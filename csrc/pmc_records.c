/*
 * pymemcg._records: read() of a proven path, made in C.
 *
 * The rest of the extension is bound through cffi, whose calls always drop
 * and take back the GIL and hand back C data for Python to unpack. A single
 * read is one bpf() call of about 0.8 us; unpacking its record into ints
 * and making the Record in Python cost about as much again. This module
 * does that part in C: one call that runs pmc_fetch_read() on a path's
 * route and returns the Record (or the answer code, for Python to handle).
 * It lives in the same shared object as pymemcg._pymemcg (the shim is
 * linked in once) and is loaded from it by name (pymemcg/records.py).
 *
 * Stable ABI (3.9): no vectorcall, so one METH_O method.
 */
#define Py_LIMITED_API 0x03090000
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "pmc_shim.h"
#include "memcg_record.h"

/* the widest record: its header, the valid words and every stat */
#define MAX_FIELDS 256
#define PMC_RECORD_COPY_MAX (MAX_FIELDS * 8)

static PyObject *str_proof_addr, *str_relpath, *str_t, *str_selection, *str_path;

typedef struct {
	PyObject_HEAD
	PyObject *routes;	/* path -> Route (a dict) */
	PyObject *record_type;	/* pymemcg.decode.Record */
	PyObject *selection;	/* its Selection */
	PyObject *locked;	/* the reader's lock's bound locked() */
	PyObject *slow;		/* the reader's Python read(path) */
	struct pmc_fetch *fetch;	/* whose batch records many() makes Records of */
	/* where a Record keeps _t, _selection and path (found by find_slots), or -1 */
	Py_ssize_t at_t, at_selection, at_path;
	Py_ssize_t record_size;
	Py_ssize_t nfields;
	unsigned char widths[MAX_FIELDS];	/* each field's bytes: 4 or 8 */
} Reads;

/* Where instances of record_type keep the slots named _t, _selection and
 * path: set each to an object of its own on a new instance and find it in
 * the instance's memory, once each. A slot set there directly is what
 * setting the attribute does (a member descriptor stores the pointer),
 * without the attribute lookups. Not found, or found twice: -1 each, and
 * attributes are set by name. */
static void find_slots(Reads *self)
{
	PyObject *probe, *basic, *marks[3] = {NULL, NULL, NULL};
	PyObject *names[3] = {str_t, str_selection, str_path};
	Py_ssize_t *at[3] = {&self->at_t, &self->at_selection, &self->at_path};
	Py_ssize_t size, off;
	int i, found;

	self->at_t = self->at_selection = self->at_path = -1;
	basic = PyObject_GetAttrString(self->record_type, "__basicsize__");
	size = basic ? PyLong_AsSsize_t(basic) : -1;
	Py_XDECREF(basic);
	probe = size > 0 ? PyType_GenericAlloc((PyTypeObject *)self->record_type, 0) : NULL;
	for (i = 0; probe && i < 3; i++) {
		marks[i] = PyList_New(0);	/* an object no one else refers to */
		if (!marks[i] || PyObject_SetAttr(probe, names[i], marks[i]) < 0)
			goto out;
	}
	for (i = 0; probe && i < 3; i++) {
		Py_ssize_t where = -1;

		found = 0;
		for (off = sizeof(PyObject); off + (Py_ssize_t)sizeof(PyObject *) <= size;
		     off += sizeof(PyObject *)) {
			PyObject *word;

			memcpy(&word, (char *)probe + off, sizeof(word));
			if (word == marks[i]) {
				where = off;
				found++;
			}
		}
		if (found != 1)
			goto out;
		*at[i] = where;
	}
	if (self->at_t == self->at_selection || self->at_t == self->at_path ||
	    self->at_selection == self->at_path)
		self->at_t = self->at_selection = self->at_path = -1;
out:
	if (PyErr_Occurred())
		PyErr_Clear();
	if (!probe || !marks[0] || !marks[1] || !marks[2] || self->at_path < 0)
		self->at_t = self->at_selection = self->at_path = -1;
	Py_XDECREF(probe);
	for (i = 0; i < 3; i++)
		Py_XDECREF(marks[i]);
}

/* a new reference to value in the slot at off of a new, zeroed instance */
static void set_slot(PyObject *obj, Py_ssize_t off, PyObject *value)
{
	Py_INCREF(value);
	memcpy((char *)obj + off, &value, sizeof(value));
}

static int reads_init(PyObject *self_obj, PyObject *args, PyObject *kwds)
{
	Reads *self = (Reads *)self_obj;
	PyObject *routes, *record_type, *selection, *locked, *slow, *fetch;
	const char *widths;
	Py_ssize_t n, i, size = 0;

	if (kwds && PyDict_Size(kwds)) {
		PyErr_SetString(PyExc_TypeError, "Reads() takes no keyword arguments");
		return -1;
	}
	if (!PyArg_ParseTuple(args, "OOOy#OOO", &routes, &record_type, &selection, &widths, &n,
			      &locked, &slow, &fetch))
		return -1;
	if (!PyDict_Check(routes) || !PyType_Check(record_type) || !PyCallable_Check(locked) ||
	    !PyCallable_Check(slow)) {
		PyErr_SetString(PyExc_TypeError, "Reads(routes: dict, record_type: type, selection, "
				"widths: bytes, locked: callable, slow: callable, fetch: int)");
		return -1;
	}
	self->fetch = PyLong_AsVoidPtr(fetch);
	if (!self->fetch && PyErr_Occurred())
		return -1;
	if (n <= 0 || n > MAX_FIELDS) {
		PyErr_SetString(PyExc_ValueError, "Reads(): 1 to 256 field widths");
		return -1;
	}
	for (i = 0; i < n; i++) {
		if (widths[i] != 4 && widths[i] != 8) {
			PyErr_SetString(PyExc_ValueError, "Reads(): field widths are 4 or 8");
			return -1;
		}
		self->widths[i] = (unsigned char)widths[i];
		size += widths[i];
	}
	if (size > PMC_RECORD_COPY_MAX) {
		PyErr_SetString(PyExc_ValueError, "Reads(): a record wider than the copy made of it");
		return -1;
	}
	self->record_size = size;
	self->nfields = n;
	if (self->routes) {
		PyErr_SetString(PyExc_TypeError, "Reads() is made once");
		return -1;
	}
	Py_INCREF(routes);
	Py_INCREF(record_type);
	Py_INCREF(selection);
	Py_INCREF(locked);
	Py_INCREF(slow);
	self->routes = routes;
	self->record_type = record_type;
	self->selection = selection;
	self->locked = locked;
	self->slow = slow;
	find_slots(self);
	return 0;
}

/* the record's fields as a tuple of ints, as struct.unpack_from would */
static PyObject *unpack(const Reads *self, const unsigned char *p)
{
	PyObject *t = PyTuple_New(self->nfields);
	Py_ssize_t i;

	if (!t)
		return NULL;
	for (i = 0; i < self->nfields; i++) {
		PyObject *v;

		if (self->widths[i] == 8) {
			uint64_t x;

			memcpy(&x, p, 8);
			v = PyLong_FromUnsignedLongLong(x);
		} else {
			uint32_t x;

			memcpy(&x, p, 4);
			v = PyLong_FromUnsignedLong(x);
		}
		p += self->widths[i];
		if (!v || PyTuple_SetItem(t, i, v) < 0) {
			Py_DECREF(t);
			return NULL;
		}
	}
	return t;
}

/* A Record of the fields at p, as object.__new__(Record) and its slots set
 * would make it, and not tracked by the garbage collector: a tuple of ints,
 * a str and the reader's Selection hold no reference back to it. Tracked, a
 * read_many of thousands made the collector's young generation pass over
 * each a few times. */
static PyObject *make_record(const Reads *self, const unsigned char *p, PyObject *relpath)
{
	PyObject *t = unpack(self, p), *rec;

	if (!t)
		return NULL;
	PyObject_GC_UnTrack(t);
	rec = PyType_GenericAlloc((PyTypeObject *)self->record_type, 0);
	if (rec && self->at_path >= 0) {
		set_slot(rec, self->at_t, t);
		set_slot(rec, self->at_selection, self->selection);
		set_slot(rec, self->at_path, relpath);
	} else if (rec && (PyObject_SetAttr(rec, str_t, t) < 0 ||
			   PyObject_SetAttr(rec, str_selection, self->selection) < 0 ||
			   PyObject_SetAttr(rec, str_path, relpath) < 0)) {
		Py_CLEAR(rec);
	}
	Py_DECREF(t);
	if (rec)
		PyObject_GC_UnTrack(rec);
	return rec;
}

/* the Record of the path's route's cgroup, or NULL without an exception
 * where this call does not answer (Python's read does) */
static PyObject *fast_read(Reads *self, PyObject *path)
{
	unsigned char copy[PMC_RECORD_COPY_MAX];
	struct pmc_fetch_route *route;
	PyObject *r, *addr, *rec, *relpath, *busy;
	int rc;

	if (!self->routes)
		return NULL;	/* closed */
	r = PyDict_GetItemWithError(self->routes, path);	/* borrowed */
	if (!r) {
		PyErr_Clear();	/* no route; or not a path: Python says so */
		return NULL;
	}
	Py_INCREF(r);	/* a path's __eq__ may run Python code, and change the dict */
	addr = PyObject_GetAttr(r, str_proof_addr);
	route = addr && addr != Py_None ? PyLong_AsVoidPtr(addr) : NULL;
	Py_XDECREF(addr);
	busy = route ? PyObject_CallObject(self->locked, NULL) : NULL;
	if (busy != Py_False || !self->routes) {
		/* no proof (a link's route), the reader busy, or closed meanwhile */
		Py_XDECREF(busy);
		Py_DECREF(r);
		PyErr_Clear();
		return NULL;
	}
	Py_DECREF(busy);
	/* from here to the copy: no Python code, the GIL kept */
	rc = pmc_fetch_read(route);
	if (rc != PMC_READ_OK) {
		Py_DECREF(r);
		return NULL;	/* Python's read runs it again, and handles the answer */
	}
	memcpy(copy, pmc_fetch_record(route->fetch), self->record_size);
	relpath = PyObject_GetAttr(r, str_relpath);
	Py_DECREF(r);
	if (!relpath)
		return NULL;
	rec = make_record(self, copy, relpath);
	Py_DECREF(relpath);
	return rec;
}

/* read(path): the selected stats of path's cgroup, as the reader's read */
static PyObject *reads_read(PyObject *self_obj, PyObject *path)
{
	Reads *self = (Reads *)self_obj;
	PyObject *rec = fast_read(self, path);

	if (rec || PyErr_Occurred())
		return rec;
	return PyObject_CallFunctionObjArgs(self->slow, path, NULL);
}

/* many(relpaths): a Record per relpath of the records of the last
 * pmc_fetch_run_many(), in order. The caller holds the reader's lock, and
 * the run proved every record (it returned 0). */
static PyObject *reads_many(PyObject *self_obj, PyObject *relpaths)
{
	Reads *self = (Reads *)self_obj;
	const unsigned char *batch;
	Py_ssize_t n, i;
	unsigned int stride;
	PyObject *out;

	if (!PyList_Check(relpaths)) {
		PyErr_SetString(PyExc_TypeError, "many() takes a list of relpaths");
		return NULL;
	}
	n = PyList_Size(relpaths);
	if (!self->routes || n > (Py_ssize_t)pmc_fetch_batch_capacity(self->fetch)) {
		PyErr_SetString(PyExc_ValueError, self->routes ? "many(): more records than a run holds"
				: "many(): closed");
		return NULL;
	}
	batch = pmc_fetch_batch(self->fetch);
	stride = pmc_fetch_batch_stride(self->fetch);
	if (stride < self->record_size) {
		PyErr_SetString(PyExc_ValueError, "many(): the batch's records are narrower than ours");
		return NULL;
	}
	out = PyList_New(n);
	for (i = 0; out && i < n; i++) {
		PyObject *rec = make_record(self, batch + (size_t)i * stride,
					    PyList_GetItem(relpaths, i));

		if (!rec || PyList_SetItem(out, i, rec) < 0)
			Py_CLEAR(out);
	}
	return out;
}

/* close(): answer nothing more (the reader's read answers) */
static PyObject *reads_close(PyObject *self_obj, PyObject *unused)
{
	Reads *self = (Reads *)self_obj;

	(void)unused;
	Py_CLEAR(self->routes);
	Py_RETURN_NONE;
}

static PyObject *reads_slots_found(PyObject *self_obj, PyObject *unused)
{
	(void)unused;
	return PyBool_FromLong(((Reads *)self_obj)->at_path >= 0);
}

static int reads_traverse(PyObject *self_obj, visitproc visit, void *arg)
{
	Reads *self = (Reads *)self_obj;

	Py_VISIT(self->routes);
	Py_VISIT(self->record_type);
	Py_VISIT(self->selection);
	Py_VISIT(self->locked);
	Py_VISIT(self->slow);
	return 0;
}

static int reads_clear(PyObject *self_obj)
{
	Reads *self = (Reads *)self_obj;

	Py_CLEAR(self->routes);
	Py_CLEAR(self->record_type);
	Py_CLEAR(self->selection);
	Py_CLEAR(self->locked);
	Py_CLEAR(self->slow);
	return 0;
}

static void reads_dealloc(PyObject *self_obj)
{
	PyTypeObject *tp = Py_TYPE(self_obj);
	freefunc tp_free = (freefunc)PyType_GetSlot(tp, Py_tp_free);

	PyObject_GC_UnTrack(self_obj);
	reads_clear(self_obj);
	tp_free(self_obj);
	Py_DECREF(tp);
}

static PyMethodDef reads_methods[] = {
	{"read", reads_read, METH_O,
	 "read(path): the path's Record, through its route's fetch slot where it has one, "
	 "else through the reader's own read"},
	{"many", reads_many, METH_O,
	 "many(relpaths): a Record per relpath from the last batch run, which proved them all"},
	{"close", reads_close, METH_NOARGS, "close(): every read through the reader's own"},
	{"slots_found", reads_slots_found, METH_NOARGS,
	 "slots_found(): whether Records' slots are set in place (else by name)"},
	{NULL, NULL, 0, NULL},
};

static PyType_Slot reads_slots[] = {
	{Py_tp_init, reads_init},
	{Py_tp_new, PyType_GenericNew},
	{Py_tp_traverse, reads_traverse},
	{Py_tp_clear, reads_clear},
	{Py_tp_dealloc, reads_dealloc},
	{Py_tp_methods, reads_methods},
	{Py_tp_doc, "Reads(routes, record_type, selection, widths, locked, slow, fetch): "
		    "single reads of proven paths"},
	{0, NULL},
};

static PyType_Spec reads_spec = {
	.name = "pymemcg._records.Reads",
	.basicsize = sizeof(Reads),
	.flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
	.slots = reads_slots,
};

static struct PyModuleDef records_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "pymemcg._records",
	.m_doc = "read() of a proven path in one C call (see csrc/pmc_records.c)",
	.m_size = -1,
};

PyMODINIT_FUNC PyInit__records(void)
{
	PyObject *m, *type;

	if (!str_proof_addr) {
		str_proof_addr = PyUnicode_InternFromString("proof_addr");
		str_relpath = PyUnicode_InternFromString("relpath");
		str_t = PyUnicode_InternFromString("_t");
		str_selection = PyUnicode_InternFromString("_selection");
		str_path = PyUnicode_InternFromString("path");
		if (!str_proof_addr || !str_relpath || !str_t || !str_selection || !str_path)
			return NULL;
	}
	m = PyModule_Create(&records_module);
	if (!m)
		return NULL;
	type = PyType_FromSpec(&reads_spec);
	if (!type || PyModule_AddObject(m, "Reads", type) < 0) {
		Py_XDECREF(type);
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
