#ifndef CNUMA_SHIM_H
#define CNUMA_SHIM_H
// libnuma, reached through the Swift layer's Shim folder only.
#include <numa.h>
#include <numaif.h>
#endif
