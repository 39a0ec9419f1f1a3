/* The matcher's per-text loops in C (schoolgate.monitoring.terms reads them when built).

Each function does exactly what the Python code beside it in terms.py does, and
tests/test_monitoring_speedups.py holds the two to the same results. They run on every
search a pupil makes; in Python their loops were most of a search's cost. They take
only what the Matcher built and what the normaliser made of a text, check every type and
index they rely on, and raise (never guess) when something is not as built. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* An int the Matcher built, as a C integer. Only exact ints: no __index__ of another type
   runs here (no Python code runs inside these loops). 0, or -1 with an error set. */
static int
index_of(PyObject *number, Py_ssize_t *out)
{
    if (!PyLong_CheckExact(number)) {
        PyErr_SetString(PyExc_TypeError, "a number the matcher built is not an int");
        return -1;
    }
    *out = PyLong_AsSsize_t(number);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* The id of a word's one word phrase (an item of word_ids): 0 for none. */
static int
single_of(PyObject *single, Py_ssize_t *id)
{
    if (single == Py_None) {
        *id = 0;
        return 0;
    }
    return index_of(single, id);
}

/* Append ``item`` (a new reference, or NULL after an error) to ``list``, and release it. */
static int
append_new(PyObject *list, PyObject *item)
{
    if (item == NULL)
        return -1;
    int status = PyList_Append(list, item);
    Py_DECREF(item);
    return status;
}

/* Whether a pattern found at [start, end) of the joined text stands at word boundaries:
   ``seen`` (the text's breaks from start to end, both included) equals the pattern's
   ``signature``, or else has a break at the start, one at the end unless a stem, and
   none inside but the pattern's ``inner`` ones. */
static int
stands(const unsigned char *seen, Py_ssize_t length, PyObject *signature, PyObject *inner,
       PyObject *stem)
{
    if (!PyBytes_Check(signature) || !PyTuple_Check(inner)) {
        PyErr_SetString(PyExc_TypeError, "a pattern's signature or breaks are not as built");
        return -1;
    }
    if (PyBytes_GET_SIZE(signature) == length &&
        memcmp(PyBytes_AS_STRING(signature), seen, (size_t)length) == 0)
        return 1;
    if (length < 1) {
        PyErr_SetString(PyExc_IndexError, "a pattern found outside the text");
        return -1;
    }
    if (!seen[0])
        return 0;
    if (!PyBool_Check(stem)) {
        PyErr_SetString(PyExc_TypeError, "a pattern's stem mark is not a bool");
        return -1;
    }
    if (stem == Py_False && !seen[length - 1])
        return 0;
    /* No break inside (offsets 1 .. length - 2) that the pattern does not have. */
    Py_ssize_t count = PyTuple_GET_SIZE(inner);
    for (Py_ssize_t at = 1; at < length - 1; at++) {
        if (seen[at] != 1)
            continue;
        int found = 0;
        for (Py_ssize_t i = 0; i < count; i++) {
            Py_ssize_t value;
            if (index_of(PyTuple_GET_ITEM(inner, i), &value) < 0)
                return -1;
            if (value == at) {
                found = 1;
                break;
            }
        }
        if (!found)
            return 0;
    }
    return 1;
}

/* (index, start, end): a tuple filled by hand (Py_BuildValue parses its format string on
   every call, and a text's hits are many). */
static PyObject *
triple(PyObject *index, Py_ssize_t start, Py_ssize_t end)
{
    PyObject *first = PyLong_FromSsize_t(start);
    PyObject *last = first == NULL ? NULL : PyLong_FromSsize_t(end);
    PyObject *out = last == NULL ? NULL : PyTuple_New(3);
    if (out == NULL) {
        Py_XDECREF(first);
        Py_XDECREF(last);
        return NULL;
    }
    Py_INCREF(index);
    PyTuple_SET_ITEM(out, 0, index);
    PyTuple_SET_ITEM(out, 1, first);
    PyTuple_SET_ITEM(out, 2, last);
    return out;
}

static int
append_found(PyObject *by_kind, PyObject *kind, PyObject *index, Py_ssize_t start,
             Py_ssize_t end)
{
    Py_ssize_t which;
    if (index_of(kind, &which) < 0)
        return -1;
    if (which < 0 || which >= 4) {
        PyErr_SetString(PyExc_IndexError, "a pattern of an unknown kind");
        return -1;
    }
    return append_new(PyTuple_GET_ITEM(by_kind, which), triple(index, start, end));
}

/* Each word's one word phrase (``single``: word -> id), None for none: a new list. */
static PyObject *
word_ids_of(PyObject *words, PyObject *single)
{
    Py_ssize_t count = PyTuple_GET_SIZE(words);
    PyObject *word_ids = PyList_New(count);
    if (word_ids == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *id = PyDict_GetItemWithError(single, PyTuple_GET_ITEM(words, i));
        if (id == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(word_ids);
                return NULL;
            }
            id = Py_None;
        }
        Py_INCREF(id);
        PyList_SET_ITEM(word_ids, i, id);
    }
    return word_ids;
}

/* scan(found, bounds, words, single) -> (terms, allows, context, words, word_ids)

   ``found``: the automaton's iterator over the joined text; ``bounds``: the text's
   breaks; ``words``: its words; ``single``: one word rule phrase -> its id. As
   Matcher._scan_python. */
static PyObject *
scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyIter_Check(args[0]) || !PyBytes_Check(args[1]) ||
        !PyTuple_Check(args[2]) || !PyDict_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "scan(found, bounds: bytes, words: tuple, single: dict)");
        return NULL;
    }
    PyObject *iterator = args[0], *words = args[2], *single = args[3];
    const unsigned char *bounds = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[1]);
    /* terms, allows, context, words, then word_ids */
    PyObject *by_kind = PyTuple_New(5);
    if (by_kind == NULL)
        return NULL;
    for (int i = 0; i < 4; i++) {
        PyObject *list = PyList_New(0);
        if (list == NULL) {
            Py_DECREF(by_kind);
            return NULL;
        }
        PyTuple_SET_ITEM(by_kind, i, list);
    }
    PyObject *item;
    while ((item = PyIter_Next(iterator)) != NULL) {
        PyObject *value;
        Py_ssize_t end_index;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
            index_of(PyTuple_GET_ITEM(item, 0), &end_index) < 0 ||
            !PyTuple_Check(value = PyTuple_GET_ITEM(item, 1)) || PyTuple_GET_SIZE(value) != 7) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "the automaton holds a value not as built");
            goto item_failed;
        }
        /* value: (length, signature, kind, index, inner, stem, more) */
        Py_ssize_t length;
        if (index_of(PyTuple_GET_ITEM(value, 0), &length) < 0)
            goto item_failed;
        Py_ssize_t end = end_index + 1, start = end - length;
        if (start < 0 || end >= size) {
            PyErr_SetString(PyExc_IndexError, "a pattern found outside the text");
            goto item_failed;
        }
        const unsigned char *seen = bounds + start;
        Py_ssize_t seen_length = end + 1 - start;
        int ok = stands(seen, seen_length, PyTuple_GET_ITEM(value, 1),
                        PyTuple_GET_ITEM(value, 4), PyTuple_GET_ITEM(value, 5));
        if (ok < 0 || (ok && append_found(by_kind, PyTuple_GET_ITEM(value, 2),
                                          PyTuple_GET_ITEM(value, 3), start, end) < 0))
            goto item_failed;
        PyObject *more = PyTuple_GET_ITEM(value, 6);
        if (!PyTuple_Check(more)) {
            PyErr_SetString(PyExc_TypeError, "the automaton holds a value not as built");
            goto item_failed;
        }
        /* the key's other patterns: (signature, kind, index, inner, stem) */
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(more); i++) {
            PyObject *other = PyTuple_GET_ITEM(more, i);
            if (!PyTuple_Check(other) || PyTuple_GET_SIZE(other) != 5) {
                PyErr_SetString(PyExc_TypeError, "the automaton holds a value not as built");
                goto item_failed;
            }
            ok = stands(seen, seen_length, PyTuple_GET_ITEM(other, 0),
                        PyTuple_GET_ITEM(other, 3), PyTuple_GET_ITEM(other, 4));
            if (ok < 0 || (ok && append_found(by_kind, PyTuple_GET_ITEM(other, 1),
                                              PyTuple_GET_ITEM(other, 2), start, end) < 0))
                goto item_failed;
        }
        Py_DECREF(item);
        continue;
    item_failed:
        Py_DECREF(item);
        Py_DECREF(by_kind);
        return NULL;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(by_kind);
        return NULL;
    }
    PyObject *word_ids = word_ids_of(words, single);
    if (word_ids == NULL) {
        Py_DECREF(by_kind);
        return NULL;
    }
    PyTuple_SET_ITEM(by_kind, 4, word_ids);
    return by_kind;
}

