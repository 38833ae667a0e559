/*
 * limpet.proxy.session.native_index: a learned table's index, from a key (the table's
 * 60-bit folded key hash) to its entry number, in C.
 *
 * Data flow: learned.LearnedTable asks it on every request (get), on every new session
 * (set), on every removal (pop) and, for a batch of evictions or expiries, once (drop, a
 * buffer of keys). key_index.new_key_index picks this type when it was built, else the
 * same index in Python (key_index.DictIndex), which answers the same.
 *
 * Layout: 256 shards, each an open-addressed table of 16-byte slots (the key and its
 * entry number side by side: one cache line per probe), linear probing, at most half
 * full (it doubles then), deletion by backward shift (no tombstones, so probes stay
 * short however keys come and go). A shard grows alone: rehashing one 256th of a
 * million keys takes tens of microseconds where one dict of a million stalled the loop
 * for 36 to 80 ms.
 *
 * Why keyed: a key is a public, unkeyed hash of what the client sends (a header, a
 * cookie), so a client can grind keys that share any bits it likes. The shard and the
 * slot come from SipHash-1-3 (CPython's string hash) of the key under a per-process
 * random 128-bit secret, so no one outside can aim keys at one shard or one run of
 * slots. Python's dict uses an int's own value as its hash.
 *
 * Why C: the dict index cost about 100 bytes an entry (two int objects and a dict slot)
 * and two or three cache misses a look-up in a table of a million; here 32 to 64 bytes
 * and one or two misses, and no object is made or freed per insert.
 *
 * Concurrency: called with the GIL held; nothing blocks or calls back into Python while
 * a shard is changed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define SHARD_BITS 8
#define SHARDS (1u << SHARD_BITS)
#define MIN_SLOTS 16u
#define EMPTY UINT32_MAX /* a slot's entry number when the slot is free */

typedef struct {
    uint64_t key;
    uint32_t entry; /* EMPTY: a free slot */
    uint32_t pad;
} Slot;

typedef struct {
    Slot *slots;
    size_t mask; /* slot count - 1 (a power of two), 0 before the first insert */
    size_t used;
} Shard;

typedef struct {
    PyObject_HEAD
    uint64_t k0, k1; /* the SipHash key */
    Py_ssize_t size;
    Shard shards[SHARDS];
} IndexObject;

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                           \
    do {                                                                                   \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                          \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                             \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                             \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                          \
    } while (0)

