/*
 * ratekeeper for uWSGI: a routing action that enforces ratekeeper limits in
 * uWSGI's internal router, before the request reaches the application.
 *
 *   plugins = http,python3,ratekeeper
 *   route = ^/api/ ratekeeper:policy=api,spec=100/minute;2000/hour,key=${HTTP_X_API_KEY}
 *
 * Lifecycle (README "uWSGI"):
 * - config time (master): each `ratekeeper:` action's options are parsed
 *   with uWSGI's kv-list parser and checked (unknown option, missing
 *   policy, a spec that does not parse): a bad route stops uWSGI at once.
 * - `init` (master, before any fork): the shared file is created or
 *   validated, every policy added to it; any failure exits non-zero.
 * - `post_fork` (each worker): the worker opens the file itself.
 * - each request: keys built with uWSGI's routing variables, concurrency
 *   permits taken, rate limits charged all-or-nothing (rk_check_many);
 *   denied: a complete 429 is written here and the request ends
 *   (UWSGI_ROUTE_BREAK) without entering the application; allowed: the
 *   request goes on (UWSGI_ROUTE_NEXT) with the RateLimit fields added.
 * - after the request: its permits are given back.
 * - `master_cycle` (master): a worker whose pid changed has died; its
 *   permits are released at once with rk_release_holder.
 */
#include <uwsgi.h>
#include <ratekeeper.h>

#include "rk_fields.h"

#ifndef UWSGI_ROUTING
#error "ratekeeper: this uWSGI was built without internal routing (it needs PCRE when uWSGI itself is compiled). Use Debian's uwsgi-core, or `pip install uwsgi` with libpcre2-dev (or libpcre3-dev) installed, then build the plugin again."
#else

extern struct uwsgi_server uwsgi;

/* Items (policy + key) one action may charge together. rk_check_many is
 * allocation-free up to 16. */
#define RKU_MAX_ITEMS 8
/* Permits one request may hold (over every ratekeeper action it passes). */
#define RKU_MAX_HELD 16

struct rku_item {
    char *policy;       /* the engine policy name */
    char *spec;         /* NULL until resolved at init when the route named none */
    char *key_tpl;      /* the key, with uWSGI routing variables */
    size_t key_tpl_len;
    int key_is_constant; /* no '$' in the template: used as is */
    uint32_t cost;
    int cost_given;
    char *name;         /* the item's name in the RateLimit fields and the body */
    size_t name_len;

    /* Filled at init, read-only afterwards (workers inherit them). */
    int concurrency;
    uint32_t policy_master; /* id in the master's engine */
    uint32_t nlimits;
    rk_limit *limits;
    char **limit_name;    /* per limit: name, or name-<i> */
    size_t *limit_name_len;
    char **limit_sf;      /* per limit: the same as a structured-field string */
    size_t *limit_sf_len;

    /* Set in each worker after fork. */
    uint32_t policy_id;
};

struct rku_route {
    char *args; /* the action's text, for messages */
    struct rku_item items[RKU_MAX_ITEMS];
    size_t n;
    int headers;     /* RateLimit fields on allowed responses too */
    int fail_closed; /* engine failure: 503 (else the request passes) */
    char *policy_field; /* the RateLimit-Policy value (every limit of every item) */
    size_t policy_field_len;
    struct rku_route *next;
};

struct rku_held {
    size_t n;
    rk_permit permits[RKU_MAX_HELD];
};

static struct rku_state {
    /* options */
    char *file;
    uint64_t capacity;
    char *problem_type;

    struct rku_route *routes;
    rk_engine *scratch;       /* config time: checks specs and names */
    char *path;               /* the shared file in use */
    int path_is_per_instance; /* derived from the master pid: removed at exit */
    rk_engine *engine;        /* this process's engine */
    pid_t engine_pid;         /* the process that opened `engine` */
    int has_concurrency;

    /* worker */
    struct rku_held *held; /* per core (wsgi_req->async_id) */
    int held_cores;
    uint64_t last_error_log;

    /* master */
    pid_t *tracked; /* worker pids seen at the last cycle */
    int tracked_n;
} rku;

static struct uwsgi_option rku_options[] = {
    {"ratekeeper-file", required_argument, 0,
     "shared-memory file of the ratekeeper limits (default /dev/shm/ratekeeper-uwsgi-<procname-master or procname>.rk, "
     "else /dev/shm/ratekeeper-uwsgi-<master pid>.rk, removed at exit)",
     uwsgi_opt_set_str, &rku.file, 0},
    {"ratekeeper-capacity", required_argument, 0, "keys each ratekeeper policy tracks (default 65536)",
     uwsgi_opt_set_64bit, &rku.capacity, 0},
    {"ratekeeper-problem-type", required_argument, 0,
     "`type` of the problem+json body of a 429 (default about:blank)", uwsgi_opt_set_str, &rku.problem_type, 0},
    {0, 0, 0, 0, 0, 0, 0},
};

