// cuda_emu shim: the built-in index variables come with cuda_emu/core.h.
#pragma once
#include "cuda_emu/core.h"