/* The phrase id of a (phrase, start, end) found in the joined text. */
static PyObject *
phrase_of(PyObject *found)
{
    if (!PyTuple_Check(found) || PyTuple_GET_SIZE(found) != 3) {
        PyErr_SetString(PyExc_TypeError, "a phrase found is not (phrase, start, end)");
        return NULL;
    }
    return PyTuple_GET_ITEM(found, 0);
}

/* What screen() keeps of a text while it reads its phrases: which (rule, group) bits the
   phrases found have, and which rules they woke (in the order woken, each once). */
typedef struct {
    unsigned char *have;  /* bit -> 1 when a phrase found is in that rule's group */
    unsigned char *woke;  /* rule -> 1 once woken */
    Py_ssize_t *woken;    /* the rules woken */
    Py_ssize_t count, bits, rules;
} Screen;

/* One phrase found: its bits and the rules it wakes into ``screen``. */
static int
wake(Screen *screen, PyObject *phrase, PyObject *wakes, PyObject *bits)
{
    Py_ssize_t id;
    if (index_of(phrase, &id) < 0)
        return -1;
    if (id < 0 || id >= PyTuple_GET_SIZE(wakes) || id >= PyTuple_GET_SIZE(bits)) {
        PyErr_SetString(PyExc_IndexError, "an unknown phrase id");
        return -1;
    }
    PyObject *rules = PyTuple_GET_ITEM(wakes, id), *set = PyTuple_GET_ITEM(bits, id);
    if (!PyTuple_Check(rules) || !PyTuple_Check(set)) {
        PyErr_SetString(PyExc_TypeError, "a phrase's rules or bits are not as built");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(set); i++) {
        Py_ssize_t bit;
        if (index_of(PyTuple_GET_ITEM(set, i), &bit) < 0)
            return -1;
        if (bit < 0 || bit >= screen->bits) {
            PyErr_SetString(PyExc_IndexError, "a bit no rule has");
            return -1;
        }
        screen->have[bit] = 1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(rules); i++) {
        Py_ssize_t rule;
        if (index_of(PyTuple_GET_ITEM(rules, i), &rule) < 0)
            return -1;
        if (rule < 0 || rule >= screen->rules) {
            PyErr_SetString(PyExc_IndexError, "an unknown rule");
            return -1;
        }
        if (!screen->woke[rule]) {
            screen->woke[rule] = 1;
            screen->woken[screen->count++] = rule;
        }
    }
    return 0;
}

/* Room on the stack for screen()'s flags and woken rules: the shipped library's 866 bits
   and 355 rules fit, and a heap allocation cost more than the rest of a usual call. */
#define SCREEN_FLAGS 4096
#define SCREEN_RULES 1024

/* screen(words, word_ids, wakes, bits, offsets) -> [rule number]

   The rules woken by a phrase found (``wakes``: phrase id -> rules) whose every group was
   found, in ascending order, as Matcher._candidates gives them. Each (rule, group) is a
   bit: ``bits``: phrase id -> the bits of the groups it is in; rule n's groups are bits
   ``offsets[n]`` to ``offsets[n + 1] - 1`` (the last offset: how many bits there are).
   Flags in C arrays, where Python ORs big ints: no object is made until the answer. */
static PyObject *
screen(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyList_Check(args[0]) || !PyList_Check(args[1]) ||
        !PyTuple_Check(args[2]) || !PyTuple_Check(args[3]) || !PyTuple_Check(args[4]) ||
        PyTuple_GET_SIZE(args[4]) < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "screen(words: list, word_ids: list, wakes, bits, offsets: tuple)");
        return NULL;
    }
    PyObject *words = args[0], *word_ids = args[1], *wakes = args[2], *bits = args[3],
             *offsets = args[4];
    Screen state = {NULL, NULL, NULL, 0, 0, PyTuple_GET_SIZE(offsets) - 1};
    PyObject *out = NULL;
    if (index_of(PyTuple_GET_ITEM(offsets, state.rules), &state.bits) < 0)
        return NULL;
    if (state.bits < 0) {
        PyErr_SetString(PyExc_IndexError, "a negative number of bits");
        return NULL;
    }
    unsigned char flags[SCREEN_FLAGS];
    Py_ssize_t woken[SCREEN_RULES];
    size_t size = (size_t)state.bits + (size_t)state.rules + 1;
    int on_heap = size > SCREEN_FLAGS || state.rules > SCREEN_RULES;
    if (on_heap) {
        state.have = PyMem_Calloc(size, 1);
        state.woken = PyMem_New(Py_ssize_t, state.rules + 1);
        if (state.have == NULL || state.woken == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    } else {
        memset(flags, 0, size);
        state.have = flags;
        state.woken = woken;
    }
    state.woke = state.have + state.bits;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(words); i++) {
        PyObject *phrase = phrase_of(PyList_GET_ITEM(words, i));
        if (phrase == NULL || wake(&state, phrase, wakes, bits) < 0)
            goto done;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(word_ids); i++) {
        PyObject *phrase = PyList_GET_ITEM(word_ids, i);
        Py_ssize_t id;
        if (single_of(phrase, &id) < 0 || (id != 0 && wake(&state, phrase, wakes, bits) < 0))
            goto done;
    }
    /* Ascending: an insertion sort of the few rules a text wakes; past a few, the flags
       read in order. */
    if (state.count > 16) {
        state.count = 0;
        for (Py_ssize_t rule = 0; rule < state.rules; rule++)
            if (state.woke[rule])
                state.woken[state.count++] = rule;
    } else {
        for (Py_ssize_t i = 1; i < state.count; i++) {
            Py_ssize_t rule = state.woken[i], j = i;
            for (; j > 0 && state.woken[j - 1] > rule; j--)
                state.woken[j] = state.woken[j - 1];
            state.woken[j] = rule;
        }
    }
    out = PyList_New(0);
    for (Py_ssize_t i = 0; out != NULL && i < state.count; i++) {
        Py_ssize_t rule = state.woken[i], first, after;
        if (index_of(PyTuple_GET_ITEM(offsets, rule), &first) < 0 ||
            index_of(PyTuple_GET_ITEM(offsets, rule + 1), &after) < 0)
            goto failed;
        if (first < 0 || after > state.bits) {
            PyErr_SetString(PyExc_IndexError, "a rule's bits outside the bits");
            goto failed;
        }
        Py_ssize_t bit = first;
        while (bit < after && state.have[bit])
            bit++;
        if (bit == after && append_new(out, PyLong_FromSsize_t(rule)) < 0)
            goto failed;
    }
    goto done;
failed:
    Py_CLEAR(out);
done:
    if (on_heap) {
        PyMem_Free(state.have);
        PyMem_Free(state.woken);
    }
    return out;
}

/* (first, after): a word span. */
static PyObject *
pair_of(Py_ssize_t first, Py_ssize_t after)
{
    PyObject *a = PyLong_FromSsize_t(first), *b = a == NULL ? NULL : PyLong_FromSsize_t(after);
    PyObject *out = b == NULL ? NULL : PyTuple_Pack(2, a, b);
    Py_XDECREF(a);
    Py_XDECREF(b);
    return out;
}

/* places(words, bounds, word_ids, word_spans) -> [(phrase, (first, after))]

   As terms._places: the word span of each phrase found in the joined text, then of
   each one word phrase. ``word_spans[i]`` is ``(i, i + 1)``, made once. */