/* ------------------------------------------------------------ config time */

/* Exported (uWSGI may look plugin functions up by name). */
int ratekeeper_uwsgi_route(struct wsgi_request *wsgi_req, struct uwsgi_route *ur);
void ratekeeper_uwsgi_after_request(struct wsgi_request *wsgi_req);

static const char *const rku_item_keys[] = {"policy", "spec", "key", "cost", "name"};
#define RKU_ITEM_KEYS (sizeof(rku_item_keys) / sizeof(rku_item_keys[0]))

/* Whether `key` (len bytes) is a known option: an item key with no suffix or
 * a suffix 2..RKU_MAX_ITEMS, or a route-level key. */
static int rku_known_option(const char *key, size_t len) {
    if ((len == 7 && !memcmp(key, "headers", 7)) || (len == 4 && !memcmp(key, "fail", 4))) return 1;
    for (size_t k = 0; k < RKU_ITEM_KEYS; k++) {
        size_t kl = strlen(rku_item_keys[k]);
        if (len == kl && !memcmp(key, rku_item_keys[k], kl)) return 1;
        if (len == kl + 1 && !memcmp(key, rku_item_keys[k], kl) && key[kl] >= '2' &&
            key[kl] <= '0' + RKU_MAX_ITEMS)
            return 1;
    }
    return 0;
}

/* uwsgi_kvlist_parse ignores options it does not know: check every name
 * first, with its splitting rules (',' between options, '=' after the
 * name, '\' escapes the next character). */
static int rku_check_option_names(const char *args) {
    size_t len = strlen(args);
    size_t start = 0;
    /* where each option's name starts and ends: a name given twice is an
     * error (uwsgi_kvlist_parse would keep the last one silently) */
    size_t seen_at[64], seen_len[64], nseen = 0;
    while (start <= len) {
        /* find the end of this option */
        size_t end = start;
        int escaped = 0;
        while (end < len && (escaped || args[end] != ',')) {
            escaped = !escaped && args[end] == '\\';
            end++;
        }
        if (end > start) {
            size_t eq = start;
            escaped = 0;
            while (eq < end && (escaped || args[eq] != '=')) {
                escaped = !escaped && args[eq] == '\\';
                eq++;
            }
            if (eq == end) {
                uwsgi_log("[ratekeeper] route option \"%.*s\" has no value (options are name=value, separated "
                          "by ','; separate the limits of a spec with ';' or '|', or write '\\,')\n",
                          (int)(end - start), args + start);
                return -1;
            }
            if (!rku_known_option(args + start, eq - start)) {
                uwsgi_log("[ratekeeper] unknown route option \"%.*s\" (known: policy, spec, key, cost, name, "
                          "the same with a suffix 2..%d for more items, headers, fail)\n",
                          (int)(eq - start), args + start, RKU_MAX_ITEMS);
                return -1;
            }
            for (size_t k = 0; k < nseen; k++) {
                if (seen_len[k] == eq - start && !memcmp(args + seen_at[k], args + start, eq - start)) {
                    uwsgi_log("[ratekeeper] route option \"%.*s\" given twice\n", (int)(eq - start), args + start);
                    return -1;
                }
            }
            if (nseen == sizeof(seen_at) / sizeof(seen_at[0])) {
                uwsgi_log("[ratekeeper] too many route options\n");
                return -1;
            }
            seen_at[nseen] = start;
            seen_len[nseen++] = eq - start;
        }
        start = end + 1;
    }
    return 0;
}

static int rku_parse_bool(const char *what, const char *v, int *out) {
    if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on")) {
        *out = 1;
        return 0;
    }
    if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off")) {
        *out = 0;
        return 0;
    }
    uwsgi_log("[ratekeeper] %s=%s: expected 1/0, true/false, yes/no or on/off\n", what, v);
    return -1;
}

static int rku_parse_cost(const char *what, const char *v, uint32_t *out) {
    uint64_t n = 0;
    if (!*v) goto bad;
    for (const char *p = v; *p; p++) {
        if (*p < '0' || *p > '9') goto bad;
        n = n * 10 + (uint64_t)(*p - '0');
        if (n > UINT32_MAX) goto bad;
    }
    *out = (uint32_t)n;
    return 0;
bad:
    uwsgi_log("[ratekeeper] %s=%s: expected a whole number from 0 to %u\n", what, v, (unsigned)UINT32_MAX);
    return -1;
}

