/*
 * LD_PRELOAD shim for the load tests: presents the loopback interface to Janus (and libnice)
 * as an ordinary interface, so that they gather ICE candidates on 127.0.0.1 and every datagram
 * of a load test stays on loopback. Janus skips interfaces flagged IFF_LOOPBACK when it
 * enumerates addresses with getifaddrs(); this clears the flag in the results and changes
 * nothing else. Compiled and used by scripts/janus/start.sh only.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stddef.h>

int getifaddrs(struct ifaddrs **ifap) {
    static int (*real_getifaddrs)(struct ifaddrs **) = NULL;
    if (real_getifaddrs == NULL) {
        real_getifaddrs = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
        if (real_getifaddrs == NULL) {
            return -1;
        }
    }
    int r = real_getifaddrs(ifap);
    if (r == 0) {
        for (struct ifaddrs *i = *ifap; i != NULL; i = i->ifa_next) {
            i->ifa_flags &= ~(unsigned int)IFF_LOOPBACK;
        }
    }
    return r;
}
