// The qkv command.
#include <CLI/CLI.hpp>
#include <iostream>

#include "qkv/qkv.h"

int main(int argc, char** argv) {
  CLI::App app{"qkv: an engine for self-attention and Transformer models"};
  app.set_version_flag("--version", QKV_VERSION_STRING);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