static rk_engine *rku_scratch(void) {
    if (!rku.scratch) {
        rk_engine_options o;
        rk_engine_options_init(&o);
        o.capacity = 1; /* it only parses specs */
        rk_status st = rk_engine_new(&o, &rku.scratch);
        if (st != RK_OK) {
            uwsgi_log("[ratekeeper] rk_engine_new: %s: %s\n", rk_status_str(st), rk_last_error());
            return NULL;
        }
    }
    return rku.scratch;
}

/* Checks a policy's name and spec now, at config time, on the scratch
 * engine: a spec that does not parse, or a name given two specs by two
 * routes, stops uWSGI here with the library's message. */
static int rku_check_spec(const char *policy, const char *spec) {
    rk_engine *e = rku_scratch();
    if (!e) return -1;
    uint32_t id;
    rk_status st = rk_policy_add(e, policy, spec, &id);
    if (st != RK_OK) {
        uwsgi_log("[ratekeeper] policy \"%s\" with spec \"%s\": %s: %s\n", policy, spec, rk_status_str(st),
                  rk_last_error());
        return -1;
    }
    return 0;
}

static int rku_router(struct uwsgi_route *ur, char *args) {
    struct rku_route *r = uwsgi_calloc(sizeof(*r));
    r->args = uwsgi_str(args);
    r->headers = 1;

    char *v[RKU_MAX_ITEMS][RKU_ITEM_KEYS];
    char names[RKU_MAX_ITEMS][RKU_ITEM_KEYS][16];
    memset(v, 0, sizeof(v));
    for (size_t i = 0; i < RKU_MAX_ITEMS; i++) {
        for (size_t k = 0; k < RKU_ITEM_KEYS; k++) {
            if (i == 0) {
                snprintf(names[i][k], sizeof(names[i][k]), "%s", rku_item_keys[k]);
            } else {
                snprintf(names[i][k], sizeof(names[i][k]), "%s%zu", rku_item_keys[k], i + 1);
            }
        }
    }
    char *headers = NULL, *fail = NULL;

    if (rku_check_option_names(args)) goto error;

#define RKU_KV(i) names[i][0], &v[i][0], names[i][1], &v[i][1], names[i][2], &v[i][2], names[i][3], &v[i][3], \
                  names[i][4], &v[i][4]
    if (uwsgi_kvlist_parse(args, strlen(args), ',', '=', RKU_KV(0), RKU_KV(1), RKU_KV(2), RKU_KV(3), RKU_KV(4),
                           RKU_KV(5), RKU_KV(6), RKU_KV(7), "headers", &headers, "fail", &fail, NULL)) {
        uwsgi_log("[ratekeeper] cannot parse the route options\n");
        goto error;
    }
#undef RKU_KV
#if RKU_MAX_ITEMS != 8
#error "RKU_KV above lists RKU_MAX_ITEMS items"
#endif

    if (headers && rku_parse_bool("headers", headers, &r->headers)) goto error;
    if (fail) {
        if (!strcmp(fail, "open")) {
            r->fail_closed = 0;
        } else if (!strcmp(fail, "closed")) {
            r->fail_closed = 1;
        } else {
            uwsgi_log("[ratekeeper] fail=%s: expected open or closed\n", fail);
            goto error;
        }
    }

    for (size_t i = 0; i < RKU_MAX_ITEMS; i++) {
        char *policy = v[i][0], *spec = v[i][1], *key = v[i][2], *cost = v[i][3], *name = v[i][4];
        if (!policy) {
            if (spec || key || cost || name) {
                char given[80] = "";
                for (size_t k = 1; k < RKU_ITEM_KEYS; k++) {
                    if (!v[i][k]) continue;
                    size_t used = strlen(given);
                    snprintf(given + used, sizeof(given) - used, "%s%s", used ? ", " : "", names[i][k]);
                }
                uwsgi_log("[ratekeeper] %s given without %s\n", given, names[i][0]);
                goto error;
            }
            continue;
        }
        struct rku_item *it = &r->items[r->n++];
        it->policy = policy;
        it->spec = spec;
        it->key_tpl = key ? key : uwsgi_str("${REMOTE_ADDR}");
        it->key_tpl_len = strlen(it->key_tpl);
        it->key_is_constant = strchr(it->key_tpl, '$') == NULL;
        it->cost = 1;
        if (cost) {
            if (rku_parse_cost(names[i][3], cost, &it->cost)) goto error;
            it->cost_given = 1;
        }
        it->name = name ? name : policy;
        it->name_len = strlen(it->name);
        if (it->name_len == 0 || it->name_len > RK_MAX_POLICY_NAME_LEN) {
            uwsgi_log("[ratekeeper] %s: a name of 1 to %d bytes, not %zu\n", name ? names[i][4] : names[i][0],
                      RK_MAX_POLICY_NAME_LEN, it->name_len);
            goto error;
        }
        if (spec && rku_check_spec(policy, spec)) goto error;
    }
    if (r->n == 0) {
        uwsgi_log("[ratekeeper] missing policy= (e.g. ratekeeper:policy=api,spec=100/minute,key=${REMOTE_ADDR})\n");
        goto error;
    }

    ur->func = ratekeeper_uwsgi_route;
    ur->data2 = r;
    struct rku_route **tail = &rku.routes;
    while (*tail) tail = &(*tail)->next;
    *tail = r;
    return 0;

error:
    uwsgi_log("[ratekeeper] bad route action \"ratekeeper:%s\"\n", args);
    return -1;
}