static PyObject *
places(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyList_Check(args[0]) || !PyBytes_Check(args[1]) ||
        !PyList_Check(args[2]) || !PyTuple_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "places(words: list, bounds: bytes, word_ids: list, word_spans: tuple)");
        return NULL;
    }
    PyObject *words = args[0], *word_ids = args[2], *word_spans = args[3];
    const unsigned char *bounds = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[1]);
    Py_ssize_t *upto = NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    if (PyList_GET_SIZE(words)) {
        /* upto[i]: the sum of bounds[0..i] (the word starts at or before offset i) */
        upto = PyMem_New(Py_ssize_t, size > 0 ? size : 1);
        if (upto == NULL) {
            PyErr_NoMemory();
            goto failed;
        }
        Py_ssize_t sum = 0;
        for (Py_ssize_t i = 0; i < size; i++)
            upto[i] = sum += bounds[i];
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(words); i++) {
            PyObject *found = PyList_GET_ITEM(words, i);
            PyObject *phrase = phrase_of(found);
            if (phrase == NULL)
                goto failed;
            Py_ssize_t start, end;
            if (index_of(PyTuple_GET_ITEM(found, 1), &start) < 0 ||
                index_of(PyTuple_GET_ITEM(found, 2), &end) < 0)
                goto failed;
            if (start < 0 || start >= size || end < 1 || end > size) {
                PyErr_SetString(PyExc_IndexError, "a phrase found outside the text");
                goto failed;
            }
            PyObject *span = pair_of(upto[start] - 1, upto[end - 1]);
            PyObject *place = span == NULL ? NULL : PyTuple_Pack(2, phrase, span);
            Py_XDECREF(span);
            if (append_new(out, place) < 0)
                goto failed;
        }
    }
    for (Py_ssize_t at = 0; at < PyList_GET_SIZE(word_ids); at++) {
        PyObject *single = PyList_GET_ITEM(word_ids, at);
        Py_ssize_t id;
        if (single_of(single, &id) < 0)
            goto failed;
        if (id == 0)
            continue;
        /* word_spans[at] is (at, at + 1), made once; past its end, made here */
        PyObject *span = at < PyTuple_GET_SIZE(word_spans)
                             ? Py_NewRef(PyTuple_GET_ITEM(word_spans, at))
                             : pair_of(at, at + 1);
        PyObject *place = span == NULL ? NULL : PyTuple_Pack(2, single, span);
        Py_XDECREF(span);
        if (append_new(out, place) < 0)
            goto failed;
    }
    PyMem_Free(upto);
    return out;
failed:
    PyMem_Free(upto);
    Py_DECREF(out);
    return NULL;
}

/* The groups of rule ``number`` that a phrase is in (``groups_of[phrase][number]``, -1 for
   "unless"), as the Matcher built them: 1 with ``*in`` the tuple (borrowed), 0 when the
   rule does not use the phrase, -1 with an error set. */
static int
groups_in(PyObject *groups_of, Py_ssize_t phrase, PyObject *number, PyObject **in)
{
    if (phrase < 0 || phrase >= PyTuple_GET_SIZE(groups_of) ||
        !PyDict_Check(PyTuple_GET_ITEM(groups_of, phrase))) {
        PyErr_SetString(PyExc_IndexError, "an unknown phrase id");
        return -1;
    }
    *in = PyDict_GetItemWithError(PyTuple_GET_ITEM(groups_of, phrase), number);
    if (*in == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_Check(*in)) {
        PyErr_SetString(PyExc_TypeError, "a phrase's groups are not as built");
        return -1;
    }
    return 1;
}

/* collect(places, groups_of, number, found) -> the first vetoing phrase id, or None

   As the loop of Matcher._apply_rule: for each (phrase, span) of ``places`` that rule
   ``number`` uses (``groups_of[phrase]``: rule -> its groups, -1 for "unless"), the span
   is appended to ``found[group]``; the first phrase in an "unless" is returned. */
static PyObject *
collect(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyList_Check(args[0]) || !PyTuple_Check(args[1]) ||
        !PyList_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "collect(places: list, groups_of: tuple, number, found: list)");
        return NULL;
    }
    PyObject *places = args[0], *groups_of = args[1], *number = args[2], *found = args[3];
    PyObject *vetoed = Py_None;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(places); i++) {
        PyObject *place = PyList_GET_ITEM(places, i);
        if (!PyTuple_Check(place) || PyTuple_GET_SIZE(place) != 2) {
            PyErr_SetString(PyExc_TypeError, "a place is not (phrase, span)");
            return NULL;
        }
        Py_ssize_t phrase;
        if (index_of(PyTuple_GET_ITEM(place, 0), &phrase) < 0)
            return NULL;
        PyObject *groups;
        int uses = groups_in(groups_of, phrase, number, &groups);
        if (uses < 0)
            return NULL;
        if (uses == 0)
            continue;
        for (Py_ssize_t g = 0; g < PyTuple_GET_SIZE(groups); g++) {
            Py_ssize_t group;
            if (index_of(PyTuple_GET_ITEM(groups, g), &group) < 0)
                return NULL;
            if (group < 0) {
                if (vetoed == Py_None)
                    vetoed = PyTuple_GET_ITEM(place, 0);
                continue;
            }
            if (group >= PyList_GET_SIZE(found)) {
                PyErr_SetString(PyExc_IndexError, "a group the rule does not have");
                return NULL;
            }
            if (PyList_Append(PyList_GET_ITEM(found, group), PyTuple_GET_ITEM(place, 1)) < 0)
                return NULL;
        }
    }
    return Py_NewRef(vetoed);
}

/* A rule phrase found in the text: its id and word span [first, after). */
typedef struct {
    Py_ssize_t phrase, first, after;
} Place;

/* A span of one of a rule's groups. */
typedef struct {
    Py_ssize_t group, first, after;
} Span;

/* Every choice of one span per group is tried when there are at most this many (the
   usual text has each group once); with more, settle() leaves the rule to Python's
   rules.satisfied, whose time does not grow with their product. */
#define MAX_CHOICES 64

/* The places of the rule phrases of a text, as places() lists them (the phrases found in
   the joined text, then the one word phrases), into a new array; its length in *count.
   NULL with an error set. */
static Place *
read_places(PyObject *words, const unsigned char *bounds, Py_ssize_t size, PyObject *word_ids,
            Py_ssize_t *count)
{
    Py_ssize_t n_words = PyList_GET_SIZE(words), n_ids = PyList_GET_SIZE(word_ids);
    Place *out = PyMem_New(Place, n_words + n_ids + 1);
    Py_ssize_t *upto = n_words ? PyMem_New(Py_ssize_t, size > 0 ? size : 1) : NULL;
    if (out == NULL || (n_words && upto == NULL)) {
        PyErr_NoMemory();
        goto failed;
    }
    Py_ssize_t sum = 0, at = 0;
    for (Py_ssize_t i = 0; n_words && i < size; i++)
        upto[i] = sum += bounds[i]; /* the word starts at or before offset i */
    for (Py_ssize_t i = 0; i < n_words; i++) {
        PyObject *found = PyList_GET_ITEM(words, i);
        PyObject *phrase = phrase_of(found);
        Py_ssize_t start, end;
        if (phrase == NULL || index_of(phrase, &out[at].phrase) < 0 ||
            index_of(PyTuple_GET_ITEM(found, 1), &start) < 0 ||
            index_of(PyTuple_GET_ITEM(found, 2), &end) < 0)
            goto failed;
        if (start < 0 || start >= size || end < 1 || end > size) {
            PyErr_SetString(PyExc_IndexError, "a phrase found outside the text");
            goto failed;
        }
        out[at].first = upto[start] - 1;
        out[at++].after = upto[end - 1];
    }
    for (Py_ssize_t i = 0; i < n_ids; i++) {
        Py_ssize_t id;
        if (single_of(PyList_GET_ITEM(word_ids, i), &id) < 0)
            goto failed;
        if (id == 0)
            continue;
        out[at].phrase = id;
        out[at].first = i;
        out[at++].after = i + 1;
    }
    PyMem_Free(upto);
    *count = at;
    return out;
failed:
    PyMem_Free(upto);
    PyMem_Free(out);
    return NULL;
}

/* Whether one span per group can be chosen as rules.satisfied asks (if ``ordered``, each
   starting at or after the end of the one before; if ``within`` >= 0, all inside that
   many words), trying every choice. ``spans`` are sorted by group, ``starts[g]`` is where
   group g's begin and ``starts[groups]`` their end; every group has at least one. */
static int
any_choice(const Span *spans, const Py_ssize_t *starts, Py_ssize_t groups, int ordered,
           Py_ssize_t within, Py_ssize_t *chosen)
{
    for (Py_ssize_t g = 0; g < groups; g++)
        chosen[g] = starts[g];
    for (;;) {
        Py_ssize_t low = spans[chosen[0]].first, high = spans[chosen[0]].after;
        int fits = 1;
        for (Py_ssize_t g = 1; g < groups && fits; g++) {
            const Span *span = &spans[chosen[g]];
            if (ordered && span->first < high)
                fits = 0; /* ordered: ends only grow, so ``high`` is the last one's end */
            if (span->first < low)
                low = span->first;
            if (span->after > high)
                high = span->after;
        }
        if (fits && (within < 0 || high - low <= within))
            return 1;
        /* the next choice, the last group's span changing fastest */
        Py_ssize_t g = groups - 1;
        while (g >= 0 && ++chosen[g] == starts[g + 1]) {
            chosen[g] = starts[g];
            g--;
        }
        if (g < 0)
            return 0;
    }
}

