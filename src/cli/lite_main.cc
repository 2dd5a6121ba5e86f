// geopipe-lite: the `geopipe` command line (command_line.h) without the
// engine's verbs, so it links no LibTorch: the hostile-input build runs the
// command-line cases under ASan/UBSan with it (tests/cli/hostile_cli_test.cc).
#include "src/cli/command_line.h"

int main(int argc, char** argv) {
  return geopipe::cli::runCommandLine(argc, argv, nullptr);
}