/* ------------------------------------------------------------ init (master) */

static void rku_fatal(const char *what, rk_status st) {
    uwsgi_log("[ratekeeper] %s: %s: %s\n", what, rk_status_str(st), rk_last_error());
    exit(1);
}

/* The default file: from procname-master or procname (stable across
 * restarts: limits survive a deploy), else from the master's pid (private
 * to this instance, removed when the master exits). */
static void rku_choose_path(void) {
    if (rku.file) {
        rku.path = rku.file;
        return;
    }
    const char *stable = uwsgi.procname_master ? uwsgi.procname_master : uwsgi.procname;
    if (stable && *stable) {
        char clean[129];
        size_t n = 0;
        for (const char *p = stable; *p && n < sizeof(clean) - 1; p++) {
            char c = *p;
            int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                     c == '-' || c == '_';
            if (ok) {
                clean[n++] = c;
            } else if (n == 0 || clean[n - 1] != '_') {
                clean[n++] = '_';
            }
        }
        clean[n] = 0;
        rku.path = uwsgi_concat3("/dev/shm/ratekeeper-uwsgi-", clean, ".rk");
        return;
    }
    char pid[32];
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    rku.path = uwsgi_concat3("/dev/shm/ratekeeper-uwsgi-", pid, ".rk");
    rku.path_is_per_instance = 1;
}

static void rku_open_engine(rk_engine **out) {
    rk_engine_options o;
    rk_engine_options_init(&o);
    if (rku.capacity) o.capacity = rku.capacity;
    rk_status st = rk_engine_open_shared(rku.path, &o, out);
    if (st != RK_OK) {
        uwsgi_log("[ratekeeper] cannot use the shared file %s (set it with ratekeeper-file)\n", rku.path);
        rku_fatal("rk_engine_open_shared", st);
    }
}

/* The names and fields of an item's limits, computed once. */
static void rku_prepare_item(struct rku_item *it) {
    rk_status st = rk_policy_limit_count(rku.engine, it->policy_master, &it->nlimits);
    if (st != RK_OK) rku_fatal("rk_policy_limit_count", st);
    it->limits = uwsgi_calloc(sizeof(rk_limit) * it->nlimits);
    it->limit_name = uwsgi_calloc(sizeof(char *) * it->nlimits);
    it->limit_name_len = uwsgi_calloc(sizeof(size_t) * it->nlimits);
    it->limit_sf = uwsgi_calloc(sizeof(char *) * it->nlimits);
    it->limit_sf_len = uwsgi_calloc(sizeof(size_t) * it->nlimits);
    for (uint32_t i = 0; i < it->nlimits; i++) {
        st = rk_policy_limit(rku.engine, it->policy_master, i, &it->limits[i]);
        if (st != RK_OK) rku_fatal("rk_policy_limit", st);
        struct rkf_str name, sf;
        rkf_init(&name);
        rkf_init(&sf);
        rkf_append_item_name(&name, it->name, it->name_len, it->nlimits, i);
        if (!name.failed) rkf_append_sf_string(&sf, name.buf, name.len);
        if (name.failed || sf.failed) {
            uwsgi_log("[ratekeeper] out of memory\n");
            exit(1);
        }
        it->limit_name[i] = name.buf;
        it->limit_name_len[i] = name.len;
        it->limit_sf[i] = sf.buf;
        it->limit_sf_len[i] = sf.len;
    }
    it->concurrency = it->limits[0].algorithm == RK_ALGORITHM_CONCURRENCY;
    if (it->concurrency) {
        rku.has_concurrency = 1;
        if (it->cost_given) {
            uwsgi_log("[ratekeeper] policy \"%s\" is a concurrency limit: cost= does not apply to it\n", it->policy);
            exit(1);
        }
    }
}

