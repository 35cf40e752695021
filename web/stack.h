/* kn_web_on_stack: run a function on a thread with a full-size stack.
 *
 * Why: Debian's civetweb starts its connection threads with 100 KiB stacks
 * (compile-time USE_STACK_SIZE, no run-time option). jansson's recursive
 * parser on hostile nesting (2048 levels), validation and JSON dumping need
 * more, so request handlers and WebSocket frame parsing run through this.
 *
 * Contract: fn(arg) runs to completion on a new thread with
 * KN_WEB_STACK_SIZE bytes of stack before kn_web_on_stack returns. Returns
 * KN_OK, or KN_ERR_BACKEND (err set) when no thread could be started, in
 * which case fn did not run. */
#ifndef KN_WEB_STACK_H
#define KN_WEB_STACK_H

#include "kernels/error.h"

#define KN_WEB_STACK_SIZE ((size_t)8 << 20)

int kn_web_on_stack(void (*fn)(void *arg), void *arg, kn_err *err);

#endif
