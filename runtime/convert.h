/* kiln convert: print the API prompt ComfyUI's front end would queue for a
 * workflow file (either format), after validating it as ComfyUI's server
 * would; on failure print the ComfyUI-shaped error body instead and return
 * non-zero. See kn_cmd_convert in runtime/convert.c for the options. */
#ifndef KN_RUNTIME_CONVERT_H
#define KN_RUNTIME_CONVERT_H

/* argv holds the arguments after "convert"; returns the process exit status. */
int kn_cmd_convert(int argc, char **argv);

#endif