/* SipHash-1-3 of one 64-bit word (an 8-byte message). */
static inline uint64_t
keyed_hash(const IndexObject *self, uint64_t m)
{
    uint64_t v0 = self->k0 ^ 0x736f6d6570736575ULL;
    uint64_t v1 = self->k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = self->k0 ^ 0x6c7967656e657261ULL;
    uint64_t v3 = self->k1 ^ 0x7465646279746573ULL;
    const uint64_t b = (uint64_t)8 << 56;
    v3 ^= m;
    SIPROUND;
    v0 ^= m;
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static inline Shard *
shard_of(IndexObject *self, uint64_t h)
{
    return &self->shards[h >> (64 - SHARD_BITS)];
}

/* The slot holding key, or NULL; *free_slot: where it would go. */
static Slot *
lookup(const Shard *s, uint64_t key, uint64_t h, Slot **free_slot)
{
    if (s->mask == 0) {
        *free_slot = NULL;
        return NULL;
    }
    for (size_t i = h & s->mask;; i = (i + 1) & s->mask) {
        Slot *slot = &s->slots[i];
        if (slot->entry == EMPTY) {
            *free_slot = slot;
            return NULL;
        }
        if (slot->key == key)
            return slot;
    }
}

static Slot *
new_slots(size_t count)
{
    Slot *slots = PyMem_Malloc(count * sizeof(Slot));
    if (slots != NULL)
        memset(slots, 0xff, count * sizeof(Slot)); /* every entry EMPTY */
    return slots;
}

/* Double the shard's slots (or make its first ones) and re-place its keys. */
static int
grow(IndexObject *self, Shard *s)
{
    size_t count = s->mask == 0 ? MIN_SLOTS : (s->mask + 1) * 2;
    Slot *slots = new_slots(count);
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    size_t mask = count - 1;
    for (size_t j = 0; s->mask != 0 && j <= s->mask; j++) {
        Slot *old = &s->slots[j];
        if (old->entry == EMPTY)
            continue;
        size_t i = keyed_hash(self, old->key) & mask;
        while (slots[i].entry != EMPTY)
            i = (i + 1) & mask;
        slots[i] = *old;
    }
    PyMem_Free(s->slots);
    s->slots = slots;
    s->mask = mask;
    return 0;
}

/* Free the slot at index i, moving later keys of its run back (Knuth's algorithm R):
 * a key moves into the gap unless its home slot lies cyclically in (gap, its slot]. */
static void
erase(const IndexObject *self, Shard *s, size_t i)
{
    size_t mask = s->mask;
    for (size_t j = i;;) {
        j = (j + 1) & mask;
        Slot *next = &s->slots[j];
        if (next->entry == EMPTY)
            break;
        size_t home = keyed_hash(self, next->key) & mask;
        int stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (stays)
            continue;
        s->slots[i] = *next;
        i = j;
    }
    s->slots[i].entry = EMPTY;
    s->used--;
}

static int
read_key(PyObject *o, uint64_t *key)
{
    unsigned long long k = PyLong_AsUnsignedLongLong(o);
    if (k == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *key = (uint64_t)k;
    return 0;
}

/* Remove key; its entry number, or -1 when absent. */
static long long
remove_key(IndexObject *self, uint64_t key)
{
    uint64_t h = keyed_hash(self, key);
    Shard *s = shard_of(self, h);
    Slot *free_slot;
    Slot *slot = lookup(s, key, h, &free_slot);
    if (slot == NULL)
        return -1;
    long long entry = slot->entry;
    erase(self, s, (size_t)(slot - s->slots));
    self->size--;
    return entry;
}

static int
Index_init(IndexObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"secret", NULL};
    Py_buffer secret;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*:KeyIndex", kwlist, &secret))
        return -1;
    if (secret.len != 16) {
        PyBuffer_Release(&secret);
        PyErr_SetString(PyExc_ValueError, "the index's secret is 16 bytes");
        return -1;
    }
    memcpy(&self->k0, secret.buf, 8);
    memcpy(&self->k1, (const char *)secret.buf + 8, 8);
    PyBuffer_Release(&secret);
    return 0;
}

static void
Index_dealloc(IndexObject *self)
{
    for (unsigned n = 0; n < SHARDS; n++)
        PyMem_Free(self->shards[n].slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Index_get(IndexObject *self, PyObject *arg)
{
    uint64_t key;
    if (read_key(arg, &key) < 0)
        return NULL;
    uint64_t h = keyed_hash(self, key);
    Slot *free_slot;
    Slot *slot = lookup(shard_of(self, h), key, h, &free_slot);
    return PyLong_FromLongLong(slot == NULL ? -1 : (long long)slot->entry);
}

static PyObject *
Index_set(IndexObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t key;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set(key, entry) takes two arguments");
        return NULL;
    }
    if (read_key(args[0], &key) < 0)
        return NULL;
    unsigned long long entry = PyLong_AsUnsignedLongLong(args[1]);
    if (entry == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (entry >= EMPTY) {
        PyErr_SetString(PyExc_OverflowError, "an entry number is below 2**32 - 1");
        return NULL;
    }
    uint64_t h = keyed_hash(self, key);
    Shard *s = shard_of(self, h);
    Slot *free_slot;
    Slot *slot = lookup(s, key, h, &free_slot);
    if (slot == NULL) {
        if (free_slot == NULL || (s->used + 1) * 2 > s->mask + 1) {
            if (grow(self, s) < 0)
                return NULL;
            lookup(s, key, h, &free_slot);
        }
        slot = free_slot;
        slot->key = key;
        s->used++;
        self->size++;
    }
    slot->entry = (uint32_t)entry;
    Py_RETURN_NONE;
}

static PyObject *
Index_pop(IndexObject *self, PyObject *arg)
{
    uint64_t key;
    if (read_key(arg, &key) < 0)
        return NULL;
    return PyLong_FromLongLong(remove_key(self, key));
}

static PyObject *
Index_drop(IndexObject *self, PyObject *arg)
{
    Py_buffer keys;
    if (PyObject_GetBuffer(arg, &keys, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (keys.len % 8 != 0) {
        PyBuffer_Release(&keys);
        PyErr_SetString(PyExc_ValueError, "drop() takes native 64-bit keys, 8 bytes each");
        return NULL;
    }
    Py_ssize_t dropped = 0;
    const char *at = keys.buf;
    for (Py_ssize_t n = 0; n < keys.len / 8; n++) {
        uint64_t key;
        memcpy(&key, at + 8 * n, 8);
        dropped += remove_key(self, key) >= 0;
    }
    PyBuffer_Release(&keys);
    return PyLong_FromSsize_t(dropped);
}

static PyObject *
Index_longest_run(IndexObject *self, PyObject *Py_UNUSED(ignored))
{
    size_t longest = 0;
    for (unsigned n = 0; n < SHARDS; n++) {
        const Shard *s = &self->shards[n];
        size_t run = 0;
        /* Twice round, so that a run across the end of the slots is counted whole. */
        for (size_t j = 0; s->mask != 0 && j <= 2 * s->mask + 1; j++) {
            run = s->slots[j & s->mask].entry == EMPTY ? 0 : run + 1;
            longest = run > longest ? run : longest;
        }
    }
    return PyLong_FromSize_t(longest);
}

static PyObject *
Index_nbytes(IndexObject *self, void *Py_UNUSED(closure))
{
    size_t total = sizeof(IndexObject);
    for (unsigned n = 0; n < SHARDS; n++)
        total += self->shards[n].mask == 0 ? 0 : (self->shards[n].mask + 1) * sizeof(Slot);
    return PyLong_FromSize_t(total);
}

static Py_ssize_t
Index_len(IndexObject *self)
{
    return self->size;
}

static PyMethodDef Index_methods[] = {
    {"get", (PyCFunction)Index_get, METH_O, "get(key) -> its entry number, or -1."},
    {"set", (PyCFunction)(void (*)(void))Index_set, METH_FASTCALL,
     "set(key, entry): add key, or point it at another entry."},
    {"pop", (PyCFunction)Index_pop, METH_O, "pop(key) -> its entry number (removed), or -1."},
    {"drop", (PyCFunction)Index_drop, METH_O,
     "drop(keys) -> how many of the native uint64 keys in buffer keys were removed."},
    {"longest_run", (PyCFunction)Index_longest_run, METH_NOARGS,
     "longest_run() -> the most consecutive occupied slots in any shard (a probe's worst)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Index_getset[] = {
    {"nbytes", (getter)Index_nbytes, NULL, "Bytes the index holds (its slots and itself).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Index_as_sequence = {
    .sq_length = (lenfunc)Index_len,
};

static PyTypeObject IndexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "limpet.proxy.session.native_index.KeyIndex",
    .tp_doc = "A map from 64-bit keys to entry numbers, in 256 keyed open-addressed shards.",
    .tp_basicsize = sizeof(IndexObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Index_init,
    .tp_dealloc = (destructor)Index_dealloc,
    .tp_methods = Index_methods,
    .tp_getset = Index_getset,
    .tp_as_sequence = &Index_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "limpet.proxy.session.native_index",
    .m_doc = "A learned table's index in C (see key_index.DictIndex for the same in Python).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit_native_index(void)
{
    if (PyType_Ready(&IndexType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&IndexType);
    if (PyModule_AddObject(m, "KeyIndex", (PyObject *)&IndexType) < 0) {
        Py_DECREF(&IndexType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
