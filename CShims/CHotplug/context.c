// The calling thread's context inside a machine (see chp_context_t in CHotplug.h): whether it runs a hotplug
// callback or a stop_machine body, so that a call that would wait for itself fails at once instead of hanging.
// Initial-exec TLS, as the identity in sigp.c: a plain load from the thread pointer.
#include "internal.h"

__thread chp_context_t chp_thread_context __attribute__((tls_model("initial-exec")));