/* One rule's shape as the Matcher built it: (groups, ordered, within or None, ends). */
static int
shape_of(PyObject *shape, Py_ssize_t *groups, int *ordered, Py_ssize_t *within, int *ends)
{
    if (!PyTuple_Check(shape) || PyTuple_GET_SIZE(shape) != 4 ||
        index_of(PyTuple_GET_ITEM(shape, 0), groups) < 0 ||
        !PyBool_Check(PyTuple_GET_ITEM(shape, 1)) || !PyBool_Check(PyTuple_GET_ITEM(shape, 3))) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "a rule's shape is not as built");
        return -1;
    }
    PyObject *limit = PyTuple_GET_ITEM(shape, 2);
    if (limit == Py_None)
        *within = -1;
    else if (index_of(limit, within) < 0)
        return -1;
    else if (*within < 0) {
        PyErr_SetString(PyExc_IndexError, "a rule's within is negative");
        return -1;
    }
    if (*groups < 1) {
        PyErr_SetString(PyExc_IndexError, "a rule without groups");
        return -1;
    }
    *ordered = PyTuple_GET_ITEM(shape, 1) == Py_True;
    *ends = PyTuple_GET_ITEM(shape, 3) == Py_True;
    return 0;
}

/* One candidate rule against the places of a text: 1 if satisfied, 0 if not, 2 if there
   are too many choices to try here, -1 with an error set. ``*vetoed``: the first of its
   "unless" phrases among the places (0 for none). ``spans``/``sorted``: room for
   ``room`` spans each, grown here when a phrase is in several of the rule's groups. */
static int
settle_one(PyObject *number, PyObject *groups_of, PyObject *shape, const Place *places,
           Py_ssize_t count, Py_ssize_t words, Span **spans, Span **sorted, Py_ssize_t *room,
           Py_ssize_t *vetoed)
{
    Py_ssize_t groups, within;
    int ordered, ends, status = -1;
    if (shape_of(shape, &groups, &ordered, &within, &ends) < 0)
        return -1;
    Py_ssize_t *sizes = PyMem_New(Py_ssize_t, 2 * groups + 1);
    if (sizes == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t *starts = sizes + groups; /* groups + 1 of them */
    memset(sizes, 0, sizeof(Py_ssize_t) * (size_t)groups);
    Py_ssize_t found = 0;
    *vetoed = 0;
    /* As the loop of Matcher._apply_rule: each place's spans into the groups it is in. */
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t phrase = places[i].phrase;
        PyObject *in;
        int uses = groups_in(groups_of, phrase, number, &in);
        if (uses < 0)
            goto done;
        if (uses == 0)
            continue;
        for (Py_ssize_t g = 0; g < PyTuple_GET_SIZE(in); g++) {
            Py_ssize_t group;
            if (index_of(PyTuple_GET_ITEM(in, g), &group) < 0)
                goto done;
            if (group < 0) {
                if (*vetoed == 0)
                    *vetoed = phrase;
                continue;
            }
            if (group >= groups) {
                PyErr_SetString(PyExc_IndexError, "a group the rule does not have");
                goto done;
            }
            /* "ends": only where the last group's phrase ends the text */
            if (ends && group == groups - 1 && places[i].after != words)
                continue;
            if (found == *room) {
                Py_ssize_t more = *room * 2;
                Span *grown = PyMem_Realloc(*spans, sizeof(Span) * (size_t)more);
                if (grown != NULL)
                    *spans = grown;
                grown = grown == NULL ? NULL : PyMem_Realloc(*sorted, sizeof(Span) * (size_t)more);
                if (grown == NULL) {
                    PyErr_NoMemory();
                    goto done;
                }
                *sorted = grown;
                *room = more;
            }
            (*spans)[found].group = group;
            (*spans)[found].first = places[i].first;
            (*spans)[found++].after = places[i].after;
            sizes[group]++;
        }
    }
    status = 0;
    Py_ssize_t choices = 1;
    for (Py_ssize_t g = 0; g < groups; g++) {
        if (sizes[g] == 0)
            goto done; /* a group not found */
        if (choices <= MAX_CHOICES)
            choices *= sizes[g];
    }
    status = 1;
    if (!ordered && within < 0)
        goto done; /* every group found is enough */
    status = 2;
    if (choices > MAX_CHOICES)
        goto done;
    /* the spans by group (a counting sort), then every choice of one per group */
    starts[0] = 0;
    for (Py_ssize_t g = 0; g < groups; g++)
        starts[g + 1] = starts[g] + sizes[g];
    for (Py_ssize_t i = 0; i < found; i++)
        (*sorted)[starts[(*spans)[i].group] + --sizes[(*spans)[i].group]] = (*spans)[i];
    status = any_choice(*sorted, starts, groups, ordered, within, sizes);
done:
    PyMem_Free(sizes);
    return status;
}

/* settle(words, bounds, word_ids, candidates, groups_of, shapes) -> [(rule, state)]

   Matcher._apply_rule's test of each candidate rule (``candidates``, as screen() gives
   them), for a text without allow-phrases: in the candidates' order, each satisfied rule
   with the id of its first "unless" phrase found (0 for none), or with -1 when it has too
   many choices of spans to try here (Python's to settle). ``shapes``: rule -> (groups,
   ordered, within or None, ends); the rest as places() and collect() take them. */
static PyObject *
settle(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyList_Check(args[0]) || !PyBytes_Check(args[1]) ||
        !PyList_Check(args[2]) || !PyList_Check(args[3]) || !PyTuple_Check(args[4]) ||
        !PyTuple_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "settle(words: list, bounds: bytes, word_ids: list, candidates: list, "
                        "groups_of: tuple, shapes: tuple)");
        return NULL;
    }
    PyObject *candidates = args[3], *groups_of = args[4], *shapes = args[5];
    Py_ssize_t count, room = 16;
    Place *places = read_places(args[0], (const unsigned char *)PyBytes_AS_STRING(args[1]),
                                PyBytes_GET_SIZE(args[1]), args[2], &count);
    if (places == NULL)
        return NULL;
    Span *spans = PyMem_New(Span, room), *sorted = PyMem_New(Span, room);
    PyObject *out = PyList_New(0);
    if (spans == NULL || sorted == NULL || out == NULL) {
        if (out != NULL)
            PyErr_NoMemory();
        goto failed;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(candidates); i++) {
        PyObject *number = PyList_GET_ITEM(candidates, i);
        Py_ssize_t rule, vetoed;
        if (index_of(number, &rule) < 0)
            goto failed;
        if (rule < 0 || rule >= PyTuple_GET_SIZE(shapes)) {
            PyErr_SetString(PyExc_IndexError, "an unknown rule");
            goto failed;
        }
        int status = settle_one(number, groups_of, PyTuple_GET_ITEM(shapes, rule), places, count,
                                PyList_GET_SIZE(args[2]), &spans, &sorted, &room, &vetoed);
        if (status < 0)
            goto failed;
        if (status == 0)
            continue;
        PyObject *state = PyLong_FromSsize_t(status == 2 ? -1 : vetoed);
        PyObject *pair = state == NULL ? NULL : PyTuple_Pack(2, number, state);
        Py_XDECREF(state);
        if (append_new(out, pair) < 0)
            goto failed;
    }
    PyMem_Free(places);
    PyMem_Free(spans);
    PyMem_Free(sorted);
    return out;
failed:
    PyMem_Free(places);
    PyMem_Free(spans);
    PyMem_Free(sorted);
    Py_XDECREF(out);
    return NULL;
}

/* Append ``read`` (a word as the normaliser read it: none, one or several words separated by
   one space) to ``words``; 0, or -1 with an error set, or 1 when it is not ASCII words. */
static int
append_read(PyObject *words, PyObject *read, Py_ssize_t *total)
{
    if (!PyUnicode_Check(read) || !PyUnicode_IS_ASCII(read))
        return 1;
    const unsigned char *chars = PyUnicode_1BYTE_DATA(read);
    Py_ssize_t size = PyUnicode_GET_LENGTH(read), from = 0;
    for (Py_ssize_t i = 0; i < size; i++)
        if (chars[i] <= ' ' && chars[i] != ' ')
            return 1;  /* other white space: str.split's to read */
    if (size > 0 && memchr(chars, ' ', (size_t)size) == NULL) {  /* the usual: one word */
        *total += size;
        return PyList_Append(words, read);
    }
    while (from < size) {
        if (chars[from] == ' ') {
            from++;
            continue;
        }
        Py_ssize_t to = from;
        while (to < size && chars[to] != ' ')
            to++;
        if (append_new(words, PyUnicode_Substring(read, from, to)) < 0)
            return -1;
        *total += to - from;
        from = to;
    }
    return 0;
}

/* read_known(text, read, max_text) -> (words, joined, bounds), or None

   Normaliser.read for the usual search: ASCII letters, digits and spaces only, at most
   ``max_text`` characters, no three one-character words in a row (a word spelled out
   letter by letter), and every word already read (``read``: the word in lower case -> as
   read, none, one or several words). None for anything else: Normaliser.read then reads
   the text in Python. */