static void rku_prepare_route(struct rku_route *r) {
    struct rkf_str field;
    rkf_init(&field);
    for (size_t i = 0; i < r->n; i++) {
        struct rku_item *it = &r->items[i];
        for (uint32_t l = 0; l < it->nlimits; l++) {
            if (field.len) rkf_append(&field, ", ", 2);
            rkf_append_policy_item(&field, it->limit_name[l], it->limit_name_len[l], it->limits[l].burst,
                                   it->limits[l].period_ns);
        }
    }
    if (field.failed || field.len > 8192) {
        uwsgi_log("[ratekeeper] route \"ratekeeper:%s\": too many limits for one RateLimit-Policy field\n", r->args);
        exit(1);
    }
    r->policy_field = field.buf;
    r->policy_field_len = field.len;
}

/* A route that named a policy without its spec takes the spec another
 * route gave (the scratch engine knows every spec seen at config time). */
static void rku_resolve_spec(struct rku_item *it) {
    if (it->spec) return;
    uint32_t id;
    rk_engine *e = rku_scratch();
    if (!e || rk_policy_find(e, it->policy, &id) != RK_OK) {
        uwsgi_log("[ratekeeper] policy \"%s\" has no spec: give spec= in at least one ratekeeper route that names it\n",
                  it->policy);
        exit(1);
    }
    size_t len = 0;
    rk_status st = rk_policy_spec(e, id, NULL, 0, &len);
    if (st != RK_OK) rku_fatal("rk_policy_spec", st);
    it->spec = uwsgi_calloc(len + 1);
    st = rk_policy_spec(e, id, it->spec, len + 1, &len);
    if (st != RK_OK) rku_fatal("rk_policy_spec", st);
}

static int rku_init(void) {
    if (!rku.routes) return 0;
    if (!rku.problem_type) rku.problem_type = "about:blank";
    rku_choose_path();
    rku_open_engine(&rku.engine);
    rku.engine_pid = getpid();

    size_t policies = 0;
    for (struct rku_route *r = rku.routes; r; r = r->next) {
        for (size_t i = 0; i < r->n; i++) {
            struct rku_item *it = &r->items[i];
            rku_resolve_spec(it);
            rk_status st = rk_policy_add(rku.engine, it->policy, it->spec, &it->policy_master);
            if (st != RK_OK) {
                uwsgi_log("[ratekeeper] policy \"%s\" (\"%s\") in %s\n", it->policy, it->spec, rku.path);
                rku_fatal("rk_policy_add", st);
            }
            /* Used as is if this process serves requests itself (no
             * master, one process: no fork); a worker sets its own. */
            it->policy_id = it->policy_master;
            rku_prepare_item(it);
            policies++;
        }
        rku_prepare_route(r);
    }
    rk_engine_free(rku.scratch);
    rku.scratch = NULL;
    uwsgi_log("[ratekeeper] %zu limit item(s) in %s (ratekeeper %s)%s\n", policies, rku.path, rk_version(),
              rku.path_is_per_instance ? ", removed when the master exits" : "");
    return 0;
}

/* ------------------------------------------------------------ workers */

static void rku_post_fork(void) {
    if (!rku.routes) return;
    /* The master's engine, inherited through fork, is not used here: the
     * file lock of add_policy belongs to its open file. */
    rk_engine *e = NULL;
    rk_engine_options o;
    rk_engine_options_init(&o);
    if (rku.capacity) o.capacity = rku.capacity;
    rk_status st = rk_engine_open_shared(rku.path, &o, &e);
    if (st != RK_OK) {
        uwsgi_log("[ratekeeper] worker %d: rk_engine_open_shared(%s): %s: %s\n", uwsgi.mywid, rku.path,
                  rk_status_str(st), rk_last_error());
        rku.engine = NULL;
        return;
    }
    for (struct rku_route *r = rku.routes; r; r = r->next) {
        for (size_t i = 0; i < r->n; i++) {
            struct rku_item *it = &r->items[i];
            st = rk_policy_add(e, it->policy, it->spec, &it->policy_id);
            if (st != RK_OK) {
                uwsgi_log("[ratekeeper] worker %d: rk_policy_add(%s): %s: %s\n", uwsgi.mywid, it->policy,
                          rk_status_str(st), rk_last_error());
                rk_engine_free(e);
                rku.engine = NULL;
                return;
            }
        }
    }
    rku.engine = e;
    rku.engine_pid = getpid();
    if (rku.has_concurrency) {
        rku.held_cores = uwsgi.cores > 0 ? uwsgi.cores : 1;
        rku.held = uwsgi_calloc(sizeof(struct rku_held) * (size_t)rku.held_cores);
    }
}

