/* kiln fixture: runs fixture folders in the shared format (pipelines/fixture.h)
 * with the runner of each component this build has. */
#ifndef KN_RUNTIME_FIXTURE_H
#define KN_RUNTIME_FIXTURE_H

/* argv holds the folders after "fixture"; returns the process exit status. */
int kn_cmd_fixture(int argc, char **argv);

#endif