static PyObject *
read_known(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t max_text;
    if (nargs != 3 || !PyUnicode_Check(args[0]) || !PyDict_Check(args[1]) ||
        index_of(args[2], &max_text) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "read_known(text: str, read: dict, max_text: int)");
        return NULL;
    }
    PyObject *text = args[0], *known = args[1];
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0)
        return NULL;
#endif
    Py_ssize_t size = PyUnicode_GET_LENGTH(text);
    if (!PyUnicode_IS_ASCII(text) || size > max_text)
        Py_RETURN_NONE;
    const unsigned char *chars = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t count = 0, singles = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        unsigned char c = chars[i];
        if (c == ' ')
            continue;
        if (!Py_ISALNUM(c))
            Py_RETURN_NONE;
        if (i == 0 || chars[i - 1] == ' ') {
            count++;
            /* one-character words in a row: three or more are one word spelled out */
            singles = (i + 1 == size || chars[i + 1] == ' ') ? singles + 1 : 0;
            if (singles >= 3)
                Py_RETURN_NONE;
        }
    }
    if (count == 0)
        Py_RETURN_NONE;
    PyObject *words = PyList_New(0);
    if (words == NULL)
        return NULL;
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < size;) {
        if (chars[i] == ' ') {
            i++;
            continue;
        }
        Py_ssize_t end = i;
        while (end < size && chars[end] != ' ')
            end++;
        PyObject *word = PyUnicode_New(end - i, 127);
        if (word == NULL)
            goto failed;
        unsigned char *lower = PyUnicode_1BYTE_DATA(word);
        for (Py_ssize_t j = i; j < end; j++)
            lower[j - i] = (chars[j] >= 'A' && chars[j] <= 'Z') ? chars[j] + 32 : chars[j];
        PyObject *read = PyDict_GetItemWithError(known, word);
        Py_DECREF(word);
        if (read == NULL) {
            if (PyErr_Occurred())
                goto failed;
            goto not_here; /* a word not read yet */
        }
        int status = append_read(words, read, &total);
        if (status < 0)
            goto failed;
        if (status > 0)
            goto not_here;
        i = end;
    }
    count = PyList_GET_SIZE(words);
    if (count == 0)
        goto not_here; /* every word read as none: Python's to say what that is */
    PyObject *joined = PyUnicode_New(total, 127);
    PyObject *bounds = PyBytes_FromStringAndSize(NULL, total + 1);
    PyObject *tuple = PyList_AsTuple(words);
    Py_DECREF(words);
    if (joined == NULL || bounds == NULL || tuple == NULL) {
        Py_XDECREF(joined);
        Py_XDECREF(bounds);
        Py_XDECREF(tuple);
        return NULL;
    }
    unsigned char *into = PyUnicode_1BYTE_DATA(joined);
    char *marks = PyBytes_AS_STRING(bounds);
    memset(marks, 0, (size_t)total + 1);
    Py_ssize_t offset = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *read = PyTuple_GET_ITEM(tuple, i);
        Py_ssize_t length = PyUnicode_GET_LENGTH(read);
        memcpy(into + offset, PyUnicode_1BYTE_DATA(read), (size_t)length);
        marks[offset] = 1;
        offset += length;
    }
    marks[total] = 1;
    PyObject *out = PyTuple_Pack(3, tuple, joined, bounds);
    Py_DECREF(tuple);
    Py_DECREF(joined);
    Py_DECREF(bounds);
    return out;
not_here:
    Py_DECREF(words);
    Py_RETURN_NONE;
failed:
    Py_DECREF(words);
    return NULL;
}

/* -- the automaton ----------------------------------------------------------------------

   compile() builds, once, the Aho-Corasick automaton of the Matcher's keys in a few flat
   arrays: a search walks a node per character, and each node its own malloc (as in
   pyahocorasick) made most of those steps a cache miss. Nodes are numbered breadth first,
   so a node's children are consecutive (``first`` .. ``first + count - 1``, in the order
   of their characters); the root's children are a dense table by character. A key's
   patterns are Record structs, their signatures and inner breaks in two pools. find()
   walks it over the joined text and tests each pattern found as scan() does. */


/* 16 bytes: four to a cache line. A node's children end where the next node's begin. */
typedef struct {
    int32_t first;  /* the first child */
    int32_t fail;   /* the longest proper suffix that is a node */
    int32_t out;    /* the first record of the key ending here, or -1 */
    int32_t link;   /* the next node on the fail chain where a key ends, or -1 */
} Node;

typedef struct {
    int32_t length;       /* the key's length, in characters */
    int32_t kind;         /* 0..3: term, allow, context, rule phrase */
    int32_t index;        /* of the term, allow-phrase, context rule or phrase */
    int32_t signature;    /* where its signature starts in ``signatures`` */
    int32_t signed_size;  /* its length */
    int32_t inner;        /* where its inner breaks start in ``inners`` */
    int32_t inner_count;
    uint8_t stem;
    uint8_t last;         /* the key's last record */
} Record;

typedef struct {
    Node *nodes;
    uint16_t *labels;        /* node -> the symbol that leads to it */
    int32_t *root;           /* symbol -> the root's child, or 0 */
    Record *records;
    unsigned char *signatures;
    int32_t *inners;
    int16_t ascii[128];      /* character -> symbol, -1 for none */
    Py_UCS4 *others;         /* the symbols past ASCII: their characters, sorted */
    Py_ssize_t n_others, n_symbols, n_nodes, n_records, n_signatures, n_inners;
} Automaton;

#define AUTOMATON_NAME "schoolgate.monitoring.speedups.Automaton"

static void
automaton_free(Automaton *a)
{
    if (a == NULL)
        return;
    PyMem_Free(a->nodes);
    PyMem_Free(a->labels);
    PyMem_Free(a->root);
    PyMem_Free(a->records);
    PyMem_Free(a->signatures);
    PyMem_Free(a->inners);
    PyMem_Free(a->others);
    PyMem_Free(a);
}

static void
automaton_destroy(PyObject *capsule)
{
    automaton_free(PyCapsule_GetPointer(capsule, AUTOMATON_NAME));
}

/* A character's symbol, or -1 when no key has it. */
static inline int32_t
symbol_of(const Automaton *a, Py_UCS4 c)
{
    if (c < 128)
        return a->ascii[c];
    Py_ssize_t low = 0, high = a->n_others;
    while (low < high) {
        Py_ssize_t mid = (low + high) / 2;
        if (a->others[mid] < c)
            low = mid + 1;
        else
            high = mid;
    }
    return low < a->n_others && a->others[low] == c ? (int32_t)(128 + low) : -1;
}

/* The child of ``node`` (not the root) by ``symbol``, or -1. */
static inline int32_t
child_of(const Automaton *a, int32_t node, uint16_t symbol)
{
    const Node *n = &a->nodes[node];
    const uint16_t *labels = a->labels + n->first;
    int32_t count = n[1].first - n->first;
    for (int32_t i = 0; i < count; i++) {
        if (labels[i] == symbol)
            return n->first + i;
        if (labels[i] > symbol)
            break; /* children in the order of their symbols */
    }
    return -1;
}

/* The trie while it is built: children as sibling lists, sorted by symbol. */
typedef struct {
    int32_t child, sibling, symbol, record;
} Building;

static int
grow(void **array, Py_ssize_t *room, Py_ssize_t needed, size_t item)
{
    if (needed <= *room)
        return 0;
    Py_ssize_t more = *room * 2 > needed ? *room * 2 : needed + 16;
    void *grown = PyMem_Realloc(*array, item * (size_t)more);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *array = grown;
    *room = more;
    return 0;
}

static int
compare_chars(const void *x, const void *y)
{
    Py_UCS4 a = *(const Py_UCS4 *)x, b = *(const Py_UCS4 *)y;
    return a < b ? -1 : a > b;
}