/* Called after every request (uWSGI's after-request chain): gives back the
 * permits the request took. Exported: uWSGI may look it up by name. */
void ratekeeper_uwsgi_after_request(struct wsgi_request *wsgi_req) {
    if (!rku.held || wsgi_req->async_id < 0 || wsgi_req->async_id >= rku.held_cores) return;
    struct rku_held *h = &rku.held[wsgi_req->async_id];
    for (size_t i = 0; i < h->n; i++) {
        rk_status st = rk_release(rku.engine, &h->permits[i]);
        if (st != RK_OK) {
            uwsgi_log("[ratekeeper] rk_release: %s: %s\n", rk_status_str(st), rk_last_error());
        }
    }
    h->n = 0;
}

static void rku_log_failure(struct rku_route *r, const char *what, rk_status st) {
    uint64_t now = uwsgi_now();
    if (now == rku.last_error_log) return; /* at most one line per second */
    rku.last_error_log = now;
    if (st == RK_OK) {
        uwsgi_log("[ratekeeper] route \"ratekeeper:%s\": %s (request %s)\n", r->args, what,
                  r->fail_closed ? "refused with 503" : "let through");
    } else {
        uwsgi_log("[ratekeeper] route \"ratekeeper:%s\": %s: %s: %s (request %s)\n", r->args, what,
                  rk_status_str(st), rk_last_error(), r->fail_closed ? "refused with 503" : "let through");
    }
}

static int rku_engine_failed(struct wsgi_request *wsgi_req, struct rku_route *r, const char *what, rk_status st) {
    rku_log_failure(r, what, st);
    if (!r->fail_closed) return UWSGI_ROUTE_NEXT;
    struct rkf_str body;
    rkf_init(&body);
    rkf_append_problem_503(&body, rku.problem_type);
    if (body.failed) goto end;
    if (uwsgi_response_prepare_headers(wsgi_req, "503 Service Unavailable", 23)) goto end;
    if (uwsgi_response_add_content_type(wsgi_req, "application/problem+json", 24)) goto end;
    if (uwsgi_response_add_content_length(wsgi_req, body.len)) goto end;
    uwsgi_response_write_body_do(wsgi_req, body.buf, body.len);
end:
    rkf_free(&body);
    return UWSGI_ROUTE_BREAK;
}

static int rku_add_header(struct wsgi_request *wsgi_req, const char *name, const char *value, size_t len) {
    if (len > UINT16_MAX) return -1;
    return uwsgi_response_add_header(wsgi_req, (char *)name, (uint16_t)strlen(name), (char *)value, (uint16_t)len);
}

/* The RateLimit value of a decision of item `it`. */
static void rku_ratelimit_value(struct rkf_str *s, const struct rku_item *it, const rk_decision *d) {
    uint32_t li = d->limit_index < it->nlimits ? d->limit_index : 0;
    rkf_append_ratelimit(s, it->limit_sf[li], it->limit_sf_len[li], d->remaining, d->reset_after_ns);
}

/* A complete 429, as the Flask extension writes it. */
static int rku_deny(struct wsgi_request *wsgi_req, struct rku_route *r, const struct rku_item *it,
                    const rk_decision *d) {
    uint32_t li = d->limit_index < it->nlimits ? d->limit_index : 0;
    struct rkf_str body, rl;
    rkf_init(&body);
    rkf_init(&rl);
    rkf_append_problem_429(&body, rku.problem_type, it->limit_name[li], it->limit_name_len[li], d->limit,
                           it->limits[li].period_ns, d->retry_after_ns, d->banned);
    rku_ratelimit_value(&rl, it, d);
    if (body.failed || rl.failed) goto end;
    if (uwsgi_response_prepare_headers(wsgi_req, "429 Too Many Requests", 21)) goto end;
    if (uwsgi_response_add_content_type(wsgi_req, "application/problem+json", 24)) goto end;
    uint64_t retry_after = rkf_retry_after_s(d->retry_after_ns);
    if (retry_after) {
        char num[24];
        int n = snprintf(num, sizeof(num), "%llu", (unsigned long long)retry_after);
        if (rku_add_header(wsgi_req, "Retry-After", num, (size_t)n)) goto end;
    }
    if (rku_add_header(wsgi_req, "RateLimit-Policy", r->policy_field, r->policy_field_len)) goto end;
    if (rku_add_header(wsgi_req, "RateLimit", rl.buf, rl.len)) goto end;
    if (uwsgi_response_add_content_length(wsgi_req, body.len)) goto end;
    uwsgi_response_write_body_do(wsgi_req, body.buf, body.len);
end:
    rkf_free(&body);
    rkf_free(&rl);
    return UWSGI_ROUTE_BREAK;
}

