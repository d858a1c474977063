// The torch headers that most of _C's C++ sources include, precompiled once per build
// (CMakeLists.txt, PYNEURO_PCH): parsing them costs ~9 s of CPU per source file otherwise (with
// isa.h's, ~28% of the extension's build). Every file still includes what it uses itself.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>