/* One pattern's test, (signature, kind, index, inner, stem), into ``record``. */
static int
record_of(Automaton *a, PyObject *test, Record *record, Py_ssize_t *rooms)
{
    if (!PyTuple_Check(test) || PyTuple_GET_SIZE(test) != 5 ||
        !PyBytes_Check(PyTuple_GET_ITEM(test, 0)) || !PyTuple_Check(PyTuple_GET_ITEM(test, 3)) ||
        !PyBool_Check(PyTuple_GET_ITEM(test, 4))) {
        PyErr_SetString(PyExc_TypeError, "a pattern's test is not (signature, kind, index, "
                                         "inner, stem)");
        return -1;
    }
    Py_ssize_t kind, index;
    if (index_of(PyTuple_GET_ITEM(test, 1), &kind) < 0 ||
        index_of(PyTuple_GET_ITEM(test, 2), &index) < 0)
        return -1;
    PyObject *signature = PyTuple_GET_ITEM(test, 0), *inner = PyTuple_GET_ITEM(test, 3);
    Py_ssize_t size = PyBytes_GET_SIZE(signature), count = PyTuple_GET_SIZE(inner);
    if (kind < 0 || kind >= 4 || index < 0 || index > INT32_MAX || size > INT32_MAX / 2 ||
        count > INT32_MAX / 2 || a->n_signatures > INT32_MAX / 2 || a->n_inners > INT32_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "a pattern's kind or index is out of range");
        return -1;
    }
    if (grow((void **)&a->signatures, &rooms[0], a->n_signatures + size + 1, 1) < 0 ||
        grow((void **)&a->inners, &rooms[1], a->n_inners + count + 1, sizeof(int32_t)) < 0)
        return -1;
    record->kind = (int32_t)kind;
    record->index = (int32_t)index;
    record->signature = (int32_t)a->n_signatures;
    record->signed_size = (int32_t)size;
    memcpy(a->signatures + a->n_signatures, PyBytes_AS_STRING(signature), (size_t)size);
    a->n_signatures += size;
    record->inner = (int32_t)a->n_inners;
    record->inner_count = (int32_t)count;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t at;
        if (index_of(PyTuple_GET_ITEM(inner, i), &at) < 0)
            return -1;
        /* an offset no text reaches stands for none */
        a->inners[a->n_inners++] = at < 0 || at > INT32_MAX ? -1 : (int32_t)at;
    }
    record->stem = PyTuple_GET_ITEM(test, 4) == Py_True;
    record->last = 0;
    return 0;
}

/* The symbols: every character of the keys, ASCII ones by a table, the others sorted. */
static int
read_symbols(Automaton *a, PyObject *entries)
{
    Py_ssize_t room = 0, count = 0;
    char seen[128] = {0};
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(entries); i++) {
        PyObject *key = PyTuple_GET_ITEM(PyList_GET_ITEM(entries, i), 0);
        int kind = PyUnicode_KIND(key);
        const void *data = PyUnicode_DATA(key);
        for (Py_ssize_t j = 0; j < PyUnicode_GET_LENGTH(key); j++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, j);
            if (c < 128) {
                seen[c] = 1;
                continue;
            }
            if (grow((void **)&a->others, &room, count + 1, sizeof(Py_UCS4)) < 0)
                return -1;
            a->others[count++] = c;
        }
    }
    if (count)
        qsort(a->others, (size_t)count, sizeof(Py_UCS4), compare_chars);
    Py_ssize_t unique = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        if (unique == 0 || a->others[unique - 1] != a->others[i])
            a->others[unique++] = a->others[i];
    if (unique > 65535 - 128) {
        PyErr_SetString(PyExc_ValueError, "too many different characters in the keys");
        return -1;
    }
    a->n_others = unique;
    for (int c = 0; c < 128; c++)
        a->ascii[c] = seen[c] ? (int16_t)c : -1;
    a->n_symbols = 128 + unique;
    return 0;
}

/* The keys into a trie of Building nodes (0: the root), each key's records in ``a``. */
static Building *
build_trie(Automaton *a, PyObject *entries, Py_ssize_t *n_trie)
{
    Py_ssize_t room = 64, rooms[2] = {0, 0}, record_room = 0;
    Building *trie = PyMem_New(Building, room);
    if (trie == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    trie[0] = (Building){-1, -1, -1, -1};
    Py_ssize_t count = 1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(entries); i++) {
        PyObject *entry = PyList_GET_ITEM(entries, i);
        PyObject *key = PyTuple_GET_ITEM(entry, 0), *tests = PyTuple_GET_ITEM(entry, 1);
        Py_ssize_t length = PyUnicode_GET_LENGTH(key);
        int kind = PyUnicode_KIND(key);
        const void *data = PyUnicode_DATA(key);
        int32_t node = 0;
        for (Py_ssize_t j = 0; j < length; j++) {
            int32_t symbol = symbol_of(a, PyUnicode_READ(kind, data, j));
            int32_t before = -1, at = trie[node].child; /* siblings by symbol */
            while (at >= 0 && trie[at].symbol < symbol) {
                before = at;
                at = trie[at].sibling;
            }
            if (at >= 0 && trie[at].symbol == symbol) {
                node = at;
                continue;
            }
            if (count >= INT32_MAX) {
                PyErr_SetString(PyExc_ValueError, "too many keys");
                goto failed;
            }
            if (grow((void **)&trie, &room, count + 1, sizeof(Building)) < 0)
                goto failed;
            trie[count] = (Building){-1, at, symbol, -1};
            if (before < 0)
                trie[node].child = (int32_t)count;
            else
                trie[before].sibling = (int32_t)count;
            node = (int32_t)count++;
        }
        if (trie[node].record >= 0) {
            PyErr_SetString(PyExc_ValueError, "a key given twice");
            goto failed;
        }
        Py_ssize_t n = PyTuple_GET_SIZE(tests);
        if (a->n_records + n > INT32_MAX ||
            grow((void **)&a->records, &record_room, a->n_records + n, sizeof(Record)) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "too many patterns");
            goto failed;
        }
        trie[node].record = (int32_t)a->n_records;
        for (Py_ssize_t t = 0; t < n; t++) {
            Record *record = &a->records[a->n_records++];
            if (record_of(a, PyTuple_GET_ITEM(tests, t), record, rooms) < 0)
                goto failed;
            record->length = (int32_t)length;
            record->last = t == n - 1;
        }
    }
    *n_trie = count;
    return trie;
failed:
    PyMem_Free(trie);
    return NULL;
}

/* The trie's nodes breadth first into ``a``, then their fail and output links. */
static int
lay_out(Automaton *a, const Building *trie, Py_ssize_t n_trie)
{
    int32_t *order = PyMem_New(int32_t, n_trie); /* breadth-first position -> trie node */
    a->nodes = PyMem_New(Node, n_trie + 1); /* and one past the last: where its children end */
    a->labels = PyMem_New(uint16_t, n_trie);
    a->root = PyMem_New(int32_t, a->n_symbols);
    if (order == NULL || a->nodes == NULL || a->labels == NULL || a->root == NULL) {
        PyMem_Free(order);
        PyErr_NoMemory();
        return -1;
    }
    a->n_nodes = n_trie;
    order[0] = 0;
    a->labels[0] = 0;
    Py_ssize_t next = 1;
    for (Py_ssize_t at = 0; at < n_trie; at++) {
        const Building *b = &trie[order[at]];
        Node *node = &a->nodes[at];
        node->first = (int32_t)next;
        node->out = b->record;
        for (int32_t child = b->child; child >= 0; child = trie[child].sibling) {
            a->labels[next] = (uint16_t)trie[child].symbol;
            order[next++] = child;
        }
    }
    a->nodes[n_trie] = (Node){(int32_t)next, 0, -1, -1};
    PyMem_Free(order);
    for (Py_ssize_t s = 0; s < a->n_symbols; s++)
        a->root[s] = 0;
    for (int32_t i = 1; i < a->nodes[1].first; i++)
        a->root[a->labels[i]] = i;
    a->nodes[0].fail = 0;
    a->nodes[0].link = -1;
    /* breadth first, so a node's fail (shallower) is settled before it */
    for (Py_ssize_t v = 0; v < n_trie; v++) {
        const Node *node = &a->nodes[v];
        for (int32_t c = node->first; c < node[1].first; c++) {
            int32_t fail = 0;
            if (v != 0) {
                int32_t u = node->fail, found = -1;
                uint16_t symbol = a->labels[c];
                for (;;) {
                    found = u == 0 ? a->root[symbol] : child_of(a, u, symbol);
                    if (found > 0 || u == 0)
                        break;
                    u = a->nodes[u].fail;
                }
                fail = found > 0 ? found : 0;
            }
            a->nodes[c].fail = fail;
            a->nodes[c].link = a->nodes[fail].out >= 0 ? fail : a->nodes[fail].link;
        }
    }
    return 0;
}

/* compile(entries) -> the automaton (a capsule)

   ``entries``: a list of (key, tests): each key (a non-empty str, each once) with its
   patterns' tests, (signature, kind, index, inner, stem) as terms._test gives them. */