/* `RateLimit-Policy: ...` and `RateLimit: ...` on the application's response. */
static void rku_add_allowed_fields(struct wsgi_request *wsgi_req, struct rku_route *r, const struct rku_item *it,
                                   const rk_decision *d) {
    struct rkf_str h;
    rkf_init(&h);
    rkf_append_cstr(&h, "RateLimit-Policy: ");
    rkf_append(&h, r->policy_field, r->policy_field_len);
    if (!h.failed && h.len <= UINT16_MAX) uwsgi_additional_header_add(wsgi_req, h.buf, (uint16_t)h.len);
    h.len = 0;
    rkf_append_cstr(&h, "RateLimit: ");
    rku_ratelimit_value(&h, it, d);
    if (!h.failed && h.len <= UINT16_MAX) uwsgi_additional_header_add(wsgi_req, h.buf, (uint16_t)h.len);
    rkf_free(&h);
}

int ratekeeper_uwsgi_route(struct wsgi_request *wsgi_req, struct uwsgi_route *ur) {
    struct rku_route *r = (struct rku_route *)ur->data2;
    if (!rku.engine || rku.engine_pid != uwsgi.mypid) {
        return rku_engine_failed(wsgi_req, r, "this worker has no ratekeeper engine (see its first log lines)", RK_OK);
    }

    char *subject = NULL;
    uint16_t subject_len = 0;
    if (ur->subject_len) {
        subject = *(char **)(((char *)wsgi_req) + ur->subject);
        subject_len = *(uint16_t *)(((char *)wsgi_req) + ur->subject_len);
    }

    /* Keys: uWSGI's buffers, as long as the request's variables make them
     * (any bytes: the engine takes pointer and length). */
    struct uwsgi_buffer *keys[RKU_MAX_ITEMS] = {0};
    rk_check_item batch[RKU_MAX_ITEMS];
    size_t batch_item[RKU_MAX_ITEMS];
    size_t nbatch = 0;
    rk_permit permits[RKU_MAX_ITEMS];
    size_t npermits = 0;
    int ret;

    const struct rku_item *bind_it = NULL;
    rk_decision bind_d;
    memset(&bind_d, 0, sizeof(bind_d));

    for (size_t i = 0; i < r->n; i++) {
        struct rku_item *it = &r->items[i];
        const uint8_t *key = (const uint8_t *)it->key_tpl;
        size_t key_len = it->key_tpl_len;
        if (!it->key_is_constant) {
            keys[i] = uwsgi_routing_translate(wsgi_req, ur, subject, subject_len, it->key_tpl, it->key_tpl_len);
            if (!keys[i]) {
                ret = rku_engine_failed(wsgi_req, r, "cannot build the key (out of memory)", RK_OK);
                goto out;
            }
            key = (const uint8_t *)keys[i]->buf;
            key_len = keys[i]->pos;
        }
        if (it->concurrency) {
            rk_decision d;
            rk_status st = rk_acquire(rku.engine, it->policy_id, key, key_len, &permits[npermits], &d);
            if (st != RK_OK) {
                ret = rku_engine_failed(wsgi_req, r, "rk_acquire", st);
                goto out;
            }
            if (!d.allowed) {
                ret = rku_deny(wsgi_req, r, it, &d);
                goto out;
            }
            npermits++;
            if (!bind_it || d.remaining < bind_d.remaining) {
                bind_it = it;
                bind_d = d;
            }
        } else {
            batch[nbatch].policy = it->policy_id;
            batch[nbatch].key = key;
            batch[nbatch].key_len = key_len;
            batch[nbatch].cost = it->cost;
            batch_item[nbatch] = i;
            nbatch++;
        }
    }

    if (nbatch) {
        rk_decision d;
        size_t index = 0;
        rk_status st = rk_check_many(rku.engine, batch, nbatch, &d, &index);
        if (st != RK_OK) {
            ret = rku_engine_failed(wsgi_req, r, "rk_check_many", st);
            goto out;
        }
        if (index >= nbatch) index = 0;
        const struct rku_item *it = &r->items[batch_item[index]];
        if (!d.allowed) {
            ret = rku_deny(wsgi_req, r, it, &d);
            goto out;
        }
        if (!bind_it || d.remaining <= bind_d.remaining) {
            bind_it = it;
            bind_d = d;
        }
    }

    /* Allowed: the request keeps its permits until it ends. */
    if (npermits) {
        struct rku_held *h = NULL;
        if (rku.held && wsgi_req->async_id >= 0 && wsgi_req->async_id < rku.held_cores)
            h = &rku.held[wsgi_req->async_id];
        if (!h || npermits > RKU_MAX_HELD - h->n) {
            ret = rku_engine_failed(wsgi_req, r, "too many permits held by one request", RK_OK);
            goto out;
        }
        memcpy(&h->permits[h->n], permits, npermits * sizeof(rk_permit));
        h->n += npermits;
        npermits = 0;
    }
    if (r->headers && bind_it) rku_add_allowed_fields(wsgi_req, r, bind_it, &bind_d);
    ret = UWSGI_ROUTE_NEXT;

out:
    /* permits still here were taken by a request that does not go on */
    for (size_t i = 0; i < npermits; i++) rk_release(rku.engine, &permits[i]);
    for (size_t i = 0; i < RKU_MAX_ITEMS; i++) {
        if (keys[i]) uwsgi_buffer_destroy(keys[i]);
    }
    return ret;
}

