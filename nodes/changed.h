/* kn_changed: the `changed` hooks (nodes/node.h, ComfyUI's IS_CHANGED) of
 * classes whose output depends on files their inputs name.
 *
 * Contract:
 *  - Both walk the class's file-name inputs (COMBO inputs with a `folder`,
 *    nodes/registry.h) that hold a constant naming a file (not one of the
 *    input's fixed choices, such as VAELoader's "pixel_space"), resolve each
 *    through kn_models_resolve (names are never joined into paths), and
 *    write one fingerprint per file into fp, ';'-separated.
 *  - kn_changed_file_stamps: "<size>:<mtime ns>:<inode>" per file, for model
 *    loaders. Reading gigabytes of weights per prompt to hash them would cost
 *    more than the load it guards, and a model is replaced, not edited in
 *    place with its size and mtime kept; the inode catches a replacement by
 *    rename that kept both (cp -p, rsync -t).
 *  - kn_changed_file_hashes: "sha256:<hex>" of each file's bytes, for
 *    LoadImage, as ComfyUI's LoadImage.IS_CHANGED: an upload overwritten
 *    with other pixels may keep size and even mtime (same second, coarse
 *    clocks), and images are small enough to read each prompt.
 *  - A name that no longer resolves, a file that cannot be read, or
 *    fingerprints longer than KN_CHANGED_MAX fail naming the input. */
#ifndef KN_NODES_CHANGED_H
#define KN_NODES_CHANGED_H

#include "nodes/node.h"

int kn_changed_file_stamps(kn_node_call *c, char *fp);
int kn_changed_file_hashes(kn_node_call *c, char *fp);

#endif
