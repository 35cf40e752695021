/* kn_save_path: where an output node writes its files, as ComfyUI's
 * folder_paths.get_save_image_path decides it (SaveImage, PreviewImage,
 * SaveLatent).
 *
 * Contract:
 *  - The prefix's %width% / %height% become the given size (0 where the node
 *    has no image, as SaveLatent) and %year% %month% %day% %hour% %minute%
 *    %second% the local time; then it is normalised as os.path.normpath
 *    would. An absolute prefix, or one whose ".." leaves base_dir, fails with
 *    ComfyUI's message on input 'filename_prefix'; no name ever leaves base_dir.
 *  - The folder base_dir/subfolder is created, its subfolder through
 *    kernels/confine.h (the server's resolver for /view and /upload): a
 *    subfolder that is or passes through a symlink is refused on
 *    'filename_prefix', wherever the link points (ComfyUI's check is
 *    textual and follows it); the files themselves are created without
 *    following a symlink (kn_png_write, kn_st_write_meta). `counter` is 1 + the largest N
 *    of the files "<filename>_N..." already there, whatever their extension,
 *    so images and latents under one prefix share a count, as in ComfyUI.
 *  - Failures go through kn_node_fail (naming the node and the input). */
#ifndef KN_NODES_SAVE_PATH_H
#define KN_NODES_SAVE_PATH_H

#include <stdint.h>

#include "nodes/node.h"

typedef struct kn_save_path {
    char folder[4096];    /* base_dir/subfolder */
    char subfolder[1024]; /* relative to base_dir, '/'-separated, "" at the top */
    char filename[1024];  /* last component of the prefix; the node adds counter and extension */
    long counter;
} kn_save_path;

int kn_save_path_get(kn_node_call *c, const char *base_dir, const char *prefix, int64_t width, int64_t height,
                     kn_save_path *out);

#endif