/* ------------------------------------------------------------ master */

/* A worker whose pid is no longer the one seen last time has died (the
 * master reaped it before forking its replacement): its permits go back
 * now rather than when their leases expire. */
static void rku_master_cycle(void) {
    if (!rku.engine || !rku.has_concurrency || rku.engine_pid != getpid()) return;
    if (!rku.tracked) {
        rku.tracked_n = uwsgi.numproc + 1;
        rku.tracked = uwsgi_calloc(sizeof(pid_t) * (size_t)rku.tracked_n);
    }
    for (int w = 1; w < rku.tracked_n && w <= uwsgi.numproc; w++) {
        pid_t now = uwsgi.workers[w].pid;
        pid_t old = rku.tracked[w];
        rku.tracked[w] = now;
        if (old <= 0 || old == now) continue;
        uint64_t total = 0;
        uint32_t done[RKU_MAX_ITEMS * 8];
        size_t ndone = 0;
        for (struct rku_route *r = rku.routes; r; r = r->next) {
            for (size_t i = 0; i < r->n; i++) {
                struct rku_item *it = &r->items[i];
                if (!it->concurrency) continue;
                int seen = 0;
                for (size_t k = 0; k < ndone; k++) seen |= done[k] == it->policy_master;
                if (seen) continue;
                if (ndone < sizeof(done) / sizeof(done[0])) done[ndone++] = it->policy_master;
                uint64_t released = 0;
                rk_status st = rk_release_holder(rku.engine, it->policy_master, (uint32_t)old, &released);
                if (st != RK_OK) {
                    uwsgi_log("[ratekeeper] worker %d (pid %d) died: rk_release_holder(%s): %s: %s\n", w, (int)old,
                              it->policy, rk_status_str(st), rk_last_error());
                    continue;
                }
                total += released;
            }
        }
        if (total) {
            uwsgi_log("[ratekeeper] worker %d (pid %d) died: %llu permit(s) released\n", w, (int)old,
                      (unsigned long long)total);
        }
    }
}

static void rku_master_cleanup(void) {
    if (rku.path && rku.path_is_per_instance && rku.engine_pid == getpid()) {
        unlink(rku.path);
    }
}

static void rku_on_load(void) {
    uwsgi_register_router("ratekeeper", rku_router);
}

/* The after-request chain gets our function once the workers exist. */
static void rku_post_fork_hooks(void) {
    rku_post_fork();
    if (rku.has_concurrency && rku.engine) {
        struct uwsgi_string_list *usl =
            uwsgi_string_new_list(&uwsgi.after_request_hooks, "ratekeeper_uwsgi_after_request");
        usl->custom_ptr = (void *)ratekeeper_uwsgi_after_request;
    }
}

struct uwsgi_plugin ratekeeper_plugin = {
    .name = "ratekeeper",
    .options = rku_options,
    .on_load = rku_on_load,
    .init = rku_init,
    .post_fork = rku_post_fork_hooks,
    .master_cycle = rku_master_cycle,
    .master_cleanup = rku_master_cleanup,
};

#endif /* UWSGI_ROUTING */
