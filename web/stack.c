/* Handlers on full-size stacks: see web/stack.h. */
#include "web/stack.h"

#include <pthread.h>

typedef struct call {
    void (*fn)(void *arg);
    void *arg;
} call;

static void *trampoline(void *p) {
    call *c = p;
    c->fn(c->arg);
    return NULL;
}

int kn_web_on_stack(void (*fn)(void *arg), void *arg, kn_err *err) {
    pthread_attr_t attr;
    pthread_t t;
    call c = {fn, arg};
    if (pthread_attr_init(&attr) != 0) return kn_fail(err, KN_ERR_BACKEND, "cannot start a handler thread");
    int rc = pthread_attr_setstacksize(&attr, KN_WEB_STACK_SIZE) != 0 || pthread_create(&t, &attr, trampoline, &c) != 0;
    pthread_attr_destroy(&attr);
    if (rc) return kn_fail(err, KN_ERR_BACKEND, "cannot start a handler thread");
    pthread_join(t, NULL);
    return KN_OK;
}
