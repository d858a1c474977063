// cuda_emu shim for <cuda_runtime_api.h>: see cuda_emu/core.h.
#pragma once
#include "cuda_emu/core.h"