static PyObject *
compile(PyObject *module, PyObject *entries)
{
    if (!PyList_Check(entries)) {
        PyErr_SetString(PyExc_TypeError, "compile(entries: list of (key, tests))");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(entries); i++) {
        PyObject *entry = PyList_GET_ITEM(entries, i);
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(entry, 0)) ||
            !PyTuple_Check(PyTuple_GET_ITEM(entry, 1)) ||
            PyTuple_GET_SIZE(PyTuple_GET_ITEM(entry, 1)) < 1) {
            PyErr_SetString(PyExc_TypeError, "an entry is not (key: str, tests: tuple)");
            return NULL;
        }
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(PyTuple_GET_ITEM(entry, 0)) < 0)
            return NULL;
#endif
        Py_ssize_t length = PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(entry, 0));
        if (length < 1 || length > INT32_MAX / 2) {
            PyErr_SetString(PyExc_ValueError, "a key is empty or too long");
            return NULL;
        }
    }
    Automaton *a = PyMem_Calloc(1, sizeof(Automaton));
    if (a == NULL)
        return PyErr_NoMemory();
    Py_ssize_t n_trie = 0;
    Building *trie = NULL;
    if (read_symbols(a, entries) < 0 || (trie = build_trie(a, entries, &n_trie)) == NULL ||
        lay_out(a, trie, n_trie) < 0) {
        PyMem_Free(trie);
        automaton_free(a);
        return NULL;
    }
    PyMem_Free(trie);
    PyObject *capsule = PyCapsule_New(a, AUTOMATON_NAME, automaton_destroy);
    if (capsule == NULL)
        automaton_free(a);
    return capsule;
}

static Automaton *
automaton_of(PyObject *capsule)
{
    if (!PyCapsule_IsValid(capsule, AUTOMATON_NAME)) {
        PyErr_SetString(PyExc_TypeError, "not an automaton compile() made");
        return NULL;
    }
    return PyCapsule_GetPointer(capsule, AUTOMATON_NAME);
}

/* footprint(automaton) -> (bytes, nodes): what its arrays take. */
static PyObject *
footprint(PyObject *module, PyObject *capsule)
{
    Automaton *a = automaton_of(capsule);
    if (a == NULL)
        return NULL;
    size_t bytes = sizeof(Automaton) + sizeof(Node) * (size_t)(a->n_nodes + 1) +
                   sizeof(uint16_t) * (size_t)a->n_nodes + sizeof(int32_t) * (size_t)a->n_symbols +
                   sizeof(Record) * (size_t)a->n_records + (size_t)a->n_signatures +
                   sizeof(int32_t) * (size_t)a->n_inners + sizeof(Py_UCS4) * (size_t)a->n_others;
    return Py_BuildValue("(nn)", (Py_ssize_t)bytes, a->n_nodes);
}

/* As stands(), on a record. */
static int
record_stands(const Automaton *a, const Record *r, const unsigned char *seen, Py_ssize_t length)
{
    if (r->signed_size == length &&
        memcmp(a->signatures + r->signature, seen, (size_t)length) == 0)
        return 1;
    if (!seen[0] || (!r->stem && !seen[length - 1]))
        return 0;
    const int32_t *inner = a->inners + r->inner;
    for (Py_ssize_t at = 1; at < length - 1; at++) {
        if (seen[at] != 1)
            continue;
        int found = 0;
        for (int32_t i = 0; i < r->inner_count; i++)
            if (inner[i] == at) {
                found = 1;
                break;
            }
        if (!found)
            return 0;
    }
    return 1;
}

/* find(automaton, joined, bounds, words, single) -> (terms, allows, context, words, word_ids)

   What scan() gives for ``automaton.iter(joined)`` of pyahocorasick's automaton of the same
   keys: the patterns found at word boundaries, by kind, in the order that automaton finds
   them (by end, then longest first), and each word's one word phrase. ``bounds``: the
   joined text's breaks, one more than its characters. */
static PyObject *
find(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyUnicode_Check(args[1]) || !PyBytes_Check(args[2]) ||
        !PyTuple_Check(args[3]) || !PyDict_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "find(automaton, joined: str, bounds: bytes, words: tuple, single: dict)");
        return NULL;
    }
    Automaton *a = automaton_of(args[0]);
    if (a == NULL)
        return NULL;
    PyObject *joined = args[1];
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(joined) < 0)
        return NULL;
#endif
    const unsigned char *bounds = (const unsigned char *)PyBytes_AS_STRING(args[2]);
    Py_ssize_t size = PyUnicode_GET_LENGTH(joined);
    if (PyBytes_GET_SIZE(args[2]) != size + 1) {
        PyErr_SetString(PyExc_ValueError, "bounds are not one more than the text's characters");
        return NULL;
    }
    int kind = PyUnicode_KIND(joined);
    const void *data = PyUnicode_DATA(joined);
    PyObject *by_kind = PyTuple_New(5);
    if (by_kind == NULL)
        return NULL;
    for (int i = 0; i < 4; i++) {
        PyObject *list = PyList_New(0);
        if (list == NULL)
            goto failed;
        PyTuple_SET_ITEM(by_kind, i, list);
    }
    int32_t node = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        int32_t symbol = symbol_of(a, PyUnicode_READ(kind, data, i));
        if (symbol < 0) {
            node = 0;
            continue;
        }
        for (;;) {
            if (node == 0) {
                node = a->root[symbol];
                break;
            }
            int32_t child = child_of(a, node, (uint16_t)symbol);
            if (child >= 0) {
                node = child;
                break;
            }
            node = a->nodes[node].fail;
        }
        /* every key ending here: this node's, then those along its fail chain */
        for (int32_t at = a->nodes[node].out >= 0 ? node : a->nodes[node].link; at >= 0;
             at = a->nodes[at].link) {
            const Record *r = &a->records[a->nodes[at].out];
            Py_ssize_t end = i + 1, start = end - r->length;
            if (start < 0) {
                PyErr_SetString(PyExc_IndexError, "a pattern found outside the text");
                goto failed;
            }
            for (;; r++) {
                int ok = record_stands(a, r, bounds + start, end + 1 - start);
                if (ok) {
                    PyObject *index = PyLong_FromLong(r->index);
                    PyObject *hit = index == NULL ? NULL : triple(index, start, end);
                    Py_XDECREF(index);
                    if (append_new(PyTuple_GET_ITEM(by_kind, r->kind), hit) < 0)
                        goto failed;
                }
                if (r->last)
                    break;
            }
        }
    }
    PyObject *word_ids = word_ids_of(args[3], args[4]);
    if (word_ids == NULL)
        goto failed;
    PyTuple_SET_ITEM(by_kind, 4, word_ids);
    return by_kind;
failed:
    Py_DECREF(by_kind);
    return NULL;
}

/* read_word(word, spellings) -> str, or None

   normaliser.read_word for an ASCII word (the usual): leetspeak, the library's spellings,
   the sound-alikes (ph -> f, ck -> k, c before e i y -> s, other c -> k, x -> ks), then a
   letter repeated counts once. None for a word or a spelling that is not ASCII: read_word
   then reads it in Python. */
static PyObject *
read_word(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "read_word(word: str, spellings: dict)");
        return NULL;
    }
    PyObject *word = args[0];
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(word) < 0)
        return NULL;
