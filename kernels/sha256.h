/* kn_sha256: SHA-256 (FIPS 180-4) of byte streams.
 *
 * Contract:
 *  - kn_sha256_init, then kn_sha256_update any number of times (any lengths),
 *    then kn_sha256_final writes the 32-byte digest; kn_sha256_hex writes it
 *    as 64 lower-case hex digits plus a NUL (what Python's hexdigest() prints).
 *  - Used to fingerprint files a node reads (LoadImage's IS_CHANGED hashes the
 *    image with sha256 in ComfyUI): a cryptographic hash, so an uploaded file
 *    cannot be crafted to collide with another and be served stale results. */
#ifndef KN_KERNELS_SHA256_H
#define KN_KERNELS_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define KN_SHA256_HEX 65 /* 64 digits and the NUL */

typedef struct kn_sha256 {
    uint32_t h[8];
    uint64_t len; /* bytes hashed so far */
    unsigned char block[64];
    size_t used; /* bytes in block */
} kn_sha256;

void kn_sha256_init(kn_sha256 *s);
void kn_sha256_update(kn_sha256 *s, const void *data, size_t len);
void kn_sha256_final(kn_sha256 *s, unsigned char digest[32]);
void kn_sha256_hex(const unsigned char digest[32], char hex[KN_SHA256_HEX]);

#endif