#endif
    if (!PyUnicode_IS_ASCII(word))
        Py_RETURN_NONE;
    Py_ssize_t size = PyUnicode_GET_LENGTH(word);
    const char *text = (const char *)PyUnicode_1BYTE_DATA(word);
    int leet = 0, letters = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        char c = text[i];
        if (Py_ISDIGIT(c) || c == '@' || c == '$' || c == '|' || c == '!')
            leet = 1;
        else if (Py_ISALPHA(c))
            letters = 1;
    }
    PyObject *key;
    if (leet) {
        /* with letters, the leetspeak digits and symbols read as letters; without, the
           symbols go and the digits stay (1488) */
        char *buffer = PyMem_Malloc(size + 1);
        if (buffer == NULL)
            return PyErr_NoMemory();
        Py_ssize_t n = 0;
        for (Py_ssize_t i = 0; i < size; i++) {
            char c = text[i];
            if (!letters) {
                if (c != '@' && c != '$' && c != '|' && c != '!')
                    buffer[n++] = c;
                continue;
            }
            switch (c) {
            case '0': c = 'o'; break;
            case '1': case '|': case '!': c = 'i'; break;
            case '3': c = 'e'; break;
            case '4': case '@': c = 'a'; break;
            case '5': case '$': c = 's'; break;
            case '7': c = 't'; break;
            }
            buffer[n++] = c;
        }
        key = PyUnicode_FromStringAndSize(buffer, n);
        PyMem_Free(buffer);
        if (key == NULL)
            return NULL;
    }
    else {
        key = Py_NewRef(word);
    }
    PyObject *spelled = PyDict_GetItemWithError(args[1], key); /* borrowed */
    if (spelled == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(key);
            return NULL;
        }
        spelled = key;
    }
    if (!PyUnicode_Check(spelled) || !PyUnicode_IS_ASCII(spelled)) {
        Py_DECREF(key);
        Py_RETURN_NONE; /* Python says what (or raises for what the library did not build) */
    }
    size = PyUnicode_GET_LENGTH(spelled);
    text = (const char *)PyUnicode_1BYTE_DATA(spelled);
    /* ph -> f, ck -> k and c -> s or k, x -> ks: at most twice as long */
    char *sounds = PyMem_Malloc(2 * size + 1);
    if (sounds == NULL) {
        Py_DECREF(key);
        return PyErr_NoMemory();
    }
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        char c = text[i], next = i + 1 < size ? text[i + 1] : '\0';
        if (c == 'p' && next == 'h') {
            sounds[n++] = 'f';
            i++;
        }
        else if (c == 'c' && next == 'k') {
            sounds[n++] = 'k';
            i++;
        }
        else if (c == 'c') {
            /* the next letter as Python's replace("ph", "f") left it: an "h" after "p" is
               gone and "ph" begins with "p", neither of them e, i or y */
            sounds[n++] = next == 'e' || next == 'i' || next == 'y' ? 's' : 'k';
        }
        else if (c == 'x') {
            sounds[n++] = 'k';
            sounds[n++] = 's';
        }
        else {
            sounds[n++] = c;
        }
    }
    /* a letter repeated counts once */
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (kept > 0 && Py_ISALPHA(sounds[i]) && sounds[kept - 1] == sounds[i])
            continue;
        sounds[kept++] = sounds[i];
    }
    PyObject *read = PyUnicode_FromStringAndSize(sounds, kept);
    PyMem_Free(sounds);
    Py_DECREF(key);
    return read;
}

/* A number of the second opinion's: its value (-1 with an exception set for one that is not
   a number). */
static int
number_of(PyObject *value, double *out)
{
    *out = PyFloat_CheckExact(value) ? PyFloat_AS_DOUBLE(value) : PyFloat_AsDouble(value);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* The sum of the weights of the pieces of `size` letters of "<word>", in order (a word too
   short for two pieces is one, whole): opinion.SecondOpinion._pieces. */
static int
piece_sum(PyObject *word, PyObject *parts, Py_ssize_t size, double *out)
{
    PyObject *marked = PyUnicode_FromFormat("<%U>", word);
    if (marked == NULL)
        return -1;
    Py_ssize_t length = PyUnicode_GET_LENGTH(marked);
    Py_ssize_t count = length <= size ? 1 : length - size + 1;
    double total = 0.0, weight;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *piece = length <= size ? Py_NewRef(marked)
                                         : PyUnicode_Substring(marked, i, i + size);
        if (piece == NULL)
            goto fail;
        PyObject *value = PyDict_GetItemWithError(parts, piece);
        Py_DECREF(piece);
        if (value == NULL) {
            if (PyErr_Occurred())
                goto fail;
            continue;
        }
        if (number_of(value, &weight) < 0)
            goto fail;
        total += weight;
    }
    Py_DECREF(marked);
    *out = total;
    return 0;
fail:
    Py_DECREF(marked);
    return -1;
}

/* linear(words, table, bias[, pieces, size, unseen, kept]) -> float

   opinion.SecondOpinion._sum: bias, plus the weight of each word and of each pair of
   neighbours. table: word -> (its weight with its pieces', the pairs it begins: second word ->
   weight, or None), every word of a pair in it. pieces: piece -> weight, or None; a word not
   in the table adds its pieces' weights, kept in `unseen` (while it holds fewer than `kept`). */
static PyObject *
linear(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if ((nargs != 3 && nargs != 7) || !PyTuple_Check(args[0]) || !PyDict_Check(args[1])
        || (nargs == 7 && ((args[3] != Py_None && !PyDict_Check(args[3]))
                           || !PyLong_Check(args[4]) || !PyDict_Check(args[5])
                           || !PyLong_Check(args[6])))) {
        PyErr_SetString(PyExc_TypeError,
                        "linear(words: tuple, table: dict, bias: float[, pieces: dict | None, "
                        "size: int, unseen: dict, kept: int])");
        return NULL;
    }
    PyObject *words = args[0], *table = args[1];
    PyObject *parts = nargs == 7 && args[3] != Py_None ? args[3] : NULL;
    PyObject *unseen = parts != NULL ? args[5] : NULL;
    Py_ssize_t size = 0, kept = 0;
    if (parts != NULL) {
        size = PyLong_AsSsize_t(args[4]);
        kept = PyLong_AsSsize_t(args[6]);
        if ((size == -1 || kept == -1) && PyErr_Occurred())
            return NULL;
        if (size < 1) {
            PyErr_SetString(PyExc_ValueError, "linear: pieces of at least one letter");
            return NULL;
        }
    }
    double total, weight;
    if (number_of(args[2], &total) < 0)
        return NULL;
    PyObject *row = NULL; /* the pairs the previous word begins (borrowed), or NULL */
    Py_ssize_t n = PyTuple_GET_SIZE(words);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *word = PyTuple_GET_ITEM(words, i);
        PyObject *entry = PyDict_GetItemWithError(table, word);
        if (entry == NULL) {
            if (PyErr_Occurred())
                return NULL;
            row = NULL; /* in no feature, nor in a pair: its pieces alone */
            if (parts == NULL)
                continue;
            if (!PyUnicode_Check(word)) {
                PyErr_SetString(PyExc_TypeError, "linear: words are str");
                return NULL;
            }
            PyObject *known = PyDict_GetItemWithError(unseen, word);
            if (known != NULL) {
                if (number_of(known, &weight) < 0)
                    return NULL;
            }
            else {
                if (PyErr_Occurred() || piece_sum(word, parts, size, &weight) < 0)
                    return NULL;
                if (PyDict_GET_SIZE(unseen) < kept) {
                    PyObject *value = PyFloat_FromDouble(weight);
                    if (value == NULL)
                        return NULL;
                    int failed = PyDict_SetItem(unseen, word, value);
                    Py_DECREF(value);
                    if (failed < 0)
                        return NULL;
                }
            }
            total += weight;
            continue;
        }
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2) {
            PyErr_SetString(PyExc_TypeError, "table: word -> (weight, pairs or None)");
            return NULL;
        }
        if (number_of(PyTuple_GET_ITEM(entry, 0), &weight) < 0)
            return NULL;
        total += weight;
        if (row != NULL) {
            PyObject *value = PyDict_GetItemWithError(row, word);
            if (value == NULL && PyErr_Occurred())
                return NULL;
            if (value != NULL) {
                if (number_of(value, &weight) < 0)
                    return NULL;
                total += weight;
            }
        }
        row = PyTuple_GET_ITEM(entry, 1);
        if (row == Py_None)
            row = NULL;
        else if (!PyDict_Check(row)) {
            PyErr_SetString(PyExc_TypeError, "table: word -> (weight, pairs or None)");
            return NULL;
        }
    }
    return PyFloat_FromDouble(total);
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "The patterns found at word boundaries, by kind, and each word's one word phrase."},
    {"screen", (PyCFunction)(void (*)(void))screen, METH_FASTCALL,
     "The rules woken whose every group was found."},
    {"places", (PyCFunction)(void (*)(void))places, METH_FASTCALL,
     "Each rule phrase found, with its word span."},
    {"collect", (PyCFunction)(void (*)(void))collect, METH_FASTCALL,
     "One rule's spans by group; the first vetoing phrase."},
    {"settle", (PyCFunction)(void (*)(void))settle, METH_FASTCALL,
     "The candidate rules satisfied by a text without allow-phrases, and their vetoes."},
    {"compile", (PyCFunction)compile, METH_O,
     "The automaton of the matcher's keys, laid out flat (a capsule)."},
    {"find", (PyCFunction)(void (*)(void))find, METH_FASTCALL,
     "scan() of the automaton's walk over a joined text."},
    {"footprint", (PyCFunction)footprint, METH_O, "(bytes, nodes) of an automaton."},
    {"read_known", (PyCFunction)(void (*)(void))read_known, METH_FASTCALL,
     "The usual search read with words already known: (words, joined, bounds), or None."},
    {"read_word", (PyCFunction)(void (*)(void))read_word, METH_FASTCALL,
     "normaliser.read_word of an ASCII word, or None."},
    {"linear", (PyCFunction)(void (*)(void))linear, METH_FASTCALL,
     "The second opinion's sum of weights over a search's words and pairs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "speedups",
    .m_doc = "The matcher's per-text loops in C (see terms.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit_speedups(void)
{
    return PyModule_Create(&module_def);
}
